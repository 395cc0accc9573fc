build/obj/ctl/main.o: ctl/main.c common/config.h \
 common/include/cqrs/err.h common/include/cqrs/log.h ctl/ctl.h
common/config.h:
common/include/cqrs/err.h:
common/include/cqrs/log.h:
ctl/ctl.h:

build/obj/ctl/ctl.o: ctl/ctl.c common/config.h common/include/cqrs/err.h \
 ctl/ctl.h
common/config.h:
common/include/cqrs/err.h:
ctl/ctl.h:

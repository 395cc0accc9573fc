build/obj/common/err.o: common/err.c common/include/cqrs/err.h
common/include/cqrs/err.h:

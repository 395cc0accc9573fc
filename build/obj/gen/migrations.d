build/obj/gen/migrations.o: build/gen/migrations.c common/migrations.h
common/migrations.h:

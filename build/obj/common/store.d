build/obj/common/store.o: common/store.c \
 /usr/include/postgresql/libpq-fe.h \
 /usr/include/postgresql/postgres_ext.h \
 /usr/include/postgresql/pg_config_ext.h common/envelope.h \
 common/include/cqrs/err.h common/include/cqrs/event.h \
 common/migrations.h common/store.h common/uuid.h
/usr/include/postgresql/libpq-fe.h:
/usr/include/postgresql/postgres_ext.h:
/usr/include/postgresql/pg_config_ext.h:
common/envelope.h:
common/include/cqrs/err.h:
common/include/cqrs/event.h:
common/migrations.h:
common/store.h:
common/uuid.h:

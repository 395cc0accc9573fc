build/obj/ctl/events.o: ctl/events.c ctl/ctl.h common/envelope.h \
 common/include/cqrs/err.h common/include/cqrs/event.h common/store.h \
 /usr/include/postgresql/libpq-fe.h \
 /usr/include/postgresql/postgres_ext.h \
 /usr/include/postgresql/pg_config_ext.h common/uuid.h
ctl/ctl.h:
common/envelope.h:
common/include/cqrs/err.h:
common/include/cqrs/event.h:
common/store.h:
/usr/include/postgresql/libpq-fe.h:
/usr/include/postgresql/postgres_ext.h:
/usr/include/postgresql/pg_config_ext.h:
common/uuid.h:

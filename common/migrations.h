/* migrations.h - the SQL migrations of sql/, compiled into libcqrs. */
#ifndef CQRS_MIGRATIONS_H
#define CQRS_MIGRATIONS_H

struct migration {
	int version;		/* NNN of sql/NNN_name.sql */
	const char *name;	/* NNN_name */
	const char *sql;
};

extern const struct migration cqrs_migrations[];
extern const int cqrs_migrations_count;

#endif

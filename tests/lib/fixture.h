/*
 * fixture.h - real servers for integration and end-to-end tests.
 *
 * tests/run.sh starts one private PostgreSQL (and RabbitMQ) per run and
 * exports CQRS_TEST_PGDIR (and CQRS_TEST_RABBITDIR). A test binary run by
 * hand without them starts its own through deploy/dev/ and stops it at exit.
 * Either the server is there or the test fails saying why: never a skip.
 */
#ifndef CQRS_TEST_FIXTURE_H
#define CQRS_TEST_FIXTURE_H

#include <stdbool.h>
#include <sys/types.h>

#include <libpq-fe.h>

/* conninfo of the private cluster's "postgres" database (static buffer). */
const char *fixture_pg_admin_conninfo(void);

/* The private cluster's directory (for deploy/dev/pg.sh stop/start). */
const char *fixture_pg_dir(void);

/*
 * Creates a fresh database and returns its conninfo (malloc'd). With
 * migrate, the cqrs schema is applied. Aborts the test on failure.
 */
char *fixture_db_new(bool migrate);

/* Connects to conninfo or fails the test. */
PGconn *fixture_connect(const char *conninfo);

/* Runs SQL (no parameters) and fails the test unless it succeeds. */
void fixture_exec(PGconn *pg, const char *sql);

/* First column of the first row of a query, as an integer. */
long long fixture_query_int(PGconn *pg, const char *sql);

/* Stop and start the shared PostgreSQL (for fault tests). */
void fixture_pg_stop(void);
void fixture_pg_start(void);

/* Path of a built program: fixture_bin("cqrsctl") -> ".../build/bin/cqrsctl". */
const char *fixture_bin(const char *name);
const char *fixture_plugin(const char *name);

/* Runs a shell command line, returns its exit status; output to *out
 * (malloc'd, may be NULL) when out is given. */
int fixture_run(const char *cmdline, char **out);

/* The whole of a file, NUL-terminated (malloc'd); "" when it cannot be
 * opened (a daemon that has not written its log yet). */
char *fixture_read_file(const char *path);

/* Its last n lines (malloc'd), for failure messages. */
char *fixture_file_tail(const char *path, int n);

/* A fresh temporary directory with a short path (for sockets). */
char *fixture_tmpdir(void);

/* Create the (empty) file path: opens a barrier a test plugin waits on. */
void fixture_touch(const char *path);

/* Waits up to timeout_ms for the file path to exist. */
bool fixture_wait_file(const char *path, int timeout_ms);

#endif

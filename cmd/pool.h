/*
 * pool.h - asynchronous libpq connections on a libevent loop.
 *
 * The loop never blocks on PostgreSQL: connections are made with
 * PQconnectStartParams/PQconnectPoll and queries sent with PQsendQueryParams;
 * a query waits in a FIFO until a connection is free. A connection that
 * fails is re-made with exponential backoff (100 ms .. 5 s).
 *
 * Nothing waits for ever on a server that stops answering: a connection not
 * up within its conninfo's connect_timeout (default 10 s) is given up, and a
 * query not answered within the pool's query timeout of being queued fails
 * (its connection, if it was sent, is closed and re-made). Every connection
 * runs SET synchronous_commit TO on before its first query, whatever the
 * role's or database's default: a commit it reports is on disk (and on a
 * synchronous standby, if the server names one).
 */
#ifndef CQRS_CMD_POOL_H
#define CQRS_CMD_POOL_H

#include <stdint.h>

#include <libpq-fe.h>

struct event_base;
struct pool;

/*
 * Called once per query on the loop thread. res is the query's result
 * (borrowed: the pool clears it after the call), or NULL when the
 * connection failed before or during the query, or the query timeout
 * passed: the outcome is unknown.
 * pg (may be NULL) is the connection, for error classification.
 */
typedef void (*pool_cb)(void *arg, PGresult *res, PGconn *pg);

/*
 * size connections to conninfo (copied, never logged; the defaults of
 * CQRS_PG_DEFAULT_KEYS apply to what it does not set). name is for logs.
 * timeout_ms > 0: the query timeout (cmd.store_timeout); 0: none.
 */
struct pool *pool_new(struct event_base *base, const char *conninfo, int size,
		      const char *name, int64_t timeout_ms);
void pool_free(struct pool *p);

/*
 * Queues a query. values are borrowed until cb runs. Returns 0, or
 * CQRS_EUNAVAILABLE at once (cb is not called) when no connection is up,
 * so callers can answer without waiting; CQRS_ENOMEM likewise.
 */
int pool_query(struct pool *p, const char *sql, int nparams, const char *const *values,
	       pool_cb cb, void *arg) __attribute__((warn_unused_result));

/* Connections up (idle or busy). */
int pool_up(const struct pool *p);
/* Queries queued or running. */
int pool_pending(const struct pool *p);

#endif

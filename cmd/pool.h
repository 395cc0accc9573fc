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

/*
 * Queries that may go to PostgreSQL joined into one (group commit). Queued
 * with pool_query_batched(), each is a query of its own; when a connection
 * frees and the first of them is next (and fewer than max_inflight of the
 * batcher's run), the pool takes it and the others of the same batcher
 * queued behind it, up to max queries and max_bytes of their sizes (the
 * first always goes). Alone, it is sent as it is; with
 * others, join() makes the one query that stands for them all.
 */
struct pool_batcher {
	int max;
	size_t max_bytes;
	/*
	 * Queries of this batcher running at once, at most: the others wait
	 * (and join) until one is answered, while other queries go by. One
	 * transaction commits while the next is built and sent: fewer, larger
	 * commits than one per free connection.
	 */
	int max_inflight;
	/* a second query (and more) goes only when this many wait */
	int min_join;
	/* one that runs longer is not counted (it waits on a lock, say) */
	int64_t stall_ms;
	int waiting;			/* the pool's count */
	/*
	 * Joins n >= 2 queued queries (their args, in queue order) into one:
	 * fills *sql, *nparams, *values (borrowed until *cb runs), *cb and *arg,
	 * and owns the args from then on (their own callbacks are not called).
	 * Returns 0, or -1 to have them sent one by one.
	 */
	int (*join)(void *ctx, void *const *args, int n, const char **sql, int *nparams,
		    const char *const **values, pool_cb *cb, void **arg);
	void *ctx;
};

/* As pool_query(); bytes: the query's size, for b->max_bytes. */
int pool_query_batched(struct pool *p, struct pool_batcher *b, size_t bytes,
		       const char *sql, int nparams, const char *const *values,
		       pool_cb cb, void *arg) __attribute__((warn_unused_result));

/*
 * A connection held for a transaction of several queries. hold_cb gets it
 * when one frees (in queue order with the queries), or NULL when none came
 * within the query timeout or none is up. Queries on it are answered as
 * pool_query()'s; once one is answered with res NULL the connection is gone
 * (later queries fail at once). pool_release() ends the hold (a transaction
 * left open is rolled back) and frees h.
 */
struct pool_hold;
typedef void (*pool_hold_cb)(void *arg, struct pool_hold *h);

int pool_hold(struct pool *p, pool_hold_cb cb, void *arg) __attribute__((warn_unused_result));
int pool_hold_query(struct pool_hold *h, const char *sql, int nparams, const char *const *values,
		    pool_cb cb, void *arg) __attribute__((warn_unused_result));
void pool_release(struct pool_hold *h);

/*
 * Prepares sql (borrowed for the pool's life, matched by its address) on
 * each connection as it comes up: the queries that pass this very pointer
 * are then sent without being parsed and planned again. Call it before the
 * loop runs, for at most POOL_MAX_PREPARED statements.
 */
#define POOL_MAX_PREPARED 8
void pool_prepare(struct pool *p, const char *sql);

/* Connections up (idle or busy). */
int pool_up(const struct pool *p);
/* Queries (and holds) waiting for a connection. */
int pool_waiting(const struct pool *p);
/* Queries queued or running. */
int pool_pending(const struct pool *p);

#endif

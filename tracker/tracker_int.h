/*
 * tracker_int.h - what tracker.c (connections, lock, waiting, the loop) and
 * pipeline.c (batches in flight, confirms, checkpoint) share. Not for use
 * outside tracker/ (tests use tracker.h).
 */
#ifndef CQRS_TRACKER_INT_H
#define CQRS_TRACKER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "backoff.h"
#include "broker.h"
#include "cqrs/log.h"
#include "cqrs_daemon.h"
#include "store.h"
#include "tracker.h"

/* One batch published and not yet confirmed. */
struct inflight {
	uint64_t last_tag;		/* delivery tag of its last message */
	struct store_checkpoint cp;	/* just after its last event */
	size_t n;
	int64_t sent_ms;
};

struct tracker {
	const struct tracker_config *cfg;
	struct broker_options bopt;
	char app[128];
	struct cqrs_log_ctx log;
	atomic_int stop;

	PGconn *pg;			/* lock, LISTEN, reads, checkpoint */
	struct broker *mq;
	bool wake;			/* a NOTIFY came since the last read */
	bool mq_blocked_logged;

	/* pipeline.c: batches published ahead of their confirms, oldest first */
	struct inflight *q;
	size_t qlen, qcap;
	size_t unconfirmed;		/* events in q */
	struct store_checkpoint read_at;	/* just after the last event published */
	char *body;			/* the message being built, reused */
	size_t body_cap;

	int64_t poll_interval;
	int64_t next_lock_try;
	int64_t next_status;
	int64_t next_mq_poll;
	struct cqrs_daemon_watchdog watchdog;
	struct backoff pg_backoff, mq_backoff;
	int64_t pg_retry_at, mq_retry_at;
	char pg_last_err[CQRS_ERR_MSG_MAX], mq_last_err[CQRS_ERR_MSG_MAX];
	int64_t pg_last_log, mq_last_log;
	char holder[128];		/* standby: who holds the lock, as last logged */
	int64_t lag_warned_at;		/* 0: not warning */

	/* the last lag measured, for STATUS= */
	int64_t lag_events, held_events;
	double lag_seconds, blocker_seconds;
	bool lag_exact;			/* false: lag_events is cqrs.tracker_status's estimate */

	struct httpd *httpd;		/* metrics.c */
	pthread_mutex_t mu;		/* guards stats (read by other threads) */
	struct tracker_stats stats;
};

/* ---- tracker.c ---------------------------------------------------------------- */

/* One statement with text parameters on t->pg. The result (owned by the
 * caller), or NULL after tracker_pg_lost(). Collects NOTIFYs as it goes. */
PGresult *tracker_pg_query(struct tracker *t, const char *what, const char *sql, int n,
			   const char *const *params, ExecStatusType want);

/* Drops the PostgreSQL session (and with it the lock, and what is in flight)
 * or the AMQP connection (and what is in flight), logs, and schedules a
 * reconnection with backoff. */
void tracker_pg_lost(struct tracker *t, const char *what, const char *msg);
void tracker_mq_lost(struct tracker *t, const char *what, const char *msg);

/* The checkpoint written last (the stats' one). */
struct store_checkpoint tracker_checkpoint(struct tracker *t);

/* Counts n events and k batches confirmed and checkpointed at cp. */
void tracker_note_done(struct tracker *t, size_t n, size_t k, const struct store_checkpoint *cp);

/* ---- pipeline.c --------------------------------------------------------------- */

/*
 * The commit-safe read of tracker.c, cqrs_store_read_all_sql's columns (for
 * cqrs_store_events_parse()), with the sort on the table's xid column.
 * Parameters: $1 xid8 text, $2 position, $3 limit.
 */
extern const char pipeline_read_sql[];

/* Forgets what is in flight: reading starts again after the checkpoint. */
void pipeline_reset(struct tracker *t);

/* Whether another batch may be published (fewer than inflight x batch_size
 * messages unconfirmed). */
bool pipeline_has_room(const struct tracker *t);

/* Batches published and not yet confirmed. */
size_t pipeline_pending(const struct tracker *t);

/* Whether the oldest batch in flight is confirmed (acks already read). */
bool pipeline_settleable(const struct tracker *t);

/*
 * Reads up to batch_size events after the last one published and publishes
 * them, without waiting for confirms. *n gets the number read (0: caught
 * up). On failure the connection at fault is dropped and -1 returned.
 */
int pipeline_fill(struct tracker *t, size_t *n);

/*
 * Moves the checkpoint over every batch whose confirms came (one write,
 * which also checks the lock), and gives up on a broker that has not
 * confirmed the oldest batch within tracker.confirm_timeout. -1 after
 * dropping a connection.
 */
int pipeline_settle(struct tracker *t);

/* On the way out: waits (up to confirm_timeout) for every confirm, then
 * settles. */
void pipeline_flush(struct tracker *t);

void pipeline_free(struct tracker *t);

#endif

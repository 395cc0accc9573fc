/*
 * tracker.h - cqrs-tracker: publishes committed events from PostgreSQL to
 * RabbitMQ in commit-safe order, moving its checkpoint only after the
 * broker's confirms (DESIGN.md, "Broker" and "Delivery guarantees").
 *
 *   struct tracker_config cfg;
 *   tracker_config_load(config, &cfg, &err);
 *   tracker_new(&cfg, &t, &err);
 *   tracker_run(t);          // until tracker_stop(), from a signal or a thread
 *   tracker_free(t);
 *   tracker_config_clear(&cfg);
 *
 * tracker_run() is a blocking loop on one thread: it keeps one PostgreSQL
 * session (advisory lock, LISTEN, reads, checkpoint) and one AMQP connection,
 * reconnects either with backoff when it fails, and returns only when asked
 * to stop. The keys it reads are listed at the top of tracker.c.
 */
#ifndef CQRS_TRACKER_H
#define CQRS_TRACKER_H

#include <stdbool.h>
#include <stdint.h>

#include "cqrs/err.h"
#include "broker.h"
#include "httpd.h"
#include "store.h"

struct config;

struct tracker_config {
	char *conninfo;			/* store.conninfo */
	char *name;			/* tracker.name: checkpoint and lock name */
	int batch_size;			/* tracker.batch_size */
	int inflight;			/* tracker.inflight: at most inflight x batch_size
					 * messages out before their confirms */
	int64_t poll_ms;		/* tracker.poll_ms: ceiling of the adaptive poll */
	int64_t lag_warn_ms;		/* tracker.lag_warn */
	int64_t confirm_timeout_ms;	/* tracker.confirm_timeout */
	int64_t status_ms;		/* how often lag is measured (tracker.status_interval) */
	struct broker_config broker;	/* [broker] */
	struct httpd_addr http;		/* tracker.http: /health and /metrics */
};

/* Reads and checks the keys; on error out is cleared. */
int tracker_config_load(const struct config *cfg, struct tracker_config *out,
			struct cqrs_err *err) __attribute__((warn_unused_result));
void tracker_config_clear(struct tracker_config *c);

struct tracker;

/* cfg is borrowed and must outlive the tracker. Does not connect. */
int tracker_new(const struct tracker_config *cfg, struct tracker **out, struct cqrs_err *err)
	__attribute__((warn_unused_result));
void tracker_free(struct tracker *t);

/*
 * Runs until tracker_stop(). The batch in flight is finished (published,
 * confirmed, checkpointed) before it returns. Returns 0 (or 1 when it could
 * not even start: out of memory).
 */
int tracker_run(struct tracker *t);

/* Asks tracker_run() to return. Async-signal-safe and thread-safe. */
void tracker_stop(struct tracker *t);

/* What the tracker did so far (for tests; read from tracker_run's thread or
 * after it returned). */
struct tracker_stats {
	bool ready;			/* connected to both at least once */
	bool active;			/* holds the lock now */
	uint64_t published;		/* events published and checkpointed */
	uint64_t batches;
	uint64_t activations;		/* times it took the lock */
	struct store_checkpoint checkpoint;
	bool pg_up, mq_up;		/* sessions up at the last turn of the loop */
	/* the last lag measured (active tracker only) */
	int64_t lag_events, held_events;
	double lag_seconds, blocker_seconds;
};

/* /health and /metrics on tracker.http (a thread of its own); no-ops when
 * the key is empty. tracker_metrics_stop before tracker_free. */
int tracker_metrics_start(struct tracker *t, struct cqrs_err *err)
	__attribute__((warn_unused_result));
void tracker_metrics_stop(struct tracker *t);

void tracker_get_stats(const struct tracker *t, struct tracker_stats *out);

/*
 * The checkpoint write: parameters $1 name, $2 xid, $3 position. It writes
 * one row only when the session holds the lock of $1 (0 rows: the lock is
 * lost). Exposed for tests.
 */
extern const char tracker_save_checkpoint_sql[];

/* "cqrs-tracker@HOST:PID", the application_name of its sessions and the
 * name of its AMQP connection. Borrowed. */
const char *tracker_app_name(const struct tracker *t);

#endif

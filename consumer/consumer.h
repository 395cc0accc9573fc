/*
 * consumer.h - cqrs-consumer: feeds events to the event handlers of its
 * plugins, each event exactly once and in stream order for the effects made
 * through the handler's transaction (DESIGN.md, "Broker" and "Delivery
 * guarantees").
 *
 *   struct consumer_config cfg;
 *   consumer_config_load(config, "projections", &cfg, &err);
 *   consumer_new(&cfg, &c, &err);          // loads plugins, picks handlers
 *   consumer_run(c, &opts);                // until consumer_stop()
 *   consumer_free(c);
 *   consumer_config_clear(&cfg);
 *
 * consumer_run() is one blocking loop on one thread, with one PostgreSQL
 * session and one AMQP connection, each reconnected with backoff. The keys
 * it reads are listed at the top of consumer.c; how an event is handled is
 * told in apply.c, the loop in run.c, catch-up and replay in catchup.c.
 *
 * Units and their prefixes: consumer.c (consumer_: config, plugins,
 * handlers, the queue's topology), apply.c (apply_: one PostgreSQL
 * transaction for a batch, and the session: consumer_pg_*, consumer_exec),
 * catchup.c (catchup_: feeding the store to the handlers), run.c (the live
 * loop), send.c (send_: commands from process managers), metrics.c (/health
 * and /metrics). The AMQP connection is libcqrs's (common/broker.h).
 */
#ifndef CQRS_CONSUMER_H
#define CQRS_CONSUMER_H

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "broker.h"
#include "cqrs/err.h"
#include "cqrs/event.h"
#include "cqrs/log.h"
#include "cqrs_daemon.h"
#include "httpd.h"
#include "plugin_host.h"
#include "store.h"

struct config;

/* Advisory lock class of consumers (sql/003_consumer.sql); key 2 is
 * hashtext(name). */
#define CONSUMER_LOCK_CLASS 1129468501

/* Exchange that dead letters go to (direct, durable), routed by queue name. */
#define CONSUMER_DEAD_EXCHANGE "cqrs.dead"
/* The dead-letter queue of queue Q is "Q" CONSUMER_DEAD_SUFFIX. */
#define CONSUMER_DEAD_SUFFIX ".dead"
/* Its headers are BROKER_H_REASON, BROKER_H_FAILED_AT and BROKER_H_CONSUMER
 * (broker.h), besides the event's stream, version and position. */

struct consumer_config {
	char *name;			/* -n NAME: section [consumer.NAME] */
	char *conninfo;			/* store.conninfo */
	struct broker_config broker;	/* [broker] */
	char *cmd_socket;		/* cmd.socket (process managers) */
	char *plugins;			/* consumer.NAME.plugins */
	char **groups;			/* consumer.NAME.groups, default { NAME } */
	size_t n_groups;
	char *queue;			/* consumer.NAME.queue, default cqrs.NAME */
	char *dead_queue;		/* queue CONSUMER_DEAD_SUFFIX */
	bool quorum;			/* queue_type = quorum | classic */
	int delivery_limit;		/* 0: none */
	int prefetch;
	int batch_size;
	int catchup_batch;
	bool from_beginning;		/* from = beginning | now */
	int retry_limit;
	int64_t retry_backoff_ms;
	int64_t retry_backoff_max_ms;
	int64_t cmd_timeout_ms;
	int64_t status_ms;
	struct httpd_addr http;		/* consumer.NAME.http (len 0: none) */
};

/* Reads and checks the keys of section [consumer.NAME] and the shared ones.
 * On error out is cleared and err names the file, line and key. */
int consumer_config_load(const struct config *cfg, const char *name,
			 struct consumer_config *out, struct cqrs_err *err)
	__attribute__((warn_unused_result));
void consumer_config_clear(struct consumer_config *c);

/* ---- the consumer ----------------------------------------------------------------- */

struct sender;
struct broker;

/* Atomics: the metrics endpoint reads them from its own thread. */
struct consumer_stats {
	_Atomic uint64_t handled;	/* events whose handlers ran and committed */
	_Atomic uint64_t duplicates;	/* skipped: version not newer */
	_Atomic uint64_t fetched;	/* missing events read from the store */
	_Atomic uint64_t retried;	/* handler asked for a retry */
	_Atomic uint64_t dead;		/* dead-lettered */
	_Atomic uint64_t batches;	/* committed transactions */
	_Atomic uint64_t caught_up;	/* events fed from the store (catch-up, replay) */
	_Atomic uint64_t in_hand;	/* deliveries not acked yet */
	_Atomic uint64_t held;		/* of them, waiting for a retry */
	_Atomic uint64_t queue_ready;	/* messages waiting in the queue (status_interval) */
	atomic_bool pg_up, mq_up, live;
	struct httpd_hist batch_time;	/* live batches, from BEGIN to COMMIT */
	struct httpd_hist handler_time;	/* one handler on one event (every handler) */
};

struct consumer {
	const struct consumer_config *cfg;	/* borrowed */
	struct registry *reg;
	/* the handlers of the configured groups, in registration order */
	const struct reg_handler **handlers;
	size_t n_handlers;
	/* distinct routing patterns of those handlers: the queue's bindings */
	char **bindings;
	size_t n_bindings;
	char app[160];			/* "cqrs-consumer@HOST:PID/NAME" */
	struct cqrs_log_ctx log;
	atomic_int stop;

	PGconn *pg;			/* NULL while disconnected */
	struct sender *sender;
	struct httpd *httpd;		/* /health and /metrics, or NULL */
	struct event_ctx_ops ops;
	struct consumer_stats stats;
	int64_t since_position;		/* cqrs.consumers.since_position */
	char xact[24];			/* the id of apply_batch()'s transaction */
	struct cqrs_daemon_watchdog watchdog;
	char pg_last_err[CQRS_ERR_MSG_MAX];
	int64_t pg_last_log;
	bool pg_lost;			/* the session died: say so when it is back */
};

/* cfg is borrowed and must outlive the consumer. Loads the plugins and picks
 * the handlers of the configured groups (a group without any is an error).
 * Does not connect. */
int consumer_new(const struct consumer_config *cfg, struct consumer **out,
		 struct cqrs_err *err) __attribute__((warn_unused_result));
void consumer_free(struct consumer *c);

struct consumer_run_opts {
	bool replay;		/* reset the handlers and feed them the whole store first */
	bool once;		/* return once caught up with the store (no live flow) */
};

/*
 * Runs until consumer_stop(), or with opts->once until caught up. Events in
 * hand are finished (committed and acked) before it returns. Returns 0, or 1
 * when it could not start or (once) could not finish.
 */
int consumer_run(struct consumer *c, const struct consumer_run_opts *opts);

/* Asks consumer_run() to return. Async-signal-safe. */
void consumer_stop(struct consumer *c);
bool consumer_stopping(const struct consumer *c);

/*
 * Declares, idempotently, on b: the topic exchange cqrs.events (as the
 * tracker does), the direct exchange cqrs.dead, the dead-letter queue
 * (classic, durable: `cqrsctl dead` reads it with basic.get and puts the
 * messages back, which a quorum queue would count as failed deliveries)
 * bound to cqrs.dead by the queue's name, and the queue (durable, quorum or
 * classic, x-dead-letter-exchange cqrs.dead, x-dead-letter-routing-key = its
 * name, x-delivery-limit) bound to each of the consumer's patterns. A queue
 * that exists with other arguments is CQRS_EINTERNAL naming it.
 */
int consumer_declare(struct consumer *c, struct broker *b, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Whether any handler of the consumer wants the event of this routing key. */
bool consumer_wants(const struct consumer *c, const char *routing_key);

/* The routing key of an event ("account.MoneyDeposited"); buf of
 * CONSUMER_KEY_MAX bytes. */
#define CONSUMER_KEY_MAX 512
void consumer_routing_key(const struct cqrs_event *ev, char *buf, size_t size);

/* ---- what a delivery says (run.c) -------------------------------------------------- */

/* No I/O in these two: tests/fuzz/fuzz_message.c feeds them any message. */

/* The event msg's body carries (owned by the caller: cqrs_event_free()), or
 * NULL with the reason in why (at most size bytes) when the body is not a
 * valid envelope: such a message is dead-lettered as it came. */
struct cqrs_event *consumer_msg_event(const struct broker_msg *msg, char *why, size_t size);

/* The message that dead-letters a delivery: its body as received, with the
 * event's id, type, stream, version and position, or (ev NULL) the ones its
 * properties and headers claimed. Borrows from msg and ev. */
void consumer_dead_message(const struct broker_msg *msg, const struct cqrs_event *ev,
			   struct broker_message *m);

/* Sends WATCHDOG=1 when due, and runs a SIGHUP's reload (cqrs_daemon_tick()). */
void consumer_watchdog(struct consumer *c);

/* ---- /health and /metrics (metrics.c) ---------------------------------------------- */

/* Serves consumer.NAME.http on a thread of its own (nothing when not set). */
int consumer_metrics_start(struct consumer *c, struct cqrs_err *err)
	__attribute__((warn_unused_result));
void consumer_metrics_stop(struct consumer *c);

/* ---- PostgreSQL session (apply.c) ------------------------------------------------ */

/* Connects c->pg (application_name c->app). 0, or CQRS_EUNAVAILABLE with
 * c->pg NULL. Logs the first failure of a series and the recovery. */
int consumer_pg_open(struct consumer *c) __attribute__((warn_unused_result));
void consumer_pg_close(struct consumer *c);

/* ---- one transaction (apply.c) --------------------------------------------------- */

/* What became of one event of a batch. */
enum apply_outcome {
	APPLY_PENDING = 0,	/* not decided (the batch did not commit) */
	APPLY_DONE,		/* handlers ran, committed */
	APPLY_DUPLICATE,	/* version not newer than the one recorded */
	APPLY_IGNORED,		/* no handler of this consumer wants it */
	APPLY_RETRY,		/* a handler asked for a retry (rolled back) */
	APPLY_FAIL,		/* a handler failed it (rolled back): dead-letter */
};

struct apply_item {
	struct cqrs_event *ev;		/* borrowed */
	int outcome;			/* enum apply_outcome */
	char reason[512];		/* for RETRY and FAIL */
};

enum apply_mode {
	APPLY_LIVE,		/* from the queue: shared lock, missing events fetched */
	APPLY_CATCHUP,		/* from the store under the exclusive lock, in commit-safe
				 * order: nothing can be missing; moves the checkpoint */
};

/* Return values of apply_batch() besides 0 and negative cqrs codes. */
#define APPLY_HANDLER 1		/* items[*at] has RETRY or FAIL; all rolled back */
#define APPLY_BUSY 2		/* a catch-up or replay holds the lock: try later */
#define APPLY_NOT_LIVE 3	/* the consumer must catch up first */

/*
 * Handles items[0..n) in one transaction on c->pg, in order, as consumer.c's
 * header tells; with APPLY_CATCHUP, cp (not NULL) is written as the
 * checkpoint in the same transaction. Returns:
 *   0                  committed: every item is DONE, DUPLICATE or IGNORED
 *   APPLY_HANDLER      items[*at] is RETRY or FAIL with a reason; nothing
 *                      committed, the other items stay PENDING
 *   APPLY_BUSY, APPLY_NOT_LIVE (APPLY_LIVE only): nothing done
 *   CQRS_ECONFLICT     deadlock or serialization failure: run it again
 *   CQRS_EUNAVAILABLE  the session is gone (c->pg closed): reconnect
 *   CQRS_EINTERNAL     a bookkeeping statement failed (err says which)
 */
int apply_batch(struct consumer *c, enum apply_mode mode, struct apply_item *items, size_t n,
		const struct store_checkpoint *cp, size_t *at, struct cqrs_err *err);

/*
 * apply_batch() that isolates handler failures: a batch where a handler
 * says RETRY or FAIL is cut around that event and the rest is handled again,
 * so every item ends DONE, DUPLICATE, IGNORED, RETRY or FAIL. Returns 0, or
 * the first other return of apply_batch() (items done by then keep their
 * outcome; the others are PENDING).
 */
int apply_all(struct consumer *c, enum apply_mode mode, struct apply_item *items, size_t n,
	      const struct store_checkpoint *cp, struct cqrs_err *err);

/* Runs every handler's reset in one transaction and clears the consumer's
 * stream versions and checkpoint (live = false). The caller holds the
 * exclusive lock. */
int apply_reset(struct consumer *c, struct cqrs_err *err);

/* Runs sql with text parameters on c->pg; a NULL return or a status other
 * than want is turned into an error (the connection closed when lost).
 * *res is the result (PQclear it) on success. */
int consumer_exec(struct consumer *c, const char *what, const char *sql, int n,
		  const char *const *params, ExecStatusType want, PGresult **res,
		  struct cqrs_err *err);

/* ---- catch-up and replay (catchup.c) ---------------------------------------------- */

/* State of the consumer's row, creating it (from_beginning: to catch up; else
 * live from the store's current end). */
int catchup_load_state(struct consumer *c, bool *live, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Called between catch-up batches (services the AMQP connection). */
typedef int (*catchup_tick_fn)(void *arg, struct cqrs_err *err);
/* Publishes a dead letter during catch-up: event, reason. */
typedef int (*catchup_dead_fn)(void *arg, const struct cqrs_event *ev, const char *reason,
			       struct cqrs_err *err);

struct catchup_hooks {
	catchup_tick_fn tick;
	catchup_dead_fn dead;
	void *arg;
};

/*
 * Takes the consumer's exclusive lock (waiting while live batches or another
 * catch-up hold it), resets first when replay is set, feeds every event
 * after the checkpoint to the handlers in commit-safe order, marks the
 * consumer live and unlocks. Returns 0 caught up, 1 stopped by
 * consumer_stop(), or a negative code (CQRS_EUNAVAILABLE: the session or
 * the broker went away; the checkpoint keeps what was done).
 */
int catchup_run(struct consumer *c, bool replay, const struct catchup_hooks *hooks,
		struct cqrs_err *err);

/* ---- commands from process managers (send.c) -------------------------------------- */

/* The id of the command sent for (cause event id, key): a name-based UUID
 * (version 5, SHA-1), the same for every delivery of the event. */
void send_command_id(const char *event_id, const char *key, char out[37]);

/* A client of cmd.socket, connected when first used. *out owned. While it
 * waits for an answer it pings watchdog (borrowed; NULL: none). */
int send_new(const char *socket, int64_t timeout_ms, struct cqrs_daemon_watchdog *watchdog,
	     struct sender **out, struct cqrs_err *err) __attribute__((warn_unused_result));
void send_free(struct sender *s);

/* event_ctx_ops.send: arg is the struct sender. */
int send_command(void *arg, const struct cqrs_event *cause, const char *key, const char *command,
		 const char *aggregate_id, struct json_object *data, struct cqrs_err *err);

/* The request line send_command() writes (malloc'd), for tests. Takes data. */
char *send_request(const struct cqrs_event *cause, const char *key, const char *command,
		   const char *aggregate_id, struct json_object *data);

/* SHA-1 of len bytes (send.c). */
void send_sha1(const void *data, size_t len, uint8_t out[20]);

#endif

/*
 * run.c - cqrs-consumer's loop: connections, catch-up, deliveries, acks,
 * retries, dead letters, shutdown.
 *
 * In order of priority: keep a PostgreSQL session and an AMQP connection
 * (each reconnected with backoff; while PostgreSQL is away the deliveries in
 * hand stay unacked on a healthy AMQP connection, so they neither come back
 * nor count as failed deliveries); declare the queue before anything is read
 * from the store; catch up (or replay) if the consumer is not live; then take
 * deliveries and handle them in batches (apply.c), acking each after its
 * batch commits.
 *
 * Deliveries that come back after a crash (redelivered) are suspects: one of
 * them may be what crashed the consumer. Each new AMQP session therefore
 * starts by taking messages one at a time with basic.get, handling each
 * alone and acking it before taking the next, until one comes that was never
 * delivered before (or the queue is empty); only then does it consume with
 * the full prefetch. So a poison event that aborts the process is the only
 * delivery in flight when it does, and only its delivery count grows:
 * RabbitMQ dead-letters it at the queue's delivery limit while the others go
 * on.
 *
 * Outcomes: done, duplicate or ignored: ack. Fail: publish to the dead-letter
 * exchange with the reason (committed), then ack. Retry: keep the delivery
 * unacked in hand and handle it again after a backoff that doubles up to
 * retry_backoff_max, while other deliveries flow; after retry_limit retries
 * it is dead-lettered. Holding it here, rather than rejecting it for an
 * immediate redelivery, is what gives the backoff; the price is that held
 * deliveries count against the prefetch, and go back to the queue if the
 * consumer stops.
 *
 * SIGTERM: cancel the consumer, handle what was delivered up to the
 * cancel's answer, ack, close, return (deliveries held for a retry go back).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "broker.h"
#include "clock.h"
#include "consumer.h"
#include "envelope.h"
#include "sdnotify.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define IDLE_WAIT_MS 1000	/* longest wait for a delivery: bounds the reaction to stop */
#define BUSY_WAIT_MS 200	/* a replay holds the lock: try again after this */
#define REPEAT_LOG_MS 30000
#define MQ_TIMEOUT_MS 10000
#define CH_DEAD 2		/* dead letters: a channel in transaction mode */

struct delivery {
	struct broker_msg msg;
	struct cqrs_event *ev;		/* NULL when the body is not an envelope */
	char decode_err[256];
	int attempts;			/* retries so far */
	int64_t due;			/* not before (0: now) */
	bool settled;			/* acked or dead-lettered: drop from hand */
};

struct live {
	struct consumer *c;
	const struct consumer_run_opts *opts;
	struct broker *mq;
	struct broker *dead_mq;		/* dead letters: a connection that consumes nothing */
	bool consuming;
	struct delivery **hand;		/* unacked, in delivery order */
	size_t n_hand, cap_hand;
	int64_t pg_retry_at, mq_retry_at;
	struct backoff pg_backoff, mq_backoff;
	char mq_last_err[CQRS_ERR_MSG_MAX];
	int64_t mq_last_log;
	int64_t next_status;
	bool ready_sent;
	bool busy_logged;
};

/* ---- what a delivery says -------------------------------------------------------- */

struct cqrs_event *
consumer_msg_event(const struct broker_msg *msg, char *why, size_t size)
{
	struct cqrs_event *ev = NULL;
	struct cqrs_err err = { 0 };

	if (size > 0)
		why[0] = '\0';
	if (cqrs_envelope_decode(msg->body, msg->body_len, &ev, &err) < 0) {
		snprintf(why, size, "%.200s", err.msg);
		return NULL;
	}
	return ev;
}

void
consumer_dead_message(const struct broker_msg *msg, const struct cqrs_event *ev,
		      struct broker_message *m)
{
	memset(m, 0, sizeof(*m));
	m->body = msg->body;
	m->body_len = msg->body_len;
	m->message_id = ev != NULL ? ev->id : msg->message_id;
	m->type = ev != NULL ? ev->type : msg->type;
	m->stream = ev != NULL ? ev->stream : msg->stream;
	m->version = ev != NULL ? ev->version : msg->version;
	m->position = ev != NULL ? ev->position : msg->position;
}

/* ---- hand -------------------------------------------------------------------------- */

static void
delivery_free(struct delivery *d)
{
	if (d == NULL)
		return;
	cqrs_broker_msg_clear(&d->msg);
	cqrs_event_free(d->ev);
	free(d);
}

/* Takes msg over. */
static int
hand_add(struct live *L, struct broker_msg *msg)
{
	struct delivery *d = calloc(1, sizeof(*d));

	if (d != NULL && L->n_hand == L->cap_hand) {
		size_t cap = L->cap_hand * 2 + 64;
		struct delivery **v = realloc(L->hand, cap * sizeof(*v));

		if (v != NULL) {
			L->hand = v;
			L->cap_hand = cap;
		}
	}
	if (d == NULL || L->n_hand == L->cap_hand) {
		/* unacked, it comes again with the next session */
		cqrs_log_error(&L->c->log, "out of memory: dropping delivery %" PRIu64, msg->tag);
		free(d);
		cqrs_broker_msg_clear(msg);
		return -1;
	}
	cqrs_broker_msg_move(&d->msg, msg);
	d->ev = consumer_msg_event(&d->msg, d->decode_err, sizeof(d->decode_err));
	if (d->ev != NULL && cqrs_log_enabled(CQRS_LOG_DEBUG)) {
		struct tm tm = { 0 };
		struct timespec now;
		const char *frac = strchr(d->ev->recorded_at, '.');
		double age;

		/* how long the event took from its append to here (same host's clock) */
		clock_gettime(CLOCK_REALTIME, &now);
		if (strptime(d->ev->recorded_at, "%Y-%m-%dT%H:%M:%S", &tm) != NULL) {
			age = (double)(now.tv_sec - timegm(&tm)) + (double)now.tv_nsec / 1e9 -
			      (frac != NULL ? strtod(frac, NULL) : 0.0);
			cqrs_log_debug(&L->c->log, "received %s version %" PRId64 " %.2f ms after its "
						   "append%s",
				       d->ev->stream, d->ev->version, age * 1000.0,
				       d->msg.redelivered ? " (redelivered)" : "");
		}
	}
	L->hand[L->n_hand++] = d;
	return 0;
}

/* Drops the settled deliveries from hand, keeping the order. */
static void
hand_compact(struct live *L)
{
	size_t o = 0;

	for (size_t i = 0; i < L->n_hand; i++) {
		if (L->hand[i]->settled)
			delivery_free(L->hand[i]);
		else
			L->hand[o++] = L->hand[i];
	}
	L->n_hand = o;
}

/* Forgets every delivery: the connection they came on is gone, so they go
 * back to the queue. */
static void
hand_drop(struct live *L)
{
	for (size_t i = 0; i < L->n_hand; i++)
		delivery_free(L->hand[i]);
	L->n_hand = 0;
}

static size_t
hand_ready(const struct live *L, int64_t now)
{
	size_t n = 0;

	for (size_t i = 0; i < L->n_hand; i++)
		n += L->hand[i]->due <= now;
	return n;
}

static size_t
hand_held(const struct live *L, int64_t now)
{
	return L->n_hand - hand_ready(L, now);
}

static int64_t
hand_next_due(const struct live *L)
{
	int64_t next = INT64_MAX;

	for (size_t i = 0; i < L->n_hand; i++)
		if (L->hand[i]->due < next)
			next = L->hand[i]->due;
	return next;
}

/* ---- connections ------------------------------------------------------------------- */

static void
mq_lost(struct live *L, const char *what, const char *msg)
{
	int64_t now = cqrs_now_ms();
	int64_t delay = backoff_next(&L->mq_backoff);

	if (strcmp(msg, L->mq_last_err) != 0 || now - L->mq_last_log >= REPEAT_LOG_MS) {
		cqrs_log_error(&L->c->log, "%s: %s (retrying in %" PRId64 " ms)", what, msg, delay);
		L->mq_last_log = now;
	}
	snprintf(L->mq_last_err, sizeof(L->mq_last_err), "%s", msg);
	cqrs_broker_free(L->mq);
	L->mq = NULL;
	cqrs_broker_free(L->dead_mq);
	L->dead_mq = NULL;
	L->consuming = false;
	atomic_store(&L->c->stats.mq_up, false);
	hand_drop(L);
	L->mq_retry_at = now + delay;
}

static void
pg_lost(struct live *L)
{
	consumer_pg_close(L->c);
	L->c->pg_lost = true;
	L->pg_retry_at = cqrs_now_ms() + backoff_next(&L->pg_backoff);
}

static void
mq_options(struct live *L, struct broker_options *o)
{
	cqrs_broker_config_options(&L->c->cfg->broker, o);
	o->connect_timeout_ms = MQ_TIMEOUT_MS;
	o->connection_name = L->c->app;
	o->confirms = false;	/* dead letters go in transactions */
}

/* Connects and declares the topology (no consumer yet). */
static int
mq_open(struct live *L)
{
	const struct consumer_config *cfg = L->c->cfg;
	struct broker_options o;
	struct cqrs_err err = { 0 };

	mq_options(L, &o);
	if (cqrs_broker_connect(cfg->broker.url, &o, &L->mq, &err) < 0 ||
	    consumer_declare(L->c, L->mq, &err) < 0) {
		mq_lost(L, "RabbitMQ", err.msg);
		return -1;
	}
	if (L->mq_last_err[0] != '\0')
		cqrs_log_info(&L->c->log, "connected to RabbitMQ %s again", cqrs_broker_name(L->mq));
	else
		cqrs_log_info(&L->c->log, "connected to RabbitMQ %s: queue \"%s\"",
			      cqrs_broker_name(L->mq), cfg->queue);
	L->mq_last_err[0] = '\0';
	backoff_reset(&L->mq_backoff);
	atomic_store(&L->c->stats.mq_up, true);
	return 0;
}

/* Takes deliveries: waits up to timeout_ms for the first, then whatever is
 * already buffered, up to `want` in hand. */
static void
receive(struct live *L, int timeout_ms, size_t want)
{
	struct cqrs_err err = { 0 };
	struct broker_msg msg;
	int r;

	if (L->mq == NULL || !L->consuming) {
		if (L->mq != NULL && cqrs_broker_poll(L->mq, &err) < 0)
			mq_lost(L, "RabbitMQ", err.msg);
		if (timeout_ms > 0)
			usleep((useconds_t)(timeout_ms > 250 ? 250 : timeout_ms) * 1000);
		return;
	}
	r = cqrs_broker_next(L->mq, timeout_ms, &msg, &err);
	while (r == 1) {
		hand_add(L, &msg);
		if (L->n_hand >= want)
			return;
		r = cqrs_broker_next(L->mq, 0, &msg, &err);
	}
	if (r < 0)
		mq_lost(L, "RabbitMQ", err.msg);
}

/* ---- settling ---------------------------------------------------------------------- */

static void
log_ctx_of(struct live *L, const struct delivery *d, struct cqrs_log_ctx *log)
{
	*log = L->c->log;
	log->event_id = d->ev != NULL ? d->ev->id : d->msg.message_id;
	log->stream = d->ev != NULL ? d->ev->stream : d->msg.stream;
}

/*
 * Publishes m to the dead-letter exchange, routed by the queue's name, with
 * the reason, the time and the consumer in headers, and commits: when it
 * returns 0 the broker has it. On failure the connection is dropped.
 */
static int
publish_dead(struct live *L, struct broker_message *m, const char *reason, struct cqrs_err *err)
{
	char failed_at[ENVELOPE_TIME_SIZE];
	struct broker_header h[3];
	int rc = 0;

	cqrs_envelope_now(failed_at, sizeof(failed_at));
	h[0] = (struct broker_header){ BROKER_H_REASON, reason };
	h[1] = (struct broker_header){ BROKER_H_FAILED_AT, failed_at };
	h[2] = (struct broker_header){ BROKER_H_CONSUMER, L->c->cfg->name };
	m->exchange = CONSUMER_DEAD_EXCHANGE;
	m->routing_key = L->c->cfg->queue;
	m->extra = h;
	m->n_extra = 3;
	if (L->dead_mq == NULL) {
		struct broker_options o;

		mq_options(L, &o);
		rc = cqrs_broker_connect(L->c->cfg->broker.url, &o, &L->dead_mq, err);
	}
	/* mandatory, on a connection of its own: a letter no queue takes (the
	 * dead queue deleted or unbound) comes back, and the delivery stays
	 * unacked; the reconnect declares the topology again */
	if (rc < 0 || (rc = cqrs_broker_send_held(L->dead_mq, CH_DEAD, m, err)) < 0) {
		mq_lost(L, "RabbitMQ: dead-letter", err->msg);
		return rc;
	}
	return 0;
}

/* Publishes d to the dead-letter exchange with reason; the caller acks. */
static int
dead_letter(struct live *L, struct delivery *d, const char *reason)
{
	struct cqrs_err err = { 0 };
	struct cqrs_log_ctx log;
	struct broker_message m;

	consumer_dead_message(&d->msg, d->ev, &m);
	if (publish_dead(L, &m, reason, &err) < 0)
		return -1;
	log_ctx_of(L, d, &log);
	L->c->stats.dead++;
	if (d->ev != NULL)
		cqrs_log_error(&log, "dead-lettered %s version %" PRId64 " (%s) to \"%s\": %s",
			       d->ev->stream, d->ev->version, d->ev->type, L->c->cfg->dead_queue,
			       reason);
	else
		cqrs_log_error(&log, "dead-lettered message %s to \"%s\": %s", d->msg.message_id,
			       L->c->cfg->dead_queue, reason);
	return 0;
}

/*
 * Acks the deliveries marked `ack` (settling them): one multiple ack when
 * no other delivery in hand has a smaller tag than the largest of them,
 * else one by one. Returns -1 when the connection is lost.
 */
static int
ack_marked(struct live *L, const bool *ack)
{
	struct cqrs_err err = { 0 };
	uint64_t top = 0;
	bool multiple = true;
	size_t n = 0;

	for (size_t i = 0; i < L->n_hand; i++) {
		if (ack[i] && L->hand[i]->msg.tag > top)
			top = L->hand[i]->msg.tag;
		n += ack[i];
	}
	if (n == 0)
		return 0;
	for (size_t i = 0; i < L->n_hand && multiple; i++)
		if (!ack[i] && !L->hand[i]->settled && L->hand[i]->msg.tag < top)
			multiple = false;
	if (multiple && n > 1) {
		if (cqrs_broker_ack(L->mq, top, true, &err) < 0)
			goto lost;
	} else {
		for (size_t i = 0; i < L->n_hand; i++)
			if (ack[i] && cqrs_broker_ack(L->mq, L->hand[i]->msg.tag, false, &err) < 0)
				goto lost;
	}
	for (size_t i = 0; i < L->n_hand; i++)
		if (ack[i])
			L->hand[i]->settled = true;
	return 0;
lost:
	mq_lost(L, "RabbitMQ: ack", err.msg);
	return -1;
}

static int64_t
retry_delay(const struct consumer_config *cfg, int attempts)
{
	int64_t d = cfg->retry_backoff_ms;

	for (int i = 1; i < attempts && d < cfg->retry_backoff_max_ms; i++)
		d *= 2;
	return d > cfg->retry_backoff_max_ms ? cfg->retry_backoff_max_ms : d;
}

/*
 * Handles the ready deliveries at indexes idx[0..n) of hand in one go and
 * settles them. Returns 0, or -1 when a connection was lost (the loop
 * reconnects; what was not settled stays in hand, or is dropped with the
 * AMQP connection).
 */
static int
handle(struct live *L, const size_t *idx, size_t n)
{
	struct consumer *c = L->c;
	struct apply_item *items = NULL;
	size_t *map = NULL;		/* items[j] is hand[map[j]] */
	bool *ack = NULL;
	struct cqrs_err err = { 0 };
	size_t m = 0;
	int rc = 0;

	items = calloc(n, sizeof(*items));
	map = calloc(n, sizeof(*map));
	ack = calloc(L->n_hand, sizeof(*ack));
	if (items == NULL || map == NULL || ack == NULL) {
		cqrs_log_error(&c->log, "out of memory handling a batch; trying again");
		rc = 0;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct delivery *d = L->hand[idx[i]];

		if (d->ev == NULL) {
			/* nothing to hand to a handler: a poison message */
			char why[400];

			snprintf(why, sizeof(why), "not an event envelope: %s", d->decode_err);
			if (dead_letter(L, d, why) < 0) {
				rc = -1;
				goto out;
			}
			ack[idx[i]] = true;
			continue;
		}
		items[m].ev = d->ev;
		map[m++] = idx[i];
	}
	if (m > 0) {
		struct timespec t0, t1;
		uint64_t us;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		rc = apply_all(c, APPLY_LIVE, items, m, NULL, &err);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		us = (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000);
		if (rc == 0)
			cqrs_httpd_hist_observe_us(&c->stats.batch_time, us);
		cqrs_log_debug(&c->log, "batch of %zu events: %d in %" PRIu64 " us", m, rc, us);
	}
	if (rc == APPLY_BUSY || rc == APPLY_NOT_LIVE) {
		/* nothing happened; the caller waits or catches up */
		goto settle;
	}
	if (rc == CQRS_ECONFLICT) {
		cqrs_log_debug(&c->log, "batch: %s; running it again", err.msg);
	} else if (rc < 0) {
		if (c->pg == NULL) {
			cqrs_log_error(&c->log, "lost the PostgreSQL session: %s (reconnecting)",
				       err.msg);
			pg_lost(L);
		} else {
			/* e.g. the schema is missing: wait, as for an outage */
			int64_t delay = backoff_next(&L->pg_backoff);

			cqrs_log_error(&c->log, "%s (retrying in %" PRId64 " ms)", err.msg, delay);
			for (size_t j = 0; j < m; j++)
				if (items[j].outcome == APPLY_PENDING)
					L->hand[map[j]]->due = cqrs_now_ms() + delay;
		}
	}
settle:
	for (size_t j = 0; j < m && L->mq != NULL; j++) {
		struct delivery *d = L->hand[map[j]];
		struct cqrs_log_ctx log;

		switch (items[j].outcome) {
		case APPLY_DONE:
		case APPLY_DUPLICATE:
		case APPLY_IGNORED:
			d->attempts = 0;
			ack[map[j]] = true;
			break;
		case APPLY_RETRY:
			c->stats.retried++;
			if (++d->attempts > c->cfg->retry_limit) {
				char why[700];

				snprintf(why, sizeof(why), "gave up after %d retries: %s",
					 d->attempts - 1, items[j].reason);
				if (dead_letter(L, d, why) < 0) {
					rc = -1;
					goto out;
				}
				ack[map[j]] = true;
				break;
			}
			d->due = cqrs_now_ms() + retry_delay(c->cfg, d->attempts);
			log_ctx_of(L, d, &log);
			cqrs_log_warn(&log, "retry %d of %s version %" PRId64 " in %" PRId64 " ms: %s",
				      d->attempts, d->ev->stream, d->ev->version,
				      retry_delay(c->cfg, d->attempts), items[j].reason);
			break;
		case APPLY_FAIL:
			if (dead_letter(L, d, items[j].reason) < 0) {
				rc = -1;
				goto out;
			}
			ack[map[j]] = true;
			break;
		default:
			break;	/* pending: stays in hand */
		}
	}
	if (L->mq != NULL && ack_marked(L, ack) < 0)
		rc = -1;
	if (rc == APPLY_BUSY || rc == APPLY_NOT_LIVE)
		goto out;
	rc = c->pg == NULL || L->mq == NULL ? -1 : 0;
out:
	if (L->mq != NULL)
		hand_compact(L);
	free(items);
	free(map);
	free(ack);
	return rc;
}

/* The ready deliveries, oldest first, up to batch_size, in one go. Returns
 * as handle(), or APPLY_BUSY / APPLY_NOT_LIVE. */
static int
handle_ready(struct live *L)
{
	size_t *idx, n = 0, max = (size_t)L->c->cfg->batch_size;
	int64_t now = cqrs_now_ms();
	int rc;

	idx = calloc(L->n_hand > 0 ? L->n_hand : 1, sizeof(*idx));
	if (idx == NULL)
		return 0;
	for (size_t i = 0; i < L->n_hand && n < max; i++)
		if (L->hand[i]->due <= now)
			idx[n++] = i;
	rc = n > 0 ? handle(L, idx, n) : 0;
	free(idx);
	return rc;
}

/* ---- catch-up hooks ---------------------------------------------------------------- */

static int
hook_tick(void *arg, struct cqrs_err *err)
{
	struct live *L = arg;

	(void)err;
	/* deliveries that come meanwhile wait in hand (up to the prefetch) */
	if (L->mq != NULL)
		receive(L, 0, SIZE_MAX);
	return 0;
}

static int
hook_dead(void *arg, const struct cqrs_event *ev, const char *reason, struct cqrs_err *err)
{
	struct live *L = arg;
	char *body;
	struct broker_message m = {
		.message_id = ev->id,
		.type = ev->type,
		.stream = ev->stream,
		.version = ev->version,
		.position = ev->position,
	};
	int rc;

	if (L->mq == NULL && mq_open(L) < 0)
		return cqrs_err_set(err, CQRS_EUNAVAILABLE, "RabbitMQ: %s", L->mq_last_err);
	body = cqrs_envelope_encode(ev);
	if (body == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	m.body = body;
	m.body_len = strlen(body);
	rc = publish_dead(L, &m, reason, err);
	free(body);
	return rc;
}

/* ---- the loop ---------------------------------------------------------------------- */

static void
status(struct live *L, bool force)
{
	struct consumer *c = L->c;
	int64_t now = cqrs_now_ms();

	atomic_store(&c->stats.in_hand, L->n_hand);
	atomic_store(&c->stats.held, hand_held(L, now));
	if (!force && now < L->next_status)
		return;
	L->next_status = now + c->cfg->status_ms;
	if (L->mq != NULL && L->consuming && cqrs_broker_ok(L->mq)) {
		/* the backlog behind what is in hand, for /metrics; a failure
		 * breaks the connection, which the loop then makes again */
		struct cqrs_err err = { 0 };
		uint64_t ready = 0;
		if (cqrs_broker_queue_depth(L->mq, c->cfg->queue, &ready, &err) == 0)
			atomic_store(&c->stats.queue_ready, ready);
		else
			cqrs_log_warn(&c->log, "%s", err.msg);
	}
	if (!L->ready_sent)
		return;
	cqrs_sdnotify_status("live: %" PRIu64 " events handled, %" PRIu64 " duplicates, %zu in hand, "
			"%zu held for retry, %" PRIu64 " dead-lettered%s",
			c->stats.handled, c->stats.duplicates, L->n_hand, hand_held(L, now),
			c->stats.dead, c->pg == NULL ? "; PostgreSQL unreachable" : "");
}

/* Waits up to ms (in slices), taking deliveries meanwhile. */
static void
idle(struct live *L, int64_t ms)
{
	int64_t end = cqrs_now_ms() + ms;

	while (!consumer_stopping(L->c)) {
		int64_t left = end - cqrs_now_ms();

		if (left <= 0)
			break;
		consumer_watchdog(L->c);
		receive(L, (int)(left > 250 ? 250 : left), (size_t)L->c->cfg->prefetch * 2);
	}
}

/*
 * The start of an AMQP session: suspects (redelivered) one at a time, then
 * the consumer with the full prefetch.
 */
static int
start_consuming(struct live *L)
{
	struct consumer *c = L->c;
	struct cqrs_err err = { 0 };
	struct broker_msg msg;
	size_t suspects = 0;
	int r;

	for (;;) {
		if (consumer_stopping(c) || c->pg == NULL)
			return -1;
		consumer_watchdog(c);
		r = cqrs_broker_get(L->mq, c->cfg->queue, &msg, &err);
		if (r < 0) {
			mq_lost(L, "RabbitMQ", err.msg);
			return -1;
		}
		if (r == 0)
			break;
		hand_add(L, &msg);
		if (L->n_hand == 0 || !L->hand[L->n_hand - 1]->msg.redelivered)
			break;
		suspects++;
		/* alone, and acked before the next one is taken */
		for (;;) {
			size_t i = L->n_hand - 1;

			r = handle(L, &i, 1);
			if (r == APPLY_BUSY || r == APPLY_NOT_LIVE) {
				idle(L, BUSY_WAIT_MS);
				if (consumer_stopping(c) || L->mq == NULL)
					return -1;
				continue;
			}
			if (r < 0)
				return -1;
			break;
		}
	}
	if (suspects > 0)
		cqrs_log_info(&c->log, "handled %zu redelivered event%s one by one", suspects,
			      suspects == 1 ? "" : "s");
	if (cqrs_broker_consume(L->mq, c->cfg->queue, c->cfg->prefetch, &err) < 0) {
		mq_lost(L, "RabbitMQ", err.msg);
		return -1;
	}
	L->consuming = true;
	return 0;
}

/* Stop: no more deliveries; handle those already here; ack; close. */
static void
drain(struct live *L)
{
	struct consumer *c = L->c;
	struct cqrs_err err = { 0 };
	size_t before;

	if (L->mq != NULL && L->consuming) {
		if (cqrs_broker_cancel(L->mq, &err) < 0) {
			mq_lost(L, "RabbitMQ: cancel", err.msg);
			return;
		}
		/* what was delivered before cancel-ok waits in the library */
		receive(L, 0, SIZE_MAX);
	}
	before = L->n_hand;
	while (L->mq != NULL && c->pg != NULL && hand_ready(L, cqrs_now_ms()) > 0) {
		int rc;

		consumer_watchdog(c);
		rc = handle_ready(L);

		if (rc != 0)
			break;
	}
	if (before > 0)
		cqrs_log_info(&c->log, "stopping: handled %zu of %zu events in hand", before - L->n_hand,
			      before);
}

int
consumer_run(struct consumer *c, const struct consumer_run_opts *opts)
{
	static const struct consumer_run_opts none = { 0 };
	struct live L = { 0 };
	struct catchup_hooks hooks = { hook_tick, hook_dead, &L };
	struct cqrs_err err = { 0 };
	bool replay, checked = false, was_ready = false;
	int result = 0;

	if (opts == NULL)
		opts = &none;
	replay = opts->replay;
	L.c = c;
	L.opts = opts;
	backoff_init(&L.pg_backoff, BACKOFF_MIN_MS, BACKOFF_MAX_MS, 0);
	backoff_init(&L.mq_backoff, BACKOFF_MIN_MS, BACKOFF_MAX_MS, 0);
	L.next_status = cqrs_now_ms() + c->cfg->status_ms;
	cqrs_log_info(&c->log, "starting: groups %s%s, queue \"%s\", %zu handlers, %zu bindings%s",
		      c->cfg->groups[0], c->cfg->n_groups > 1 ? " ..." : "", c->cfg->queue,
		      c->n_handlers, c->n_bindings, opts->replay ? ", replay first" : "");
	if (!c->cfg->quorum && c->cfg->delivery_limit > 0)
		cqrs_log_warn(&c->log, "queue_type = classic: RabbitMQ has no delivery limit for "
				       "classic queues, so an event that crashes the consumer is "
				       "delivered again and again (quorum queues dead-letter it)");
	if (!opts->once && consumer_metrics_start(c, &err) < 0) {
		cqrs_log_error(&c->log, "%s", err.msg);
		return 1;
	}

	while (!consumer_stopping(c)) {
		int64_t now = cqrs_now_ms();
		int rc;

		consumer_watchdog(c);
		status(&L, false);
		if (c->pg == NULL) {
			if (now < L.pg_retry_at) {
				idle(&L, L.pg_retry_at - now);
				continue;
			}
			if (consumer_pg_open(c) < 0) {
				if (opts->once) {
					result = 1;
					break;
				}
				L.pg_retry_at = cqrs_now_ms() + backoff_next(&L.pg_backoff);
				continue;
			}
			backoff_reset(&L.pg_backoff);
			checked = false;
		}
		if (L.mq == NULL) {
			if (now < L.mq_retry_at) {
				idle(&L, L.mq_retry_at - now);
				continue;
			}
			if (mq_open(&L) < 0) {
				if (opts->once) {
					result = 1;
					break;
				}
				continue;
			}
		}
		if (!checked) {
			bool live;

			if ((rc = catchup_load_state(c, &live, &err)) < 0) {
				cqrs_log_error(&c->log, "%s", err.msg);
				if (opts->once) {
					result = 1;
					break;
				}
				pg_lost(&L);
				continue;
			}
			if (!L.ready_sent && !opts->once) {
				cqrs_sdnotify_ready(live && !replay ? "live" : "catching up from the store");
				L.ready_sent = true;
			}
			if (replay || !live) {
				rc = catchup_run(c, replay, &hooks, &err);
				if (rc == 1) {
					result = opts->once ? 1 : 0;	/* stopped */
					break;
				}
				if (rc < 0) {
					cqrs_log_error(&c->log, "%s: %s", replay ? "replay" : "catch-up",
						       err.msg);
					if (opts->once && rc != CQRS_EUNAVAILABLE) {
						result = 1;
						break;
					}
					if (c->pg == NULL || rc == CQRS_EUNAVAILABLE)
						pg_lost(&L);
					else
						L.pg_retry_at = cqrs_now_ms() +
								backoff_next(&L.pg_backoff);
					if (c->pg != NULL && rc != CQRS_EUNAVAILABLE) {
						idle(&L, L.pg_retry_at - cqrs_now_ms());
					}
					continue;
				}
				replay = false;
			}
			checked = true;
			atomic_store(&c->stats.live, true);
			if (opts->once)
				break;
		}
		if (!L.consuming) {
			if (start_consuming(&L) < 0)
				continue;
			if (!was_ready)
				cqrs_log_info(&c->log, "live: consuming \"%s\" (prefetch %d, batch %d)",
					      c->cfg->queue, c->cfg->prefetch, c->cfg->batch_size);
			was_ready = true;
			status(&L, true);
		}

		/* live: take deliveries, handle the ready ones */
		now = cqrs_now_ms();
		{
			size_t ready = hand_ready(&L, now);
			int64_t wait = IDLE_WAIT_MS;
			int64_t due = hand_next_due(&L);

			if (ready > 0)
				wait = 0;
			else if (due != INT64_MAX && due - now < wait)
				wait = due - now > 0 ? due - now : 0;
			receive(&L, (int)wait, (size_t)c->cfg->batch_size + hand_held(&L, now));
		}
		if (L.mq == NULL || !L.consuming)
			continue;
		rc = handle_ready(&L);
		if (rc == APPLY_BUSY) {
			if (!L.busy_logged)
				cqrs_log_info(&c->log, "waiting: a replay or catch-up of \"%s\" holds "
						       "the lock",
					      c->cfg->name);
			L.busy_logged = true;
			idle(&L, BUSY_WAIT_MS);
			continue;
		}
		if (L.busy_logged && rc == 0)
			cqrs_log_info(&c->log, "the replay or catch-up is over: going on");
		L.busy_logged = false;
		if (rc == APPLY_NOT_LIVE) {
			cqrs_log_info(&c->log, "not live any more (a replay stopped half-way?): "
					       "catching up from the store");
			checked = false;
			atomic_store(&c->stats.live, false);
		}
	}

	cqrs_sdnotify_stopping();
	if (!opts->once)
		drain(&L);
	hand_drop(&L);
	free(L.hand);
	cqrs_broker_free(L.mq);
	cqrs_broker_free(L.dead_mq);
	consumer_pg_close(c);
	consumer_metrics_stop(c);
	cqrs_log_info(&c->log, "stopped: %" PRIu64 " events handled (%" PRIu64 " of them read from "
			       "the store as missing), %" PRIu64 " duplicates, %" PRIu64
			       " fed from the store by a catch-up, %" PRIu64 " dead-lettered",
		      c->stats.handled + c->stats.fetched, c->stats.fetched, c->stats.duplicates,
		      c->stats.caught_up, c->stats.dead);
	return result;
}

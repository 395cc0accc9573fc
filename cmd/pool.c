/* pool.c - asynchronous libpq connections on a libevent loop. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "clock.h"
#include "cqrs/err.h"
#include "cqrs/log.h"
#include "pool.h"
#include "store.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

/* Runs on every new connection before it serves: an append acknowledged to
 * a client must be durable, whatever the role's or database's default (a
 * role made for bulk loads with synchronous_commit = off, say). */
static const char setup_sql[] = "SET synchronous_commit TO on";

/* Warnings about queries that waited out the timeout in the queue, at most
 * one per this many ms (the commands' own answers are logged anyway). */
#define QUEUE_WARN_MS 10000

/* CONNECTING: PQconnectPoll; SETUP: setup_sql sent; both count as coming up.
 * HELD: idle, but for its holder's queries only. */
enum pc_state { PC_DOWN, PC_CONNECTING, PC_SETUP, PC_IDLE, PC_BUSY, PC_HELD };

struct job {
	TAILQ_ENTRY(job) link;
	const char *sql;
	int nparams;
	const char *const *values;
	pool_cb cb;		/* NULL: the pool's own query (a hold's rollback) */
	pool_hold_cb hold_cb;	/* not NULL: a wait for a connection to hold */
	void *arg;
	int64_t deadline;	/* cqrs_now_ms(); 0: none */
	struct pool_batcher *batcher;
	size_t bytes;
	int64_t sent_ms;	/* cqrs_now_ms() when sent */
};

struct pool_hold {
	struct pconn *c;	/* NULL once the connection is gone */
};
TAILQ_HEAD(job_list, job);

struct pconn {
	struct pool *pool;
	int idx;
	enum pc_state state;
	PGconn *pg;
	struct event *ev;	/* while connecting: one-shot readiness */
	struct event *ev_read;	/* while up: persistent, results and closes */
	struct event *ev_write;	/* while up: one-shot, when libpq has more to send */
	struct event *timer;	/* reconnect backoff */
	struct event *deadline;	/* connect_timeout while coming up; the query timeout while busy */
	int connect_ms;		/* the connection's connect_timeout, 0: none */
	int backoff_ms;
	struct job *job;	/* running query */
	PGresult *res;		/* last result of the running query */
	int failures;		/* consecutive failed connects, for log volume */
	struct pool_hold *hold;	/* its holder, if held */
	int setup_step;		/* statements prepared so far */
};

struct pool {
	struct event_base *base;
	char *conninfo;
	char *name;
	int size;
	struct pconn *conns;
	struct job_list queue;
	int queued;
	int up;
	int64_t timeout_ms;	/* a query's deadline after pool_query(); 0: none */
	struct event *queue_timer;	/* the oldest queued query's deadline */
	struct event *stall_timer;	/* a running append stalls: dispatch() again */
	int64_t queue_timer_at;		/* the deadline it is armed for, 0: none */
	int64_t queue_warned_at;
	int queue_expired;	/* since the last warning */
	struct cqrs_log_ctx log;
	const char *prepared[POOL_MAX_PREPARED];	/* pool_prepare(): statement k is "cqrs_k" */
	int n_prepared;
};

static void conn_start(struct pconn *c);
static void dispatch(struct pool *p);
static void queue_arm(struct pool *p);

static void
queue_add(struct pool *p, struct job *j)
{
	TAILQ_INSERT_TAIL(&p->queue, j, link);
	p->queued++;
	if (j->batcher != NULL)
		j->batcher->waiting++;
}

static void
queue_remove(struct pool *p, struct job *j)
{
	TAILQ_REMOVE(&p->queue, j, link);
	p->queued--;
	if (j->batcher != NULL)
		j->batcher->waiting--;
}

/*
 * Whether a query of b may go at now: when none of b's runs, or when fewer
 * than b->max_inflight run and enough wait to make a batch worth its own
 * commit (b->min_join). One that has run b->stall_ms is not counted: an
 * append stuck on a lock someone holds must not hold up the others. When
 * the answer is no, *retry gets the time it may change (0: when a query
 * ends).
 */
static bool
batch_may_go(const struct pool *p, const struct pool_batcher *b, int64_t now, int64_t *retry)
{
	int running = 0;
	int64_t first_stall = 0;

	for (int i = 0; i < p->size; i++) {
		const struct job *r = p->conns[i].job;

		if (r == NULL || r->batcher != b || r->sent_ms + b->stall_ms <= now)
			continue;
		running++;
		if (first_stall == 0 || r->sent_ms + b->stall_ms < first_stall)
			first_stall = r->sent_ms + b->stall_ms;
	}
	if (running == 0 || (running < b->max_inflight && b->waiting >= b->min_join))
		return true;
	*retry = first_stall;
	return false;
}

/* A query that will not be sent, or whose connection went away. */
static void
job_fail(struct job *j)
{
	if (j->hold_cb != NULL)
		j->hold_cb(j->arg, NULL);
	else if (j->cb != NULL)
		j->cb(j->arg, NULL, NULL);
	free(j);
}

static void
add_ms(struct event *ev, int64_t ms)
{
	struct timeval tv;

	if (ms < 0)
		ms = 0;
	tv.tv_sec = (time_t)(ms / 1000);
	tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
	evtimer_add(ev, &tv);
}

static void
set_event(struct pconn *c, short what, event_callback_fn fn)
{
	if (c->ev != NULL) {
		event_free(c->ev);
		c->ev = NULL;
	}
	if (what == 0)
		return;
	c->ev = event_new(c->pool->base, PQsocket(c->pg), what, fn, c);
	event_add(c->ev, NULL);
}

/* Fails every queued job when nothing is up or coming up: callers answer
 * "unavailable" now rather than wait for a server that is gone. */
static void
fail_queue_if_down(struct pool *p)
{
	for (int i = 0; i < p->size; i++)
		if (p->conns[i].state != PC_DOWN)
			return;
	while (!TAILQ_EMPTY(&p->queue)) {
		struct job *j = TAILQ_FIRST(&p->queue);
		queue_remove(p, j);
		job_fail(j);
	}
	queue_arm(p);
}

static void
reconnect_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	conn_start(arg);
}

/* The connection is lost: finish its job as unknown, schedule a reconnect. */
static void
conn_down(struct pconn *c, const char *why)
{
	struct pool *p = c->pool;
	struct job *j = c->job;
	struct timeval tv;

	evtimer_del(c->deadline);
	if (c->hold != NULL) {
		c->hold->c = NULL;
		c->hold = NULL;
	}
	if (c->state == PC_IDLE || c->state == PC_BUSY || c->state == PC_HELD) {
		p->up--;
		cqrs_log_warn(&p->log, "PostgreSQL connection %d lost: %s", c->idx, why);
	} else if (c->failures++ == 0 || c->failures % 20 == 0) {
		cqrs_log_warn(&p->log, "cannot connect to PostgreSQL (connection %d, attempt %d): %s",
			      c->idx, c->failures, why);
	}
	set_event(c, 0, NULL);
	if (c->ev_read != NULL) {
		event_free(c->ev_read);
		c->ev_read = NULL;
	}
	if (c->ev_write != NULL) {
		event_free(c->ev_write);
		c->ev_write = NULL;
	}
	c->state = PC_DOWN;
	c->job = NULL;
	PQclear(c->res);
	c->res = NULL;
	PQfinish(c->pg);
	c->pg = NULL;
	if (j != NULL)
		job_fail(j);
	tv.tv_sec = c->backoff_ms / 1000;
	tv.tv_usec = (c->backoff_ms % 1000) * 1000;
	c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
	evtimer_add(c->timer, &tv);
	fail_queue_if_down(p);
}

static const char *
pg_error(PGconn *pg)
{
	static char buf[256];
	const char *m = pg ? PQerrorMessage(pg) : "out of memory";
	size_t n = strcspn(m, "\n");

	snprintf(buf, sizeof(buf), "%.*s", (int)n, m);
	return buf;
}

/*
 * A connection's deadline passed: it did not come up within connect_timeout
 * (PQconnectPoll ignores that setting; only libpq's blocking calls keep it),
 * or its query went unanswered for the query timeout. The server may be
 * frozen, overloaded or cut off without a reset; either way the connection
 * is given up, and its query (if any) fails with an unknown outcome. A query
 * already sent may still commit later on the server: the command's id makes
 * a resend of it a duplicate, not a second append.
 */
static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pconn *c = arg;
	struct pool *p = c->pool;
	char why[128];

	(void)fd;
	(void)what;
	if (c->state == PC_BUSY) {
		/* conn_down() logs it, as a connection lost */
		snprintf(why, sizeof(why), "no answer within cmd.store_timeout (%.1f s); "
			 "closed, the query's outcome is unknown", (double)p->timeout_ms / 1000);
	} else {
		snprintf(why, sizeof(why), "no connection within connect_timeout (%d s)",
			 c->connect_ms / 1000);
	}
	conn_down(c, why);
}

/* Arms the queue's timer for the oldest query's deadline (one timeout for
 * all: the queue is in deadline order). */
static void
queue_arm(struct pool *p)
{
	struct job *head = TAILQ_FIRST(&p->queue);
	int64_t at = head != NULL ? head->deadline : 0;

	if (at == p->queue_timer_at)
		return;
	p->queue_timer_at = at;
	if (at == 0)
		evtimer_del(p->queue_timer);
	else
		add_ms(p->queue_timer, at - cqrs_now_ms());
}

/* Queries that waited out the timeout for a connection fail; they were never
 * sent, but the caller cannot tell that apart from any other lost query. */
static void
queue_expire(evutil_socket_t fd, short what, void *arg)
{
	struct pool *p = arg;
	int64_t now = cqrs_now_ms();
	struct job *j;

	(void)fd;
	(void)what;
	p->queue_timer_at = 0;
	while ((j = TAILQ_FIRST(&p->queue)) != NULL && j->deadline != 0 && j->deadline <= now) {
		queue_remove(p, j);
		p->queue_expired++;
		job_fail(j);
	}
	if (p->queue_expired > 0 && now - p->queue_warned_at >= QUEUE_WARN_MS) {
		cqrs_log_warn(&p->log, "%d queries waited over cmd.store_timeout (%.1f s) for a "
				       "PostgreSQL connection (%d of %d up)", p->queue_expired,
			      (double)p->timeout_ms / 1000, p->up, p->size);
		p->queue_warned_at = now;
		p->queue_expired = 0;
	}
	queue_arm(p);
}

/* Flushes the outgoing query; waits for writability while libpq has more. */
static void
arm_query(struct pconn *c)
{
	int f = PQflush(c->pg);

	if (f < 0)
		conn_down(c, pg_error(c->pg));
	else if (f == 1)
		event_add(c->ev_write, NULL);
}

/* The connection serves: ready for queries. */
static void
conn_up(struct pconn *c)
{
	struct pool *p = c->pool;

	evtimer_del(c->deadline);
	if (c->failures > 0)
		cqrs_log_info(&p->log, "PostgreSQL connection %d is back", c->idx);
	c->failures = 0;
	c->state = PC_IDLE;
	c->backoff_ms = BACKOFF_MIN_MS;
	p->up++;
	dispatch(p);
}

static void
stmt_name(char *buf, size_t size, int k)
{
	snprintf(buf, size, "cqrs_%d", k);
}

/* The statement name of sql, if it was prepared; NULL if not. */
static const char *
prepared_name(const struct pool *p, const char *sql, char *buf, size_t size)
{
	for (int k = 0; k < p->n_prepared; k++) {
		if (p->prepared[k] == sql) {
			stmt_name(buf, size, k);
			return buf;
		}
	}
	return NULL;
}

/* Sends sql, as its prepared statement when it has one. */
static int
send_query(struct pconn *c, const char *sql, int nparams, const char *const *values)
{
	char name[24];

	if (prepared_name(c->pool, sql, name, sizeof(name)) != NULL)
		return PQsendQueryPrepared(c->pg, name, nparams, values, NULL, NULL, 0);
	return PQsendQueryParams(c->pg, sql, nparams, NULL, values, NULL, NULL, 0);
}

/* One step of the setup is done (its result in c->res): setup_sql, then
 * each statement of pool_prepare(). */
static void
setup_done(struct pconn *c)
{
	struct pool *p = c->pool;
	PGresult *res = c->res;
	const char *what = c->setup_step == 0 ? setup_sql : p->prepared[c->setup_step - 1];
	char why[256], name[24];

	c->res = NULL;
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

		if (c->setup_step == 0)
			snprintf(why, sizeof(why), "%s: %.200s", setup_sql, m != NULL ? m : pg_error(c->pg));
		else
			snprintf(why, sizeof(why), "preparing \"%.60s\": %.120s (is the schema "
				 "migrated? cqrsctl migrate)", what, m != NULL ? m : pg_error(c->pg));
		PQclear(res);
		conn_down(c, why);
		return;
	}
	PQclear(res);
	if (c->setup_step < p->n_prepared) {
		stmt_name(name, sizeof(name), c->setup_step);
		if (!PQsendPrepare(c->pg, name, p->prepared[c->setup_step], 0, NULL)) {
			conn_down(c, pg_error(c->pg));
			return;
		}
		c->setup_step++;
		arm_query(c);
		return;
	}
	conn_up(c);
}

/*
 * Socket events of a connection that is up. The read event stays armed for
 * the connection's life (no epoll_ctl per query); while idle it only sees
 * notices or the server closing the connection.
 */
static void
conn_io(evutil_socket_t fd, short what, void *arg)
{
	struct pconn *c = arg;
	struct pool *p = c->pool;

	(void)fd;
	if (what & EV_WRITE) {
		arm_query(c);
		if (c->state == PC_DOWN)
			return;
	}
	if (!(what & EV_READ))
		return;
	if (!PQconsumeInput(c->pg)) {
		conn_down(c, pg_error(c->pg));
		return;
	}
	if (c->state == PC_IDLE || c->state == PC_HELD) {
		PGnotify *n;
		while ((n = PQnotifies(c->pg)) != NULL)
			PQfreemem(n);
		if (PQstatus(c->pg) == CONNECTION_BAD)
			conn_down(c, pg_error(c->pg));
		return;
	}
	while (!PQisBusy(c->pg)) {
		PGresult *r = PQgetResult(c->pg);
		if (r == NULL && c->state == PC_SETUP) {
			setup_done(c);
			return;
		}
		if (r == NULL) {
			/* the query is complete: hand over its (last) result */
			struct job *j = c->job;
			PGresult *res = c->res;
			c->job = NULL;
			c->res = NULL;
			evtimer_del(c->deadline);
			if (PQstatus(c->pg) == CONNECTION_BAD) {
				/* answer with the error result, then reconnect */
				if (c->hold != NULL) {
					c->hold->c = NULL;
					c->hold = NULL;
				}
				if (j->cb != NULL)
					j->cb(j->arg, res, c->pg);
				PQclear(res);
				free(j);
				conn_down(c, pg_error(c->pg));
				return;
			}
			/* a held connection waits for its holder's next query */
			c->state = c->hold != NULL ? PC_HELD : PC_IDLE;
			if (j->cb != NULL)
				j->cb(j->arg, res, c->pg);
			PQclear(res);
			free(j);
			dispatch(p);
			return;
		}
		PQclear(c->res);
		c->res = r;
	}
	if (PQstatus(c->pg) == CONNECTION_BAD)
		conn_down(c, pg_error(c->pg));
}

/*
 * j (taken from the queue's head) and the queries of its batcher queued
 * behind it, as one query when there are several and they join. Returns
 * the query to send.
 */
static struct job *
batch_take(struct pool *p, struct job *j, int64_t now)
{
	struct pool_batcher *b = j->batcher;
	struct job *take[256], *next, *joined;
	void *args[256];
	size_t bytes = j->bytes;
	int n = 1, max = b->max < 256 ? b->max : 256;

	take[0] = j;
	for (struct job *o = TAILQ_FIRST(&p->queue); o != NULL && n < max; o = next) {
		next = TAILQ_NEXT(o, link);
		if (o->batcher != b || (o->deadline != 0 && o->deadline <= now) ||
		    bytes + o->bytes > b->max_bytes)
			continue;
		bytes += o->bytes;
		take[n++] = o;
	}
	if (n == 1 || (joined = calloc(1, sizeof(*joined))) == NULL)
		return j;
	for (int i = 0; i < n; i++)
		args[i] = take[i]->arg;
	if (b->join(b->ctx, args, n, &joined->sql, &joined->nparams, &joined->values,
		    &joined->cb, &joined->arg) != 0) {
		free(joined);
		return j;
	}
	joined->deadline = j->deadline;
	joined->batcher = b;
	for (int i = 1; i < n; i++) {
		queue_remove(p, take[i]);
		free(take[i]);
	}
	free(j);
	return joined;
}

/* c (idle) is now held by the hold j waited for. */
static void
hold_start(struct pconn *c, struct job *j)
{
	struct pool_hold *h = calloc(1, sizeof(*h));
	pool_hold_cb cb = j->hold_cb;
	void *arg = j->arg;

	free(j);
	if (h == NULL) {
		cb(arg, NULL);
		return;
	}
	h->c = c;
	c->hold = h;
	c->state = PC_HELD;
	cb(arg, h);
}

static void
dispatch(struct pool *p)
{
	int64_t retry = 0;

	for (int i = 0; i < p->size && !TAILQ_EMPTY(&p->queue); i++) {
		struct pconn *c = &p->conns[i];
		struct pool_batcher *blocked;
		struct job *j;
		int64_t now;

		if (c->state != PC_IDLE)
			continue;
		/* the first query that may go: a batcher at its limit waits */
		now = cqrs_now_ms();
		blocked = NULL;
		for (j = TAILQ_FIRST(&p->queue); j != NULL; j = TAILQ_NEXT(j, link)) {
			if (j->batcher == NULL || (j->deadline != 0 && j->deadline <= now))
				break;
			if (j->batcher == blocked)
				continue;
			if (batch_may_go(p, j->batcher, now, &retry))
				break;
			blocked = j->batcher;
		}
		if (j == NULL)
			break;
		queue_remove(p, j);
		if (j->deadline != 0 && j->deadline <= now) {
			/* its time ran out in the queue (the timer is due): not sent */
			p->queue_expired++;
			job_fail(j);
			i--;	/* c is still idle, unless the callback gave it a query */
			continue;
		}
		if (j->hold_cb != NULL) {
			hold_start(c, j);
			continue;
		}
		if (j->batcher != NULL)
			j = batch_take(p, j, now);
		j->sent_ms = now;
		c->job = j;
		c->state = PC_BUSY;
		if (!send_query(c, j->sql, j->nparams, j->values)) {
			conn_down(c, pg_error(c->pg));
			continue;
		}
		if (j->deadline != 0)
			add_ms(c->deadline, j->deadline - cqrs_now_ms());
		arm_query(c);
	}
	/* appends held back for one that runs: look again when it stalls */
	if (retry != 0 && !TAILQ_EMPTY(&p->queue))
		add_ms(p->stall_timer, retry - cqrs_now_ms());
	queue_arm(p);
}

static void
stall_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	dispatch(arg);
}

static void
connect_io(evutil_socket_t fd, short what, void *arg)
{
	struct pconn *c = arg;
	struct pool *p = c->pool;

	(void)fd;
	(void)what;
	switch (PQconnectPoll(c->pg)) {
	case PGRES_POLLING_READING:
		set_event(c, EV_READ, connect_io);
		break;
	case PGRES_POLLING_WRITING:
		set_event(c, EV_WRITE, connect_io);
		break;
	case PGRES_POLLING_OK:
		if (PQsetnonblocking(c->pg, 1) != 0) {
			conn_down(c, pg_error(c->pg));
			return;
		}
		set_event(c, 0, NULL);
		c->ev_read = event_new(p->base, PQsocket(c->pg), EV_READ | EV_PERSIST, conn_io, c);
		c->ev_write = event_new(p->base, PQsocket(c->pg), EV_WRITE, conn_io, c);
		if (c->ev_read == NULL || c->ev_write == NULL) {
			conn_down(c, "out of memory");
			return;
		}
		event_add(c->ev_read, NULL);
		/* still under connect_timeout */
		c->state = PC_SETUP;
		c->setup_step = 0;
		if (!PQsendQuery(c->pg, setup_sql)) {
			conn_down(c, pg_error(c->pg));
			return;
		}
		arm_query(c);
		break;
	default:
		conn_down(c, pg_error(c->pg));
		break;
	}
}

/* The connection's connect_timeout as libpq reads it (seconds; 0 or less:
 * none; 1 counts as 2), in ms. */
static int
connect_timeout_ms(PGconn *pg)
{
	PQconninfoOption *opts = PQconninfo(pg);
	int ms = 0;

	for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++) {
		if (strcmp(o->keyword, "connect_timeout") == 0 && o->val != NULL) {
			long s = strtol(o->val, NULL, 10);
			if (s > 0)
				ms = (int)(s < 2 ? 2 : s > 86400 ? 86400 : s) * 1000;
			break;
		}
	}
	PQconninfoFree(opts);
	return ms;
}

static void
conn_start(struct pconn *c)
{
	/* the defaults, then the user's conninfo expanded from "dbname" */
	const char *keys[] = { CQRS_PG_DEFAULT_KEYS, "dbname", NULL };
	const char *vals[] = { CQRS_PG_DEFAULT_VALUES, c->pool->conninfo, NULL };

	c->pg = PQconnectStartParams(keys, vals, 1);
	c->state = PC_CONNECTING;	/* so conn_down logs a failure as a failed connect */
	if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD) {
		conn_down(c, pg_error(c->pg));
		return;
	}
	c->connect_ms = connect_timeout_ms(c->pg);
	if (c->connect_ms > 0)
		add_ms(c->deadline, c->connect_ms);
	set_event(c, EV_WRITE, connect_io);
}

struct pool *
pool_new(struct event_base *base, const char *conninfo, int size, const char *name,
	 int64_t timeout_ms)
{
	struct pool *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return NULL;
	p->base = base;
	p->size = size;
	p->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
	p->conninfo = strdup(conninfo);
	p->name = strdup(name);
	p->conns = calloc((size_t)size, sizeof(*p->conns));
	TAILQ_INIT(&p->queue);
	p->queue_timer = evtimer_new(base, queue_expire, p);
	p->stall_timer = evtimer_new(base, stall_cb, p);
	if (p->conninfo == NULL || p->name == NULL || p->conns == NULL || p->queue_timer == NULL ||
	    p->stall_timer == NULL) {
		pool_free(p);
		return NULL;
	}
	p->log.comp = p->name;
	for (int i = 0; i < size; i++) {
		struct pconn *c = &p->conns[i];
		c->pool = p;
		c->idx = i;
		c->backoff_ms = BACKOFF_MIN_MS;
		c->timer = evtimer_new(base, reconnect_cb, c);
		c->deadline = evtimer_new(base, deadline_cb, c);
		if (c->timer == NULL || c->deadline == NULL) {
			pool_free(p);
			return NULL;
		}
	}
	for (int i = 0; i < size; i++)
		conn_start(&p->conns[i]);
	return p;
}

void
pool_free(struct pool *p)
{
	if (p == NULL)
		return;
	for (int i = 0; p->conns != NULL && i < p->size; i++) {
		struct pconn *c = &p->conns[i];
		if (c->ev != NULL)
			event_free(c->ev);
		if (c->ev_read != NULL)
			event_free(c->ev_read);
		if (c->ev_write != NULL)
			event_free(c->ev_write);
		if (c->timer != NULL)
			event_free(c->timer);
		if (c->deadline != NULL)
			event_free(c->deadline);
		PQclear(c->res);
		free(c->job);
		if (c->hold != NULL)
			c->hold->c = NULL;
		PQfinish(c->pg);
	}
	while (!TAILQ_EMPTY(&p->queue)) {
		struct job *j = TAILQ_FIRST(&p->queue);
		TAILQ_REMOVE(&p->queue, j, link);
		free(j);
	}
	if (p->queue_timer != NULL)
		event_free(p->queue_timer);
	if (p->stall_timer != NULL)
		event_free(p->stall_timer);
	free(p->conns);
	free(p->conninfo);
	free(p->name);
	free(p);
}

/* Whether a connection is up or coming up. */
static bool
pool_coming(const struct pool *p)
{
	for (int i = 0; i < p->size; i++)
		if (p->conns[i].state != PC_DOWN)
			return true;
	return false;
}

int
pool_query(struct pool *p, const char *sql, int nparams, const char *const *values,
	   pool_cb cb, void *arg)
{
	return pool_query_batched(p, NULL, 0, sql, nparams, values, cb, arg);
}

/* A query (or a hold, sql NULL) with its deadline from now. */
static struct job *
job_new(const struct pool *p, const char *sql, int nparams, const char *const *values,
	pool_cb cb, void *arg)
{
	struct job *j = calloc(1, sizeof(*j));

	if (j == NULL)
		return NULL;
	j->sql = sql;
	j->nparams = nparams;
	j->values = values;
	j->cb = cb;
	j->arg = arg;
	j->deadline = p->timeout_ms > 0 ? cqrs_now_ms() + p->timeout_ms : 0;
	return j;
}

int
pool_query_batched(struct pool *p, struct pool_batcher *b, size_t bytes, const char *sql,
		   int nparams, const char *const *values, pool_cb cb, void *arg)
{
	struct job *j;

	if (!pool_coming(p))
		return CQRS_EUNAVAILABLE;
	if ((j = job_new(p, sql, nparams, values, cb, arg)) == NULL)
		return CQRS_ENOMEM;
	j->batcher = b;
	j->bytes = bytes;
	queue_add(p, j);
	dispatch(p);
	return 0;
}

int
pool_hold(struct pool *p, pool_hold_cb cb, void *arg)
{
	struct job *j;

	if (!pool_coming(p))
		return CQRS_EUNAVAILABLE;
	if ((j = job_new(p, NULL, 0, NULL, NULL, arg)) == NULL)
		return CQRS_ENOMEM;
	j->hold_cb = cb;
	queue_add(p, j);
	dispatch(p);
	return 0;
}

int
pool_hold_query(struct pool_hold *h, const char *sql, int nparams, const char *const *values,
		pool_cb cb, void *arg)
{
	struct pconn *c = h->c;
	struct job *j;

	if (c == NULL)
		return CQRS_EUNAVAILABLE;
	if ((j = job_new(c->pool, sql, nparams, values, cb, arg)) == NULL)
		return CQRS_ENOMEM;
	c->job = j;
	c->state = PC_BUSY;
	if (!send_query(c, sql, nparams, values)) {
		c->job = NULL;
		free(j);
		conn_down(c, pg_error(c->pg));
		return CQRS_EUNAVAILABLE;
	}
	if (j->deadline != 0)
		add_ms(c->deadline, j->deadline - cqrs_now_ms());
	arm_query(c);
	return 0;
}

void
pool_release(struct pool_hold *h)
{
	struct pconn *c;

	if (h == NULL)
		return;
	c = h->c;
	free(h);
	if (c == NULL)
		return;
	c->hold = NULL;
	if (c->state != PC_HELD)
		return;		/* a query runs: the connection frees when it is done */
	if (PQtransactionStatus(c->pg) != PQTRANS_IDLE) {
		struct job *j = calloc(1, sizeof(*j));

		if (j == NULL) {
			conn_down(c, "out of memory");
			return;
		}
		j->sql = "ROLLBACK";
		c->job = j;
		c->state = PC_BUSY;
		if (!PQsendQueryParams(c->pg, j->sql, 0, NULL, NULL, NULL, NULL, 0)) {
			conn_down(c, pg_error(c->pg));
			return;
		}
		if (c->pool->timeout_ms > 0)
			add_ms(c->deadline, c->pool->timeout_ms);
		arm_query(c);
		return;
	}
	c->state = PC_IDLE;
	dispatch(c->pool);
}

int
pool_up(const struct pool *p)
{
	return p->up;
}

void
pool_prepare(struct pool *p, const char *sql)
{
	if (p->n_prepared < POOL_MAX_PREPARED)
		p->prepared[p->n_prepared++] = sql;
}

int
pool_waiting(const struct pool *p)
{
	return p->queued;
}

int
pool_pending(const struct pool *p)
{
	int busy = 0;

	for (int i = 0; i < p->size; i++)
		busy += p->conns[i].state == PC_BUSY || p->conns[i].state == PC_HELD;
	return p->queued + busy;
}

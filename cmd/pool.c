/* pool.c - asynchronous libpq connections on a libevent loop. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "cqrs/err.h"
#include "cqrs/log.h"
#include "pool.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

enum pc_state { PC_DOWN, PC_CONNECTING, PC_IDLE, PC_BUSY };

struct job {
	TAILQ_ENTRY(job) link;
	const char *sql;
	int nparams;
	const char *const *values;
	pool_cb cb;
	void *arg;
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
	int backoff_ms;
	struct job *job;	/* running query */
	PGresult *res;		/* last result of the running query */
	int failures;		/* consecutive failed connects, for log volume */
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
	struct cqrs_log_ctx log;
};

static void conn_start(struct pconn *c);
static void dispatch(struct pool *p);

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
		TAILQ_REMOVE(&p->queue, j, link);
		p->queued--;
		j->cb(j->arg, NULL, NULL);
		free(j);
	}
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

	if (c->state == PC_IDLE || c->state == PC_BUSY) {
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
	if (j != NULL) {
		j->cb(j->arg, NULL, NULL);
		free(j);
	}
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
	if (c->state == PC_IDLE) {
		PGnotify *n;
		while ((n = PQnotifies(c->pg)) != NULL)
			PQfreemem(n);
		if (PQstatus(c->pg) == CONNECTION_BAD)
			conn_down(c, pg_error(c->pg));
		return;
	}
	while (!PQisBusy(c->pg)) {
		PGresult *r = PQgetResult(c->pg);
		if (r == NULL) {
			/* the query is complete: hand over its (last) result */
			struct job *j = c->job;
			PGresult *res = c->res;
			c->job = NULL;
			c->res = NULL;
			if (PQstatus(c->pg) == CONNECTION_BAD) {
				/* answer with the error result, then reconnect */
				j->cb(j->arg, res, c->pg);
				PQclear(res);
				free(j);
				conn_down(c, pg_error(c->pg));
				return;
			}
			c->state = PC_IDLE;
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

static void
dispatch(struct pool *p)
{
	for (int i = 0; i < p->size && !TAILQ_EMPTY(&p->queue); i++) {
		struct pconn *c = &p->conns[i];
		struct job *j;

		if (c->state != PC_IDLE)
			continue;
		j = TAILQ_FIRST(&p->queue);
		TAILQ_REMOVE(&p->queue, j, link);
		p->queued--;
		c->job = j;
		c->state = PC_BUSY;
		if (!PQsendQueryParams(c->pg, j->sql, j->nparams, NULL, j->values, NULL, NULL, 0)) {
			conn_down(c, pg_error(c->pg));
			continue;
		}
		arm_query(c);
	}
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
		if (c->failures > 0)
			cqrs_log_info(&p->log, "PostgreSQL connection %d is back", c->idx);
		c->failures = 0;
		c->state = PC_IDLE;
		c->backoff_ms = BACKOFF_MIN_MS;
		p->up++;
		dispatch(p);
		break;
	default:
		conn_down(c, pg_error(c->pg));
		break;
	}
}

static void
conn_start(struct pconn *c)
{
	c->pg = PQconnectStart(c->pool->conninfo);
	if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD) {
		c->state = PC_CONNECTING;	/* so conn_down logs it as a failed connect */
		conn_down(c, pg_error(c->pg));
		return;
	}
	c->state = PC_CONNECTING;
	set_event(c, EV_WRITE, connect_io);
}

struct pool *
pool_new(struct event_base *base, const char *conninfo, int size, const char *name)
{
	struct pool *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return NULL;
	p->base = base;
	p->size = size;
	p->conninfo = strdup(conninfo);
	p->name = strdup(name);
	p->conns = calloc((size_t)size, sizeof(*p->conns));
	TAILQ_INIT(&p->queue);
	if (p->conninfo == NULL || p->name == NULL || p->conns == NULL) {
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
		conn_start(c);
	}
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
		PQclear(c->res);
		free(c->job);
		PQfinish(c->pg);
	}
	while (!TAILQ_EMPTY(&p->queue)) {
		struct job *j = TAILQ_FIRST(&p->queue);
		TAILQ_REMOVE(&p->queue, j, link);
		free(j);
	}
	free(p->conns);
	free(p->conninfo);
	free(p->name);
	free(p);
}

int
pool_query(struct pool *p, const char *sql, int nparams, const char *const *values,
	   pool_cb cb, void *arg)
{
	struct job *j;
	bool coming = false;

	for (int i = 0; i < p->size; i++)
		if (p->conns[i].state != PC_DOWN)
			coming = true;
	if (!coming)
		return CQRS_EUNAVAILABLE;
	j = calloc(1, sizeof(*j));
	if (j == NULL)
		return CQRS_ENOMEM;
	j->sql = sql;
	j->nparams = nparams;
	j->values = values;
	j->cb = cb;
	j->arg = arg;
	TAILQ_INSERT_TAIL(&p->queue, j, link);
	p->queued++;
	dispatch(p);
	return 0;
}

int
pool_up(const struct pool *p)
{
	return p->up;
}

int
pool_pending(const struct pool *p)
{
	int busy = 0;

	for (int i = 0; i < p->size; i++)
		busy += p->conns[i].state == PC_BUSY;
	return p->queued + busy;
}

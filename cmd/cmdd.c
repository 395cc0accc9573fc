/* cmdd.c - cqrs-cmdd's configuration, wiring and life (readiness, drain). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "access.h"
#include "clock.h"
#include "cmdd.h"
#include "config.h"
#include "cqrs_daemon.h"
#include "hmap.h"
#include "pool.h"
#include "sdnotify.h"

static const char *const cmd_keys[] = {
	"socket", "socket_mode", "socket_group", "plugins", "pool_size", "max_connections",
	"max_request_bytes", "idle_timeout", "shutdown_timeout", "store_timeout", "cache_size",
	"snapshot_every", "max_retries", "batch_max", "append_connections", "max_pipeline",
	"client_budget", "memory_budget", "write_timeout",
	HTTPD_CONFIG_KEYS, NULL,
};

static char *
dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

int
cmdd_config_load(const struct config *cfg, struct cmdd_config *out, struct cqrs_err *err)
{
	int64_t v;
	int rc;

	memset(out, 0, sizeof(*out));
	if ((rc = cqrs_config_check_keys(cfg, "cmd", cmd_keys, err)) < 0)
		return rc;
	out->conninfo = dup_or_null(cqrs_config_get(cfg, "store", "conninfo", NULL));
	if (out->conninfo == NULL || out->conninfo[0] == '\0')
		return cqrs_err_set(err, CQRS_ECONFIG,
				    "store.conninfo is not set (config [store] conninfo, or CQRS_STORE_CONNINFO)");
	out->socket_path = dup_or_null(cqrs_config_get(cfg, "cmd", "socket", "/run/cqrs/cmd.sock"));
	out->socket_group = dup_or_null(cqrs_config_get(cfg, "cmd", "socket_group", NULL));
	out->plugins = dup_or_null(cqrs_config_get(cfg, "cmd", "plugins", ""));
	{
		const char *m = cqrs_config_get(cfg, "cmd", "socket_mode", "0660");
		char *end;
		long mode = strtol(m, &end, 8);
		if (end == m || *end != '\0' || mode < 0 || mode > 0777)
			return cqrs_err_set(err, CQRS_ECONFIG,
					    "cmd.socket_mode: \"%s\" is not an octal mode like 0660", m);
		out->socket_mode = (int)mode;
	}
	if ((rc = cqrs_config_get_int(cfg, "cmd", "pool_size", 8, 1, 256, &v, err)) < 0)
		return rc;
	out->pool_size = (int)v;
	if ((rc = cqrs_config_get_int(cfg, "cmd", "max_connections", 1024, 1, 1000000, &v, err)) < 0)
		return rc;
	out->max_connections = (int)v;
	if ((rc = cqrs_config_get_int(cfg, "cmd", "max_request_bytes", 1024 * 1024, 256,
				 64 * 1024 * 1024, &out->max_request_bytes, err)) < 0)
		return rc;
	if ((rc = cqrs_config_get_ms(cfg, "cmd", "idle_timeout", 300000, 100, 86400000,
				&out->idle_timeout_ms, err)) < 0)
		return rc;
	if ((rc = cqrs_config_get_ms(cfg, "cmd", "shutdown_timeout", 30000, 100, 86400000,
				&out->shutdown_timeout_ms, err)) < 0)
		return rc;
	if ((rc = cqrs_config_get_ms(cfg, "cmd", "store_timeout", 5000, 100, 86400000,
				&out->store_timeout_ms, err)) < 0)
		return rc;
	if ((rc = cqrs_config_get_int(cfg, "cmd", "cache_size", 10000, 1, 100000000, &v, err)) < 0)
		return rc;
	out->cache_size = (int)v;
	if ((rc = cqrs_config_get_int(cfg, "cmd", "snapshot_every", 500, 0, 100000000, &v, err)) < 0)
		return rc;
	out->snapshot_every = (int)v;
	if ((rc = cqrs_config_get_int(cfg, "cmd", "max_retries", 5, 0, 1000, &v, err)) < 0)
		return rc;
	out->max_retries = (int)v;
	if ((rc = cqrs_config_get_int(cfg, "cmd", "batch_max", 64, 1, 256, &v, err)) < 0)
		return rc;
	out->batch_max = (int)v;
	if ((rc = cqrs_config_get_int(cfg, "cmd", "append_connections", 2, 1, 256, &v, err)) < 0)
		return rc;
	out->append_connections = (int)v;
	if ((rc = cqrs_config_get_int(cfg, "cmd", "max_pipeline", 1024, 1, 65536, &v, err)) < 0)
		return rc;
	out->max_pipeline = (int)v;
	if ((rc = cqrs_config_get_int(cfg, "cmd", "client_budget", 16 * 1024 * 1024, 64 * 1024,
				      (int64_t)1 << 40, &out->client_budget, err)) < 0)
		return rc;
	if ((rc = cqrs_config_get_int(cfg, "cmd", "memory_budget", 256 * 1024 * 1024, 64 * 1024,
				      (int64_t)1 << 44, &out->memory_budget, err)) < 0)
		return rc;
	if ((rc = cqrs_config_get_ms(cfg, "cmd", "write_timeout", 60000, 100, 86400000,
				     &out->write_timeout_ms, err)) < 0)
		return rc;
	/* a line of max_request_bytes must fit, with the read that ends it */
	if (out->client_budget < 2 * out->max_request_bytes + CMDD_READ_CHUNK)
		return cqrs_err_set(err, CQRS_ECONFIG, "[cmd] client_budget (%" PRId64 " bytes) must be "
				    "at least twice max_request_bytes (%" PRId64 ") and 64 KiB",
				    out->client_budget, out->max_request_bytes);
	if (out->memory_budget < out->client_budget)
		return cqrs_err_set(err, CQRS_ECONFIG, "[cmd] memory_budget (%" PRId64 " bytes) is below "
				    "client_budget (%" PRId64 ")", out->memory_budget, out->client_budget);
	if ((rc = cqrs_httpd_config_load(cfg, "cmd", &out->http, err)) < 0)
		return rc;
	if (out->socket_path == NULL || out->plugins == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	return access_load(cfg, &out->access, err);
}

int
cmdd_reload(void *arg, const struct config *cfg, struct cqrs_err *err)
{
	struct cmdd *d = arg;
	struct access_policy *p;
	int rc;

	if ((rc = access_load(cfg, &p, err)) < 0)
		return rc;
	access_free(d->cfg.access);
	d->cfg.access = p;
	if (p != NULL)
		cqrs_log_info(&d->log, "[access]: %d rules", access_rules(p));
	else
		cqrs_log_info(&d->log, "[access]: none, every command allowed");
	return 0;
}

void
cmdd_config_clear(struct cmdd_config *c)
{
	free(c->conninfo);
	free(c->socket_path);
	free(c->socket_group);
	free(c->plugins);
	access_free(c->access);
	memset(c, 0, sizeof(*c));
}

/*
 * libpq's output buffer: 16 KiB, doubled until a message fits, never shrunk
 * (fe-misc.c, pqCheckOutBufferSpace()).
 */
static size_t
libpq_out_buffer(size_t message)
{
	size_t n = 16 * 1024;

	while (n < message)
		n *= 2;
	return n;
}

/*
 * Every byte a client can make the daemon hold is in one of these terms
 * (server.c, "byte budgets"; exec.c for the append):
 *
 * - cmd.memory_budget: what all clients hold past their floors: the unread
 *   input (at the size of its block), each job (CMDD_JOB_BYTES, its parsed
 *   request at what json-c holds, its events' metadata, its events while an
 *   append is prepared, its answer) and the answers not sent. A client is
 *   read only while the budgets leave room, and a line is taken only once
 *   what it may hold parsed (proto_cost_bound()) fits.
 * - max_connections x (CMDD_CLIENT_FLOOR + CMDD_CLIENT_OVERHEAD): the floor
 *   each client may hold whatever the others do, and what a connection
 *   holds uncounted (its structs, the slack of its answer buffer).
 * - 2 x max_request_bytes + CMDD_READ_CHUNK: one at a time (the loop has
 *   one thread), the largest block that is held for a moment only: json-c's
 *   buffer for the longest string of the line being parsed, doubled as it
 *   grows (the line itself is parsed where it lies, in the counted input),
 *   or the old input block while realloc() moves it to a larger one (an
 *   unfinished line, at most max_request_bytes and a read).
 * - pool_size x libpq's output buffer: an append goes to PostgreSQL as one
 *   message holding its events' text, which libpq builds in its output
 *   buffer (16 KiB, doubled until the message fits) and never shrinks:
 *   each connection keeps room for the largest append it sent. While the
 *   append runs its events are counted against their client, who stops
 *   being read past cmd.client_budget: an append is at most that for
 *   commands whose events are no larger than the command (a request must
 *   fit the budget). libpq's copy comes on top, and stays. Appends joined
 *   into one transaction (group commit) are at most CMDD_BATCH_BYTES
 *   together when there are several; their joined text is one more copy,
 *   held while the batch runs.
 */
size_t
cmdd_memory_parts(const struct cmdd_config *c, struct cmdd_memory *m)
{
	m->budget = (size_t)c->memory_budget;
	m->per_client = CMDD_CLIENT_FLOOR + CMDD_CLIENT_OVERHEAD;
	m->clients = (size_t)c->max_connections * m->per_client;
	m->parse = 2 * (size_t)c->max_request_bytes + CMDD_READ_CHUNK;
	m->per_store = libpq_out_buffer((size_t)c->client_budget > CMDD_BATCH_BYTES ?
					(size_t)c->client_budget : CMDD_BATCH_BYTES) +
		       CMDD_BATCH_BYTES;
	m->store = (size_t)c->pool_size * m->per_store;
	return m->budget + m->clients + m->parse + m->store;
}

size_t
cmdd_memory_bound(const struct cmdd_config *c)
{
	struct cmdd_memory m;

	return cmdd_memory_parts(c, &m);
}

static void
maybe_exit(struct cmdd *d)
{
	if (d->stopping && d->jobs_active == 0 && d->snapshot_writes == 0 &&
	    !d->notify_inflight && !evtimer_pending(d->notify_timer, NULL) && server_drained(d))
		event_base_loopexit(d->base, NULL);
}

static void
tick(evutil_socket_t fd, short what, void *arg)
{
	struct cmdd *d = arg;

	(void)fd;
	(void)what;
	if (!d->ready && pool_up(d->pool) > 0) {
		d->ready = true;
		cqrs_sdnotify_ready("accepting commands");
		cqrs_log_info(&d->log, "ready: %d PostgreSQL connections", pool_up(d->pool));
	}
	if (d->ready && !d->stopping)
		cqrs_sdnotify_status("%d clients, %d aggregates cached, %llu commands (%llu ok, %llu failed), "
				"store connections %d/%d", d->n_clients, d->n_aggs,
				(unsigned long long)d->stats.requests, (unsigned long long)d->stats.ok,
				(unsigned long long)d->stats.failed, pool_up(d->pool), d->cfg.pool_size);
	/* the loop turns: tell systemd's watchdog */
	if (d->ready)
		(void)cqrs_daemon_tick(&d->watchdog);
	if (d->stopping) {
		server_close_idle(d);
		maybe_exit(d);
		if (cqrs_now_ms() >= d->stop_deadline) {
			/* what is left is dropped: a client that never reads, an
			 * append that does not come back */
			cqrs_log_warn(&d->log, "stopping: cmd.shutdown_timeout (%.1f s) reached with "
					       "%d commands in flight and %d clients; exiting without "
					       "their answers", (double)d->cfg.shutdown_timeout_ms / 1000,
				      d->jobs_active, d->n_clients);
			event_base_loopbreak(d->base);
		}
	}
}

void
cmdd_begin_shutdown(struct cmdd *d)
{
	if (d->stopping)
		return;
	d->stopping = true;
	d->stop_deadline = cqrs_now_ms() + d->cfg.shutdown_timeout_ms;
	cqrs_sdnotify_stopping();
	cqrs_log_info(&d->log, "stopping: finishing %d commands in flight", pool_pending(d->pool));
	server_close(d);
	server_close_idle(d);
	maybe_exit(d);
}

int
cmdd_init(struct cmdd *d, struct event_base *base, const struct cmdd_config *cfg,
	  struct registry *reg, struct cqrs_err *err)
{
	struct timeval tv = { 0, 100000 };
	int rc;

	memset(d, 0, sizeof(*d));
	d->base = base;
	d->cfg = *cfg;
	d->reg = reg;
	d->log.comp = "cmdd";
	TAILQ_INIT(&d->clients);
	TAILQ_INIT(&d->budget_wait);
	TAILQ_INIT(&d->lru);
	TAILQ_INIT(&d->ready_jobs);
	TAILQ_INIT(&d->live);
	d->aggs = cqrs_hmap_new();
	d->inflight = cqrs_hmap_new();
	d->pool = pool_new(base, cfg->conninfo, cfg->pool_size, "cmdd.store",
			   cfg->store_timeout_ms);
	d->notify = pool_new(base, cfg->conninfo, 1, "cmdd.notify", cfg->store_timeout_ms);
	if (d->aggs == NULL || d->inflight == NULL || d->pool == NULL || d->notify == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	exec_notify_init(d);
	exec_batch_init(d);
	if ((rc = server_listen(d, err)) < 0)
		return rc;
	if ((rc = metrics_start(d, err)) < 0)
		return rc;
	cqrs_daemon_watchdog_init(&d->watchdog);
	d->tick = event_new(base, -1, EV_PERSIST, tick, d);
	if (d->tick == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	event_add(d->tick, &tv);
	return 0;
}

int
cmdd_run(struct cmdd *d)
{
	event_base_dispatch(d->base);
	cqrs_log_info(&d->log, "stopped: %llu commands, %llu ok, %llu duplicates, %llu failed",
		      (unsigned long long)d->stats.requests, (unsigned long long)d->stats.ok,
		      (unsigned long long)d->stats.duplicates, (unsigned long long)d->stats.failed);
	return 0;
}

void
cmdd_fini(struct cmdd *d)
{
	server_close(d);
	while (!TAILQ_EMPTY(&d->clients)) {
		/* only after a second signal: drop what is left */
		d->stopping = true;
		server_close_idle(d);
		break;
	}
	if (d->tick)
		event_free(d->tick);
	if (d->notify_timer)
		event_free(d->notify_timer);
	/* after cmd.shutdown_timeout or a second signal, commands may still be
	 * in flight: their clients, their queries and the jobs go too */
	server_free_clients(d);
	metrics_stop(d);
	pool_free(d->pool);
	pool_free(d->notify);
	if (d->aggs != NULL)
		exec_free_all(d);
	cqrs_hmap_free(d->aggs);
	cqrs_hmap_free(d->inflight);
	cmdd_config_clear(&d->cfg);
}

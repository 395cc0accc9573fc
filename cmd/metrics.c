/*
 * metrics.c - cqrs-cmdd's /health and /metrics (common/httpd.h), served on
 * the daemon's own loop when cmd.http is set.
 *
 * Metrics (Prometheus names; counters since the process started):
 *   cqrs_cmdd_commands_total{outcome}      answers by outcome: ok, duplicate,
 *                                          or an error code of the protocol
 *   cqrs_cmdd_command_duration_seconds     from the request's parse to its answer
 *                                          (framing errors, answered without a
 *                                          command, are not timed)
 *   cqrs_cmdd_requests_total, cqrs_cmdd_commands_in_flight,
 *   cqrs_cmdd_clients, cqrs_cmdd_aggregates_cached,
 *   cqrs_cmdd_client_bytes (clients_held + detached: what the budgets count),
 *   cqrs_cmdd_clients_paused, cqrs_cmdd_clients_waiting_budget,
 *   cqrs_cmdd_store_connections_up, cqrs_cmdd_store_connections,
 *   cqrs_cmdd_store_queries_waiting, cqrs_cmdd_append_batches_total,
 *   cqrs_cmdd_appends_batched_total, cqrs_cmdd_conflicts_retried_total, cqrs_cmdd_aggregate_loads_total,
 *   cqrs_cmdd_snapshots_written_total, cqrs_cmdd_ready, cqrs_cmdd_build_info
 *
 * /health is 503 while the daemon stops, and while no PostgreSQL connection
 * is up (commands would only be answered "unavailable").
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>

#include "clock.h"
#include "cmdd.h"
#include "pool.h"

/* In the order of d->stats.outcomes; an unknown outcome counts as internal. */
static const char *const outcome_names[CMDD_OUTCOMES] = {
	"ok",
	"duplicate",
	PROTO_MALFORMED,
	PROTO_TOO_LARGE,
	PROTO_UNKNOWN_COMMAND,
	PROTO_INVALID,
	PROTO_REJECTED,
	PROTO_CONFLICT,
	PROTO_UNAVAILABLE,
	PROTO_ID_REUSED,
	PROTO_FORBIDDEN,
	PROTO_INTERNAL,
};
#define OUTCOME_INTERNAL (CMDD_OUTCOMES - 1)

void
metrics_command_done(struct cmdd *d, const char *outcome, uint64_t started_us)
{
	size_t i;

	/* "ok" first: the common case costs one comparison */
	for (i = 0; i < CMDD_OUTCOMES; i++)
		if (strcmp(outcome, outcome_names[i]) == 0)
			break;
	d->stats.outcomes[i < CMDD_OUTCOMES ? i : OUTCOME_INTERNAL]++;
	if (started_us != 0) {
		uint64_t now = cqrs_now_us();
		cqrs_httpd_hist_observe_us(&d->stats.latency, now > started_us ? now - started_us : 0);
	}
}

static bool
health(void *arg, char *reason, size_t size)
{
	struct cmdd *d = arg;
	int up = pool_up(d->pool);

	if (d->stopping) {
		snprintf(reason, size, "stopping");
		return false;
	}
	if (up == 0) {
		snprintf(reason, size, "no PostgreSQL connection (0 of %d up)", d->cfg.pool_size);
		return false;
	}
	return true;
}

static void
write_metrics(void *arg, struct evbuffer *out)
{
	struct cmdd *d = arg;
	const struct cmdd_stats *s = &d->stats;
	char labels[64];

	cqrs_httpd_metric_header(out, "cqrs_cmdd_commands_total", "counter",
			    "Commands answered, by outcome (ok, duplicate, or the error code).");
	for (size_t i = 0; i < CMDD_OUTCOMES; i++) {
		snprintf(labels, sizeof(labels), "outcome=\"%s\"", outcome_names[i]);
		cqrs_httpd_metric_u64(out, "cqrs_cmdd_commands_total", labels, s->outcomes[i]);
	}
	cqrs_httpd_hist_write(out, "cqrs_cmdd_command_duration_seconds",
			 "Time from a request's parse to its answer.", NULL, &s->latency);
	cqrs_httpd_counter(out, "cqrs_cmdd_requests_total", "Request lines received.", s->requests);
	cqrs_httpd_gauge(out, "cqrs_cmdd_commands_in_flight", "Requests received and not yet answered.",
		    d->jobs_active);
	cqrs_httpd_gauge(out, "cqrs_cmdd_clients", "Client connections open.", d->n_clients);
	cqrs_httpd_gauge(out, "cqrs_cmdd_aggregates_cached", "Aggregates held in memory.", d->n_aggs);
	cqrs_httpd_gauge(out, "cqrs_cmdd_client_bytes",
		    "Bytes clients make the daemon hold: unread input, queued requests, "
		    "their events and answers (cmd.client_budget, cmd.memory_budget).",
		    (double)(d->clients_held + d->detached));
	cqrs_httpd_gauge(out, "cqrs_cmdd_clients_paused",
		    "Clients not read because their pipeline or a byte budget is full.",
		    d->clients_paused);
	cqrs_httpd_gauge(out, "cqrs_cmdd_clients_waiting_budget",
		    "Clients waiting for room in cmd.memory_budget.", d->budget_waiting);
	cqrs_httpd_gauge(out, "cqrs_cmdd_store_connections_up", "PostgreSQL connections up.",
		    pool_up(d->pool));
	cqrs_httpd_gauge(out, "cqrs_cmdd_store_connections",
		    "PostgreSQL connections configured (cmd.pool_size).", d->cfg.pool_size);
	cqrs_httpd_gauge(out, "cqrs_cmdd_store_queries_waiting",
		    "Queries (loads, appends) waiting for a PostgreSQL connection.",
		    pool_waiting(d->pool));
	cqrs_httpd_counter(out, "cqrs_cmdd_conflicts_retried_total",
		      "Appends that met another writer and were re-run on the aggregate caught up "
		      "under the stream's lock.", s->conflicts_retried);
	cqrs_httpd_counter(out, "cqrs_cmdd_append_batches_total",
		      "Transactions that appended several commands at once (group commit).",
		      s->batches);
	cqrs_httpd_counter(out, "cqrs_cmdd_appends_batched_total",
		      "Commands appended in those transactions.", s->batched);
	cqrs_httpd_counter(out, "cqrs_cmdd_aggregate_loads_total",
		      "Aggregates read (or caught up) from the store.", s->loads);
	cqrs_httpd_counter(out, "cqrs_cmdd_snapshots_written_total", "Snapshots written.", s->snapshots);
	cqrs_httpd_gauge(out, "cqrs_cmdd_ready",
		    "1 once accepting commands, 0 before and while stopping.",
		    d->ready && !d->stopping ? 1 : 0);
	cqrs_httpd_metric_header(out, "cqrs_cmdd_build_info", "gauge", "The running version.");
	cqrs_httpd_metric_u64(out, "cqrs_cmdd_build_info", "version=\"" CQRS_VERSION "\"", 1);
}

int
metrics_start(struct cmdd *d, struct cqrs_err *err)
{
	struct httpd_handlers h = { .health = health, .metrics = write_metrics, .arg = d };
	int rc;

	if (d->cfg.http.len == 0)
		return 0;
	if ((rc = cqrs_httpd_new(d->base, &d->cfg.http, &h, &d->http, err)) < 0)
		return rc;
	cqrs_log_info(&d->log, "metrics and health on http://%s/metrics and /health",
		      cqrs_httpd_address(d->http));
	return 0;
}

void
metrics_stop(struct cmdd *d)
{
	cqrs_httpd_free(d->http);
	d->http = NULL;
}

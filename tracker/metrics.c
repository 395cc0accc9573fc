/*
 * metrics.c - cqrs-tracker's /health and /metrics (DESIGN.md, "Operations").
 *
 * The tracker's loop blocks in libpq and librabbitmq, so the endpoint runs on
 * a thread of its own (httpd.h) and reads a copy of struct tracker_stats,
 * taken under the tracker's mutex. Series, each labelled tracker="NAME":
 *
 *   cqrs_tracker_published_total      events published, confirmed and
 *                                     checkpointed (rate() is the publish rate)
 *   cqrs_tracker_batches_total        batches checkpointed
 *   cqrs_tracker_activations_total    times this process took the lock
 *   cqrs_tracker_active               1 active, 0 standby
 *   cqrs_tracker_checkpoint_position  position of the last event checkpointed
 *   cqrs_tracker_lag_events           committed events not yet published
 *                                     (counted up to 10000, estimated beyond:
 *                                     cqrs.tracker_status, sql/005)
 *   cqrs_tracker_lag_seconds          age of the oldest of them
 *   cqrs_tracker_held_events          of them, held back by an open transaction
 *   cqrs_tracker_blocking_transaction_seconds  that transaction's age
 *   cqrs_tracker_postgresql_up, cqrs_tracker_rabbitmq_up
 *
 * /health is 200 when both sessions are up (active or standby: a standby is
 * doing its work by waiting), 503 with the reason otherwise.
 */
#include <inttypes.h>
#include <stdio.h>

#include <event2/buffer.h>

#include "tracker_int.h"

static bool
health(void *arg, char *reason, size_t size)
{
	struct tracker_stats s;

	tracker_get_stats(arg, &s);
	if (!s.pg_up) {
		snprintf(reason, size, "PostgreSQL unreachable");
		return false;
	}
	if (!s.mq_up) {
		snprintf(reason, size, "RabbitMQ unreachable");
		return false;
	}
	return true;
}

static void
series_u64(struct evbuffer *out, const char *labels, const char *name, const char *type,
	   const char *help, uint64_t v)
{
	cqrs_httpd_metric_header(out, name, type, help);
	cqrs_httpd_metric_u64(out, name, labels, v);
}

static void
series_double(struct evbuffer *out, const char *labels, const char *name, const char *help,
	      double v)
{
	cqrs_httpd_metric_header(out, name, "gauge", help);
	cqrs_httpd_metric_double(out, name, labels, v);
}

static void
metrics(void *arg, struct evbuffer *out)
{
	struct tracker *t = arg;
	struct tracker_stats s;
	char name[420], labels[460];

	tracker_get_stats(t, &s);
	cqrs_httpd_label_escape(t->cfg->name, name, sizeof(name));
	snprintf(labels, sizeof(labels), "tracker=\"%s\"", name);
	series_u64(out, labels, "cqrs_tracker_published_total", "counter",
		   "Events published, confirmed by the broker and checkpointed.", s.published);
	series_u64(out, labels, "cqrs_tracker_batches_total", "counter",
		   "Batches checkpointed.", s.batches);
	series_u64(out, labels, "cqrs_tracker_activations_total", "counter",
		   "Times this process took the tracker lock.", s.activations);
	series_u64(out, labels, "cqrs_tracker_active", "gauge",
		   "1 while this process holds the lock and publishes, 0 on standby.", s.active);
	series_u64(out, labels, "cqrs_tracker_checkpoint_position", "gauge",
		   "Position of the last event checkpointed.", (uint64_t)s.checkpoint.position);
	series_u64(out, labels, "cqrs_tracker_lag_events", "gauge",
		   "Committed events not yet published (last measured).", (uint64_t)s.lag_events);
	series_double(out, labels, "cqrs_tracker_lag_seconds",
		      "Age of the oldest committed event not yet published.", s.lag_seconds);
	series_u64(out, labels, "cqrs_tracker_held_events", "gauge",
		   "Committed events held back by an older open transaction.",
		   (uint64_t)s.held_events);
	series_double(out, labels, "cqrs_tracker_blocking_transaction_seconds",
		      "Age of the open transaction holding events back.", s.blocker_seconds);
	series_u64(out, labels, "cqrs_tracker_postgresql_up", "gauge",
		   "1 while the PostgreSQL session is up.", s.pg_up);
	series_u64(out, labels, "cqrs_tracker_rabbitmq_up", "gauge",
		   "1 while the AMQP connection is up.", s.mq_up);
}

int
tracker_metrics_start(struct tracker *t, struct cqrs_err *err)
{
	struct httpd_handlers h = { health, metrics, t };
	int rc;

	if (t->cfg->http.len == 0)
		return 0;
	if ((rc = cqrs_httpd_new(NULL, &t->cfg->http, &h, &t->httpd, err)) < 0)
		return rc;
	cqrs_log_info(&t->log, "serving /health and /metrics on http://%s/",
		      cqrs_httpd_address(t->httpd));
	return 0;
}

void
tracker_metrics_stop(struct tracker *t)
{
	cqrs_httpd_free(t->httpd);
	t->httpd = NULL;
}

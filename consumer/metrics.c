/*
 * metrics.c - cqrs-consumer's /health and /metrics (DESIGN.md, "Operations").
 *
 * The consumer's loop blocks in librabbitmq and libpq, so the endpoint runs
 * on a thread of its own (httpd.h) and reads only the atomics of struct
 * consumer_stats. Series, each labelled consumer="NAME":
 *
 *   cqrs_consumer_events_handled_total       handlers ran, committed (live,
 *                                            catch-up and missing events)
 *   cqrs_consumer_events_missing_total       of them, read from the store
 *                                            because a delivery skipped them
 *   cqrs_consumer_events_caught_up_total     read from the store by a
 *                                            catch-up or replay
 *   cqrs_consumer_events_duplicate_total     deliveries of events already handled
 *   cqrs_consumer_retries_total              handler outcomes "retry"
 *   cqrs_consumer_dead_lettered_total        events sent to the dead-letter queue
 *   cqrs_consumer_batches_total              committed transactions
 *   cqrs_consumer_lag_events                 the consumer's lag: messages ready in
 *                                            its queue plus those in hand
 *   cqrs_consumer_in_hand, _held             deliveries not acked; of them
 *                                            waiting for a retry
 *   cqrs_consumer_live                       1 once caught up with the store
 *   cqrs_consumer_postgresql_up, _rabbitmq_up
 *   cqrs_consumer_batch_seconds              histogram, live batches
 *   cqrs_consumer_handler_seconds            histogram, one handler on one event
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "consumer.h"

static bool
health(void *arg, char *reason, size_t size)
{
	struct consumer *c = arg;

	if (!atomic_load(&c->stats.pg_up)) {
		snprintf(reason, size, "PostgreSQL unreachable");
		return false;
	}
	if (!atomic_load(&c->stats.mq_up)) {
		snprintf(reason, size, "RabbitMQ unreachable");
		return false;
	}
	return true;
}

static void
series(struct evbuffer *out, const char *labels, const char *name, const char *type,
       const char *help, uint64_t v)
{
	cqrs_httpd_metric_header(out, name, type, help);
	cqrs_httpd_metric_u64(out, name, labels, v);
}

static void
metrics(void *arg, struct evbuffer *out)
{
	struct consumer *c = arg;
	struct consumer_stats *s = &c->stats;
	char name[200], labels[260];

	cqrs_httpd_label_escape(c->cfg->name, name, sizeof(name));
	snprintf(labels, sizeof(labels), "consumer=\"%s\"", name);
	series(out, labels, "cqrs_consumer_events_handled_total", "counter",
	       "Events whose handlers ran and committed.",
	       atomic_load(&s->handled) + atomic_load(&s->fetched));
	series(out, labels, "cqrs_consumer_events_missing_total", "counter",
	       "Events read from the store because a delivery came before them.",
	       atomic_load(&s->fetched));
	series(out, labels, "cqrs_consumer_events_caught_up_total", "counter",
	       "Events read from the store by a catch-up or a replay.", atomic_load(&s->caught_up));
	series(out, labels, "cqrs_consumer_events_duplicate_total", "counter",
	       "Deliveries of events already handled.", atomic_load(&s->duplicates));
	series(out, labels, "cqrs_consumer_retries_total", "counter",
	       "Handler outcomes asking for a retry.", atomic_load(&s->retried));
	series(out, labels, "cqrs_consumer_dead_lettered_total", "counter",
	       "Events sent to the dead-letter queue.", atomic_load(&s->dead));
	series(out, labels, "cqrs_consumer_batches_total", "counter",
	       "Committed transactions.", atomic_load(&s->batches));
	series(out, labels, "cqrs_consumer_in_hand", "gauge", "Deliveries not acked yet.",
	       atomic_load(&s->in_hand));
	series(out, labels, "cqrs_consumer_lag_events", "gauge",
	       "Events published for this consumer and not yet handled: waiting in its "
	       "queue (measured every status_interval) or in hand.",
	       atomic_load(&s->queue_ready) + atomic_load(&s->in_hand));
	series(out, labels, "cqrs_consumer_held", "gauge",
	       "Deliveries waiting for a retry after a backoff.", atomic_load(&s->held));
	series(out, labels, "cqrs_consumer_live", "gauge",
	       "1 once caught up with the store and fed by the queue.", atomic_load(&s->live));
	series(out, labels, "cqrs_consumer_postgresql_up", "gauge",
	       "1 while the PostgreSQL session is up.", atomic_load(&s->pg_up));
	series(out, labels, "cqrs_consumer_rabbitmq_up", "gauge",
	       "1 while the AMQP connection is up.", atomic_load(&s->mq_up));
	cqrs_httpd_hist_write(out, "cqrs_consumer_batch_seconds",
			 "Live batches, from BEGIN to COMMIT (acks not included).", labels,
			 &s->batch_time);
	cqrs_httpd_hist_write(out, "cqrs_consumer_handler_seconds",
			 "One handler on one event (live, catch-up and replay).", labels,
			 &s->handler_time);
}

int
consumer_metrics_start(struct consumer *c, struct cqrs_err *err)
{
	struct httpd_handlers h = { health, metrics, c };
	int rc;

	if (c->cfg->http.len == 0)
		return 0;
	if ((rc = cqrs_httpd_new(NULL, &c->cfg->http, &h, &c->httpd, err)) < 0)
		return rc;
	cqrs_log_info(&c->log, "serving /health and /metrics on http://%s/",
		      cqrs_httpd_address(c->httpd));
	return 0;
}

void
consumer_metrics_stop(struct consumer *c)
{
	cqrs_httpd_free(c->httpd);
	c->httpd = NULL;
}

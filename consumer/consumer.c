/*
 * consumer.c - cqrs-consumer's configuration, plugins and handlers.
 *
 * Configuration (DESIGN.md, "Configuration"; every key may be overridden by
 * CQRS_<SECTION>_<KEY> in the environment, e.g. CQRS_CONSUMER_PROJECTIONS_FROM):
 *
 *   [store]
 *   conninfo = host=/run/postgresql dbname=cqrs
 *       libpq connection string (required). The consumer adds
 *       application_name=cqrs-consumer@HOST:PID/NAME and, unless given,
 *       connect_timeout=10, TCP keepalives and tcp_user_timeout
 *       (CQRS_PG_DEFAULT_KEYS, common/store.h).
 *   [broker]                  url (required), heartbeat, verify, cacert, cert,
 *                             key: common/broker_config.c.
 *   [cmd]
 *   socket = /run/cqrs/cmd.sock   where process managers send commands.
 *   [consumer.NAME]           (cqrs-consumer -n NAME)
 *   plugins = /usr/lib/cqrs/plugins/bank.so
 *       space-separated plugin paths (required).
 *   groups = NAME             space-separated handler groups to run
 *                             (default: the group named NAME).
 *   queue = cqrs.NAME         the durable queue, bound on cqrs.events to the
 *                             routing patterns of the groups' handlers. Its
 *                             dead letters go to exchange cqrs.dead, routing
 *                             key QUEUE, and from there to queue QUEUE.dead.
 *   queue_type = quorum       quorum or classic. Changing it (or
 *                             delivery_limit) for an existing queue needs the
 *                             queue deleted first: RabbitMQ refuses to
 *                             redeclare a queue with other arguments.
 *   delivery_limit = 5        quorum only: an event delivered this many times
 *                             more without an ack (the consumer crashed or was
 *                             killed while handling it) is dead-lettered by
 *                             RabbitMQ instead of crash-looping; 0: no limit.
 *                             Every delivery in flight when a consumer dies
 *                             counts, so keep it well above 1.
 *   prefetch = 200            deliveries in flight (basic.qos), 1..65535.
 *   batch_size = 100          events handled in one transaction, 1..10000.
 *   from = beginning          beginning: a consumer that never ran first
 *                             handles every event in the store, then goes
 *                             live; now: only what is published from its
 *                             first start (missing earlier events of a
 *                             stream are not fetched either).
 *   retry_limit = 10          a handler may ask for this many retries of one
 *                             event (CQRS_HANDLED_RETRY) before it is
 *                             dead-lettered; 0: dead-letter at once.
 *   retry_backoff = 500ms     wait before the first retry; doubled each time
 *   retry_backoff_max = 30s   up to this. Other events go on meanwhile.
 *   catchup_batch = 1000      events read from the store per transaction
 *                             when catching up or replaying, 1..10000.
 *   cmd_timeout = 10s         process managers: how long a command may take.
 *   status_interval = 5s      how often STATUS is sent to systemd.
 *   http =                    /health and /metrics (Prometheus) over HTTP at
 *                             ADDRESS:PORT, PORT alone (127.0.0.1) or
 *                             [IPV6]:PORT; empty: off. Loopback only unless
 *   http_allow_remote = false is true (the endpoint has no authentication).
 *                             /health is 503 while PostgreSQL or RabbitMQ is
 *                             unreachable. See metrics.c for the series.
 *   [log]
 *   level = info              error, warn, info or debug.
 *
 * What happens to one event is told in apply.c; the loop (deliveries, acks,
 * retries, dead letters, reconnects) in run.c; catch-up and replay in
 * catchup.c.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "config.h"
#include "consumer.h"
#include "envelope.h"

static const char *const consumer_keys[] = {
	"plugins", "groups", "queue", "queue_type", "delivery_limit", "prefetch", "batch_size",
	"from", "retry_limit", "retry_backoff", "retry_backoff_max", "catchup_batch",
	"cmd_timeout", "status_interval", HTTPD_CONFIG_KEYS, NULL,
};

/* ---- configuration ----------------------------------------------------------------- */

void
consumer_config_clear(struct consumer_config *c)
{
	if (c == NULL)
		return;
	free(c->name);
	free(c->conninfo);
	cqrs_broker_config_clear(&c->broker);
	free(c->cmd_socket);
	free(c->plugins);
	for (size_t i = 0; i < c->n_groups; i++)
		free(c->groups[i]);
	free(c->groups);
	free(c->queue);
	free(c->dead_queue);
	memset(c, 0, sizeof(*c));
}

/* A consumer name becomes a config section, a queue name and a lock key:
 * keep it plain. */
static int
check_name(const char *name, struct cqrs_err *err)
{
	size_t len = name != NULL ? strlen(name) : 0;

	if (len == 0 || len > 100)
		return cqrs_err_set(err, CQRS_ECONFIG,
				    "consumer name must be 1 to 100 characters (-n NAME)");
	for (size_t i = 0; i < len; i++)
		if (!isalnum((unsigned char)name[i]) && name[i] != '_' && name[i] != '-')
			return cqrs_err_set(err, CQRS_ECONFIG,
					    "consumer name \"%s\": only letters, digits, '_' and "
					    "'-' are allowed",
					    name);
	return 0;
}

/* Splits the space-separated group list into owned words. */
static int
split_groups(const char *list, struct consumer_config *c, struct cqrs_err *err)
{
	const char *p = list;

	while (*p != '\0') {
		size_t len;
		char **v;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		len = strcspn(p, " \t,");
		if (len == 0)
			break;
		v = realloc(c->groups, (c->n_groups + 1) * sizeof(*v));
		if (v == NULL)
			return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		c->groups = v;
		c->groups[c->n_groups] = strndup(p, len);
		if (c->groups[c->n_groups] == NULL)
			return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		if (cqrs_envelope_check_type("handler group", c->groups[c->n_groups], NULL) < 0) {
			c->n_groups++;
			return cqrs_err_set(err, CQRS_ECONFIG,
					    "[consumer.%s] groups: \"%.100s\" is not a group name "
					    "(letters, digits and \"._-:\")",
					    c->name, c->groups[c->n_groups - 1]);
		}
		c->n_groups++;
		p += len;
	}
	if (c->n_groups == 0)
		return cqrs_err_set(err, CQRS_ECONFIG, "[consumer.%s] groups: no group named",
				    c->name);
	return 0;
}

int
consumer_config_load(const struct config *cfg, const char *name, struct consumer_config *out,
		     struct cqrs_err *err)
{
	static const char *const queue_types[] = { "quorum", "classic", NULL };
	static const char *const froms[] = { "beginning", "now", NULL };
	char section[160];
	const char *v;
	int64_t i64;
	int idx, rc;

	memset(out, 0, sizeof(*out));
	if ((rc = check_name(name, err)) < 0)
		return rc;
	snprintf(section, sizeof(section), "consumer.%s", name);
	if ((rc = cqrs_config_check_keys(cfg, section, consumer_keys, err)) < 0)
		return rc;
	out->name = strdup(name);
	if (out->name == NULL)
		goto nomem;

	v = cqrs_config_get(cfg, "store", "conninfo", NULL);
	if (v == NULL || v[0] == '\0') {
		rc = cqrs_err_set(err, CQRS_ECONFIG,
				  "store.conninfo is not set ([store] conninfo, or CQRS_STORE_CONNINFO)");
		goto bad;
	}
	if ((out->conninfo = strdup(v)) == NULL)
		goto nomem;
	if ((rc = cqrs_broker_config_load(cfg, &out->broker, err)) < 0)
		goto bad;
	out->cmd_socket = strdup(cqrs_config_get(cfg, "cmd", "socket", "/run/cqrs/cmd.sock"));
	if (out->cmd_socket == NULL)
		goto nomem;

	v = cqrs_config_get(cfg, section, "plugins", NULL);
	if (v == NULL || strspn(v, " \t") == strlen(v)) {
		rc = cqrs_err_set(err, CQRS_ECONFIG,
				  "[%s] plugins is not set: which plugins hold the handlers?", section);
		goto bad;
	}
	if ((out->plugins = strdup(v)) == NULL)
		goto nomem;
	if ((rc = split_groups(cqrs_config_get(cfg, section, "groups", name), out, err)) < 0)
		goto bad;
	v = cqrs_config_get(cfg, section, "queue", NULL);
	if (v != NULL && v[0] != '\0') {
		if (strlen(v) > 200) {
			rc = cqrs_err_set(err, CQRS_ECONFIG, "[%s] queue: longer than 200 bytes",
					  section);
			goto bad;
		}
		out->queue = strdup(v);
	} else if (asprintf(&out->queue, "cqrs.%s", name) < 0) {
		out->queue = NULL;
	}
	if (out->queue == NULL)
		goto nomem;
	if (asprintf(&out->dead_queue, "%s" CONSUMER_DEAD_SUFFIX, out->queue) < 0) {
		out->dead_queue = NULL;
		goto nomem;
	}
	if ((rc = cqrs_config_get_enum(cfg, section, "queue_type", "quorum", queue_types, &idx, err)) < 0)
		goto bad;
	out->quorum = idx == 0;
	if ((rc = cqrs_config_get_int(cfg, section, "delivery_limit", 5, 0, 1000000, &i64, err)) < 0)
		goto bad;
	out->delivery_limit = (int)i64;
	if ((rc = cqrs_config_get_int(cfg, section, "prefetch", 200, 1, 65535, &i64, err)) < 0)
		goto bad;
	out->prefetch = (int)i64;
	if ((rc = cqrs_config_get_int(cfg, section, "batch_size", 100, 1, 10000, &i64, err)) < 0)
		goto bad;
	out->batch_size = (int)i64;
	if ((rc = cqrs_config_get_int(cfg, section, "catchup_batch", 1000, 1, 10000, &i64, err)) < 0)
		goto bad;
	out->catchup_batch = (int)i64;
	if ((rc = cqrs_config_get_enum(cfg, section, "from", "beginning", froms, &idx, err)) < 0)
		goto bad;
	out->from_beginning = idx == 0;
	if ((rc = cqrs_config_get_int(cfg, section, "retry_limit", 10, 0, 1000000, &i64, err)) < 0)
		goto bad;
	out->retry_limit = (int)i64;
	if ((rc = cqrs_config_get_ms(cfg, section, "retry_backoff", 500, 1, 3600000,
				&out->retry_backoff_ms, err)) < 0 ||
	    (rc = cqrs_config_get_ms(cfg, section, "retry_backoff_max", 30000, 1, 86400000,
				&out->retry_backoff_max_ms, err)) < 0 ||
	    (rc = cqrs_config_get_ms(cfg, section, "cmd_timeout", 10000, 100, 3600000,
				&out->cmd_timeout_ms, err)) < 0 ||
	    (rc = cqrs_config_get_ms(cfg, section, "status_interval", 5000, 100, 3600000,
				&out->status_ms, err)) < 0)
		goto bad;
	if (out->retry_backoff_max_ms < out->retry_backoff_ms)
		out->retry_backoff_max_ms = out->retry_backoff_ms;
	if ((rc = cqrs_httpd_config_load(cfg, section, &out->http, err)) < 0)
		goto bad;
	return 0;
nomem:
	rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
bad:
	consumer_config_clear(out);
	return rc;
}

/* ---- the consumer ------------------------------------------------------------------ */

static bool
in_groups(const struct consumer_config *cfg, const char *group)
{
	for (size_t i = 0; i < cfg->n_groups; i++)
		if (strcmp(cfg->groups[i], group) == 0)
			return true;
	return false;
}

static int
add_binding(struct consumer *c, const char *pattern)
{
	char **v;

	for (size_t i = 0; i < c->n_bindings; i++)
		if (strcmp(c->bindings[i], pattern) == 0)
			return 0;
	v = realloc(c->bindings, (c->n_bindings + 1) * sizeof(*v));
	if (v == NULL)
		return -1;
	c->bindings = v;
	if ((c->bindings[c->n_bindings] = strdup(pattern)) == NULL)
		return -1;
	c->n_bindings++;
	return 0;
}

int
consumer_new(const struct consumer_config *cfg, struct consumer **out, struct cqrs_err *err)
{
	struct consumer *c;
	size_t n;
	char host[64];
	int rc;

	*out = NULL;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	c->cfg = cfg;
	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	snprintf(c->app, sizeof(c->app), "cqrs-consumer@%s:%ld/%s", host, (long)getpid(),
		 cfg->name);
	c->log.comp = "consumer";
	c->log.consumer = cfg->name;
	atomic_init(&c->stop, 0);

	c->reg = cqrs_registry_new();
	if (c->reg == NULL) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		goto bad;
	}
	if ((rc = cqrs_registry_load_list(c->reg, cfg->plugins, err)) < 0)
		goto bad;
	n = cqrs_registry_handler_count(c->reg);
	c->handlers = calloc(n > 0 ? n : 1, sizeof(*c->handlers));
	if (c->handlers == NULL) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		goto bad;
	}
	for (size_t i = 0; i < n; i++) {
		const struct reg_handler *h = cqrs_registry_handler(c->reg, i);

		if (!in_groups(cfg, h->group))
			continue;
		c->handlers[c->n_handlers++] = h;
		if (add_binding(c, h->pattern) < 0) {
			rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
			goto bad;
		}
	}
	for (size_t g = 0; g < cfg->n_groups; g++) {
		bool found = false;

		for (size_t i = 0; i < c->n_handlers && !found; i++)
			found = strcmp(c->handlers[i]->group, cfg->groups[g]) == 0;
		if (!found) {
			rc = cqrs_err_set(err, CQRS_ECONFIG,
					  "consumer \"%s\": no event handler of group \"%s\" in the "
					  "plugins (%s)",
					  cfg->name, cfg->groups[g], cfg->plugins);
			goto bad;
		}
	}
	cqrs_daemon_watchdog_init(&c->watchdog);
	if ((rc = send_new(cfg->cmd_socket, cfg->cmd_timeout_ms, &c->watchdog, &c->sender, err)) < 0)
		goto bad;
	c->ops.send = send_command;
	c->ops.arg = c->sender;
	*out = c;
	return 0;
bad:
	consumer_free(c);
	return rc;
}

void
consumer_free(struct consumer *c)
{
	if (c == NULL)
		return;
	consumer_pg_close(c);
	send_free(c->sender);
	for (size_t i = 0; i < c->n_bindings; i++)
		free(c->bindings[i]);
	free(c->bindings);
	free(c->handlers);
	cqrs_registry_free(c->reg);
	free(c);
}

void
consumer_stop(struct consumer *c)
{
	atomic_store(&c->stop, 1);
}

bool
consumer_stopping(const struct consumer *c)
{
	return atomic_load(&((struct consumer *)c)->stop) != 0;
}

int
consumer_declare(struct consumer *c, struct broker *b, struct cqrs_err *err)
{
	const struct consumer_config *cfg = c->cfg;
	struct broker_queue dead = { .name = cfg->dead_queue };
	struct broker_queue q = {
		.name = cfg->queue,
		.type = cfg->quorum ? "quorum" : "classic",
		.dead_exchange = CONSUMER_DEAD_EXCHANGE,
		.dead_routing_key = cfg->queue,
		.delivery_limit = cfg->quorum ? cfg->delivery_limit : 0,
	};
	int rc;

	if ((rc = cqrs_broker_declare_topology(b, err)) < 0 ||
	    (rc = cqrs_broker_declare_exchange(b, CONSUMER_DEAD_EXCHANGE, "direct", err)) < 0 ||
	    (rc = cqrs_broker_declare_queue(b, &dead, err)) < 0 ||
	    (rc = cqrs_broker_bind(b, cfg->dead_queue, CONSUMER_DEAD_EXCHANGE, cfg->queue, err)) < 0)
		return rc;
	rc = cqrs_broker_declare_queue(b, &q, err);
	if (rc == CQRS_EINTERNAL)
		return cqrs_err_prefix(err, "the queue exists with other arguments (queue_type, "
					    "delivery_limit): delete it or configure it as it was");
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < c->n_bindings; i++)
		if ((rc = cqrs_broker_bind(b, cfg->queue, BROKER_EXCHANGE, c->bindings[i], err)) < 0)
			return rc;
	return 0;
}

bool
consumer_wants(const struct consumer *c, const char *routing_key)
{
	for (size_t i = 0; i < c->n_handlers; i++)
		if (cqrs_routing_match(c->handlers[i]->pattern, routing_key))
			return true;
	return false;
}

void
consumer_routing_key(const struct cqrs_event *ev, char *buf, size_t size)
{
	char type[CQRS_TYPE_MAX + 1];

	/* The routing key is derived from the event, not taken from the
	 * delivery: a dead letter put back goes through the default exchange
	 * with the queue's name as its key. */
	if (cqrs_envelope_stream_type(ev->stream, type, sizeof(type)) < 0)
		snprintf(type, sizeof(type), "%.*s", (int)(sizeof(type) - 1), ev->stream);
	snprintf(buf, size, "%s.%s", type, ev->type);
}

void
consumer_watchdog(struct consumer *c)
{
	(void)cqrs_daemon_tick(&c->watchdog);
}

/*
 * amqp.c - the consumer's RabbitMQ connection on librabbitmq: topology,
 * deliveries, acks and dead letters.
 *
 * librabbitmq is blocking and has no thread of its own: heartbeats are sent
 * and checked only inside its calls, so the consumer's loop calls mq_next()
 * or mq_poll() often. Frames that arrive during a synchronous call (a
 * delivery during tx.commit or basic.cancel) are queued by the library and
 * handed out later by amqp_consume_message(), so nothing is lost between
 * the two channels.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<rabbitmq-c/amqp.h>)
#define MQ_NEW_HEADERS 1
#endif
#endif
#ifdef MQ_NEW_HEADERS
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/ssl_socket.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#endif

#include "amqp.h"
#include "broker.h"
#include "consumer.h"
#include "envelope.h"

#define CH_CONSUME 1
#define CH_PUBLISH 2
#define CH_STATUS 3	/* passive declares only: no deliveries, no confirms */
#define FRAME_MAX 131072
#define DELIVERY_PERSISTENT 2
#define SYSTEM_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

struct mq {
	amqp_connection_state_t conn;
	struct broker_url url;
	bool broken;
	bool publish_open;		/* channel 2 open, in tx mode */
	bool status_open;		/* channel 3 open */
	bool consuming;
	char tag[128];			/* consumer tag given by the broker */
};

/* ---- errors ------------------------------------------------------------------------ */

static int fail(struct mq *m, struct cqrs_err *err, int code, const char *step,
		const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Marks m broken and fills err: "broker HOST:PORT/VHOST: STEP: WHY". */
static int
fail(struct mq *m, struct cqrs_err *err, int code, const char *step, const char *fmt, ...)
{
	char why[CQRS_ERR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	m->broken = true;
	return cqrs_err_set(err, code, "broker %s: %s: %s", m->url.name, step, why);
}

/* The reply of a synchronous call: 0, or m broken with the reason. A channel
 * closed by the server is the server refusing something (CQRS_EINTERNAL). */
static int
check_reply(struct mq *m, amqp_rpc_reply_t r, int channel, const char *step,
	    struct cqrs_err *err)
{
	char why[CQRS_ERR_MSG_MAX];
	int code = CQRS_EUNAVAILABLE;

	if (r.reply_type == AMQP_RESPONSE_NORMAL)
		return 0;
	cqrs_broker_reply_text(&r, why, sizeof(why));
	if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION) {
		/* answer the close, so the server does not wait for it */
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
			amqp_connection_close_ok_t ok = { 0 };
			(void)amqp_send_method(m->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
		} else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			amqp_channel_close_ok_t ok = { 0 };
			(void)amqp_send_method(m->conn, (amqp_channel_t)channel,
					       AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
			code = CQRS_EINTERNAL;
		}
	}
	return fail(m, err, code, step, "%s", why);
}

static int
check_usable(struct mq *m, const char *step, struct cqrs_err *err)
{
	if (m->broken)
		return cqrs_err_set(err, CQRS_EUNAVAILABLE,
				    "broker %s: %s: the connection failed earlier", m->url.name, step);
	return 0;
}

/* ---- connection -------------------------------------------------------------------- */

static int
setup_tls(struct mq *m, amqp_socket_t *sock, const struct mq_options *opt, struct cqrs_err *err)
{
	const char *ca = opt->cacert;

	if (ca == NULL && access(SYSTEM_CA_BUNDLE, R_OK) == 0)
		ca = SYSTEM_CA_BUNDLE;
	amqp_ssl_socket_set_verify_peer(sock, opt->verify);
	amqp_ssl_socket_set_verify_hostname(sock, opt->verify);
	if (ca != NULL && amqp_ssl_socket_set_cacert(sock, ca) != AMQP_STATUS_OK)
		return fail(m, err, CQRS_ECONFIG, "TLS", "cannot load CA certificates from \"%s\"", ca);
	if ((opt->cert == NULL) != (opt->key == NULL))
		return fail(m, err, CQRS_ECONFIG, "TLS",
			    "a client certificate needs both broker.cert and broker.key");
	if (opt->cert != NULL && amqp_ssl_socket_set_key(sock, opt->cert, opt->key) != AMQP_STATUS_OK)
		return fail(m, err, CQRS_ECONFIG, "TLS",
			    "cannot load the client certificate \"%s\" and key \"%s\"", opt->cert,
			    opt->key);
	return 0;
}

int
mq_connect(const struct mq_options *opt, struct mq **out, struct cqrs_err *err)
{
	struct mq *m;
	amqp_socket_t *sock;
	struct timeval tv;
	amqp_table_entry_t props[1];
	amqp_table_t client_props = { 0, props };
	int rc;

	*out = NULL;
	m = calloc(1, sizeof(*m));
	if (m == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "broker: out of memory");
	if ((rc = cqrs_broker_url_parse(opt->url, &m->url, err)) < 0) {
		free(m);
		return rc;
	}
	m->conn = amqp_new_connection();
	if (m->conn == NULL) {
		rc = fail(m, err, CQRS_ENOMEM, "connect", "out of memory");
		goto bad;
	}
	sock = m->url.tls ? amqp_ssl_socket_new(m->conn) : amqp_tcp_socket_new(m->conn);
	if (sock == NULL) {
		rc = fail(m, err, CQRS_ENOMEM, "connect", "cannot create a socket");
		goto bad;
	}
	if (m->url.tls && (rc = setup_tls(m, sock, opt, err)) < 0)
		goto bad;
	tv.tv_sec = opt->timeout_ms / 1000;
	tv.tv_usec = (opt->timeout_ms % 1000) * 1000;
	rc = amqp_socket_open_noblock(sock, m->url.host, m->url.port, &tv);
	if (rc != AMQP_STATUS_OK) {
		rc = fail(m, err, CQRS_EUNAVAILABLE, "connect", "%s", amqp_error_string2(rc));
		goto bad;
	}
	(void)amqp_set_handshake_timeout(m->conn, &tv);
	(void)amqp_set_rpc_timeout(m->conn, &tv);
	if (opt->connection_name != NULL) {
		props[0].key = amqp_cstring_bytes("connection_name");
		props[0].value.kind = AMQP_FIELD_KIND_UTF8;
		props[0].value.value.bytes = amqp_cstring_bytes(opt->connection_name);
		client_props.num_entries = 1;
	} else {
		client_props.num_entries = 0;
	}
	rc = check_reply(m, amqp_login_with_properties(m->conn, m->url.vhost, 0, FRAME_MAX,
						       opt->heartbeat_s, &client_props,
						       AMQP_SASL_METHOD_PLAIN, m->url.user,
						       m->url.password),
			 0, "login", err);
	if (rc < 0) {
		cqrs_err_prefix(err, "user \"%s\"", m->url.user);
		goto bad;
	}
	amqp_channel_open(m->conn, CH_CONSUME);
	if ((rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_CONSUME, "channel.open", err)) < 0)
		goto bad;
	*out = m;
	return 0;
bad:
	mq_free(m);
	return rc;
}

void
mq_free(struct mq *m)
{
	if (m == NULL)
		return;
	if (m->conn != NULL) {
		if (!m->broken)
			(void)amqp_connection_close(m->conn, AMQP_REPLY_SUCCESS);
		amqp_destroy_connection(m->conn);
	}
	cqrs_broker_url_clear(&m->url);
	free(m);
}

bool
mq_ok(const struct mq *m)
{
	return m != NULL && !m->broken;
}

const char *
mq_name(const struct mq *m)
{
	return m->url.name;
}

/* ---- topology ---------------------------------------------------------------------- */

static amqp_table_entry_t
entry_str(const char *key, const char *value)
{
	amqp_table_entry_t e;

	e.key = amqp_cstring_bytes(key);
	e.value.kind = AMQP_FIELD_KIND_UTF8;
	e.value.value.bytes = amqp_cstring_bytes(value);
	return e;
}

static amqp_table_entry_t
entry_i64(const char *key, int64_t value)
{
	amqp_table_entry_t e;

	e.key = amqp_cstring_bytes(key);
	e.value.kind = AMQP_FIELD_KIND_I64;
	e.value.value.i64 = value;
	return e;
}

int
mq_declare(struct mq *m, const struct mq_topology *t, struct cqrs_err *err)
{
	amqp_table_entry_t args[4];
	amqp_table_t table;
	char step[400];
	int n = 0, rc;

	if ((rc = check_usable(m, "declare", err)) < 0)
		return rc;
	/* as cqrs_broker_declare_topology(): durable, not auto-delete, not internal */
	amqp_exchange_declare(m->conn, CH_CONSUME, amqp_cstring_bytes(BROKER_EXCHANGE),
			      amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
	if ((rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_CONSUME,
			      "declare exchange \"" BROKER_EXCHANGE "\" (durable topic)", err)) < 0)
		return rc;
	amqp_exchange_declare(m->conn, CH_CONSUME, amqp_cstring_bytes(CONSUMER_DEAD_EXCHANGE),
			      amqp_cstring_bytes("direct"), 0, 1, 0, 0, amqp_empty_table);
	if ((rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_CONSUME,
			      "declare exchange \"" CONSUMER_DEAD_EXCHANGE "\" (durable direct)",
			      err)) < 0)
		return rc;

	snprintf(step, sizeof(step), "declare dead-letter queue \"%s\"", t->dead_queue);
	amqp_queue_declare(m->conn, CH_CONSUME, amqp_cstring_bytes(t->dead_queue), 0, 1, 0, 0,
			   amqp_empty_table);
	if ((rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_CONSUME, step, err)) < 0)
		return rc;
	snprintf(step, sizeof(step), "bind \"%s\" to " CONSUMER_DEAD_EXCHANGE, t->dead_queue);
	amqp_queue_bind(m->conn, CH_CONSUME, amqp_cstring_bytes(t->dead_queue),
			amqp_cstring_bytes(CONSUMER_DEAD_EXCHANGE), amqp_cstring_bytes(t->queue),
			amqp_empty_table);
	if ((rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_CONSUME, step, err)) < 0)
		return rc;

	args[n++] = entry_str("x-queue-type", t->quorum ? "quorum" : "classic");
	args[n++] = entry_str("x-dead-letter-exchange", CONSUMER_DEAD_EXCHANGE);
	args[n++] = entry_str("x-dead-letter-routing-key", t->queue);
	if (t->quorum && t->delivery_limit > 0)
		args[n++] = entry_i64("x-delivery-limit", t->delivery_limit);
	table.num_entries = n;
	table.entries = args;
	snprintf(step, sizeof(step), "declare queue \"%s\" (%s%s)", t->queue,
		 t->quorum ? "quorum" : "classic",
		 t->quorum && t->delivery_limit > 0 ? ", x-delivery-limit" : "");
	amqp_queue_declare(m->conn, CH_CONSUME, amqp_cstring_bytes(t->queue), 0, 1, 0, 0, table);
	rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_CONSUME, step, err);
	if (rc == CQRS_EINTERNAL)
		return cqrs_err_prefix(err, "the queue exists with other arguments (queue_type, "
					    "delivery_limit): delete it or configure it as it was");
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < t->n_bindings; i++) {
		snprintf(step, sizeof(step), "bind \"%s\" to " BROKER_EXCHANGE " with \"%.200s\"",
			 t->queue, t->bindings[i]);
		amqp_queue_bind(m->conn, CH_CONSUME, amqp_cstring_bytes(t->queue),
				amqp_cstring_bytes(BROKER_EXCHANGE),
				amqp_cstring_bytes(t->bindings[i]), amqp_empty_table);
		if ((rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_CONSUME, step, err)) < 0)
			return rc;
	}
	return 0;
}

/* ---- messages ---------------------------------------------------------------------- */

void
mq_msg_clear(struct mq_msg *msg)
{
	if (msg == NULL)
		return;
	free(msg->routing_key);
	free(msg->message_id);
	free(msg->type);
	free(msg->body);
	free(msg->reason);
	free(msg->failed_at);
	free(msg->consumer);
	free(msg->stream);
	memset(msg, 0, sizeof(*msg));
}

void
mq_msg_move(struct mq_msg *dst, struct mq_msg *src)
{
	*dst = *src;
	memset(src, 0, sizeof(*src));
}

static char *
dup_bytes(amqp_bytes_t b)
{
	char *s = malloc(b.len + 1);

	if (s == NULL)
		return NULL;
	if (b.len > 0)
		memcpy(s, b.bytes, b.len);
	s[b.len] = '\0';
	return s;
}

static bool
key_is(amqp_bytes_t key, const char *name)
{
	return key.len == strlen(name) && memcmp(key.bytes, name, key.len) == 0;
}

static int64_t
field_int(const amqp_field_value_t *v)
{
	switch (v->kind) {
	case AMQP_FIELD_KIND_I8: return v->value.i8;
	case AMQP_FIELD_KIND_U8: return v->value.u8;
	case AMQP_FIELD_KIND_I16: return v->value.i16;
	case AMQP_FIELD_KIND_U16: return v->value.u16;
	case AMQP_FIELD_KIND_I32: return v->value.i32;
	case AMQP_FIELD_KIND_U32: return v->value.u32;
	case AMQP_FIELD_KIND_I64: return v->value.i64;
	case AMQP_FIELD_KIND_U64: return (int64_t)v->value.u64;
	default: return 0;
	}
}

static bool
is_str(const amqp_field_value_t *v)
{
	return v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES;
}

/* The first x-death entry (the latest death): its reason and count. */
static void
read_death(const amqp_field_value_t *v, char **reason, int64_t *count)
{
	const amqp_table_t *t;

	if (v->kind != AMQP_FIELD_KIND_ARRAY || v->value.array.num_entries < 1 ||
	    v->value.array.entries[0].kind != AMQP_FIELD_KIND_TABLE)
		return;
	t = &v->value.array.entries[0].value.table;
	for (int i = 0; i < t->num_entries; i++) {
		if (key_is(t->entries[i].key, "reason") && is_str(&t->entries[i].value) &&
		    *reason == NULL)
			*reason = dup_bytes(t->entries[i].value.value.bytes);
		else if (key_is(t->entries[i].key, "count"))
			*count = field_int(&t->entries[i].value);
	}
}

/* Copies what we use of a received message into msg. */
static int
fill_msg(struct mq_msg *msg, const amqp_message_t *am, amqp_bytes_t routing_key)
{
	const amqp_basic_properties_t *p = &am->properties;
	char *cqrs_reason = NULL, *death_reason = NULL;

	msg->routing_key = dup_bytes(routing_key);
	msg->body = dup_bytes(am->body);
	msg->body_len = am->body.len;
	msg->message_id = (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) ? dup_bytes(p->message_id)
								   : strdup("");
	msg->type = (p->_flags & AMQP_BASIC_TYPE_FLAG) ? dup_bytes(p->type) : strdup("");
	if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
		for (int i = 0; i < p->headers.num_entries; i++) {
			const amqp_table_entry_t *e = &p->headers.entries[i];

			if (key_is(e->key, "x-delivery-count"))
				msg->delivery_count = field_int(&e->value);
			else if (key_is(e->key, CONSUMER_H_REASON) && is_str(&e->value) && !cqrs_reason)
				cqrs_reason = dup_bytes(e->value.value.bytes);
			else if (key_is(e->key, CONSUMER_H_FAILED_AT) && is_str(&e->value) &&
				 !msg->failed_at)
				msg->failed_at = dup_bytes(e->value.value.bytes);
			else if (key_is(e->key, CONSUMER_H_CONSUMER) && is_str(&e->value) &&
				 !msg->consumer)
				msg->consumer = dup_bytes(e->value.value.bytes);
			else if (key_is(e->key, "stream") && is_str(&e->value) && !msg->stream)
				msg->stream = dup_bytes(e->value.value.bytes);
			else if (key_is(e->key, "version"))
				msg->version = field_int(&e->value);
			else if (key_is(e->key, "position"))
				msg->position = field_int(&e->value);
			else if (key_is(e->key, "x-death"))
				read_death(&e->value, &death_reason, &msg->deaths);
		}
	}
	if (cqrs_reason != NULL) {
		msg->reason = cqrs_reason;
		free(death_reason);
	} else {
		msg->reason = death_reason;
	}
	if (msg->reason == NULL)
		msg->reason = strdup("");
	if (msg->failed_at == NULL)
		msg->failed_at = strdup("");
	if (msg->consumer == NULL)
		msg->consumer = strdup("");
	if (msg->stream == NULL)
		msg->stream = strdup("");
	if (msg->routing_key == NULL || msg->body == NULL || msg->message_id == NULL ||
	    msg->type == NULL || msg->reason == NULL || msg->failed_at == NULL ||
	    msg->consumer == NULL || msg->stream == NULL) {
		mq_msg_clear(msg);
		return CQRS_ENOMEM;
	}
	return 0;
}

int
mq_get(struct mq *m, const char *queue, struct mq_msg *msg, struct cqrs_err *err)
{
	amqp_rpc_reply_t r;
	amqp_message_t am;
	amqp_basic_get_ok_t *ok;
	uint64_t tag;
	bool redelivered;
	char *rk;
	int rc;

	memset(msg, 0, sizeof(*msg));
	if ((rc = check_usable(m, "basic.get", err)) < 0)
		return rc;
	amqp_maybe_release_buffers(m->conn);
	r = amqp_basic_get(m->conn, CH_CONSUME, amqp_cstring_bytes(queue), 0);
	if ((rc = check_reply(m, r, CH_CONSUME, "basic.get", err)) < 0)
		return rc;
	if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
		return 0;
	if (r.reply.id != AMQP_BASIC_GET_OK_METHOD)
		return fail(m, err, CQRS_EINTERNAL, "basic.get", "unexpected answer %s",
			    amqp_method_name(r.reply.id));
	ok = r.reply.decoded;
	tag = ok->delivery_tag;
	redelivered = ok->redelivered;
	rk = dup_bytes(ok->routing_key);
	if (rk == NULL)
		return fail(m, err, CQRS_ENOMEM, "basic.get", "out of memory");
	r = amqp_read_message(m->conn, CH_CONSUME, &am, 0);
	if ((rc = check_reply(m, r, CH_CONSUME, "basic.get: read message", err)) < 0) {
		free(rk);
		return rc;
	}
	rc = fill_msg(msg, &am, amqp_cstring_bytes(rk));
	free(rk);
	amqp_destroy_message(&am);
	if (rc < 0)
		return fail(m, err, CQRS_ENOMEM, "basic.get", "out of memory");
	msg->tag = tag;
	msg->redelivered = redelivered;
	return 1;
}

int
mq_consume(struct mq *m, const char *queue, int prefetch, struct cqrs_err *err)
{
	amqp_basic_consume_ok_t *ok;
	int rc;

	if ((rc = check_usable(m, "basic.consume", err)) < 0)
		return rc;
	amqp_basic_qos(m->conn, CH_CONSUME, 0, (uint16_t)prefetch, 0);
	if ((rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_CONSUME, "basic.qos", err)) < 0)
		return rc;
	ok = amqp_basic_consume(m->conn, CH_CONSUME, amqp_cstring_bytes(queue), amqp_empty_bytes,
				0, 0, 0, amqp_empty_table);
	if ((rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_CONSUME, "basic.consume",
			      err)) < 0)
		return rc;
	snprintf(m->tag, sizeof(m->tag), "%.*s", (int)ok->consumer_tag.len,
		 (char *)ok->consumer_tag.bytes);
	m->consuming = true;
	return 0;
}

int
mq_cancel(struct mq *m, struct cqrs_err *err)
{
	int rc;

	if ((rc = check_usable(m, "basic.cancel", err)) < 0)
		return rc;
	if (!m->consuming)
		return 0;
	amqp_basic_cancel(m->conn, CH_CONSUME, amqp_cstring_bytes(m->tag));
	if ((rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_CONSUME, "basic.cancel", err)) < 0)
		return rc;
	m->consuming = false;
	return 0;
}

/* A frame that is not a delivery: a close, a cancel from the server, or
 * something we can ignore. */
static int
other_frame(struct mq *m, struct cqrs_err *err)
{
	amqp_frame_t frame;
	int st;

	st = amqp_simple_wait_frame(m->conn, &frame);
	if (st != AMQP_STATUS_OK)
		return fail(m, err, CQRS_EUNAVAILABLE, "receive", "%s", amqp_error_string2(st));
	if (frame.frame_type != AMQP_FRAME_METHOD)
		return 0;
	switch (frame.payload.method.id) {
	case AMQP_CHANNEL_CLOSE_METHOD: {
		amqp_channel_close_t *c = frame.payload.method.decoded;
		amqp_channel_close_ok_t ok = { 0 };

		(void)amqp_send_method(m->conn, frame.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
		return fail(m, err, CQRS_EINTERNAL, "receive", "channel %u closed by the broker: %u %.*s",
			    frame.channel, c->reply_code, (int)c->reply_text.len,
			    (char *)c->reply_text.bytes);
	}
	case AMQP_CONNECTION_CLOSE_METHOD: {
		amqp_connection_close_t *c = frame.payload.method.decoded;
		amqp_connection_close_ok_t ok = { 0 };

		(void)amqp_send_method(m->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
		return fail(m, err, CQRS_EUNAVAILABLE, "receive",
			    "connection closed by the broker: %u %.*s", c->reply_code,
			    (int)c->reply_text.len, (char *)c->reply_text.bytes);
	}
	case AMQP_BASIC_CANCEL_METHOD:
		/* the queue was deleted under us */
		return fail(m, err, CQRS_EUNAVAILABLE, "receive",
			    "the broker cancelled our consumer (was the queue deleted?)");
	default:
		return 0;
	}
}

int
mq_next(struct mq *m, int timeout_ms, struct mq_msg *msg, struct cqrs_err *err)
{
	amqp_envelope_t env;
	amqp_rpc_reply_t r;
	struct timeval tv;
	int rc;

	memset(msg, 0, sizeof(*msg));
	if ((rc = check_usable(m, "receive", err)) < 0)
		return rc;
	amqp_maybe_release_buffers(m->conn);
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	r = amqp_consume_message(m->conn, &env, &tv, 0);
	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		rc = fill_msg(msg, &env.message, env.routing_key);
		msg->tag = env.delivery_tag;
		msg->redelivered = env.redelivered;
		amqp_destroy_envelope(&env);
		if (rc < 0)
			return fail(m, err, CQRS_ENOMEM, "receive", "out of memory");
		return 1;
	}
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
		if (r.library_error == AMQP_STATUS_TIMEOUT)
			return 0;
		if (r.library_error == AMQP_STATUS_UNEXPECTED_STATE)
			return other_frame(m, err);
	}
	if ((rc = check_reply(m, r, CH_CONSUME, "receive", err)) < 0)
		return rc;
	return fail(m, err, CQRS_EUNAVAILABLE, "receive", "no message");
}

int
mq_poll(struct mq *m, struct cqrs_err *err)
{
	amqp_frame_t frame;
	struct timeval tv = { 0, 0 };
	int rc, st;

	if ((rc = check_usable(m, "poll", err)) < 0)
		return rc;
	/* Deliveries are only read through mq_next(): with a consumer running,
	 * leave the frames to it (heartbeats are sent on the way). */
	if (m->consuming || amqp_frames_enqueued(m->conn))
		return 0;
	st = amqp_simple_wait_frame_noblock(m->conn, &frame, &tv);
	if (st == AMQP_STATUS_TIMEOUT)
		return 0;
	if (st != AMQP_STATUS_OK)
		return fail(m, err, CQRS_EUNAVAILABLE, "poll", "%s", amqp_error_string2(st));
	if (frame.frame_type == AMQP_FRAME_METHOD &&
	    (frame.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD ||
	     frame.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD))
		return fail(m, err, CQRS_EUNAVAILABLE, "poll", "closed by the broker");
	return 0;
}

/*
 * Messages ready in queue, by a passive queue.declare on a channel of its
 * own: deliveries on the consuming channel that arrive meanwhile are kept
 * by librabbitmq for mq_next().
 */
int
mq_queue_depth(struct mq *m, const char *queue, uint64_t *ready, struct cqrs_err *err)
{
	amqp_queue_declare_ok_t *ok;
	int rc;

	if ((rc = check_usable(m, "queue depth", err)) < 0)
		return rc;
	if (!m->status_open) {
		amqp_channel_open(m->conn, CH_STATUS);
		if ((rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_STATUS, "channel.open",
				      err)) < 0)
			return rc;
		m->status_open = true;
	}
	ok = amqp_queue_declare(m->conn, CH_STATUS, amqp_cstring_bytes(queue), 1, 0, 0, 0,
				amqp_empty_table);
	if ((rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_STATUS, "queue depth", err)) < 0)
		return rc;
	*ready = ok != NULL ? ok->message_count : 0;
	return 0;
}

int
mq_ack(struct mq *m, uint64_t tag, bool multiple, struct cqrs_err *err)
{
	int rc, st;

	if ((rc = check_usable(m, "basic.ack", err)) < 0)
		return rc;
	st = amqp_basic_ack(m->conn, CH_CONSUME, tag, multiple);
	if (st != AMQP_STATUS_OK)
		return fail(m, err, CQRS_EUNAVAILABLE, "basic.ack", "%s", amqp_error_string2(st));
	return 0;
}

int
mq_reject(struct mq *m, uint64_t tag, bool requeue, struct cqrs_err *err)
{
	int rc, st;

	if ((rc = check_usable(m, "basic.reject", err)) < 0)
		return rc;
	st = amqp_basic_reject(m->conn, CH_CONSUME, tag, requeue);
	if (st != AMQP_STATUS_OK)
		return fail(m, err, CQRS_EUNAVAILABLE, "basic.reject", "%s", amqp_error_string2(st));
	return 0;
}

int
mq_publish(struct mq *m, const struct mq_out *o, struct cqrs_err *err)
{
	amqp_basic_properties_t props;
	amqp_table_entry_t h[7];
	char failed_at[ENVELOPE_TIME_SIZE];
	int n = 0, rc, st;

	if ((rc = check_usable(m, "publish", err)) < 0)
		return rc;
	if (!m->publish_open) {
		amqp_channel_open(m->conn, CH_PUBLISH);
		if ((rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_PUBLISH,
				      "channel.open (publish)", err)) < 0)
			return rc;
		amqp_tx_select(m->conn, CH_PUBLISH);
		if ((rc = check_reply(m, amqp_get_rpc_reply(m->conn), CH_PUBLISH, "tx.select",
				      err)) < 0)
			return rc;
		m->publish_open = true;
	}
	memset(&props, 0, sizeof(props));
	props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
	props.content_type = amqp_cstring_bytes("application/json");
	props.delivery_mode = DELIVERY_PERSISTENT;
	if (o->message_id != NULL && o->message_id[0] != '\0') {
		props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
		props.message_id = amqp_cstring_bytes(o->message_id);
	}
	if (o->type != NULL && o->type[0] != '\0') {
		props._flags |= AMQP_BASIC_TYPE_FLAG;
		props.type = amqp_cstring_bytes(o->type);
	}
	if (o->stream != NULL && o->stream[0] != '\0') {
		h[n++] = entry_str("stream", o->stream);
		h[n++] = entry_i64("version", o->version);
		h[n++] = entry_i64("position", o->position);
	}
	if (o->reason != NULL) {
		cqrs_envelope_now(failed_at, sizeof(failed_at));
		h[n++] = entry_str(CONSUMER_H_REASON, o->reason);
		h[n++] = entry_str(CONSUMER_H_FAILED_AT, failed_at);
	}
	if (o->consumer != NULL)
		h[n++] = entry_str(CONSUMER_H_CONSUMER, o->consumer);
	if (n > 0) {
		props._flags |= AMQP_BASIC_HEADERS_FLAG;
		props.headers.num_entries = n;
		props.headers.entries = h;
	}
	st = amqp_basic_publish(m->conn, CH_PUBLISH, amqp_cstring_bytes(o->exchange),
				amqp_cstring_bytes(o->routing_key), 0, 0, &props,
				(amqp_bytes_t){ o->body_len, (void *)o->body });
	if (st != AMQP_STATUS_OK)
		return fail(m, err, CQRS_EUNAVAILABLE, "publish", "%s", amqp_error_string2(st));
	amqp_tx_commit(m->conn, CH_PUBLISH);
	return check_reply(m, amqp_get_rpc_reply(m->conn), CH_PUBLISH, "tx.commit", err);
}

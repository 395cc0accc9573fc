/*
 * broker.c - the AMQP connection on librabbitmq: URL, TCP or TLS, login,
 * channels, errors, the frames that are not deliveries, topology.
 *
 * librabbitmq is blocking and keeps no background thread: heartbeats are
 * sent and checked only inside its calls, which is why cqrs_broker_poll()
 * exists. Frames other than RPC replies and deliveries (acks of publisher
 * confirms, closes, connection.blocked, a cancel of our consumer) are read
 * with amqp_simple_wait_frame_noblock() and handled in one place,
 * handle_method(), for every caller.
 */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker_int.h"

#ifdef BROKER_NEW_HEADERS
#include <rabbitmq-c/ssl_socket.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#endif

#define CH_STATUS BROKER_CHANNEL_MAX	/* passive declares only: no deliveries, no confirms */
#define FRAME_MAX 131072
#define SYSTEM_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

/* ---- URL ----------------------------------------------------------------- */

/* vhost percent-encoded as in a URL, for names in messages */
static void
encode_vhost(const char *vhost, char *buf, size_t size)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	for (const unsigned char *p = (const unsigned char *)vhost; *p != '\0'; p++) {
		bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			     (*p >= '0' && *p <= '9') || strchr("-._~", *p) != NULL;
		if (o + (plain ? 1 : 3) >= size)
			break;
		if (plain) {
			buf[o++] = (char)*p;
		} else {
			buf[o++] = '%';
			buf[o++] = hex[*p >> 4];
			buf[o++] = hex[*p & 15];
		}
	}
	buf[o < size ? o : size - 1] = '\0';
}

int
cqrs_broker_url_parse(const char *url, struct broker_url *out, struct cqrs_err *err)
{
	struct amqp_connection_info ci;
	char vhost[128];
	char *copy;
	int rc;

	memset(out, 0, sizeof(*out));
	if (url == NULL || url[0] == '\0')
		return cqrs_err_set(err, CQRS_ECONFIG,
				    "broker.url is not set (config [broker] url, or CQRS_BROKER_URL)");
	if (strncmp(url, "amqp://", 7) != 0 && strncmp(url, "amqps://", 8) != 0)
		return cqrs_err_set(err, CQRS_ECONFIG,
				    "broker.url must start with amqp:// or amqps://");
	copy = strdup(url);
	if (copy == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "broker.url: out of memory");
	/* amqp_parse_url() decodes in place and points into its argument */
	rc = amqp_parse_url(copy, &ci);
	if (rc != AMQP_STATUS_OK) {
		free(copy);
		/* not the URL itself: it may hold a password */
		return cqrs_err_set(err, CQRS_ECONFIG,
				    "broker.url does not parse as amqp[s]://user:password@host:port/vhost "
				    "(percent-encode special characters; no query string)");
	}
	out->user = strdup(ci.user);
	out->password = strdup(ci.password);
	out->host = strdup(ci.host);
	out->vhost = strdup(ci.vhost);
	out->port = ci.port;
	out->tls = ci.ssl != 0;
	free(copy);
	if (out->user == NULL || out->password == NULL || out->host == NULL || out->vhost == NULL) {
		cqrs_broker_url_clear(out);
		return cqrs_err_set(err, CQRS_ENOMEM, "broker.url: out of memory");
	}
	if (out->host[0] == '\0') {
		cqrs_broker_url_clear(out);
		return cqrs_err_set(err, CQRS_ECONFIG, "broker.url has no host");
	}
	encode_vhost(out->vhost, vhost, sizeof(vhost));
	snprintf(out->name, sizeof(out->name), "%.160s:%d/%.120s", out->host, out->port, vhost);
	return 0;
}

void
cqrs_broker_url_clear(struct broker_url *u)
{
	if (u == NULL)
		return;
	free(u->user);
	if (u->password != NULL) {
		memset(u->password, 0, strlen(u->password));
		free(u->password);
	}
	free(u->host);
	free(u->vhost);
	memset(u, 0, sizeof(*u));
}

/* ---- errors -------------------------------------------------------------- */

void
cqrs_broker_reply_text(const amqp_rpc_reply_t *rp, char *buf, size_t size)
{
	amqp_rpc_reply_t r = *rp;

	switch (r.reply_type) {
	case AMQP_RESPONSE_NORMAL:
		snprintf(buf, size, "ok");
		break;
	case AMQP_RESPONSE_NONE:
		snprintf(buf, size, "no reply");
		break;
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		snprintf(buf, size, "%s", amqp_error_string2(r.library_error));
		break;
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
			amqp_connection_close_t *m = r.reply.decoded;
			snprintf(buf, size, "connection closed by the broker: %u %.*s",
				 m->reply_code, (int)m->reply_text.len, (char *)m->reply_text.bytes);
		} else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			amqp_channel_close_t *m = r.reply.decoded;
			snprintf(buf, size, "channel closed by the broker: %u %.*s",
				 m->reply_code, (int)m->reply_text.len, (char *)m->reply_text.bytes);
		} else {
			snprintf(buf, size, "unexpected answer %s", amqp_method_name(r.reply.id));
		}
		break;
	}
}

int
cqrs_broker_fail(struct broker *b, struct cqrs_err *err, int code, const char *step,
		 const char *fmt, ...)
{
	char why[CQRS_ERR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	b->broken = true;
	return cqrs_err_set(err, code, "broker %s: %s: %s", b->url.name, step, why);
}

/* The server closed channel ch or the connection: answer it, so that it
 * does not wait for us, and note that the channel is gone. */
static void
answer_close(struct broker *b, amqp_method_number_t id, int ch)
{
	if (id == AMQP_CONNECTION_CLOSE_METHOD) {
		amqp_connection_close_ok_t ok = { 0 };
		(void)amqp_send_method(b->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
	} else if (id == AMQP_CHANNEL_CLOSE_METHOD) {
		amqp_channel_close_ok_t ok = { 0 };
		(void)amqp_send_method(b->conn, (amqp_channel_t)ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
	}
}

int
cqrs_broker_check_reply(struct broker *b, amqp_rpc_reply_t r, int ch, const char *step,
			struct cqrs_err *err)
{
	char why[CQRS_ERR_MSG_MAX];
	int code = CQRS_EUNAVAILABLE;

	if (r.reply_type == AMQP_RESPONSE_NORMAL)
		return 0;
	cqrs_broker_reply_text(&r, why, sizeof(why));
	if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION) {
		answer_close(b, r.reply.id, ch);
		if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
			code = CQRS_EINTERNAL;
	}
	return cqrs_broker_fail(b, err, code, step, "%s", why);
}

int
cqrs_broker_check_usable(struct broker *b, const char *step, struct cqrs_err *err)
{
	if (b->broken)
		return cqrs_err_set(err, CQRS_EUNAVAILABLE,
				    "broker %s: %s: the connection failed earlier", b->url.name, step);
	return 0;
}

/* ---- connection ---------------------------------------------------------- */

void
cqrs_broker_options_default(struct broker_options *o)
{
	memset(o, 0, sizeof(*o));
	o->heartbeat_s = 30;
	o->connect_timeout_ms = 10000;
	o->confirms = true;
	o->verify = true;
}

static int
setup_tls(struct broker *b, amqp_socket_t *sock, const struct broker_options *opt,
	  struct cqrs_err *err)
{
	const char *ca = opt->cacert;

	if (ca == NULL && access(SYSTEM_CA_BUNDLE, R_OK) == 0)
		ca = SYSTEM_CA_BUNDLE;
	amqp_ssl_socket_set_verify_peer(sock, opt->verify);
	amqp_ssl_socket_set_verify_hostname(sock, opt->verify);
	if (ca != NULL && amqp_ssl_socket_set_cacert(sock, ca) != AMQP_STATUS_OK)
		return cqrs_broker_fail(b, err, CQRS_ECONFIG, "TLS",
					"cannot load CA certificates from \"%s\"", ca);
	if ((opt->cert == NULL) != (opt->key == NULL))
		return cqrs_broker_fail(b, err, CQRS_ECONFIG, "TLS",
					"a client certificate needs both broker.cert and broker.key");
	if (opt->cert != NULL && amqp_ssl_socket_set_key(sock, opt->cert, opt->key) != AMQP_STATUS_OK)
		return cqrs_broker_fail(b, err, CQRS_ECONFIG, "TLS",
					"cannot load the client certificate \"%s\" and key \"%s\"",
					opt->cert, opt->key);
	return 0;
}

/* TCP or TLS, then the socket open within the connect timeout. */
static int
open_socket(struct broker *b, const struct broker_options *opt, struct timeval *tv,
	    struct cqrs_err *err)
{
	amqp_socket_t *sock;
	int rc;

	b->conn = amqp_new_connection();
	if (b->conn == NULL)
		return cqrs_broker_fail(b, err, CQRS_ENOMEM, "connect", "out of memory");
	sock = b->url.tls ? amqp_ssl_socket_new(b->conn) : amqp_tcp_socket_new(b->conn);
	if (sock == NULL)
		return cqrs_broker_fail(b, err, CQRS_ENOMEM, "connect", "cannot create a %s socket",
					b->url.tls ? "TLS" : "TCP");
	if (b->url.tls && (rc = setup_tls(b, sock, opt, err)) < 0)
		return rc;
	tv->tv_sec = opt->connect_timeout_ms / 1000;
	tv->tv_usec = (opt->connect_timeout_ms % 1000) * 1000;
	rc = amqp_socket_open_noblock(sock, b->url.host, b->url.port, tv);
	if (rc != AMQP_STATUS_OK)
		return cqrs_broker_fail(b, err, CQRS_EUNAVAILABLE,
					b->url.tls ? "TLS connect" : "connect", "%s",
					amqp_error_string2(rc));
	/* the handshake and every RPC (declare, tx.commit, close) give up after this */
	(void)amqp_set_handshake_timeout(b->conn, tv);
	(void)amqp_set_rpc_timeout(b->conn, tv);
	return 0;
}

int
cqrs_broker_connect(const char *url, const struct broker_options *opt, struct broker **out,
	       struct cqrs_err *err)
{
	struct broker_options defaults;
	struct broker *b = NULL;
	struct timeval tv;
	amqp_table_entry_t caps[1], props[2];
	amqp_table_t client_props;
	int n = 0, rc;

	*out = NULL;
	if (opt == NULL) {
		cqrs_broker_options_default(&defaults);
		opt = &defaults;
	}
	b = calloc(1, sizeof(*b));
	if (b == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "broker: out of memory");
	b->low = b->base = 1;
	b->confirms = opt->confirms;
	if ((rc = cqrs_broker_url_parse(url, &b->url, err)) < 0) {
		free(b);
		return rc;
	}
	if ((rc = open_socket(b, opt, &tv, err)) < 0)
		goto bad;

	/* Ask for connection.blocked: a resource alarm then tells us why
	 * publishing stalls instead of leaving us waiting in silence. */
	caps[0].key = amqp_cstring_bytes("connection.blocked");
	caps[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
	caps[0].value.value.boolean = 1;
	props[n].key = amqp_cstring_bytes("capabilities");
	props[n].value.kind = AMQP_FIELD_KIND_TABLE;
	props[n].value.value.table.num_entries = 1;
	props[n].value.value.table.entries = caps;
	n++;
	if (opt->connection_name != NULL) {
		props[n].key = amqp_cstring_bytes("connection_name");
		props[n].value.kind = AMQP_FIELD_KIND_UTF8;
		props[n].value.value.bytes = amqp_cstring_bytes(opt->connection_name);
		n++;
	}
	client_props.num_entries = n;
	client_props.entries = props;
	rc = cqrs_broker_check_reply(b, amqp_login_with_properties(b->conn, b->url.vhost, 0, FRAME_MAX,
								   opt->heartbeat_s, &client_props,
								   AMQP_SASL_METHOD_PLAIN, b->url.user,
								   opt->password != NULL ? opt->password :
								   b->url.password),
				     0, "login", err);
	if (rc < 0) {
		cqrs_err_prefix(err, "user \"%s\"", b->url.user);
		goto bad;
	}
	if ((rc = cqrs_broker_channel(b, BROKER_CHANNEL, err)) < 0)
		goto bad;
	if (b->confirms) {
		amqp_confirm_select(b->conn, BROKER_CHANNEL);
		rc = cqrs_broker_check_reply(b, amqp_get_rpc_reply(b->conn), BROKER_CHANNEL,
					     "confirm.select", err);
		if (rc < 0)
			goto bad;
	}
	*out = b;
	return 0;
bad:
	cqrs_broker_free(b);
	return rc;
}

void
cqrs_broker_free(struct broker *b)
{
	if (b == NULL)
		return;
	if (b->conn != NULL) {
		/* polite close: the server then logs no "client unexpectedly
		 * closed TCP connection"; it closes the channels with it */
		if (!b->broken)
			(void)amqp_connection_close(b->conn, AMQP_REPLY_SUCCESS);
		amqp_destroy_connection(b->conn);
	}
	cqrs_broker_url_clear(&b->url);
	free(b->acked);
	free(b);
}

const char *
cqrs_broker_name(const struct broker *b)
{
	return b->url.name;
}

int
cqrs_broker_fd(const struct broker *b)
{
	if (b->broken || b->conn == NULL)
		return -1;
	return amqp_get_sockfd(b->conn);
}

bool
cqrs_broker_ok(const struct broker *b)
{
	return b != NULL && !b->broken;
}

bool
cqrs_broker_blocked(const struct broker *b, const char **reason)
{
	if (reason != NULL)
		*reason = b->blocked_reason;
	return b->blocked;
}

int
cqrs_broker_channel(struct broker *b, int ch, struct cqrs_err *err)
{
	char step[40];
	int rc;

	if (ch < 1 || ch > BROKER_CHANNEL_MAX)
		return cqrs_err_set(err, CQRS_EINVALID, "broker %s: no channel %d (1 to %d)",
				    b->url.name, ch, BROKER_CHANNEL_MAX);
	if (b->open & (1u << ch))
		return 0;
	if (ch == BROKER_CHANNEL)
		snprintf(step, sizeof(step), "channel.open");
	else
		snprintf(step, sizeof(step), "channel.open (%d)", ch);
	amqp_channel_open(b->conn, (amqp_channel_t)ch);
	if ((rc = cqrs_broker_check_reply(b, amqp_get_rpc_reply(b->conn), ch, step, err)) < 0)
		return rc;
	b->open |= 1u << ch;
	return 0;
}

/* ---- frames -------------------------------------------------------------- */

/*
 * A method that is neither an RPC reply nor a delivery. With publisher
 * confirms (the tracker) anything but acks, blocks and closes is a protocol
 * error; a consumer's connection also sees what follows a cancelled
 * consumer or a delivery's leftovers, which are not ours to judge.
 */
static int
handle_method(struct broker *b, amqp_frame_t *f, struct cqrs_err *err)
{
	amqp_method_t *m = &f->payload.method;

	switch (m->id) {
	case AMQP_BASIC_ACK_METHOD: {
		amqp_basic_ack_t *a = m->decoded;
		return cqrs_broker_settle(b, a->delivery_tag, a->multiple != 0, err);
	}
	case AMQP_BASIC_NACK_METHOD: {
		amqp_basic_nack_t *a = m->decoded;
		return cqrs_broker_fail(b, err, CQRS_EINTERNAL, "confirm",
					"the broker refused (nack) delivery tag %" PRIu64 "%s",
					a->delivery_tag, a->multiple ? " and every tag before it" : "");
	}
	case AMQP_BASIC_RETURN_METHOD: {
		amqp_basic_return_t *r = m->decoded;
		amqp_message_t msg;
		char why[CQRS_ERR_MSG_MAX];

		snprintf(why, sizeof(why), "message with routing key \"%.*s\" returned: %u %.*s",
			 (int)r->routing_key.len, (char *)r->routing_key.bytes, r->reply_code,
			 (int)r->reply_text.len, (char *)r->reply_text.bytes);
		/* the returned content follows: read it off the wire */
		if (amqp_read_message(b->conn, f->channel, &msg, 0).reply_type == AMQP_RESPONSE_NORMAL)
			amqp_destroy_message(&msg);
		return cqrs_broker_fail(b, err, CQRS_EINTERNAL, "publish", "%s", why);
	}
	case AMQP_BASIC_CANCEL_METHOD:
		/* the queue was deleted under us */
		return cqrs_broker_fail(b, err, CQRS_EUNAVAILABLE, "receive",
					"the broker cancelled our consumer (was the queue deleted?)");
	case AMQP_CHANNEL_CLOSE_METHOD: {
		amqp_channel_close_t *c = m->decoded;
		char why[CQRS_ERR_MSG_MAX];

		snprintf(why, sizeof(why), "channel closed by the broker: %u %.*s", c->reply_code,
			 (int)c->reply_text.len, (char *)c->reply_text.bytes);
		answer_close(b, m->id, f->channel);
		return cqrs_broker_fail(b, err, CQRS_EINTERNAL, "channel", "%s", why);
	}
	case AMQP_CONNECTION_CLOSE_METHOD: {
		amqp_connection_close_t *c = m->decoded;
		char why[CQRS_ERR_MSG_MAX];

		snprintf(why, sizeof(why), "connection closed by the broker: %u %.*s", c->reply_code,
			 (int)c->reply_text.len, (char *)c->reply_text.bytes);
		answer_close(b, m->id, 0);
		return cqrs_broker_fail(b, err, CQRS_EUNAVAILABLE, "connection", "%s", why);
	}
	case AMQP_CONNECTION_BLOCKED_METHOD: {
		amqp_connection_blocked_t *c = m->decoded;
		b->blocked = true;
		snprintf(b->blocked_reason, sizeof(b->blocked_reason), "%.*s", (int)c->reason.len,
			 (char *)c->reason.bytes);
		return 0;
	}
	case AMQP_CONNECTION_UNBLOCKED_METHOD:
		b->blocked = false;
		b->blocked_reason[0] = '\0';
		return 0;
	default:
		if (!b->confirms)
			return 0;
		return cqrs_broker_fail(b, err, CQRS_EINTERNAL, "read", "unexpected %s on channel %u",
					amqp_method_name(m->id), f->channel);
	}
}

int
cqrs_broker_read_frame(struct broker *b, struct timeval *tv, const char *step, struct cqrs_err *err)
{
	amqp_frame_t f;
	int rc = amqp_simple_wait_frame_noblock(b->conn, &f, tv);

	if (rc == AMQP_STATUS_TIMEOUT)
		return 0;
	if (rc != AMQP_STATUS_OK)
		return cqrs_broker_fail(b, err, CQRS_EUNAVAILABLE, step, "%s", amqp_error_string2(rc));
	if (f.frame_type != AMQP_FRAME_METHOD) {
		if (!b->confirms)
			return 1;
		return cqrs_broker_fail(b, err, CQRS_EINTERNAL, step,
					"unexpected frame of type %u on channel %u", f.frame_type,
					f.channel);
	}
	rc = handle_method(b, &f, err);
	return rc < 0 ? rc : 1;
}

int
cqrs_broker_poll(struct broker *b, struct cqrs_err *err)
{
	struct timeval zero = { 0, 0 };
	int rc;

	if ((rc = cqrs_broker_check_usable(b, "poll", err)) < 0)
		return rc;
	/* Deliveries are only read through cqrs_broker_next(): with a consumer
	 * running, or deliveries queued by the library, leave the frames to it
	 * (heartbeats are sent on the way). */
	if (b->consuming || (!b->confirms && amqp_frames_enqueued(b->conn)))
		return 0;
	/* everything already received, without blocking; this is also where
	 * librabbitmq sends a heartbeat that is due and notices a missed one */
	while ((rc = cqrs_broker_read_frame(b, &zero, "read", err)) > 0)
		;
	amqp_maybe_release_buffers(b->conn);
	return rc;
}

/* ---- topology ------------------------------------------------------------ */

int
cqrs_broker_declare_exchange(struct broker *b, const char *name, const char *type,
			     struct cqrs_err *err)
{
	char step[400];
	int rc;

	if ((rc = cqrs_broker_check_usable(b, "declare", err)) < 0)
		return rc;
	snprintf(step, sizeof(step), "declare exchange \"%.200s\" (durable %.80s)", name, type);
	/* durable, not auto-delete, not internal */
	amqp_exchange_declare(b->conn, BROKER_CHANNEL, amqp_cstring_bytes(name),
			      amqp_cstring_bytes(type), 0, 1, 0, 0, amqp_empty_table);
	return cqrs_broker_check_reply(b, amqp_get_rpc_reply(b->conn), BROKER_CHANNEL, step, err);
}

int
cqrs_broker_declare_topology(struct broker *b, struct cqrs_err *err)
{
	return cqrs_broker_declare_exchange(b, BROKER_EXCHANGE, "topic", err);
}

int
cqrs_broker_declare_queue(struct broker *b, const struct broker_queue *q, struct cqrs_err *err)
{
	amqp_table_entry_t args[4];
	amqp_table_t table;
	char step[400];
	int n = 0, rc;

	if ((rc = cqrs_broker_check_usable(b, "declare", err)) < 0)
		return rc;
	if (q->type != NULL)
		args[n++] = broker_entry_str("x-queue-type", q->type);
	if (q->dead_exchange != NULL)
		args[n++] = broker_entry_str("x-dead-letter-exchange", q->dead_exchange);
	if (q->dead_routing_key != NULL)
		args[n++] = broker_entry_str("x-dead-letter-routing-key", q->dead_routing_key);
	if (q->delivery_limit > 0) {
		args[n].key = amqp_cstring_bytes("x-delivery-limit");
		args[n].value.kind = AMQP_FIELD_KIND_I64;
		args[n++].value.value.i64 = q->delivery_limit;
	}
	table.num_entries = n;
	table.entries = args;
	snprintf(step, sizeof(step), "declare queue \"%.200s\"%s%.20s%s%s", q->name,
		 q->type != NULL ? " (" : "", q->type != NULL ? q->type : "",
		 q->type != NULL && q->delivery_limit > 0 ? ", x-delivery-limit" : "",
		 q->type != NULL ? ")" : "");
	/* not passive, durable, not exclusive, not auto-delete */
	amqp_queue_declare(b->conn, BROKER_CHANNEL, amqp_cstring_bytes(q->name), 0, 1, 0, 0, table);
	return cqrs_broker_check_reply(b, amqp_get_rpc_reply(b->conn), BROKER_CHANNEL, step, err);
}

int
cqrs_broker_bind(struct broker *b, const char *queue, const char *exchange,
		 const char *routing_key, struct cqrs_err *err)
{
	char step[400];
	int rc;

	if ((rc = cqrs_broker_check_usable(b, "bind", err)) < 0)
		return rc;
	snprintf(step, sizeof(step), "bind \"%.120s\" to %.120s with \"%.120s\"", queue, exchange,
		 routing_key);
	amqp_queue_bind(b->conn, BROKER_CHANNEL, amqp_cstring_bytes(queue),
			amqp_cstring_bytes(exchange), amqp_cstring_bytes(routing_key),
			amqp_empty_table);
	return cqrs_broker_check_reply(b, amqp_get_rpc_reply(b->conn), BROKER_CHANNEL, step, err);
}

/*
 * A passive queue.declare on a channel of its own: deliveries on the
 * consuming channel that arrive meanwhile are kept by librabbitmq for
 * cqrs_broker_next().
 */
int
cqrs_broker_queue_depth(struct broker *b, const char *queue, uint64_t *ready, struct cqrs_err *err)
{
	amqp_queue_declare_ok_t *ok;
	int rc;

	if ((rc = cqrs_broker_check_usable(b, "queue depth", err)) < 0)
		return rc;
	if ((rc = cqrs_broker_channel(b, CH_STATUS, err)) < 0)
		return rc;
	ok = amqp_queue_declare(b->conn, CH_STATUS, amqp_cstring_bytes(queue), 1, 0, 0, 0,
				amqp_empty_table);
	rc = cqrs_broker_check_reply(b, amqp_get_rpc_reply(b->conn), CH_STATUS, "queue depth", err);
	if (rc < 0)
		return rc;
	*ready = ok != NULL ? ok->message_count : 0;
	return 0;
}

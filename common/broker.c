/*
 * broker.c - RabbitMQ through librabbitmq: connect, declare, publish with
 * publisher confirms.
 *
 * librabbitmq is blocking and keeps no background thread: heartbeats are
 * sent and checked only inside its calls, which is why cqrs_broker_poll() exists.
 * Confirms are read with amqp_simple_wait_frame_noblock() rather than through
 * an RPC call, because acks for many messages arrive as they come (multiple or
 * one by one, in any order), interleaved with heartbeats and, under a
 * resource alarm, connection.blocked.
 */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<rabbitmq-c/amqp.h>)
#define BROKER_NEW_HEADERS 1
#endif
#endif
#ifdef BROKER_NEW_HEADERS
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/ssl_socket.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#endif

#include "broker.h"
#include "envelope.h"

#define CHANNEL 1
#define DELIVERY_PERSISTENT 2
#define FRAME_MAX 131072
#define SYSTEM_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

struct broker {
	amqp_connection_state_t conn;
	struct broker_url url;
	bool broken;
	bool blocked;
	char blocked_reason[128];
	/*
	 * Confirms: every tag below `low` is acked; acked[i] says whether tag
	 * base + i is (for tags low..published). Tags are numbered by the
	 * server from 1 in the order of publishing on the channel.
	 */
	uint64_t published;
	uint64_t low;
	uint64_t base;
	uint8_t *acked;
	size_t acked_cap;
};

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

/* Marks b broken and fills err: "broker HOST:PORT/VHOST: STEP: WHY". */
static int fail(struct broker *b, struct cqrs_err *err, int code, const char *step,
		const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int
fail(struct broker *b, struct cqrs_err *err, int code, const char *step, const char *fmt, ...)
{
	char why[CQRS_ERR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	b->broken = true;
	return cqrs_err_set(err, code, "broker %s: %s: %s", b->url.name, step, why);
}

/* An RPC's reply: 0, or the broker broken with the reason. */
static int
check_reply(struct broker *b, amqp_rpc_reply_t r, const char *step, struct cqrs_err *err)
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
			(void)amqp_send_method(b->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
		} else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			amqp_channel_close_ok_t ok = { 0 };
			(void)amqp_send_method(b->conn, CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
			code = CQRS_EINTERNAL;
		}
	}
	return fail(b, err, code, step, "%s", why);
}

/* ---- connection ---------------------------------------------------------- */

void
cqrs_broker_options_default(struct broker_options *o)
{
	memset(o, 0, sizeof(*o));
	o->heartbeat_s = 30;
	o->connect_timeout_ms = 10000;
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
		return fail(b, err, CQRS_ECONFIG, "TLS", "cannot load CA certificates from \"%s\"", ca);
	if ((opt->cert == NULL) != (opt->key == NULL))
		return fail(b, err, CQRS_ECONFIG, "TLS",
			    "a client certificate needs both broker.cert and broker.key");
	if (opt->cert != NULL && amqp_ssl_socket_set_key(sock, opt->cert, opt->key) != AMQP_STATUS_OK)
		return fail(b, err, CQRS_ECONFIG, "TLS",
			    "cannot load the client certificate \"%s\" and key \"%s\"",
			    opt->cert, opt->key);
	return 0;
}

int
cqrs_broker_connect(const char *url, const struct broker_options *opt, struct broker **out,
	       struct cqrs_err *err)
{
	struct broker_options defaults;
	struct broker *b = NULL;
	amqp_socket_t *sock;
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
	if ((rc = cqrs_broker_url_parse(url, &b->url, err)) < 0) {
		free(b);
		return rc;
	}
	b->conn = amqp_new_connection();
	if (b->conn == NULL) {
		rc = fail(b, err, CQRS_ENOMEM, "connect", "out of memory");
		goto bad;
	}
	sock = b->url.tls ? amqp_ssl_socket_new(b->conn) : amqp_tcp_socket_new(b->conn);
	if (sock == NULL) {
		rc = fail(b, err, CQRS_ENOMEM, "connect", "cannot create a %s socket",
			  b->url.tls ? "TLS" : "TCP");
		goto bad;
	}
	if (b->url.tls && (rc = setup_tls(b, sock, opt, err)) < 0)
		goto bad;
	tv.tv_sec = opt->connect_timeout_ms / 1000;
	tv.tv_usec = (opt->connect_timeout_ms % 1000) * 1000;
	rc = amqp_socket_open_noblock(sock, b->url.host, b->url.port, &tv);
	if (rc != AMQP_STATUS_OK) {
		rc = fail(b, err, CQRS_EUNAVAILABLE, b->url.tls ? "TLS connect" : "connect", "%s",
			  amqp_error_string2(rc));
		goto bad;
	}
	/* the handshake and every RPC (declare, close) give up after this */
	(void)amqp_set_handshake_timeout(b->conn, &tv);
	(void)amqp_set_rpc_timeout(b->conn, &tv);

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
	rc = check_reply(b, amqp_login_with_properties(b->conn, b->url.vhost, 0, FRAME_MAX,
						       opt->heartbeat_s, &client_props,
						       AMQP_SASL_METHOD_PLAIN, b->url.user,
						       b->url.password),
			 "login", err);
	if (rc < 0) {
		cqrs_err_prefix(err, "user \"%s\"", b->url.user);
		goto bad;
	}
	amqp_channel_open(b->conn, CHANNEL);
	if ((rc = check_reply(b, amqp_get_rpc_reply(b->conn), "channel.open", err)) < 0)
		goto bad;
	amqp_confirm_select(b->conn, CHANNEL);
	if ((rc = check_reply(b, amqp_get_rpc_reply(b->conn), "confirm.select", err)) < 0)
		goto bad;
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
		if (!b->broken) {
			/* polite close: the server then logs no "client unexpectedly
			 * closed TCP connection" */
			(void)amqp_channel_close(b->conn, CHANNEL, AMQP_REPLY_SUCCESS);
			(void)amqp_connection_close(b->conn, AMQP_REPLY_SUCCESS);
		}
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

static int
check_usable(struct broker *b, const char *step, struct cqrs_err *err)
{
	if (b->broken)
		return cqrs_err_set(err, CQRS_EUNAVAILABLE,
				    "broker %s: %s: the connection failed earlier", b->url.name, step);
	return 0;
}

int
cqrs_broker_declare_topology(struct broker *b, struct cqrs_err *err)
{
	int rc;

	if ((rc = check_usable(b, "declare", err)) < 0)
		return rc;
	/* durable, not auto-delete, not internal: DESIGN.md's exchange */
	amqp_exchange_declare(b->conn, CHANNEL, amqp_cstring_bytes(BROKER_EXCHANGE),
			      amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
	return check_reply(b, amqp_get_rpc_reply(b->conn),
			   "declare exchange \"" BROKER_EXCHANGE "\" (durable topic)", err);
}

/* ---- confirms ------------------------------------------------------------ */

/* Room to record tag `published + 1`. */
static int
track_publish(struct broker *b)
{
	size_t need = (size_t)(b->published + 1 - b->base) + 1;

	if (b->low > b->published) {
		/* everything settled: start over at the next tag */
		b->base = b->published + 1;
		need = 1;
	} else if (b->low - b->base > b->acked_cap / 2) {
		/* drop the settled front */
		size_t drop = (size_t)(b->low - b->base);
		memmove(b->acked, b->acked + drop, (size_t)(b->published + 1 - b->low));
		b->base = b->low;
		need -= drop;
	}
	if (need > b->acked_cap) {
		size_t cap = b->acked_cap ? b->acked_cap * 2 : 1024;
		uint8_t *p;
		while (cap < need)
			cap *= 2;
		p = realloc(b->acked, cap);
		if (p == NULL)
			return -1;
		b->acked = p;
		b->acked_cap = cap;
	}
	b->acked[need - 1] = 0;
	return 0;
}

static int
settle(struct broker *b, uint64_t tag, bool multiple, struct cqrs_err *err)
{
	if (tag > b->published || (tag < b->low && !multiple) || tag == 0)
		return fail(b, err, CQRS_EINTERNAL, "confirm",
			    "ack for delivery tag %" PRIu64 ", which is not outstanding (%" PRIu64
			    " published, all below %" PRIu64 " acked)", tag, b->published, b->low);
	if (multiple) {
		if (tag >= b->low)
			memset(b->acked + (b->low - b->base), 1, (size_t)(tag - b->low + 1));
	} else {
		b->acked[tag - b->base] = 1;
	}
	while (b->low <= b->published && b->acked[b->low - b->base])
		b->low++;
	return 0;
}

size_t
cqrs_broker_unconfirmed(const struct broker *b)
{
	size_t n = 0;

	for (uint64_t t = b->low; t <= b->published; t++)
		n += b->acked[t - b->base] == 0;
	return n;
}

uint64_t
cqrs_broker_confirmed(const struct broker *b)
{
	return b->low - 1;
}

/* ---- frames -------------------------------------------------------------- */

static int
handle_method(struct broker *b, amqp_frame_t *f, struct cqrs_err *err)
{
	amqp_method_t *m = &f->payload.method;

	switch (m->id) {
	case AMQP_BASIC_ACK_METHOD: {
		amqp_basic_ack_t *a = m->decoded;
		return settle(b, a->delivery_tag, a->multiple != 0, err);
	}
	case AMQP_BASIC_NACK_METHOD: {
		amqp_basic_nack_t *a = m->decoded;
		return fail(b, err, CQRS_EINTERNAL, "confirm",
			    "the broker refused (nack) delivery tag %" PRIu64 "%s", a->delivery_tag,
			    a->multiple ? " and every tag before it" : "");
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
		return fail(b, err, CQRS_EINTERNAL, "publish", "%s", why);
	}
	case AMQP_CHANNEL_CLOSE_METHOD: {
		amqp_channel_close_t *c = m->decoded;
		amqp_channel_close_ok_t ok = { 0 };
		char why[CQRS_ERR_MSG_MAX];

		snprintf(why, sizeof(why), "channel closed by the broker: %u %.*s", c->reply_code,
			 (int)c->reply_text.len, (char *)c->reply_text.bytes);
		(void)amqp_send_method(b->conn, f->channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
		return fail(b, err, CQRS_EINTERNAL, "channel", "%s", why);
	}
	case AMQP_CONNECTION_CLOSE_METHOD: {
		amqp_connection_close_t *c = m->decoded;
		amqp_connection_close_ok_t ok = { 0 };
		char why[CQRS_ERR_MSG_MAX];

		snprintf(why, sizeof(why), "connection closed by the broker: %u %.*s", c->reply_code,
			 (int)c->reply_text.len, (char *)c->reply_text.bytes);
		(void)amqp_send_method(b->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
		return fail(b, err, CQRS_EUNAVAILABLE, "connection", "%s", why);
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
		return fail(b, err, CQRS_EINTERNAL, "read", "unexpected %s on channel %u",
			    amqp_method_name(m->id), f->channel);
	}
}

/* Reads and handles one frame, waiting up to *tv. 1 when one was handled,
 * 0 on timeout, or an error. */
static int
read_one(struct broker *b, struct timeval *tv, const char *step, struct cqrs_err *err)
{
	amqp_frame_t f;
	int rc = amqp_simple_wait_frame_noblock(b->conn, &f, tv);

	if (rc == AMQP_STATUS_TIMEOUT)
		return 0;
	if (rc != AMQP_STATUS_OK)
		return fail(b, err, CQRS_EUNAVAILABLE, step, "%s", amqp_error_string2(rc));
	if (f.frame_type != AMQP_FRAME_METHOD)
		return fail(b, err, CQRS_EINTERNAL, step, "unexpected frame of type %u on channel %u",
			    f.frame_type, f.channel);
	rc = handle_method(b, &f, err);
	return rc < 0 ? rc : 1;
}

int
cqrs_broker_poll(struct broker *b, struct cqrs_err *err)
{
	struct timeval zero = { 0, 0 };
	int rc;

	if ((rc = check_usable(b, "poll", err)) < 0)
		return rc;
	/* everything already received, without blocking; this is also where
	 * librabbitmq sends a heartbeat that is due and notices a missed one */
	while ((rc = read_one(b, &zero, "read", err)) > 0)
		;
	amqp_maybe_release_buffers(b->conn);
	return rc;
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int
cqrs_broker_wait_confirms(struct broker *b, uint64_t upto, int timeout_ms, struct cqrs_err *err)
{
	int64_t deadline = now_ms() + timeout_ms;
	int rc;

	if ((rc = check_usable(b, "confirm", err)) < 0)
		return rc;
	if (upto == 0 || upto > b->published)
		upto = b->published;
	while (b->low <= upto) {
		int64_t left = deadline - now_ms();
		struct timeval tv;

		if (left <= 0)
			return fail(b, err, CQRS_EUNAVAILABLE, "confirm",
				    "no confirm for %zu messages within %d ms", cqrs_broker_unconfirmed(b),
				    timeout_ms);
		tv.tv_sec = left / 1000;
		tv.tv_usec = (left % 1000) * 1000;
		if ((rc = read_one(b, &tv, "confirm", err)) < 0)
			return rc;
	}
	amqp_maybe_release_buffers(b->conn);
	return 0;
}

/* ---- publishing ---------------------------------------------------------- */

static amqp_bytes_t
bytes_of(const char *s)
{
	return amqp_cstring_bytes(s ? s : "");
}

int
cqrs_broker_publish(struct broker *b, const struct broker_message *m, uint64_t *tag,
	       struct cqrs_err *err)
{
	amqp_basic_properties_t p;
	amqp_table_entry_t h[3];
	amqp_bytes_t body;
	int rc;

	if ((rc = check_usable(b, "publish", err)) < 0)
		return rc;
	if (m->routing_key == NULL || strlen(m->routing_key) > BROKER_SHORTSTR_MAX ||
	    (m->message_id != NULL && strlen(m->message_id) > BROKER_SHORTSTR_MAX) ||
	    (m->type != NULL && strlen(m->type) > BROKER_SHORTSTR_MAX))
		return cqrs_err_set(err, CQRS_EINVALID,
				    "broker %s: publish: routing key, message id or type missing or "
				    "over %d bytes", b->url.name, BROKER_SHORTSTR_MAX);
	if (track_publish(b) < 0)
		return cqrs_err_set(err, CQRS_ENOMEM, "broker %s: publish: out of memory", b->url.name);

	memset(&p, 0, sizeof(p));
	p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
		   AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_HEADERS_FLAG;
	p.content_type = amqp_cstring_bytes("application/json");
	p.delivery_mode = DELIVERY_PERSISTENT;
	p.message_id = bytes_of(m->message_id);
	p.type = bytes_of(m->type);
	h[0].key = amqp_cstring_bytes("stream");
	h[0].value.kind = AMQP_FIELD_KIND_UTF8;
	h[0].value.value.bytes = bytes_of(m->stream);
	h[1].key = amqp_cstring_bytes("version");
	h[1].value.kind = AMQP_FIELD_KIND_I64;
	h[1].value.value.i64 = m->version;
	h[2].key = amqp_cstring_bytes("position");
	h[2].value.kind = AMQP_FIELD_KIND_I64;
	h[2].value.value.i64 = m->position;
	p.headers.num_entries = 3;
	p.headers.entries = h;
	body.len = m->body_len;
	body.bytes = (void *)m->body;

	rc = amqp_basic_publish(b->conn, CHANNEL, bytes_of(m->exchange ? m->exchange : BROKER_EXCHANGE),
				amqp_cstring_bytes(m->routing_key), 0, 0, &p, body);
	if (rc != AMQP_STATUS_OK)
		return fail(b, err, CQRS_EUNAVAILABLE, "publish", "%s", amqp_error_string2(rc));
	b->published++;
	if (tag != NULL)
		*tag = b->published;
	return 0;
}

void
cqrs_broker_routing_key(const char *stream, const char *type, char *buf, size_t size)
{
	size_t tlen = strcspn(stream, "-");

	if (size == 0)
		return;
	snprintf(buf, size, "%.*s.%s", (int)tlen, stream, type);
	if (strlen(buf) > BROKER_SHORTSTR_MAX)
		buf[BROKER_SHORTSTR_MAX] = '\0';
}

int
cqrs_broker_publish_event(struct broker *b, const struct cqrs_event *ev, uint64_t *tag,
		     struct cqrs_err *err)
{
	char key[BROKER_SHORTSTR_MAX + 1];
	struct broker_message m;
	char *body;
	int rc;

	body = cqrs_envelope_encode(ev);
	if (body == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "broker %s: encoding event %s: out of memory",
				    b->url.name, ev->id);
	cqrs_broker_routing_key(ev->stream, ev->type, key, sizeof(key));
	memset(&m, 0, sizeof(m));
	m.routing_key = key;
	m.body = body;
	m.body_len = strlen(body);
	m.message_id = ev->id;
	m.type = ev->type;
	m.stream = ev->stream;
	m.version = ev->version;
	m.position = ev->position;
	rc = cqrs_broker_publish(b, &m, tag, err);
	free(body);
	return rc;
}

/*
 * broker_publish.c - publishing: with publisher confirms (the tracker's
 * events) or in an AMQP transaction (dead letters, and letters put back).
 *
 * Confirms are read with amqp_simple_wait_frame_noblock() rather than
 * through an RPC call, because acks for many messages arrive as they come
 * (multiple or one by one, in any order), interleaved with heartbeats and,
 * under a resource alarm, connection.blocked. A transaction is the other
 * way to know that the broker has a message, for a channel that also acks
 * deliveries (cqrsctl dead puts letters back and acks them in one commit):
 * tx.commit is one synchronous call with the RPC timeout.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker_int.h"
#include "clock.h"
#include "envelope.h"

#define DELIVERY_PERSISTENT 2
#define EXTRA_MAX 8

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

int
cqrs_broker_settle(struct broker *b, uint64_t tag, bool multiple, struct cqrs_err *err)
{
	if (tag > b->published || (tag < b->low && !multiple) || tag == 0)
		return cqrs_broker_fail(b, err, CQRS_EINTERNAL, "confirm",
					"ack for delivery tag %" PRIu64 ", which is not outstanding (%" PRIu64
					" published, all below %" PRIu64 " acked)",
					tag, b->published, b->low);
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

int
cqrs_broker_wait_confirms(struct broker *b, uint64_t upto, int timeout_ms, struct cqrs_err *err)
{
	int64_t deadline = cqrs_now_ms() + timeout_ms;
	int rc;

	if ((rc = cqrs_broker_check_usable(b, "confirm", err)) < 0)
		return rc;
	if (upto == 0 || upto > b->published)
		upto = b->published;
	while (b->low <= upto) {
		int64_t left = deadline - cqrs_now_ms();
		struct timeval tv;

		if (left <= 0)
			return cqrs_broker_fail(b, err, CQRS_EUNAVAILABLE, "confirm",
						"no confirm for %zu messages within %d ms",
						cqrs_broker_unconfirmed(b), timeout_ms);
		tv.tv_sec = left / 1000;
		tv.tv_usec = (left % 1000) * 1000;
		if ((rc = cqrs_broker_read_frame(b, &tv, "confirm", err)) < 0)
			return rc;
	}
	amqp_maybe_release_buffers(b->conn);
	return 0;
}

/* ---- messages ------------------------------------------------------------ */

static bool
given(const char *s)
{
	return s != NULL && s[0] != '\0';
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

/* Checks m and sends it on channel ch: persistent, application/json, the
 * properties and headers that are given. */
static int
send_message(struct broker *b, int ch, const struct broker_message *m, bool mandatory,
	     struct cqrs_err *err)
{
	amqp_basic_properties_t p;
	amqp_table_entry_t h[3 + EXTRA_MAX];
	int n = 0, rc;

	if (m->routing_key == NULL || strlen(m->routing_key) > BROKER_SHORTSTR_MAX ||
	    (m->message_id != NULL && strlen(m->message_id) > BROKER_SHORTSTR_MAX) ||
	    (m->type != NULL && strlen(m->type) > BROKER_SHORTSTR_MAX))
		return cqrs_err_set(err, CQRS_EINVALID,
				    "broker %s: publish: routing key, message id or type missing or "
				    "over %d bytes", b->url.name, BROKER_SHORTSTR_MAX);
	if (m->n_extra > EXTRA_MAX)
		return cqrs_err_set(err, CQRS_EINVALID, "broker %s: publish: over %d extra headers",
				    b->url.name, EXTRA_MAX);

	memset(&p, 0, sizeof(p));
	p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
	p.content_type = amqp_cstring_bytes("application/json");
	p.delivery_mode = DELIVERY_PERSISTENT;
	if (given(m->message_id)) {
		p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
		p.message_id = amqp_cstring_bytes(m->message_id);
	}
	if (given(m->type)) {
		p._flags |= AMQP_BASIC_TYPE_FLAG;
		p.type = amqp_cstring_bytes(m->type);
	}
	if (given(m->stream)) {
		h[n++] = broker_entry_str("stream", m->stream);
		h[n++] = entry_i64("version", m->version);
		h[n++] = entry_i64("position", m->position);
	}
	for (size_t i = 0; i < m->n_extra; i++)
		h[n++] = broker_entry_str(m->extra[i].key, m->extra[i].value);
	if (n > 0) {
		p._flags |= AMQP_BASIC_HEADERS_FLAG;
		p.headers.num_entries = n;
		p.headers.entries = h;
	}
	/* events are not mandatory: an event no queue wants is normal (DESIGN.md) */
	rc = amqp_basic_publish(b->conn, (amqp_channel_t)ch,
				amqp_cstring_bytes(m->exchange != NULL ? m->exchange : BROKER_EXCHANGE),
				amqp_cstring_bytes(m->routing_key), mandatory, 0, &p,
				(amqp_bytes_t){ m->body_len, (void *)m->body });
	if (rc != AMQP_STATUS_OK)
		return cqrs_broker_fail(b, err, CQRS_EUNAVAILABLE, "publish", "%s",
					amqp_error_string2(rc));
	return 0;
}

int
cqrs_broker_publish(struct broker *b, const struct broker_message *m, uint64_t *tag,
	       struct cqrs_err *err)
{
	int rc;

	if ((rc = cqrs_broker_check_usable(b, "publish", err)) < 0)
		return rc;
	if (!b->confirms)
		return cqrs_err_set(err, CQRS_EINVALID,
				    "broker %s: publish: the connection has no publisher confirms",
				    b->url.name);
	if (track_publish(b) < 0)
		return cqrs_err_set(err, CQRS_ENOMEM, "broker %s: publish: out of memory", b->url.name);
	if ((rc = send_message(b, BROKER_CHANNEL, m, false, err)) < 0)
		return rc;
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

/* ---- transactions -------------------------------------------------------- */

int
cqrs_broker_tx_select(struct broker *b, int ch, struct cqrs_err *err)
{
	int rc;

	if ((rc = cqrs_broker_check_usable(b, "tx.select", err)) < 0)
		return rc;
	if ((rc = cqrs_broker_channel(b, ch, err)) < 0)
		return rc;
	if (b->tx & (1u << ch))
		return 0;
	amqp_tx_select(b->conn, (amqp_channel_t)ch);
	if ((rc = cqrs_broker_check_reply(b, amqp_get_rpc_reply(b->conn), ch, "tx.select", err)) < 0)
		return rc;
	b->tx |= 1u << ch;
	return 0;
}

int
cqrs_broker_send(struct broker *b, int ch, const struct broker_message *m, struct cqrs_err *err)
{
	int rc;

	if ((rc = cqrs_broker_check_usable(b, "publish", err)) < 0)
		return rc;
	if (ch == BROKER_CHANNEL && b->confirms)
		return cqrs_err_set(err, CQRS_EINVALID, "broker %s: publish: channel %d has confirms",
				    b->url.name, ch);
	if ((rc = cqrs_broker_channel(b, ch, err)) < 0)
		return rc;
	return send_message(b, ch, m, false, err);
}

int
cqrs_broker_tx_commit(struct broker *b, int ch, struct cqrs_err *err)
{
	int rc;

	if ((rc = cqrs_broker_check_usable(b, "tx.commit", err)) < 0)
		return rc;
	if (ch < 1 || ch > BROKER_CHANNEL_MAX || !(b->tx & (1u << ch)))
		return cqrs_err_set(err, CQRS_EINVALID, "broker %s: tx.commit: channel %d is not in "
				    "transaction mode", b->url.name, ch);
	amqp_tx_commit(b->conn, (amqp_channel_t)ch);
	return cqrs_broker_check_reply(b, amqp_get_rpc_reply(b->conn), ch, "tx.commit", err);
}

int
cqrs_broker_send_held(struct broker *b, int ch, const struct broker_message *m,
		      struct cqrs_err *err)
{
	char returned[256] = "";
	amqp_frame_t f;
	int rc;

	if ((rc = cqrs_broker_tx_select(b, ch, err)) < 0)
		return rc;
	if ((rc = cqrs_broker_check_usable(b, "publish", err)) < 0)
		return rc;
	if ((rc = send_message(b, ch, m, true, err)) < 0)
		return rc;
	if ((rc = cqrs_broker_tx_commit(b, ch, err)) < 0)
		return rc;
	/* A message no queue took came back (basic.return, its header and its
	 * body) before tx.commit-ok, and waits among the queued frames. */
	while (amqp_frames_enqueued(b->conn)) {
		if (amqp_simple_wait_frame(b->conn, &f) != AMQP_STATUS_OK)
			break;
		if (f.frame_type == AMQP_FRAME_METHOD && f.channel == ch &&
		    f.payload.method.id == AMQP_BASIC_RETURN_METHOD) {
			amqp_basic_return_t *r = f.payload.method.decoded;

			snprintf(returned, sizeof(returned), "%.*s", (int)r->reply_text.len,
				 (char *)r->reply_text.bytes);
			if (returned[0] == '\0')
				snprintf(returned, sizeof(returned), "returned");
		}
	}
	amqp_maybe_release_buffers(b->conn);
	if (returned[0] != '\0')
		return cqrs_err_set(err, CQRS_EUNAVAILABLE,
				    "broker %s: exchange \"%s\", routing key \"%s\": no queue holds "
				    "the message (%s)", b->url.name,
				    m->exchange != NULL ? m->exchange : BROKER_EXCHANGE, m->routing_key,
				    returned);
	return 0;
}

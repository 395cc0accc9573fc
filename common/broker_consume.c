/*
 * broker_consume.c - receiving on channel 1: basic.get, basic.consume and
 * its deliveries, acks, and what a received message says (properties, our
 * headers, RabbitMQ's x-death).
 *
 * Everything in a received message comes from the network: strings are
 * copied with their length (never trusted to end in a NUL), integers are
 * read whatever their width, and a header of an unexpected kind is left
 * out rather than guessed at.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker_int.h"

/* ---- decoding ------------------------------------------------------------ */

void
cqrs_broker_msg_clear(struct broker_msg *msg)
{
	if (msg == NULL)
		return;
	free(msg->routing_key);
	free(msg->message_id);
	free(msg->type);
	free(msg->body);
	free(msg->stream);
	free(msg->reason);
	free(msg->failed_at);
	free(msg->consumer);
	free(msg->death_reason);
	memset(msg, 0, sizeof(*msg));
}

void
cqrs_broker_msg_move(struct broker_msg *dst, struct broker_msg *src)
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

/* *dst = a copy of string header v, unless it has one already (the first
 * of repeated headers counts) or v is not a string. */
static void
take_str(char **dst, const amqp_field_value_t *v)
{
	if (*dst == NULL && is_str(v))
		*dst = dup_bytes(v->value.bytes);
}

/* The first x-death entry (the latest death): reason, count and time. */
static void
read_death(struct broker_msg *msg, const amqp_field_value_t *v)
{
	const amqp_table_t *t;

	if (v->kind != AMQP_FIELD_KIND_ARRAY || v->value.array.num_entries < 1 ||
	    v->value.array.entries[0].kind != AMQP_FIELD_KIND_TABLE)
		return;
	t = &v->value.array.entries[0].value.table;
	for (int i = 0; i < t->num_entries; i++) {
		const amqp_table_entry_t *e = &t->entries[i];

		if (key_is(e->key, "reason"))
			take_str(&msg->death_reason, &e->value);
		else if (key_is(e->key, "count"))
			msg->deaths = field_int(&e->value);
		else if (key_is(e->key, "time") && e->value.kind == AMQP_FIELD_KIND_TIMESTAMP &&
			 msg->death_time == 0)
			msg->death_time = (int64_t)e->value.value.u64;
	}
}

/* "" for every string the message did not have. */
static int
fill_absent(char **s)
{
	if (*s == NULL)
		*s = strdup("");
	return *s != NULL ? 0 : -1;
}

int
cqrs_broker_msg_decode(struct broker_msg *msg, const amqp_message_t *am, amqp_bytes_t routing_key)
{
	const amqp_basic_properties_t *p = &am->properties;
	int bad = 0;

	memset(msg, 0, sizeof(*msg));
	msg->routing_key = dup_bytes(routing_key);
	msg->body = dup_bytes(am->body);
	msg->body_len = am->body.len;
	if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
		msg->message_id = dup_bytes(p->message_id);
	if (p->_flags & AMQP_BASIC_TYPE_FLAG)
		msg->type = dup_bytes(p->type);
	if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
		for (int i = 0; i < p->headers.num_entries; i++) {
			const amqp_table_entry_t *e = &p->headers.entries[i];

			if (key_is(e->key, "x-delivery-count"))
				msg->delivery_count = field_int(&e->value);
			else if (key_is(e->key, "stream"))
				take_str(&msg->stream, &e->value);
			else if (key_is(e->key, "version"))
				msg->version = field_int(&e->value);
			else if (key_is(e->key, "position"))
				msg->position = field_int(&e->value);
			else if (key_is(e->key, BROKER_H_REASON))
				take_str(&msg->reason, &e->value);
			else if (key_is(e->key, BROKER_H_FAILED_AT))
				take_str(&msg->failed_at, &e->value);
			else if (key_is(e->key, BROKER_H_CONSUMER))
				take_str(&msg->consumer, &e->value);
			else if (key_is(e->key, "x-death"))
				read_death(msg, &e->value);
		}
	}
	bad |= msg->body == NULL;
	bad |= fill_absent(&msg->routing_key) | fill_absent(&msg->message_id);
	bad |= fill_absent(&msg->type) | fill_absent(&msg->stream) | fill_absent(&msg->reason);
	bad |= fill_absent(&msg->failed_at) | fill_absent(&msg->consumer);
	bad |= fill_absent(&msg->death_reason);
	if (bad) {
		cqrs_broker_msg_clear(msg);
		return CQRS_ENOMEM;
	}
	return 0;
}

/* ---- receiving ----------------------------------------------------------- */

int
cqrs_broker_get(struct broker *b, const char *queue, struct broker_msg *msg, struct cqrs_err *err)
{
	amqp_rpc_reply_t r;
	amqp_message_t am;
	amqp_basic_get_ok_t *ok;
	uint64_t tag;
	bool redelivered;
	char *rk;
	int rc;

	memset(msg, 0, sizeof(*msg));
	if ((rc = cqrs_broker_check_usable(b, "basic.get", err)) < 0)
		return rc;
	amqp_maybe_release_buffers(b->conn);
	r = amqp_basic_get(b->conn, BROKER_CHANNEL, amqp_cstring_bytes(queue), 0);
	if ((rc = cqrs_broker_check_reply(b, r, BROKER_CHANNEL, "basic.get", err)) < 0)
		return rc;
	if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
		return 0;
	if (r.reply.id != AMQP_BASIC_GET_OK_METHOD)
		return cqrs_broker_fail(b, err, CQRS_EINTERNAL, "basic.get", "unexpected answer %s",
					amqp_method_name(r.reply.id));
	ok = r.reply.decoded;
	tag = ok->delivery_tag;
	redelivered = ok->redelivered;
	/* reading the message reuses the memory the answer is in */
	rk = dup_bytes(ok->routing_key);
	if (rk == NULL)
		return cqrs_broker_fail(b, err, CQRS_ENOMEM, "basic.get", "out of memory");
	r = amqp_read_message(b->conn, BROKER_CHANNEL, &am, 0);
	if ((rc = cqrs_broker_check_reply(b, r, BROKER_CHANNEL, "basic.get: read message", err)) < 0) {
		free(rk);
		return rc;
	}
	rc = cqrs_broker_msg_decode(msg, &am, amqp_cstring_bytes(rk));
	free(rk);
	amqp_destroy_message(&am);
	if (rc < 0)
		return cqrs_broker_fail(b, err, CQRS_ENOMEM, "basic.get", "out of memory");
	msg->tag = tag;
	msg->redelivered = redelivered;
	return 1;
}

int
cqrs_broker_consume(struct broker *b, const char *queue, int prefetch, struct cqrs_err *err)
{
	amqp_basic_consume_ok_t *ok;
	int rc;

	if ((rc = cqrs_broker_check_usable(b, "basic.consume", err)) < 0)
		return rc;
	amqp_basic_qos(b->conn, BROKER_CHANNEL, 0, (uint16_t)prefetch, 0);
	rc = cqrs_broker_check_reply(b, amqp_get_rpc_reply(b->conn), BROKER_CHANNEL, "basic.qos", err);
	if (rc < 0)
		return rc;
	ok = amqp_basic_consume(b->conn, BROKER_CHANNEL, amqp_cstring_bytes(queue), amqp_empty_bytes,
				0, 0, 0, amqp_empty_table);
	rc = cqrs_broker_check_reply(b, amqp_get_rpc_reply(b->conn), BROKER_CHANNEL, "basic.consume",
				     err);
	if (rc < 0)
		return rc;
	snprintf(b->tag, sizeof(b->tag), "%.*s", (int)ok->consumer_tag.len,
		 (char *)ok->consumer_tag.bytes);
	b->consuming = true;
	return 0;
}

int
cqrs_broker_cancel(struct broker *b, struct cqrs_err *err)
{
	int rc;

	if ((rc = cqrs_broker_check_usable(b, "basic.cancel", err)) < 0)
		return rc;
	if (!b->consuming)
		return 0;
	amqp_basic_cancel(b->conn, BROKER_CHANNEL, amqp_cstring_bytes(b->tag));
	rc = cqrs_broker_check_reply(b, amqp_get_rpc_reply(b->conn), BROKER_CHANNEL, "basic.cancel",
				     err);
	if (rc < 0)
		return rc;
	b->consuming = false;
	return 0;
}

int
cqrs_broker_next(struct broker *b, int timeout_ms, struct broker_msg *msg, struct cqrs_err *err)
{
	amqp_envelope_t env;
	amqp_rpc_reply_t r;
	struct timeval tv;
	int rc;

	memset(msg, 0, sizeof(*msg));
	if ((rc = cqrs_broker_check_usable(b, "receive", err)) < 0)
		return rc;
	amqp_maybe_release_buffers(b->conn);
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	r = amqp_consume_message(b->conn, &env, &tv, 0);
	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		rc = cqrs_broker_msg_decode(msg, &env.message, env.routing_key);
		msg->tag = env.delivery_tag;
		msg->redelivered = env.redelivered;
		amqp_destroy_envelope(&env);
		if (rc < 0)
			return cqrs_broker_fail(b, err, CQRS_ENOMEM, "receive", "out of memory");
		return 1;
	}
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
		if (r.library_error == AMQP_STATUS_TIMEOUT)
			return 0;
		/* a frame that is not a delivery: a close, a cancel from the
		 * server, or something we can ignore; it is there to read */
		if (r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
			rc = cqrs_broker_read_frame(b, NULL, "receive", err);
			return rc < 0 ? rc : 0;
		}
	}
	if ((rc = cqrs_broker_check_reply(b, r, BROKER_CHANNEL, "receive", err)) < 0)
		return rc;
	return cqrs_broker_fail(b, err, CQRS_EUNAVAILABLE, "receive", "no message");
}

/* ---- acks ---------------------------------------------------------------- */

int
cqrs_broker_ack(struct broker *b, uint64_t tag, bool multiple, struct cqrs_err *err)
{
	int rc, st;

	if ((rc = cqrs_broker_check_usable(b, "basic.ack", err)) < 0)
		return rc;
	st = amqp_basic_ack(b->conn, BROKER_CHANNEL, tag, multiple);
	if (st != AMQP_STATUS_OK)
		return cqrs_broker_fail(b, err, CQRS_EUNAVAILABLE, "basic.ack", "%s",
					amqp_error_string2(st));
	return 0;
}

int
cqrs_broker_reject(struct broker *b, uint64_t tag, bool requeue, struct cqrs_err *err)
{
	int rc, st;

	if ((rc = cqrs_broker_check_usable(b, "basic.reject", err)) < 0)
		return rc;
	st = amqp_basic_reject(b->conn, BROKER_CHANNEL, tag, requeue);
	if (st != AMQP_STATUS_OK)
		return cqrs_broker_fail(b, err, CQRS_EUNAVAILABLE, "basic.reject", "%s",
					amqp_error_string2(st));
	return 0;
}

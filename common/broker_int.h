/*
 * broker_int.h - what broker.c (the connection), broker_publish.c and
 * broker_consume.c share. Not for use outside those three files, except
 * tests/fuzz/fuzz_message.c, which feeds cqrs_broker_msg_decode() any message.
 */
#ifndef CQRS_BROKER_INT_H
#define CQRS_BROKER_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/time.h>

#if defined(__has_include)
#if __has_include(<rabbitmq-c/amqp.h>)
#define BROKER_NEW_HEADERS 1
#endif
#endif
#ifdef BROKER_NEW_HEADERS
#include <rabbitmq-c/amqp.h>
#else
#include <amqp.h>
#endif

#include "broker.h"

struct broker {
	amqp_connection_state_t conn;
	struct broker_url url;
	bool broken;
	bool confirms;			/* channel 1 in confirm mode */
	bool blocked;
	char blocked_reason[128];
	uint32_t open;			/* bit ch: channel ch is open */
	uint32_t tx;			/* bit ch: channel ch is in tx mode */
	bool consuming;
	char tag[128];			/* consumer tag given by the broker */
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

/* A string entry of a table (arguments, headers); borrows both. */
static inline amqp_table_entry_t
broker_entry_str(const char *key, const char *value)
{
	amqp_table_entry_t e;

	e.key = amqp_cstring_bytes(key);
	e.value.kind = AMQP_FIELD_KIND_UTF8;
	e.value.value.bytes = amqp_cstring_bytes(value);
	return e;
}

/* Marks b broken and fills err: "broker HOST:PORT/VHOST: STEP: WHY". */
int cqrs_broker_fail(struct broker *b, struct cqrs_err *err, int code, const char *step,
		     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* The reply of a synchronous call on channel ch: 0, or b broken with the
 * reason (a close is answered; a channel closed by the server is the server
 * refusing something: CQRS_EINTERNAL). */
int cqrs_broker_check_reply(struct broker *b, amqp_rpc_reply_t r, int ch, const char *step,
			    struct cqrs_err *err);

/* CQRS_EUNAVAILABLE when b failed earlier. */
int cqrs_broker_check_usable(struct broker *b, const char *step, struct cqrs_err *err);

/* Opens channel ch unless it is open. */
int cqrs_broker_channel(struct broker *b, int ch, struct cqrs_err *err);

/* Reads and handles one frame that is not a delivery, waiting up to *tv
 * (NULL: as long as it takes). 1 when one was handled, 0 on timeout, or an
 * error. */
int cqrs_broker_read_frame(struct broker *b, struct timeval *tv, const char *step,
			   struct cqrs_err *err);

/* Records a basic.ack from the server (broker_publish.c). */
int cqrs_broker_settle(struct broker *b, uint64_t tag, bool multiple, struct cqrs_err *err);

/* Copies what we use of a received message (its properties, our headers,
 * the first x-death entry, the body) into msg, every string NUL-terminated
 * ("" when absent). 0, or CQRS_ENOMEM with msg cleared. No I/O: the message
 * is what librabbitmq decoded from the wire. */
int cqrs_broker_msg_decode(struct broker_msg *msg, const amqp_message_t *am,
			   amqp_bytes_t routing_key) __attribute__((warn_unused_result));

#endif

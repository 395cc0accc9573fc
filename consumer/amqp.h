/*
 * amqp.h - the consumer's side of RabbitMQ (librabbitmq): its queue, its
 * dead-letter queue, deliveries, acks, dead letters.
 *
 *   mq_connect(&opt, &m, &err);           // login, channel 1
 *   mq_declare(m, &topology, &err);       // exchanges, queues, bindings
 *   mq_get(m, queue, &msg, &err);         // one message (basic.get)
 *   mq_consume(m, queue, prefetch, &err); // basic.qos + basic.consume
 *   mq_next(m, timeout_ms, &msg, &err);   // next delivery, 0 on timeout
 *   mq_ack(m, tag, multiple, &err);
 *   mq_dead_letter(m, &dead, &err);       // publish to cqrs.dead, committed
 *   mq_free(m);
 *
 * One struct mq is one connection used from one thread. Channel 1 consumes;
 * channel 2, opened when first needed, publishes dead letters in AMQP
 * transactions (tx.commit is a synchronous call with a timeout, where a
 * confirm would need a wait on one channel that this librabbitmq lacks).
 * After any error the connection is broken (mq_ok() false) and every later
 * call fails: free it and connect again. Deliveries not acked by then go
 * back to the queue (and count as a failed delivery on a quorum queue).
 *
 * Heartbeats are serviced inside the calls: call mq_next() or mq_poll() at
 * least every heartbeat / 2 seconds.
 *
 * Errors: CQRS_ECONFIG (URL, TLS files), CQRS_EUNAVAILABLE (cannot connect,
 * connection lost or closed, heartbeat missed, timeout), CQRS_EINTERNAL (the
 * server refused something: a queue declared with other arguments, a
 * channel closed), CQRS_ENOMEM; messages name the broker as host:port/vhost
 * and the step.
 */
#ifndef CQRS_CONSUMER_AMQP_H
#define CQRS_CONSUMER_AMQP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cqrs/err.h"

struct mq;

struct mq_options {
	const char *url;		/* broker.url */
	int heartbeat_s;
	int timeout_ms;			/* connect, login and every synchronous call */
	const char *connection_name;	/* shown by rabbitmqctl list_connections */
	const char *cacert, *cert, *key;	/* amqps; may be NULL */
	bool verify;
};

int mq_connect(const struct mq_options *opt, struct mq **out, struct cqrs_err *err)
	__attribute__((warn_unused_result));
/* Closes politely when healthy (deliveries not acked go back), frees. */
void mq_free(struct mq *m);
bool mq_ok(const struct mq *m);
const char *mq_name(const struct mq *m);	/* "host:port/vhost" */

struct mq_topology {
	const char *queue;
	const char *dead_queue;
	bool quorum;			/* x-queue-type quorum, else classic */
	int delivery_limit;		/* x-delivery-limit (quorum), 0: none */
	const char *const *bindings;	/* routing patterns on cqrs.events */
	size_t n_bindings;
};

/*
 * Declares, idempotently: the topic exchange cqrs.events (as the tracker
 * does), the direct exchange cqrs.dead, the dead-letter queue (classic,
 * durable: `cqrsctl dead` reads it with basic.get and puts the messages back,
 * which a quorum queue would count as failed deliveries) bound to cqrs.dead
 * by the queue's name, and the queue (durable, x-dead-letter-exchange
 * cqrs.dead, x-dead-letter-routing-key = its name) bound to each pattern.
 * A queue that exists with other arguments is CQRS_EINTERNAL naming it.
 */
int mq_declare(struct mq *m, const struct mq_topology *t, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* A message as received. Strings are owned and NUL-terminated ("" when
 * absent). */
struct mq_msg {
	uint64_t tag;			/* delivery tag on channel 1 */
	bool redelivered;
	char *routing_key;
	char *message_id;
	char *type;
	char *body;
	size_t body_len;
	int64_t delivery_count;		/* header x-delivery-count (quorum), else 0 */
	char *reason;			/* x-cqrs-reason, else x-death's reason, else "" */
	char *failed_at;		/* x-cqrs-failed-at, else "" */
	char *consumer;			/* x-cqrs-consumer, else "" */
	char *stream;			/* header stream, else "" */
	int64_t version, position;	/* headers, else 0 */
	int64_t deaths;			/* x-death[0].count, else 0 */
};

void mq_msg_clear(struct mq_msg *msg);
/* Moves src into dst (src is left empty). */
void mq_msg_move(struct mq_msg *dst, struct mq_msg *src);

/* basic.get: 1 with *msg filled, 0 when the queue is empty. */
int mq_get(struct mq *m, const char *queue, struct mq_msg *msg, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* basic.qos(prefetch) and basic.consume on channel 1. */
int mq_consume(struct mq *m, const char *queue, int prefetch, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* basic.cancel: no delivery comes after it returns; those that came before
 * are still returned by mq_next(). */
int mq_cancel(struct mq *m, struct cqrs_err *err) __attribute__((warn_unused_result));

/* Waits up to timeout_ms (0: only what is buffered) for a delivery: 1 with
 * *msg filled, 0 when none came, or an error. */
int mq_next(struct mq *m, int timeout_ms, struct mq_msg *msg, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Services heartbeats and notices a close without waiting. */
int mq_poll(struct mq *m, struct cqrs_err *err) __attribute__((warn_unused_result));

/* Messages ready (not yet delivered) in queue. */
int mq_queue_depth(struct mq *m, const char *queue, uint64_t *ready, struct cqrs_err *err)
	__attribute__((warn_unused_result));
int mq_ack(struct mq *m, uint64_t tag, bool multiple, struct cqrs_err *err)
	__attribute__((warn_unused_result));
int mq_reject(struct mq *m, uint64_t tag, bool requeue, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* A message to publish (all borrowed). */
struct mq_out {
	const char *exchange;		/* "" for the default exchange */
	const char *routing_key;
	const char *body;
	size_t body_len;
	const char *message_id;		/* may be NULL */
	const char *type;		/* may be NULL */
	const char *stream;		/* header, NULL: none */
	int64_t version, position;	/* headers when stream is set */
	const char *reason;		/* CONSUMER_H_REASON, NULL: none */
	const char *consumer;		/* CONSUMER_H_CONSUMER, NULL: none */
};

/* Publishes msg (persistent, application/json) on channel 2 and commits the
 * AMQP transaction: when it returns 0 the broker has it. */
int mq_publish(struct mq *m, const struct mq_out *msg, struct cqrs_err *err)
	__attribute__((warn_unused_result));

#endif

/*
 * broker.h - RabbitMQ through librabbitmq (DESIGN.md, "Broker"): the one
 * AMQP unit of cqrs-tracker, cqrs-consumer and `cqrsctl dead`.
 *
 *   struct broker *b;
 *   cqrs_broker_connect(url, &opt, &b, &err);     // TCP or TLS, login, channel 1,
 *                                                 // confirm.select (opt.confirms)
 *   cqrs_broker_declare_topology(b, &err);        // durable topic cqrs.events
 *
 *   tracker:   for each event: cqrs_broker_publish_event(b, ev, NULL, &err);
 *              cqrs_broker_wait_confirms(b, 0, 30000, &err);
 *   consumer:  cqrs_broker_declare_queue(), cqrs_broker_bind(),
 *              cqrs_broker_consume(b, queue, prefetch, &err);
 *              cqrs_broker_next(b, timeout_ms, &msg, &err); cqrs_broker_ack(...);
 *   dead letters: cqrs_broker_tx_select(b, ch, &err); cqrs_broker_send(b, ch, &m, &err);
 *              cqrs_broker_tx_commit(b, ch, &err);
 *   cqrs_broker_free(b);
 *
 * A struct broker is one AMQP connection used from one thread. Channel 1
 * (BROKER_CHANNEL) is opened by cqrs_broker_connect(): the tracker publishes
 * on it in confirm mode, the consumer and cqrsctl take messages from it
 * (basic.get, basic.consume, acks). Other channels (2 ... BROKER_CHANNEL_MAX)
 * open when first used; a passive declare for a queue's depth has a channel
 * of its own. Frames that arrive during a synchronous call (a delivery
 * during tx.commit or basic.cancel) are queued by librabbitmq and handed out
 * later by cqrs_broker_next(), so nothing is lost between channels.
 *
 * Publishing with confirms does not wait: many messages go out, then
 * cqrs_broker_wait_confirms() reads basic.ack/basic.nack (multiple or not)
 * until the ones asked for are settled. Publishing without confirms
 * (cqrs_broker_send()) is made safe by an AMQP transaction: tx.commit is a
 * synchronous call with a timeout.
 *
 * A nack, a basic.return, a channel or connection close by the server, a
 * consumer cancelled by the server, a missed heartbeat or a socket error is
 * an error, never ignored; after any error the broker is broken
 * (cqrs_broker_ok() false) and every later call fails at once: free it and
 * connect again (deliveries not acked by then go back to their queue).
 * Reconnecting, with backoff (backoff.h), is the caller's loop.
 *
 * Heartbeats are librabbitmq's: they are sent and checked only while the
 * library runs, so an idle caller must call cqrs_broker_poll() (or
 * cqrs_broker_next()) at least every heartbeat / 2 seconds (and whenever
 * cqrs_broker_fd() is readable).
 *
 * Errors (return values, with a message in err that names the broker as
 * "host:port/vhost", never the password, and the step that failed):
 *   CQRS_ECONFIG       the URL does not parse, or TLS files cannot be read
 *   CQRS_EUNAVAILABLE  cannot connect, refused login, connection lost,
 *                      heartbeat missed, confirm timeout: retry later
 *   CQRS_EINTERNAL     the server refused something (nack, channel closed,
 *                      a queue declared with other arguments, unexpected frame)
 *   CQRS_EINVALID      a message that cannot be sent (field too long)
 *   CQRS_ENOMEM
 */
#ifndef CQRS_BROKER_H
#define CQRS_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cqrs/err.h"
#include "cqrs/event.h"

/* The exchange every event is published to (durable, topic). */
#define BROKER_EXCHANGE "cqrs.events"

/* AMQP short strings (routing key, message id, type) are at most 255 bytes. */
#define BROKER_SHORTSTR_MAX 255

/* The channel cqrs_broker_connect() opens; channels go up to the max. */
#define BROKER_CHANNEL 1
#define BROKER_CHANNEL_MAX 8

/* Headers of a dead letter (besides the event's stream/version/position),
 * written by cqrs-consumer and read by `cqrsctl dead`. */
#define BROKER_H_REASON "x-cqrs-reason"
#define BROKER_H_CONSUMER "x-cqrs-consumer"
#define BROKER_H_FAILED_AT "x-cqrs-failed-at"

struct broker;

/* ---- connection ------------------------------------------------------------ */

/* A parsed broker.url (AMQP URI spec: user, password, host, port and vhost
 * percent-decoded; no path means vhost "/"). Owned strings. */
struct broker_url {
	char *user;
	char *password;
	char *host;
	int port;
	char *vhost;
	bool tls;		/* amqps:// */
	char name[300];		/* "host:port/vhost" for messages (vhost encoded) */
};

/* On success out holds copies (cqrs_broker_url_clear()). CQRS_ECONFIG when the URL
 * is not amqp:// or amqps:// or does not parse; the message does not repeat
 * the password. */
int cqrs_broker_url_parse(const char *url, struct broker_url *out, struct cqrs_err *err)
	__attribute__((warn_unused_result));
void cqrs_broker_url_clear(struct broker_url *u);

struct broker_options {
	int heartbeat_s;		/* 0: none (default 30) */
	int connect_timeout_ms;		/* TCP, TLS handshake, login and every
					 * synchronous call (default 10000) */
	const char *connection_name;	/* shown by rabbitmqctl list_connections; NULL: none */
	bool confirms;			/* channel 1 in confirm mode (default true) */
	/* amqps only; all borrowed, may be NULL */
	const char *cacert;		/* PEM CA bundle (default: the system's bundle,
					 * /etc/ssl/certs/ca-certificates.crt) */
	const char *cert, *key;		/* client certificate and key (PEM), both or none */
	bool verify;			/* check the server's certificate and name (default true) */
	const char *password;		/* borrowed; NULL: the URL's */
};

/* Fills o with the defaults above. */
void cqrs_broker_options_default(struct broker_options *o);

/* [broker] of a config file (common/broker_config.c): the URL, checked to
 * parse, and the options it sets. Owned strings. */
struct broker_config {
	char *url;			/* broker.url, or CQRS_BROKER_URL */
	int heartbeat_s;		/* broker.heartbeat */
	bool verify;			/* broker.verify */
	char *cacert, *cert, *key;	/* broker.cacert, .cert, .key (amqps); NULL: unset */
	char *password;			/* from broker.password_file; NULL: the URL's */
};

struct config;

/* CQRS_ECONFIG naming the key when one is missing or wrong. */
int cqrs_broker_config_load(const struct config *cfg, struct broker_config *out,
			    struct cqrs_err *err) __attribute__((warn_unused_result));
void cqrs_broker_config_clear(struct broker_config *c);

/* The defaults overlaid with c's heartbeat, verify and TLS files (borrowed
 * from c). */
void cqrs_broker_config_options(const struct broker_config *c, struct broker_options *o);

/*
 * Connects, logs in, opens channel 1 and, with opt->confirms, puts it in
 * confirm mode. opt NULL: defaults. On success *out is owned by the caller
 * (cqrs_broker_free()).
 */
int cqrs_broker_connect(const char *url, const struct broker_options *opt, struct broker **out,
		   struct cqrs_err *err) __attribute__((warn_unused_result));

/* Closes the connection (politely when it is healthy: deliveries not acked
 * and transactions not committed go back) and frees. NULL: no-op. */
void cqrs_broker_free(struct broker *b);

/* "host:port/vhost", borrowed. */
const char *cqrs_broker_name(const struct broker *b);

/* The socket, for poll(); -1 when broken. */
int cqrs_broker_fd(const struct broker *b);

/* False once an error happened (and for NULL). */
bool cqrs_broker_ok(const struct broker *b);

/* Whether the server has blocked publishing (connection.blocked: a resource
 * alarm); the reason (borrowed) is in *reason when not NULL. */
bool cqrs_broker_blocked(const struct broker *b, const char **reason);

/*
 * Reads what the server sent without blocking: heartbeats (and sends ours
 * when due), acks, connection.blocked, closes. While a consumer runs (or
 * deliveries wait in librabbitmq's queue), frames are left to
 * cqrs_broker_next(). 0 or an error.
 */
int cqrs_broker_poll(struct broker *b, struct cqrs_err *err) __attribute__((warn_unused_result));

/* The error of a failed RPC in words: the server's "CODE TEXT" (connection
 * or channel closed) or the library's. For every librabbitmq caller. */
struct amqp_rpc_reply_t_;
void cqrs_broker_reply_text(const struct amqp_rpc_reply_t_ *r, char *buf, size_t size);

/* ---- topology (all durable, idempotent; a conflicting existing declaration
 * is CQRS_EINTERNAL naming it) ---------------------------------------------------- */

/* DESIGN.md's exchange: the durable topic cqrs.events. */
int cqrs_broker_declare_topology(struct broker *b, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* A durable exchange of this type ("topic", "direct", "x-consistent-hash"). */
int cqrs_broker_declare_exchange(struct broker *b, const char *name, const char *type,
				 struct cqrs_err *err) __attribute__((warn_unused_result));

/* A durable queue and its arguments (all borrowed; NULL or 0: not given). */
struct broker_queue {
	const char *name;
	const char *type;		/* x-queue-type: "quorum", "classic" */
	const char *dead_exchange;	/* x-dead-letter-exchange */
	const char *dead_routing_key;	/* x-dead-letter-routing-key */
	int64_t delivery_limit;		/* x-delivery-limit (quorum) */
};

int cqrs_broker_declare_queue(struct broker *b, const struct broker_queue *q,
			      struct cqrs_err *err) __attribute__((warn_unused_result));

int cqrs_broker_bind(struct broker *b, const char *queue, const char *exchange,
		     const char *routing_key, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Messages ready (not yet delivered) in queue, by a passive queue.declare on
 * a channel of its own. */
int cqrs_broker_queue_depth(struct broker *b, const char *queue, uint64_t *ready,
			    struct cqrs_err *err) __attribute__((warn_unused_result));

/* ---- publishing (broker_publish.c) ------------------------------------------ */

/* A string header of a message (borrowed). */
struct broker_header {
	const char *key;
	const char *value;
};

/* One message. All fields borrowed for the call. */
struct broker_message {
	const char *exchange;		/* NULL: BROKER_EXCHANGE; "": the default exchange */
	const char *routing_key;
	const void *body;
	size_t body_len;
	/* properties: persistent, content_type application/json, and these
	 * (NULL or "": not set) */
	const char *message_id;		/* event id */
	const char *type;		/* event type */
	/* headers: stream, version and position when stream is set, then extra */
	const char *stream;
	int64_t version;
	int64_t position;
	const struct broker_header *extra;
	size_t n_extra;			/* at most 8 */
};

/*
 * Sends one message (not mandatory) on channel 1 in confirm mode and counts
 * it as unconfirmed; *tag (may be NULL) gets its delivery tag, 1 for the
 * first of the connection. CQRS_EINVALID on a connection without confirms.
 */
int cqrs_broker_publish(struct broker *b, const struct broker_message *m, uint64_t *tag,
		   struct cqrs_err *err) __attribute__((warn_unused_result));

/*
 * The message of an event as DESIGN.md says: routing key
 * "<aggregate type>.<EventType>", body = cqrs_envelope_encode(ev), message_id =
 * event id, type = event type, headers stream, version, position.
 */
int cqrs_broker_publish_event(struct broker *b, const struct cqrs_event *ev, uint64_t *tag,
			 struct cqrs_err *err) __attribute__((warn_unused_result));

/*
 * Waits until every message published with a tag <= upto (0: every message
 * published so far) is acked. A nack or return fails; after timeout_ms it
 * fails with CQRS_EUNAVAILABLE (the broker is then broken: what was not
 * confirmed must be published again on a new connection).
 */
int cqrs_broker_wait_confirms(struct broker *b, uint64_t upto, int timeout_ms, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Messages published and not yet acked. */
size_t cqrs_broker_unconfirmed(const struct broker *b);

/* The highest delivery tag T such that every message with a tag <= T is
 * acked (0 before the first ack). Acks are read by cqrs_broker_poll() and
 * cqrs_broker_wait_confirms(). */
uint64_t cqrs_broker_confirmed(const struct broker *b);

/*
 * The routing key of an event: "<aggregate type>.<EventType>", the aggregate
 * type being the stream's text before its first '-' (the whole stream when
 * it has none), cut to BROKER_SHORTSTR_MAX bytes. buf gets at least
 * BROKER_SHORTSTR_MAX + 1 bytes.
 */
void cqrs_broker_routing_key(const char *stream, const char *type, char *buf, size_t size);

/* Puts channel ch (opened when needed) in transaction mode; idempotent. */
int cqrs_broker_tx_select(struct broker *b, int ch, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Sends m on channel ch (opened when needed), without confirm: on a channel
 * in transaction mode it is the broker's at the next cqrs_broker_tx_commit(). */
int cqrs_broker_send(struct broker *b, int ch, const struct broker_message *m,
		     struct cqrs_err *err) __attribute__((warn_unused_result));

/* Commits the transaction of channel ch (sends and acks): when it returns 0
 * the broker has them. */
int cqrs_broker_tx_commit(struct broker *b, int ch, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/*
 * Sends m mandatory in a transaction of its own on channel ch and commits:
 * 0 only when a queue holds it. A message no queue takes comes back; that
 * is CQRS_EUNAVAILABLE naming the exchange and the routing key, and the
 * connection stays usable. Only for a connection that consumes nothing:
 * the frames queued meanwhile are read and dropped.
 */
int cqrs_broker_send_held(struct broker *b, int ch, const struct broker_message *m,
			  struct cqrs_err *err) __attribute__((warn_unused_result));

/* ---- receiving, on channel 1 (broker_consume.c) ------------------------------ */

/* A message as received. Strings are owned and NUL-terminated ("" when
 * absent); the first of repeated headers counts. */
struct broker_msg {
	uint64_t tag;			/* delivery tag on channel 1 */
	bool redelivered;
	char *routing_key;
	char *message_id;
	char *type;
	char *body;			/* body_len bytes, then a NUL */
	size_t body_len;
	int64_t delivery_count;		/* header x-delivery-count (quorum), else 0 */
	char *stream;			/* header stream */
	int64_t version, position;	/* headers, else 0 */
	char *reason;			/* BROKER_H_REASON */
	char *failed_at;		/* BROKER_H_FAILED_AT */
	char *consumer;			/* BROKER_H_CONSUMER */
	/* the first x-death entry (the latest death, by RabbitMQ) */
	char *death_reason;		/* its reason ("rejected", "delivery_limit" ...) */
	int64_t deaths;			/* its count, else 0 */
	int64_t death_time;		/* its time (Unix seconds), else 0 */
};

void cqrs_broker_msg_clear(struct broker_msg *msg);
/* Moves src into dst (src is left empty). */
void cqrs_broker_msg_move(struct broker_msg *dst, struct broker_msg *src);

/* basic.get (not acked): 1 with *msg filled, 0 when the queue is empty. */
int cqrs_broker_get(struct broker *b, const char *queue, struct broker_msg *msg,
		    struct cqrs_err *err) __attribute__((warn_unused_result));

/* basic.qos(prefetch) and basic.consume. */
int cqrs_broker_consume(struct broker *b, const char *queue, int prefetch, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* basic.cancel: no delivery comes after it returns; those that came before
 * are still returned by cqrs_broker_next(). */
int cqrs_broker_cancel(struct broker *b, struct cqrs_err *err) __attribute__((warn_unused_result));

/* Waits up to timeout_ms (0: only what is buffered) for a delivery: 1 with
 * *msg filled, 0 when none came, or an error. */
int cqrs_broker_next(struct broker *b, int timeout_ms, struct broker_msg *msg,
		     struct cqrs_err *err) __attribute__((warn_unused_result));

int cqrs_broker_ack(struct broker *b, uint64_t tag, bool multiple, struct cqrs_err *err)
	__attribute__((warn_unused_result));
int cqrs_broker_reject(struct broker *b, uint64_t tag, bool requeue, struct cqrs_err *err)
	__attribute__((warn_unused_result));

#endif

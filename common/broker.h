/*
 * broker.h - RabbitMQ through librabbitmq (DESIGN.md, "Broker").
 *
 *   struct broker *b;
 *   cqrs_broker_connect(url, &opt, &b, &err);     // TCP or TLS, login, channel 1,
 *                                            // confirm.select
 *   cqrs_broker_declare_topology(b, &err);        // durable topic cqrs.events
 *   for each event: cqrs_broker_publish_event(b, ev, NULL, &err);
 *   cqrs_broker_wait_confirms(b, 0, 30000, &err); // every publish acked, or an error
 *   cqrs_broker_free(b);
 *
 * A struct broker is one AMQP connection with one channel in publisher-confirm
 * mode, used from one thread. Publishing does not wait: many messages go out,
 * then cqrs_broker_wait_confirms() reads basic.ack/basic.nack (multiple or not)
 * until the ones asked for are settled. A nack, a basic.return, a channel or
 * connection close by the server, a missed heartbeat or a socket error is an
 * error, never ignored; after any error the broker is broken (cqrs_broker_ok()
 * false) and every later call fails at once: free it and connect again.
 * Reconnecting, with backoff, is the caller's loop.
 *
 * Heartbeats are librabbitmq's: they are sent and checked only while the
 * library runs, so an idle caller must call cqrs_broker_poll() at least every
 * heartbeat / 2 seconds (and whenever cqrs_broker_fd() is readable).
 *
 * Errors (return values, with a message in err that names the broker as
 * "host:port/vhost", never the password, and the step that failed):
 *   CQRS_ECONFIG       the URL does not parse, or TLS files cannot be read
 *   CQRS_EUNAVAILABLE  cannot connect, refused login, connection lost,
 *                      heartbeat missed, confirm timeout: retry later
 *   CQRS_EINTERNAL     the server refused something (nack, channel closed,
 *                      unexpected frame)
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

struct broker;

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
	int connect_timeout_ms;		/* TCP, TLS handshake and login (default 10000) */
	const char *connection_name;	/* shown by rabbitmqctl list_connections; NULL: none */
	/* amqps only; all borrowed, may be NULL */
	const char *cacert;		/* PEM CA bundle (default: the system's bundle,
					 * /etc/ssl/certs/ca-certificates.crt) */
	const char *cert, *key;		/* client certificate and key (PEM), both or none */
	bool verify;			/* check the server's certificate and name (default true) */
};

/* Fills o with the defaults above. */
void cqrs_broker_options_default(struct broker_options *o);

/*
 * Connects, logs in, opens channel 1 and puts it in confirm mode. opt NULL:
 * defaults. On success *out is owned by the caller (cqrs_broker_free()).
 */
int cqrs_broker_connect(const char *url, const struct broker_options *opt, struct broker **out,
		   struct cqrs_err *err) __attribute__((warn_unused_result));

/* Closes the connection (politely when it is healthy) and frees. NULL: no-op. */
void cqrs_broker_free(struct broker *b);

/* "host:port/vhost", borrowed. */
const char *cqrs_broker_name(const struct broker *b);

/* The socket, for poll(); -1 when broken. */
int cqrs_broker_fd(const struct broker *b);

/* False once an error happened. */
bool cqrs_broker_ok(const struct broker *b);

/* Whether the server has blocked publishing (connection.blocked: a resource
 * alarm); the reason (borrowed) is in *reason when not NULL. */
bool cqrs_broker_blocked(const struct broker *b, const char **reason);

/* Declares the topology of DESIGN.md: the durable topic exchange
 * cqrs.events. Idempotent; a conflicting existing declaration is an error. */
int cqrs_broker_declare_topology(struct broker *b, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/*
 * Reads what the server sent without blocking: heartbeats (and sends ours
 * when due), acks, connection.blocked, closes. 0 or an error.
 */
int cqrs_broker_poll(struct broker *b, struct cqrs_err *err) __attribute__((warn_unused_result));

/* One message. All fields borrowed for the call. */
struct broker_message {
	const char *exchange;		/* NULL: BROKER_EXCHANGE */
	const char *routing_key;
	const void *body;
	size_t body_len;
	/* properties: persistent, content_type application/json, and these */
	const char *message_id;		/* event id */
	const char *type;		/* event type */
	/* headers */
	const char *stream;
	int64_t version;
	int64_t position;
};

/*
 * Sends one message (not mandatory) and counts it as unconfirmed; *tag (may
 * be NULL) gets its delivery tag, 1 for the first of the connection.
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

/* The error of a failed RPC in words: the server's "CODE TEXT" (connection
 * or channel closed) or the library's. For every librabbitmq caller. */
struct amqp_rpc_reply_t_;
void cqrs_broker_reply_text(const struct amqp_rpc_reply_t_ *r, char *buf, size_t size);

#endif

/*
 * rabbit.h - a real RabbitMQ for integration tests, and a test consumer.
 *
 * tests/run.sh starts one private node per run and exports
 * CQRS_TEST_RABBITDIR (deploy/dev/rabbitmq.sh's DIR, whose DIR/env holds
 * CQRS_BROKER_URL). A test binary run by hand without it starts its own node
 * (about 7 s) and stops it at exit: call fixture_broker_url() from main()
 * before srunner_run_all(), so that the node is started once, by the parent,
 * and not by every forked test. Never a skip: no node, the test fails.
 *
 * The collector is a consumer on a queue of its own, bound to cqrs.events:
 * durable and not exclusive, so it survives a broker restart (and expires
 * three minutes after its last use, should a test die before deleting it). It
 * connects when asked to collect and reconnects when the broker went away;
 * messages are acked one by one after they are recorded, so a broker restart
 * may deliver one again (marked `redelivered`).
 */
#ifndef CQRS_TEST_RABBIT_H
#define CQRS_TEST_RABBIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* amqp://cqrs:cqrs@127.0.0.1:PORT/%2f of the test node. */
const char *fixture_broker_url(void);
int fixture_rabbit_port(void);
const char *fixture_rabbit_dir(void);

/* Stop and start the shared node (same port, same data). */
void fixture_rabbit_stop(void);
void fixture_rabbit_start(void);

/*
 * A private node of the test's own (deploy/dev/rabbitmq.sh in a fresh
 * directory, about ten seconds to start), for faults that must not reach
 * the shared node: freezing it. A guardian process thaws, stops and removes
 * it once the test's process is gone, however the test ends (a failed check
 * leaves with _exit(), past any teardown), so a stopped node never outlives
 * its test.
 */
struct rabbit_node;

struct rabbit_node *rabbit_node_start(void);
/* amqp://cqrs:cqrs@127.0.0.1:PORT/%2f (borrowed). */
const char *rabbit_node_url(const struct rabbit_node *n);
/* Messages in queue (ready and unacked), by rabbitmqctl (a few seconds);
 * -1 when it is not there or rabbitmqctl fails. */
long rabbit_node_queue_messages(const struct rabbit_node *n, const char *queue);
/* SIGSTOP / SIGCONT every process of the node: the Erlang VM, its
 * descendants, its epmd. */
void rabbit_node_freeze(struct rabbit_node *n);
void rabbit_node_thaw(struct rabbit_node *n);
/* Thaws, stops and removes it (through the guardian), and waits. */
void rabbit_node_free(struct rabbit_node *n);

/* One message as the collector received it. Owned strings ("" when the
 * property was absent). */
struct rabbit_msg {
	char *exchange;
	char *routing_key;
	char *message_id;
	char *type;
	char *content_type;
	int delivery_mode;		/* 0 when absent */
	char *stream;			/* header "stream" (kind 'S') */
	int64_t version;		/* header "version" */
	int64_t position;		/* header "position" */
	char version_kind;		/* AMQP field kind of the header ('l' = int64) */
	char position_kind;
	char stream_kind;
	size_t nheaders;
	char *body;			/* NUL-terminated */
	size_t body_len;
	bool redelivered;
	long long received_ms;		/* proc_now_ms() when it came */
};

struct rabbit_collector;

/* A queue bound to exchange (NULL: cqrs.events, declared durable topic if
 * missing) with binding key `binding` ("#": everything). */
struct rabbit_collector *rabbit_collector_new(const char *exchange, const char *binding);

/* Deletes the queue and frees. NULL is a no-op. */
void rabbit_collector_free(struct rabbit_collector *c);

/* The queue's name (borrowed). */
const char *rabbit_collector_queue(const struct rabbit_collector *c);

/*
 * Consumes until `want` distinct message ids whose stream header starts with
 * stream_prefix (NULL: any) have been received, or timeout_ms passes; then
 * returns how many distinct ids it has.
 */
size_t rabbit_collector_wait(struct rabbit_collector *c, const char *stream_prefix, size_t want,
			     int timeout_ms);

/* Consumes until nothing comes for quiet_ms (stragglers, duplicates). */
void rabbit_collector_drain(struct rabbit_collector *c, int quiet_ms);

/* Everything received so far, in order of arrival (borrowed). */
const struct rabbit_msg *rabbit_collector_msgs(const struct rabbit_collector *c, size_t *n);


/* ---- comparing with the store ------------------------------------------------ */

/*
 * Compares what the collector received (messages whose stream header starts
 * with prefix) with the events of the store whose stream starts with prefix,
 * and fails the test on any difference:
 * - every committed event was received, and its first copy is exactly what
 *   DESIGN.md says (routing key, body = envelope, persistent, message_id,
 *   type, content_type, headers stream/version/position as int64);
 * - nothing else was (no event of a rolled-back transaction);
 * - per stream, versions arrive in order: each message is the next version,
 *   or a repeat of an earlier one;
 * - repeats: none when allow_dups is false (broker redeliveries to the
 *   collector aside); else only of events after dup_after (the checkpoint at
 *   the moment of a crash or takeover).
 * With RABBIT_DUMP=FILE in the environment, every message received is first
 * written to FILE (index, stream, version, position, redelivered, arrival
 * time, xid), for a failure that needs the whole picture. (Daemons started by
 * tests inherit the environment: CQRS_LOG_LEVEL=debug gives their debug log.)
 */
struct rabbit_check {
	const char *prefix;
	bool allow_dups;
	struct store_checkpoint dup_after;
	/* filled in */
	size_t events;			/* in the store */
	size_t received;		/* messages, repeats included */
	size_t duplicates;		/* repeats by the publisher */
};

void rabbit_check_store(struct rabbit_collector *c, const char *conninfo, struct rabbit_check *chk);

#endif

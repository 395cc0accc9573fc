/*
 * dead.c - cqrsctl dead NAME: the dead letters of a consumer, and putting
 * them back.
 *
 * cqrs-consumer dead-letters an event to exchange cqrs.dead with its queue's
 * name as routing key, into queue QUEUE.dead (QUEUE: consumer.NAME.queue,
 * default cqrs.NAME), with the reason in header x-cqrs-reason; RabbitMQ
 * dead-letters there too the events that reached the queue's delivery limit
 * (the consumer died handling them), with an x-death header whose reason is
 * "delivery_limit".
 *
 * Listing takes every message with basic.get and does not ack them: closing
 * the connection puts them all back (the queue is classic, so this counts
 * nothing against them). --retry first checks that the consumer's queue is
 * there (a passive declare: a clear error naming it, rather than letters
 * published to nowhere), then publishes each chosen letter to it (default
 * exchange, routing key = the queue) mandatory, in a transaction of its own
 * on channel CH_PUT, and acks it on channel 1 only once the queue holds it;
 * the acks count at one commit at the end. So a letter is never lost: a
 * put-back that fails leaves it dead, and a commit of the acks that fails
 * leaves it in both queues (delivered twice, which the consumer takes as a
 * duplicate).
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "broker.h"
#include "config.h"
#include "ctl.h"

#define TIMEOUT_MS 10000
#define MAX_LETTERS 1000000
#define CH_PUT 2		/* put-backs: mandatory, a transaction each */

struct letter {
	struct broker_msg msg;
	char *reason;			/* the message's reason, or RabbitMQ's in words */
	char failed_at[32];		/* the message's, or x-death's time */
	bool retry;
};

static void
letter_clear(struct letter *l)
{
	cqrs_broker_msg_clear(&l->msg);
	free(l->reason);
	memset(l, 0, sizeof(*l));
}

/* What we show of a message: our headers, else what x-death says. */
static void
read_letter(struct letter *l)
{
	const struct broker_msg *m = &l->msg;

	if (m->reason[0] != '\0') {
		l->reason = strdup(m->reason);
	} else if (strcmp(m->death_reason, "delivery_limit") == 0) {
		l->reason = strdup("delivery limit reached: the consumer stopped without acking it "
				   "too many times (did it crash on it?)");
	} else if (m->death_reason[0] != '\0' &&
		   asprintf(&l->reason, "dead-lettered by RabbitMQ: %s", m->death_reason) < 0) {
		l->reason = NULL;
	}
	if (m->failed_at[0] != '\0') {
		snprintf(l->failed_at, sizeof(l->failed_at), "%s", m->failed_at);
	} else if (m->death_time != 0) {
		time_t ts = (time_t)m->death_time;
		struct tm tm;

		if (gmtime_r(&ts, &tm) != NULL)
			strftime(l->failed_at, sizeof(l->failed_at), "%Y-%m-%dT%H:%M:%SZ", &tm);
	}
}

/* The connection, with [broker]'s options; an error is printed. */
static int
conn_open(struct ctl *ctl, struct broker **out)
{
	struct broker_config bc;
	struct broker_options opt;
	struct cqrs_err err = { 0 };
	int rc;

	if (cqrs_broker_config_load(ctl->cfg, &bc, &err) < 0)
		return ctl_fail(ctl, "%s", err.msg);
	cqrs_broker_config_options(&bc, &opt);
	opt.heartbeat_s = 0;
	opt.connect_timeout_ms = TIMEOUT_MS;
	opt.confirms = false;	/* letters go back in transactions (CH_PUT), acks in one */
	rc = cqrs_broker_connect(bc.url, &opt, out, &err);
	cqrs_broker_config_clear(&bc);
	return rc < 0 ? ctl_fail(ctl, "%s", err.msg) : 0;
}

/* ---- the verb ---------------------------------------------------------------------- */

static const char *
nz(const char *s)
{
	return s != NULL ? s : "";
}

static void
print_letter(struct ctl *ctl, const struct letter *l, bool json)
{
	if (json) {
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "id", json_object_new_string(l->msg.message_id));
		json_object_object_add(o, "stream", json_object_new_string(l->msg.stream));
		json_object_object_add(o, "version", json_object_new_int64(l->msg.version));
		json_object_object_add(o, "position", json_object_new_int64(l->msg.position));
		json_object_object_add(o, "type", json_object_new_string(l->msg.type));
		json_object_object_add(o, "reason", json_object_new_string(nz(l->reason)));
		json_object_object_add(o, "failed_at", json_object_new_string(l->failed_at));
		json_object_object_add(o, "deaths", json_object_new_int64(l->msg.deaths));
		fprintf(ctl->out, "%s\n",
			json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
								  JSON_C_TO_STRING_NOSLASHESCAPE));
		json_object_put(o);
		return;
	}
	fprintf(ctl->out, "%s  %s version %" PRId64 "  %s  %s\n    reason: %s\n", l->msg.message_id,
		l->msg.stream, l->msg.version, l->msg.type, l->failed_at,
		l->reason != NULL ? l->reason : "(none given)");
}

/* Publishes l to queue through the default exchange, as the tracker would
 * have (minus the dead-letter headers), mandatory and committed: 0 only once
 * the queue holds it. Then acks it, which counts at the commit of channel
 * 1's transaction. */
static int
put_back(struct broker *b, const char *queue, const struct letter *l, struct cqrs_err *err)
{
	struct broker_message m = {
		.exchange = "",
		.routing_key = queue,
		.body = l->msg.body,
		.body_len = l->msg.body_len,
		.message_id = l->msg.message_id,
		.type = l->msg.type,
		.stream = l->msg.stream,
		.version = l->msg.version,
		.position = l->msg.position,
	};
	int rc;

	if ((rc = cqrs_broker_send_held(b, CH_PUT, &m, err)) < 0)
		return rc;
	return cqrs_broker_ack(b, l->msg.tag, false, err);
}

int
ctl_dead(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "retry", required_argument, NULL, 'r' },
		{ "all", no_argument, NULL, 'a' },
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 },
	};
	const struct ctl_verb *verb = NULL;
	const char *retry_id = NULL, *name;
	bool all = false, json = false, failed = false;
	char section[160], *queue = NULL, *dead_queue = NULL;
	struct letter *letters = NULL;
	size_t n = 0, cap = 0, chosen = 0;
	struct broker *b = NULL;
	struct cqrs_err err = { 0 };
	int c, rc = 1;

	for (const struct ctl_verb *v = ctl_verbs; v->name != NULL; v++)
		if (strcmp(v->name, "dead") == 0)
			verb = v;
	optind = 0;		/* glibc: start over, this is a new argv */
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'r': retry_id = optarg; break;
		case 'a': all = true; break;
		case 'j': json = true; break;
		default: return ctl_usage(ctl, verb);
		}
	}
	if (optind != argc - 1 || (retry_id != NULL && all))
		return ctl_usage(ctl, verb);
	name = argv[optind];
	snprintf(section, sizeof(section), "consumer.%s", name);
	if (asprintf(&queue, "%s", cqrs_config_get(ctl->cfg, section, "queue", "")) < 0)
		return ctl_fail(ctl, "out of memory");
	if (queue[0] == '\0') {
		free(queue);
		if (asprintf(&queue, "cqrs.%s", name) < 0)
			return ctl_fail(ctl, "out of memory");
	}
	if (asprintf(&dead_queue, "%s.dead", queue) < 0) {
		free(queue);
		return ctl_fail(ctl, "out of memory");
	}
	if (conn_open(ctl, &b) < 0)
		goto out;
	if (retry_id != NULL || all) {
		uint64_t ready;

		if (cqrs_broker_queue_depth(b, queue, &ready, &err) < 0) {
			ctl_fail(ctl, "cannot put dead letters back into queue \"%s\": %s (is it "
				      "deleted? starting cqrs-consumer -n %s declares it again)",
				 queue, err.msg, name);
			goto out;
		}
		if (cqrs_broker_tx_select(b, BROKER_CHANNEL, &err) < 0) {
			ctl_fail(ctl, "%s", err.msg);
			goto out;
		}
	}
	/* take them all, unacked: they stay ours until acked or the channel
	 * closes */
	while (n < MAX_LETTERS) {
		struct broker_msg m;
		int got = cqrs_broker_get(b, dead_queue, &m, &err);

		if (got < 0) {
			ctl_fail(ctl, "%s", err.msg);
			/* a queue that is not there closes the channel */
			if (got == CQRS_EINTERNAL)
				fprintf(ctl->err, "cqrsctl: (does consumer \"%s\" exist? its dead "
						  "letters are in queue \"%s\")\n",
					name, dead_queue);
			goto out;
		}
		if (got == 0)
			break;
		if (n == cap) {
			struct letter *v = realloc(letters, (cap = cap * 2 + 16) * sizeof(*v));

			if (v == NULL) {
				cqrs_broker_msg_clear(&m);
				ctl_fail(ctl, "out of memory");
				goto out;
			}
			letters = v;
		}
		memset(&letters[n], 0, sizeof(letters[n]));
		cqrs_broker_msg_move(&letters[n].msg, &m);
		read_letter(&letters[n]);
		n++;
	}
	if (retry_id == NULL && !all) {
		for (size_t i = 0; i < n; i++)
			print_letter(ctl, &letters[i], json);
		if (!json)
			fprintf(ctl->out, "%zu dead letter%s in queue \"%s\"\n", n, n == 1 ? "" : "s",
				dead_queue);
		rc = 0;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (!all && strcmp(letters[i].msg.message_id, retry_id) != 0)
			continue;
		if (put_back(b, queue, &letters[i], &err) < 0) {
			ctl_fail(ctl, "%s (putting %s back into \"%s\"; it stays in \"%s\")",
				 err.msg, letters[i].msg.message_id, queue, dead_queue);
			failed = true;
			break;
		}
		letters[i].retry = true;
		chosen++;
	}
	if (chosen == 0 && !all && !failed) {
		ctl_fail(ctl, "no dead letter with id %s in queue \"%s\"", retry_id, dead_queue);
		goto out;
	}
	/* the acks of the letters the queue holds, also after a failure: they
	 * must not stay dead as well */
	if (chosen > 0 && cqrs_broker_tx_commit(b, BROKER_CHANNEL, &err) < 0) {
		ctl_fail(ctl, "%s (the %zu letters put back may also still be in \"%s\")", err.msg,
			 chosen, dead_queue);
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		if (letters[i].retry && !json)
			fprintf(ctl->out, "put back %s (%s version %" PRId64 ")\n",
				letters[i].msg.message_id, letters[i].msg.stream, letters[i].msg.version);
	fprintf(ctl->out, "%zu dead letter%s put back into queue \"%s\"\n", chosen,
		chosen == 1 ? "" : "s", queue);
	rc = failed ? 1 : 0;
out:
	/* what was taken and not put back returns to the dead-letter queue */
	cqrs_broker_free(b);
	for (size_t i = 0; i < n; i++)
		letter_clear(&letters[i]);
	free(letters);
	free(queue);
	free(dead_queue);
	return rc;
}

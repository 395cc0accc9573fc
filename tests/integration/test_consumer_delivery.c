/*
 * test_consumer_delivery.c - cqrs-consumer against real PostgreSQL and
 * RabbitMQ: what it does with what the queue delivers.
 *
 * The handlers are tests/plugins/poison (group "poison" on "poison.*"):
 * they record every event they handle in poison_applied, in the consumer's
 * transaction, and fail, abort or ask for retries when an event's data says
 * so. Every test has its own database and its own queue; events are appended
 * to the store directly and reach the queue either through cqrs-tracker or
 * by publishing to the queue here (duplicates, out of order).
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "consumer_fixture.h"
#include "envelope.h"
#include "fixture.h"
#include "proc.h"
#include "rabbit.h"
#include "store.h"

#define WAIT_MS 30000

struct env {
	char *conninfo;
	char queue[200];
	char *dir;			/* fix files */
	struct cons *c;
	struct proc *tracker;
};

/* A consumer "poison" on its own queue; `more` adds keys to its section. */
static void
env_init(struct env *e, const char *more)
{
	char *section, *text;

	memset(e, 0, sizeof(*e));
	e->conninfo = fixture_db_new(true);
	snprintf(e->queue, sizeof(e->queue), "%s", cons_unique_queue("poison"));
	e->dir = fixture_tmpdir();
	ck_assert_int_ge(asprintf(&section,
				  "[consumer.poison]\nplugins = %s\nqueue = %s\n%s",
				  fixture_plugin("poison"), e->queue, more != NULL ? more : ""),
			 0);
	text = cons_config(e->conninfo, NULL, section);
	e->c = cons_new("poison", text);
	free(section);
	free(text);
}

static void
env_tracker(struct env *e)
{
	e->tracker = proc_new("cqrs-tracker");
	proc_set(e->tracker, "store", "conninfo", "%s", e->conninfo);
	proc_set(e->tracker, "broker", "url", "%s", fixture_broker_url());
	proc_set(e->tracker, "tracker", "poll_ms", "100");
	proc_start(e->tracker);
}

static void
env_fini(struct env *e)
{
	char cmd[300];

	if (e->tracker != NULL) {
		ck_assert_int_eq(proc_stop(e->tracker), 0);
		proc_free(e->tracker);
	}
	cons_free(e->c);
	cons_delete_queues(e->queue);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
	(void)fixture_run(cmd, NULL);
	free(e->dir);
	free(e->conninfo);
}

static char *
fix_path(const struct env *e, const char *name)
{
	char *p;

	ck_assert_int_ge(asprintf(&p, "%s/%s", e->dir, name), 0);
	return p;
}

static long long
applied(const struct env *e)
{
	return cons_poison_count(e->conninfo);
}

static void
wait_applied(const struct env *e, long long want)
{
	cons_poison_wait(e->c, e->conninfo, want);
}

static void
check_applied(const struct env *e, const int *upto, int nstreams)
{
	cons_poison_check(e->conninfo, upto, nstreams);
}

/* The dead letters of the consumer, as `cqrsctl dead --json` lines. */
static struct json_object *
dead_letters(const struct env *e)
{
	char *out = NULL;
	struct json_object *arr = json_object_new_array();
	int rc = cons_ctl(e->c, "dead poison --json", &out);

	ck_assert_msg(rc == 0, "cqrsctl dead: %d: %s", rc, out);
	for (char *line = strtok(out, "\n"); line != NULL; line = strtok(NULL, "\n")) {
		struct json_object *o = json_tokener_parse(line);

		if (o != NULL)
			json_object_array_add(arr, o);
	}
	free(out);
	return arr;
}

static const char *
jstr(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : "";
}

static long long
jint(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : -1;
}

/* Waits until `want` dead letters are listed; returns them. */
static struct json_object *
wait_dead(const struct env *e, size_t want)
{
	long long deadline = proc_now_ms() + WAIT_MS;
	struct json_object *arr;

	for (;;) {
		arr = dead_letters(e);
		if (json_object_array_length(arr) >= want || proc_now_ms() > deadline)
			break;
		json_object_put(arr);
		usleep(200 * 1000);
	}
	ck_assert_msg(json_object_array_length(arr) == want, "%zu dead letters, want %zu",
		      json_object_array_length(arr), want);
	return arr;
}

static const char *
event_id(const struct env *e, const char *stream, int version)
{
	static char id[64];
	char sql[200];
	PGconn *pg = fixture_connect(e->conninfo);
	PGresult *res;

	snprintf(sql, sizeof(sql),
		 "SELECT id FROM cqrs.events WHERE stream = '%s' AND version = %d", stream, version);
	res = PQexec(pg, sql);
	ck_assert_int_eq(PQntuples(res), 1);
	snprintf(id, sizeof(id), "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	PQfinish(pg);
	return id;
}

/* Publishes the store's stream version, as the tracker would. */
static void
publish_stored(const struct env *e, const char *stream, int64_t version)
{
	struct store *st = NULL;
	struct store_events evs = { 0 };
	struct cqrs_err err = { 0 };
	char *body;

	ck_assert_msg(cqrs_store_connect(e->conninfo, &st, &err) == 0, "%s", err.msg);
	ck_assert_msg(cqrs_store_read_stream(st, stream, version, 1, &evs, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(evs.n, 1);
	body = cqrs_envelope_encode(evs.ev[0]);
	ck_assert_ptr_nonnull(body);
	cons_publish(e->queue, body, evs.ev[0]->id, evs.ev[0]->type, evs.ev[0]->stream,
		     evs.ev[0]->version, evs.ev[0]->position);
	free(body);
	cqrs_store_events_clear(&evs);
	cqrs_store_free(st);
}

/* ---- tests ------------------------------------------------------------------------ */

/* Publishes every event of the store to the queue in a shuffled order, a
 * third of them twice: each is applied once, in stream order. */
START_TEST(duplicates_and_out_of_order_applied_once_in_order)
{
	struct env e;
	struct store *st = NULL;
	struct store_events evs = { 0 };
	struct cqrs_err err = { 0 };
	size_t *order, n = 0, cap;
	char stream[32];

	env_init(&e, NULL);
	cons_start(e.c);	/* empty store: live at once */
	for (int v = 1; v <= 8; v++)
		for (int k = 1; k <= 5; k++) {
			snprintf(stream, sizeof(stream), "poison-%d", k);
			cons_append(e.conninfo, stream, "Happened", "{}");
		}
	ck_assert_int_eq(cqrs_store_connect(e.conninfo, &st, &err), 0);
	ck_assert_int_eq(cqrs_store_read_all(st, &STORE_CHECKPOINT_START, 1000, &evs, &err), 0);
	ck_assert_int_eq(evs.n, 40);
	cap = evs.n * 2;
	order = calloc(cap, sizeof(*order));
	for (size_t i = 0; i < evs.n; i++) {
		order[n++] = i;
		if (i % 3 == 0)
			order[n++] = i;
	}
	srandom(42);
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)random() % (i + 1), t = order[i];

		order[i] = order[j];
		order[j] = t;
	}
	for (size_t i = 0; i < n; i++) {
		const struct cqrs_event *ev = evs.ev[order[i]];
		char *body = cqrs_envelope_encode(ev);

		cons_publish(e.queue, body, ev->id, ev->type, ev->stream, ev->version, ev->position);
		free(body);
	}
	wait_applied(&e, 40);
	/* what is still in flight would show as a 41st row */
	ck_assert_msg(cons_wait_query(e.conninfo,
				      "SELECT CASE WHEN count(*) = 40 THEN 0 ELSE 1 END "
				      "FROM poison_applied",
				      0, 1000) == 0,
		      "more than 40 rows");
	usleep(500 * 1000);
	check_applied(&e, NULL, 5);
	ck_assert_int_eq(cons_queue_depth(e.queue), 0);
	ck_assert_int_eq(cons_stop(e.c), 0);
	/* some came before their predecessors: fetched from the store */
	{
		char *log = cons_log(e.c);
		unsigned long long handled = 0, fetched = 0, dups = 0;
		const char *p = strstr(log, "stopped: ");

		ck_assert_ptr_nonnull(p);
		ck_assert_int_eq(sscanf(p, "stopped: %llu events handled (%llu of them read from the "
					   "store as missing), %llu duplicates",
					&handled, &fetched, &dups),
				 3);
		ck_assert_uint_eq(handled, 40);
		ck_assert_uint_gt(fetched, 0);
		/* every delivery was either handled or a duplicate */
		ck_assert_uint_eq(handled - fetched + dups, n);
		free(log);
	}
	free(order);
	cqrs_store_events_clear(&evs);
	cqrs_store_free(st);
	env_fini(&e);
}
END_TEST

/* A handler fails an event: it is dead-lettered with its reason, and so are
 * the later events of its stream; other streams flow; once fixed, --retry
 * puts them back and they are applied in order. */
START_TEST(failing_event_dead_lettered_then_retried)
{
	struct env e;
	char *fix, data[300], stream[32], *out = NULL;
	struct json_object *dead;
	int upto[3] = { 5, 2, 5 };
	int rc;

	env_init(&e, NULL);
	fix = fix_path(&e, "fixed");
	cons_start(e.c);
	env_tracker(&e);
	for (int v = 1; v <= 5; v++)
		for (int k = 1; k <= 3; k++) {
			snprintf(stream, sizeof(stream), "poison-%d", k);
			if (k == 2 && v == 3)
				snprintf(data, sizeof(data), "{\"fail\":\"%s\"}", fix);
			else
				snprintf(data, sizeof(data), "{}");
			cons_append(e.conninfo, stream, "Happened", data);
		}
	dead = wait_dead(&e, 3);
	wait_applied(&e, 12);
	check_applied(&e, upto, 3);
	for (int i = 0; i < 3; i++) {
		struct json_object *o = json_object_array_get_idx(dead, (size_t)i);

		ck_assert_str_eq(jstr(o, "stream"), "poison-2");
		ck_assert_msg(strstr(jstr(o, "reason"), "poison-2 version 3 refused") != NULL,
			      "reason: %s", jstr(o, "reason"));
	}
	json_object_put(dead);
	ck_assert(cons_log_count(e.c, "dead-lettered poison-2 version 3") == 1);

	/* the fix, then v3 alone, then the rest */
	fixture_touch(fix);
	{
		char args[200];

		snprintf(args, sizeof(args), "dead poison --retry %s", event_id(&e, "poison-2", 3));
		rc = cons_ctl(e.c, args, &out);
		ck_assert_msg(rc == 0, "cqrsctl dead --retry: %s", out);
		free(out);
	}
	wait_applied(&e, 13);
	upto[1] = 3;
	check_applied(&e, upto, 3);
	dead = dead_letters(&e);
	ck_assert_int_eq(json_object_array_length(dead), 2);
	json_object_put(dead);
	rc = cons_ctl(e.c, "dead poison --all", &out);
	ck_assert_msg(rc == 0 && strstr(out, "2 dead letters put back") != NULL, "%s", out);
	free(out);
	wait_applied(&e, 15);
	check_applied(&e, NULL, 3);
	dead = dead_letters(&e);
	ck_assert_int_eq(json_object_array_length(dead), 0);
	json_object_put(dead);
	ck_assert_int_eq(cons_stop(e.c), 0);
	free(fix);
	env_fini(&e);
}
END_TEST

/* The dead queue unbound by an operator: a dead letter no queue takes
 * comes back to the consumer, which must not ack its event; once the
 * topology is declared again (on reconnect) the letter is held, once. */
START_TEST(dead_letter_unroutable_is_not_acked)
{
	struct env e;
	char *fix, data[300], dead_queue[256];
	struct json_object *dead;

	env_init(&e, NULL);
	fix = fix_path(&e, "never");
	cons_start(e.c);
	env_tracker(&e);
	snprintf(dead_queue, sizeof(dead_queue), "%s.dead", e.queue);
	cons_unbind(dead_queue, "cqrs.dead", e.queue);
	snprintf(data, sizeof(data), "{\"fail\":\"%s\"}", fix);
	cons_append(e.conninfo, "poison-1", "Happened", data);
	ck_assert_msg(cons_wait_log(e.c, "no queue holds the message", 1, WAIT_MS),
		      "the unroutable dead letter went unnoticed:\n%s",
		      (char *)cons_log_tail(e.c, 20));
	dead = wait_dead(&e, 1);
	ck_assert_str_eq(jstr(json_object_array_get_idx(dead, 0), "stream"), "poison-1");
	json_object_put(dead);
	ck_assert_int_eq(cons_log_count(e.c, "dead-lettered poison-1 version 1"), 1);
	ck_assert_int_eq(cons_stop(e.c), 0);
	free(fix);
	env_fini(&e);
}
END_TEST

/* `cqrsctl dead --retry/--all` with the consumer's queue gone (deleted by
 * an operator while the consumer is stopped): a clear error naming the
 * queue, and the dead letters stay where they are; once the queue is back,
 * the put-back works and the event is applied. */
START_TEST(dead_put_back_needs_its_queue)
{
	struct env e;
	char *fix, data[300], args[200], *out = NULL;
	struct json_object *dead;
	int rc;

	env_init(&e, NULL);
	fix = fix_path(&e, "fixed");
	cons_start(e.c);
	env_tracker(&e);
	snprintf(data, sizeof(data), "{\"fail\":\"%s\"}", fix);
	cons_append(e.conninfo, "poison-1", "Happened", data);
	json_object_put(wait_dead(&e, 1));
	ck_assert_int_eq(cons_stop(e.c), 0);
	cons_delete_queue(e.queue);
	fixture_touch(fix);

	snprintf(args, sizeof(args), "dead poison --retry %s", event_id(&e, "poison-1", 1));
	rc = cons_ctl(e.c, args, &out);
	ck_assert_msg(rc == 1 && strstr(out, e.queue) != NULL &&
			      strstr(out, "cannot put dead letters back") != NULL,
		      "rc %d: %s", rc, out);
	free(out);
	rc = cons_ctl(e.c, "dead poison --all", &out);
	ck_assert_msg(rc == 1 && strstr(out, e.queue) != NULL, "rc %d: %s", rc, out);
	free(out);
	dead = dead_letters(&e);
	ck_assert_int_eq(json_object_array_length(dead), 1);
	json_object_put(dead);
	ck_assert_int_eq(applied(&e), 0);

	/* the consumer declares its queue again: the letter goes back, once */
	cons_start(e.c);
	rc = cons_ctl(e.c, "dead poison --all", &out);
	ck_assert_msg(rc == 0 && strstr(out, "1 dead letter put back") != NULL, "%s", out);
	free(out);
	wait_applied(&e, 1);
	check_applied(&e, NULL, 1);
	dead = dead_letters(&e);
	ck_assert_int_eq(json_object_array_length(dead), 0);
	json_object_put(dead);
	ck_assert_int_eq(cons_stop(e.c), 0);
	free(fix);
	env_fini(&e);
}
END_TEST

/* A handler aborts the process on one event: restarted each time (as
 * systemd would), the consumer gets it again until the queue's delivery
 * limit dead-letters it; the other streams are all applied meanwhile. */
START_TEST(crashing_event_dead_lettered_after_delivery_limit)
{
	struct env e;
	char *fix, data[300], stream[32], *out = NULL;
	struct json_object *dead;
	int upto[3] = { 4, 2, 4 };
	int restarts = 0, rc;
	long long deadline;

	env_init(&e, "delivery_limit = 2\n");
	fix = fix_path(&e, "fixed");
	cons_start(e.c);
	for (int v = 1; v <= 4; v++)
		for (int k = 1; k <= 3; k++) {
			snprintf(stream, sizeof(stream), "poison-%d", k);
			if (k == 2 && v == 3)
				snprintf(data, sizeof(data), "{\"abort\":\"%s\"}", fix);
			else
				snprintf(data, sizeof(data), "{}");
			cons_append(e.conninfo, stream, "Happened", data);
		}
	env_tracker(&e);
	/* poison-2 v3 aborts; v4 fetches v3 as missing and aborts too: both
	 * end dead-lettered by RabbitMQ */
	deadline = proc_now_ms() + 60000;
	for (;;) {
		struct json_object *d;
		size_t n;

		if (!cons_running(e.c)) {
			ck_assert_int_eq(cons_wait_exit(e.c, 0), 128 + SIGABRT);
			restarts++;
			cons_spawn(e.c);
		}
		d = dead_letters(&e);
		n = json_object_array_length(d);
		json_object_put(d);
		if (n >= 2 && cons_running(e.c) && applied(&e) >= 10)
			break;
		ck_assert_msg(proc_now_ms() < deadline, "after %d restarts: %zu dead letters, %lld "
							"applied",
			      restarts, n, applied(&e));
		usleep(100 * 1000);
	}
	ck_assert_int_ge(restarts, 3);
	wait_applied(&e, 10);
	check_applied(&e, upto, 3);
	dead = wait_dead(&e, 2);
	for (int i = 0; i < 2; i++) {
		struct json_object *o = json_object_array_get_idx(dead, (size_t)i);

		ck_assert_str_eq(jstr(o, "stream"), "poison-2");
		ck_assert_msg(strstr(jstr(o, "reason"), "delivery limit") != NULL, "reason: %s",
			      jstr(o, "reason"));
	}
	json_object_put(dead);
	/* the text listing shows it too */
	rc = cons_ctl(e.c, "dead poison", &out);
	ck_assert_msg(rc == 0 && strstr(out, "delivery limit") != NULL &&
			      strstr(out, "2 dead letters") != NULL,
		      "%s", out);
	free(out);

	fixture_touch(fix);
	rc = cons_ctl(e.c, "dead poison --all", &out);
	ck_assert_msg(rc == 0, "%s", out);
	free(out);
	wait_applied(&e, 12);
	check_applied(&e, NULL, 3);
	ck_assert_int_eq(cons_stop(e.c), 0);
	free(fix);
	env_fini(&e);
}
END_TEST

/* A handler asks for retries: the event is held and handled again after
 * a backoff, while the other streams go on; applied once in the end. */
START_TEST(retry_after_backoff_others_flow)
{
	struct env e;
	char stream[32];
	long long t0;

	env_init(&e, "retry_backoff = 300ms\n");
	cons_start(e.c);
	env_tracker(&e);
	t0 = proc_now_ms();
	/* poison-2 ends with the event that asks for retries: its only later
	 * attempts are the consumer's */
	for (int v = 1; v <= 3; v++)
		for (int k = 1; k <= 3; k++) {
			if (k == 2 && v == 3)
				continue;
			snprintf(stream, sizeof(stream), "poison-%d", k);
			cons_append(e.conninfo, stream, "Happened",
				    k == 2 && v == 2 ? "{\"retry\":3}" : "{}");
		}
	/* the others first (7 events), without waiting for the retries */
	ck_assert_int_eq(cons_wait_query(e.conninfo,
					 "SELECT count(*) FROM poison_applied WHERE stream <> 'poison-2' "
					 "OR version = 1",
					 7, WAIT_MS),
			 7);
	wait_applied(&e, 8);
	/* 300 + 600 + 1200 ms of backoff */
	ck_assert_int_ge(proc_now_ms() - t0, 2000);
	/* and the held event was applied after every other one, those that
	 * came after it in the queue included: nothing waited behind it */
	ck_assert_int_eq(cons_query_int(e.conninfo,
					"SELECT count(*) FROM poison_applied WHERE seq > (SELECT seq "
					"FROM poison_applied WHERE stream = 'poison-2' AND version = 2)"),
			 0);
	check_applied(&e, NULL, 3);
	ck_assert_int_eq(cons_log_count(e.c, "retry 3 of poison-2 version 2"), 1);
	ck_assert_int_eq(cons_stop(e.c), 0);
	env_fini(&e);
}
END_TEST

/* SIGTERM while handling: the events in hand are finished and acked, the
 * exit is 0, and a restart goes on without a double. From the third event
 * on, the handler waits on a barrier the test opens only after the
 * SIGTERM, so the signal finds an event in hand. */
START_TEST(sigterm_finishes_in_hand_and_exits_zero)
{
	struct env e;
	char stream[32], data[300], held[300], *barrier;
	long long n;

	env_init(&e, "batch_size = 1\nprefetch = 2\n");
	barrier = fix_path(&e, "barrier");
	snprintf(data, sizeof(data), "{\"wait\":\"%s\"}", barrier);
	cons_start(e.c);
	/* all ten stored before the tracker starts: the consumer's transaction
	 * held open by the barrier would otherwise hold back the tracker's
	 * publishing of the events appended after it began */
	for (int v = 1; v <= 10; v++) {
		snprintf(stream, sizeof(stream), "poison-%d", 1 + v % 2);
		cons_append(e.conninfo, stream, "Happened", v <= 2 ? "{}" : data);
	}
	env_tracker(&e);
	ck_assert_int_ge(cons_wait_query(e.conninfo, "SELECT count(*) FROM poison_applied", 2,
					 WAIT_MS),
			 2);
	/* all published: two applied, two in hand (prefetch), six ready; and
	 * the third is in its handler */
	ck_assert_int_eq(cons_wait_queue_depth(e.queue, 6, WAIT_MS), 6);
	snprintf(held, sizeof(held), "%s.held", barrier);
	ck_assert_msg(fixture_wait_file(held, WAIT_MS), "no event reached its handler");
	cons_signal(e.c, SIGTERM);
	fixture_touch(barrier);
	ck_assert_int_eq(cons_wait_exit(e.c, WAIT_MS), 0);
	ck_assert(cons_log_count(e.c, "stopping: handled") == 1);
	n = applied(&e);
	ck_assert_int_lt(n, 10);
	/* nothing committed stays unacked: the queue holds exactly the rest */
	ck_assert_int_eq(cons_wait_queue_depth(e.queue, 10 - n, WAIT_MS), 10 - n);
	cons_start(e.c);
	wait_applied(&e, 10);
	check_applied(&e, NULL, 2);
	ck_assert_int_eq(cons_stop(e.c), 0);
	free(barrier);
	env_fini(&e);
}
END_TEST

/* A body that is not an envelope, or an envelope of an event that is not in
 * this store (another store's tracker on the same exchange), is
 * dead-lettered at once; real events go on. */
START_TEST(garbage_message_dead_lettered)
{
	struct env e;
	struct json_object *dead, *data = json_object_new_object();
	struct cqrs_event *alien;
	struct store *st = NULL;
	struct store_events evs = { 0 };
	struct cqrs_err err = { 0 };
	char *body;

	env_init(&e, NULL);
	cons_start(e.c);
	cons_publish(e.queue, "{not json", "00000000-0000-4000-8000-000000000001", "Garbage",
		     "poison-9", 1, 1);
	cons_publish(e.queue, "{}", "00000000-0000-4000-8000-000000000002", "Garbage", "poison-9",
		     1, 1);
	alien = cqrs_event_new("00000000-0000-4000-8000-000000000003", "poison-1", 1, 1, "Happened",
			       data, NULL, "2026-11-26T05:20:49.123456Z");
	body = cqrs_envelope_encode(alien);
	cons_publish(e.queue, body, alien->id, alien->type, alien->stream, 1, 1);
	free(body);
	/* and the store's own poison-1 version 1, which is applied */
	cons_append(e.conninfo, "poison-1", "Happened", "{}");
	ck_assert_int_eq(cqrs_store_connect(e.conninfo, &st, &err), 0);
	ck_assert_int_eq(cqrs_store_read_all(st, &STORE_CHECKPOINT_START, 10, &evs, &err), 0);
	body = cqrs_envelope_encode(evs.ev[0]);
	cons_publish(e.queue, body, evs.ev[0]->id, evs.ev[0]->type, evs.ev[0]->stream, 1,
		     evs.ev[0]->position);
	free(body);
	dead = wait_dead(&e, 3);
	ck_assert_msg(strstr(jstr(json_object_array_get_idx(dead, 0), "reason"),
			     "not an event envelope") != NULL,
		      "%s", jstr(json_object_array_get_idx(dead, 0), "reason"));
	ck_assert_int_eq(jint(json_object_array_get_idx(dead, 0), "version"), 1);
	ck_assert_msg(strstr(jstr(json_object_array_get_idx(dead, 2), "reason"),
			     "is not in this store") != NULL,
		      "%s", jstr(json_object_array_get_idx(dead, 2), "reason"));
	json_object_put(dead);
	cons_poison_wait(e.c, e.conninfo, 1);
	check_applied(&e, NULL, 1);
	ck_assert_int_eq(cons_stop(e.c), 0);
	cqrs_event_free(alien);
	json_object_put(data);
	cqrs_store_events_clear(&evs);
	cqrs_store_free(st);
	env_fini(&e);
}
END_TEST

/* from = now: history is neither caught up nor fetched as missing. */
START_TEST(from_now_skips_history)
{
	struct env e;
	env_init(&e, "from = now\n");
	for (int k = 1; k <= 2; k++)
		for (int v = 1; v <= 3; v++)
			cons_append(e.conninfo, k == 1 ? "poison-1" : "poison-2", "Happened", "{}");
	/* history already published, to no queue of ours */
	env_tracker(&e);
	ck_assert_int_eq(cons_wait_query(e.conninfo, "SELECT max(position) FROM cqrs.checkpoints",
					 6, WAIT_MS),
			 6);
	cons_start(e.c);
	ck_assert_int_eq(cons_log_count(e.c, "catching up"), 0);
	/* new events of an old stream: versions 4 and 5 only */
	cons_append(e.conninfo, "poison-1", "Happened", "{}");
	cons_append(e.conninfo, "poison-1", "Happened", "{}");
	cons_poison_wait(e.c, e.conninfo, 2);
	usleep(300 * 1000);
	ck_assert_int_eq(applied(&e), 2);
	ck_assert_int_eq(cons_query_int(e.conninfo, "SELECT min(version) FROM poison_applied"), 4);
	ck_assert_int_eq(cons_stop(e.c), 0);
	env_fini(&e);
}
END_TEST

/* A delivery whose id, stream and version are a stored event's but whose
 * type, data and metadata were edited on the way: the handler gets the
 * store's copy, never the delivered one. */
START_TEST(edited_message_applies_store_copy)
{
	struct env e;
	struct store *st = NULL;
	struct store_events evs = { 0 };
	struct cqrs_err err = { 0 };
	struct cqrs_event *forged;
	struct json_object *data, *meta;
	char *body;

	env_init(&e, NULL);
	cons_start(e.c);
	cons_append(e.conninfo, "poison-1", "Happened", "{\"amount\":1}");
	ck_assert_int_eq(cqrs_store_connect(e.conninfo, &st, &err), 0);
	ck_assert_int_eq(cqrs_store_read_stream(st, "poison-1", 1, 1, &evs, &err), 0);
	ck_assert_int_eq(evs.n, 1);
	data = json_tokener_parse("{\"amount\":1000000}");
	meta = json_tokener_parse("{\"correlation_id\":\"forged\"}");
	forged = cqrs_event_new(evs.ev[0]->id, "poison-1", 1, evs.ev[0]->position, "Forged", data,
				meta, evs.ev[0]->recorded_at);
	ck_assert_ptr_nonnull(forged);
	body = cqrs_envelope_encode(forged);
	cons_publish(e.queue, body, forged->id, forged->type, forged->stream, 1,
		     forged->position);
	free(body);
	cons_poison_wait(e.c, e.conninfo, 1);
	ck_assert_int_eq(cons_query_int(e.conninfo,
					"SELECT count(*) FROM poison_applied WHERE stream = 'poison-1' "
					"AND version = 1 AND type = 'Happened' "
					"AND data = '{\"amount\":1}'::jsonb"),
			 1);
	ck_assert_msg(cons_wait_log(e.c, "differs from the store's", 1, WAIT_MS),
		      "no warning about the edited delivery");
	ck_assert_int_eq(cons_stop(e.c), 0);
	cqrs_event_free(forged);
	json_object_put(data);
	json_object_put(meta);
	cqrs_store_events_clear(&evs);
	cqrs_store_free(st);
	env_fini(&e);
}
END_TEST

/* A handler that COMMITs or ROLLBACKs the consumer's transaction breaks
 * exactly-once: the event is not recorded as handled and is dead-lettered
 * with a reason naming the handler; later events go on. */
START_TEST(handler_ending_transaction_is_an_error)
{
	struct env e;
	struct json_object *dead;

	env_init(&e, NULL);
	cons_start(e.c);
	cons_append(e.conninfo, "poison-1", "Happened", "{\"commit\":true}");
	cons_append(e.conninfo, "poison-2", "Happened", "{\"rollback\":true}");
	cons_append(e.conninfo, "poison-3", "Happened", "{}");
	/* one at a time, so that no other event shares their transaction */
	publish_stored(&e, "poison-1", 1);
	json_object_put(wait_dead(&e, 1));
	publish_stored(&e, "poison-2", 1);
	dead = wait_dead(&e, 2);
	for (size_t i = 0; i < 2; i++) {
		struct json_object *o = json_object_array_get_idx(dead, i);

		ck_assert_str_eq(jstr(o, "stream"), i == 0 ? "poison-1" : "poison-2");
		ck_assert_msg(strstr(jstr(o, "reason"), "handler \"poison.*\" of group \"poison\"") !=
				      NULL &&
				      strstr(jstr(o, "reason"), i == 0 ? "committed" : "rolled back") !=
					      NULL,
			      "reason: %s", jstr(o, "reason"));
	}
	json_object_put(dead);
	ck_assert_int_eq(cons_log_count(e.c, "dead-lettered poison-1 version 1"), 1);
	ck_assert_int_eq(cons_log_count(e.c, "dead-lettered poison-2 version 1"), 1);
	publish_stored(&e, "poison-3", 1);
	ck_assert_int_eq(cons_wait_query(e.conninfo,
					 "SELECT count(*) FROM poison_applied WHERE stream = 'poison-3'",
					 1, WAIT_MS),
			 1);
	/* neither is recorded as handled; the rolled-back one left nothing (the
	 * one that committed did commit its own row: that is its doing) */
	ck_assert_int_eq(cons_query_int(e.conninfo,
					"SELECT coalesce(max(version), 0) FROM cqrs.consumer_streams "
					"WHERE consumer = 'poison' AND stream IN ('poison-1', 'poison-2')"),
			 0);
	ck_assert_int_eq(cons_query_int(e.conninfo,
					"SELECT count(*) FROM poison_applied WHERE stream = 'poison-2'"),
			 0);
	ck_assert_int_eq(cons_query_int(e.conninfo,
					"SELECT version FROM cqrs.consumer_streams "
					"WHERE consumer = 'poison' AND stream = 'poison-3'"),
			 1);
	ck_assert_int_eq(cons_queue_depth(e.queue), 0);
	ck_assert_int_eq(cons_stop(e.c), 0);
	env_fini(&e);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("consumer_delivery");
	TCase *tc = tcase_create("delivery");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, duplicates_and_out_of_order_applied_once_in_order);
	tcase_add_test(tc, failing_event_dead_lettered_then_retried);
	tcase_add_test(tc, dead_letter_unroutable_is_not_acked);
	tcase_add_test(tc, crashing_event_dead_lettered_after_delivery_limit);
	tcase_add_test(tc, retry_after_backoff_others_flow);
	tcase_add_test(tc, sigterm_finishes_in_hand_and_exits_zero);
	tcase_add_test(tc, garbage_message_dead_lettered);
	tcase_add_test(tc, from_now_skips_history);
	suite_add_tcase(s, tc);
	tc = tcase_create("dead_put_back");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, dead_put_back_needs_its_queue);
	suite_add_tcase(s, tc);
	/* what a handler is given, and what it may do with the transaction */
	tc = tcase_create("handler_contract");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, edited_message_applies_store_copy);
	tcase_add_test(tc, handler_ending_transaction_is_an_error);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(suite());
	int failed;

	(void)fixture_broker_url();	/* start the node once, here, if needed */
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

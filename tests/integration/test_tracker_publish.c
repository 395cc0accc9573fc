/*
 * test_tracker_publish.c - cqrs-tracker against real PostgreSQL and RabbitMQ:
 * what it publishes, in which order, when, and what it reports.
 *
 * Every test has its own database and its own stream prefix (its aggregate
 * type); a collector queue bound to "#" on cqrs.events receives what is
 * published and rabbit_check_store() compares it with the store.
 */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "config.h"
#include "fixture.h"
#include "proc.h"
#include "rabbit.h"
#include "scrape.h"
#include "store.h"
#include "../../tracker/tracker.h"
#include "../../tracker/tracker_int.h"
#include "uuid.h"

#define WAIT_MS 30000

struct env {
	char *conninfo;
	char prefix[48];		/* aggregate type: streams are PREFIX-N */
	struct rabbit_collector *col;
};

static void
env_init(struct env *e)
{
	e->conninfo = fixture_db_new(true);
	snprintf(e->prefix, sizeof(e->prefix), "p%d%ld", (int)getpid(), random() % 1000000);
	e->col = rabbit_collector_new(NULL, "#");
}

static void
env_fini(struct env *e)
{
	rabbit_collector_free(e->col);
	free(e->conninfo);
}

static struct proc *
tracker_proc(const struct env *e)
{
	struct proc *p = proc_new("cqrs-tracker");

	proc_set(p, "store", "conninfo", "%s", e->conninfo);
	proc_set(p, "broker", "url", "%s", fixture_broker_url());
	proc_set(p, "tracker", "poll_ms", "200");
	return p;
}

static struct store *
open_store(const char *conninfo)
{
	struct store *st = NULL;
	struct cqrs_err err = { 0 };

	if (cqrs_store_connect(conninfo, &st, &err) < 0)
		ck_abort_msg("store: %s", err.msg);
	return st;
}

/* Appends n events (one append) to PREFIX-k. */
static void
append_n(struct store *st, const struct env *e, int k, int n)
{
	struct store_event_in in[16];
	char data[16][48], stream[96];
	struct store_append_result r;
	struct cqrs_err err = { 0 };

	ck_assert_int_le(n, 16);
	snprintf(stream, sizeof(stream), "%s-%d", e->prefix, k);
	for (int i = 0; i < n; i++) {
		snprintf(data[i], sizeof(data[i]), "{\"k\":%d,\"i\":%d}", k, i);
		in[i] = (struct store_event_in){ .type = i % 2 ? "Credited" : "Debited",
						 .data = data[i] };
	}
	if (cqrs_store_append(st, stream, STORE_ANY, in, (size_t)n, NULL, &r, &err) < 0)
		ck_abort_msg("append %s: %s", stream, err.msg);
	cqrs_store_append_result_clear(&r);
}

static long long
count_events(const char *conninfo)
{
	PGconn *pg = fixture_connect(conninfo);
	long long n = fixture_query_int(pg, "SELECT count(*) FROM cqrs.events");

	PQfinish(pg);
	return n;
}

static void
check(struct env *e, struct rabbit_check *chk)
{
	size_t want = (size_t)count_events(e->conninfo);
	size_t got = rabbit_collector_wait(e->col, e->prefix, want, WAIT_MS);

	ck_assert_msg(got == want, "received %zu of %zu events", got, want);
	rabbit_collector_drain(e->col, 300);
	chk->prefix = e->prefix;
	rabbit_check_store(e->col, e->conninfo, chk);
}

/* ---- tests ------------------------------------------------------------------------ */

START_TEST(every_committed_event_once_in_order)
{
	struct env e;
	struct store *st;
	struct proc *p;
	PGconn *pg;
	struct rabbit_check chk = { 0 };

	env_init(&e);
	st = open_store(e.conninfo);
	/* some before the tracker starts, some while it runs */
	for (int k = 0; k < 10; k++)
		append_n(st, &e, k, 1 + k % 4);
	p = tracker_proc(&e);
	proc_set(p, "tracker", "batch_size", "7");	/* many batches */
	proc_start(p);
	ck_assert(proc_wait_log(p, "active:", 1, 10000));

	pg = fixture_connect(e.conninfo);
	for (int round = 0; round < 20; round++) {
		char sql[512];
		for (int k = 0; k < 10; k++)
			append_n(st, &e, k, 1 + (k + round) % 5);
		/* a rolled-back append: its events must never appear */
		snprintf(sql, sizeof(sql),
			 "BEGIN; SELECT * FROM cqrs.append('%s-rb%d', -1, NULL, "
			 "jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'Ghost', "
			 "'data', '{}'::jsonb))); ROLLBACK", e.prefix, round);
		fixture_exec(pg, sql);
	}
	/* a refused append (version conflict) writes nothing either */
	{
		struct store_event_in in = { .type = "Ghost", .data = "{}" };
		struct store_append_result r;
		struct cqrs_err err = { 0 };
		char stream[96];
		snprintf(stream, sizeof(stream), "%s-0", e.prefix);
		ck_assert_int_eq(cqrs_store_append(st, stream, 1, &in, 1, NULL, &r, &err), CQRS_ECONFLICT);
		cqrs_store_append_result_clear(&r);
	}

	check(&e, &chk);
	ck_assert_int_gt(chk.events, 400);
	ck_assert_int_eq(chk.duplicates, 0);

	/* the checkpoint is the last event, in commit-safe order */
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(*) FROM cqrs.checkpoints c, "
					       "(SELECT xid, position FROM cqrs.events ORDER BY xid DESC, "
					       "position DESC LIMIT 1) l WHERE c.name = 'tracker' AND "
					       "c.xid = l.xid AND c.position = l.position"),
			 1);
	/* STATUS came, with the checkpoint */
	ck_assert(proc_wait_notified(p, "READY=1", 5000));
	ck_assert_int_eq(proc_stop(p), 0);
	ck_assert(proc_log_contains(p, "stopping:"));
	ck_assert(proc_wait_notified(p, "STOPPING=1", 5000));
	PQfinish(pg);
	cqrs_store_free(st);
	proc_free(p);
	env_fini(&e);
}
END_TEST

/* Bodies are cqrs_envelope_encode()'s bytes whatever the data holds. */
START_TEST(bodies_are_the_envelope)
{
	static const char *const datas[] = {
		"{\"s\":\"quote\\\" backslash\\\\ slash/ nl\\n tab\\t ctrl\\u0001 del\x7f "
		"\xc3\xa9 \xe6\x97\xa5\\u00e9\",\"n\":-12,\"f\":1.50,\"e\":1e3,\"z\":-0.0,"
		"\"big\":9007199254740993,\"nested\":{\"a\":[1, 2,{\"b\":null}],\"t\":true,"
		"\"f\":false},\"empty\":{},\"arr\":[],\"sp ace\":\" a , b : c \"}",
		"{}",
		"{\"k\":[[],[{}],\"\\\"\"]}",
	};
	struct env e;
	struct store *st;
	struct proc *p;
	struct rabbit_check chk = { 0 };

	env_init(&e);
	st = open_store(e.conninfo);
	for (size_t i = 0; i < sizeof(datas) / sizeof(datas[0]); i++) {
		struct store_event_in in = { .type = "Odd.Type-1:x", .data = datas[i],
					     .metadata = "{\"correlation_id\":\"c\",\"we\\\"ird\":[1.25]}" };
		struct store_append_result r;
		struct cqrs_err err = { 0 };
		char stream[128];

		snprintf(stream, sizeof(stream), "%s-\xc3\xbc/\"q\\%zu", e.prefix, i);
		if (cqrs_store_append(st, stream, STORE_ANY, &in, 1, NULL, &r, &err) < 0)
			ck_abort_msg("append %zu: %s", i, err.msg);
		cqrs_store_append_result_clear(&r);
	}
	p = tracker_proc(&e);
	proc_start(p);
	check(&e, &chk);
	ck_assert_int_eq(chk.events, 3);
	ck_assert_int_eq(proc_stop(p), 0);
	proc_free(p);
	cqrs_store_free(st);
	env_fini(&e);
}
END_TEST

/*
 * Commit-safe order is numeric on xid: 995 before 1001, 99999 before
 * 100000 (sorted as text they would not be). Rows with such xids are written
 * directly (the column is a plain one; real ones come from
 * pg_current_xact_id()).
 */
START_TEST(read_order_is_numeric)
{
	long long xids[12], now;
	int n = 0;
	struct env e;
	PGconn *pg;
	PGresult *res;
	struct proc *p;
	struct rabbit_check chk = { 0 };
	const char *params[3] = { "0", "0", "100" };
	char sql[512];

	env_init(&e);
	pg = fixture_connect(e.conninfo);
	/* past xid 1100 at least (a fresh cluster starts below 1000) */
	while ((now = fixture_query_int(pg, "SELECT pg_current_xact_id()::text::bigint")) < 1100)
		;
	/* around every power of ten below the current xid */
	for (long long p10 = 1000; p10 + 10 < now && n + 2 <= 12; p10 *= 10) {
		xids[n++] = p10 - 5;
		xids[n++] = p10 + 1;
	}
	for (int i = n - 1; i >= 0; i--) {	/* positions in the opposite order */
		snprintf(sql, sizeof(sql), "INSERT INTO cqrs.events (stream, version, id, type, data, xid) "
			 "VALUES ('%s-1', %d, gen_random_uuid(), 'T', '{}', '%lld')", e.prefix, i + 1,
			 xids[i]);
		fixture_exec(pg, sql);
	}
	res = PQexecParams(pg, pipeline_read_sql, 3, NULL, params, NULL, NULL, 0);
	ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
	ck_assert_int_eq(PQntuples(res), n);
	for (int i = 0; i < n; i++)
		ck_assert_int_eq(strtoll(PQgetvalue(res, i, 8), NULL, 10), xids[i]);
	PQclear(res);
	/* and the tracker publishes them in that order, two at a time */
	p = tracker_proc(&e);
	proc_set(p, "tracker", "batch_size", "2");
	proc_start(p);
	check(&e, &chk);
	ck_assert_int_eq(chk.events, n);
	ck_assert_int_eq(proc_stop(p), 0);
	proc_free(p);
	PQfinish(pg);
	env_fini(&e);
}
END_TEST

/* ---- concurrent writers, transactions held open ------------------------------------------ */

struct writer {
	const struct env *e;
	int id;
	int appends;
	volatile int *stop;
};

static void *
writer_main(void *arg)
{
	struct writer *w = arg;
	struct store *st = open_store(w->e->conninfo);

	/* a steady trickle (~130 appends/s per writer) until told to stop */
	for (int i = 0; !*w->stop && i < 5000; i++) {
		append_n(st, w->e, w->id * 100 + i % 7, 1 + i % 3);
		w->appends++;
		usleep(7000);
	}
	cqrs_store_free(st);
	return NULL;
}

START_TEST(concurrent_writers_and_open_transactions)
{
	struct env e;
	struct proc *p;
	PGconn *hold1, *hold2, *hold3;
	pthread_t th[4];
	struct writer w[4];
	volatile int stop = 0;
	struct rabbit_check chk = { 0 };
	char sql[512], *out = NULL, cmd[1024];
	long long held_xid;

	env_init(&e);
	p = tracker_proc(&e);
	proc_set(p, "tracker", "batch_size", "50");
	proc_set(p, "tracker", "lag_warn", "1s");
	proc_set(p, "tracker", "status_interval", "300ms");
	proc_start(p);
	ck_assert(proc_wait_log(p, "active:", 1, 10000));

	for (int i = 0; i < 4; i++) {
		w[i] = (struct writer){ .e = &e, .id = i, .stop = &stop };
		ck_assert_int_eq(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
	}
	/* Three transactions that take a transaction id and stay open while the
	 * writers go on: one commits after 2.5 s, one rolls back, one commits
	 * last. Events committed after them must wait, not be skipped. */
	hold1 = fixture_connect(e.conninfo);
	hold2 = fixture_connect(e.conninfo);
	hold3 = fixture_connect(e.conninfo);
	usleep(300000);
	snprintf(sql, sizeof(sql), "BEGIN; SELECT * FROM cqrs.append('%s-held1', -1, NULL, "
		 "jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'Late', "
		 "'data', '{\"n\":1}'::jsonb)))", e.prefix);
	fixture_exec(hold1, sql);
	snprintf(sql, sizeof(sql), "BEGIN; SELECT * FROM cqrs.append('%s-held2', -1, NULL, "
		 "jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'Ghost', "
		 "'data', '{}'::jsonb)))", e.prefix);
	fixture_exec(hold2, sql);
	snprintf(sql, sizeof(sql), "BEGIN; SELECT pg_current_xact_id()");
	fixture_exec(hold3, sql);
	held_xid = fixture_query_int(hold1, "SELECT pg_current_xact_id()::text::bigint");
	ck_assert_int_lt(held_xid, fixture_query_int(hold2, "SELECT pg_current_xact_id()::text::bigint"));
	sleep(2);

	/* while they are open: lag is reported, with the blocking transaction */
	snprintf(cmd, sizeof(cmd), "CQRS_STORE_CONNINFO='%s' %s status", e.conninfo,
		 fixture_bin("cqrsctl"));
	ck_assert_int_eq(fixture_run(cmd, &out), 0);
	ck_assert_msg(strstr(out, "held back") != NULL && strstr(out, "open for") != NULL, "%s", out);
	free(out);
	ck_assert(proc_wait_log(p, "held back by a transaction open for", 1, 5000));
	ck_assert(proc_wait_notified(p, "held back by a transaction", 5000));
	/* and nothing committed after the oldest open transaction was published:
	 * every event received so far is older than it */
	{
		size_t n, len = 0;
		const struct rabbit_msg *m;
		char *ids, *q;
		const char *params[2];
		char xminbuf[32];
		PGconn *pg = fixture_connect(e.conninfo);
		PGresult *res;

		rabbit_collector_drain(e.col, 300);
		m = rabbit_collector_msgs(e.col, &n);
		ids = malloc(n * 40 + 3);
		ck_assert_ptr_nonnull(ids);
		ids[len++] = '{';
		for (size_t i = 0; i < n; i++)
			if (strncmp(m[i].stream, e.prefix, strlen(e.prefix)) == 0)
				len += (size_t)sprintf(ids + len, "%s%s", len > 1 ? "," : "", m[i].message_id);
		ids[len++] = '}';
		ids[len] = '\0';
		snprintf(xminbuf, sizeof(xminbuf), "%lld", held_xid);
		params[0] = ids;
		params[1] = xminbuf;
		q = "SELECT count(*), (SELECT count(*) FROM cqrs.events WHERE xid >= $2::xid8) "
		    "FROM cqrs.events WHERE id = ANY($1::uuid[]) AND xid >= $2::xid8";
		res = PQexecParams(pg, q, 2, NULL, params, NULL, NULL, 0);
		ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
		ck_assert_msg(strcmp(PQgetvalue(res, 0, 0), "0") == 0,
			      "%s events younger than the open transaction were published",
			      PQgetvalue(res, 0, 0));
		/* (while writers committed plenty after it) */
		ck_assert_msg(atoi(PQgetvalue(res, 0, 1)) > 10, "only %s events after it",
			      PQgetvalue(res, 0, 1));
		PQclear(res);
		PQfinish(pg);
		free(ids);
	}

	fixture_exec(hold1, "COMMIT");
	fixture_exec(hold2, "ROLLBACK");
	usleep(500000);
	fixture_exec(hold3, "COMMIT");
	usleep(500000);
	stop = 1;
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);

	check(&e, &chk);
	ck_assert_int_eq(chk.duplicates, 0);
	ck_assert_int_gt(chk.events, 200);
	ck_assert(proc_wait_log(p, "no more events held back", 1, 5000));
	ck_assert_int_eq(proc_stop(p), 0);
	PQfinish(hold1);
	PQfinish(hold2);
	PQfinish(hold3);
	proc_free(p);
	env_fini(&e);
}
END_TEST

/* ---- wake-ups ------------------------------------------------------------------------ */

START_TEST(notify_wakes_the_tracker)
{
	struct env e;
	struct proc *p;
	struct store *st;
	PGconn *pg;
	long long t0;

	env_init(&e);
	p = tracker_proc(&e);
	proc_set(p, "tracker", "poll_ms", "1h");	/* no polling to speak of */
	proc_start(p);
	ck_assert(proc_wait_log(p, "active:", 1, 10000));
	st = open_store(e.conninfo);
	pg = fixture_connect(e.conninfo);
	usleep(300000);		/* past the first empty polls */
	for (int i = 0; i < 5; i++) {
		t0 = proc_now_ms();
		append_n(st, &e, 1, 1);
		fixture_exec(pg, "NOTIFY cqrs_events");
		ck_assert_uint_eq(rabbit_collector_wait(e.col, e.prefix, (size_t)i + 1, 5000),
				  (size_t)i + 1);
		ck_assert_msg(proc_now_ms() - t0 < 1000, "took %lld ms", proc_now_ms() - t0);
	}
	ck_assert_int_eq(proc_stop(p), 0);
	PQfinish(pg);
	cqrs_store_free(st);
	proc_free(p);
	env_fini(&e);
}
END_TEST

START_TEST(polls_without_notify)
{
	struct env e;
	struct proc *p;
	struct store *st;
	long long t0;

	env_init(&e);
	p = tracker_proc(&e);
	proc_set(p, "tracker", "poll_ms", "300");
	proc_start(p);
	st = open_store(e.conninfo);
	sleep(1);		/* the poll has reached its ceiling */
	t0 = proc_now_ms();
	append_n(st, &e, 1, 3);
	ck_assert_uint_eq(rabbit_collector_wait(e.col, e.prefix, 3, 5000), 3);
	ck_assert_msg(proc_now_ms() - t0 < 1500, "took %lld ms", proc_now_ms() - t0);
	ck_assert_int_eq(proc_stop(p), 0);
	cqrs_store_free(st);
	proc_free(p);
	env_fini(&e);
}
END_TEST

/* ---- SIGTERM -------------------------------------------------------------------------- */

START_TEST(sigterm_finishes_the_batch)
{
	struct env e;
	struct proc *p;
	PGconn *pg;
	char sql[1024];
	struct rabbit_check chk = { 0 };
	long long upto;
	size_t n, mine = 0;
	const struct rabbit_msg *m;

	env_init(&e);
	pg = fixture_connect(e.conninfo);
	/* 30000 events in 30 streams, written in one go */
	snprintf(sql, sizeof(sql),
		 "SELECT count(*) FROM generate_series(0, 29) s, LATERAL cqrs.append('%s-' || s, -1, "
		 "NULL, (SELECT jsonb_agg(jsonb_build_object('id', gen_random_uuid(), 'type', 'Bulk', 'data', "
		 "jsonb_build_object('i', g, 's', s))) FROM generate_series(1, 1000) g))",
		 e.prefix);
	fixture_exec(pg, sql);
	p = tracker_proc(&e);
	proc_set(p, "tracker", "batch_size", "3000");
	proc_set(p, "log", "level", "debug");
	proc_start(p);
	ck_assert(proc_wait_log(p, "published 3000 events", 1, 20000));
	proc_signal(p, SIGTERM);
	ck_assert_int_eq(proc_wait_exit(p, 30000), 0);

	/* what was published is exactly what the checkpoint covers: the batch
	 * in flight was confirmed and checkpointed, no other was started */
	upto = fixture_query_int(pg, "SELECT count(*) FROM cqrs.events e, cqrs.checkpoints c "
				     "WHERE c.name = 'tracker' AND (e.xid, e.position) <= (c.xid, c.position)");
	ck_assert_int_gt(upto, 0);
	ck_assert_int_eq(upto % 3000, 0);
	rabbit_collector_wait(e.col, e.prefix, (size_t)upto, WAIT_MS);
	rabbit_collector_drain(e.col, 500);
	m = rabbit_collector_msgs(e.col, &n);
	for (size_t i = 0; i < n; i++)
		mine += strncmp(m[i].stream, e.prefix, strlen(e.prefix)) == 0;
	ck_assert_int_eq((long long)mine, upto);

	/* a new tracker publishes the rest, and nothing twice */
	proc_set(p, "log", "level", "info");
	proc_start(p);
	check(&e, &chk);
	ck_assert_int_eq(chk.events, 30000);
	ck_assert_int_eq(chk.duplicates, 0);
	ck_assert_int_eq(proc_stop(p), 0);
	PQfinish(pg);
	proc_free(p);
	env_fini(&e);
}
END_TEST

/* WATCHDOG=1 when systemd asks for it (WATCHDOG_USEC), also while standing by */
START_TEST(watchdog_pings)
{
	struct env e;
	struct proc *p;

	env_init(&e);
	p = tracker_proc(&e);
	proc_setenv(p, "WATCHDOG_USEC", "300000");
	proc_start(p);
	ck_assert(proc_wait_notified(p, "WATCHDOG=1", 5000));
	ck_assert_int_eq(proc_stop(p), 0);
	proc_free(p);
	env_fini(&e);
}
END_TEST

/* ---- options and configuration ---------------------------------------------------------- */

static int
run_tracker(const char *conf_text, char **out)
{
	char *dir = fixture_tmpdir(), path[256], cmd[600];
	FILE *f;
	int rc;

	snprintf(path, sizeof(path), "%s/t.conf", dir);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(conf_text, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "env -u CQRS_STORE_CONNINFO -u CQRS_BROKER_URL %s -c %s "
		 "--check-config 2>&1; r=$?; rm -rf %s; exit $r", fixture_bin("cqrs-tracker"), path, dir);
	rc = fixture_run(cmd, out);
	free(dir);
	return rc;
}

START_TEST(options_and_config_check)
{
	char *out = NULL, cmd[600];

	snprintf(cmd, sizeof(cmd), "%s --help", fixture_bin("cqrs-tracker"));
	ck_assert_int_eq(fixture_run(cmd, &out), 0);
	ck_assert_ptr_nonnull(strstr(out, "--check-config"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s --version", fixture_bin("cqrs-tracker"));
	ck_assert_int_eq(fixture_run(cmd, &out), 0);
	ck_assert_ptr_nonnull(strstr(out, "cqrs-tracker "));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s --bogus 2>&1", fixture_bin("cqrs-tracker"));
	ck_assert_int_eq(fixture_run(cmd, &out), 2);
	free(out);

	ck_assert_int_eq(run_tracker("[store]\nconninfo = dbname=x\n[broker]\nurl = amqp://h/\n"
				     "[tracker]\nname = t1\nbatch_size = 100\npoll_ms = 2s\nhttp = 9100\n",
				     &out), 0);
	ck_assert_ptr_nonnull(strstr(out, "configuration ok"));
	free(out);
	/* a typo in [tracker] */
	ck_assert_int_eq(run_tracker("[store]\nconninfo = dbname=x\n[broker]\nurl = amqp://h/\n"
				     "[tracker]\nbatchsize = 100\n", &out), 1);
	ck_assert_msg(strstr(out, "batchsize") != NULL, "%s", out);
	free(out);
	/* no broker.url; a bad one (whose password is not repeated) */
	ck_assert_int_eq(run_tracker("[store]\nconninfo = dbname=x\n", &out), 1);
	ck_assert_msg(strstr(out, "broker.url") != NULL, "%s", out);
	free(out);
	ck_assert_int_eq(run_tracker("[store]\nconninfo = dbname=x\n[broker]\n"
				     "url = amqp://u:sekrit@h:notaport/\n", &out), 1);
	ck_assert_msg(strstr(out, "broker.url") != NULL && strstr(out, "sekrit") == NULL, "%s", out);
	free(out);
	ck_assert_int_eq(run_tracker("[store]\nconninfo = dbname=x\n[broker]\nurl = amqp://h/\n"
				     "[tracker]\nbatch_size = 0\n", &out), 1);
	ck_assert_msg(strstr(out, "batch_size") != NULL, "%s", out);
	free(out);
	ck_assert_int_eq(run_tracker("[broker]\nurl = amqp://h/\n", &out), 1);
	ck_assert_msg(strstr(out, "store.conninfo") != NULL, "%s", out);
	free(out);
}
END_TEST

/* ---- cqrsctl status --------------------------------------------------------------------- */

static char *
ctl_status(const struct env *e, const char *args, int want_rc)
{
	char cmd[1024], *out = NULL;

	snprintf(cmd, sizeof(cmd), "CQRS_STORE_CONNINFO='%s' %s status %s 2>&1", e->conninfo,
		 fixture_bin("cqrsctl"), args);
	ck_assert_int_eq(fixture_run(cmd, &out), want_rc);
	return out;
}

START_TEST(ctl_status_reports)
{
	struct env e;
	struct proc *p;
	struct store *st;
	char *out, needle[128];
	struct json_object *o;

	env_init(&e);
	st = open_store(e.conninfo);
	out = ctl_status(&e, "", 0);
	ck_assert_msg(strstr(out, "checkpoint: 0:0") && strstr(out, "lag: 0 events") &&
		      strstr(out, "active: none"), "%s", out);
	free(out);

	p = tracker_proc(&e);
	proc_start(p);
	for (int k = 0; k < 5; k++)
		append_n(st, &e, k, 2);
	ck_assert_uint_eq(rabbit_collector_wait(e.col, e.prefix, 10, WAIT_MS), 10);
	usleep(200000);
	out = ctl_status(&e, "", 0);
	snprintf(needle, sizeof(needle), ":%d", (int)proc_pid(p));
	ck_assert_msg(strstr(out, "lag: 0 events") && strstr(out, "cqrs-tracker@") &&
		      strstr(out, needle) && strstr(out, "position 10"), "%s", out);
	free(out);
	ck_assert_int_eq(proc_stop(p), 0);

	/* stopped: 3 more events wait */
	append_n(st, &e, 9, 3);
	out = ctl_status(&e, "--json", 0);
	o = json_tokener_parse(out);
	ck_assert_msg(o != NULL, "%s", out);
	ck_assert_int_eq(json_object_get_int64(json_object_object_get(o, "lag_events")), 3);
	ck_assert(json_object_get_double(json_object_object_get(o, "lag_seconds")) >= 0);
	ck_assert_int_eq(json_object_get_int64(json_object_object_get(o, "position")), 10);
	ck_assert_str_eq(json_object_get_string(json_object_object_get(o, "name")), "tracker");
	ck_assert(json_object_is_type(json_object_object_get(o, "active"), json_type_null));
	json_object_put(o);
	free(out);

	/* another tracker name, and usage errors */
	out = ctl_status(&e, "--name other", 0);
	ck_assert_msg(strstr(out, "lag: 13 events"), "%s", out);
	free(out);
	out = ctl_status(&e, "--bogus", 2);
	free(out);
	cqrs_store_free(st);
	proc_free(p);
	env_fini(&e);
}
END_TEST

/* Rows read from cqrs.events so far, as the statistics count them (index
 * entries and sequential reads, every session); this session's own reads
 * are flushed first. */
static long long
events_rows_read(PGconn *pg)
{
	fixture_exec(pg, "SELECT pg_stat_force_next_flush()");
	return fixture_query_int(pg, "SELECT coalesce(sum(i.idx_tup_read), 0) + "
				     "(SELECT coalesce(t.seq_tup_read, 0) FROM pg_stat_user_tables t "
				     " WHERE t.relid = 'cqrs.events'::regclass) "
				     "FROM pg_stat_user_indexes i WHERE i.relid = 'cqrs.events'::regclass");
}

/*
 * cqrs.tracker_status reads a bounded number of events whatever the
 * backlog: it counts up to its limit (10000 by default) and estimates
 * beyond; the tracker's status query, and `cqrsctl status`, stay cheap after
 * a long broker outage.
 */
START_TEST(status_is_bounded)
{
	struct env e;
	PGconn *pg, *holder;
	PGresult *res;
	long long before, read;
	char *out;
	struct json_object *o;

	env_init(&e);
	pg = fixture_connect(e.conninfo);
	fixture_exec(pg, "SET stats_fetch_consistency = none");
	/* no ANALYZE of ours among the reads counted */
	fixture_exec(pg, "ALTER TABLE cqrs.events SET (autovacuum_enabled = false)");
	/* (the subquery names s, so it runs, with new ids, for every stream) */
	fixture_exec(pg, "SELECT count(*) FROM generate_series(1, 11) s, LATERAL cqrs.append("
			 "'b-' || s, -1, NULL, (SELECT jsonb_agg(jsonb_build_object('id', "
			 "gen_random_uuid(), 'type', 'Bulk', 'data', jsonb_build_object('s', s, 'i', g))) "
			 "FROM generate_series(1, 1000) g))");
	/* an open transaction older than the last 30 holds them back */
	holder = fixture_connect(e.conninfo);
	fixture_exec(holder, "BEGIN");
	fixture_exec(holder, "SELECT pg_current_xact_id()");
	fixture_exec(pg, "SELECT count(*) FROM cqrs.append('late-1', -1, NULL, (SELECT jsonb_agg("
			 "jsonb_build_object('id', gen_random_uuid(), 'type', 'Late', 'data', '{}'::jsonb)) "
			 "FROM generate_series(1, 30)))");

	/* a limit of 10: at most 2 x 11 index entries and the last position */
	before = events_rows_read(pg);
	res = PQexec(pg, "SELECT lag_events, lag_exact::int, held_events "
			 "FROM cqrs.tracker_status('tracker', 10)");
	ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
	read = events_rows_read(pg) - before;
	ck_assert_str_eq(PQgetvalue(res, 0, 0), "11030");	/* the estimate: no gaps here */
	ck_assert_str_eq(PQgetvalue(res, 0, 1), "0");
	ck_assert_str_eq(PQgetvalue(res, 0, 2), "11");		/* more than 10 */
	PQclear(res);
	ck_assert_msg(read <= 2 * 11 + 4, "tracker_status read %lld rows of 11030", read);

	/* the default limit, as the tracker and cqrsctl call it */
	before = events_rows_read(pg);
	ck_assert_int_eq(fixture_query_int(pg, "SELECT lag_events FROM cqrs.tracker_status('tracker')"),
			 11030);
	read = events_rows_read(pg) - before;
	ck_assert_msg(read <= 2 * (STORE_TRACKER_STATUS_LIMIT + 1) + 4,
		      "tracker_status read %lld rows of 11030", read);
	ck_assert_int_eq(fixture_query_int(pg, "SELECT lag_exact::int FROM cqrs.tracker_status('tracker')"), 0);
	ck_assert_int_eq(fixture_query_int(pg, "SELECT held_events FROM cqrs.tracker_status('tracker')"), 30);
	/* within the limit, counted */
	ck_assert_int_eq(fixture_query_int(pg, "SELECT lag_events FROM cqrs.tracker_status('tracker', 20000)"),
			 11030);
	ck_assert_int_eq(fixture_query_int(pg, "SELECT lag_exact::int FROM cqrs.tracker_status('tracker', 20000)"),
			 1);

	out = ctl_status(&e, "", 0);
	ck_assert_msg(strstr(out, "lag: about 11030 events (more than 10000") != NULL &&
		      strstr(out, "held back: 30 of them") != NULL, "%s", out);
	free(out);
	out = ctl_status(&e, "--json", 0);
	o = json_tokener_parse(out);
	ck_assert_msg(o != NULL, "%s", out);
	ck_assert_int_eq(json_object_get_int64(json_object_object_get(o, "lag_events")), 11030);
	ck_assert(!json_object_get_boolean(json_object_object_get(o, "lag_exact")));
	json_object_put(o);
	free(out);
	PQfinish(holder);
	PQfinish(pg);
	env_fini(&e);
}
END_TEST

/* ---- driven in-process ------------------------------------------------------------------ */

struct runner {
	struct tracker *t;
	int rc;
};

static void *
run_main(void *arg)
{
	struct runner *r = arg;

	r->rc = tracker_run(r->t);
	return NULL;
}

START_TEST(in_process_run_and_stop)
{
	struct env e;
	struct config *cfg = NULL;
	struct tracker_config tcfg;
	struct cqrs_err err = { 0 };
	struct runner r = { 0 };
	struct tracker_stats s;
	struct store *st;
	pthread_t th;
	char text[1024];
	long long deadline;
	struct rabbit_check chk = { 0 };

	env_init(&e);
	snprintf(text, sizeof(text), "[store]\nconninfo = %s\n[broker]\nurl = %s\n[tracker]\n"
		 "name = inproc\nbatch_size = 10\n", e.conninfo, fixture_broker_url());
	ck_assert_int_eq(cqrs_config_load_string(text, "test", &cfg, &err), 0);
	ck_assert_msg(tracker_config_load(cfg, &tcfg, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(tcfg.batch_size, 10);
	ck_assert_int_eq(tcfg.poll_ms, 1000);
	ck_assert_int_eq(tracker_new(&tcfg, &r.t, &err), 0);
	ck_assert_ptr_nonnull(strstr(tracker_app_name(r.t), "cqrs-tracker@"));
	ck_assert_int_eq(pthread_create(&th, NULL, run_main, &r), 0);

	st = open_store(e.conninfo);
	for (int k = 0; k < 20; k++)
		append_n(st, &e, k, 3);
	deadline = proc_now_ms() + WAIT_MS;
	do {
		usleep(20000);
		tracker_get_stats(r.t, &s);
	} while (s.published < 60 && proc_now_ms() < deadline);
	ck_assert_int_eq(s.published, 60);
	ck_assert(s.ready && s.active);
	ck_assert_int_eq(s.activations, 1);
	ck_assert_int_ge(s.batches, 6);
	tracker_stop(r.t);
	pthread_join(th, NULL);
	ck_assert_int_eq(r.rc, 0);
	tracker_get_stats(r.t, &s);
	ck_assert(!s.active);

	check(&e, &chk);
	ck_assert_int_eq(chk.duplicates, 0);
	tracker_free(r.t);
	tracker_config_clear(&tcfg);
	cqrs_config_free(cfg);
	cqrs_store_free(st);
	env_fini(&e);
}
END_TEST

/*
 * /health and /metrics: an active tracker counts what it publishes, shows
 * its checkpoint and no lag once caught up; a standby says so; /health
 * turns 503 when PostgreSQL goes away and back to 200 when it returns.
 */
#define TL "tracker=\"tracker\""

START_TEST(metrics_and_health_scraped)
{
	struct env e;
	struct store *st;
	struct proc *p, *standby;
	struct scrape *m;
	char *log, *body = NULL;
	uint16_t port = 0, port2 = 0;
	long long last_pos;
	PGconn *pg;
	int n = 0;

	env_init(&e);
	st = open_store(e.conninfo);
	for (int k = 0; k < 5; k++) {
		append_n(st, &e, k, 4);
		n += 4;
	}
	p = tracker_proc(&e);
	proc_set(p, "tracker", "http", "127.0.0.1:0");
	proc_set(p, "tracker", "status_interval", "200ms");
	proc_start(p);
	ck_assert(proc_wait_log(p, "active:", 1, 10000));
	log = proc_log(p);
	port = scrape_port_from_log(strstr(log, "serving /health and /metrics on"));
	free(log);
	ck_assert_int_ne(port, 0);
	check(&e, &(struct rabbit_check){ 0 });
	pg = fixture_connect(e.conninfo);
	last_pos = fixture_query_int(pg, "SELECT max(position) FROM cqrs.events");
	/* the counters follow the checkpoint; lag is measured every 200 ms */
	for (int i = 0; i < 100; i++) {
		m = scrape_metrics(port);
		if (scrape_value(m, "cqrs_tracker_published_total", TL) >= n &&
		    scrape_value(m, "cqrs_tracker_checkpoint_position", TL) == (double)last_pos)
			break;
		scrape_free(m);
		m = NULL;
		usleep(100000);
	}
	ck_assert_msg(m != NULL, "published_total never reached %d", n);
	ck_assert_str_eq(scrape_type(m, "cqrs_tracker_published_total"), "counter");
	ck_assert(scrape_value(m, "cqrs_tracker_published_total", TL) == n);
	ck_assert(scrape_value(m, "cqrs_tracker_active", TL) == 1);
	ck_assert(scrape_value(m, "cqrs_tracker_postgresql_up", TL) == 1);
	ck_assert(scrape_value(m, "cqrs_tracker_rabbitmq_up", TL) == 1);
	ck_assert(scrape_value(m, "cqrs_tracker_lag_events", TL) == 0);
	scrape_free(m);
	ck_assert_int_eq(scrape_http(port, "GET", "/health", NULL, &body, 5000), 200);
	free(body);
	body = NULL;

	/* a second tracker with the same name stands by */
	standby = tracker_proc(&e);
	proc_set(standby, "tracker", "http", "127.0.0.1:0");
	proc_start(standby);
	ck_assert(proc_wait_log(standby, "serving /health and /metrics on", 1, 10000));
	log = proc_log(standby);
	port2 = scrape_port_from_log(strstr(log, "serving /health and /metrics on"));
	free(log);
	for (int i = 0; i < 50; i++) {
		m = scrape_metrics(port2);
		if (scrape_value(m, "cqrs_tracker_postgresql_up", TL) == 1)
			break;
		scrape_free(m);
		m = NULL;
		usleep(100000);
	}
	ck_assert_ptr_nonnull(m);
	ck_assert(scrape_value(m, "cqrs_tracker_active", TL) == 0);
	ck_assert(scrape_value(m, "cqrs_tracker_published_total", TL) == 0);
	scrape_free(m);
	ck_assert_int_eq(proc_stop(standby), 0);
	proc_free(standby);

	/* PostgreSQL away: 503 with the reason; back: 200 */
	fixture_pg_stop();
	{
		int status = 0;
		for (int i = 0; i < 100 && status != 503; i++) {
			free(body);
			body = NULL;
			status = scrape_http(port, "GET", "/health", NULL, &body, 5000);
			if (status != 503)
				usleep(100000);
		}
		fixture_pg_start();
		ck_assert_int_eq(status, 503);
		ck_assert_ptr_nonnull(strstr(body, "PostgreSQL"));
		free(body);
		body = NULL;
		for (int i = 0; i < 150 && status != 200; i++) {
			free(body);
			body = NULL;
			status = scrape_http(port, "GET", "/health", NULL, &body, 5000);
			if (status != 200)
				usleep(100000);
		}
		ck_assert_int_eq(status, 200);
		free(body);
	}
	ck_assert_int_eq(proc_stop(p), 0);
	PQfinish(pg);
	cqrs_store_free(st);
	proc_free(p);
	env_fini(&e);
}
END_TEST

static Suite *
publish_suite(void)
{
	Suite *s = suite_create("tracker_publish");
	TCase *tc = tcase_create("publish");

	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, every_committed_event_once_in_order);
	tcase_add_test(tc, bodies_are_the_envelope);
	tcase_add_test(tc, read_order_is_numeric);
	tcase_add_test(tc, concurrent_writers_and_open_transactions);
	tcase_add_test(tc, notify_wakes_the_tracker);
	tcase_add_test(tc, polls_without_notify);
	tcase_add_test(tc, sigterm_finishes_the_batch);
	tcase_add_test(tc, watchdog_pings);
	tcase_add_test(tc, options_and_config_check);
	tcase_add_test(tc, ctl_status_reports);
	tcase_add_test(tc, status_is_bounded);
	tcase_add_test(tc, in_process_run_and_stop);
	tcase_add_test(tc, metrics_and_health_scraped);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr;
	int failed;

	/* servers (when run by hand) are started once, by this process */
	fixture_broker_url();
	fixture_pg_dir();
	sr = srunner_create(publish_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

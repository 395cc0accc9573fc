/*
 * test_tracker_faults.c - cqrs-tracker when things fail: kill -9 and restart,
 * RabbitMQ restarted, PostgreSQL restarted, two trackers and a takeover, a
 * lost session. Writers keep appending meanwhile; in the end a collector
 * bound to "#" must have every committed event, per stream in order, with
 * repeats only of events after the checkpoint of the moment things failed.
 */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fixture.h"
#include "proc.h"
#include "rabbit.h"
#include "store.h"
#include "uuid.h"
#include "../../tracker/tracker.h"

#define WAIT_MS 60000

struct env {
	char *conninfo;
	char prefix[48];
	struct rabbit_collector *col;
};

static void
env_init(struct env *e)
{
	e->conninfo = fixture_db_new(true);
	snprintf(e->prefix, sizeof(e->prefix), "f%d%ld", (int)getpid(), random() % 1000000);
	e->col = rabbit_collector_new(NULL, "#");
}

static void
env_fini(struct env *e)
{
	rabbit_collector_free(e->col);
	free(e->conninfo);
}

static struct proc *
tracker_proc(const struct env *e, const char *batch)
{
	struct proc *p = proc_new("cqrs-tracker");

	proc_set(p, "store", "conninfo", "%s", e->conninfo);
	proc_set(p, "broker", "url", "%s", fixture_broker_url());
	proc_set(p, "broker", "heartbeat", "5");
	proc_set(p, "tracker", "poll_ms", "200");
	proc_set(p, "tracker", "batch_size", "%s", batch);
	proc_set(p, "tracker", "confirm_timeout", "10s");
	return p;
}

static struct store_checkpoint
checkpoint(const struct env *e)
{
	PGconn *pg = fixture_connect(e->conninfo);
	PGresult *res = PQexec(pg, "SELECT xid::text, position FROM cqrs.checkpoints "
				   "WHERE name = 'tracker'");
	struct store_checkpoint cp = STORE_CHECKPOINT_START;

	ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
	if (PQntuples(res) == 1) {
		cp.xid = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
		cp.position = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
	}
	PQclear(res);
	PQfinish(pg);
	return cp;
}

static void
preload(const struct env *e, int streams, int per_stream)
{
	PGconn *pg = fixture_connect(e->conninfo);
	char sql[1024];

	/* the subquery names s, so it runs (new ids) for every stream */
	snprintf(sql, sizeof(sql),
		 "SELECT count(*) FROM generate_series(0, %d) s, LATERAL cqrs.append('%s-' || s, -1, "
		 "NULL, (SELECT jsonb_agg(jsonb_build_object('id', gen_random_uuid(), 'type', 'Bulk', "
		 "'data', jsonb_build_object('i', g, 's', s))) FROM generate_series(1, %d) g))",
		 streams - 1, e->prefix, per_stream);
	fixture_exec(pg, sql);
	PQfinish(pg);
}

static void
check(struct env *e, struct rabbit_check *chk)
{
	PGconn *pg = fixture_connect(e->conninfo);
	size_t want = (size_t)fixture_query_int(pg, "SELECT count(*) FROM cqrs.events");
	size_t got = rabbit_collector_wait(e->col, e->prefix, want, WAIT_MS);

	PQfinish(pg);
	ck_assert_msg(got == want, "received %zu of %zu events", got, want);
	rabbit_collector_drain(e->col, 500);
	chk->prefix = e->prefix;
	rabbit_check_store(e->col, e->conninfo, chk);
}

/* ---- a writer that rides out a PostgreSQL restart ------------------------------------ */

struct writer {
	const struct env *e;
	int id, appends, sleep_us;
	int done;
	int retries;
};

static void *
writer_main(void *arg)
{
	struct writer *w = arg;
	struct store *st = NULL;
	struct cqrs_err err = { 0 };

	while (cqrs_store_connect(w->e->conninfo, &st, &err) < 0)
		usleep(100000);
	for (int i = 0; i < w->appends; i++) {
		char stream[96], data[64], cmd[UUID_STR_LEN];
		struct store_event_in in[2];
		struct store_append_result r;
		int n = 1 + i % 2;

		snprintf(stream, sizeof(stream), "%s-w%d-%d", w->e->prefix, w->id, i % 5);
		snprintf(data, sizeof(data), "{\"w\":%d,\"i\":%d}", w->id, i);
		in[0] = (struct store_event_in){ .type = "Written", .data = data };
		in[1] = (struct store_event_in){ .type = "AlsoWritten", .data = data };
		cqrs_uuid_v4(cmd);
		/* the same command id on a retry: appended once, whatever happened */
		while (cqrs_store_append(st, stream, STORE_ANY, in, (size_t)n, cmd, &r, &err) < 0) {
			ck_assert_msg(err.code == CQRS_EUNAVAILABLE, "writer: %s", err.msg);
			w->retries++;
			usleep(100000);
			if (cqrs_store_reset(st, &err) < 0)
				continue;	/* still down: try again */
		}
		cqrs_store_append_result_clear(&r);
		w->done++;
		usleep((useconds_t)w->sleep_us);
	}
	cqrs_store_free(st);
	return NULL;
}

static void
writers_start(pthread_t *th, struct writer *w, int n, const struct env *e, int appends,
	      int sleep_us)
{
	for (int i = 0; i < n; i++) {
		w[i] = (struct writer){ .e = e, .id = i, .appends = appends, .sleep_us = sleep_us };
		ck_assert_int_eq(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
	}
}

static void
writers_join(pthread_t *th, int n)
{
	for (int i = 0; i < n; i++)
		pthread_join(th[i], NULL);
}

static bool
wait_received(struct env *e, size_t n)
{
	return rabbit_collector_wait(e->col, e->prefix, n, 20000) >= n;
}

/* ---- tests ------------------------------------------------------------------------------ */

START_TEST(kill9_and_restart)
{
	struct env e;
	struct proc *p;
	pthread_t th[2];
	struct writer w[2];
	struct rabbit_check chk = { .allow_dups = true };
	char cpbuf[64], needle[200];

	env_init(&e);
	preload(&e, 20, 100);
	p = tracker_proc(&e, "100");
	proc_start(p);
	writers_start(th, w, 2, &e, 200, 5000);
	ck_assert(wait_received(&e, 700));
	proc_kill(p);
	chk.dup_after = checkpoint(&e);
	cqrs_store_checkpoint_format(&chk.dup_after, cpbuf, sizeof(cpbuf));

	/* a new one resumes from the checkpoint the dead one left */
	proc_start(p);
	snprintf(needle, sizeof(needle), "publishing after checkpoint %s", cpbuf);
	ck_assert_msg(proc_wait_log(p, needle, 1, 10000), "no \"%s\" in:\n%s", needle,
		      proc_log_tail(p, 20));
	writers_join(th, 2);
	check(&e, &chk);
	ck_assert_int_eq(chk.events, 2000 + 2 * 300);
	ck_assert_int_eq(proc_stop(p), 0);
	proc_free(p);
	env_fini(&e);
}
END_TEST

START_TEST(rabbitmq_restarted)
{
	struct env e;
	struct proc *p;
	pthread_t th[2];
	struct writer w[2];
	struct rabbit_check chk = { .allow_dups = true };

	env_init(&e);
	p = tracker_proc(&e, "50");
	proc_start(p);
	/* ~12 s of steady writing, across the restart */
	writers_start(th, w, 2, &e, 400, 30000);
	ck_assert(wait_received(&e, 50));
	chk.dup_after = checkpoint(&e);
	fixture_rabbit_stop();
	sleep(1);
	/* (started again before any check, so that a failure here does not
	 * leave the next tests without a broker) */
	fixture_rabbit_start();
	ck_assert(proc_log_contains(p, "level=error"));
	ck_assert(proc_running(p));
	ck_assert_msg(proc_wait_log(p, "again", 1, 30000), "not reconnected:\n%s",
		      proc_log_tail(p, 20));
	writers_join(th, 2);
	check(&e, &chk);
	ck_assert_int_eq(chk.events, 2 * 600);
	ck_assert(proc_running(p));	/* no restart was needed */
	ck_assert_int_eq(proc_stop(p), 0);
	proc_free(p);
	env_fini(&e);
}
END_TEST

START_TEST(postgresql_restarted)
{
	struct env e;
	struct proc *p;
	pthread_t th[2];
	struct writer w[2];
	struct rabbit_check chk = { .allow_dups = true };

	env_init(&e);
	p = tracker_proc(&e, "50");
	proc_start(p);
	writers_start(th, w, 2, &e, 250, 12000);
	ck_assert(wait_received(&e, 50));
	chk.dup_after = checkpoint(&e);
	fixture_pg_stop();
	sleep(1);
	fixture_pg_start();
	ck_assert(proc_log_contains(p, "cannot connect to PostgreSQL"));
	ck_assert_msg(proc_wait_log(p, "connected to PostgreSQL again", 1, 15000),
		      "not reconnected:\n%s", proc_log_tail(p, 20));
	ck_assert(proc_wait_log(p, "active:", 2, 10000));
	writers_join(th, 2);
	check(&e, &chk);
	ck_assert_int_eq(chk.events, 2 * 375);
	ck_assert_int_gt(w[0].retries + w[1].retries, 0);	/* the writers did see it */
	ck_assert(proc_running(p));
	ck_assert_int_eq(proc_stop(p), 0);
	proc_free(p);
	env_fini(&e);
}
END_TEST

START_TEST(two_trackers_one_active_then_takeover)
{
	struct env e;
	struct proc *a, *b;
	pthread_t th[2];
	struct writer w[2];
	struct rabbit_check chk = { .allow_dups = true };
	char cpbuf[64], needle[200];
	long long killed_at;

	env_init(&e);
	a = tracker_proc(&e, "50");
	b = tracker_proc(&e, "50");
	proc_start(a);
	ck_assert(proc_wait_log(a, "active:", 1, 10000));
	proc_start(b);
	ck_assert_msg(proc_wait_log(b, "standby:", 1, 10000), "%s", proc_log_tail(b, 10));
	snprintf(needle, sizeof(needle), "cqrs-tracker@");
	ck_assert(proc_log_contains(b, needle));
	ck_assert(proc_wait_notified(b, "STATUS=standby", 5000));

	writers_start(th, w, 2, &e, 300, 10000);
	ck_assert(wait_received(&e, 300));
	/* only A publishes while it lives */
	ck_assert(!proc_log_contains(b, "active:"));
	proc_kill(a);
	killed_at = proc_now_ms();
	chk.dup_after = checkpoint(&e);
	cqrs_store_checkpoint_format(&chk.dup_after, cpbuf, sizeof(cpbuf));
	ck_assert_msg(proc_wait_log(b, "active: holding the lock", 1, 5000),
		      "B did not take over (A's checkpoint %s):\n%s", cpbuf, proc_log_tail(b, 10));
	ck_assert_msg(proc_now_ms() - killed_at < 3000, "takeover took %lld ms",
		      proc_now_ms() - killed_at);
	writers_join(th, 2);
	check(&e, &chk);
	ck_assert_int_eq(chk.events, 2 * 450);
	ck_assert_int_eq(proc_stop(b), 0);
	proc_free(a);
	proc_free(b);
	env_fini(&e);
}
END_TEST

/* The active tracker's session is killed under it: it stops publishing,
 * reconnects, and one tracker (it or the standby) goes on. */
START_TEST(lost_session_stops_publishing)
{
	struct env e;
	struct proc *a, *b;
	pthread_t th[2];
	struct writer w[2];
	struct rabbit_check chk = { .allow_dups = true };
	PGconn *pg;
	char sql[256];

	env_init(&e);
	a = tracker_proc(&e, "50");
	b = tracker_proc(&e, "50");
	proc_start(a);
	ck_assert(proc_wait_log(a, "active:", 1, 10000));
	proc_start(b);
	ck_assert(proc_wait_log(b, "standby:", 1, 10000));
	writers_start(th, w, 2, &e, 250, 10000);
	ck_assert(wait_received(&e, 200));

	pg = fixture_connect(e.conninfo);
	chk.dup_after = checkpoint(&e);
	snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
		 "WHERE application_name LIKE 'cqrs-tracker@%%:%d'", (int)proc_pid(a));
	ck_assert_int_eq(fixture_query_int(pg, "SELECT 1"), 1);
	fixture_exec(pg, sql);
	ck_assert_msg(proc_wait_log(a, "stopped publishing", 1, 5000), "%s", proc_log_tail(a, 10));
	/* someone is active again within seconds */
	ck_assert(proc_wait_log(a, "active:", 2, 5000) || proc_wait_log(b, "active:", 1, 5000));
	writers_join(th, 2);
	check(&e, &chk);
	ck_assert_int_eq(chk.events, 2 * 375);
	ck_assert(proc_running(a) && proc_running(b));
	/* exactly one holds the lock */
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(*) FROM cqrs.tracker_holder('tracker')"), 1);
	ck_assert_int_eq(proc_stop(a), 0);
	ck_assert_int_eq(proc_stop(b), 0);
	PQfinish(pg);
	proc_free(a);
	proc_free(b);
	env_fini(&e);
}
END_TEST

/* Without the lock the checkpoint cannot move, whoever tries. */
START_TEST(checkpoint_needs_the_lock)
{
	char *ci = fixture_db_new(true);
	PGconn *holder = fixture_connect(ci), *other = fixture_connect(ci);
	const char *params[3] = { "tracker", "5", "42" };
	PGresult *res;

	res = PQexecParams(other, tracker_save_checkpoint_sql, 3, NULL, params, NULL, NULL, 0);
	ck_assert_int_eq(PQresultStatus(res), PGRES_COMMAND_OK);
	ck_assert_str_eq(PQcmdTuples(res), "0");
	PQclear(res);
	ck_assert_int_eq(fixture_query_int(holder, "SELECT cqrs.tracker_try_lock('tracker')::int"), 1);
	ck_assert_int_eq(fixture_query_int(other, "SELECT cqrs.tracker_try_lock('tracker')::int"), 0);
	ck_assert_int_eq(fixture_query_int(other, "SELECT cqrs.tracker_holds_lock('tracker')::int"), 0);
	res = PQexecParams(other, tracker_save_checkpoint_sql, 3, NULL, params, NULL, NULL, 0);
	ck_assert_str_eq(PQcmdTuples(res), "0");
	PQclear(res);
	res = PQexecParams(holder, tracker_save_checkpoint_sql, 3, NULL, params, NULL, NULL, 0);
	ck_assert_str_eq(PQcmdTuples(res), "1");
	PQclear(res);
	ck_assert_int_eq(fixture_query_int(other, "SELECT position FROM cqrs.checkpoints"), 42);
	/* another name is another lock */
	ck_assert_int_eq(fixture_query_int(other, "SELECT cqrs.tracker_try_lock('second')::int"), 1);
	PQfinish(holder);
	/* the holder's session ended: the lock is free (once its backend is gone) */
	{
		long long deadline = proc_now_ms() + 5000;
		while (fixture_query_int(other, "SELECT cqrs.tracker_try_lock('tracker')::int") != 1)
			ck_assert_msg(proc_now_ms() < deadline, "the lock was not released");
	}
	PQfinish(other);
	free(ci);
}
END_TEST

/* Not READY until both servers answer; SIGTERM while waiting exits 0. */
START_TEST(waits_for_the_broker)
{
	struct env e;
	struct proc *p;

	env_init(&e);
	p = tracker_proc(&e, "50");
	proc_set(p, "broker", "url", "amqp://cqrs:cqrs@127.0.0.1:1/%%2f");
	proc_spawn(p);
	ck_assert(!proc_wait_ready(p, 1500));
	ck_assert(proc_log_contains(p, "cannot connect to RabbitMQ"));
	ck_assert(proc_log_contains(p, "127.0.0.1:1/%2f"));
	ck_assert(!proc_log_contains(p, "cqrs:cqrs"));
	ck_assert(proc_wait_notified(p, "STATUS=cannot connect to RabbitMQ", 5000));
	ck_assert_int_eq(proc_stop(p), 0);
	proc_free(p);
	env_fini(&e);
}
END_TEST

/* ---- the watchdog while a statement waits ---------------------------------------------- */

static int
count_in(const char *s, const char *needle)
{
	int n = 0;

	for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	return n;
}

/* Whether the tracker's session waits for a lock right now. */
static bool
tracker_waits_on_lock(PGconn *pg, const struct proc *p)
{
	char sql[300];

	snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_stat_activity WHERE application_name "
		 "LIKE 'cqrs-tracker@%%:%d' AND wait_event_type = 'Lock'", (int)proc_pid(p));
	return fixture_query_int(pg, sql) > 0;
}

/*
 * A statement of the tracker that does not come back (here the checkpoint
 * write, held by a table lock the test takes, in the middle of catching up
 * with 2,000 events) does not stop its watchdog pings: systemd must not
 * kill a loop that is only waiting for its database. Once the lock goes,
 * everything is published, once.
 */
START_TEST(watchdog_pings_while_a_statement_waits)
{
	struct env e;
	struct proc *p;
	struct rabbit_check chk = { .allow_dups = false };
	PGconn *locker;
	long long deadline;
	int before, now = 0;

	env_init(&e);
	preload(&e, 10, 200);
	locker = fixture_connect(e.conninfo);
	/* reads go on (ACCESS SHARE), the checkpoint write waits (ROW EXCLUSIVE) */
	fixture_exec(locker, "BEGIN");
	fixture_exec(locker, "LOCK TABLE cqrs.checkpoints IN EXCLUSIVE MODE");
	p = tracker_proc(&e, "100");
	proc_setenv(p, "WATCHDOG_USEC", "1000000");	/* a ping every 500 ms */
	proc_setenv(p, "WATCHDOG_PID", NULL);
	proc_start(p);
	deadline = proc_now_ms() + WAIT_MS;
	while (!tracker_waits_on_lock(locker, p)) {
		ck_assert_msg(proc_now_ms() < deadline, "the tracker never waited for the lock:\n%s",
			      proc_log_tail(p, 20));
		usleep(20 * 1000);
	}
	before = count_in(proc_notifications(p), "WATCHDOG=1");
	deadline = proc_now_ms() + WAIT_MS;
	while ((now = count_in(proc_notifications(p), "WATCHDOG=1")) < before + 3 &&
	       proc_now_ms() < deadline)
		usleep(50 * 1000);
	ck_assert_msg(now >= before + 3, "%d WATCHDOG=1 in %d s while the checkpoint write waited",
		      now - before, WAIT_MS / 1000);
	/* and all of them while it waited: it still does */
	ck_assert(tracker_waits_on_lock(locker, p));
	ck_assert(proc_running(p));

	fixture_exec(locker, "COMMIT");
	check(&e, &chk);
	ck_assert_int_eq(chk.events, 2000);
	ck_assert_int_eq(chk.duplicates, 0);
	ck_assert(proc_running(p));
	ck_assert_int_eq(proc_stop(p), 0);
	PQfinish(locker);
	proc_free(p);
	env_fini(&e);
}
END_TEST

/* One case per test, so that CK_RUN_CASE=name runs one alone. */
static void
add(Suite *s, const char *name, const TTest *test)
{
	TCase *tc = tcase_create(name);

	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test);
	suite_add_tcase(s, tc);
}

static Suite *
faults_suite(void)
{
	Suite *s = suite_create("tracker_faults");

	add(s, "checkpoint_needs_the_lock", checkpoint_needs_the_lock);
	add(s, "waits_for_the_broker", waits_for_the_broker);
	add(s, "kill9_and_restart", kill9_and_restart);
	add(s, "two_trackers", two_trackers_one_active_then_takeover);
	add(s, "lost_session", lost_session_stops_publishing);
	add(s, "postgresql_restarted", postgresql_restarted);
	add(s, "rabbitmq_restarted", rabbitmq_restarted);
	add(s, "watchdog_while_waiting", watchdog_pings_while_a_statement_waits);
	return s;
}

int
main(void)
{
	SRunner *sr;
	int failed;

	fixture_broker_url();
	fixture_pg_dir();
	sr = srunner_create(faults_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

/*
 * test_consumer_faults.c - cqrs-consumer when things break: PostgreSQL
 * restarted, RabbitMQ restarted, the consumer killed -9, each mid-stream;
 * and configurations it must refuse.
 *
 * Handlers: tests/plugins/poison (see test_consumer_delivery.c). Events go
 * to the store and through cqrs-tracker; after the fault, every event must
 * still be applied exactly once, in stream order, with no restart of the
 * consumer needed (except after kill -9).
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "consumer_fixture.h"
#include "fixture.h"
#include "proc.h"
#include "rabbit.h"

#define STREAMS 4

struct env {
	char *conninfo;
	char queue[200];
	struct cons *c;
	struct proc *tracker;
	int appended;
};

static void
env_init(struct env *e, const char *more)
{
	char *section, *text;

	memset(e, 0, sizeof(*e));
	e->conninfo = fixture_db_new(true);
	snprintf(e->queue, sizeof(e->queue), "%s", cons_unique_queue("faults"));
	ck_assert_int_ge(asprintf(&section, "[consumer.poison]\nplugins = %s\nqueue = %s\n%s",
				  fixture_plugin("poison"), e->queue, more != NULL ? more : ""),
			 0);
	text = cons_config(e->conninfo, NULL, section);
	e->c = cons_new("poison", text);
	free(section);
	free(text);
	e->tracker = proc_new("cqrs-tracker");
	proc_set(e->tracker, "store", "conninfo", "%s", e->conninfo);
	proc_set(e->tracker, "broker", "url", "%s", fixture_broker_url());
	proc_set(e->tracker, "tracker", "poll_ms", "100");
}

static void
env_fini(struct env *e)
{
	if (proc_running(e->tracker))
		ck_assert_int_eq(proc_stop(e->tracker), 0);
	proc_free(e->tracker);
	cons_free(e->c);
	cons_delete_queues(e->queue);
	free(e->conninfo);
}

/* n events round-robin over the streams. */
static void
append(struct env *e, int n, const char *data)
{
	char stream[32];

	for (int i = 0; i < n; i++) {
		snprintf(stream, sizeof(stream), "poison-%d", 1 + e->appended % STREAMS);
		cons_append(e->conninfo, stream, "Happened", data);
		e->appended++;
	}
}

static void
finish(struct env *e)
{
	cons_poison_wait(e->c, e->conninfo, e->appended);
	usleep(300 * 1000);
	cons_poison_check(e->conninfo, NULL, STREAMS);
	ck_assert_int_eq(cons_stop(e->c), 0);
}

/* ---- tests ------------------------------------------------------------------------ */

START_TEST(postgresql_restart_midstream)
{
	struct env e;

	env_init(&e, NULL);
	cons_start(e.c);
	proc_start(e.tracker);
	append(&e, 40, "{\"sleep_ms\":5}");
	ck_assert_int_ge(cons_wait_query(e.conninfo, "SELECT count(*) FROM poison_applied", 5,
					 10000),
			 5);
	fixture_pg_stop();
	usleep(1500 * 1000);
	fixture_pg_start();
	append(&e, 40, "{}");
	finish(&e);
	ck_assert_msg(cons_log_count(e.c, "PostgreSQL") > 0, "the outage went unnoticed");
	ck_assert(cons_log_count(e.c, "connected to PostgreSQL again") >= 1);
	env_fini(&e);
}
END_TEST

START_TEST(rabbitmq_restart_midstream)
{
	struct env e;

	env_init(&e, "delivery_limit = 20\n");
	cons_start(e.c);
	proc_start(e.tracker);
	append(&e, 40, "{\"sleep_ms\":5}");
	ck_assert_int_ge(cons_wait_query(e.conninfo, "SELECT count(*) FROM poison_applied", 5,
					 10000),
			 5);
	fixture_rabbit_stop();
	append(&e, 20, "{}");	/* while it is down: the tracker holds them */
	fixture_rabbit_start();
	append(&e, 20, "{}");
	finish(&e);
	ck_assert(cons_log_count(e.c, "connected to RabbitMQ") >= 2);
	env_fini(&e);
}
END_TEST

START_TEST(kill9_midstream_then_restart)
{
	struct env e;
	char *dir, barrier[256], held[300], data[300];

	/* Ten events go through; the next blocks its handler on a file the test
	 * creates only after the kill, so the kill lands mid-stream, with an
	 * event in hand (its handler says so: BARRIER.held) and more queued. */
	dir = fixture_tmpdir();
	snprintf(barrier, sizeof(barrier), "%s/barrier", dir);
	snprintf(held, sizeof(held), "%s.held", barrier);
	snprintf(data, sizeof(data), "{\"wait\":\"%s\"}", barrier);
	env_init(&e, "delivery_limit = 20\n");
	cons_start(e.c);
	proc_start(e.tracker);
	append(&e, 10, "{}");
	ck_assert_int_eq(cons_wait_query(e.conninfo, "SELECT count(*) FROM poison_applied", 10,
					 30000),
			 10);
	append(&e, 50, data);
	ck_assert_msg(fixture_wait_file(held, 30000), "no event reached its handler");
	cons_kill(e.c);
	ck_assert_int_eq(cons_poison_count(e.conninfo), 10);
	fixture_touch(barrier);
	append(&e, 20, "{}");
	cons_start(e.c);
	finish(&e);
	env_fini(&e);
	unlink(held);
	unlink(barrier);
	rmdir(dir);
	free(dir);
}
END_TEST

/* Configurations that must be refused, naming what is wrong. */
START_TEST(bad_configurations_refused)
{
	static const struct {
		const char *section;
		const char *needle;
	} cases[] = {
		{ "[consumer.poison]\nplugins = %s\nprefetch = lots\n", "prefetch" },
		{ "[consumer.poison]\nplugins = %s\nqueue_type = stream\n", "queue_type" },
		{ "[consumer.poison]\nplugins = %s\nfrom = yesterday\n", "from" },
		{ "[consumer.poison]\nplugins = %s\nbatchsize = 5\n", "batchsize" },
		{ "[consumer.poison]\nplugins = %s\ngroups = nothere\n", "nothere" },
		{ "[consumer.poison]\n#%s\n", "plugins" },
	};
	char *conninfo = fixture_db_new(false);

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *section, *text, *log;
		struct cons *c;
		int st;

		ck_assert_int_ge(asprintf(&section, cases[i].section, fixture_plugin("poison")), 0);
		text = cons_config(conninfo, NULL, section);
		c = cons_new("poison", text);
		cons_add_arg(c, "--check-config");
		cons_spawn(c);
		st = cons_wait_exit(c, 10000);
		log = cons_log(c);
		ck_assert_msg(st == 1, "case %zu: exit %d\n%s", i, st, log);
		ck_assert_msg(strstr(log, cases[i].needle) != NULL, "case %zu: no \"%s\" in\n%s", i,
			      cases[i].needle, log);
		free(log);
		cons_free(c);
		free(section);
		free(text);
	}
	/* and a good one passes, listing its bindings */
	{
		char *section, *text, *log;
		struct cons *c;

		ck_assert_int_ge(asprintf(&section, "[consumer.poison]\nplugins = %s\n",
					  fixture_plugin("poison")),
				 0);
		text = cons_config(conninfo, NULL, section);
		c = cons_new("poison", text);
		cons_add_arg(c, "--check-config");
		cons_spawn(c);
		ck_assert_int_eq(cons_wait_exit(c, 10000), 0);
		log = cons_log(c);
		ck_assert_msg(strstr(log, "bindings: poison.*") != NULL, "%s", log);
		free(log);
		cons_free(c);
		free(section);
		free(text);
	}
	free(conninfo);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("consumer_faults");
	TCase *tc = tcase_create("faults");

	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, postgresql_restart_midstream);
	tcase_add_test(tc, rabbitmq_restart_midstream);
	tcase_add_test(tc, kill9_midstream_then_restart);
	tcase_add_test(tc, bad_configurations_refused);
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

/*
 * test_broker_frozen.c - RabbitMQ frozen (SIGSTOP of every process of the
 * node) under cqrs-tracker and cqrs-consumer while events keep coming: a
 * broker that neither answers nor closes, as a hung host or a network that
 * drops everything looks. Both daemons must notice it on their own
 * (heartbeats, confirm timeout), keep the events, and recover once the node
 * runs again: every event applied once, in stream order, none lost, none
 * twice, with no restart of either daemon.
 *
 * The node is a private one, started by the test (tests/lib/rabbit.h,
 * rabbit_node_start()): the shared node of the run is never stopped, and a
 * guardian thaws and removes this one however the test ends.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "consumer_fixture.h"
#include "fixture.h"
#include "proc.h"
#include "rabbit.h"

#define STREAMS 4
#define WAIT_MS 90000

static int appended;

/* n events round-robin over poison-1..STREAMS. */
static void
append(const char *conninfo, int n)
{
	char stream[32];

	for (int i = 0; i < n; i++) {
		snprintf(stream, sizeof(stream), "poison-%d", 1 + appended % STREAMS);
		cons_append(conninfo, stream, "Happened", "{}");
		appended++;
	}
}

static bool
wait_count(struct proc *p, const char *needle, int times)
{
	return proc_wait_log(p, needle, times, WAIT_MS);
}

START_TEST(rabbitmq_frozen_under_tracker_and_consumer)
{
	struct rabbit_node *node = rabbit_node_start();
	char *conninfo = fixture_db_new(true), *text, *section;
	struct proc *tracker = proc_new("cqrs-tracker");
	struct cons *c;
	int t_errors, c_errors;

	/* short heartbeats and confirm timeout: the loss is seen in seconds */
	proc_set(tracker, "store", "conninfo", "%s", conninfo);
	proc_set(tracker, "broker", "url", "%s", rabbit_node_url(node));
	proc_set(tracker, "broker", "heartbeat", "2");
	proc_set(tracker, "tracker", "poll_ms", "100");
	proc_set(tracker, "tracker", "batch_size", "20");
	proc_set(tracker, "tracker", "confirm_timeout", "4s");
	ck_assert_int_ge(asprintf(&section, "[consumer.poison]\nplugins = %s\nqueue = cqrs.frozen\n",
				  fixture_plugin("poison")),
			 0);
	ck_assert_int_ge(asprintf(&text,
				  "[store]\nconninfo = %s\n"
				  "[broker]\nurl = %s\nheartbeat = 2\n"
				  "[log]\nlevel = info\n%s",
				  conninfo, rabbit_node_url(node), section),
			 0);
	c = cons_new("poison", text);
	cons_start(c);
	proc_start(tracker);
	append(conninfo, 100);
	cons_poison_wait(c, conninfo, appended);

	/* frozen: the events go on coming, into the store */
	t_errors = proc_log_count(tracker, "level=error");
	c_errors = cons_log_count(c, "level=error");
	rabbit_node_freeze(node);
	append(conninfo, 200);
	ck_assert_msg(wait_count(tracker, "level=error", t_errors + 1),
		      "the tracker did not notice the frozen broker:\n%s", proc_log_tail(tracker, 20));
	ck_assert_msg(cons_wait_log(c, "level=error", c_errors + 1, WAIT_MS),
		      "the consumer did not notice the frozen broker:\n%s", cons_log_tail(c, 20));
	ck_assert(proc_running(tracker) && cons_running(c));
	ck_assert_int_eq(cons_poison_count(conninfo), 100);

	/* running again: both reconnect by themselves and nothing is lost */
	rabbit_node_thaw(node);
	ck_assert_msg(wait_count(tracker, "connected to RabbitMQ", 2),
		      "the tracker did not reconnect:\n%s", proc_log_tail(tracker, 20));
	ck_assert_msg(cons_wait_log(c, "connected to RabbitMQ", 2, WAIT_MS),
		      "the consumer did not reconnect:\n%s", cons_log_tail(c, 20));
	append(conninfo, 20);
	{
		long long deadline = proc_now_ms() + WAIT_MS;

		while (cons_poison_count(conninfo) < appended && proc_now_ms() < deadline)
			usleep(100 * 1000);
	}
	cons_poison_wait(c, conninfo, appended);
	/* Copies (what the frozen node had taken from the tracker's old
	 * connection, published again on the new one) must each have been
	 * taken as a duplicate, not applied again: wait until the tracker has
	 * checkpointed the last event and the consumer's queue is empty, so
	 * that none is still to come, then look. */
	{
		PGconn *pg = fixture_connect(conninfo);
		long long deadline = proc_now_ms() + WAIT_MS;
		long left = -1;

		while (fixture_query_int(pg, "SELECT count(*) FROM cqrs.events e, cqrs.checkpoints c "
					     "WHERE c.name = 'tracker' AND (e.xid, e.position) > "
					     "(c.xid, c.position)") > 0 ||
		       (left = rabbit_node_queue_messages(node, "cqrs.frozen")) != 0) {
			ck_assert_msg(proc_now_ms() < deadline, "not settled: %ld messages in the queue",
				      left);
			usleep(200 * 1000);
		}
		PQfinish(pg);
	}
	ck_assert_int_eq(cons_stop(c), 0);
	cons_poison_check(conninfo, NULL, STREAMS);
	ck_assert_int_eq(cons_poison_count(conninfo), 320);
	ck_assert(proc_running(tracker));
	ck_assert_int_eq(proc_stop(tracker), 0);

	proc_free(tracker);
	cons_free(c);
	free(section);
	free(text);
	free(conninfo);
	rabbit_node_free(node);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("broker_frozen");
	TCase *tc = tcase_create("rabbitmq_frozen");

	tcase_set_timeout(tc, 400);
	tcase_add_test(tc, rabbitmq_frozen_under_tracker_and_consumer);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(suite());
	int failed;

	fixture_pg_dir();
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

/*
 * test_demo.c - `make demo`, the README's first command, end to end: it
 * must build, start every part, tell its story and stop, exit 0, and what
 * it prints must be right (balances, the refusal, the transfer, the status).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"

static char *demo_out;
static int demo_rc;

/* Runs the demo once; its checks share the output. */
static void
run_demo(void)
{
	char cmd[1024];
	char *dir;

	if (demo_out != NULL)
		return;
	dir = fixture_tmpdir();
	snprintf(cmd, sizeof(cmd),
		 "cd %s && CQRS_RUN_DIR=%s/run env -u MAKELEVEL make --no-print-directory demo 2>&1",
		 CQRS_SRCDIR, dir);
	demo_rc = fixture_run(cmd, &demo_out);
	free(dir);
}

static void
expect(const char *what)
{
	ck_assert_msg(strstr(demo_out, what) != NULL, "make demo did not print \"%s\"; it printed:\n%s",
		      what, demo_out);
}

START_TEST(demo_runs_and_tells_the_story)
{
	run_demo();
	ck_assert_msg(demo_rc == 0, "make demo exited %d:\n%s", demo_rc, demo_out);
	/* it says what it does as it goes */
	expect("== starting PostgreSQL and RabbitMQ");
	expect("migrations applied:");
	expect("cmdd started");
	expect("tracker started");
	expect("consumer-projections started");
	expect("consumer-notifications started");
	expect("consumer-transfers started");
	/* the refused overdraft is refused, and said so */
	expect("\"code\":\"rejected\",\"message\":\"insufficient funds\"");
	/* the transfer went through the process manager */
	expect("\"type\":\"TransferStarted\"");
	expect("\"type\":\"TransferCompleted\"");
	/* the events of one stream, as envelopes */
	expect("\"stream\":\"account-alice\",\"version\":4");
	/* the tracker's status: caught up */
	expect("lag: 0 events");
	/* the read model: 100000 - 12000 - 30000, and 2500 + 30000 */
	expect(" alice      | Alice |   58000 | open   |       4");
	expect(" bob        | Bob   |   32500 | open   |       3");
	/* and it stops everything */
	expect("PostgreSQL stopped");
	expect("demo done in");
}
END_TEST

START_TEST(demo_leaves_nothing_running)
{
	char *out = NULL;
	int rc;

	run_demo();
	/* every pid file is gone, and no process of the demo is left */
	rc = fixture_run("ps -eo args | grep -E 'cqrs-(cmdd|tracker|consumer) -.*run/cqrs.conf' | "
			 "grep -v grep | wc -l", &out);
	ck_assert_int_eq(rc, 0);
	ck_assert_msg(atoi(out) == 0, "daemons left running after make demo: %s", out);
	free(out);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("e2e_demo");
	TCase *tc = tcase_create("demo");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, demo_runs_and_tells_the_story);
	tcase_add_test(tc, demo_leaves_nothing_running);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	/* one demo for both checks: run them in this process */
	srunner_set_fork_status(sr, CK_NOFORK);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	free(demo_out);
	return failed == 0 ? 0 : 1;
}

/*
 * test_consumer_bank.c - the bank's read side end to end: commands through
 * cqrs-cmdd, events published by cqrs-tracker, handled by cqrs-consumer
 * (groups projections, notifications, transfers of build/plugins/bank.so),
 * all real processes on real PostgreSQL and RabbitMQ.
 *
 * The projection (bank_balances) is compared with what the store says: for
 * each account, the sum of its deposits minus its withdrawals, its owner, its
 * status and its last version.
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <json-c/json.h>

#include "cmdclient.h"
#include "consumer_fixture.h"
#include "daemon.h"
#include "fixture.h"
#include "proc.h"
#include "rabbit.h"

#define WAIT_MS 60000
#define BANK_TOTAL_SQL                                                                    \
	"SELECT coalesce(sum(CASE type WHEN 'MoneyDeposited' THEN (data->>'amount')::bigint " \
	"WHEN 'MoneyWithdrawn' THEN -(data->>'amount')::bigint ELSE 0 END), 0) "           \
	"FROM cqrs.events WHERE stream LIKE 'account-%'"

/* The read model the store implies, and the symmetric difference with
 * bank_balances: 0 rows when they are equal. */
#define DIFF_SQL                                                                          \
	"WITH s AS (SELECT substr(stream, 9) AS account_id, "                                \
	" max(data->>'owner') FILTER (WHERE type = 'AccountOpened') AS owner, "              \
	" sum(CASE type WHEN 'MoneyDeposited' THEN (data->>'amount')::bigint "               \
	"  WHEN 'MoneyWithdrawn' THEN -(data->>'amount')::bigint ELSE 0 END)::bigint AS balance, " \
	" CASE WHEN bool_or(type = 'AccountClosed') THEN 'closed' ELSE 'open' END AS status, " \
	" max(version) AS version FROM cqrs.events WHERE stream LIKE 'account-%' GROUP BY stream), " \
	"p AS (SELECT account_id, owner, balance, status, version FROM bank_balances) "      \
	"SELECT (SELECT count(*) FROM (SELECT * FROM s EXCEPT SELECT * FROM p) a) + "         \
	"(SELECT count(*) FROM (SELECT * FROM p EXCEPT SELECT * FROM s) b)"

struct env {
	char *conninfo;
	struct daemon *cmdd;
	struct proc *tracker;
	char queue[200];		/* projections */
	char tqueue[200];		/* transfers */
	char nqueue[200];		/* notifications */
	char *config;
};

static void
env_init(struct env *e, const char *extra)
{
	char *sections;

	memset(e, 0, sizeof(*e));
	e->conninfo = fixture_db_new(true);
	e->cmdd = daemon_new_cmdd(e->conninfo, "bank");
	daemon_start(e->cmdd);
	snprintf(e->queue, sizeof(e->queue), "%s", cons_unique_queue("projections"));
	snprintf(e->tqueue, sizeof(e->tqueue), "%s", cons_unique_queue("transfers"));
	snprintf(e->nqueue, sizeof(e->nqueue), "%s", cons_unique_queue("notifications"));
	ck_assert_int_ge(asprintf(&sections,
				  "[consumer.projections]\nplugins = %s\nqueue = %s\n"
				  "[consumer.transfers]\nplugins = %s\nqueue = %s\n"
				  "[consumer.notifications]\nplugins = %s\nqueue = %s\n%s",
				  fixture_plugin("bank"), e->queue, fixture_plugin("bank"), e->tqueue,
				  fixture_plugin("bank"), e->nqueue, extra != NULL ? extra : ""),
			 0);
	e->config = cons_config(e->conninfo, daemon_socket(e->cmdd), sections);
	free(sections);
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
	if (e->tracker != NULL) {
		ck_assert_int_eq(proc_stop(e->tracker), 0);
		proc_free(e->tracker);
	}
	ck_assert_int_eq(daemon_stop(e->cmdd), 0);
	daemon_free(e->cmdd);
	cons_delete_queues(e->queue);
	cons_delete_queues(e->tqueue);
	cons_delete_queues(e->nqueue);
	free(e->config);
	free(e->conninfo);
	daemon_gc_run();
}

/* Sends the lines pipelined on one connection; returns how many were ok. */
static size_t
send_lines(struct env *e, char **lines, size_t n)
{
	struct daemon_conn *c = daemon_connect(e->cmdd);
	char **answers = daemon_conn_pipeline(c, (const char *const *)lines, n, 60000);
	size_t ok = 0;

	for (size_t i = 0; i < n; i++)
		ok += daemon_answer_ok(answers[i]);
	daemon_lines_free(answers, n);
	daemon_conn_close(c);
	return ok;
}

static void
open_accounts(struct env *e, int n, int64_t initial)
{
	char **lines = calloc((size_t)n * 2, sizeof(*lines));

	for (int i = 0; i < n; i++) {
		ck_assert_int_ge(asprintf(&lines[2 * i],
					  "{\"command\":\"account.open\",\"aggregate_id\":\"a%d\","
					  "\"data\":{\"owner\":\"owner %d\"}}",
					  i, i),
				 0);
		ck_assert_int_ge(asprintf(&lines[2 * i + 1],
					  "{\"command\":\"account.deposit\",\"aggregate_id\":\"a%d\","
					  "\"data\":{\"amount\":%" PRId64 "}}",
					  i, initial),
				 0);
	}
	ck_assert_uint_eq(send_lines(e, lines, (size_t)n * 2), (size_t)n * 2);
	for (int i = 0; i < n * 2; i++)
		free(lines[i]);
	free(lines);
}

/* n random deposits and withdrawals (some refused: insufficient funds). */
static void
random_money(struct env *e, int accounts, int n, unsigned seed)
{
	char **lines = calloc((size_t)n, sizeof(*lines));

	srandom(seed);
	for (int i = 0; i < n; i++) {
		bool out = random() % 3 == 0;
		long amount = 1 + random() % (random() % 10 == 0 ? 300000 : 5000);

		ck_assert_int_ge(asprintf(&lines[i],
					  "{\"command\":\"account.%s\",\"aggregate_id\":\"a%ld\","
					  "\"data\":{\"amount\":%ld}}",
					  out ? "withdraw" : "deposit", random() % accounts, amount),
				 0);
	}
	(void)send_lines(e, lines, (size_t)n);
	for (int i = 0; i < n; i++)
		free(lines[i]);
	free(lines);
}

static long long
events_total(const struct env *e)
{
	return cons_query_int(e->conninfo, "SELECT count(*) FROM cqrs.events");
}

/* Waits until bank_balances equals what the store says. */
static void
wait_projection(const struct env *e, struct cons *c)
{
	long long deadline = proc_now_ms() + WAIT_MS;
	long long diff = -1;

	while (proc_now_ms() < deadline) {
		diff = cons_query_int(e->conninfo, DIFF_SQL);
		if (diff == 0)
			break;
		usleep(100 * 1000);
	}
	if (diff != 0) {
		char *tail = c != NULL ? cons_log_tail(c, 30) : strdup("");
		ck_abort_msg("bank_balances differs from the store in %lld rows after %d ms:\n%s",
			     diff, WAIT_MS, tail);
	}
	/* and stays so (nothing late, nothing twice) */
	usleep(300 * 1000);
	ck_assert_int_eq(cons_query_int(e->conninfo, DIFF_SQL), 0);
	/* and nothing was given up on the way */
	if (c != NULL)
		ck_assert_msg(cons_log_count(c, "msg=\"dead-lettered") == 0 &&
				      cons_log_count(c, "level=error") == 0,
			      "errors in the consumer's log:\n%s", cons_log_tail(c, 20));
}

static struct cons *
consumer(struct env *e, const char *name)
{
	return cons_new(name, e->config);
}

/* "stopped: N events handled" of a consumer's last run. */
static unsigned long long
handled_of(struct cons *c)
{
	char *log = cons_log(c), *p, *last = NULL;
	unsigned long long n = 0;

	for (p = log; (p = strstr(p, "stopped: ")) != NULL; p++)
		last = p;
	if (last != NULL)
		ck_assert_int_eq(sscanf(last, "stopped: %llu events handled", &n), 1);
	free(log);
	return n;
}

/* ---- tests ------------------------------------------------------------------------ */

START_TEST(projection_equals_store)
{
	struct env e;
	struct cons *p, *n;
	long long large;

	env_init(&e, "[consumer.projections]\nhttp = 0\nstatus_interval = 200ms\n");
	env_tracker(&e);
	p = consumer(&e, "projections");
	n = consumer(&e, "notifications");
	cons_start(p);
	cons_start(n);
	open_accounts(&e, 20, 100000);
	random_money(&e, 20, 600, 1);
	wait_projection(&e, p);
	/* large withdrawals, announced once each */
	large = cons_query_int(e.conninfo, "SELECT count(*) FROM cqrs.events WHERE type = "
					   "'MoneyWithdrawn' AND (data->>'amount')::bigint >= 100000");
	ck_assert_int_gt(large, 0);
	ck_assert_msg(cons_wait_log(n, "large withdrawal:", (int)large, 20000),
		      "%d large withdrawals logged, %lld made", cons_log_count(n, "large withdrawal:"),
		      large);
	/* what it tells a Prometheus */
	{
		char *health = cons_http_get(p, "/health");
		char *m = cons_http_get(p, "/metrics");
		char want[200];

		ck_assert_msg(strstr(health, " 200 ") != NULL && strstr(health, "ok") != NULL, "%s",
			      health);
		snprintf(want, sizeof(want),
			 "cqrs_consumer_events_handled_total{consumer=\"projections\"} %lld",
			 events_total(&e));
		ck_assert_msg(strstr(m, want) != NULL, "no \"%s\" in\n%s", want, m);
		ck_assert_msg(strstr(m, "cqrs_consumer_live{consumer=\"projections\"} 1") != NULL,
			      "%s", m);
		ck_assert_msg(strstr(m, "cqrs_consumer_batch_seconds_count") != NULL, "%s", m);
		/* caught up: nothing waits in the queue or in hand (the queue's
		 * depth is measured every status_interval) */
		for (int i = 0; i < 50 && strstr(m, "cqrs_consumer_lag_events{consumer=\"projections\"} 0\n")
				 == NULL; i++) {
			free(m);
			usleep(100000);
			m = cons_http_get(p, "/metrics");
		}
		ck_assert_msg(strstr(m, "cqrs_consumer_lag_events{consumer=\"projections\"} 0\n") != NULL,
			      "lag never 0:\n%s", m);
		/* one handler in the group: one timing per event handled */
		snprintf(want, sizeof(want),
			 "cqrs_consumer_handler_seconds_count{consumer=\"projections\"} %lld",
			 events_total(&e));
		ck_assert_msg(strstr(m, want) != NULL, "no \"%s\" in\n%s", want, m);
		free(health);
		free(m);
	}
	ck_assert_int_eq(cons_stop(p), 0);
	ck_assert_int_eq(cons_stop(n), 0);
	ck_assert_int_eq(cons_log_count(n, "large withdrawal:"), (int)large);
	/* each event once: handled + duplicates == events of its types */
	ck_assert_uint_eq(handled_of(p), (unsigned long long)events_total(&e));
	cons_free(p);
	cons_free(n);
	env_fini(&e);
}
END_TEST

/* History before the consumer's first start: it catches up from the store,
 * then goes live, with nothing missed or doubled at the switch. */
START_TEST(catch_up_then_live)
{
	struct env e;
	struct cons *p;

	env_init(&e, NULL);
	env_tracker(&e);
	open_accounts(&e, 10, 1000);
	random_money(&e, 10, 300, 2);
	p = consumer(&e, "projections");
	cons_start(p);
	ck_assert_int_eq(cons_log_count(p, "catching up from the store after 0:0"), 1);
	/* commands while it switches, and after */
	random_money(&e, 10, 300, 3);
	wait_projection(&e, p);
	ck_assert_int_eq(cons_stop(p), 0);
	/* a restart does not catch up again */
	cons_start(p);
	ck_assert_int_eq(cons_log_count(p, "catching up from the store"), 1);
	random_money(&e, 10, 50, 4);
	wait_projection(&e, p);
	ck_assert_int_eq(cons_stop(p), 0);
	cons_free(p);
	env_fini(&e);
}
END_TEST

/* Loader: a child process sending deposits until killed. */
static pid_t
loader_start(struct env *e, int accounts)
{
	pid_t pid = fork();

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct cmdclient *c = NULL;
		struct cqrs_err err = { 0 };
		char line[256], *answer;
		unsigned i = 0;

		if (cqrs_cmdclient_connect(daemon_socket(e->cmdd), 5000, &c, &err) < 0)
			_exit(2);
		for (;;) {
			snprintf(line, sizeof(line),
				 "{\"command\":\"account.deposit\",\"aggregate_id\":\"a%u\","
				 "\"data\":{\"amount\":%u}}",
				 i % (unsigned)accounts, 1 + i % 97);
			if (cqrs_cmdclient_call(c, line, 10000, &answer, &err) < 0)
				_exit(3);
			free(answer);
			i++;
			usleep(2000);
		}
	}
	return pid;
}

static void
loader_stop(pid_t pid)
{
	int st;

	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
}

/* Replay rebuilds the read model while commands keep coming, and gives
 * the very model the live flow had built. */
START_TEST(replay_rebuilds_identical_model_under_load)
{
	struct env e;
	struct cons *p;
	char *out = NULL;
	pid_t load;
	int rc;

	env_init(&e, NULL);
	env_tracker(&e);
	p = consumer(&e, "projections");
	cons_start(p);
	open_accounts(&e, 20, 1000);
	random_money(&e, 20, 1000, 5);
	load = loader_start(&e, 20);
	usleep(500 * 1000);
	rc = cons_ctl(p, "replay projections", &out);
	ck_assert_msg(rc == 0 && strstr(out, "caught up") != NULL, "cqrsctl replay: %d\n%s", rc,
		      out);
	free(out);
	usleep(500 * 1000);
	loader_stop(load);
	wait_projection(&e, p);
	ck_assert_int_gt(cons_log_count(p, "waiting: a replay"), -1);

	/* a second replay, with nothing arriving, gives the same rows */
	{
		PGconn *pg = fixture_connect(e.conninfo);

		fixture_exec(pg, "CREATE TABLE live_copy AS SELECT * FROM bank_balances");
		PQfinish(pg);
	}
	rc = cons_ctl(p, "replay projections", &out);
	ck_assert_msg(rc == 0, "%s", out);
	free(out);
	ck_assert_int_eq(cons_query_int(e.conninfo,
					"SELECT (SELECT count(*) FROM (SELECT * FROM live_copy EXCEPT "
					"SELECT * FROM bank_balances) a) + (SELECT count(*) FROM "
					"(SELECT * FROM bank_balances EXCEPT SELECT * FROM live_copy) b)"),
			 0);
	ck_assert_int_eq(cons_query_int(e.conninfo, "SELECT replays FROM cqrs.consumers WHERE "
						    "name = 'projections'"),
			 2);

	/* and the daemon's own --replay, then live */
	ck_assert_int_eq(cons_stop(p), 0);
	cons_add_arg(p, "--replay");
	cons_start(p);
	random_money(&e, 20, 100, 6);
	wait_projection(&e, p);
	ck_assert_int_eq(cons_stop(p), 0);
	ck_assert_int_eq(cons_query_int(e.conninfo, "SELECT replays FROM cqrs.consumers WHERE "
						    "name = 'projections'"),
			 3);
	cons_free(p);
	env_fini(&e);
}
END_TEST

/* Two consumer processes on one queue under load: still exact. */
START_TEST(competing_consumers_exact)
{
	struct env e;
	struct cons *p1, *p2;
	pid_t load[3];

	env_init(&e, "");
	env_tracker(&e);
	p1 = consumer(&e, "projections");
	p2 = consumer(&e, "projections");
	cons_start(p1);
	cons_start(p2);
	open_accounts(&e, 10, 1000);
	for (int i = 0; i < 3; i++)
		load[i] = loader_start(&e, 10);
	random_money(&e, 10, 3000, 7);
	usleep(1000 * 1000);
	for (int i = 0; i < 3; i++)
		loader_stop(load[i]);
	wait_projection(&e, p1);
	wait_projection(&e, p2);
	ck_assert_int_eq(cons_stop(p1), 0);
	ck_assert_int_eq(cons_stop(p2), 0);
	/* both took part */
	ck_assert_uint_gt(handled_of(p1), 100);
	ck_assert_uint_gt(handled_of(p2), 100);
	ck_assert_uint_eq(handled_of(p1) + handled_of(p2), (unsigned long long)events_total(&e));
	cons_free(p1);
	cons_free(p2);
	env_fini(&e);
}
END_TEST

/* 1000 random transfers between 50 accounts (a few to an account that does
 * not exist, many for more than the source holds), with the transfer process
 * manager killed -9 and restarted half-way, and two of them competing: the
 * sum of the balances never grows and ends where it started, and every
 * transfer ends completed or failed, once. */
START_TEST(thousand_transfers_conserve_money)
{
	struct env e;
	struct cons *t1, *t2, *p;
	const int accounts = 50, transfers = 1000;
	const long long total = 50LL * 10000;
	char **lines = calloc(transfers, sizeof(*lines));
	long long concluded = 0, deadline, sum;
	int killed = 0;
	pid_t pids[3] = { 0, 0, 0 };

	env_init(&e, NULL);
	env_tracker(&e);
	t1 = consumer(&e, "transfers");
	t2 = consumer(&e, "transfers");
	p = consumer(&e, "projections");
	cons_start(t1);
	cons_start(t2);
	cons_start(p);
	pids[0] = proc_pid(cons_proc(t1));
	pids[1] = proc_pid(cons_proc(t2));
	open_accounts(&e, accounts, 10000);
	srandom(8);
	for (int i = 0; i < transfers; i++) {
		long from = random() % accounts, to = random() % (accounts - 1);
		char dest[32];

		if (to >= from)
			to++;
		if (random() % 30 == 0)
			snprintf(dest, sizeof(dest), "ghost%ld", to);
		else
			snprintf(dest, sizeof(dest), "a%ld", to);
		ck_assert_int_ge(asprintf(&lines[i],
					  "{\"command\":\"transfer.start\",\"aggregate_id\":\"t%d\","
					  "\"data\":{\"from\":\"a%ld\",\"to\":\"%s\",\"amount\":%ld}}",
					  i, from, dest, 1 + random() % 6000),
				 0);
	}
	ck_assert_uint_eq(send_lines(&e, lines, transfers), (size_t)transfers);
	deadline = proc_now_ms() + 120000;
	while (proc_now_ms() < deadline) {
		sum = cons_query_int(e.conninfo, BANK_TOTAL_SQL);
		ck_assert_msg(sum <= total, "money was created: %lld > %lld", sum, total);
		concluded = cons_query_int(e.conninfo,
					   "SELECT count(*) FROM cqrs.events WHERE type IN "
					   "('TransferCompleted', 'TransferFailed')");
		if (!killed && concluded >= transfers / 3) {
			cons_kill(t1);
			killed = 1;
			cons_start(t1);
			pids[2] = proc_pid(cons_proc(t1));
		}
		if (concluded >= transfers)
			break;
		usleep(100 * 1000);
	}
	ck_assert_msg(concluded == transfers, "%lld of %d transfers concluded; log:\n%s", concluded,
		      transfers, cons_log_tail(t2, 20));
	ck_assert_int_eq(killed, 1);
	/* nothing in flight any more */
	wait_projection(&e, p);
	ck_assert_int_eq(cons_query_int(e.conninfo, BANK_TOTAL_SQL), total);
	ck_assert_int_eq(cons_query_int(e.conninfo, "SELECT coalesce(sum(balance), -1) FROM "
						    "bank_balances"),
			 total);
	/* each transfer concluded exactly once, and its money where it says */
	ck_assert_int_eq(cons_query_int(e.conninfo,
					"SELECT count(*) FROM (SELECT stream FROM cqrs.events WHERE "
					"type IN ('TransferCompleted', 'TransferFailed') GROUP BY "
					"stream HAVING count(*) <> 1) x"),
			 0);
	ck_assert_int_gt(cons_query_int(e.conninfo, "SELECT count(*) FROM cqrs.events WHERE "
						    "type = 'TransferFailed'"),
			 0);
	ck_assert_int_gt(cons_query_int(e.conninfo, "SELECT count(*) FROM cqrs.events WHERE "
						    "type = 'TransferCompleted'"),
			 100);
	/* per transfer: completed = one withdrawal and one deposit caused by
	 * it; failed = no withdrawal, or one withdrawal and one refund */
	ck_assert_int_eq(
		cons_query_int(e.conninfo,
			       "WITH t AS (SELECT stream, (SELECT type FROM cqrs.events c WHERE "
			       "c.stream = s.stream AND c.type IN ('TransferCompleted', "
			       "'TransferFailed')) AS outcome FROM cqrs.events s WHERE type = "
			       "'TransferStarted'), "
			       "w AS (SELECT metadata->>'cause_stream' AS t, count(*) AS n FROM "
			       "cqrs.events WHERE type = 'MoneyWithdrawn' GROUP BY 1), "
			       "d AS (SELECT e2.metadata->>'cause_stream' AS acc_stream, count(*) AS n, "
			       "w2.metadata->>'cause_stream' AS t FROM cqrs.events e2 JOIN cqrs.events "
			       "w2 ON w2.id::text = e2.metadata->>'cause_event_id' WHERE e2.type = "
			       "'MoneyDeposited' GROUP BY 1, 3) "
			       "SELECT count(*) FROM t LEFT JOIN w ON w.t = t.stream "
			       "LEFT JOIN d ON d.t = t.stream WHERE NOT ("
			       "(t.outcome = 'TransferCompleted' AND w.n = 1 AND d.n = 1) OR "
			       "(t.outcome = 'TransferFailed' AND ((w.n IS NULL AND d.n IS NULL) OR "
			       "(w.n = 1 AND d.n = 1))))"),
		0);
	/* the commands the process manager sent carry its process as peer */
	ck_assert_int_eq(cons_query_int(e.conninfo, daemon_fmt(
		"SELECT count(*) FROM cqrs.events WHERE metadata ? 'cause_stream' AND "
		"(metadata->'peer'->>'pid')::int NOT IN (%d, %d, %d)", (int)pids[0], (int)pids[1],
		(int)pids[2])), 0);
	ck_assert_int_gt(cons_query_int(e.conninfo, "SELECT count(*) FROM cqrs.events WHERE "
					"metadata ? 'cause_stream' AND metadata ? 'peer'"), 100);
	ck_assert_int_eq(cons_stop(t1), 0);
	ck_assert_int_eq(cons_stop(t2), 0);
	ck_assert_int_eq(cons_stop(p), 0);
	ck_assert_int_eq(cons_log_count(t1, "msg=\"dead-lettered") +
				 cons_log_count(t2, "msg=\"dead-lettered"),
			 0);
	for (int i = 0; i < transfers; i++)
		free(lines[i]);
	free(lines);
	cons_free(t1);
	cons_free(t2);
	cons_free(p);
	env_fini(&e);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("consumer_bank");
	TCase *tc = tcase_create("bank");

	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, projection_equals_store);
	tcase_add_test(tc, catch_up_then_live);
	tcase_add_test(tc, replay_rebuilds_identical_model_under_load);
	tcase_add_test(tc, competing_consumers_exact);
	tcase_add_test(tc, thousand_transfers_conserve_money);
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

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
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

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

/* ---- the watchdog while a batch runs ----------------------------------------------- */

static int
count_in(const char *s, const char *needle)
{
	int n = 0;

	for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	return n;
}

static int
pings(struct env *e)
{
	return count_in(proc_notifications(cons_proc(e->c)), "WATCHDOG=1");
}

/* A consumer "poison" (catching up from the beginning) whose commands go to
 * cmd_socket, with systemd's watchdog at WATCHDOG_USEC = usec. */
static void
env_watchdog(struct env *e, const char *cmd_socket, const char *usec)
{
	char *section, *text;

	memset(e, 0, sizeof(*e));
	e->conninfo = fixture_db_new(true);
	snprintf(e->queue, sizeof(e->queue), "%s", cons_unique_queue("watchdog"));
	ck_assert_int_ge(asprintf(&section, "[consumer.poison]\nplugins = %s\nqueue = %s\n"
					    "from = beginning\ncmd_timeout = 10m\n",
				  fixture_plugin("poison"), e->queue),
			 0);
	text = cons_config(e->conninfo, cmd_socket, section);
	e->c = cons_new("poison", text);
	free(section);
	free(text);
	proc_use_notify(cons_proc(e->c));
	proc_setenv(cons_proc(e->c), "WATCHDOG_USEC", usec);
	proc_setenv(cons_proc(e->c), "WATCHDOG_PID", NULL);
	e->tracker = proc_new("cqrs-tracker");
}

/*
 * Two events held in one catch-up batch (one transaction): the consumer
 * pings between their handlers. A handler held in its own code (the
 * barrier) gets no ping, by design; the one before the next handler is due
 * because the first was held longer than the interval.
 */
START_TEST(watchdog_pings_between_handlers)
{
	struct env e;
	char *dir = fixture_tmpdir(), p1[300], p2[300], held[320], data[400];
	int before;

	env_watchdog(&e, NULL, "1000000");	/* a ping due every 500 ms */
	snprintf(p1, sizeof(p1), "%s/one", dir);
	snprintf(p2, sizeof(p2), "%s/two", dir);
	snprintf(data, sizeof(data), "{\"wait\":\"%s\"}", p1);
	cons_append(e.conninfo, "poison-1", "Happened", data);
	snprintf(data, sizeof(data), "{\"wait\":\"%s\"}", p2);
	cons_append(e.conninfo, "poison-2", "Happened", data);
	e.appended = 2;
	cons_spawn(e.c);
	snprintf(held, sizeof(held), "%s.held", p1);
	ck_assert_msg(fixture_wait_file(held, 30000), "the first handler never ran:\n%s",
		      cons_log_tail(e.c, 20));
	before = pings(&e);
	/* not a hope about speed: the time after which the next ping is due */
	usleep(1500 * 1000);
	fixture_touch(p1);
	snprintf(held, sizeof(held), "%s.held", p2);
	ck_assert_msg(fixture_wait_file(held, 30000), "the second handler never ran:\n%s",
		      cons_log_tail(e.c, 20));
	ck_assert_msg(pings(&e) > before, "no WATCHDOG=1 between the handlers of a batch:\n%s",
		      proc_notifications(cons_proc(e.c)));
	fixture_touch(p2);
	cons_poison_wait(e.c, e.conninfo, 2);
	cons_poison_check(e.conninfo, NULL, 2);
	ck_assert(cons_wait_log(e.c, "live: consuming", 1, 30000));
	ck_assert_int_eq(cons_stop(e.c), 0);
	env_fini(&e);
	snprintf(data, sizeof(data), "rm -rf '%s'", dir);
	(void)fixture_run(data, NULL);
	free(dir);
}
END_TEST

/* Reads one line from fd (up to 30 s); malloc'd, without its newline. */
static char *
read_line(int fd)
{
	char buf[8192];
	size_t len = 0;
	long long deadline = proc_now_ms() + 30000;

	while (len < sizeof(buf) - 1) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		ck_assert_msg(proc_now_ms() < deadline, "no request line within 30 s");
		if (poll(&p, 1, 100) <= 0)
			continue;
		n = read(fd, buf + len, 1);
		ck_assert_int_eq(n, 1);
		if (buf[len] == '\n')
			break;
		len++;
	}
	buf[len] = '\0';
	return strdup(buf);
}

/*
 * A handler waiting in cqrs_send() for cqrs-cmdd (here a socket of the
 * test's that reads the command and does not answer until told): the
 * consumer goes on pinging systemd's watchdog while it waits, up to
 * cmd_timeout; the answer, when it comes, lets the event commit.
 */
START_TEST(watchdog_pings_while_send_waits)
{
	struct env e;
	char *dir = fixture_tmpdir(), path[300], *line;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int lfd, fd, before, now = 0;
	long long deadline;
	const char answer[] = "{\"ok\":true,\"events\":[]}\n";

	snprintf(path, sizeof(path), "%s/cmd.sock", dir);
	ck_assert_uint_lt(strlen(path), sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	ck_assert_int_ge(lfd, 0);
	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(lfd, 4), 0);
	env_watchdog(&e, path, "1000000");
	cons_append(e.conninfo, "poison-1", "Happened", "{\"send\":\"poison.noop\"}");
	e.appended = 1;
	cons_spawn(e.c);
	{
		struct pollfd p = { .fd = lfd, .events = POLLIN };

		ck_assert_msg(poll(&p, 1, 30000) == 1, "the handler never connected:\n%s",
			      cons_log_tail(e.c, 20));
	}
	fd = accept(lfd, NULL, NULL);
	ck_assert_int_ge(fd, 0);
	line = read_line(fd);
	ck_assert_msg(strstr(line, "\"command\":\"poison.noop\"") != NULL, "%s", line);
	free(line);

	/* the handler waits for the answer: the pings go on */
	before = pings(&e);
	deadline = proc_now_ms() + 30000;
	while ((now = pings(&e)) < before + 3 && proc_now_ms() < deadline)
		usleep(50 * 1000);
	ck_assert_msg(now >= before + 3, "%d WATCHDOG=1 in 30 s while cqrs_send() waited",
		      now - before);
	ck_assert_int_eq(cons_poison_count(e.conninfo), 0);

	ck_assert_int_eq(write(fd, answer, strlen(answer)), (ssize_t)strlen(answer));
	cons_poison_wait(e.c, e.conninfo, 1);
	ck_assert(cons_wait_log(e.c, "live: consuming", 1, 30000));
	ck_assert_int_eq(cons_stop(e.c), 0);
	close(fd);
	close(lfd);
	env_fini(&e);
	unlink(path);
	rmdir(dir);
	free(dir);
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
	tc = tcase_create("watchdog");
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, watchdog_pings_between_handlers);
	tcase_add_test(tc, watchdog_pings_while_send_waits);
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

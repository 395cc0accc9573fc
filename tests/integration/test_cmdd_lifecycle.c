/*
 * test_cmdd_lifecycle.c - cqrs-cmdd starting and refusing to start:
 * plugins (bad ABI, no entry symbol, duplicate command, two domains side
 * by side), its socket (stale file, live daemon, a listener with a full
 * backlog, a file that is no socket, mode), sd_notify,
 * configuration (--check-config, environment overrides, --migrate) and
 * idle connections. The daemon runs as a separate process.
 */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "daemon.h"
#include "fixture.h"
#include "uuid.h"

static char *conninfo;

static void
setup(void)
{
	conninfo = NULL;
}

static void
teardown(void)
{
	daemon_gc_run();
}

static const char *
db(void)
{
	if (conninfo == NULL)
		conninfo = daemon_gc(fixture_db_new(true));
	return conninfo;
}

static const char *
open_line(const char *agg)
{
	return daemon_fmt("{\"command\":\"account.open\",\"aggregate_id\":\"%s\","
			  "\"data\":{\"owner\":\"o\"}}", agg);
}

/* Whether something accepts connections at path. */
static bool
accepting(const char *path)
{
	struct daemon_conn *c = daemon_conn_try_open(path);

	daemon_conn_close(c);
	return c != NULL;
}

/* ---- plugins ----------------------------------------------------------------------- */

/* A daemon with these plugin paths must exit 1 naming want in its log. */
static void
refuses_plugins(const char *plugin_paths, const char *want, const char *want2)
{
	struct daemon *d = daemon_new_cmdd(db(), NULL);
	char *log;
	int code;

	daemon_set(d, "cmd", "plugins", "%s", plugin_paths);
	code = daemon_run(d, 20000);
	log = daemon_gc(daemon_log(d));
	ck_assert_msg(code == 1, "plugins \"%s\": exit status %d, want 1; log:\n%s", plugin_paths,
		      code, log);
	ck_assert_msg(strstr(log, want) != NULL, "plugins \"%s\": the log should name \"%s\":\n%s",
		      plugin_paths, want, log);
	if (want2 != NULL)
		ck_assert_msg(strstr(log, want2) != NULL,
			      "plugins \"%s\": the log should say \"%s\":\n%s", plugin_paths, want2,
			      log);
	ck_assert_msg(!accepting(daemon_socket(d)), "a daemon that refused to start listens?");
	daemon_free(d);
}

START_TEST(bad_plugins_stop_the_start)
{
	const char *bank = daemon_fmt("%s", fixture_plugin("bank"));	/* a ring buffer */

	refuses_plugins(fixture_plugin("badabi"), fixture_plugin("badabi"), "999");
	refuses_plugins(fixture_plugin("nosym"), fixture_plugin("nosym"), NULL);
	refuses_plugins("/nonexistent/none.so", "/nonexistent/none.so", NULL);
	refuses_plugins(fixture_plugin("failreg"), fixture_plugin("failreg"), NULL);
	/* a good plugin before a bad one does not save the start */
	refuses_plugins(daemon_fmt("%s %s", bank, fixture_plugin("nosym")),
			fixture_plugin("nosym"), NULL);
	/* a command registered twice */
	refuses_plugins(daemon_fmt("%s %s", bank, fixture_plugin("dupcmd")),
			fixture_plugin("dupcmd"), "account.open");
}
END_TEST

START_TEST(two_domains_side_by_side)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank other");
	struct daemon_conn *c;
	const char *a;

	daemon_start(d);
	c = daemon_connect(d);
	a = daemon_gc(daemon_conn_call(c, "{\"command\":\"counter.add\",\"aggregate_id\":\"c1\","
					  "\"data\":{\"by\":5}}"));
	DAEMON_ASSERT_OK(a);
	ck_assert_str_eq(daemon_answer_str(a, "stream"), "counter-c1");
	ck_assert_str_eq(daemon_answer_str(a, "events.0.type"), "CounterAdded");
	a = daemon_gc(daemon_conn_call(c, "{\"command\":\"counter.add\",\"aggregate_id\":\"c1\","
					  "\"data\":{\"by\":-2}}"));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 2);
	a = daemon_gc(daemon_conn_call(c, "{\"command\":\"counter.add\",\"aggregate_id\":\"c1\","
					  "\"data\":{\"by\":\"x\"}}"));
	DAEMON_ASSERT_ERROR(a, "invalid");
	ck_assert_msg(strstr(daemon_answer_str(a, "error.message"), "by") != NULL, "%s", a);
	/* the same aggregate id in the other domain is another stream */
	a = daemon_gc(daemon_conn_call(c, open_line("c1")));
	DAEMON_ASSERT_OK(a);
	ck_assert_str_eq(daemon_answer_str(a, "stream"), "account-c1");
	ck_assert_int_eq(daemon_answer_int(a, "version"), 1);
	a = daemon_gc(daemon_conn_call(c, "{\"command\":\"account.deposit\",\"aggregate_id\":\"c1\","
					  "\"data\":{\"amount\":3}}"));
	DAEMON_ASSERT_OK(a);
	daemon_conn_close(c);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);

	/* the other order loads too */
	d = daemon_new_cmdd(db(), "other bank");
	daemon_start(d);
	a = daemon_gc(daemon_call(d, "{\"command\":\"counter.add\",\"aggregate_id\":\"c1\","
				     "\"data\":{\"by\":1}}"));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 3);
	daemon_free(d);
}
END_TEST

/* ---- the socket ------------------------------------------------------------------------ */

START_TEST(stale_socket_file_is_replaced)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct daemon_conn *c;

	/* what a crashed daemon leaves: a socket file nobody listens on */
	ck_assert_int_ge(fd, 0);
	memcpy(sa.sun_path, daemon_socket(d), strlen(daemon_socket(d)) + 1);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(fd, 1), 0);
	close(fd);
	c = daemon_conn_try_open(daemon_socket(d));
	ck_assert_msg(c == NULL && errno == ECONNREFUSED, "the stale socket should refuse");

	daemon_start(d);
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, open_line("st1"))));
	daemon_free(d);
}
END_TEST

START_TEST(second_daemon_on_a_live_socket_refuses)
{
	struct daemon *a = daemon_new_cmdd(db(), "bank"), *b = daemon_new_cmdd(db(), "bank");
	char *log;
	int code;

	daemon_start(a);
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(a, open_line("lv1"))));
	daemon_set(b, "cmd", "socket", "%s", daemon_socket(a));
	code = daemon_run(b, 20000);
	log = daemon_gc(daemon_log(b));
	ck_assert_msg(code == 1, "second daemon: exit status %d, want 1; log:\n%s", code, log);
	ck_assert_msg(strstr(log, daemon_socket(a)) != NULL,
		      "the message should name the socket %s:\n%s", daemon_socket(a), log);
	/* the first one is untouched: still there, still reachable at the path */
	ck_assert(daemon_running(a));
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(a, "{\"command\":\"account.deposit\","
						  "\"aggregate_id\":\"lv1\",\"data\":{\"amount\":1}}")));
	ck_assert_int_eq(daemon_stop(a), 0);
	daemon_free(b);
	daemon_free(a);
}
END_TEST

/* A daemon on d's socket path must exit 1 with a message naming the path and
 * want, and leave the file there. */
static void
refuses_socket_path(struct daemon *d, const char *want)
{
	const char *path = daemon_socket(d);
	struct stat st;
	char *log;
	int code;

	code = daemon_run(d, 20000);
	log = daemon_gc(daemon_log(d));
	ck_assert_msg(code == 1, "exit status %d, want 1; log:\n%s", code, log);
	ck_assert_msg(strstr(log, path) != NULL,
		      "the message should name the socket %s:\n%s", path, log);
	ck_assert_msg(strstr(log, want) != NULL, "the message should say \"%s\":\n%s", want, log);
	ck_assert_msg(lstat(path, &st) == 0, "%s was removed", path);
}

START_TEST(socket_in_use_with_a_full_backlog_is_left_alone)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int lfd = socket(AF_UNIX, SOCK_STREAM, 0), cfd[64], n = 0, e = 0;
	struct stat before, after;

	/* a live listener that does not accept: connect() says EAGAIN, not
	 * ECONNREFUSED, so the file is in use, not stale */
	ck_assert_int_ge(lfd, 0);
	memcpy(sa.sun_path, daemon_socket(d), strlen(daemon_socket(d)) + 1);
	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(lfd, 0), 0);
	while (n < 64) {
		cfd[n] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
		ck_assert_int_ge(cfd[n], 0);
		if (connect(cfd[n], (struct sockaddr *)&sa, sizeof(sa)) != 0) {
			e = errno;
			close(cfd[n]);
			break;
		}
		n++;
	}
	ck_assert_msg(e == EAGAIN, "filling the backlog: after %d connections: %s", n, strerror(e));
	ck_assert_int_eq(lstat(daemon_socket(d), &before), 0);

	refuses_socket_path(d, strerror(EAGAIN));
	ck_assert_int_eq(lstat(daemon_socket(d), &after), 0);
	ck_assert_msg(before.st_ino == after.st_ino, "the socket file was replaced");
	while (n > 0)
		close(cfd[--n]);
	close(lfd);
	daemon_free(d);
}
END_TEST

START_TEST(socket_path_that_is_no_socket_is_left_alone)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank");
	FILE *f = fopen(daemon_socket(d), "w");
	char buf[64] = "";

	/* connect() to a regular file says ECONNREFUSED too */
	ck_assert_ptr_nonnull(f);
	fputs("precious\n", f);
	ck_assert_int_eq(fclose(f), 0);

	refuses_socket_path(d, "not a socket");
	f = fopen(daemon_socket(d), "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_ptr_nonnull(fgets(buf, sizeof(buf), f));
	fclose(f);
	ck_assert_str_eq(buf, "precious\n");
	daemon_free(d);
}
END_TEST

START_TEST(ready_notification_and_socket_mode)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank");
	struct stat st;
	const char *notes;

	daemon_use_notify(d);
	daemon_start(d);	/* waits for READY=1, then checks the socket accepts */
	ck_assert_int_eq(stat(daemon_socket(d), &st), 0);
	ck_assert(S_ISSOCK(st.st_mode));
	ck_assert_msg((st.st_mode & 07777) == 0660, "socket mode %04o, default is 0660",
		      (unsigned)(st.st_mode & 07777));
	ck_assert_int_eq(daemon_stop(d), 0);
	notes = daemon_notifications(d);
	ck_assert_msg(strstr(notes, "STOPPING=1") != NULL,
		      "no STOPPING=1 on SIGTERM (STYLE.md, Lifecycle); got:\n%s", notes);

	daemon_set(d, "cmd", "socket_mode", "0600");
	daemon_start(d);
	ck_assert_int_eq(stat(daemon_socket(d), &st), 0);
	ck_assert_msg((st.st_mode & 07777) == 0600, "socket mode %04o, configured 0600",
		      (unsigned)(st.st_mode & 07777));
	daemon_free(d);

	/* without NOTIFY_SOCKET nothing is sent, and nothing breaks */
	d = daemon_new_cmdd(db(), "bank");
	daemon_setenv(d, "NOTIFY_SOCKET", NULL);
	daemon_start(d);
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, open_line("rn1"))));
	daemon_free(d);
}
END_TEST

/* ---- configuration ---------------------------------------------------------------------- */

START_TEST(check_config)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank");
	char *log;
	int code;

	daemon_add_arg(d, "--check-config");
	code = daemon_run(d, 20000);
	ck_assert_msg(code == 0, "--check-config on a good file: %d; log:\n%s", code,
		      (char *)daemon_gc(daemon_log(d)));
	ck_assert_msg(!accepting(daemon_socket(d)), "--check-config must not listen");

	daemon_set(d, "cmd", "pool_size", "ten");
	code = daemon_run(d, 20000);
	log = daemon_gc(daemon_log(d));
	ck_assert_msg(code == 1 && strstr(log, "pool_size") != NULL,
		      "bad pool_size: exit %d, log:\n%s", code, log);
	daemon_set(d, "cmd", "pool_size", NULL);

	/* a misspelt key is not silently ignored */
	daemon_set(d, "cmd", "pool_sise", "4");
	code = daemon_run(d, 20000);
	log = daemon_gc(daemon_log(d));
	ck_assert_msg(code == 1 && strstr(log, "pool_sise") != NULL,
		      "misspelt key: exit %d, log:\n%s", code, log);
	daemon_set(d, "cmd", "pool_sise", NULL);

	/* a bad plugin is found by --check-config too */
	daemon_set(d, "cmd", "plugins", "%s", fixture_plugin("badabi"));
	code = daemon_run(d, 20000);
	ck_assert_msg(code == 1, "--check-config with a bad plugin: %d", code);
	daemon_free(d);

	/* a config file that is not there */
	d = daemon_new_cmdd(db(), "bank");
	daemon_add_arg(d, "-c");
	daemon_add_arg(d, "/nonexistent/cqrs.conf");
	code = daemon_run(d, 20000);
	log = daemon_gc(daemon_log(d));
	ck_assert_msg(code == 1 && strstr(log, "/nonexistent/cqrs.conf") != NULL,
		      "missing config: exit %d, log:\n%s", code, log);
	daemon_free(d);
}
END_TEST

START_TEST(environment_overrides_the_file)
{
	struct daemon *d = daemon_new_cmdd("host=/nonexistent dbname=nothing", "bank");
	const char *other = daemon_fmt("%s/other.sock", daemon_dir(d));

	/* the file names another socket and a database that does not exist */
	daemon_set(d, "cmd", "socket", "%s", other);
	daemon_setenv(d, "CQRS_CMD_SOCKET", daemon_socket(d));
	daemon_setenv(d, "CQRS_STORE_CONNINFO", db());
	daemon_start(d);
	ck_assert_msg(access(other, F_OK) != 0, "the file's socket was used");
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, open_line("env1"))));
	daemon_free(d);
}
END_TEST

START_TEST(migrate_option_prepares_a_fresh_database)
{
	struct daemon *d;

	conninfo = daemon_gc(fixture_db_new(false));
	d = daemon_new_cmdd(conninfo, "bank");
	daemon_add_arg(d, "--migrate");
	daemon_start(d);
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, open_line("mg1"))));
	/* and again on a migrated one: nothing to do, no harm */
	daemon_restart(d);
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, "{\"command\":\"account.deposit\","
						  "\"aggregate_id\":\"mg1\",\"data\":{\"amount\":1}}")));
	daemon_free(d);
}
END_TEST

START_TEST(idle_connections_are_closed)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank");
	struct daemon_conn *idle, *busy;
	struct timespec t0, t1;
	double waited;

	daemon_set(d, "cmd", "idle_timeout", "1s");
	daemon_start(d);
	idle = daemon_connect(d);
	busy = daemon_connect(d);
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(busy, open_line("idle1"))));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	/* one request every 400 ms keeps a connection alive */
	for (int i = 0; i < 8; i++) {
		usleep(400000);
		DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(busy, "{\"command\":\"account.deposit\","
			"\"aggregate_id\":\"idle1\",\"data\":{\"amount\":1}}")));
	}
	ck_assert_msg(daemon_conn_wait_closed(idle, 5000),
		      "an idle connection outlived idle_timeout = 1s");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	ck_assert_msg(waited < 6.0, "closed after %.1f s", waited);
	daemon_conn_close(idle);
	daemon_conn_close(busy);
	daemon_free(d);
}
END_TEST

START_TEST(max_connections_refuses_with_unavailable)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank");
	struct daemon_conn *held[3], *extra;
	const char *a;
	int64_t deadline;

	daemon_set(d, "cmd", "max_connections", "3");
	daemon_start(d);
	for (int i = 0; i < 3; i++) {
		held[i] = daemon_connect(d);
		/* a round trip, so the daemon has surely accepted it */
		DAEMON_ASSERT_ERROR(daemon_gc(daemon_conn_call(held[i], "x")), "malformed");
	}
	extra = daemon_connect(d);
	a = daemon_gc(daemon_conn_recv(extra, DAEMON_RECV_TIMEOUT_MS));
	DAEMON_ASSERT_ERROR(a, "unavailable");
	ck_assert(daemon_conn_wait_closed(extra, 10000));
	daemon_conn_close(extra);
	/* the ones in are served as usual */
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(held[0], open_line("mc1"))));
	/* one leaves: a newcomer gets its place */
	daemon_conn_close(held[1]);
	deadline = (int64_t)time(NULL) + 10;
	for (;;) {
		extra = daemon_connect(d);
		daemon_conn_send(extra, "{\"command\":\"account.deposit\",\"aggregate_id\":\"mc1\","
					"\"data\":{\"amount\":1}}");
		a = daemon_gc(daemon_conn_recv(extra, DAEMON_RECV_TIMEOUT_MS));
		daemon_conn_close(extra);
		if (daemon_answer_ok(a))
			break;
		DAEMON_ASSERT_ERROR(a, "unavailable");
		ck_assert_msg(time(NULL) < deadline, "no room after a client left");
		usleep(50000);
	}
	daemon_conn_close(held[0]);
	daemon_conn_close(held[2]);
	daemon_free(d);
}
END_TEST

START_TEST(sigterm_with_idle_clients_exits_promptly)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank");
	struct daemon_conn *idle, *half;
	const char *part = "{\"command\":\"account.deposit\",\"aggregate_id\":\"q1\",\"da";
	time_t t0;
	int code;

	daemon_start(d);
	idle = daemon_connect(d);
	half = daemon_connect(d);
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(idle, open_line("q1"))));
	daemon_conn_write(half, part, strlen(part));
	usleep(200000);
	t0 = time(NULL);
	daemon_signal(d, SIGTERM);
	code = daemon_wait(d, 10000);
	ck_assert_msg(code == 0, "exit status %d (-1: still running 10 s after SIGTERM with an "
		      "idle client and a half-sent line); log:\n%s", code, daemon_log_tail(d, 20));
	ck_assert_int_le(time(NULL) - t0, 10);
	ck_assert(daemon_conn_wait_closed(idle, 5000));
	daemon_conn_close(idle);
	daemon_conn_close(half);
	daemon_free(d);
}
END_TEST

/* SIGTERM with a command whose append never comes back (the stream's lock
 * is held by the test) and a client that never reads: the drain ends at
 * cmd.shutdown_timeout, and the daemon says what it dropped. */
START_TEST(sigterm_drain_ends_at_shutdown_timeout)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank");
	struct daemon_conn *c, *deaf;
	PGconn *locker;
	int code;

	daemon_set(d, "cmd", "shutdown_timeout", "1s");
	/* the held append outlasts the drain, whatever the machine's pace */
	daemon_set(d, "cmd", "store_timeout", "1h");
	daemon_start(d);
	c = daemon_connect(d);
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line("drain1"))));
	/* the append's lock on the stream (sql/001_event_store.sql) */
	locker = fixture_connect(db());
	fixture_exec(locker, "SELECT pg_advisory_lock(1129468499, hashtext('account-drain1'))");
	{
		const char *line = "{\"command\":\"account.deposit\",\"aggregate_id\":\"drain1\","
				   "\"data\":{\"amount\":5}}\n";

		daemon_conn_write(c, line, strlen(line));
	}
	/* a client that asks and never reads */
	deaf = daemon_connect(d);
	for (int i = 0; i < 100; i++)
		daemon_conn_write(deaf, "{}\n", 3);
	/* the deposit waits on the lock */
	for (int i = 0; i < 300; i++) {
		if (fixture_query_int(locker, "SELECT count(*) FROM pg_locks WHERE "
					      "locktype = 'advisory' AND NOT granted") > 0)
			break;
		usleep(100 * 1000);
	}
	ck_assert_int_gt(fixture_query_int(locker, "SELECT count(*) FROM pg_locks WHERE "
						   "locktype = 'advisory' AND NOT granted"),
			 0);
	daemon_signal(d, SIGTERM);
	code = daemon_wait(d, 30000);
	ck_assert_msg(code == 0, "exit status %d (-1: still running 30 s after SIGTERM with "
		      "shutdown_timeout = 1s); log:\n%s", code, daemon_log_tail(d, 20));
	ck_assert_msg(daemon_wait_log(d, "cmd.shutdown_timeout (1.0 s) reached with 1 commands "
					 "in flight", 1000),
		      "%s", daemon_log_tail(d, 20));
	fixture_exec(locker, "SELECT pg_advisory_unlock_all()");
	PQfinish(locker);
	daemon_conn_close(deaf);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

/* STYLE.md, Lifecycle: SIGHUP reloads (systemd's ExecReload sends it); at
 * the least it must not end the daemon. */
START_TEST(sighup_does_not_end_the_daemon)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank");

	daemon_start(d);
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, open_line("hup1"))));
	daemon_signal(d, SIGHUP);
	usleep(500000);
	ck_assert_msg(daemon_running(d), "SIGHUP ended the daemon; log:\n%s", daemon_log_tail(d, 10));
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, "{\"command\":\"account.deposit\","
						  "\"aggregate_id\":\"hup1\",\"data\":{\"amount\":1}}")));
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

static Suite *
cmdd_lifecycle_suite(void)
{
	Suite *s = suite_create("cmdd_lifecycle");
	TCase *tc = tcase_create("lifecycle");

	tcase_set_timeout(tc, 120);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, bad_plugins_stop_the_start);
	tcase_add_test(tc, two_domains_side_by_side);
	tcase_add_test(tc, stale_socket_file_is_replaced);
	tcase_add_test(tc, second_daemon_on_a_live_socket_refuses);
	tcase_add_test(tc, socket_in_use_with_a_full_backlog_is_left_alone);
	tcase_add_test(tc, socket_path_that_is_no_socket_is_left_alone);
	tcase_add_test(tc, ready_notification_and_socket_mode);
	tcase_add_test(tc, check_config);
	tcase_add_test(tc, environment_overrides_the_file);
	tcase_add_test(tc, migrate_option_prepares_a_fresh_database);
	tcase_add_test(tc, idle_connections_are_closed);
	tcase_add_test(tc, max_connections_refuses_with_unavailable);
	tcase_add_test(tc, sigterm_with_idle_clients_exits_promptly);
	tcase_add_test(tc, sigterm_drain_ends_at_shutdown_timeout);
	tcase_add_test(tc, sighup_does_not_end_the_daemon);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(cmdd_lifecycle_suite());
	int failed;

	(void)fixture_pg_admin_conninfo();
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

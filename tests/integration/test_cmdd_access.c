/*
 * test_cmdd_access.c - who sent a command: cqrs-cmdd records the socket's
 * peer credentials in every event (metadata.peer), refuses a request that
 * claims its own, and names the uid in its log lines. The test runs as root
 * and creates real users, then sends commands as each of them from a child
 * process that has taken the user's uid, gid and groups.
 */
#include <check.h>
#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon.h"
#include "fixture.h"

#define ALICE "cqrs-test-alice"
#define BOB "cqrs-test-bob"

/* The user's uid, creating it (a system user without a home) if needed. */
static uid_t
test_user(const char *name)
{
	struct passwd *pw = getpwnam(name);

	if (pw == NULL) {
		char *out = NULL;
		int rc = fixture_run(daemon_fmt("useradd --system --no-create-home --shell "
						"/usr/sbin/nologin %s", name), &out);
		ck_assert_msg(rc == 0 || getpwnam(name) != NULL, "useradd %s: exit %d: %s", name, rc,
			      out ? out : "");
		free(out);
		pw = getpwnam(name);
	}
	ck_assert_msg(pw != NULL, "no user %s", name);
	return pw->pw_uid;
}

/*
 * Sends line to the daemon's socket as user name (a child that drops to
 * its uid, gid and groups) and returns the answer line (gc'd), or NULL.
 * *pid_out: the child's pid, which the daemon sees as the peer's.
 */
static char *
send_as(struct daemon *d, const char *name, const char *line, pid_t *pid_out)
{
	struct passwd *pw = getpwnam(name);
	int fds[2], status;
	char buf[8192];
	size_t have = 0;
	pid_t pid;

	ck_assert_ptr_nonnull(pw);
	ck_assert_int_eq(pipe(fds), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct sockaddr_un sun = { .sun_family = AF_UNIX };
		char ans[8192];
		ssize_t n;
		size_t got = 0;
		int fd;

		close(fds[0]);
		if (initgroups(name, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 ||
		    setuid(pw->pw_uid) != 0)
			_exit(2);
		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", daemon_socket(d));
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0)
			_exit(3);
		if (write(fd, line, strlen(line)) != (ssize_t)strlen(line) || write(fd, "\n", 1) != 1)
			_exit(4);
		while (got < sizeof(ans) && (n = read(fd, ans + got, sizeof(ans) - got)) > 0) {
			got += (size_t)n;
			if (memchr(ans, '\n', got) != NULL)
				break;
		}
		if (write(fds[1], ans, got) != (ssize_t)got)
			_exit(5);
		_exit(0);
	}
	close(fds[1]);
	for (;;) {
		ssize_t n = read(fds[0], buf + have, sizeof(buf) - 1 - have);
		if (n <= 0)
			break;
		have += (size_t)n;
	}
	close(fds[0]);
	buf[have] = '\0';
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "client as %s: status %d",
		      name, status);
	if (pid_out != NULL)
		*pid_out = pid;
	if (strchr(buf, '\n') != NULL)
		*strchr(buf, '\n') = '\0';
	return have > 0 ? daemon_gc(strdup(buf)) : NULL;
}

/* A daemon whose socket anybody may reach. */
static struct daemon *
start_open_cmdd(const char **conninfo)
{
	struct daemon *d;

	*conninfo = daemon_gc(fixture_db_new(true));
	d = daemon_new_cmdd(*conninfo, "bank");
	daemon_set(d, "cmd", "socket_mode", "0666");
	ck_assert_int_eq(chmod(daemon_dir(d), 0755), 0);
	daemon_start(d);
	return d;
}

static long long
qint(const char *conninfo, const char *sql)
{
	PGconn *pg = fixture_connect(conninfo);
	long long v = fixture_query_int(pg, sql);

	PQfinish(pg);
	return v;
}

START_TEST(each_event_records_who_sent_its_command)
{
	const char *conninfo;
	struct daemon *d;
	uid_t alice = test_user(ALICE), bob = test_user(BOB);
	pid_t pa, pb;
	char *a;

	ck_assert_msg(geteuid() == 0, "this test creates users: run it as root");
	d = start_open_cmdd(&conninfo);
	a = send_as(d, ALICE, "{\"command\":\"account.open\",\"aggregate_id\":\"a1\","
		    "\"data\":{\"owner\":\"alice\"}}", &pa);
	DAEMON_ASSERT_OK(a);
	a = send_as(d, BOB, "{\"command\":\"account.open\",\"aggregate_id\":\"b1\","
		    "\"data\":{\"owner\":\"bob\"},\"metadata\":{\"user\":\"admin\"}}", &pb);
	DAEMON_ASSERT_OK(a);

	ck_assert_int_eq(qint(conninfo, daemon_fmt(
		"SELECT count(*) FROM cqrs.events WHERE stream = 'account-a1' AND "
		"(metadata->'peer'->>'uid')::bigint = %u AND (metadata->'peer'->>'pid')::bigint = %d "
		"AND metadata->'peer'->>'user' = '%s' AND (metadata->'peer'->>'gid')::bigint = %u",
		(unsigned)alice, (int)pa, ALICE, (unsigned)getpwnam(ALICE)->pw_gid)), 1);
	ck_assert_int_eq(qint(conninfo, daemon_fmt(
		"SELECT count(*) FROM cqrs.events WHERE stream = 'account-b1' AND "
		"(metadata->'peer'->>'uid')::bigint = %u AND (metadata->'peer'->>'pid')::bigint = %d "
		"AND metadata->'peer'->>'user' = '%s' AND metadata->>'user' = 'admin'",
		(unsigned)bob, (int)pb, BOB)), 1);
	/* every event has one, root's too */
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, "{\"command\":\"account.deposit\","
		"\"aggregate_id\":\"a1\",\"data\":{\"amount\":5}}")));
	ck_assert_int_eq(qint(conninfo, "SELECT count(*) FROM cqrs.events WHERE "
			      "NOT metadata ? 'peer'"), 0);
	ck_assert_int_eq(qint(conninfo, "SELECT count(*) FROM cqrs.events WHERE "
			      "metadata->'peer'->>'user' = 'root' AND "
			      "(metadata->'peer'->>'uid')::int = 0"), 1);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

START_TEST(a_request_that_names_its_own_peer_is_malformed)
{
	const char *conninfo;
	struct daemon *d;
	uid_t alice = test_user(ALICE);
	char *a;

	d = start_open_cmdd(&conninfo);
	daemon_set(d, "log", "level", "info");
	a = send_as(d, ALICE, "{\"command\":\"account.open\","
		    "\"aggregate_id\":\"f1\",\"data\":{\"owner\":\"x\"},"
		    "\"metadata\":{\"peer\":{\"uid\":0,\"user\":\"root\"}}}", NULL);
	DAEMON_ASSERT_ERROR(a, "malformed");
	ck_assert_msg(strstr(a, "metadata.peer") != NULL, "%s", a);
	ck_assert_int_eq(qint(conninfo, "SELECT count(*) FROM cqrs.events"), 0);
	/* the log line about it names the uid that sent it */
	ck_assert_msg(daemon_wait_log(d, daemon_fmt("uid=%u", (unsigned)alice), 10000),
		      "no log line with uid=%u: %s", (unsigned)alice, daemon_log_tail(d, 10));
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

static void
teardown(void)
{
	daemon_gc_run();
}

static Suite *
access_suite(void)
{
	Suite *s = suite_create("cmdd_access");
	TCase *tc = tcase_create("peer");

	tcase_add_checked_fixture(tc, NULL, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, each_event_records_who_sent_its_command);
	tcase_add_test(tc, a_request_that_names_its_own_peer_is_malformed);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(access_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

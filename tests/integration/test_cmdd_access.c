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
#include <signal.h>
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
#define TELLERS "cqrs-test-tellers"

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

/* The group's gid, creating it if needed, with member as a supplementary
 * member (NULL: none). */
static gid_t
test_group(const char *name, const char *member)
{
	struct group *gr = getgrnam(name);
	char *out = NULL;
	int rc;

	if (gr == NULL) {
		rc = fixture_run(daemon_fmt("groupadd --system %s", name), &out);
		ck_assert_msg(rc == 0 || getgrnam(name) != NULL, "groupadd %s: exit %d: %s", name,
			      rc, out ? out : "");
		free(out);
		out = NULL;
		gr = getgrnam(name);
	}
	ck_assert_msg(gr != NULL, "no group %s", name);
	if (member != NULL) {
		rc = fixture_run(daemon_fmt("usermod -a -G %s %s", name, member), &out);
		ck_assert_msg(rc == 0, "usermod -a -G %s %s: exit %d: %s", name, member, rc,
			      out ? out : "");
		free(out);
	}
	return getgrnam(name)->gr_gid;
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

/* A daemon whose socket anybody may reach, not started. */
static struct daemon *
new_open_cmdd(const char **conninfo)
{
	struct daemon *d;

	*conninfo = daemon_gc(fixture_db_new(true));
	d = daemon_new_cmdd(*conninfo, "bank");
	daemon_set(d, "cmd", "socket_mode", "0666");
	ck_assert_int_eq(chmod(daemon_dir(d), 0755), 0);
	return d;
}

static struct daemon *
start_open_cmdd(const char **conninfo)
{
	struct daemon *d = new_open_cmdd(conninfo);

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

static const char *
cmd_line(const char *command, const char *agg, const char *data)
{
	return daemon_fmt("{\"command\":\"%s\",\"aggregate_id\":\"%s\",\"data\":%s}", command, agg,
			  data);
}

/* Replaces the line starting with "key =" in the daemon's config file. */
static void
config_replace(struct daemon *d, const char *key, const char *line)
{
	char *text = fixture_read_file(daemon_config_path(d));
	char *at, *eol;
	FILE *f;

	ck_assert_ptr_nonnull(text);
	at = strstr(text, daemon_fmt("\n%s =", key));
	ck_assert_msg(at != NULL, "no %s in the config", key);
	eol = strchr(at + 1, '\n');
	f = fopen(daemon_config_path(d), "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "%.*s\n%s%s", (int)(at - text), text, line, eol ? eol : "\n");
	fclose(f);
	free(text);
}

START_TEST(the_policy_allows_and_forbids_by_name_uid_and_group)
{
	const char *conninfo;
	struct daemon *d;
	uid_t alice = test_user(ALICE), bob = test_user(BOB);
	long long before;
	char *a;

	test_group(TELLERS, BOB);
	d = new_open_cmdd(&conninfo);
	daemon_set(d, "access", "account.open", "%s uid:%u", ALICE, (unsigned)bob);
	daemon_set(d, "access", "account.deposit", "@%s", TELLERS);
	/* alice's primary group (useradd --system makes one of her name) */
	daemon_set(d, "access", "account.withdraw", "@%s", ALICE);
	daemon_set(d, "access", "account.*", "root");
	daemon_start(d);

	/* by name, by uid:N, by prefix */
	DAEMON_ASSERT_OK(send_as(d, ALICE, cmd_line("account.open", "p1", "{\"owner\":\"a\"}"), NULL));
	DAEMON_ASSERT_OK(send_as(d, BOB, cmd_line("account.open", "p2", "{\"owner\":\"b\"}"), NULL));
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, cmd_line("account.close", "p2", "{}"))));
	/* a supplementary group */
	DAEMON_ASSERT_OK(send_as(d, BOB, cmd_line("account.deposit", "p1", "{\"amount\":10}"), NULL));
	/* a primary group */
	DAEMON_ASSERT_OK(send_as(d, ALICE, cmd_line("account.withdraw", "p1", "{\"amount\":3}"),
				 NULL));

	/* and nobody else: forbidden, nothing appended, logged with uid and command */
	before = qint(conninfo, "SELECT count(*) FROM cqrs.events");
	a = send_as(d, ALICE, cmd_line("account.deposit", "p1", "{\"amount\":1}"), NULL);
	DAEMON_ASSERT_ERROR(a, "forbidden");
	ck_assert_msg(strstr(a, "account.deposit") != NULL, "%s", a);
	a = send_as(d, BOB, cmd_line("account.withdraw", "p1", "{\"amount\":1}"), NULL);
	DAEMON_ASSERT_ERROR(a, "forbidden");
	a = send_as(d, BOB, cmd_line("account.close", "p1", "{}"), NULL);
	DAEMON_ASSERT_ERROR(a, "forbidden");
	ck_assert_int_eq(qint(conninfo, "SELECT count(*) FROM cqrs.events"), before);
	ck_assert(daemon_wait_log(d, daemon_fmt("uid=%u msg=\"forbidden: uid %u (%s) may not "
						"send account.deposit", (unsigned)alice,
						(unsigned)alice, ALICE), 10000));

	/* SIGHUP: a new policy takes effect; one that names nobody known is
	 * refused and the running one kept */
	config_replace(d, "account.deposit", daemon_fmt("account.deposit = @%s %s", TELLERS, ALICE));
	daemon_signal(d, SIGHUP);
	ck_assert(daemon_wait_log(d, "log.level=info, [access]", 20000));
	DAEMON_ASSERT_OK(send_as(d, ALICE, cmd_line("account.deposit", "p1", "{\"amount\":1}"),
				 NULL));
	config_replace(d, "account.deposit", "account.deposit = cqrs-test-nobody-such");
	daemon_signal(d, SIGHUP);
	ck_assert(daemon_wait_log(d, "reload: [access] account.deposit: no user named "
				  "\\\"cqrs-test-nobody-such\\\"", 20000));
	DAEMON_ASSERT_OK(send_as(d, ALICE, cmd_line("account.deposit", "p1", "{\"amount\":1}"),
				 NULL));
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

START_TEST(check_config_refuses_unknown_names)
{
	static const struct {
		const char *key, *value, *want;
	} bad[] = {
		/* as the log writes them: quotes escaped */
		{ "account.open", "cqrs-test-nobody-such",
		  "account.open: no user named \\\"cqrs-test-nobody-such\\\"" },
		{ "account.open", "@cqrs-test-no-group",
		  "account.open: no group named \\\"cqrs-test-no-group\\\"" },
		{ "account.open", "uid:x1", "account.open: \\\"uid:x1\\\" is not uid:N" },
		{ "account.*.x", "root", "a pattern is a command name, \\\"prefix.*\\\" or \\\"*\\\"" },
		{ "account.open", ",", "account.open: lists nobody" },
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *conninfo;
		struct daemon *d = new_open_cmdd(&conninfo);
		char *log;

		daemon_set(d, "access", bad[i].key, "%s", bad[i].value);
		daemon_add_arg(d, "--check-config");
		ck_assert_int_eq(daemon_run(d, 30000), 1);
		log = daemon_log(d);
		ck_assert_msg(strstr(log, bad[i].want) != NULL, "[access] %s = %s: want \"%s\" in %s",
			      bad[i].key, bad[i].value, bad[i].want, log);
		free(log);
		daemon_free(d);
	}
}
END_TEST

/* Passwords belong in files only the daemons' user reads: a config that
 * holds one where others can read it is warned about, so is such a file;
 * a credential's name needs systemd's $CREDENTIALS_DIRECTORY. */
START_TEST(passwords_where_others_can_read_them_are_warned_about)
{
	const char *conninfo = daemon_gc(fixture_db_new(true));
	struct daemon *d = daemon_new_cmdd(daemon_fmt("%s password=hunter2", conninfo), "bank");
	const char *pass;
	char *log;
	FILE *f;

	daemon_add_arg(d, "--check-config");
	daemon_setenv(d, "CREDENTIALS_DIRECTORY", NULL);
	/* the fixture writes cqrs.conf 0644 */
	ck_assert_int_eq(daemon_run(d, 30000), 0);
	log = daemon_log(d);
	ck_assert_msg(strstr(log, "cqrs.conf holds a password (store.conninfo or broker.url) and "
			      "can be read by anyone (mode 0644)") != NULL, "%s", log);
	ck_assert_msg(strstr(log, "hunter2") == NULL, "the password is in the log: %s", log);
	free(log);
	ck_assert_int_eq(chmod(daemon_config_path(d), 0600), 0);
	ck_assert_int_eq(daemon_run(d, 30000), 0);
	log = daemon_log_tail(d, 3);
	ck_assert_msg(strstr(log, "holds a password") == NULL, "%s", log);
	free(log);

	/* libpq's password file: a credential's name without systemd, refused */
	daemon_set(d, "store", "conninfo", "%s", conninfo);
	daemon_set(d, "store", "passfile", "pgpass");
	ck_assert_int_eq(daemon_run(d, 30000), 1);
	/* (on stderr before logging starts: quotes as they are) */
	ck_assert(daemon_wait_log(d, "store.passfile \"pgpass\" names a systemd credential, but "
				  "$CREDENTIALS_DIRECTORY is not set", 1000));
	/* with it, fine; one others may read is warned about by name */
	pass = daemon_fmt("%s/pgpass", daemon_dir(d));
	f = fopen(pass, "w");
	ck_assert_ptr_nonnull(f);
	fputs("*:*:*:*:hunter2\n", f);
	fclose(f);
	ck_assert_int_eq(chmod(pass, 0640), 0);
	daemon_setenv(d, "CREDENTIALS_DIRECTORY", daemon_dir(d));
	ck_assert_int_eq(daemon_run(d, 30000), 0);
	ck_assert(daemon_wait_log(d, daemon_fmt("store.passfile %s holds a password and can be read "
						"by its group (mode 0640)", pass), 1000));
	log = daemon_log(d);
	ck_assert_msg(strstr(log, "hunter2") == NULL, "the password is in the log: %s", log);
	free(log);
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

	tc = tcase_create("policy");
	tcase_add_checked_fixture(tc, NULL, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, the_policy_allows_and_forbids_by_name_uid_and_group);
	tcase_add_test(tc, check_config_refuses_unknown_names);
	suite_add_tcase(s, tc);

	tc = tcase_create("secrets");
	tcase_add_checked_fixture(tc, NULL, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, passwords_where_others_can_read_them_are_warned_about);
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

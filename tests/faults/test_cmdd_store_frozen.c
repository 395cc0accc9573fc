/*
 * test_cmdd_store_frozen.c - cqrs-cmdd when PostgreSQL stops answering: an
 * append held by a lock, a frozen cluster (SIGSTOP of its processes), a
 * server that never answers the connection; and synchronous_commit and the
 * connection defaults on the daemon's sockets. Each test runs its own
 * private cluster; the daemon runs as a separate process with the bank
 * plugin.
 */
#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "daemon.h"
#include "fixture.h"
#include "store.h"
#include "uuid.h"

static char *conninfo;
static PGconn *pg;

/*
 * Tests here stop PostgreSQL. A failed test exits at once (no atexit, no
 * teardown), so every test starts by making sure it runs, and so does the
 * tcase's end in the parent: later tests and suites need it.
 */
static void
pg_ensure_up(void)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/pg.sh start %s --fast >/dev/null 2>&1",
		 CQRS_SRCDIR, fixture_pg_dir());
	if (system(cmd) != 0)
		fprintf(stderr, "test_cmdd_faults: could not (re)start PostgreSQL in %s\n",
			fixture_pg_dir());
}

static void
setup(void)
{
	conninfo = NULL;
	pg = NULL;
	pg_ensure_up();
}

static void
teardown(void)
{
	if (pg != NULL)
		PQfinish(pg);
	pg = NULL;
	daemon_gc_run();
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct daemon *
new_bank(void)
{
	if (conninfo == NULL)
		conninfo = daemon_gc(fixture_db_new(true));
	return daemon_new_cmdd(conninfo, "bank");
}

static PGconn *
db(void)
{
	if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
		if (pg != NULL)
			PQfinish(pg);
		pg = fixture_connect(conninfo);
	}
	return pg;
}

static long long
qint(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static long long
qint(const char *fmt, ...)
{
	va_list ap;
	char *sql = NULL;
	long long v;

	va_start(ap, fmt);
	ck_assert_int_ge(vasprintf(&sql, fmt, ap), 0);
	va_end(ap);
	v = fixture_query_int(db(), sql);
	free(sql);
	return v;
}

static long long
balance(const char *stream)
{
	return qint("SELECT coalesce((SELECT (data->>'balance')::bigint FROM cqrs.events "
		    "WHERE stream = '%s' AND data ? 'balance' ORDER BY version DESC LIMIT 1), 0)",
		    stream);
}

static char *
new_id(void)
{
	char *u = malloc(UUID_STR_LEN);

	ck_assert_ptr_nonnull(u);
	cqrs_uuid_v4(u);
	return daemon_gc(u);
}

static const char *
open_line(const char *id, const char *agg, long long overdraft)
{
	return daemon_fmt("{\"id\":\"%s\",\"command\":\"account.open\",\"aggregate_id\":\"%s\","
			  "\"data\":{\"owner\":\"o\",\"overdraft_limit\":%lld}}", id, agg, overdraft);
}

static const char *
money_line(const char *id, const char *command, const char *agg, long long amount)
{
	return daemon_fmt("{\"id\":\"%s\",\"command\":\"account.%s\",\"aggregate_id\":\"%s\","
			  "\"data\":{\"amount\":%lld}}", id, command, agg, amount);
}

static const char *
deposit_line(const char *id, const char *agg, long long amount)
{
	return money_line(id, "deposit", agg, amount);
}

static bool
is_duplicate(const char *a)
{
	json_object *o = daemon_json(a), *v = daemon_jget(o, "duplicate");
	bool r = v != NULL && json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);

	json_object_put(o);
	return r;
}

/* ---- restarts -------------------------------------------------------------------- */

static char clusters_dir[64];

static void
clusters_begin(void)
{
	snprintf(clusters_dir, sizeof(clusters_dir), "/tmp/cqrs-pc.XXXXXX");
	if (mkdtemp(clusters_dir) == NULL) {
		fprintf(stderr, "test_cmdd_faults: mkdtemp: %s\n", strerror(errno));
		clusters_dir[0] = '\0';
		return;
	}
	chmod(clusters_dir, 0755);
	pg_ensure_up();
}

/* The postmaster's pid (first line of postmaster.pid), or 0. */
static pid_t
postmaster_pid(const char *dir)
{
	char path[256];
	long pid = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/data/postmaster.pid", dir);
	f = fopen(path, "r");
	if (f == NULL)
		return 0;
	if (fscanf(f, "%ld", &pid) != 1)
		pid = 0;
	fclose(f);
	return (pid_t)pid;
}

/* Sends sig to the postmaster of the cluster in dir and to all its children
 * (backends, checkpointer, walwriter ...): the postmaster first on SIGSTOP,
 * so it forks none meanwhile. Returns how many processes got it. */
static int
cluster_signal(const char *dir, int sig)
{
	pid_t pm = postmaster_pid(dir);
	DIR *proc;
	struct dirent *e;
	int n = 0;

	if (pm <= 0)
		return 0;
	if (sig == SIGSTOP && kill(pm, sig) == 0)
		n++;
	proc = opendir("/proc");
	while (proc != NULL && (e = readdir(proc)) != NULL) {
		char path[300], buf[512], *rp;
		long ppid;
		FILE *f;

		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
		f = fopen(path, "r");
		if (f == NULL)
			continue;
		rp = fgets(buf, sizeof(buf), f) != NULL ? strrchr(buf, ')') : NULL;
		fclose(f);
		/* "PID (COMM) STATE PPID ..." */
		if (rp != NULL && sscanf(rp + 1, " %*c %ld", &ppid) == 1 && ppid == pm &&
		    kill((pid_t)atol(e->d_name), sig) == 0)
			n++;
	}
	if (proc != NULL)
		closedir(proc);
	if (sig != SIGSTOP && kill(pm, sig) == 0)
		n++;
	return n;
}

static void
cluster_stop(const char *dir)
{
	char cmd[600];

	cluster_signal(dir, SIGCONT);
	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/pg.sh stop %s >/dev/null 2>&1", CQRS_SRCDIR, dir);
	if (system(cmd) != 0)
		fprintf(stderr, "test_cmdd_faults: could not stop PostgreSQL in %s\n", dir);
}

static void
clusters_end(void)
{
	DIR *dir;
	struct dirent *e;
	char path[320], cmd[400];

	if (clusters_dir[0] == '\0')
		return;
	dir = opendir(clusters_dir);
	while (dir != NULL && (e = readdir(dir)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", clusters_dir, e->d_name);
		cluster_stop(path);
	}
	if (dir != NULL)
		closedir(dir);
	if (getenv("CQRS_TEST_KEEP") == NULL) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", clusters_dir);
		if (system(cmd) != 0)
			fprintf(stderr, "test_cmdd_faults: could not remove %s\n", clusters_dir);
	}
	pg_ensure_up();
}

/* Starts a private cluster CLUSTERS_DIR/name (pg.sh options opts) with the
 * cqrs schema; returns its directory (gc) and its conninfo in *conninfo_out
 * (gc). */
static const char *
cluster_start(const char *name, const char *opts, const char **conninfo_out)
{
	const char *dir = daemon_fmt("%s/%s", clusters_dir, name);
	char line[1024], *ci = NULL;
	struct store *st = NULL;
	struct cqrs_err err = { 0 };
	FILE *f;

	ck_assert_msg(clusters_dir[0] != '\0', "no directory for private clusters");
	ck_assert_msg(system(daemon_fmt("sh %s/deploy/dev/pg.sh start %s --fast %s >%s.log 2>&1",
					CQRS_SRCDIR, dir, opts, dir)) == 0,
		      "could not start PostgreSQL in %s (see %s.log)", dir, dir);
	f = fopen(daemon_fmt("%s/env", dir), "r");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		const char *key = "CQRS_STORE_CONNINFO='";
		if (strncmp(line, key, strlen(key)) == 0) {
			char *v = line + strlen(key);
			v[strcspn(v, "'\n")] = '\0';
			ci = daemon_fmt("%s", v);
		}
	}
	fclose(f);
	ck_assert_msg(ci != NULL, "no conninfo in %s/env", dir);
	if (cqrs_store_connect(ci, &st, &err) < 0 || cqrs_store_migrate(st, NULL, &err) < 0)
		ck_abort_msg("migrate %s: %s", dir, err.msg);
	cqrs_store_free(st);
	*conninfo_out = ci;
	return dir;
}

/* An answer within timeout_ms, or the test fails saying what it waited for. */
static const char *
recv_within(struct daemon *d, struct daemon_conn *c, int timeout_ms, const char *what)
{
	bool timed_out;
	char *a = daemon_conn_try_recv(c, timeout_ms, &timed_out);

	ck_assert_msg(!timed_out, "%s: no answer within %d ms; log:\n%s", what, timeout_ms,
		      daemon_log_tail(d, 15));
	ck_assert_msg(a != NULL, "%s: the daemon closed the connection", what);
	return daemon_gc(a);
}

/* Sends line again until it is answered other than unavailable (or 60 s). */
static const char *
resend_until_served(struct daemon_conn *c, const char *line)
{
	int64_t deadline = now_ms() + 60000;
	const char *a;

	for (;;) {
		a = daemon_gc(daemon_conn_call(c, line));
		if (!daemon_answer_error(a, "unavailable"))
			return a;
		ck_assert_msg(now_ms() < deadline, "still unavailable after 60 s: %s", a);
		usleep(100000);
	}
}

/*
 * An append that does not come back (the test holds the stream's lock, as
 * sql/004_command_ids.sql takes it) is answered unavailable at
 * cmd.store_timeout; its connection is closed. The dropped append still
 * waits on the server and commits once the lock goes: the resend of the same
 * id must find it and answer duplicate, not append a second time.
 */
START_TEST(store_timeout_answers_unavailable_and_a_resend_counts_once)
{
	struct daemon *d = new_bank();
	struct daemon_conn *c;
	const char *id = new_id(), *a;
	PGconn *locker;
	int64_t t0;

	daemon_set(d, "cmd", "store_timeout", "1s");
	daemon_start(d);
	c = daemon_connect(d);
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), "st1", 0))));
	locker = fixture_connect(conninfo);
	fixture_exec(locker, "SELECT pg_advisory_lock(1129468499, hashtext('account-st1'))");

	t0 = now_ms();
	daemon_conn_send(c, deposit_line(id, "st1", 7));
	a = recv_within(d, c, 20000, "a deposit whose append waits on a lock, store_timeout 1s");
	DAEMON_ASSERT_ERROR(a, "unavailable");
	ck_assert(strstr(a, id) != NULL);
	fprintf(stderr, "store_timeout 1s: unavailable after %lld ms\n", (long long)(now_ms() - t0));
	ck_assert_msg(daemon_wait_log(d, "no answer within cmd.store_timeout (1.0 s)", 5000),
		      "the log does not name the timeout:\n%s", daemon_log_tail(d, 10));
	/* the append is still there on the server, waiting for the lock */
	ck_assert_int_eq(fixture_query_int(locker, "SELECT count(*) FROM pg_locks WHERE "
						   "locktype = 'advisory' AND NOT granted"), 1);
	/* other aggregates are served meanwhile */
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), "st2", 0))));

	/* the lock goes: the dropped append commits; the resend is its duplicate */
	fixture_exec(locker, "SELECT pg_advisory_unlock_all()");
	PQfinish(locker);
	a = resend_until_served(c, deposit_line(id, "st1", 7));
	DAEMON_ASSERT_OK(a);
	ck_assert_msg(is_duplicate(a), "the timed-out append committed once its lock was free; "
		      "its resend must say duplicate: %s", a);
	ck_assert_int_eq(qint("SELECT count(*) FROM cqrs.events WHERE metadata->>'causation_id' = '%s'",
			      id), 1);
	ck_assert_int_eq(balance("account-st1"), 7);
	a = daemon_gc(daemon_conn_call(c, deposit_line(new_id(), "st1", 1)));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 3);
	daemon_conn_close(c);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

/*
 * Every process of a (private) PostgreSQL cluster stopped with SIGSTOP: no
 * reset, no refusal, nothing on the sockets. Commands are answered
 * unavailable soon after cmd.store_timeout, whether their aggregate is in
 * memory (an append) or not (a load), and while the pool reconnects to the
 * frozen server. After SIGCONT the daemon serves again by itself, and a
 * resend of an unknown outcome takes effect once.
 */
START_TEST(postgres_frozen_answers_unavailable_then_recovers)
{
	const char *ci, *dir = cluster_start("frozen", "", &ci);
	struct daemon *d = daemon_new_cmdd(ci, "bank");
	struct daemon_conn *c;
	const char *id = new_id(), *a;
	int64_t t0, worst = 0;
	PGconn *check;

	daemon_set(d, "cmd", "store_timeout", "1s");
	daemon_set(d, "cmd", "pool_size", "2");
	daemon_start(d);
	c = daemon_connect(d);
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), "fz", 0))));
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, deposit_line(new_id(), "fz", 10))));

	ck_assert_int_gt(cluster_signal(dir, SIGSTOP), 1);
	for (int i = 0; i < 4; i++) {
		/* the same id, a new aggregate, the same id, a new aggregate */
		const char *line = i % 2 == 0 ? deposit_line(id, "fz", 5)
					      : open_line(new_id(), daemon_fmt("fz-new%d", i), 0);
		t0 = now_ms();
		daemon_conn_send(c, line);
		a = recv_within(d, c, 20000, "a command while PostgreSQL is frozen, store_timeout 1s");
		DAEMON_ASSERT_ERROR(a, "unavailable");
		if (now_ms() - t0 > worst)
			worst = now_ms() - t0;
	}
	fprintf(stderr, "postgres frozen, store_timeout 1s: 4 commands unavailable, slowest in "
		"%lld ms\n", (long long)worst);
	ck_assert(daemon_running(d));

	ck_assert_int_gt(cluster_signal(dir, SIGCONT), 1);
	t0 = now_ms();
	a = resend_until_served(c, deposit_line(id, "fz", 5));
	DAEMON_ASSERT_OK(a);
	fprintf(stderr, "postgres thawed: served again after %lld ms (%s)\n",
		(long long)(now_ms() - t0), is_duplicate(a) ? "duplicate" : "appended now");
	a = daemon_gc(daemon_conn_call(c, deposit_line(new_id(), "fz", 100)));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 4);
	daemon_conn_close(c);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);

	check = fixture_connect(ci);
	ck_assert_int_eq(fixture_query_int(check, daemon_fmt("SELECT count(*) FROM cqrs.events WHERE "
		"metadata->>'causation_id' = '%s'", id)), 1);
	ck_assert_int_eq(fixture_query_int(check, "SELECT sum((data->>'amount')::int) FROM "
		"cqrs.events WHERE stream = 'account-fz' AND type = 'MoneyDeposited'"), 115);
	PQfinish(check);
	cluster_stop(dir);
}
END_TEST

/* Whether backend pid waits for a synchronous standby. */
static bool
waits_for_sync_rep(PGconn *admin, const char *where)
{
	return fixture_query_int(admin, daemon_fmt("SELECT count(*) FROM pg_stat_activity WHERE "
						   "wait_event = 'SyncRep' AND %s", where)) > 0;
}

/*
 * An ack means durable, whatever the role's default: with the role's
 * synchronous_commit off (and the cluster's: pg.sh --fast), cqrs-cmdd's
 * sessions must still commit with it on. What tells them apart from outside
 * is synchronous replication: with synchronous_standby_names naming a
 * standby that never comes, a commit under "on" waits (wait_event SyncRep)
 * until the setting is cleared, while one under "off" or "local" returns at
 * once. So the test sees the append wait, and its answer come only after the
 * release; with the role's default in force the command would be answered
 * at once and never wait.
 */
START_TEST(synchronous_commit_is_on_whatever_the_role_says)
{
	const char *ci, *dir = cluster_start("sync", "", &ci);
	struct daemon *d;
	struct daemon_conn *c;
	PGconn *admin = fixture_connect(ci), *probe;
	const char *id = new_id(), *a;
	int64_t deadline;
	bool timed_out;
	PGresult *r;

	fixture_exec(admin, "ALTER ROLE CURRENT_USER SET synchronous_commit = off");
	fixture_exec(admin, "CREATE TABLE sync_probe (x int)");
	fixture_exec(admin, "ALTER SYSTEM SET synchronous_standby_names = 'cqrs_no_such_standby'");
	fixture_exec(admin, "SELECT pg_reload_conf()");
	/* the reload is asynchronous: wait until a commit under "on" does wait
	 * (one that writes: a transaction that wrote no WAL never waits) */
	probe = fixture_connect(ci);
	fixture_exec(probe, "SET synchronous_commit TO on");
	deadline = now_ms() + 20000;
	for (;;) {
		const char *me = daemon_fmt("pid = %d", PQbackendPID(probe));
		bool waiting = false;

		ck_assert_int_eq(PQsendQuery(probe, "INSERT INTO sync_probe VALUES (1)"), 1);
		while (!waiting) {
			ck_assert_int_eq(PQconsumeInput(probe), 1);
			if (!PQisBusy(probe))
				break;
			waiting = waits_for_sync_rep(admin, me);
			usleep(20000);
		}
		if (waiting)
			break;
		while ((r = PQgetResult(probe)) != NULL)
			PQclear(r);
		ck_assert_msg(now_ms() < deadline, "synchronous_standby_names had no effect in 20 s");
		usleep(100000);
	}

	d = daemon_new_cmdd(ci, "bank");
	daemon_set(d, "cmd", "store_timeout", "60s");
	daemon_start(d);
	c = daemon_connect(d);
	daemon_conn_send(c, open_line(id, "sy", 0));
	deadline = now_ms() + 20000;
	while (!waits_for_sync_rep(admin, "query LIKE '%cqrs.append%'")) {
		char *early = daemon_conn_try_recv(c, 50, &timed_out);
		ck_assert_msg(early == NULL && timed_out, "the command was answered without waiting for "
			      "the synchronous standby: synchronous_commit is not on in cqrs-cmdd's "
			      "session (answer: %s)", early ? early : "(closed)");
		ck_assert_msg(now_ms() < deadline, "cqrs-cmdd's append does not wait for the "
			      "synchronous standby after 20 s; log:\n%s", daemon_log_tail(d, 10));
	}
	a = daemon_gc(daemon_conn_try_recv(c, 0, &timed_out));
	ck_assert_msg(a == NULL && timed_out, "answered while its commit waits: %s", a);

	/* no standby wanted any more: the waiting commits complete */
	fixture_exec(admin, "ALTER SYSTEM RESET synchronous_standby_names");
	fixture_exec(admin, "SELECT pg_reload_conf()");
	a = recv_within(d, c, 20000, "the command once synchronous_standby_names is cleared");
	DAEMON_ASSERT_OK(a);
	ck_assert(strstr(a, id) != NULL);
	while ((r = PQgetResult(probe)) != NULL)
		PQclear(r);
	PQfinish(probe);
	ck_assert_int_eq(fixture_query_int(admin, "SELECT count(*) FROM cqrs.events "
						  "WHERE stream = 'account-sy'"), 1);
	/* the role's default stands for everyone else */
	ck_assert_int_eq(fixture_query_int(admin, "SELECT (current_setting('synchronous_commit') "
						  "= 'off')::int"), 1);
	PQfinish(admin);
	daemon_conn_close(c);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
	cluster_stop(dir);
}
END_TEST

/*
 * A "server" that completes the TCP handshake (the kernel does, from the
 * listen backlog) and never says a word: libpq's asynchronous connect waits
 * for ever, whatever connect_timeout says, unless the pool keeps time. With
 * connect_timeout=2 and store_timeout far away, a command must be answered
 * unavailable, and the log must name connect_timeout.
 */
START_TEST(connect_timeout_on_a_server_that_never_answers)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	int lfd = socket(AF_INET, SOCK_STREAM, 0);
	struct daemon *d;
	struct daemon_conn *c;
	const char *a;
	int64_t t0;

	ck_assert_int_ge(lfd, 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	ck_assert_int_eq(listen(lfd, 64), 0);
	ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&sin, &len), 0);

	d = daemon_new_cmdd(daemon_fmt("host=127.0.0.1 port=%d user=nobody dbname=nothing "
				       "connect_timeout=2 sslmode=disable gssencmode=disable",
				       ntohs(sin.sin_port)), "bank");
	daemon_set(d, "cmd", "store_timeout", "60s");
	daemon_set(d, "cmd", "pool_size", "1");
	daemon_start(d);
	c = daemon_connect(d);
	t0 = now_ms();
	daemon_conn_send(c, open_line(new_id(), "nc", 0));
	a = recv_within(d, c, 20000, "a command while the server never answers, connect_timeout=2");
	DAEMON_ASSERT_ERROR(a, "unavailable");
	fprintf(stderr, "connect_timeout=2: unavailable after %lld ms\n", (long long)(now_ms() - t0));
	ck_assert_msg(daemon_wait_log(d, "no connection within connect_timeout (2 s)", 5000),
		      "the log does not name connect_timeout:\n%s", daemon_log_tail(d, 10));
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_conn_close(c);
	daemon_free(d);
	close(lfd);
}
END_TEST

/* TCP options of a process's connections to 127.0.0.1:port, read from
 * copies of its sockets (pidfd_getfd; the daemon is our child). */
struct tcp_opts {
	int keepalive, idle, interval, count, user_timeout;
};

static int
tcp_opts_of(pid_t pid, int port, struct tcp_opts *out, int max)
{
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	DIR *dir = opendir(daemon_fmt("/proc/%d/fd", (int)pid));
	struct dirent *e;
	int n = 0;

	ck_assert_msg(pidfd >= 0, "pidfd_open: %s", strerror(errno));
	ck_assert_ptr_nonnull(dir);
	while ((e = readdir(dir)) != NULL && n < max) {
		struct sockaddr_in peer;
		socklen_t len = sizeof(peer), ol = sizeof(int);
		int fd;

		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		fd = (int)syscall(SYS_pidfd_getfd, pidfd, atoi(e->d_name), 0);
		if (fd < 0)
			continue;
		if (getpeername(fd, (struct sockaddr *)&peer, &len) == 0 && peer.sin_family == AF_INET &&
		    ntohs(peer.sin_port) == port) {
			struct tcp_opts *o = &out[n++];
			ck_assert_int_eq(getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &o->keepalive, &ol), 0);
			ck_assert_int_eq(getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &o->idle, &ol), 0);
			ck_assert_int_eq(getsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &o->interval, &ol), 0);
			ck_assert_int_eq(getsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &o->count, &ol), 0);
			ck_assert_int_eq(getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &o->user_timeout,
						    &ol), 0);
		}
		close(fd);
	}
	closedir(dir);
	close(pidfd);
	return n;
}

/*
 * cqrs-cmdd's connections (the pool's and the NOTIFY one) get the suite's
 * defaults (common/store.h: keepalives 30/10/3, tcp_user_timeout 60 s),
 * while what the conninfo sets itself wins (keepalives_idle=45 here). Seen
 * on the daemon's own sockets, over TCP to a private cluster.
 */
START_TEST(connection_defaults_reach_the_sockets)
{
	const char *ci, *dir = cluster_start("tcp", "--tcp", &ci);
	struct daemon *d;
	struct tcp_opts o[8];
	int port = 0, n = 0;
	int64_t deadline;

	ck_assert_ptr_nonnull(strstr(ci, "port="));
	port = atoi(strstr(ci, "port=") + 5);
	d = daemon_new_cmdd(daemon_fmt("%s host=127.0.0.1 keepalives_idle=45", ci), "bank");
	daemon_set(d, "cmd", "pool_size", "2");
	daemon_start(d);
	deadline = now_ms() + 20000;
	while ((n = tcp_opts_of(daemon_pid(d), port, o, 8)) < 3) {
		ck_assert_msg(now_ms() < deadline, "%d TCP connections to port %d after 20 s, not 3",
			      n, port);
		usleep(50000);
	}
	ck_assert_int_eq(n, 3);
	for (int i = 0; i < n; i++) {
		ck_assert_int_eq(o[i].keepalive, 1);
		ck_assert_msg(o[i].idle == 45, "keepalives_idle set in the conninfo: %d", o[i].idle);
		ck_assert_msg(o[i].interval == 10 && o[i].count == 3 && o[i].user_timeout == 60000,
			      "connection %d: keepalives_interval %d, keepalives_count %d, "
			      "tcp_user_timeout %d: not the defaults", i, o[i].interval, o[i].count,
			      o[i].user_timeout);
	}
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, open_line(new_id(), "tcp", 0))));
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
	cluster_stop(dir);
}
END_TEST

static Suite *
store_frozen_suite(void)
{
	Suite *s = suite_create("cmdd_store_frozen");
	TCase *tc = tcase_create("store_timeouts");

	tcase_set_timeout(tc, 120);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_unchecked_fixture(tc, clusters_begin, clusters_end);
	tcase_add_test(tc, store_timeout_answers_unavailable_and_a_resend_counts_once);
	tcase_add_test(tc, postgres_frozen_answers_unavailable_then_recovers);
	tcase_add_test(tc, synchronous_commit_is_on_whatever_the_role_says);
	tcase_add_test(tc, connect_timeout_on_a_server_that_never_answers);
	tcase_add_test(tc, connection_defaults_reach_the_sockets);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(store_frozen_suite());
	int failed;

	(void)fixture_pg_admin_conninfo();
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

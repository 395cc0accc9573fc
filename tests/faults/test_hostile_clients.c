/*
 * test_hostile_clients.c - cqrs-cmdd with its default limits under every
 * hostile client at once, against a real PostgreSQL:
 *
 *   - a client that sends a line of invalid UTF-8 and then streams bytes;
 *   - 16 clients pipelining 512 KiB commands at one aggregate whose append
 *     is held by the stream's lock, never reading an answer;
 *   - 200 clients that send one byte a second;
 *   - 1,000 more connections, past cmd.max_connections;
 *
 * while one well-behaved client keeps sending commands to its own
 * aggregate. The daemon's peak resident memory (VmHWM) must stay under
 * what `cqrs-cmdd --check-config` says clients can make it hold, the
 * well-behaved client is answered within 2 s throughout, every connection
 * past the cap gets its answer instead of hanging, and SIGTERM ends the
 * daemon by cmd.shutdown_timeout although none of the pipeliners reads.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "fixture.h"
#include "scrape.h"

#define PIPELINERS 16
#define BIG_PAD (512 * 1024)
#define SLOW_CLIENTS 200
#define FLOOD 1000
#define GOOD_DEADLINE_MS 2000
/* the drain's deadline here; the rest of the configuration is the default */
#define SHUTDOWN_S 10
#define DEFAULT_MEMORY_BUDGET (256 * 1024 * 1024)
#define DEFAULT_MAX_CONNECTIONS 1024

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A connection to path, nonblocking once connected (a blocking connect
 * waits for room in the listen backlog); -1 with errno on failure. */
static int
dial(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	if (fcntl(fd, F_SETFL, O_NONBLOCK) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* "VmHWM:" or "VmRSS:" of pid, in bytes; -1 when unreadable. */
static long long
proc_kb(pid_t pid, const char *field)
{
	char path[64], line[256];
	long long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, field, strlen(field)) == 0)
			kb = strtoll(line + strlen(field), NULL, 10);
	fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

/* ---- the load, in threads (they record; the test's thread asserts) -------- */

static atomic_bool stop_load;

struct pipeliners {
	const char *path;
	int fd[PIPELINERS];
	char *line;			/* one 512 KiB command and its '\n' */
	size_t len;
	size_t off[PIPELINERS];
	_Atomic long long written[PIPELINERS];
	_Atomic int errors;		/* connections the daemon dropped */
	char err[256];
};

/* Writes commands as fast as each socket takes them; reads nothing. */
static void *
pipeliners_run(void *arg)
{
	struct pipeliners *p = arg;
	struct pollfd pfd[PIPELINERS];

	while (!atomic_load(&stop_load)) {
		int n = 0;

		for (int i = 0; i < PIPELINERS; i++)
			if (p->fd[i] >= 0) {
				pfd[n].fd = p->fd[i];
				pfd[n].events = POLLOUT;
				pfd[n].revents = 0;
				n++;
			}
		if (n == 0 || poll(pfd, (nfds_t)n, 100) <= 0)
			continue;
		for (int i = 0; i < PIPELINERS; i++) {
			ssize_t w;

			if (p->fd[i] < 0)
				continue;
			w = send(p->fd[i], p->line + p->off[i], p->len - p->off[i],
				 MSG_DONTWAIT | MSG_NOSIGNAL);
			if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
				continue;
			if (w <= 0) {
				snprintf(p->err, sizeof(p->err), "pipeliner %d: send: %s", i,
					 strerror(errno));
				atomic_fetch_add(&p->errors, 1);
				close(p->fd[i]);
				p->fd[i] = -1;
				continue;
			}
			p->off[i] = (p->off[i] + (size_t)w) % p->len;
			atomic_fetch_add(&p->written[i], (long long)w);
		}
	}
	return NULL;
}

struct slow {
	int fd[SLOW_CLIENTS];
	_Atomic int errors;
	char err[256];
};

/* One byte a second on each connection, of a line that never ends. */
static void *
slow_run(void *arg)
{
	static const char text[] = "{\"command\":\"account.deposit\",\"aggregate_id\":\"slow\","
		"\"metadata\":{\"pad\":\"";
	struct slow *s = arg;
	size_t at = 0;

	while (!atomic_load(&stop_load)) {
		char b = at < sizeof(text) - 1 ? text[at] : 'x';

		for (int i = 0; i < SLOW_CLIENTS; i++) {
			if (s->fd[i] < 0)
				continue;
			if (send(s->fd[i], &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL) != 1) {
				snprintf(s->err, sizeof(s->err), "slow client %d: send: %s", i,
					 strerror(errno));
				atomic_fetch_add(&s->errors, 1);
				close(s->fd[i]);
				s->fd[i] = -1;
			}
		}
		at++;
		/* load, not a barrier: the pace is what this client is */
		for (int t = 0; t < 10 && !atomic_load(&stop_load); t++)
			usleep(100000);
	}
	return NULL;
}

struct good {
	const char *path;
	_Atomic int sent, answered, failures;
	_Atomic long long worst_ms;
	char err[512];
};

/* Reads one line from fd within deadline_ms into buf; its length or -1. */
static ssize_t
read_line(int fd, char *buf, size_t size, int deadline_ms)
{
	int64_t end = now_ms() + deadline_ms;
	size_t have = 0;

	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int64_t left = end - now_ms();
		ssize_t r;
		char *nl;

		if (left <= 0)
			return -1;
		if (poll(&pfd, 1, (int)left) <= 0)
			continue;
		r = recv(fd, buf + have, size - 1 - have, MSG_DONTWAIT);
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (r <= 0)
			return -1;
		have += (size_t)r;
		buf[have] = '\0';
		if ((nl = strchr(buf, '\n')) != NULL)
			return nl - buf;
		if (have + 1 >= size)
			return -1;
	}
}

/* A command to its own aggregate, one after the other, each timed. */
static void *
good_run(void *arg)
{
	struct good *g = arg;
	int fd = dial(g->path);
	char buf[4096];

	if (fd < 0) {
		snprintf(g->err, sizeof(g->err), "connect: %s", strerror(errno));
		atomic_fetch_add(&g->failures, 1);
		return NULL;
	}
	while (!atomic_load(&stop_load)) {
		char line[256];
		int n = snprintf(line, sizeof(line), "{\"command\":\"account.deposit\","
				 "\"aggregate_id\":\"good\",\"data\":{\"amount\":1}}\n");
		int64_t t0 = now_ms(), took;
		ssize_t len;

		if (send(fd, line, (size_t)n, MSG_NOSIGNAL) != n) {
			snprintf(g->err, sizeof(g->err), "send: %s", strerror(errno));
			atomic_fetch_add(&g->failures, 1);
			break;
		}
		atomic_fetch_add(&g->sent, 1);
		len = read_line(fd, buf, sizeof(buf), GOOD_DEADLINE_MS);
		took = now_ms() - t0;
		if (took > atomic_load(&g->worst_ms))
			atomic_store(&g->worst_ms, took);
		if (len < 0 || strstr(buf, "\"ok\":true") == NULL) {
			snprintf(g->err, sizeof(g->err), "command %d: %.400s after %lld ms",
				 atomic_load(&g->sent), len < 0 ? "no answer" : buf, (long long)took);
			atomic_fetch_add(&g->failures, 1);
			break;
		}
		atomic_fetch_add(&g->answered, 1);
		usleep(50000);	/* a client's pace, not a wait for the daemon */
	}
	close(fd);
	return NULL;
}

/* ---- helpers on the test's thread ------------------------------------------ */

/* What `cqrs-cmdd --check-config` says clients can make the daemon hold. */
static long long
memory_bound(struct daemon *d)
{
	char *out = NULL, *at;
	long long n = -1;
	int rc;

	rc = fixture_run(daemon_fmt("%s -c %s --check-config", fixture_bin("cqrs-cmdd"),
				    daemon_config_path(d)), &out);
	ck_assert_msg(rc == 0, "--check-config: exit %d: %s", rc, out ? out : "");
	at = out ? strstr(out, "memory bound: ") : NULL;
	ck_assert_msg(at != NULL, "--check-config prints no memory bound: %s", out ? out : "");
	n = strtoll(at + strlen("memory bound: "), NULL, 10);
	free(out);
	ck_assert_int_gt(n, 0);
	return n;
}

static double
metric(uint16_t port, const char *name)
{
	struct scrape *m = scrape_metrics(port);
	double v = scrape_value(m, name, NULL);

	scrape_free(m);
	ck_assert_msg(!isnan(v), "/metrics has no %s", name);
	return v;
}

/* Raises this process's open-file limit (the daemon inherits it). */
static void
raise_nofile(rlim_t want)
{
	struct rlimit rl;

	ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_max < want) {
		rl.rlim_max = want;	/* root may; anybody else needs the limit given */
		ck_assert_msg(setrlimit(RLIMIT_NOFILE, &(struct rlimit){ want, want }) == 0,
			      "this test needs %lu open files (ulimit -n): %s", (unsigned long)want,
			      strerror(errno));
		return;
	}
	rl.rlim_cur = want;
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
}

/* ---- each budget alone, with small settings ------------------------------- */

/* Writes as much of buf as fd takes within ms; the bytes taken. */
static size_t
push(int fd, const char *buf, size_t len, int ms)
{
	int64_t end = now_ms() + ms;
	size_t off = 0;

	while (off < len && now_ms() < end) {
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		ssize_t w;

		if (poll(&pfd, 1, 100) <= 0)
			continue;
		w = send(fd, buf + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w > 0)
			off += (size_t)w;
		else if (w < 0 && errno != EAGAIN && errno != EINTR)
			break;
	}
	return off;
}

/* Reads and drops everything until EOF; false if none came within ms. */
static bool
drain_to_eof(int fd, int ms)
{
	int64_t end = now_ms() + ms;
	char buf[65536];

	while (now_ms() < end) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t r;

		if (poll(&pfd, 1, 100) <= 0)
			continue;
		r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
			return true;
	}
	return false;
}

/* Answers pile up behind a client that reads none: past cmd.write_timeout
 * without a byte taken, it is closed and what it was owed is dropped. */
START_TEST(a_client_that_reads_nothing_is_closed_at_write_timeout)
{
	const char *conninfo = daemon_gc(fixture_db_new(true));
	struct daemon *d = daemon_new_cmdd(conninfo, "bank");
	const size_t n = 40000;
	size_t len = 0, took;
	char *buf;
	int fd;

	daemon_set(d, "cmd", "max_request_bytes", "256K");
	daemon_set(d, "cmd", "client_budget", "1M");
	daemon_set(d, "cmd", "memory_budget", "1M");
	daemon_set(d, "cmd", "write_timeout", "1s");
	daemon_start(d);
	buf = malloc(n * 96);
	ck_assert_ptr_nonnull(buf);
	for (size_t i = 0; i < n; i++)
		len += (size_t)sprintf(buf + len, "{\"id\":\"%07zu\",\"command\":\"no.such\","
				       "\"aggregate_id\":\"x\",\"data\":{}}\n", i);
	fd = dial(daemon_socket(d));
	ck_assert_int_ge(fd, 0);
	/* the daemon stops reading once its answers fill the socket and the
	 * client's budget */
	took = push(fd, buf, len, 5000);
	ck_assert_msg(daemon_wait_log(d, "took no answer bytes for cmd.write_timeout", 30000),
		      "a client that reads nothing is still open (it sent %zu of %zu bytes): %s",
		      took, len, daemon_log_tail(d, 10));
	ck_assert_msg(drain_to_eof(fd, 30000), "no EOF after the write_timeout close");
	ck_assert_msg(took < len, "the daemon took all %zu bytes from a client that reads "
		      "nothing", len);
	/* the daemon is fine */
	DAEMON_ASSERT_ERROR(daemon_gc(daemon_call(d, "{\"command\":\"no.such\","
						  "\"aggregate_id\":\"x\",\"data\":{}}")), "unknown_command");
	close(fd);
	free(buf);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

/*
 * One client fills cmd.memory_budget (big commands queued behind a held
 * append). Another, with a request bigger than its floor, waits for room:
 * the idle timeout still closes it. A third with small commands is served
 * from its floor all along.
 */
START_TEST(budget_full_small_clients_served_and_waiting_ones_time_out)
{
	const char *conninfo = daemon_gc(fixture_db_new(true));
	struct daemon *d = daemon_new_cmdd(conninfo, "bank");
	static char big[200 * 1024 + 256];
	size_t blen, took;
	PGconn *locker;
	uint16_t port;
	char *log;
	int hog, waiter;

	daemon_set(d, "cmd", "max_request_bytes", "256K");
	daemon_set(d, "cmd", "client_budget", "2M");
	daemon_set(d, "cmd", "memory_budget", "2M");
	daemon_set(d, "cmd", "idle_timeout", "1s");
	/* the held append stays held: the hog's budget is never given back */
	daemon_set(d, "cmd", "store_timeout", "1h");
	daemon_set(d, "cmd", "http", "127.0.0.1:0");
	daemon_start(d);
	ck_assert(daemon_wait_log(d, "metrics and health on ", 10000));
	log = daemon_log(d);
	port = scrape_port_from_log(strstr(log, "metrics and health on "));
	free(log);
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, "{\"command\":\"account.open\","
		"\"aggregate_id\":\"hot\",\"data\":{\"owner\":\"hot\"}}")));
	locker = fixture_connect(conninfo);
	fixture_exec(locker, "SELECT pg_advisory_lock(1129468499, hashtext('account-hot'))");

	/* small enough that the hog, paused, leaves less room than a floor */
	blen = (size_t)sprintf(big, "{\"command\":\"account.deposit\",\"aggregate_id\":\"hot\","
			       "\"data\":{\"amount\":1},\"metadata\":{\"pad\":\"");
	memset(big + blen, 'p', 16 * 1024);
	blen += 16 * 1024;
	blen += (size_t)sprintf(big + blen, "\"}}\n");
	hog = dial(daemon_socket(d));
	ck_assert_int_ge(hog, 0);
	for (int i = 0; i < 400; i++)
		if (push(hog, big, blen, 200) < blen)
			break;		/* paused: its budget is full */
	{
		int64_t t0 = now_ms();
		while (metric(port, "cqrs_cmdd_clients_paused") < 1 ||
		       metric(port, "cqrs_cmdd_client_bytes") < 1.5 * 1024 * 1024) {
			ck_assert_msg(now_ms() - t0 < 60000, "the hog holds %.0f bytes",
				      metric(port, "cqrs_cmdd_client_bytes"));
			usleep(50000);
		}
	}
	/* the waiter's line: far more than its floor and what the hog leaves */
	blen = (size_t)sprintf(big, "{\"command\":\"account.deposit\",\"aggregate_id\":\"w\","
			       "\"data\":{\"amount\":1},\"metadata\":{\"pad\":\"");
	memset(big + blen, 'p', 200 * 1024);
	blen += 200 * 1024;
	blen += (size_t)sprintf(big + blen, "\"}}\n");
	/* a request past its floor: it waits for room, then its idle timeout */
	waiter = dial(daemon_socket(d));
	ck_assert_int_ge(waiter, 0);
	took = push(waiter, big, blen - 1, 2000);	/* no '\n': never complete */
	ck_assert_msg(took > 32 * 1024, "the waiter could send only %zu bytes", took);
	/* small commands on another aggregate: served from their floor */
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, "{\"command\":\"account.open\","
		"\"aggregate_id\":\"small\",\"data\":{\"owner\":\"s\"}}")));
	for (int i = 0; i < 5; i++)
		DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, "{\"command\":\"account.deposit\","
			"\"aggregate_id\":\"small\",\"data\":{\"amount\":1}}")));
	ck_assert_msg(daemon_wait_log(d, "idle for cmd.idle_timeout with ", 30000),
		      "a client waiting for room outlived its idle timeout: %s",
		      daemon_log_tail(d, 10));
	ck_assert_msg(drain_to_eof(waiter, 30000), "the waiting client was not closed");
	/* the hog is busy (its commands are queued), not idle: still open */
	ck_assert_int_eq(send(hog, "", 0, MSG_NOSIGNAL), 0);
	fixture_exec(locker, "SELECT pg_advisory_unlock_all()");
	PQfinish(locker);
	close(waiter);
	close(hog);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

START_TEST(every_hostile_client_at_once)
{
	const char *conninfo = daemon_gc(fixture_db_new(true));
	struct daemon *d = daemon_new_cmdd(conninfo, "bank");
	static struct pipeliners pl;
	static struct slow sl;
	static struct good gd;
	static int flood[FLOOD];
	pthread_t tp, ts, tg;
	PGconn *locker;
	char *log, buf[4096];
	long long bound, base_rss, hwm, limit, written = 0;
	uint16_t port;
	int streamer, refused = 0, answered = 0, code;
	int64_t t0;

	raise_nofile(8192);
	atomic_store(&stop_load, false);
	daemon_set(d, "cmd", "shutdown_timeout", "%ds", SHUTDOWN_S);
	daemon_set(d, "cmd", "http", "127.0.0.1:0");
#ifdef __SANITIZE_ADDRESS__
	/* freed blocks kept for use-after-free checks would count as held */
	daemon_setenv(d, "ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:exitcode=23:"
		      "quarantine_size_mb=16");
#endif
	daemon_start(d);
	bound = memory_bound(d);
	ck_assert(daemon_wait_log(d, "metrics and health on ", 10000));
	log = daemon_log(d);
	port = scrape_port_from_log(strstr(log, "metrics and health on "));
	free(log);
	ck_assert_int_ne(port, 0);

	/* the aggregates exist; then the hot one's append is held */
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, "{\"command\":\"account.open\","
		"\"aggregate_id\":\"hot\",\"data\":{\"owner\":\"hot\"}}")));
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, "{\"command\":\"account.open\","
		"\"aggregate_id\":\"good\",\"data\":{\"owner\":\"good\"}}")));
	base_rss = proc_kb(daemon_pid(d), "VmRSS:");
	ck_assert_int_gt(base_rss, 0);
	locker = fixture_connect(conninfo);
	fixture_exec(locker, "SELECT pg_advisory_lock(1129468499, hashtext('account-hot'))");

	/* the load */
	pl.line = malloc(BIG_PAD + 256);
	ck_assert_ptr_nonnull(pl.line);
	pl.len = (size_t)sprintf(pl.line, "{\"command\":\"account.deposit\",\"aggregate_id\":\"hot\","
				 "\"data\":{\"amount\":1},\"metadata\":{\"pad\":\"");
	memset(pl.line + pl.len, 'p', BIG_PAD);
	pl.len += BIG_PAD;
	pl.len += (size_t)sprintf(pl.line + pl.len, "\"}}\n");
	for (int i = 0; i < PIPELINERS; i++) {
		pl.fd[i] = dial(daemon_socket(d));
		ck_assert_msg(pl.fd[i] >= 0, "pipeliner %d: %s", i, strerror(errno));
		pl.off[i] = 0;
		atomic_store(&pl.written[i], 0);
	}
	for (int i = 0; i < SLOW_CLIENTS; i++) {
		sl.fd[i] = dial(daemon_socket(d));
		ck_assert_msg(sl.fd[i] >= 0, "slow client %d: %s", i, strerror(errno));
	}
	gd.path = daemon_socket(d);
	ck_assert_int_eq(pthread_create(&tg, NULL, good_run, &gd), 0);
	ck_assert_int_eq(pthread_create(&tp, NULL, pipeliners_run, &pl), 0);
	ck_assert_int_eq(pthread_create(&ts, NULL, slow_run, &sl), 0);

	/* a framing error, then bytes for ever: answered, then closed, and
	 * the daemon read next to nothing of the stream */
	streamer = dial(daemon_socket(d));
	ck_assert_int_ge(streamer, 0);
	{
		static char junk[65536];
		long long sent = 0;
		bool closed = false;

		memset(junk, 'z', sizeof(junk));
		ck_assert_int_eq(send(streamer, "{\"command\":\"\xff\"}\n", 17, MSG_NOSIGNAL), 17);
		t0 = now_ms();
		while (!closed && now_ms() - t0 < 60000) {
			struct pollfd pfd = { .fd = streamer, .events = POLLOUT };
			ssize_t w;

			if (poll(&pfd, 1, 200) <= 0)
				continue;	/* not read any more: the daemon closes it */
			w = send(streamer, junk, sizeof(junk), MSG_DONTWAIT | MSG_NOSIGNAL);
			if (w > 0)
				sent += w;
			else if (w < 0 && errno != EAGAIN && errno != EINTR)
				closed = true;
		}
		ck_assert_msg(closed, "the daemon kept a client open 60 s after a framing error "
			      "(%lld bytes taken)", sent);
		ck_assert_msg(sent < 64LL * 1024 * 1024, "%lld bytes taken after a framing error",
			      sent);
		ck_assert_int_ge(read_line(streamer, buf, sizeof(buf), 10000), 0);
		ck_assert_msg(strstr(buf, "\"malformed\"") != NULL, "answer: %s", buf);
		close(streamer);
	}

	/* the pipeliners fill what the budgets allow and are paused there */
	t0 = now_ms();
	while (metric(port, "cqrs_cmdd_clients_paused") < PIPELINERS ||
	       metric(port, "cqrs_cmdd_client_bytes") < DEFAULT_MEMORY_BUDGET * 0.75) {
		ck_assert_msg(now_ms() - t0 < 180000, "pipeliners not paused after 180 s: %.0f "
			      "paused, %.0f bytes held", metric(port, "cqrs_cmdd_clients_paused"),
			      metric(port, "cqrs_cmdd_client_bytes"));
		ck_assert_msg(atomic_load(&gd.failures) == 0, "well-behaved client: %s", gd.err);
		usleep(100000);
	}

	/* past the cap: every connection answered, none left hanging */
	for (int i = 0; i < FLOOD; i++) {
		static const char req[] = "{\"command\":\"no.such.command\",\"aggregate_id\":\"x\","
			"\"data\":{}}\n";

		flood[i] = dial(daemon_socket(d));
		ck_assert_msg(flood[i] >= 0, "connection %d: %s", i, strerror(errno));
		/* a refused one may be closed already */
		(void)!send(flood[i], req, sizeof(req) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
	}
	for (int i = 0; i < FLOOD; i++) {
		ssize_t len = read_line(flood[i], buf, sizeof(buf), 60000);

		ck_assert_msg(len >= 0, "connection %d of %d past the others got no answer in 60 s",
			      i, FLOOD);
		if (strstr(buf, "too many connections") != NULL) {
			ck_assert_msg(strstr(buf, "\"unavailable\"") != NULL, "%s", buf);
			refused++;
		} else {
			ck_assert_msg(strstr(buf, "\"unknown_command\"") != NULL, "%s", buf);
			answered++;
		}
	}
	for (int i = 0; i < FLOOD; i++)
		close(flood[i]);
	/* 16 + 200 + 1 clients held places; the rest of the cap was served */
	ck_assert_int_gt(refused, 0);
	ck_assert_int_le(answered, DEFAULT_MAX_CONNECTIONS - PIPELINERS - SLOW_CLIENTS - 1);
	ck_assert_int_ge(answered, DEFAULT_MAX_CONNECTIONS - PIPELINERS - SLOW_CLIENTS - 1 - 8);

	/* the daemon still holds what it did, and stopped reading */
	ck_assert_int_le((long long)metric(port, "cqrs_cmdd_client_bytes"),
			 DEFAULT_MEMORY_BUDGET + DEFAULT_MAX_CONNECTIONS * 32LL * 1024);
	ck_assert_int_eq(atomic_load(&pl.errors), 0);
	ck_assert_int_eq(atomic_load(&sl.errors), 0);
	ck_assert_msg(atomic_load(&gd.failures) == 0, "well-behaved client: %s", gd.err);
	ck_assert_int_gt(atomic_load(&gd.answered), 0);

	hwm = proc_kb(daemon_pid(d), "VmHWM:");
	/* what clients can make it hold, on what it held before them; glibc's
	 * arenas and json-c's growth keep some slack (1/8) */
	limit = base_rss + bound + bound / 8;
#ifdef __SANITIZE_ADDRESS__
	limit += limit / 4 + 16LL * 1024 * 1024;	/* shadow, redzones, quarantine */
#endif
	for (int i = 0; i < PIPELINERS; i++)
		written += atomic_load(&pl.written[i]);
	fprintf(stderr, "hostile: VmHWM %lld MiB (started at %lld MiB, limit %lld MiB, bound "
		"%lld MiB); pipeliners wrote %lld MiB; well-behaved client: %d answered, worst %lld "
		"ms; past the cap: %d refused, %d answered\n", hwm >> 20, base_rss >> 20,
		limit >> 20, bound >> 20, written >> 20, atomic_load(&gd.answered),
		atomic_load(&gd.worst_ms), refused, answered);
	ck_assert_msg(hwm > 0 && hwm <= limit, "cqrs-cmdd peaked at %lld MiB resident, over %lld "
		      "MiB", hwm >> 20, limit >> 20);

	/* SIGTERM with 16 clients that never read and an append held */
	atomic_store(&stop_load, true);
	pthread_join(tg, NULL);
	pthread_join(tp, NULL);
	pthread_join(ts, NULL);
	ck_assert_msg(atomic_load(&gd.failures) == 0, "well-behaved client: %s", gd.err);
	t0 = now_ms();
	daemon_signal(d, SIGTERM);
	code = daemon_wait(d, (SHUTDOWN_S + 30) * 1000);
	ck_assert_msg(code == 0, "exit %d %lld ms after SIGTERM (cmd.shutdown_timeout = %ds): %s",
		      code, (long long)(now_ms() - t0), SHUTDOWN_S, daemon_log_tail(d, 20));
	fprintf(stderr, "hostile: exited %lld ms after SIGTERM\n", (long long)(now_ms() - t0));
	ck_assert(daemon_wait_log(d, "cmd.shutdown_timeout", 1000));

	fixture_exec(locker, "SELECT pg_advisory_unlock_all()");
	PQfinish(locker);
	for (int i = 0; i < PIPELINERS; i++)
		if (pl.fd[i] >= 0)
			close(pl.fd[i]);
	for (int i = 0; i < SLOW_CLIENTS; i++)
		if (sl.fd[i] >= 0)
			close(sl.fd[i]);
	free(pl.line);
	daemon_free(d);
}
END_TEST

static void
teardown(void)
{
	daemon_gc_run();
}

static Suite *
suite(void)
{
	Suite *s = suite_create("hostile_clients");
	TCase *tc = tcase_create("at_once");

	tcase_add_checked_fixture(tc, NULL, teardown);
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, every_hostile_client_at_once);
	suite_add_tcase(s, tc);

	tc = tcase_create("budgets");
	tcase_add_checked_fixture(tc, NULL, teardown);
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, a_client_that_reads_nothing_is_closed_at_write_timeout);
	tcase_add_test(tc, budget_full_small_clients_served_and_waiting_ones_time_out);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/*
 * test_cmdd_faults.c - cqrs-cmdd when things go wrong or get busy: restarts
 * and kill -9, SIGTERM with requests in flight, clients that vanish or do
 * not read, many clients on one aggregate, two daemons on one database,
 * PostgreSQL going away (alone and under load). PostgreSQL that stops
 * answering is tests/faults/test_cmdd_store_frozen.c. The daemon runs as a
 * separate process against a real PostgreSQL with the bank plugin.
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
#include "scrape.h"
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

static struct daemon *
start_bank(void)
{
	struct daemon *d = new_bank();

	daemon_start(d);
	return d;
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
stream_count(const char *stream)
{
	return qint("SELECT count(*) FROM cqrs.events WHERE stream = '%s'", stream);
}

static long long
balance(const char *stream)
{
	return qint("SELECT coalesce((SELECT (data->>'balance')::bigint FROM cqrs.events "
		    "WHERE stream = '%s' AND data ? 'balance' ORDER BY version DESC LIMIT 1), 0)",
		    stream);
}

/* Sum of deposits minus withdrawals in the store: what the balance must be. */
static long long
store_sum(const char *stream)
{
	return qint("SELECT coalesce(sum(CASE type WHEN 'MoneyDeposited' THEN (data->>'amount')::bigint "
		    "WHEN 'MoneyWithdrawn' THEN -(data->>'amount')::bigint ELSE 0 END), 0) "
		    "FROM cqrs.events WHERE stream = '%s'", stream);
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

START_TEST(restart_rebuilds_state)
{
	struct daemon *d = start_bank();
	struct daemon_conn *c = daemon_connect(d);
	const char *dep_id = new_id(), *first, *a;

	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), "rs", 0))));
	for (int i = 1; i <= 5; i++)
		DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, deposit_line(new_id(), "rs", i))));
	first = daemon_gc(daemon_conn_call(c, deposit_line(dep_id, "rs", 100)));
	DAEMON_ASSERT_OK(first);
	daemon_conn_close(c);

	/* a clean stop and start: the state comes back from the store */
	daemon_restart(d);
	a = daemon_gc(daemon_call(d, deposit_line(new_id(), "rs", 1000)));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 8);
	ck_assert_int_eq(balance("account-rs"), 1115);
	/* idempotency survives the restart */
	a = daemon_gc(daemon_call(d, deposit_line(dep_id, "rs", 100)));
	DAEMON_ASSERT_OK(a);
	ck_assert_msg(is_duplicate(a), "after a restart, a repeat must still be a duplicate: %s", a);
	ck_assert_str_eq(daemon_answer_str(a, "events.0.id"), daemon_answer_str(first, "events.0.id"));
	/* a rule that needs the state: it must know the balance */
	a = daemon_gc(daemon_call(d, money_line(new_id(), "withdraw", "rs", 1116)));
	DAEMON_ASSERT_ERROR(a, "rejected");

	/* kill -9 leaves its socket file behind; the next start copes */
	daemon_kill(d);
	daemon_start(d);
	a = daemon_gc(daemon_call(d, money_line(new_id(), "withdraw", "rs", 1115)));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 9);
	ck_assert_int_eq(balance("account-rs"), 0);
	a = daemon_gc(daemon_call(d, "{\"command\":\"account.close\",\"aggregate_id\":\"rs\","
				     "\"data\":{}}"));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

START_TEST(snapshots_and_cache_eviction_keep_state_right)
{
	struct daemon *d = new_bank();
	struct daemon_conn *c;
	enum { ACCOUNTS = 5, ROUNDS = 12 };
	long long want[ACCOUNTS] = { 0 };
	const char *a;

	daemon_set(d, "cmd", "cache_size", "2");
	daemon_set(d, "cmd", "snapshot_every", "3");
	daemon_start(d);
	c = daemon_connect(d);
	for (int k = 0; k < ACCOUNTS; k++)
		DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(),
			daemon_fmt("sn%d", k), 0))));
	for (int r = 0; r < ROUNDS; r++) {
		for (int k = 0; k < ACCOUNTS; k++) {
			long long amount = 1 + r * 10 + k;
			a = daemon_gc(daemon_conn_call(c, deposit_line(new_id(), daemon_fmt("sn%d", k),
								       amount)));
			DAEMON_ASSERT_OK(a);
			ck_assert_int_eq(daemon_answer_int(a, "version"), r + 2);
			want[k] += amount;
		}
	}
	daemon_conn_close(c);
	for (int k = 0; k < ACCOUNTS; k++)
		ck_assert_int_eq(balance(daemon_fmt("account-sn%d", k)), want[k]);
	ck_assert_msg(qint("SELECT count(*) FROM cqrs.snapshots") > 0,
		      "snapshot_every = 3 wrote no snapshot in %d commands", ACCOUNTS * ROUNDS);

	daemon_restart(d);
	c = daemon_connect(d);
	for (int k = 0; k < ACCOUNTS; k++) {
		const char *agg = daemon_fmt("sn%d", k);
		a = daemon_gc(daemon_conn_call(c, money_line(new_id(), "withdraw", agg, want[k] + 1)));
		DAEMON_ASSERT_ERROR(a, "rejected");
		a = daemon_gc(daemon_conn_call(c, money_line(new_id(), "withdraw", agg, want[k])));
		DAEMON_ASSERT_OK(a);
		ck_assert_int_eq(daemon_answer_int(a, "version"), ROUNDS + 2);
		ck_assert_int_eq(balance(daemon_fmt("account-sn%d", k)), 0);
	}
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

/* ---- SIGTERM drains ----------------------------------------------------------------- */

START_TEST(sigterm_drains_requests_in_flight)
{
	struct daemon *d = start_bank();
	struct daemon_conn *c = daemon_connect(d);
	enum { N = 300 };
	const char *ids[N];
	char *buf, *a;
	size_t len = 0;
	int ok = 0, unavailable = 0, answered = 0, code;

	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), "dr", 0))));
	buf = daemon_gc(malloc((size_t)N * 256));
	for (int i = 0; i < N; i++) {
		ids[i] = new_id();
		len += (size_t)sprintf(buf + len, "%s\n", deposit_line(ids[i], "dr", 1));
	}
	daemon_conn_write(c, buf, len);
	a = daemon_gc(daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS));
	ck_assert_ptr_nonnull(a);
	daemon_signal(d, SIGTERM);
	for (int i = 0; a != NULL; i++) {
		ck_assert_msg(i < N, "more answers than requests");
		ck_assert_msg(strstr(a, ids[i]) != NULL, "answer %d out of order: %s", i, a);
		if (daemon_answer_ok(a))
			ok++;
		else if (daemon_answer_error(a, "unavailable"))
			unavailable++;
		else
			ck_abort_msg("answer %d while draining: %s", i, a);
		answered++;
		a = daemon_gc(daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS));
	}
	code = daemon_wait(d, DAEMON_STOP_TIMEOUT_MS);
	ck_assert_msg(code == 0, "exit status %d after SIGTERM; log:\n%s", code,
		      daemon_log_tail(d, 30));
	/* every ack is durable; nothing committed went unacknowledged unless it
	 * was answered unavailable (outcome unknown) */
	ck_assert_int_ge(stream_count("account-dr") - 1, ok);
	ck_assert_int_le(stream_count("account-dr") - 1, ok + unavailable);
	ck_assert_int_eq(balance("account-dr"), stream_count("account-dr") - 1);
	fprintf(stderr, "sigterm_drains: %d answered (%d ok, %d unavailable) of %d\n", answered, ok,
		unavailable, N);
	daemon_conn_close(c);

	/* and it starts again on the same socket */
	daemon_start(d);
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, deposit_line(new_id(), "dr", 1))));
	daemon_free(d);
}
END_TEST

/* ---- clients that vanish or stall ---------------------------------------------------- */

START_TEST(vanishing_clients_do_not_disturb_others)
{
	struct daemon *d = start_bank();
	struct daemon_conn *steady = daemon_connect(d);
	const char *a;
	long long v = 1;

	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(steady, open_line(new_id(), "van", 0))));
	for (int round = 0; round < 20; round++) {
		/* half a line, then gone */
		struct daemon_conn *c = daemon_connect(d);
		const char *half = "{\"command\":\"account.deposit\",\"aggregate_id\":\"van\",\"da";
		daemon_conn_write(c, half, strlen(half));
		daemon_conn_close(c);

		/* a whole request, then gone before the answer (the daemon's write
		 * then fails: it must not die of SIGPIPE) */
		for (int k = 0; k < 3; k++) {
			c = daemon_connect(d);
			daemon_conn_send(c, deposit_line(new_id(), "van", 1));
			daemon_conn_close(c);
		}
		/* connect and leave at once */
		c = daemon_connect(d);
		daemon_conn_close(c);

		a = daemon_gc(daemon_conn_call(steady, deposit_line(new_id(), "van", 1000)));
		DAEMON_ASSERT_OK(a);
		ck_assert_int_gt(daemon_answer_int(a, "version"), v);
		v = daemon_answer_int(a, "version");
	}
	/* a big pipeline, abandoned unread */
	{
		struct daemon_conn *c = daemon_connect(d);
		char *buf = daemon_gc(malloc(500 * 256));
		size_t len = 0;
		for (int i = 0; i < 500; i++)
			len += (size_t)sprintf(buf + len, "%s\n", deposit_line(new_id(), "van", 1));
		daemon_conn_write(c, buf, len);
		daemon_conn_close(c);
	}
	a = daemon_gc(daemon_conn_call(steady, deposit_line(new_id(), "van", 1000)));
	DAEMON_ASSERT_OK(a);
	ck_assert(daemon_running(d));
	/* the state the daemon holds agrees with the store */
	usleep(500000);
	a = daemon_gc(daemon_conn_call(steady, deposit_line(new_id(), "van", 1)));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), stream_count("account-van"));
	ck_assert_int_eq(balance("account-van"), store_sum("account-van"));
	ck_assert_int_eq(qint("SELECT count(*) FROM (SELECT 1 FROM cqrs.events GROUP BY "
			      "metadata->>'causation_id' HAVING count(*) > 1) x"), 0);
	daemon_conn_close(steady);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

START_TEST(a_client_that_does_not_read_does_not_block_others)
{
	struct daemon *d = start_bank();
	struct daemon_conn *slow = daemon_connect(d), *other;
	enum { N = 5000 };
	char *buf = daemon_gc(malloc((size_t)N * 200));
	size_t len = 0, off = 0;
	int answers = 0;
	int64_t t0;
	const char *a;

	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(slow, open_line(new_id(), "slow", 0))));
	for (int i = 0; i < N; i++)
		len += (size_t)sprintf(buf + len, "{\"command\":\"account.deposit\","
				       "\"aggregate_id\":\"slow\",\"data\":{\"amount\":1}}\n");
	/* write until the daemon stops taking more, never reading */
	for (;;) {
		ssize_t w = send(daemon_conn_fd(slow), buf + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w > 0) {
			off += (size_t)w;
			if (off == len)
				break;
			continue;
		}
		ck_assert_msg(w < 0 && errno == EAGAIN, "send: %s", strerror(errno));
		{
			struct pollfd p = { .fd = daemon_conn_fd(slow), .events = POLLOUT };
			if (poll(&p, 1, 2000) == 0)
				break;	/* stalled: the daemon applies back-pressure */
		}
	}
	/* another client is served meanwhile */
	t0 = now_ms();
	other = daemon_connect(d);
	a = daemon_gc(daemon_conn_call(other, open_line(new_id(), "fast", 0)));
	DAEMON_ASSERT_OK(a);
	a = daemon_gc(daemon_conn_call(other, deposit_line(new_id(), "fast", 5)));
	DAEMON_ASSERT_OK(a);
	ck_assert_msg(now_ms() - t0 < 5000, "another client waited %lld ms",
		      (long long)(now_ms() - t0));
	daemon_conn_close(other);

	/* the slow one now reads: every request it sent is answered, in order */
	while (answers < N) {
		struct pollfd p = { .fd = daemon_conn_fd(slow), .events = POLLIN };
		char *line;
		bool timed_out;
		if (off < len)
			p.events |= POLLOUT;
		ck_assert_msg(poll(&p, 1, 30000) > 0, "stalled after %d answers", answers);
		if ((p.revents & POLLOUT) && off < len) {
			ssize_t w = send(daemon_conn_fd(slow), buf + off, len - off,
					 MSG_DONTWAIT | MSG_NOSIGNAL);
			if (w > 0)
				off += (size_t)w;
		}
		if (p.revents & (POLLIN | POLLHUP)) {
			while ((line = daemon_conn_try_recv(slow, 0, &timed_out)) != NULL) {
				ck_assert_msg(daemon_answer_ok(line), "answer %d: %s", answers, line);
				ck_assert_int_eq(daemon_answer_int(line, "version"), answers + 2);
				free(line);
				answers++;
			}
			ck_assert_msg(timed_out, "the daemon closed the slow client after %d answers",
				      answers);
		}
	}
	ck_assert_int_eq(balance("account-slow"), N);
	daemon_conn_close(slow);
	daemon_free(d);
}
END_TEST

/* ---- many clients, one aggregate --------------------------------------------------------- */

struct depositor {
	const char *socket;
	const char *agg;
	int idx, n;
	long long sum;
	int ok, other;
	char first_bad[512];
	long long *versions;
};

static void *
depositor_run(void *arg)
{
	struct depositor *w = arg;
	struct daemon_conn *c = daemon_conn_open(w->socket);

	for (int i = 0; i < w->n; i++) {
		char id[UUID_STR_LEN], line[256];
		long long amount = (long long)w->idx * 1000 + i + 1;
		char *a;
		cqrs_uuid_v4(id);
		snprintf(line, sizeof(line), "{\"id\":\"%s\",\"command\":\"account.deposit\","
			 "\"aggregate_id\":\"%s\",\"data\":{\"amount\":%lld}}", id, w->agg, amount);
		a = daemon_conn_call(c, line);
		if (daemon_answer_ok(a)) {
			w->ok++;
			w->sum += amount;
			w->versions[i] = daemon_answer_int(a, "version");
		} else {
			w->other++;
			if (w->first_bad[0] == '\0')
				snprintf(w->first_bad, sizeof(w->first_bad), "%s", a);
		}
		free(a);
	}
	daemon_conn_close(c);
	return NULL;
}

START_TEST(sixteen_clients_one_account_exact_sum)
{
	struct daemon *d = start_bank();
	enum { W = 16, PER = 40 };
	struct depositor w[W];
	pthread_t th[W];
	long long sum = 0, seen = 0;
	char *used;

	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, open_line(new_id(), "hot", 0))));
	for (int i = 0; i < W; i++) {
		w[i] = (struct depositor){ .socket = daemon_socket(d), .agg = "hot", .idx = i,
					   .n = PER };
		w[i].versions = daemon_gc(calloc(PER, sizeof(long long)));
		ck_assert_int_eq(pthread_create(&th[i], NULL, depositor_run, &w[i]), 0);
	}
	for (int i = 0; i < W; i++)
		pthread_join(th[i], NULL);
	used = daemon_gc(calloc(W * PER + 2, 1));
	for (int i = 0; i < W; i++) {
		ck_assert_msg(w[i].other == 0, "client %d: %d not ok, first: %s", i, w[i].other,
			      w[i].first_bad);
		sum += w[i].sum;
		for (int k = 0; k < PER; k++) {
			long long v = w[i].versions[k];
			ck_assert_msg(v >= 2 && v <= W * PER + 1, "version %lld", v);
			ck_assert_msg(!used[v], "version %lld answered twice", v);
			used[v] = 1;
			seen++;
		}
	}
	ck_assert_int_eq(seen, W * PER);
	ck_assert_int_eq(stream_count("account-hot"), W * PER + 1);
	ck_assert_int_eq(qint("SELECT max(version) FROM cqrs.events WHERE stream = 'account-hot'"),
			 W * PER + 1);
	ck_assert_int_eq(store_sum("account-hot"), sum);
	ck_assert_int_eq(balance("account-hot"), sum);
	daemon_free(d);
}
END_TEST

/* ---- two daemons on one database --------------------------------------------------------- */

/*
 * Daemons on one store, clients depositing on shared accounts without
 * expected_version: a daemon that loses a race retries under the stream's
 * lock, so no client ever gets conflict, with one retry allowed
 * (cmd.max_retries = 1) where optimistic retries lose again and again.
 */
static void
daemons_share_accounts(int ndaemons, int naccounts, int per_daemon, int per_client)
{
	struct daemon *ds[3];
	struct depositor w[24];
	pthread_t th[24];
	long long sum[2] = { 0, 0 };
	int ok[2] = { 0, 0 }, nw = ndaemons * per_daemon;
	const char *agg[2] = { "shared0", "shared1" };
	char stream[32];

	ck_assert(ndaemons <= 3 && naccounts <= 2 && nw <= 24);
	for (int k = 0; k < ndaemons; k++) {
		ds[k] = new_bank();
		daemon_set(ds[k], "cmd", "max_retries", "1");
		daemon_start(ds[k]);
	}
	for (int a = 0; a < naccounts; a++)
		DAEMON_ASSERT_OK(daemon_gc(daemon_call(ds[0], open_line(new_id(), agg[a], 0))));
	for (int i = 0; i < nw; i++) {
		w[i] = (struct depositor){ .socket = daemon_socket(ds[i % ndaemons]),
					   .agg = agg[(i / ndaemons) % naccounts], .idx = i,
					   .n = per_client };
		w[i].versions = daemon_gc(calloc((size_t)per_client, sizeof(long long)));
		ck_assert_int_eq(pthread_create(&th[i], NULL, depositor_run, &w[i]), 0);
	}
	for (int i = 0; i < nw; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < nw; i++) {
		int a = (i / ndaemons) % naccounts;

		ck_assert_msg(w[i].other == 0, "client %d: %d not ok, first: %s", i, w[i].other,
			      w[i].first_bad);
		sum[a] += w[i].sum;
		ok[a] += w[i].ok;
	}
	for (int a = 0; a < naccounts; a++) {
		snprintf(stream, sizeof(stream), "account-%s", agg[a]);
		ck_assert_int_eq(stream_count(stream), ok[a] + 1);
		ck_assert_int_eq(store_sum(stream), sum[a]);
		ck_assert_int_eq(balance(stream), sum[a]);
	}
	for (int k = 0; k < ndaemons; k++)
		daemon_free(ds[k]);
}

START_TEST(two_daemons_one_database)
{
	daemons_share_accounts(2, 1, 4, 30);
}
END_TEST

START_TEST(three_daemons_two_accounts)
{
	daemons_share_accounts(3, 2, 4, 25);
}
END_TEST

/*
 * Two daemons, one stream, sequential commands: each daemon's cache falls
 * behind the other's writes. A stale cache is fine for accepting (the append
 * then conflicts, and the daemon reloads and retries), but a refusal decided
 * on stale state is never corrected: the domain rule must see the stream as
 * it is, and so must expected_version.
 */
START_TEST(stale_cache_rejects_nothing_wrongly)
{
	struct daemon *a = start_bank(), *b = start_bank();
	const char *r;

	DAEMON_ASSERT_OK(daemon_gc(daemon_call(a, open_line(new_id(), "sc", 0))));
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(a, deposit_line(new_id(), "sc", 10))));
	r = daemon_gc(daemon_call(b, deposit_line(new_id(), "sc", 5)));
	DAEMON_ASSERT_OK(r);
	ck_assert_int_eq(daemon_answer_int(r, "version"), 3);
	/* a's cache says balance 10, version 2; the store says 15, version 3 */
	r = daemon_gc(daemon_call(a, money_line(new_id(), "withdraw", "sc", 15)));
	ck_assert_msg(daemon_answer_ok(r), "withdraw 15 of 15 through the daemon that did not "
		      "see the last deposit: %s", r);
	ck_assert_int_eq(daemon_answer_int(r, "version"), 4);
	daemon_free(a);
	daemon_free(b);
}
END_TEST

START_TEST(stale_cache_and_expected_version)
{
	struct daemon *a = start_bank(), *b = start_bank();
	const char *r;

	DAEMON_ASSERT_OK(daemon_gc(daemon_call(a, open_line(new_id(), "sc", 0))));
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(a, deposit_line(new_id(), "sc", 10))));
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(a, deposit_line(new_id(), "sc", 10))));
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(a, money_line(new_id(), "withdraw", "sc", 20))));
	r = daemon_gc(daemon_call(b, deposit_line(new_id(), "sc", 1)));
	DAEMON_ASSERT_OK(r);
	ck_assert_int_eq(daemon_answer_int(r, "version"), 5);
	/* a's cache says version 4; the stream is at 5 */
	r = daemon_gc(daemon_call(a, daemon_fmt("{\"command\":\"account.deposit\",\"aggregate_id\":"
		"\"sc\",\"expected_version\":5,\"data\":{\"amount\":1}}")));
	ck_assert_msg(daemon_answer_ok(r), "expected_version 5 on a stream at version 5, sent to "
		      "the daemon whose cache is at 4: %s", r);
	r = daemon_gc(daemon_call(b, daemon_fmt("{\"command\":\"account.deposit\",\"aggregate_id\":"
		"\"sc\",\"expected_version\":5,\"data\":{\"amount\":1}}")));
	DAEMON_ASSERT_ERROR(r, "conflict");
	ck_assert_int_eq(balance("account-sc"), 2);
	ck_assert_int_eq(stream_count("account-sc"), 6);
	daemon_free(a);
	daemon_free(b);
}
END_TEST

/* ---- group commit ------------------------------------------------------------------------ */

/*
 * A session of the test's own that holds the stream's lock (the key the
 * append functions take): appends to it wait until hold_release().
 */
static PGconn *
hold_stream(const char *stream)
{
	PGconn *h = fixture_connect(conninfo);

	fixture_exec(h, daemon_fmt("SELECT pg_advisory_lock(1129468499, hashtext('%s'))", stream));
	return h;
}

/* Waits until n sessions wait for a lock of type locktype. */
static void
wait_lock_waiters(const char *locktype, int n)
{
	int64_t deadline = now_ms() + 30000;
	long long got;

	while ((got = qint("SELECT count(*) FROM pg_locks WHERE locktype = '%s' AND NOT granted",
			   locktype)) < n && now_ms() < deadline)
		usleep(10000);
	ck_assert_msg(got >= n, "%lld sessions wait for a %s lock, not %d", got, locktype, n);
}

/* Waits until cqrs_cmdd_store_queries_waiting is n. */
static void
wait_queries_waiting(uint16_t port, int n)
{
	int64_t deadline = now_ms() + 30000;
	double got;

	for (;;) {
		struct scrape *m = scrape_metrics(port);
		got = scrape_value(m, "cqrs_cmdd_store_queries_waiting", NULL);
		scrape_free(m);
		if (got == n || now_ms() > deadline)
			break;
		usleep(10000);
	}
	ck_assert_msg(got == n, "%g store queries waiting, not %d", got, n);
}

/* A deposit written straight into the store: the daemon's cache falls behind. */
static void
deposit_behind(const char *stream, int version, long long amount, long long balance)
{
	fixture_exec(db(), daemon_fmt("SELECT count(*) FROM cqrs.append('%s', %d, NULL, "
		"jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'MoneyDeposited', "
		"'data', jsonb_build_object('amount', %lld, 'balance', %lld))))",
		stream, version, amount, balance));
}

/*
 * Commands waiting for the one store connection go out as one batch, and
 * each gets its own answer: ok, conflict on a stale expected_version, a
 * conflict without expected_version (retried under the stream's lock: ok),
 * a duplicate command id, an id recorded for another stream, a domain
 * refusal, and a second ok. The oks share one transaction.
 */
START_TEST(group_commit_mixed_outcomes)
{
	struct daemon *d = new_bank();
	struct daemon_conn *c;
	struct scrape *m;
	const char *first = new_id(), *elsewhere = new_id();
	const char *ids[8], *a;
	uint16_t port;
	PGconn *h;
	char *answers[8];

	daemon_set(d, "cmd", "pool_size", "1");
	port = daemon_start_http(d);
	c = daemon_connect(d);
	for (int k = 0; k < 8; k++) {
		DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), daemon_fmt("gm%d", k), 0))));
		ids[k] = new_id();
	}
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, deposit_line(first, "gm4", 7))));
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, deposit_line(elsewhere, "gm0", 1))));
	/* gm2 and gm3 move on behind the daemon's back */
	deposit_behind("account-gm2", 1, 5, 5);
	deposit_behind("account-gm3", 1, 5, 5);

	/* gm0's append waits for the test; the others queue for the connection */
	h = hold_stream("account-gm0");
	daemon_conn_send(c, deposit_line(ids[0], "gm0", 1));
	wait_lock_waiters("advisory", 1);
	daemon_conn_send(c, deposit_line(ids[1], "gm1", 10));
	daemon_conn_send(c, daemon_fmt("{\"id\":\"%s\",\"command\":\"account.deposit\",\"aggregate_id\":"
				       "\"gm2\",\"expected_version\":1,\"data\":{\"amount\":10}}", ids[2]));
	daemon_conn_send(c, deposit_line(ids[3], "gm3", 10));
	daemon_conn_send(c, deposit_line(first, "gm4", 7));
	daemon_conn_send(c, deposit_line(elsewhere, "gm5", 1));
	daemon_conn_send(c, money_line(ids[6], "withdraw", "gm6", 1000));
	daemon_conn_send(c, deposit_line(ids[7], "gm7", 10));
	/* six appends and the reload that the refusal wants */
	wait_queries_waiting(port, 7);
	fixture_exec(h, "SELECT pg_advisory_unlock_all()");
	for (int k = 0; k < 8; k++)
		answers[k] = daemon_gc(daemon_conn_recv(c, 30000));

	DAEMON_ASSERT_OK(answers[0]);
	DAEMON_ASSERT_OK(answers[1]);
	ck_assert_int_eq(daemon_answer_int(answers[1], "version"), 2);
	DAEMON_ASSERT_ERROR(answers[2], "conflict");
	ck_assert_msg(strstr(answers[2], "is at version 2, expected 1") != NULL, "%s", answers[2]);
	DAEMON_ASSERT_OK(answers[3]);	/* lost the race, retried under the lock */
	ck_assert_int_eq(daemon_answer_int(answers[3], "version"), 3);
	DAEMON_ASSERT_OK(answers[4]);
	ck_assert_msg(is_duplicate(answers[4]), "%s", answers[4]);
	ck_assert_int_eq(daemon_answer_int(answers[4], "version"), 2);
	DAEMON_ASSERT_ERROR(answers[5], "id_reused");
	ck_assert_msg(strstr(answers[5], "account-gm0") != NULL, "%s", answers[5]);
	DAEMON_ASSERT_ERROR(answers[6], "rejected");
	DAEMON_ASSERT_OK(answers[7]);
	for (int k = 0; k < 8; k++)
		ck_assert_msg(strstr(answers[k], k == 4 ? first : k == 5 ? elsewhere : ids[k]) != NULL,
			      "answer %d is not its command's: %s", k, answers[k]);

	/* what the store holds: each ok once, nothing of the others */
	ck_assert_int_eq(stream_count("account-gm1"), 2);
	ck_assert_int_eq(stream_count("account-gm2"), 2);
	ck_assert_int_eq(balance("account-gm3"), 15);
	ck_assert_int_eq(stream_count("account-gm4"), 2);
	ck_assert_int_eq(stream_count("account-gm5"), 1);
	ck_assert_int_eq(stream_count("account-gm6"), 1);
	ck_assert_int_eq(qint("SELECT count(DISTINCT xid) FROM cqrs.events WHERE version = 2 AND "
			      "stream IN ('account-gm1', 'account-gm7')"), 1);
	m = scrape_metrics(port);
	ck_assert_msg(scrape_value(m, "cqrs_cmdd_append_batches_total", NULL) == 1 &&
		      scrape_value(m, "cqrs_cmdd_appends_batched_total", NULL) == 6,
		      "batches %g, commands in them %g",
		      scrape_value(m, "cqrs_cmdd_append_batches_total", NULL),
		      scrape_value(m, "cqrs_cmdd_appends_batched_total", NULL));
	ck_assert(scrape_value(m, "cqrs_cmdd_conflicts_retried_total", NULL) == 1);
	scrape_free(m);
	/* later commands on them see the right state */
	a = daemon_gc(daemon_conn_call(c, deposit_line(new_id(), "gm2", 1)));
	ck_assert_int_eq(daemon_answer_int(a, "version"), 3);
	ck_assert_int_eq(balance("account-gm2"), 6);
	PQfinish(h);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

/*
 * An append stuck on a stream's lock (another writer's long transaction)
 * holds no other command back: the appends that come after it go on the
 * free connections (cmd.append_connections bounds the appends that run at
 * once, but one that has run past CMDD_BATCH_STALL_MS is not counted).
 */
START_TEST(group_commit_stuck_append_holds_nothing_back)
{
	struct daemon *d = new_bank();
	struct daemon_conn *c, *c2;
	PGconn *h;
	enum { N = 15 };

	daemon_set(d, "cmd", "pool_size", "4");
	daemon_set(d, "cmd", "append_connections", "1");
	daemon_start(d);
	c = daemon_connect(d);
	c2 = daemon_connect(d);
	for (int k = 0; k <= N; k++)
		DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), daemon_fmt("gw%d", k), 0))));
	h = hold_stream("account-gw0");
	daemon_conn_send(c, deposit_line(new_id(), "gw0", 1));
	wait_lock_waiters("advisory", 1);
	/* one at a time: each is answered while gw0's append stays stuck */
	for (int k = 1; k <= N; k++) {
		const char *a = daemon_gc(daemon_conn_call(c2, deposit_line(new_id(),
							daemon_fmt("gw%d", k), 1)));
		DAEMON_ASSERT_OK(a);
	}
	ck_assert_int_eq(qint("SELECT count(*) FROM cqrs.events WHERE stream = 'account-gw0'"), 1);
	ck_assert_int_eq(qint("SELECT count(*) FROM cqrs.events WHERE version = 2 AND "
			      "stream LIKE 'account-gw%%'"), N);
	fixture_exec(h, "SELECT pg_advisory_unlock_all()");
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_recv(c, 30000)));
	ck_assert_int_eq(qint("SELECT count(*) FROM cqrs.events WHERE stream = 'account-gw0'"), 2);
	PQfinish(h);
	daemon_conn_close(c);
	daemon_conn_close(c2);
	daemon_free(d);
}
END_TEST

/*
 * PostgreSQL stops while a batch is half written (its insert waits on a
 * row another session has not committed): every command of the batch is
 * answered unavailable, and the same commands sent again, with their ids,
 * are each written once.
 */
START_TEST(group_commit_postgres_killed_mid_batch)
{
	struct daemon *d = new_bank();
	struct daemon_conn *c;
	const char *ids[5];
	uint16_t port;
	PGconn *h, *w;
	int64_t deadline;

	daemon_set(d, "cmd", "pool_size", "1");
	port = daemon_start_http(d);
	c = daemon_connect(d);
	for (int k = 0; k < 5; k++) {
		DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), daemon_fmt("gk%d", k), 0))));
		ids[k] = new_id();
	}
	h = hold_stream("account-gk0");
	daemon_conn_send(c, deposit_line(ids[0], "gk0", 1));
	wait_lock_waiters("advisory", 1);
	for (int k = 1; k < 5; k++)
		daemon_conn_send(c, deposit_line(ids[k], daemon_fmt("gk%d", k), 10 * k));
	wait_queries_waiting(port, 4);
	/* version 2 of gk4, the batch's last, is taken by a transaction left open
	 * (written straight, without the stream's lock) */
	w = fixture_connect(conninfo);
	fixture_exec(w, "BEGIN");
	fixture_exec(w, "INSERT INTO cqrs.events (stream, version, id, type, data) VALUES "
		     "('account-gk4', 2, '00000000-0000-4000-8000-00000000c0de', 'MoneyDeposited', "
		     "'{\"amount\":1,\"balance\":1}')");
	fixture_exec(h, "SELECT pg_advisory_unlock_all()");
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_recv(c, 30000)));
	/* the batch wrote gk1..gk3 and waits on gk4's row */
	wait_lock_waiters("transactionid", 1);
	ck_assert_int_eq(qint("SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
			      "'%%cqrs.append_batch%%' AND state = 'active' AND pid <> pg_backend_pid()"), 1);
	PQfinish(h);
	PQfinish(pg);
	pg = NULL;
	fixture_pg_stop();	/* w's transaction still open: it never commits */
	PQfinish(w);
	for (int k = 1; k < 5; k++) {
		char *a = daemon_gc(daemon_conn_recv(c, 30000));
		DAEMON_ASSERT_ERROR(a, "unavailable");
		ck_assert_msg(strstr(a, ids[k]) != NULL, "%s", a);
	}
	fixture_pg_start();

	/* sent again: each written once, and a third time: the first outcome */
	deadline = now_ms() + 60000;
	for (int k = 1; k < 5; k++) {
		const char *a;
		for (;;) {
			a = daemon_gc(daemon_conn_call(c, deposit_line(ids[k], daemon_fmt("gk%d", k), 10 * k)));
			if (!daemon_answer_error(a, "unavailable") || now_ms() > deadline)
				break;
			usleep(100000);
		}
		DAEMON_ASSERT_OK(a);
		ck_assert_int_eq(daemon_answer_int(a, "version"), 2);
		a = daemon_gc(daemon_conn_call(c, deposit_line(ids[k], daemon_fmt("gk%d", k), 10 * k)));
		ck_assert_msg(is_duplicate(a) && daemon_answer_int(a, "version") == 2, "%s", a);
		ck_assert_int_eq(stream_count(daemon_fmt("account-gk%d", k)), 2);
		ck_assert_int_eq(balance(daemon_fmt("account-gk%d", k)), 10 * k);
	}
	ck_assert_int_eq(qint("SELECT count(*) FROM cqrs.events WHERE metadata->>'causation_id' IN "
			      "('%s', '%s', '%s', '%s')", ids[1], ids[2], ids[3], ids[4]), 4);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

/* ---- PostgreSQL away ---------------------------------------------------------------------- */

START_TEST(unavailable_while_postgres_is_down)
{
	struct daemon *d = start_bank();
	struct daemon_conn *c = daemon_connect(d);
	const char *id = new_id(), *a;
	int64_t deadline;
	int tries = 0;

	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), "pd", 0))));
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, deposit_line(new_id(), "pd", 10))));
	fixture_pg_stop();

	daemon_conn_send(c, deposit_line(id, "pd", 5));
	a = daemon_gc(daemon_conn_recv(c, 60000));
	DAEMON_ASSERT_ERROR(a, "unavailable");
	ck_assert(strstr(a, id) != NULL);
	/* an aggregate not in memory: unavailable too */
	a = daemon_gc(daemon_conn_call(c, deposit_line(new_id(), "other", 5)));
	DAEMON_ASSERT_ERROR(a, "unavailable");
	/* what needs no database is still answered as usual */
	a = daemon_gc(daemon_conn_call(c, deposit_line(new_id(), "pd", 0)));
	DAEMON_ASSERT_ERROR(a, "invalid");
	a = daemon_gc(daemon_conn_call(c, "{\"command\":\"x.y\",\"aggregate_id\":\"1\",\"data\":{}}"));
	DAEMON_ASSERT_ERROR(a, "unknown_command");
	a = daemon_gc(daemon_conn_call(c, "nope"));
	DAEMON_ASSERT_ERROR(a, "malformed");

	fixture_pg_start();
	/* the same id again until the daemon has reconnected: done exactly once */
	deadline = now_ms() + 30000;
	for (;;) {
		a = daemon_gc(daemon_conn_call(c, deposit_line(id, "pd", 5)));
		tries++;
		if (!daemon_answer_error(a, "unavailable"))
			break;
		ck_assert_msg(now_ms() < deadline, "still unavailable 30 s after PostgreSQL came back");
		usleep(200000);
	}
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(qint("SELECT count(*) FROM cqrs.events WHERE metadata->>'causation_id' = '%s'",
			      id), 1);
	a = daemon_gc(daemon_conn_call(c, deposit_line(new_id(), "pd", 100)));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 4);
	ck_assert_int_eq(balance("account-pd"), 115);
	ck_assert(daemon_running(d));
	daemon_conn_close(c);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

/* Under systemd the store may come up after the daemon: it starts anyway,
 * answers unavailable, and serves once PostgreSQL is there. */
START_TEST(starts_while_postgres_is_down)
{
	struct daemon *d = new_bank();
	const char *a;
	int64_t deadline;

	fixture_pg_stop();
	daemon_start(d);
	a = daemon_gc(daemon_call(d, open_line(new_id(), "late", 0)));
	DAEMON_ASSERT_ERROR(a, "unavailable");
	fixture_pg_start();
	deadline = now_ms() + 30000;
	for (;;) {
		a = daemon_gc(daemon_call(d, open_line(new_id(), "late", 0)));
		if (!daemon_answer_error(a, "unavailable"))
			break;
		ck_assert_msg(now_ms() < deadline, "still unavailable 30 s after PostgreSQL came up");
		usleep(200000);
	}
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(stream_count("account-late"), 1);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

struct sent {
	char id[UUID_STR_LEN];
	char event_id[UUID_STR_LEN];
	long long amount;
	int64_t at;		/* when the answer came */
	char code[20];		/* "ok" or the error code, "closed" */
};

struct loader {
	const char *socket;
	char agg[32];
	volatile int *stop;
	struct sent *s;
	size_t n, cap;
	int reconnects;
};

static void *
loader_run(void *arg)
{
	struct loader *l = arg;
	struct daemon_conn *c = daemon_conn_open(l->socket);

	while (!*l->stop && l->n < l->cap) {
		struct sent *s = &l->s[l->n++];
		char line[256];
		char *a;
		bool timed_out;
		json_object *o;

		cqrs_uuid_v4(s->id);
		s->amount = (long long)(l->n % 97) + 1;
		snprintf(line, sizeof(line), "{\"id\":\"%s\",\"command\":\"account.deposit\","
			 "\"aggregate_id\":\"%s\",\"data\":{\"amount\":%lld}}", s->id, l->agg,
			 s->amount);
		if (daemon_conn_try_write(c, line, strlen(line)) != 0 ||
		    daemon_conn_try_write(c, "\n", 1) != 0) {
			a = NULL;
			timed_out = false;
		} else {
			a = daemon_conn_try_recv(c, 60000, &timed_out);
		}
		s->at = now_ms();
		if (a == NULL) {
			snprintf(s->code, sizeof(s->code), "%s", timed_out ? "timeout" : "closed");
			daemon_conn_close(c);
			c = daemon_conn_try_open(l->socket);
			l->reconnects++;
			if (c == NULL)
				break;
			continue;
		}
		o = json_tokener_parse(a);
		if (daemon_answer_ok(a)) {
			snprintf(s->code, sizeof(s->code), "ok");
			snprintf(s->event_id, sizeof(s->event_id), "%s",
				 o ? daemon_jstr(o, "events.0.id") : "");
		} else {
			const char *code = o ? daemon_jstr(o, "error.code") : NULL;
			snprintf(s->code, sizeof(s->code), "%s", code ? code : "?");
			if (code != NULL && strcmp(code, "unavailable") == 0)
				usleep(20000);
		}
		json_object_put(o);
		free(a);
	}
	daemon_conn_close(c);
	return NULL;
}

START_TEST(postgres_restart_under_load_loses_no_ack)
{
	struct daemon *d = start_bank();
	enum { W = 8, ACCTS = 4, CAP = 50000 };
	struct loader l[W];
	pthread_t th[W];
	volatile int stop = 0;
	int64_t restarted, deadline;
	long long unavailable = 0, ok = 0, ok_after = 0, other = 0;
	pid_t pid = daemon_pid(d);
	struct daemon_conn *c;
	char *idlist;
	size_t idlen = 0;

	for (int k = 0; k < ACCTS; k++)
		DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, open_line(new_id(), daemon_fmt("ld%d", k), 0))));
	for (int i = 0; i < W; i++) {
		l[i] = (struct loader){ .socket = daemon_socket(d), .stop = &stop, .cap = CAP };
		snprintf(l[i].agg, sizeof(l[i].agg), "ld%d", i % ACCTS);
		l[i].s = daemon_gc(calloc(CAP, sizeof(struct sent)));
		ck_assert_int_eq(pthread_create(&th[i], NULL, loader_run, &l[i]), 0);
	}
	usleep(1500000);
	fixture_pg_stop();
	usleep(2000000);
	fixture_pg_start();
	restarted = now_ms();
	/* run until every loader has had oks again, without touching the daemon */
	deadline = restarted + 40000;
	for (;;) {
		int recovered = 0;
		usleep(500000);
		for (int i = 0; i < W; i++) {
			size_t n = l[i].n, oks = 0;
			for (size_t k = n > 50 ? n - 50 : 0; k + 1 < n; k++)
				oks += l[i].s[k].at > restarted && strcmp(l[i].s[k].code, "ok") == 0;
			recovered += oks >= 5;
		}
		if (recovered == W || now_ms() > deadline)
			break;
	}
	stop = 1;
	for (int i = 0; i < W; i++)
		pthread_join(th[i], NULL);
	ck_assert_msg(daemon_running(d) && daemon_pid(d) == pid, "the daemon died; log:\n%s",
		      daemon_log_tail(d, 30));

	idlist = daemon_gc(malloc((size_t)W * CAP * (UUID_STR_LEN + 3) + 16));
	idlen += (size_t)sprintf(idlist, "{");
	for (int i = 0; i < W; i++) {
		for (size_t k = 0; k < l[i].n; k++) {
			struct sent *s = &l[i].s[k];
			if (strcmp(s->code, "ok") == 0) {
				ok++;
				ok_after += s->at > restarted;
				idlen += (size_t)sprintf(idlist + idlen, "%s%s", idlen > 1 ? "," : "",
							 s->event_id);
			} else if (strcmp(s->code, "unavailable") == 0 || strcmp(s->code, "closed") == 0) {
				unavailable++;
			} else {
				if (other++ == 0)
					fprintf(stderr, "unexpected answer code %s for %s\n", s->code, s->id);
			}
		}
	}
	sprintf(idlist + idlen, "}");
	fprintf(stderr, "pg restart under load: %lld ok (%lld after), %lld unavailable/closed, "
		"%lld other\n", ok, ok_after, unavailable, other);
	ck_assert_msg(other == 0, "%lld answers were neither ok nor unavailable", other);
	ck_assert_msg(unavailable > 0, "no unavailable answer while PostgreSQL was down");
	ck_assert_msg(ok_after >= W * 5, "no recovery without a restart: %lld ok after", ok_after);
	/* every ack is in the store */
	ck_assert_int_eq(qint("SELECT count(*) FROM cqrs.events WHERE id = ANY('%s'::uuid[])", idlist),
			 ok);

	/* resending the unknown outcomes with the same ids settles them exactly once */
	c = daemon_connect(d);
	for (int i = 0; i < W; i++) {
		for (size_t k = 0; k < l[i].n; k++) {
			struct sent *s = &l[i].s[k];
			char *a;
			if (strcmp(s->code, "ok") == 0)
				continue;
			a = daemon_conn_call(c, deposit_line(s->id, l[i].agg, s->amount));
			ck_assert_msg(daemon_answer_ok(a), "resend of %s: %s", s->id, a);
			free(a);
		}
	}
	daemon_conn_close(c);
	for (int k = 0; k < ACCTS; k++) {
		long long want = 0, n = 0;
		const char *stream = daemon_fmt("account-ld%d", k);
		for (int i = k; i < W; i += ACCTS)
			for (size_t j = 0; j < l[i].n; j++) {
				want += l[i].s[j].amount;
				n++;
			}
		ck_assert_int_eq(stream_count(stream), n + 1);
		ck_assert_int_eq(store_sum(stream), want);
		ck_assert_int_eq(balance(stream), want);
	}
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

/* ---- PostgreSQL not answering ------------------------------------------------------- */

/*
 * Private clusters, for tests that freeze PostgreSQL or change its system
 * settings: never the shared one, which later tests need as it was. The
 * parent makes their directory before the tcase and, after it, thaws and
 * stops whatever a test left (a failed test exits at once, frozen cluster
 * and all).
 */
static Suite *
cmdd_faults_suite(void)
{
	Suite *s = suite_create("cmdd_faults");
	TCase *tc = tcase_create("faults");

	tcase_set_timeout(tc, 120);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_unchecked_fixture(tc, NULL, pg_ensure_up);
	tcase_add_test(tc, restart_rebuilds_state);
	tcase_add_test(tc, snapshots_and_cache_eviction_keep_state_right);
	tcase_add_test(tc, sigterm_drains_requests_in_flight);
	tcase_add_test(tc, vanishing_clients_do_not_disturb_others);
	tcase_add_test(tc, a_client_that_does_not_read_does_not_block_others);
	tcase_add_test(tc, sixteen_clients_one_account_exact_sum);
	tcase_add_test(tc, two_daemons_one_database);
	tcase_add_test(tc, three_daemons_two_accounts);
	tcase_add_test(tc, group_commit_mixed_outcomes);
	tcase_add_test(tc, group_commit_stuck_append_holds_nothing_back);
	tcase_add_test(tc, group_commit_postgres_killed_mid_batch);
	tcase_add_test(tc, stale_cache_rejects_nothing_wrongly);
	tcase_add_test(tc, stale_cache_and_expected_version);
	tcase_add_test(tc, unavailable_while_postgres_is_down);
	tcase_add_test(tc, starts_while_postgres_is_down);
	tcase_add_test(tc, postgres_restart_under_load_loses_no_ack);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(cmdd_faults_suite());
	int failed;

	(void)fixture_pg_admin_conninfo();
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

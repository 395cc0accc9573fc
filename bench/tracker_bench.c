/*
 * tracker_bench - cqrs-tracker throughput and latency, with a baseline.
 *
 *   tracker_bench [-n EVENTS] [-b BATCH] [-w INFLIGHT] [-r RUNS] [--rate PER_S]
 *                 [--seconds S] [--tracker PATH] [--no-latency] [--no-throughput]
 *                 [--notify-async]
 *
 * Needs CQRS_STORE_CONNINFO (a migrated, otherwise empty database) and
 * CQRS_BROKER_URL. bench/bench-tracker.sh starts private servers for it.
 *
 * Throughput: EVENTS events are written first (not timed). Then, RUNS times:
 *   baseline: a raw librabbitmq publisher sends the same messages the tracker
 *             sends (the encoded envelopes, routing keys, properties and
 *             headers) with the same confirm batching: batches of BATCH in
 *             confirm mode, at most INFLIGHT batches unconfirmed (when that
 *             many are out, it waits for the oldest one's confirms);
 *   tracker:  a cqrs-tracker (batch_size BATCH, inflight INFLIGHT) under a new
 *             name, so from the beginning, timed from its READY=1 until its
 *             checkpoint names the last event.
 * A durable queue bound to "#" takes the messages, so the broker persists
 * them as it would for a real consumer (it is purged between runs).
 *
 * Latency: a cqrs-tracker at the head of the store; one writer appends one
 * event per transaction at PER_S for S seconds and sends NOTIFY cqrs_events
 * after each commit (as cqrs-cmdd does); a consumer on its own connection
 * takes the messages. Latency = arrival in the consumer - return of the
 * commit. RUNS runs; p50 and p99 of each, and their medians. --notify-async
 * sends the NOTIFY from a session with synchronous_commit off (a NOTIFY's
 * transaction otherwise waits for its own WAL flush before it is delivered).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<rabbitmq-c/amqp.h>)
#define BENCH_NEW_HEADERS 1
#endif
#endif
#ifdef BENCH_NEW_HEADERS
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif
#include <libpq-fe.h>

#include "envelope.h"
#include "hmap.h"
#include "store.h"

static long nevents = 100000;
static int batch = 500, inflight = 4, runs = 3, rate = 200, seconds = 10;
static const char *tracker_bin = "build/bin/cqrs-tracker";
static const char *conninfo, *broker_url;
static char workdir[128];
static pid_t running_tracker;	/* killed by die() */
static bool notify_async;	/* --notify-async: NOTIFY commits without waiting for its flush */

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void
die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void
die(const char *fmt, ...)
{
	va_list ap;

	fputs("tracker_bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (running_tracker > 0)
		kill(running_tracker, SIGKILL);
	exit(1);
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double
median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- PostgreSQL ------------------------------------------------------------- */

static PGconn *
pg_open(void)
{
	PGconn *pg = PQconnectdb(conninfo);

	if (PQstatus(pg) != CONNECTION_OK)
		die("PostgreSQL: %s", PQerrorMessage(pg));
	return pg;
}

static void
pg_exec(PGconn *pg, const char *sql)
{
	PGresult *res = PQexec(pg, sql);

	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
		die("%s: %s", sql, PQerrorMessage(pg));
	PQclear(res);
}

static long long
pg_int(PGconn *pg, const char *sql)
{
	PGresult *res = PQexec(pg, sql);
	long long v;

	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) > 1)
		die("%s: %s", sql, PQerrorMessage(pg));
	/* no row or NULL: -1 */
	v = PQntuples(res) == 0 || PQgetisnull(res, 0, 0) ? -1 : strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return v;
}

/* ---- AMQP --------------------------------------------------------------------- */

static amqp_connection_state_t
mq_open(void)
{
	struct amqp_connection_info ci;
	char *url = strdup(broker_url);
	amqp_connection_state_t c = amqp_new_connection();
	amqp_socket_t *s = amqp_tcp_socket_new(c);
	amqp_rpc_reply_t r;

	if (url == NULL || amqp_parse_url(url, &ci) != AMQP_STATUS_OK)
		die("bad CQRS_BROKER_URL");
	if (amqp_socket_open(s, ci.host, ci.port) != AMQP_STATUS_OK)
		die("cannot connect to RabbitMQ %s:%d", ci.host, ci.port);
	r = amqp_login(c, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
		die("RabbitMQ login failed");
	amqp_channel_open(c, 1);
	if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL)
		die("RabbitMQ channel.open failed");
	free(url);
	return c;
}

static void
mq_check(amqp_connection_state_t c, const char *what)
{
	if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL)
		die("RabbitMQ: %s failed", what);
}

static void
mq_close(amqp_connection_state_t c)
{
	amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(c, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(c);
}

/* ---- the events ---------------------------------------------------------------- */

struct msg {
	char *body;
	char key[256];
	char id[40];
	char type[32];
	char stream[64];
	int64_t version, position;
};

static struct msg *msgs;
static long nmsgs;

/* Writes nevents events like cqrs-cmdd's deposits, 1000 per append, in 100
 * streams; then reads them back in commit-safe order and encodes them. */
static void
preload(void)
{
	PGconn *pg = pg_open();
	struct store *st = NULL;
	struct cqrs_err err = { 0 };
	struct store_checkpoint cp = STORE_CHECKPOINT_START;
	char sql[1024];
	long appends = (nevents + 999) / 1000;
	double t0 = now_ms();

	snprintf(sql, sizeof(sql),
		 "SELECT count(*) FROM generate_series(0, %ld) a, LATERAL cqrs.append("
		 "'account-b' || (a %% 100), -1, NULL, (SELECT jsonb_agg(jsonb_build_object("
		 "'id', gen_random_uuid(), 'type', 'MoneyDeposited', "
		 "'data', jsonb_build_object('amount', 1, 'balance', a * 1000 + g), "
		 "'metadata', jsonb_build_object('correlation_id', gen_random_uuid(), "
		 "'causation_id', gen_random_uuid(), 'command', 'account.deposit'))) "
		 "FROM generate_series(1, least(1000, %ld - a * 1000)) g))",
		 appends - 1, nevents);
	pg_exec(pg, sql);
	if (pg_int(pg, "SELECT count(*) FROM cqrs.events") != nevents)
		die("the database was not empty, or the preload failed");
	PQfinish(pg);

	msgs = calloc((size_t)nevents, sizeof(*msgs));
	if (msgs == NULL || cqrs_store_connect(conninfo, &st, &err) < 0)
		die("store: %s", err.msg);
	while (nmsgs < nevents) {
		struct store_events evs;
		char xid[24], pos[24];
		const char *params[2] = { xid, pos };
		PGresult *res;

		/* (not cqrs_store_read_all: its ORDER BY sorts the xid as text) */
		snprintf(xid, sizeof(xid), "%" PRIu64, cp.xid);
		snprintf(pos, sizeof(pos), "%" PRId64, cp.position);
		res = PQexecParams(cqrs_store_pg(st),
				   "SELECT e.id, e.stream, e.version, e.position, e.type, e.data::text, "
				   "e.metadata::text, to_char(e.recorded_at AT TIME ZONE 'UTC', "
				   "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), e.xid::text FROM cqrs.events e "
				   "WHERE (e.xid, e.position) > ($1::xid8, $2::bigint) "
				   "ORDER BY e.xid, e.position LIMIT 10000", 2, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_TUPLES_OK || cqrs_store_events_parse(res, &evs, &err) < 0)
			die("read: %s%s", PQerrorMessage(cqrs_store_pg(st)), err.msg);
		PQclear(res);
		if (evs.n == 0)
			die("read: only %ld events", nmsgs);
		for (size_t i = 0; i < evs.n; i++) {
			struct msg *m = &msgs[nmsgs++];
			const struct cqrs_event *ev = evs.ev[i];
			m->body = cqrs_envelope_encode(ev);
			snprintf(m->key, sizeof(m->key), "%.*s.%s", (int)strcspn(ev->stream, "-"),
				 ev->stream, ev->type);
			snprintf(m->id, sizeof(m->id), "%s", ev->id);
			snprintf(m->type, sizeof(m->type), "%s", ev->type);
			snprintf(m->stream, sizeof(m->stream), "%s", ev->stream);
			m->version = ev->version;
			m->position = ev->position;
		}
		cp = evs.at[evs.n - 1];
		cqrs_store_events_clear(&evs);
	}
	cqrs_store_free(st);
	printf("preloaded %ld events in %.1f s (bodies ~%zu bytes)\n", nevents,
	       (now_ms() - t0) / 1000, strlen(msgs[0].body));
}

/* ---- baseline --------------------------------------------------------------------- */

static void
publish(amqp_connection_state_t c, const struct msg *m)
{
	amqp_basic_properties_t p;
	amqp_table_entry_t h[3];
	amqp_bytes_t body = { strlen(m->body), m->body };

	memset(&p, 0, sizeof(p));
	p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
		   AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_HEADERS_FLAG;
	p.content_type = amqp_cstring_bytes("application/json");
	p.delivery_mode = 2;
	p.message_id = amqp_cstring_bytes(m->id);
	p.type = amqp_cstring_bytes(m->type);
	h[0].key = amqp_cstring_bytes("stream");
	h[0].value.kind = AMQP_FIELD_KIND_UTF8;
	h[0].value.value.bytes = amqp_cstring_bytes(m->stream);
	h[1].key = amqp_cstring_bytes("version");
	h[1].value.kind = AMQP_FIELD_KIND_I64;
	h[1].value.value.i64 = m->version;
	h[2].key = amqp_cstring_bytes("position");
	h[2].value.kind = AMQP_FIELD_KIND_I64;
	h[2].value.value.i64 = m->position;
	p.headers.num_entries = 3;
	p.headers.entries = h;
	if (amqp_basic_publish(c, 1, amqp_cstring_bytes("cqrs.events"), amqp_cstring_bytes(m->key),
			       0, 0, &p, body) != AMQP_STATUS_OK)
		die("baseline: publish failed");
}

/* Reads frames until every tag <= upto is acked. Acks may be multiple or
 * single, in any order: done[tag] records them, *acked is the highest tag
 * with everything up to it acked. */
static uint8_t *done;

static void
wait_acks(amqp_connection_state_t c, uint64_t upto, uint64_t *acked)
{
	while (*acked < upto) {
		amqp_frame_t f;
		if (amqp_simple_wait_frame(c, &f) != AMQP_STATUS_OK)
			die("baseline: reading confirms failed");
		if (f.frame_type != AMQP_FRAME_METHOD)
			continue;
		if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
			amqp_basic_ack_t *a = f.payload.method.decoded;
			if (a->multiple)
				for (uint64_t t = *acked + 1; t <= a->delivery_tag; t++)
					done[t] = 1;
			else
				done[a->delivery_tag] = 1;
			while (*acked < (uint64_t)nmsgs && done[*acked + 1])
				(*acked)++;
		} else {
			die("baseline: unexpected %s", amqp_method_name(f.payload.method.id));
		}
	}
	amqp_maybe_release_buffers(c);
}

static double
run_baseline(void)
{
	amqp_connection_state_t c = mq_open();
	uint64_t acked = 0, sent = 0;
	double t0;

	amqp_confirm_select(c, 1);
	mq_check(c, "confirm.select");
	free(done);
	done = calloc((size_t)nmsgs + 2, 1);
	if (done == NULL)
		die("out of memory");
	t0 = now_ms();
	for (long i = 0; i < nmsgs; i += batch) {
		long end = i + batch < nmsgs ? i + batch : nmsgs;
		for (long j = i; j < end; j++) {
			publish(c, &msgs[j]);
			sent++;
		}
		/* a full window: the oldest batch's confirms before the next */
		if (sent > (uint64_t)(inflight - 1) * (uint64_t)batch)
			wait_acks(c, sent - (uint64_t)(inflight - 1) * (uint64_t)batch, &acked);
	}
	wait_acks(c, sent, &acked);
	t0 = now_ms() - t0;
	mq_close(c);
	return nmsgs / (t0 / 1000);
}

/* ---- a tracker process ------------------------------------------------------------- */

struct child {
	pid_t pid;
	int notify;
	char conf[256];
};

static void
start_tracker(struct child *ch, const char *name, bool wait_ready)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char path[200], buf[512];
	FILE *f;

	snprintf(ch->conf, sizeof(ch->conf), "%s/%s.conf", workdir, name);
	f = fopen(ch->conf, "w");
	if (f == NULL)
		die("%s: %s", ch->conf, strerror(errno));
	fprintf(f, "[store]\nconninfo = %s\n[broker]\nurl = %s\n[tracker]\nname = %s\n"
		   "batch_size = %d\ninflight = %d\n[log]\nlevel = warn\n", conninfo, broker_url,
		name, batch, inflight);
	fclose(f);
	snprintf(path, sizeof(path), "%s/%s.notify", workdir, name);
	unlink(path);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%.100s", path);
	ch->notify = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (ch->notify < 0 || bind(ch->notify, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		die("notify socket: %s", strerror(errno));
	ch->pid = fork();
	if (ch->pid < 0)
		die("fork: %s", strerror(errno));
	if (ch->pid == 0) {
		setenv("NOTIFY_SOCKET", path, 1);
		execl(tracker_bin, tracker_bin, "-c", ch->conf, (char *)NULL);
		fprintf(stderr, "exec %s: %s\n", tracker_bin, strerror(errno));
		_exit(127);
	}
	running_tracker = ch->pid;
	while (wait_ready) {
		struct pollfd pfd = { ch->notify, POLLIN, 0 };
		ssize_t n;
		if (poll(&pfd, 1, 20000) <= 0)
			die("%s: no READY=1 within 20 s", tracker_bin);
		n = recv(ch->notify, buf, sizeof(buf) - 1, 0);
		if (n > 0) {
			buf[n] = '\0';
			if (strstr(buf, "READY=1") != NULL)
				break;
		}
	}
}

static void
stop_tracker(struct child *ch)
{
	int status;

	kill(ch->pid, SIGTERM);
	waitpid(ch->pid, &status, 0);
	running_tracker = 0;
	close(ch->notify);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		die("%s exited with status %d", tracker_bin, status);
}

/* The tracker's notifications must be read, or sd_notify() blocks it. */
static void
drain(struct child *ch)
{
	char buf[512];

	while (recv(ch->notify, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
}

static double
run_tracker(PGconn *pg, int r)
{
	struct child ch;
	char name[64], sql[256];
	double t0, t;

	snprintf(name, sizeof(name), "bench-%d-%d", (int)getpid(), r);
	snprintf(sql, sizeof(sql), "SELECT position FROM cqrs.checkpoints WHERE name = '%s'", name);
	start_tracker(&ch, name, true);
	t0 = now_ms();
	while (pg_int(pg, sql) != msgs[nmsgs - 1].position) {
		drain(&ch);
		usleep(2000);
		if (now_ms() - t0 > 600000)
			die("the tracker did not finish in 10 minutes");
	}
	t = now_ms() - t0;
	stop_tracker(&ch);
	return nmsgs / (t / 1000);
}

static void
purge(amqp_connection_state_t c, const char *queue)
{
	amqp_queue_purge(c, 1, amqp_cstring_bytes(queue));
	mq_check(c, "queue.purge");
}

static void
throughput(void)
{
	amqp_connection_state_t c = mq_open();
	PGconn *pg = pg_open();
	char queue[64];
	double *base = calloc((size_t)runs, sizeof(double));
	double *trk = calloc((size_t)runs, sizeof(double));
	double mb, mt;

	/* where the messages go: a durable queue, as a real consumer's */
	snprintf(queue, sizeof(queue), "bench.sink.%d", (int)getpid());
	amqp_exchange_declare(c, 1, amqp_cstring_bytes("cqrs.events"), amqp_cstring_bytes("topic"),
			      0, 1, 0, 0, amqp_empty_table);
	mq_check(c, "exchange.declare");
	amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, amqp_empty_table);
	mq_check(c, "queue.declare");
	amqp_queue_bind(c, 1, amqp_cstring_bytes(queue), amqp_cstring_bytes("cqrs.events"),
			amqp_cstring_bytes("#"), amqp_empty_table);
	mq_check(c, "queue.bind");

	printf("== throughput: %ld events, batches of %d, %d batches in flight, confirms, into a "
	       "durable queue\n", nmsgs, batch, inflight);
	for (int r = 0; r < runs; r++) {
		purge(c, queue);
		base[r] = run_baseline();
		purge(c, queue);
		trk[r] = run_tracker(pg, r);
		printf("run %d: baseline (raw librabbitmq) %.0f events/s, cqrs-tracker %.0f events/s, "
		       "ratio %.2f\n", r + 1, base[r], trk[r], trk[r] / base[r]);
		fflush(stdout);
	}
	purge(c, queue);
	amqp_queue_delete(c, 1, amqp_cstring_bytes(queue), 0, 0);
	mq_check(c, "queue.delete");
	mb = median(base, runs);
	mt = median(trk, runs);
	printf("== median of %d runs: baseline %.0f events/s, cqrs-tracker %.0f events/s, "
	       "ratio %.2f (target >= 0.7)\n", runs, mb, mt, mt / mb);
	free(base);
	free(trk);
	PQfinish(pg);
	mq_close(c);
}

/* ---- latency ---------------------------------------------------------------------- */

struct arrival {
	char id[40];
	double at;
};

struct consumer {
	amqp_connection_state_t c;
	struct arrival *got;
	long n, cap;
	volatile int stop;
};

static void *
consume(void *arg)
{
	struct consumer *k = arg;

	while (!k->stop) {
		struct timeval tv = { 0, 100000 };
		amqp_envelope_t env;
		amqp_rpc_reply_t r;

		amqp_maybe_release_buffers(k->c);
		r = amqp_consume_message(k->c, &env, &tv, 0);
		if (r.reply_type == AMQP_RESPONSE_NORMAL) {
			double at = now_ms();
			if (k->n < k->cap) {
				amqp_bytes_t id = env.message.properties.message_id;
				snprintf(k->got[k->n].id, sizeof(k->got[k->n].id), "%.*s", (int)id.len,
					 (char *)id.bytes);
				k->got[k->n++].at = at;
			}
			amqp_destroy_envelope(&env);
		} else if (r.reply_type != AMQP_RESPONSE_LIBRARY_EXCEPTION ||
			   r.library_error != AMQP_STATUS_TIMEOUT) {
			die("latency consumer: connection failed");
		}
	}
	return NULL;
}

static void
latency(void)
{
	PGconn *pg = pg_open(), *notify = pg_open();
	struct store *st = NULL;
	struct cqrs_err err = { 0 };
	double *p50 = calloc((size_t)runs, sizeof(double));
	double *p99 = calloc((size_t)runs, sizeof(double));
	long per_run = (long)rate * seconds;

	if (cqrs_store_connect(conninfo, &st, &err) < 0)
		die("store: %s", err.msg);
	if (notify_async)
		pg_exec(notify, "SET synchronous_commit TO off");
	printf("== latency: commit -> arrival in a queue, %d events/s for %d s, one event per "
	       "transaction, NOTIFY after each commit%s\n", rate, seconds,
	       notify_async ? " (NOTIFY session with synchronous_commit off)" : "");
	for (int r = 0; r < runs; r++) {
		struct consumer k = { .c = mq_open() };
		struct child ch;
		struct hmap *committed = cqrs_hmap_new();
		double *commit_at = calloc((size_t)per_run, sizeof(double));
		double *lat = calloc((size_t)per_run, sizeof(double));
		double *nlat_ = calloc((size_t)per_run, sizeof(double));
		char name[64], sql[512], queue[64];
		pthread_t th;
		double next;
		long nlat = 0;
		amqp_queue_declare_ok_t *q;

		if (committed == NULL || commit_at == NULL || lat == NULL)
			die("out of memory");
		/* an exclusive queue for this run's events */
		snprintf(queue, sizeof(queue), "bench.latency.%d.%d", (int)getpid(), r);
		q = amqp_queue_declare(k.c, 1, amqp_cstring_bytes(queue), 0, 0, 1, 1, amqp_empty_table);
		(void)q;
		mq_check(k.c, "queue.declare");
		snprintf(sql, sizeof(sql), "lat%d.#", r);
		amqp_queue_bind(k.c, 1, amqp_cstring_bytes(queue), amqp_cstring_bytes("cqrs.events"),
				amqp_cstring_bytes(sql), amqp_empty_table);
		mq_check(k.c, "queue.bind");
		amqp_basic_consume(k.c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 1, 1,
				   amqp_empty_table);
		mq_check(k.c, "basic.consume");
		k.cap = per_run;
		k.got = calloc((size_t)per_run, sizeof(*k.got));
		pthread_create(&th, NULL, consume, &k);

		/* a tracker that starts at the head of the store */
		snprintf(name, sizeof(name), "latency-%d-%d", (int)getpid(), r);
		snprintf(sql, sizeof(sql),
			 "INSERT INTO cqrs.checkpoints (name, xid, position) SELECT '%s', xid, position "
			 "FROM cqrs.events ORDER BY xid DESC, position DESC LIMIT 1", name);
		pg_exec(pg, sql);
		start_tracker(&ch, name, true);
		usleep(300000);

		next = now_ms();
		for (long i = 0; i < per_run; i++) {
			struct store_event_in in = { .type = "MoneyDeposited",
						     .data = "{\"amount\":1,\"balance\":1}",
						     .metadata = "{\"command\":\"account.deposit\"}" };
			struct store_append_result res;
			char stream[64];
			double wait = next - now_ms();

			if (wait > 0)
				usleep((useconds_t)(wait * 1000));
			next += 1000.0 / rate;
			snprintf(stream, sizeof(stream), "lat%d-%ld", r, i % 50);
			if (cqrs_store_append(st, stream, STORE_ANY, &in, 1, NULL, &res, &err) < 0)
				die("append: %s", err.msg);
			commit_at[i] = now_ms();
			if (cqrs_hmap_put(committed, res.events[0].id, &commit_at[i]) < 0)
				die("out of memory");
			cqrs_store_append_result_clear(&res);
			PQclear(PQexec(notify, "NOTIFY cqrs_events"));
			nlat_[i] = now_ms() - commit_at[i];
			drain(&ch);
		}
		/* the last ones */
		for (double t0 = now_ms(); k.n < per_run && now_ms() - t0 < 10000;)
			usleep(10000);
		k.stop = 1;
		pthread_join(th, NULL);
		stop_tracker(&ch);
		for (long i = 0; i < k.n; i++) {
			double *c = cqrs_hmap_get(committed, k.got[i].id);
			if (c != NULL)
				lat[nlat++] = k.got[i].at - *c;
		}
		if (nlat < per_run)
			die("latency: %ld of %ld events arrived", nlat, per_run);
		qsort(lat, (size_t)nlat, sizeof(double), cmp_double);
		p50[r] = lat[nlat / 2];
		p99[r] = lat[(nlat * 99) / 100];
		qsort(nlat_, (size_t)per_run, sizeof(double), cmp_double);
		printf("run %d: %ld events, p50 %.2f ms, p99 %.2f ms, max %.2f ms (of which the NOTIFY "
		       "round trip: p50 %.2f, p99 %.2f, max %.2f ms)\n", r + 1, nlat, p50[r], p99[r],
		       lat[nlat - 1], nlat_[per_run / 2], nlat_[(per_run * 99) / 100],
		       nlat_[per_run - 1]);
		fflush(stdout);
		mq_close(k.c);
		free(k.got);
		free(commit_at);
		free(lat);
		free(nlat_);
		cqrs_hmap_free(committed);
	}
	printf("== median of %d runs: p50 %.2f ms, p99 %.2f ms (target p99 < 10 ms)\n", runs,
	       median(p50, runs), median(p99, runs));
	free(p50);
	free(p99);
	cqrs_store_free(st);
	PQfinish(notify);
	PQfinish(pg);
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "events", required_argument, NULL, 'n' },
		{ "batch", required_argument, NULL, 'b' },
		{ "inflight", required_argument, NULL, 'w' },
		{ "runs", required_argument, NULL, 'r' },
		{ "rate", required_argument, NULL, 'R' },
		{ "seconds", required_argument, NULL, 'S' },
		{ "tracker", required_argument, NULL, 't' },
		{ "no-latency", no_argument, NULL, 'L' },
		{ "no-throughput", no_argument, NULL, 'T' },
		{ "notify-async", no_argument, NULL, 'A' },
		{ NULL, 0, NULL, 0 },
	};
	bool do_latency = true, do_throughput = true;
	int c;

	while ((c = getopt_long(argc, argv, "n:b:w:r:", opts, NULL)) != -1) {
		switch (c) {
		case 'n': nevents = atol(optarg); break;
		case 'b': batch = atoi(optarg); break;
		case 'w': inflight = atoi(optarg); break;
		case 'r': runs = atoi(optarg); break;
		case 'R': rate = atoi(optarg); break;
		case 'S': seconds = atoi(optarg); break;
		case 't': tracker_bin = optarg; break;
		case 'L': do_latency = false; break;
		case 'T': do_throughput = false; break;
		case 'A': notify_async = true; break;
		default:
			fprintf(stderr, "usage: tracker_bench [-n EVENTS] [-b BATCH] [-w INFLIGHT] [-r RUNS] "
					"[--rate PER_S] [--seconds S] [--tracker PATH] "
					"[--no-latency] [--no-throughput] [--notify-async]\n");
			return 2;
		}
	}
	conninfo = getenv("CQRS_STORE_CONNINFO");
	broker_url = getenv("CQRS_BROKER_URL");
	if (conninfo == NULL || broker_url == NULL)
		die("set CQRS_STORE_CONNINFO and CQRS_BROKER_URL");
	if (nevents < 1 || batch < 1 || inflight < 1 || runs < 1 || rate < 1 || seconds < 1)
		die("bad arguments");
	snprintf(workdir, sizeof(workdir), "/tmp/tracker-bench.XXXXXX");
	if (mkdtemp(workdir) == NULL)
		die("mkdtemp: %s", strerror(errno));
	signal(SIGPIPE, SIG_IGN);
	if (do_throughput) {
		preload();
		throughput();
	}
	if (do_latency)
		latency();
	{
		char cmd[200];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", workdir);
		if (system(cmd) != 0)
			fprintf(stderr, "tracker_bench: could not remove %s\n", workdir);
	}
	for (long i = 0; i < nmsgs; i++)
		free(msgs[i].body);
	free(msgs);
	free(done);
	return 0;
}

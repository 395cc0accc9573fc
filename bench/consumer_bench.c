/*
 * consumer_bench - measurements for bench/bench-consumer.sh.
 *
 *   consumer_bench wait-queue URL QUEUE COUNT
 *       waits until QUEUE holds COUNT ready messages (passive declare).
 *   consumer_bench throughput CONSUMER_BIN CONFIG NAME CONNINFO EVENTS
 *       starts `CONSUMER_BIN -n NAME -c CONFIG`, waits until the consumer's
 *       recorded stream versions add up to EVENTS (every event of its queue
 *       handled and committed), stops it, and prints events/s from its start
 *       and from its first commit.
 *   consumer_bench latency SOCKET CONNINFO ACCOUNTS RATE SECONDS
 *       sends account.deposit commands to cqrs-cmdd at RATE per second (one
 *       at a time, accounts a0..a{ACCOUNTS-1}); for each, the time from the
 *       command's ack to the commit of its version in bank_balances, told by
 *       NOTIFY bench_projected 'ACCOUNT:VERSION' from a trigger that
 *       bench-consumer.sh puts on the table; prints p50, p90, p99 and max in
 *       milliseconds.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<rabbitmq-c/amqp.h>)
#define CB_NEW_HEADERS 1
#endif
#endif
#ifdef CB_NEW_HEADERS
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif

#include <json-c/json.h>
#include <libpq-fe.h>

#include "broker.h"
#include "cmdclient.h"

extern char **environ;

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
die(const char *fmt, const char *arg)
{
	fprintf(stderr, "consumer_bench: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	exit(1);
}

/* ---- wait-queue -------------------------------------------------------------------- */

static long
queue_depth(const char *url, const char *queue)
{
	struct broker_url u;
	struct cqrs_err err = { 0 };
	amqp_connection_state_t conn;
	amqp_socket_t *sock;
	amqp_queue_declare_ok_t *ok;
	long n;

	if (cqrs_broker_url_parse(url, &u, &err) < 0)
		die("%s", err.msg);
	conn = amqp_new_connection();
	sock = amqp_tcp_socket_new(conn);
	if (sock == NULL || amqp_socket_open(sock, u.host, u.port) != AMQP_STATUS_OK)
		die("cannot connect to %s", u.name);
	if (amqp_login(conn, u.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, u.user, u.password)
		    .reply_type != AMQP_RESPONSE_NORMAL)
		die("cannot log in to %s", u.name);
	amqp_channel_open(conn, 1);
	ok = amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
	n = ok != NULL ? (long)ok->message_count : -1;
	if (ok != NULL)
		(void)amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
	(void)amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
	cqrs_broker_url_clear(&u);
	return n;
}

static int
wait_queue(const char *url, const char *queue, long count)
{
	double deadline = now_s() + 600;
	long n = -1;

	while (now_s() < deadline) {
		n = queue_depth(url, queue);
		if (n >= count)
			return 0;
		usleep(100 * 1000);
	}
	fprintf(stderr, "consumer_bench: queue %s holds %ld of %ld\n", queue, n, count);
	return 1;
}

/* ---- throughput -------------------------------------------------------------------- */

static long long
query_ll(PGconn *pg, const char *sql, const char *param)
{
	const char *params[1] = { param };
	PGresult *res = PQexecParams(pg, sql, param != NULL ? 1 : 0, NULL, params, NULL, NULL, 0);
	long long n = -1;

	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
		n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return n;
}

static int
throughput(const char *bin, const char *config, const char *name, const char *conninfo,
	   long long events)
{
	char *argv[] = { (char *)bin, "-n", (char *)name, "-c", (char *)config, NULL };
	PGconn *pg = PQconnectdb(conninfo);
	double t0, t_first = 0, t_end;
	long long done = 0;
	pid_t pid;
	int st;

	if (PQstatus(pg) != CONNECTION_OK)
		die("%s", PQerrorMessage(pg));
	t0 = now_s();
	if (posix_spawn(&pid, bin, NULL, NULL, argv, environ) != 0)
		die("cannot run %s", bin);
	for (;;) {
		done = query_ll(pg, "SELECT coalesce(sum(version), 0) FROM cqrs.consumer_streams "
				    "WHERE consumer = $1",
				name);
		if (done > 0 && t_first == 0)
			t_first = now_s();
		if (done >= events)
			break;
		if (now_s() - t0 > 600 || waitpid(pid, &st, WNOHANG) == pid) {
			fprintf(stderr, "consumer_bench: %lld of %lld events handled\n", done, events);
			kill(pid, SIGKILL);
			return 1;
		}
		usleep(2000);
	}
	t_end = now_s();
	kill(pid, SIGTERM);
	waitpid(pid, &st, 0);
	PQfinish(pg);
	printf("consumer: %lld events in %.3f s: %.0f events/s (from the first commit: %.0f events/s)\n",
	       events, t_end - t0, (double)events / (t_end - t0),
	       (double)events / (t_end - (t_first > 0 ? t_first : t0)));
	return 0;
}

/* ---- latency ----------------------------------------------------------------------- */

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double
pct(const double *v, size_t n, double p)
{
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);

	return v[i < n ? i : n - 1];
}

/*
 * The projection's commit is seen through a NOTIFY from a trigger on
 * bank_balances (bench-consumer.sh creates it): delivered when the
 * consumer's transaction commits, and waited for without polling, so the
 * measurement adds no load of its own. A notification may come before the
 * command's answer has been read: it is remembered until then.
 */
static int
latency(const char *socket, const char *conninfo, int accounts, double rate, double seconds)
{
	struct cmdclient *cli = NULL;
	struct cqrs_err err = { 0 };
	PGconn *pg = PQconnectdb(conninfo);
	size_t cap = (size_t)(rate * seconds) + 16, n = 0;
	double *lat = calloc(cap, sizeof(*lat));
	char (*seen)[64] = calloc(64, sizeof(*seen));
	size_t n_seen = 0;
	double start, next;
	PGresult *res;

	if (PQstatus(pg) != CONNECTION_OK)
		die("%s", PQerrorMessage(pg));
	res = PQexec(pg, "LISTEN bench_projected");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		die("LISTEN: %s", PQerrorMessage(pg));
	PQclear(res);
	if (cqrs_cmdclient_connect(socket, 5000, &cli, &err) < 0)
		die("%s", err.msg);
	start = next = now_s();
	for (unsigned i = 0; now_s() - start < seconds && n < cap; i++) {
		char line[200], account[32], want[64], *answer = NULL;
		struct json_object *o, *v;
		double acked;
		bool found = false;

		while (now_s() < next)
			usleep(100);
		next += 1.0 / rate;
		snprintf(account, sizeof(account), "a%u", i % (unsigned)accounts);
		snprintf(line, sizeof(line),
			 "{\"command\":\"account.deposit\",\"aggregate_id\":\"%s\",\"data\":{\"amount\":1}}",
			 account);
		if (cqrs_cmdclient_call(cli, line, 10000, &answer, &err) < 0)
			die("%s", err.msg);
		acked = now_s();
		o = json_tokener_parse(answer);
		if (o == NULL || !json_object_object_get_ex(o, "version", &v))
			die("not ok: %s", answer);
		snprintf(want, sizeof(want), "%s:%lld", account, (long long)json_object_get_int64(v));
		json_object_put(o);
		free(answer);
		for (size_t k = 0; k < n_seen && !found; k++)
			found = strcmp(seen[k], want) == 0;
		while (!found) {
			struct pollfd pfd = { PQsocket(pg), POLLIN, 0 };
			PGnotify *note;

			if (now_s() - acked > 10)
				die("%s not projected after 10 s", want);
			if (poll(&pfd, 1, 100) < 0 && errno != EINTR)
				die("poll: %s", strerror(errno));
			if (!PQconsumeInput(pg))
				die("%s", PQerrorMessage(pg));
			while ((note = PQnotifies(pg)) != NULL) {
				if (strcmp(note->extra, want) == 0)
					found = true;
				else
					snprintf(seen[n_seen++ % 64], sizeof(seen[0]), "%s", note->extra);
				PQfreemem(note);
			}
		}
		lat[n++] = (now_s() - acked) * 1000.0;
		n_seen = 0;
	}
	qsort(lat, n, sizeof(*lat), cmp_double);
	printf("latency: %zu commands at %.0f/s: ack -> projection committed p50 %.2f ms, "
	       "p90 %.2f ms, p99 %.2f ms, max %.2f ms\n",
	       n, rate, pct(lat, n, 0.50), pct(lat, n, 0.90), pct(lat, n, 0.99), lat[n - 1]);
	cqrs_cmdclient_free(cli);
	PQfinish(pg);
	free(lat);
	free(seen);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc == 5 && strcmp(argv[1], "wait-queue") == 0)
		return wait_queue(argv[2], argv[3], atol(argv[4]));
	if (argc == 7 && strcmp(argv[1], "throughput") == 0)
		return throughput(argv[2], argv[3], argv[4], argv[5], atoll(argv[6]));
	if (argc == 7 && strcmp(argv[1], "latency") == 0)
		return latency(argv[2], argv[3], atoi(argv[4]), atof(argv[5]), atof(argv[6]));
	fprintf(stderr, "usage: consumer_bench wait-queue URL QUEUE COUNT\n"
			"       consumer_bench throughput CONSUMER_BIN CONFIG NAME CONNINFO EVENTS\n"
			"       consumer_bench latency SOCKET CONNINFO ACCOUNTS RATE SECONDS\n");
	return 2;
}

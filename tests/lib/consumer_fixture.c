/* consumer_fixture.c - cqrs-consumer processes and queues for tests (see the .h). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<rabbitmq-c/amqp.h>)
#define CF_NEW_HEADERS 1
#endif
#endif
#ifdef CF_NEW_HEADERS
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif

#include "broker.h"
#include "consumer_fixture.h"
#include "fixture.h"
#include "proc.h"
#include "rabbit.h"
#include "store.h"

struct cons {
	struct proc *p;
};

struct cons *
cons_new(const char *name, const char *config_text)
{
	struct cons *c = calloc(1, sizeof(*c));

	ck_assert_ptr_nonnull(c);
	c->p = proc_new_ready("cqrs-consumer",
			      (struct proc_ready){ PROC_READY_LOG, "live: consuming" });
	proc_add_arg(c->p, "-n");
	proc_add_arg(c->p, name);
	/* the whole file is the test's (cqrsctl may read it before a start) */
	proc_set(c->p, "log", "level", NULL);
	proc_config_text(c->p, config_text);
	proc_write_config(c->p);
	return c;
}

void
cons_free(struct cons *c)
{
	if (c == NULL)
		return;
	proc_free(c->p);
	free(c);
}

struct proc *
cons_proc(struct cons *c)
{
	return c->p;
}

void
cons_add_arg(struct cons *c, const char *arg)
{
	proc_add_arg(c->p, arg);
}

void
cons_start(struct cons *c)
{
	proc_start(c->p);
}

void
cons_spawn(struct cons *c)
{
	proc_spawn(c->p);
}

int
cons_wait_exit(struct cons *c, int timeout_ms)
{
	return proc_wait_exit(c->p, timeout_ms);
}

bool
cons_running(struct cons *c)
{
	return proc_running(c->p);
}

int
cons_stop(struct cons *c)
{
	/* one that has exited already gives its status */
	if (!proc_running(c->p))
		return proc_wait_exit(c->p, 0);
	return proc_stop(c->p);
}

void
cons_kill(struct cons *c)
{
	proc_kill(c->p);
}

void
cons_signal(struct cons *c, int sig)
{
	if (proc_running(c->p))
		proc_signal(c->p, sig);
}

char *
cons_log(const struct cons *c)
{
	return proc_log(c->p);
}

char *
cons_log_tail(const struct cons *c, int lines)
{
	return proc_log_tail(c->p, lines);
}

int
cons_log_count(const struct cons *c, const char *needle)
{
	return proc_log_count(c->p, needle);
}

bool
cons_wait_log(struct cons *c, const char *needle, int times, int timeout_ms)
{
	return proc_wait_log(c->p, needle, times, timeout_ms);
}

char *
cons_http_get(const struct cons *c, const char *path)
{
	char *log = cons_log(c), *p, req[300], buf[4096], *out = NULL;
	size_t len = 0;
	struct sockaddr_in sa;
	int port = 0, fd;
	ssize_t n;

	p = strstr(log, "/metrics on http://127.0.0.1:");
	ck_assert_msg(p != NULL, "no HTTP endpoint in the consumer's log");
	port = atoi(p + strlen("/metrics on http://127.0.0.1:"));
	free(log);
	ck_assert_int_gt(port, 0);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(fd, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
	ck_assert_int_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		out = realloc(out, len + (size_t)n + 1);
		ck_assert_ptr_nonnull(out);
		memcpy(out + len, buf, (size_t)n);
		len += (size_t)n;
		out[len] = '\0';
	}
	close(fd);
	return out != NULL ? out : strdup("");
}

int
cons_ctl(const struct cons *c, const char *args, char **out)
{
	char *cmd;
	int rc;

	ck_assert_int_ge(asprintf(&cmd, "%s -c %s %s 2>&1", fixture_bin("cqrsctl"), proc_config_path(c->p),
				  args),
			 0);
	rc = fixture_run(cmd, out);
	free(cmd);
	return rc;
}

/* ---- queues ------------------------------------------------------------------------ */

/*
 * Queues made by a test are deleted when the test's process is gone, however
 * it ends: a failed check leaves with _exit(), past any cleanup, and its
 * queues' bindings would go on collecting the next tests' events. A reaper
 * process, out of the test's process group (Check kills that group after
 * each test), gets the names through a pipe and, at end of file (the test
 * process and everything it started are gone), deletes them.
 */
static int reaper_fd = -1;
static pid_t reaper_owner;

static void
reaper(int fd)
{
	char buf[8192], *names[64];
	size_t len = 0, n = 0;
	ssize_t got;

	setsid();
	while ((got = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
		len += (size_t)got;
	buf[len] = '\0';
	/* let Check's kill of the test's group reach the consumers first: one
	 * still connected would declare its queue again */
	sleep(1);
	for (char *p = strtok(buf, "\n"); p != NULL && n < 64; p = strtok(NULL, "\n"))
		names[n++] = p;
	for (size_t i = 0; i < n; i++)
		cons_delete_queues(names[i]);
	_exit(0);
}

static void
reap_later(const char *queue)
{
	if (reaper_owner != getpid()) {
		int p[2];
		pid_t pid;

		reaper_fd = -1;
		if (pipe2(p, O_CLOEXEC) < 0)
			return;
		pid = fork();
		if (pid < 0) {
			close(p[0]);
			close(p[1]);
			return;
		}
		if (pid == 0) {
			/* hold nothing of the test's: sockets, pipes of other helpers */
			for (int fd = 3; fd < 1024; fd++)
				if (fd != p[0])
					close(fd);
			reaper(p[0]);
		}
		close(p[0]);
		reaper_fd = p[1];
		reaper_owner = getpid();
	}
	if (reaper_fd >= 0)
		(void)!write(reaper_fd, queue, strlen(queue)), (void)!write(reaper_fd, "\n", 1);
}

const char *
cons_unique_queue(const char *what)
{
	static char buf[200];
	static int counter;

	snprintf(buf, sizeof(buf), "cqrs.t.%d.%d.%s", (int)getpid(), ++counter, what);
	reap_later(buf);
	return buf;
}

void
cons_publish(const char *queue, const char *body, const char *message_id, const char *type,
	     const char *stream, int64_t version, int64_t position)
{
	/* one connection for the test's publishes (each test is its own
	 * process under CK_FORK) */
	static struct broker *b;
	static pid_t b_owner;
	struct cqrs_err err = { 0 };
	struct broker_message m = {
		.exchange = "",
		.routing_key = queue,
		.body = body,
		.body_len = strlen(body),
		.message_id = message_id,
		.type = type,
		.stream = stream,
		.version = version,
		.position = position,
	};

	if (b_owner != getpid())
		b = NULL;	/* the parent's, inherited by fork */
	if (b != NULL && !cqrs_broker_ok(b)) {
		cqrs_broker_free(b);
		b = NULL;
	}
	if (b == NULL) {
		if (cqrs_broker_connect(fixture_broker_url(), NULL, &b, &err) < 0)
			ck_abort_msg("publish: %s", err.msg);
		b_owner = getpid();
	}
	if (cqrs_broker_publish(b, &m, NULL, &err) < 0 || cqrs_broker_wait_confirms(b, 0, 10000, &err) < 0)
		ck_abort_msg("publish to %s: %s", queue, err.msg);
}

/* A connection and channel 1 to the test node; NULL when it cannot be had
 * (the callers run in cleanups too, where failing the test again would not
 * help). */
static amqp_connection_state_t
open_amqp(void)
{
	struct broker_url u;
	struct cqrs_err err = { 0 };
	amqp_connection_state_t conn;
	amqp_socket_t *sock;
	amqp_rpc_reply_t r;

	if (cqrs_broker_url_parse(fixture_broker_url(), &u, &err) < 0)
		return NULL;
	conn = amqp_new_connection();
	sock = conn != NULL ? amqp_tcp_socket_new(conn) : NULL;
	if (sock == NULL || amqp_socket_open(sock, u.host, u.port) != AMQP_STATUS_OK)
		goto bad;
	r = amqp_login(conn, u.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, u.user, u.password);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
		goto bad;
	amqp_channel_open(conn, 1);
	if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
		goto bad;
	cqrs_broker_url_clear(&u);
	return conn;
bad:
	if (conn != NULL)
		amqp_destroy_connection(conn);
	cqrs_broker_url_clear(&u);
	return NULL;
}

static void
close_amqp(amqp_connection_state_t conn, bool channel_ok)
{
	if (channel_ok)
		(void)amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
	(void)amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
}

long
cons_queue_depth(const char *queue)
{
	amqp_connection_state_t conn = open_amqp();
	amqp_queue_declare_ok_t *ok;
	long n;

	ck_assert_msg(conn != NULL, "cannot connect to RabbitMQ at %s", fixture_broker_url());
	ok = amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
	n = ok != NULL ? (long)ok->message_count : -1;
	close_amqp(conn, ok != NULL);
	return n;
}

void
cons_unbind(const char *queue, const char *exchange, const char *key)
{
	amqp_connection_state_t conn = open_amqp();
	amqp_rpc_reply_t r;

	ck_assert_msg(conn != NULL, "cannot connect to RabbitMQ at %s", fixture_broker_url());
	amqp_queue_unbind(conn, 1, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
			  amqp_cstring_bytes(key), amqp_empty_table);
	r = amqp_get_rpc_reply(conn);
	close_amqp(conn, r.reply_type == AMQP_RESPONSE_NORMAL);
	ck_assert_msg(r.reply_type == AMQP_RESPONSE_NORMAL, "queue.unbind %s from %s failed",
		      queue, exchange);
}

long
cons_wait_queue_depth(const char *queue, long want, int timeout_ms)
{
	long long deadline = proc_now_ms() + timeout_ms;
	long n;

	while ((n = cons_queue_depth(queue)) != want && proc_now_ms() < deadline)
		usleep(50 * 1000);
	return n;
}

void
cons_delete_queue(const char *queue)
{
	amqp_connection_state_t conn = open_amqp();
	amqp_rpc_reply_t r;

	ck_assert_ptr_nonnull(conn);
	amqp_queue_delete(conn, 1, amqp_cstring_bytes(queue), 0, 0);
	r = amqp_get_rpc_reply(conn);
	close_amqp(conn, r.reply_type == AMQP_RESPONSE_NORMAL);
	ck_assert_msg(r.reply_type == AMQP_RESPONSE_NORMAL, "deleting queue %s failed", queue);
}

void
cons_delete_queues(const char *queue)
{
	char dead[256];
	const char *names[2] = { queue, dead };

	snprintf(dead, sizeof(dead), "%s.dead", queue);
	for (int i = 0; i < 2; i++) {
		amqp_connection_state_t conn = open_amqp();
		bool ok;

		if (conn == NULL)
			return;
		amqp_queue_delete(conn, 1, amqp_cstring_bytes(names[i]), 0, 0);
		ok = amqp_get_rpc_reply(conn).reply_type == AMQP_RESPONSE_NORMAL;
		close_amqp(conn, ok);
	}
}

/* ---- configuration and the store ----------------------------------------------------- */

char *
cons_config(const char *conninfo, const char *cmd_socket, const char *more)
{
	char *text;

	ck_assert_int_ge(asprintf(&text,
				  "[store]\nconninfo = %s\n"
				  "[broker]\nurl = %s\n"
				  "[cmd]\nsocket = %s\n"
				  "[log]\nlevel = info\n"
				  "%s",
				  conninfo, fixture_broker_url(),
				  cmd_socket != NULL ? cmd_socket : "/nonexistent/cmd.sock",
				  more != NULL ? more : ""),
			 0);
	return text;
}

long
cons_append(const char *conninfo, const char *stream, const char *type, const char *data)
{
	struct store *st = NULL;
	struct store_event_in in = { .type = type, .data = data };
	struct store_append_result r = { 0 };
	struct cqrs_err err = { 0 };
	long v;

	if (cqrs_store_connect(conninfo, &st, &err) < 0)
		ck_abort_msg("store: %s", err.msg);
	if (cqrs_store_append(st, stream, STORE_ANY, &in, 1, NULL, &r, &err) < 0) {
		cqrs_store_free(st);
		ck_abort_msg("append to %s: %s", stream, err.msg);
	}
	v = (long)r.version;
	cqrs_store_append_result_clear(&r);
	cqrs_store_free(st);
	return v;
}

long long
cons_query_int(const char *conninfo, const char *sql)
{
	PGconn *pg = PQconnectdb(conninfo);
	PGresult *res;
	long long n = -1;

	if (PQstatus(pg) == CONNECTION_OK) {
		res = PQexec(pg, sql);
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0 &&
		    !PQgetisnull(res, 0, 0))
			n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		PQclear(res);
	}
	PQfinish(pg);
	return n;
}

long long
cons_wait_query(const char *conninfo, const char *sql, long long want, int timeout_ms)
{
	long long deadline = proc_now_ms() + timeout_ms;
	long long n;

	for (;;) {
		n = cons_query_int(conninfo, sql);
		if (n >= want || proc_now_ms() >= deadline)
			return n;
		usleep(50 * 1000);
	}
}

/* ---- tests/plugins/poison ------------------------------------------------------------ */

long long
cons_poison_count(const char *conninfo)
{
	long long n = cons_query_int(conninfo, "SELECT count(*) FROM poison_applied");

	return n < 0 ? 0 : n;
}

void
cons_poison_wait(struct cons *c, const char *conninfo, long long want)
{
	long long n = cons_wait_query(conninfo, "SELECT count(*) FROM poison_applied", want, 30000);

	if (n != want) {
		char *tail = c != NULL ? cons_log_tail(c, 30) : strdup("");
		ck_abort_msg("%lld events applied, want %lld; consumer log:\n%s", n, want, tail);
	}
}

void
cons_poison_check(const char *conninfo, const int *upto, int nstreams)
{
	PGconn *pg = fixture_connect(conninfo);
	PGresult *res;
	long long want = 0;
	int last[64] = { 0 };

	ck_assert_int_le(nstreams, 64);
	res = PQexec(pg, "SELECT stream, version FROM poison_applied ORDER BY seq");
	ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
	for (int i = 0; i < PQntuples(res); i++) {
		int k = atoi(PQgetvalue(res, i, 0) + strlen("poison-"));
		int v = atoi(PQgetvalue(res, i, 1));

		ck_assert_msg(k >= 1 && k <= nstreams, "unexpected stream %s", PQgetvalue(res, i, 0));
		ck_assert_msg(v == last[k - 1] + 1,
			      "poison-%d: version %d applied after version %d (row %d)", k, v,
			      last[k - 1], i);
		last[k - 1] = v;
	}
	PQclear(res);
	for (int k = 1; k <= nstreams; k++) {
		char sql[200];
		long long max;

		snprintf(sql, sizeof(sql),
			 "SELECT coalesce(max(version), 0) FROM cqrs.events WHERE stream = 'poison-%d'",
			 k);
		max = fixture_query_int(pg, sql);
		if (upto != NULL && upto[k - 1] < max)
			max = upto[k - 1];
		ck_assert_msg(last[k - 1] == max, "poison-%d: applied up to %d, want %lld", k,
			      last[k - 1], max);
		want += max;
	}
	ck_assert_int_eq(cons_poison_count(conninfo), want);
	PQfinish(pg);
}

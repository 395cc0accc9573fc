/* rabbit.c - private RabbitMQ for tests, and a collecting consumer. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<rabbitmq-c/amqp.h>)
#define RABBIT_NEW_HEADERS 1
#endif
#endif
#ifdef RABBIT_NEW_HEADERS
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif

#include "envelope.h"
#include "fixture.h"
#include "hmap.h"
#include "proc.h"
#include "rabbit.h"

#ifndef CQRS_SRCDIR
#define CQRS_SRCDIR "."
#endif

static char rabbit_dir[256];
static char broker_url[256];
static int amqp_port;
static pid_t owner_pid;
static char own_root[64];	/* the temporary folder of a node started here */

/* ---- the node ------------------------------------------------------------- */

static void
stop_own_node(void)
{
	char cmd[700];

	if (getpid() != owner_pid)
		return;
	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/rabbitmq.sh stop %s >/dev/null 2>&1; rm -rf %s",
		 CQRS_SRCDIR, rabbit_dir, own_root);
	if (system(cmd) != 0)
		fprintf(stderr, "rabbit: could not stop RabbitMQ in %s\n", rabbit_dir);
}

static void
read_env_file(void)
{
	char path[300], line[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/env", rabbit_dir);
	f = fopen(path, "r");
	if (f == NULL)
		ck_abort_msg("rabbit: cannot read %s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f) != NULL) {
		line[strcspn(line, "\n")] = '\0';
		if (strncmp(line, "CQRS_BROKER_URL=", 16) == 0)
			snprintf(broker_url, sizeof(broker_url), "%.250s", line + 16);
		else if (strncmp(line, "CQRS_TEST_AMQP_PORT=", 20) == 0)
			amqp_port = atoi(line + 20);
	}
	fclose(f);
	if (broker_url[0] == '\0' || amqp_port <= 0)
		ck_abort_msg("rabbit: no CQRS_BROKER_URL / CQRS_TEST_AMQP_PORT in %s", path);
}

static void
ensure_node(void)
{
	const char *dir;

	if (broker_url[0] != '\0')
		return;
	dir = getenv("CQRS_TEST_RABBITDIR");
	if (dir != NULL && dir[0] != '\0') {
		snprintf(rabbit_dir, sizeof(rabbit_dir), "%s", dir);
	} else {
		char tmpl[] = "/tmp/cqrs-mq.XXXXXX";
		char cmd[700];
		if (mkdtemp(tmpl) == NULL)
			ck_abort_msg("rabbit: mkdtemp: %s", strerror(errno));
		chmod(tmpl, 0755);
		snprintf(rabbit_dir, sizeof(rabbit_dir), "%s/rabbit", tmpl);
		snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/rabbitmq.sh start %s >%s/start.log 2>&1",
			 CQRS_SRCDIR, rabbit_dir, tmpl);
		if (system(cmd) != 0)
			ck_abort_msg("rabbit: could not start RabbitMQ (see %s/start.log)", tmpl);
		owner_pid = getpid();
		snprintf(own_root, sizeof(own_root), "%s", tmpl);
		atexit(stop_own_node);
		setenv("CQRS_TEST_RABBITDIR", rabbit_dir, 1);
	}
	read_env_file();
}

const char *
fixture_broker_url(void)
{
	ensure_node();
	return broker_url;
}

int
fixture_rabbit_port(void)
{
	ensure_node();
	return amqp_port;
}

const char *
fixture_rabbit_dir(void)
{
	ensure_node();
	return rabbit_dir;
}

/* Whether something accepts TCP connections on the node's AMQP port. */
static bool
port_open(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	bool open;

	ck_assert_int_ge(fd, 0);
	sa.sin_port = htons((uint16_t)amqp_port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	open = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return open;
}

void
fixture_rabbit_stop(void)
{
	char cmd[700];

	ensure_node();
	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/rabbitmq.sh stop %s >%s/stop.log 2>&1",
		 CQRS_SRCDIR, rabbit_dir, rabbit_dir);
	ck_assert_int_eq(system(cmd), 0);
	ck_assert_msg(!port_open(), "rabbit: the node in %s still listens on port %d after "
		      "rabbitmq.sh stop (see %s/stop.log)", rabbit_dir, amqp_port, rabbit_dir);
}

void
fixture_rabbit_start(void)
{
	char cmd[700];
	int rc;

	ensure_node();
	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/rabbitmq.sh start %s >%s/restart.log 2>&1",
		 CQRS_SRCDIR, rabbit_dir, rabbit_dir);
	rc = system(cmd);
	ck_assert_msg(rc == 0, "rabbit: could not start RabbitMQ again (see %s/restart.log)",
		      rabbit_dir);
}

/* ---- a private node, to freeze ---------------------------------------------- */

struct rabbit_node {
	char root[64];			/* the temporary folder */
	char dir[128];			/* root/rabbit: rabbitmq.sh's DIR */
	char url[256];
	int guard_fd;			/* write end of the guardian's pipe */
	pid_t guardian;
};

static pid_t
pid_file(const char *dir, const char *name)
{
	char path[300], buf[32] = "";
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((f = fopen(path, "r")) == NULL)
		return 0;
	if (fgets(buf, sizeof(buf), f) == NULL)
		buf[0] = '\0';
	fclose(f);
	return (pid_t)atol(buf);
}

/* The parent of pid (0 when it is gone). */
static pid_t
parent_of(pid_t pid)
{
	char path[64], buf[512], *p;
	FILE *f;
	long ppid = 0;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((f = fopen(path, "r")) == NULL)
		return 0;
	if (fgets(buf, sizeof(buf), f) != NULL && (p = strrchr(buf, ')')) != NULL)
		(void)sscanf(p + 1, " %*c %ld", &ppid);
	fclose(f);
	return (pid_t)ppid;
}

/*
 * Sends sig to every process of the node in dir: the Erlang VM, all its
 * descendants (erl_child_setup, inet_gethost ...) and the node's private
 * epmd. By pid, read from the node's pid files and /proc: nothing else is
 * touched.
 */
static void
signal_node(const char *dir, int sig)
{
	pid_t pids[256];
	size_t n = 0;
	pid_t vm = pid_file(dir, "rabbitmq.pid"), epmd = pid_file(dir, "epmd.pid");

	if (vm > 0)
		pids[n++] = vm;
	/* descendants, to a fixed point (a child's pid may be lower) */
	for (bool grew = true; grew && n > 0;) {
		DIR *d = opendir("/proc");
		struct dirent *de;

		grew = false;
		if (d == NULL)
			break;
		while ((de = readdir(d)) != NULL && n < sizeof(pids) / sizeof(pids[0])) {
			pid_t pid = (pid_t)atol(de->d_name), pp;
			bool known = false;

			if (pid <= 0 || (pp = parent_of(pid)) <= 0)
				continue;
			for (size_t i = 0; i < n && !known; i++)
				known = pids[i] == pid;
			if (known)
				continue;
			for (size_t i = 0; i < n; i++)
				if (pids[i] == pp) {
					pids[n++] = pid;
					grew = true;
					break;
				}
		}
		closedir(d);
	}
	if (epmd > 0 && n < sizeof(pids) / sizeof(pids[0]))
		pids[n++] = epmd;
	/* children first when stopping, the VM first when continuing */
	for (size_t i = 0; i < n; i++)
		(void)kill(sig == SIGSTOP ? pids[n - 1 - i] : pids[i], sig);
}

/* The guardian: when the test's process is gone (end of file on fd), the
 * node is thawed, stopped and removed, however the test ended. */
static void
guardian(int fd, const char *dir, const char *root)
{
	char buf[64], cmd[700];

	setsid();	/* out of the test's process group, which Check kills */
	for (int i = 3; i < 1024; i++)
		if (i != fd)
			close(i);
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	signal_node(dir, SIGCONT);
	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/rabbitmq.sh stop %s >/dev/null 2>&1; rm -rf %s",
		 CQRS_SRCDIR, dir, root);
	_exit(system(cmd) == 0 ? 0 : 1);
}

struct rabbit_node *
rabbit_node_start(void)
{
	struct rabbit_node *n = calloc(1, sizeof(*n));
	char tmpl[] = "/tmp/cqrs-mqp.XXXXXX", cmd[700], path[300], line[512];
	int p[2];
	FILE *f;

	ck_assert_ptr_nonnull(n);
	ck_assert_msg(mkdtemp(tmpl) != NULL, "rabbit: mkdtemp: %s", strerror(errno));
	chmod(tmpl, 0755);
	snprintf(n->root, sizeof(n->root), "%s", tmpl);
	snprintf(n->dir, sizeof(n->dir), "%s/rabbit", tmpl);
	/* the guardian first, so that a node half started is stopped too */
	ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
	n->guardian = fork();
	ck_assert_int_ge(n->guardian, 0);
	if (n->guardian == 0)
		guardian(p[0], n->dir, n->root);
	close(p[0]);
	n->guard_fd = p[1];
	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/rabbitmq.sh start %s >%s/start.log 2>&1",
		 CQRS_SRCDIR, n->dir, n->root);
	ck_assert_msg(system(cmd) == 0, "rabbit: could not start a private node (see %s/start.log)",
		      n->root);
	snprintf(path, sizeof(path), "%s/env", n->dir);
	f = fopen(path, "r");
	ck_assert_msg(f != NULL, "rabbit: cannot read %s", path);
	while (fgets(line, sizeof(line), f) != NULL) {
		line[strcspn(line, "\n")] = '\0';
		if (strncmp(line, "CQRS_BROKER_URL=", 16) == 0)
			snprintf(n->url, sizeof(n->url), "%.250s", line + 16);
	}
	fclose(f);
	ck_assert_msg(n->url[0] != '\0', "rabbit: no CQRS_BROKER_URL in %s", path);
	return n;
}

const char *
rabbit_node_url(const struct rabbit_node *n)
{
	return n->url;
}

long
rabbit_node_queue_messages(const struct rabbit_node *n, const char *queue)
{
	char cmd[700], *out = NULL, *line;
	long messages = -1;

	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/rabbitmq.sh ctl %s list_queues -q name messages "
		 "2>/dev/null", CQRS_SRCDIR, n->dir);
	if (fixture_run(cmd, &out) != 0) {
		free(out);
		return -1;
	}
	for (line = strtok(out, "\n"); line != NULL; line = strtok(NULL, "\n")) {
		size_t len = strlen(queue);

		if (strncmp(line, queue, len) == 0 && (line[len] == '\t' || line[len] == ' '))
			messages = atol(line + len + 1);
	}
	free(out);
	return messages;
}

void
rabbit_node_freeze(struct rabbit_node *n)
{
	signal_node(n->dir, SIGSTOP);
}

void
rabbit_node_thaw(struct rabbit_node *n)
{
	signal_node(n->dir, SIGCONT);
}

void
rabbit_node_free(struct rabbit_node *n)
{
	int status;

	if (n == NULL)
		return;
	rabbit_node_thaw(n);
	close(n->guard_fd);
	(void)waitpid(n->guardian, &status, 0);
	free(n);
}

/* ---- the collector ----------------------------------------------------------- */

struct rabbit_collector {
	char queue[128];
	char exchange[128];
	amqp_connection_state_t conn;
	bool consuming;
	struct rabbit_msg *msgs;
	size_t n, cap;
	struct hmap *seen;		/* message id -> 1 + index of its first message */
	char cnt_prefix[256];		/* count_distinct()'s memory */
	size_t cnt_idx, cnt_n;
};

static const char *
reply_str(amqp_rpc_reply_t r)
{
	static char buf[256];

	switch (r.reply_type) {
	case AMQP_RESPONSE_NORMAL:
		return "ok";
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		return amqp_error_string2(r.library_error);
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD || r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			amqp_channel_close_t *m = r.reply.decoded;	/* same layout */
			snprintf(buf, sizeof(buf), "%u %.*s", m->reply_code, (int)m->reply_text.len,
				 (char *)m->reply_text.bytes);
			return buf;
		}
		return amqp_method_name(r.reply.id);
	default:
		return "no reply";
	}
}

/* A connection with channel 1 open, or NULL (with why in *why). */
static amqp_connection_state_t
open_conn(const char **why)
{
	amqp_connection_state_t conn = amqp_new_connection();
	amqp_socket_t *sock = amqp_tcp_socket_new(conn);
	struct timeval tv = { 5, 0 };
	amqp_rpc_reply_t r;
	int rc;

	rc = amqp_socket_open_noblock(sock, "127.0.0.1", fixture_rabbit_port(), &tv);
	if (rc != AMQP_STATUS_OK) {
		*why = amqp_error_string2(rc);
		amqp_destroy_connection(conn);
		return NULL;
	}
	r = amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "cqrs", "cqrs");
	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		amqp_channel_open(conn, 1);
		r = amqp_get_rpc_reply(conn);
	}
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		*why = reply_str(r);
		amqp_destroy_connection(conn);
		return NULL;
	}
	return conn;
}

static void
close_conn(amqp_connection_state_t conn, bool polite)
{
	if (conn == NULL)
		return;
	if (polite) {
		amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
		amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	}
	amqp_destroy_connection(conn);
}

struct rabbit_collector *
rabbit_collector_new(const char *exchange, const char *binding)
{
	static int counter;
	struct rabbit_collector *c = calloc(1, sizeof(*c));
	const char *why = NULL;
	amqp_table_entry_t args[1];
	amqp_table_t table;
	amqp_rpc_reply_t r;

	ck_assert_ptr_nonnull(c);
	c->seen = cqrs_hmap_new();
	ck_assert_ptr_nonnull(c->seen);
	snprintf(c->exchange, sizeof(c->exchange), "%s", exchange ? exchange : "cqrs.events");
	snprintf(c->queue, sizeof(c->queue), "cqrs-test.%d.%d.%ld", (int)getpid(), ++counter,
		 random() % 1000000);
	c->conn = open_conn(&why);
	if (c->conn == NULL)
		ck_abort_msg("rabbit: cannot connect to %s: %s", fixture_broker_url(), why);
	if (exchange == NULL) {
		amqp_exchange_declare(c->conn, 1, amqp_cstring_bytes(c->exchange),
				      amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
		r = amqp_get_rpc_reply(c->conn);
		ck_assert_msg(r.reply_type == AMQP_RESPONSE_NORMAL, "rabbit: declare %s: %s",
			      c->exchange, reply_str(r));
	}
	/* durable: survives a broker restart; expires if a dead test leaves it */
	args[0].key = amqp_cstring_bytes("x-expires");
	args[0].value.kind = AMQP_FIELD_KIND_I32;
	args[0].value.value.i32 = 180000;
	table.num_entries = 1;
	table.entries = args;
	amqp_queue_declare(c->conn, 1, amqp_cstring_bytes(c->queue), 0, 1, 0, 0, table);
	r = amqp_get_rpc_reply(c->conn);
	ck_assert_msg(r.reply_type == AMQP_RESPONSE_NORMAL, "rabbit: declare queue %s: %s",
		      c->queue, reply_str(r));
	amqp_queue_bind(c->conn, 1, amqp_cstring_bytes(c->queue), amqp_cstring_bytes(c->exchange),
			amqp_cstring_bytes(binding), amqp_empty_table);
	r = amqp_get_rpc_reply(c->conn);
	ck_assert_msg(r.reply_type == AMQP_RESPONSE_NORMAL, "rabbit: bind %s: %s", c->queue,
		      reply_str(r));
	return c;
}

const char *
rabbit_collector_queue(const struct rabbit_collector *c)
{
	return c->queue;
}

static void
msg_clear(struct rabbit_msg *m)
{
	free(m->exchange);
	free(m->routing_key);
	free(m->message_id);
	free(m->type);
	free(m->content_type);
	free(m->stream);
	free(m->body);
}

void
rabbit_collector_free(struct rabbit_collector *c)
{
	if (c == NULL)
		return;
	if (c->conn == NULL) {
		const char *why;
		c->conn = open_conn(&why);
	}
	if (c->conn != NULL) {
		amqp_queue_delete(c->conn, 1, amqp_cstring_bytes(c->queue), 0, 0);
		(void)amqp_get_rpc_reply(c->conn);
		close_conn(c->conn, true);
	}
	for (size_t i = 0; i < c->n; i++)
		msg_clear(&c->msgs[i]);
	free(c->msgs);
	cqrs_hmap_free(c->seen);
	free(c);
}

const struct rabbit_msg *
rabbit_collector_msgs(const struct rabbit_collector *c, size_t *n)
{
	*n = c->n;
	return c->msgs;
}

static char *
dup_bytes(amqp_bytes_t b)
{
	char *s = malloc(b.len + 1);

	ck_assert_ptr_nonnull(s);
	if (b.len > 0)
		memcpy(s, b.bytes, b.len);
	s[b.len] = '\0';
	return s;
}

static int64_t
field_int(const amqp_field_value_t *v)
{
	switch (v->kind) {
	case AMQP_FIELD_KIND_I8: return v->value.i8;
	case AMQP_FIELD_KIND_U8: return v->value.u8;
	case AMQP_FIELD_KIND_I16: return v->value.i16;
	case AMQP_FIELD_KIND_U16: return v->value.u16;
	case AMQP_FIELD_KIND_I32: return v->value.i32;
	case AMQP_FIELD_KIND_U32: return v->value.u32;
	case AMQP_FIELD_KIND_I64: return v->value.i64;
	case AMQP_FIELD_KIND_U64: return (int64_t)v->value.u64;
	default: return INT64_MIN;
	}
}

static void
record(struct rabbit_collector *c, amqp_envelope_t *env)
{
	amqp_basic_properties_t *p = &env->message.properties;
	struct rabbit_msg *m;
	amqp_bytes_t none = { 0, NULL };

	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 1024;
		c->msgs = realloc(c->msgs, c->cap * sizeof(*c->msgs));
		ck_assert_ptr_nonnull(c->msgs);
	}
	m = &c->msgs[c->n++];
	memset(m, 0, sizeof(*m));
	m->exchange = dup_bytes(env->exchange);
	m->routing_key = dup_bytes(env->routing_key);
	m->message_id = dup_bytes(p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG ? p->message_id : none);
	m->type = dup_bytes(p->_flags & AMQP_BASIC_TYPE_FLAG ? p->type : none);
	m->content_type = dup_bytes(p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG ? p->content_type : none);
	m->delivery_mode = p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG ? p->delivery_mode : 0;
	m->body = dup_bytes(env->message.body);
	m->body_len = env->message.body.len;
	m->redelivered = env->redelivered != 0;
	m->received_ms = proc_now_ms();
	m->version = m->position = INT64_MIN;
	if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
		m->nheaders = (size_t)p->headers.num_entries;
		for (int i = 0; i < p->headers.num_entries; i++) {
			amqp_table_entry_t *e = &p->headers.entries[i];
			if (e->key.len == 6 && memcmp(e->key.bytes, "stream", 6) == 0) {
				m->stream_kind = (char)e->value.kind;
				if (e->value.kind == AMQP_FIELD_KIND_UTF8 ||
				    e->value.kind == AMQP_FIELD_KIND_BYTES)
					m->stream = dup_bytes(e->value.value.bytes);
			} else if (e->key.len == 7 && memcmp(e->key.bytes, "version", 7) == 0) {
				m->version_kind = (char)e->value.kind;
				m->version = field_int(&e->value);
			} else if (e->key.len == 8 && memcmp(e->key.bytes, "position", 8) == 0) {
				m->position_kind = (char)e->value.kind;
				m->position = field_int(&e->value);
			}
		}
	}
	if (m->stream == NULL)
		m->stream = dup_bytes(none);
	/* index, not pointer: msgs moves when it grows */
	if (cqrs_hmap_get(c->seen, m->message_id) == NULL)
		ck_assert_int_eq(cqrs_hmap_put(c->seen, m->message_id, (void *)c->n), 0);
}

/* Distinct ids of messages whose stream starts with prefix: counted
 * incrementally, from where the last count with the same prefix stopped. */
static size_t
count_distinct(struct rabbit_collector *c, const char *prefix)
{
	if (prefix == NULL)
		return cqrs_hmap_count(c->seen);
	if (strcmp(c->cnt_prefix, prefix) != 0) {
		snprintf(c->cnt_prefix, sizeof(c->cnt_prefix), "%s", prefix);
		c->cnt_idx = c->cnt_n = 0;
	}
	for (; c->cnt_idx < c->n; c->cnt_idx++) {
		struct rabbit_msg *m = &c->msgs[c->cnt_idx];
		if (strncmp(m->stream, prefix, strlen(prefix)) == 0 &&
		    cqrs_hmap_get(c->seen, m->message_id) == (void *)(c->cnt_idx + 1))
			c->cnt_n++;
	}
	return c->cnt_n;
}

static void
drop(struct rabbit_collector *c)
{
	close_conn(c->conn, false);
	c->conn = NULL;
	c->consuming = false;
}

/* Connects and subscribes if needed; false when the broker is not there. */
static bool
subscribe(struct rabbit_collector *c)
{
	const char *why;
	amqp_rpc_reply_t r;

	if (c->consuming)
		return true;
	if (c->conn == NULL && (c->conn = open_conn(&why)) == NULL)
		return false;
	amqp_basic_qos(c->conn, 1, 0, 1000, 0);
	r = amqp_get_rpc_reply(c->conn);
	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		amqp_basic_consume(c->conn, 1, amqp_cstring_bytes(c->queue), amqp_empty_bytes, 0, 0,
				   0, amqp_empty_table);
		r = amqp_get_rpc_reply(c->conn);
	}
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		drop(c);
		return false;
	}
	c->consuming = true;
	return true;
}

/* Takes one message (waiting up to wait_ms): 1, 0 on timeout, -1 when the
 * connection failed (dropped; the caller retries). */
static int
take_one(struct rabbit_collector *c, int wait_ms)
{
	struct timeval tv = { wait_ms / 1000, (wait_ms % 1000) * 1000 };
	amqp_envelope_t env;
	amqp_rpc_reply_t r;

	amqp_maybe_release_buffers(c->conn);
	r = amqp_consume_message(c->conn, &env, &tv, 0);
	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		record(c, &env);
		if (amqp_basic_ack(c->conn, 1, env.delivery_tag, 0) != AMQP_STATUS_OK) {
			amqp_destroy_envelope(&env);
			drop(c);
			return -1;
		}
		amqp_destroy_envelope(&env);
		return 1;
	}
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
		return 0;
	/* anything else here (a close, a dead socket) ends this connection */
	drop(c);
	return -1;
}

size_t
rabbit_collector_wait(struct rabbit_collector *c, const char *stream_prefix, size_t want,
		      int timeout_ms)
{
	long long deadline = proc_now_ms() + timeout_ms;
	size_t have = count_distinct(c, stream_prefix);

	while (have < want && proc_now_ms() < deadline) {
		if (!subscribe(c)) {
			usleep(200000);
			continue;
		}
		if (take_one(c, 200) > 0)
			have = count_distinct(c, stream_prefix);
	}
	return have;
}

void
rabbit_collector_drain(struct rabbit_collector *c, int quiet_ms)
{
	long long quiet_until = proc_now_ms() + quiet_ms;

	while (proc_now_ms() < quiet_until) {
		int rc;
		if (!subscribe(c)) {
			usleep(200000);
			continue;
		}
		rc = take_one(c, 100);
		if (rc > 0)
			quiet_until = proc_now_ms() + quiet_ms;
	}
}

/* ---- comparing with the store ---------------------------------------------------- */

struct seen_event {
	struct cqrs_event *ev;
	struct store_checkpoint at;
	int copies;
};

static bool
after(const struct store_checkpoint *a, const struct store_checkpoint *b)
{
	return a->xid > b->xid || (a->xid == b->xid && a->position > b->position);
}

/* For failure messages: the stream's messages up to index `upto`. */
static const char *
stream_history(struct rabbit_collector *c, struct hmap *by_id, const char *stream, size_t upto)
{
	static char buf[4096];
	size_t len = 0;

	buf[0] = '\0';
	for (size_t i = 0; i <= upto && i < c->n && len < sizeof(buf) - 100; i++) {
		const struct rabbit_msg *m = &c->msgs[i];
		struct seen_event *s;
		if (strcmp(m->stream, stream) != 0)
			continue;
		s = cqrs_hmap_get(by_id, m->message_id);
		len += (size_t)snprintf(buf + len, sizeof(buf) - len, " %zu:%lld%s@%" PRIu64 ":%" PRId64,
					i, (long long)m->version, m->redelivered ? "r" : "",
					s ? s->at.xid : 0, s ? s->at.position : 0);
	}
	return buf;
}

void
rabbit_check_store(struct rabbit_collector *c, const char *conninfo, struct rabbit_check *chk)
{
	static const char sql[] =
		"SELECT e.id, e.stream, e.version, e.position, e.type, e.data::text, e.metadata::text, "
		"to_char(e.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
		"e.xid::text FROM cqrs.events e WHERE starts_with(e.stream, $1) "
		"ORDER BY e.xid, e.position";	/* e.xid: "xid" alone would sort the text */
	const char *params[1] = { chk->prefix };
	struct store_events evs = { 0 };
	struct cqrs_err err = { 0 };
	struct hmap *by_id = cqrs_hmap_new(), *last_version = cqrs_hmap_new();
	struct seen_event *seen;
	size_t plen = strlen(chk->prefix);
	PGconn *pg = PQconnectdb(conninfo);
	PGresult *res;

	ck_assert_ptr_nonnull(by_id);
	ck_assert_ptr_nonnull(last_version);
	if (PQstatus(pg) != CONNECTION_OK)
		ck_abort_msg("check: connect: %s", PQerrorMessage(pg));
	res = PQexecParams(pg, sql, 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		ck_abort_msg("check: read events: %s", PQerrorMessage(pg));
	if (cqrs_store_events_parse(res, &evs, &err) < 0)
		ck_abort_msg("check: parse events: %s", err.msg);
	PQclear(res);
	PQfinish(pg);

	seen = calloc(evs.n ? evs.n : 1, sizeof(*seen));
	ck_assert_ptr_nonnull(seen);
	for (size_t i = 0; i < evs.n; i++) {
		seen[i].ev = evs.ev[i];
		seen[i].at = evs.at[i];
		ck_assert_int_eq(cqrs_hmap_put(by_id, evs.ev[i]->id, &seen[i]), 0);
	}
	chk->events = evs.n;
	chk->received = chk->duplicates = 0;
	if (getenv("RABBIT_DUMP") != NULL) {
		FILE *f = fopen(getenv("RABBIT_DUMP"), "w");
		for (size_t i = 0; f != NULL && i < c->n; i++) {
			struct seen_event *se = cqrs_hmap_get(by_id, c->msgs[i].message_id);
			fprintf(f, "%zu %s %lld %lld %d %lld %" PRIu64 "\n", i, c->msgs[i].stream,
				(long long)c->msgs[i].version, (long long)c->msgs[i].position,
				c->msgs[i].redelivered, c->msgs[i].received_ms, se ? se->at.xid : 0);
		}
		if (f != NULL)
			fclose(f);
	}

	for (size_t i = 0; i < c->n; i++) {
		const struct rabbit_msg *m = &c->msgs[i];
		struct seen_event *s;
		uintptr_t last;

		if (strncmp(m->stream, chk->prefix, plen) != 0)
			continue;
		chk->received++;
		s = cqrs_hmap_get(by_id, m->message_id);
		ck_assert_msg(s != NULL, "message %s (stream %s version %lld) is not a committed event "
			      "of the store", m->message_id, m->stream, (long long)m->version);
		last = (uintptr_t)cqrs_hmap_get(last_version, m->stream);
		if (s->copies > 0) {
			/* a repeat */
			if (m->redelivered)
				continue;	/* the broker's, to the collector */
			chk->duplicates++;
			ck_assert_msg(chk->allow_dups, "event %s (stream %s version %lld) published "
				      "twice", m->message_id, m->stream, (long long)m->version);
			ck_assert_msg(after(&s->at, &chk->dup_after),
				      "event %s (%" PRIu64 ":%" PRId64 ") published again although it "
				      "is not after the checkpoint %" PRIu64 ":%" PRId64, m->message_id,
				      s->at.xid, s->at.position, chk->dup_after.xid,
				      chk->dup_after.position);
			ck_assert_msg((uintptr_t)m->version <= last,
				      "stream %s: repeat of version %lld after version %lu", m->stream,
				      (long long)m->version, (unsigned long)last);
			s->copies++;
			continue;
		}
		s->copies++;
		/* per-stream order: the first copy of each event is the next version */
		if ((uintptr_t)m->version != last + 1)
			ck_abort_msg("stream %s: version %lld arrived after version %lu (message %zu); "
				     "this stream's messages so far (index:version[r] @xid:position):%s",
				     m->stream, (long long)m->version, (unsigned long)last, i,
				     stream_history(c, by_id, m->stream, i));
		ck_assert_int_eq(cqrs_hmap_put(last_version, m->stream, (void *)(uintptr_t)m->version), 0);

		/* exactly DESIGN.md's message */
		{
			char key[300], *body = cqrs_envelope_encode(s->ev);
			snprintf(key, sizeof(key), "%.*s.%s", (int)strcspn(s->ev->stream, "-"),
				 s->ev->stream, s->ev->type);
			ck_assert_str_eq(m->exchange, "cqrs.events");
			ck_assert_str_eq(m->routing_key, key);
			ck_assert_str_eq(m->type, s->ev->type);
			ck_assert_str_eq(m->content_type, "application/json");
			ck_assert_int_eq(m->delivery_mode, 2);
			ck_assert_str_eq(m->stream, s->ev->stream);
			ck_assert_int_eq(m->stream_kind, 'S');
			ck_assert_int_eq(m->version_kind, 'l');
			ck_assert_int_eq(m->position_kind, 'l');
			ck_assert_int_eq(m->nheaders, 3);
			ck_assert_int_eq(m->version, s->ev->version);
			ck_assert_int_eq(m->position, s->ev->position);
			ck_assert_ptr_nonnull(body);
			ck_assert_str_eq(m->body, body);
			free(body);
		}
	}
	for (size_t i = 0; i < evs.n; i++)
		ck_assert_msg(seen[i].copies > 0, "event %s (stream %s version %lld, %" PRIu64 ":%" PRId64
			      ") was never published (%zu of %zu received)", seen[i].ev->id,
			      seen[i].ev->stream, (long long)seen[i].ev->version, seen[i].at.xid,
			      seen[i].at.position, chk->received, evs.n);
	free(seen);
	cqrs_hmap_free(by_id);
	cqrs_hmap_free(last_version);
	cqrs_store_events_clear(&evs);
}

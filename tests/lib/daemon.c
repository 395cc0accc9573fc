/* daemon.c - cqrs-cmdd (or another daemon with a command socket) as a child
 * process, and a line client, for tests. The process is a tests/lib/proc.c
 * proc that is ready when its command socket accepts connections. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "daemon.h"
#include "fixture.h"
#include "proc.h"
#include "scrape.h"

#define LOG_TAIL_LINES 40

struct daemon {
	struct proc *p;
	char socket_path[160];
	bool notify;		/* daemon_use_notify() */
};

struct daemon_conn {
	int fd;
	char *in;
	size_t in_len, in_cap;
	bool eof;
};

/* ---- small things ------------------------------------------------------------------ */

static int
left_ms(long long deadline)
{
	long long left = deadline - proc_now_ms();

	return left < 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
}

static char *
xstrdup(const char *s)
{
	char *r = strdup(s);

	ck_assert_ptr_nonnull(r);
	return r;
}

/* ---- the daemon ---------------------------------------------------------------------- */

struct daemon *
daemon_new(const char *program, const char *conninfo)
{
	struct daemon *d = calloc(1, sizeof(*d));

	ck_assert_ptr_nonnull(d);
	/* a relative socket path is in the proc's directory */
	d->p = proc_new_ready(program, (struct proc_ready){ PROC_READY_SOCKET, "cmd.sock" });
	snprintf(d->socket_path, sizeof(d->socket_path), "%s/cmd.sock", proc_dir(d->p));
	if (conninfo != NULL)
		proc_set(d->p, "store", "conninfo", "%s", conninfo);
	proc_set(d->p, "cmd", "socket", "%s", d->socket_path);
	proc_set(d->p, "log", "level", "info");
	return d;
}

void
daemon_free(struct daemon *d)
{
	if (d == NULL)
		return;
	proc_free(d->p);
	free(d);
}

struct proc *
daemon_proc(struct daemon *d)
{
	return d->p;
}

void
daemon_set(struct daemon *d, const char *section, const char *key, const char *fmt, ...)
{
	char *value = NULL;

	if (fmt != NULL) {
		va_list ap;
		va_start(ap, fmt);
		ck_assert_int_ge(vasprintf(&value, fmt, ap), 0);
		va_end(ap);
	}
	proc_set(d->p, section, key, value != NULL ? "%s" : NULL, value);
	free(value);
}

void
daemon_setenv(struct daemon *d, const char *name, const char *value)
{
	proc_setenv(d->p, name, value);
}

void
daemon_add_arg(struct daemon *d, const char *arg)
{
	proc_add_arg(d->p, arg);
}

void
daemon_use_notify(struct daemon *d)
{
	proc_set_ready(d->p, (struct proc_ready){ PROC_READY_NOTIFY, "READY=1" });
	d->notify = true;
}

const char *
daemon_notifications(struct daemon *d)
{
	return proc_notifications(d->p);
}

void
daemon_start(struct daemon *d)
{
	struct daemon_conn *c;

	proc_start(d->p);
	if (!d->notify)
		return;
	/* READY=1 means listening */
	c = daemon_conn_try_open(d->socket_path);
	if (c == NULL)
		ck_abort_msg("daemon: %s sent READY=1 but %s does not accept connections; log:\n%s",
			     proc_program(d->p), d->socket_path, daemon_log_tail(d, LOG_TAIL_LINES));
	daemon_conn_close(c);
}

int
daemon_run(struct daemon *d, int timeout_ms)
{
	return proc_run(d->p, timeout_ms);
}

int
daemon_wait(struct daemon *d, int timeout_ms)
{
	return proc_wait_exit(d->p, timeout_ms);
}

void
daemon_signal(struct daemon *d, int sig)
{
	proc_signal(d->p, sig);
}

int
daemon_stop(struct daemon *d)
{
	return proc_stop(d->p);
}

void
daemon_kill(struct daemon *d)
{
	proc_kill(d->p);
}

void
daemon_restart(struct daemon *d)
{
	int code = daemon_stop(d);

	ck_assert_msg(code == 0, "daemon: %s exited %d on SIGTERM; log:\n%s", proc_program(d->p),
		      code, daemon_log_tail(d, LOG_TAIL_LINES));
	daemon_start(d);
}

bool
daemon_running(struct daemon *d)
{
	return proc_running(d->p);
}

pid_t
daemon_pid(const struct daemon *d)
{
	return proc_pid(d->p);
}

const char *
daemon_dir(const struct daemon *d)
{
	return proc_dir(d->p);
}

const char *
daemon_socket(const struct daemon *d)
{
	return d->socket_path;
}

const char *
daemon_config_path(const struct daemon *d)
{
	return proc_config_path(d->p);
}

char *
daemon_log(const struct daemon *d)
{
	return proc_log(d->p);
}

char *
daemon_log_tail(const struct daemon *d, int n)
{
	return proc_log_tail(d->p, n);
}

bool
daemon_wait_log(struct daemon *d, const char *needle, int timeout_ms)
{
	return proc_wait_log(d->p, needle, 1, timeout_ms);
}

/* ---- client ------------------------------------------------------------------------ */

struct daemon_conn *
daemon_conn_try_open(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct daemon_conn *c;
	int fd, e;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	/* blocking connect: an AF_UNIX connect does not wait for the peer's
	 * accept(), only for room in its backlog */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		e = errno;
		close(fd);
		errno = e;
		return NULL;
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
		e = errno;
		close(fd);
		errno = e;
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	ck_assert_ptr_nonnull(c);
	c->fd = fd;
	return c;
}

struct daemon_conn *
daemon_conn_open(const char *path)
{
	struct daemon_conn *c = daemon_conn_try_open(path);

	if (c == NULL)
		ck_abort_msg("cannot connect to %s: %s", path, strerror(errno));
	return c;
}

struct daemon_conn *
daemon_connect(const struct daemon *d)
{
	struct daemon_conn *c = daemon_conn_try_open(d->socket_path);

	if (c == NULL)
		ck_abort_msg("cannot connect to %s: %s; log:\n%s", d->socket_path,
			     strerror(errno), daemon_log_tail(d, LOG_TAIL_LINES));
	return c;
}

void
daemon_conn_close(struct daemon_conn *c)
{
	if (c == NULL)
		return;
	close(c->fd);
	free(c->in);
	free(c);
}

int
daemon_conn_fd(const struct daemon_conn *c)
{
	return c->fd;
}

int
daemon_conn_try_write(struct daemon_conn *c, const void *buf, size_t len)
{
	const char *p = buf;
	long long deadline = proc_now_ms() + 30000;

	while (len > 0) {
		ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
		if (n > 0) {
			p += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
			if (poll(&pfd, 1, left_ms(deadline)) == 0)
				return -ETIMEDOUT;
			continue;
		}
		return -errno;
	}
	return 0;
}

void
daemon_conn_write(struct daemon_conn *c, const void *buf, size_t len)
{
	int rc = daemon_conn_try_write(c, buf, len);

	if (rc != 0)
		ck_abort_msg("writing %zu bytes to the daemon: %s", len, strerror(-rc));
}

void
daemon_conn_send(struct daemon_conn *c, const char *line)
{
	size_t len = strlen(line);
	char *buf = malloc(len + 1);

	ck_assert_ptr_nonnull(buf);
	memcpy(buf, line, len);
	buf[len] = '\n';
	daemon_conn_write(c, buf, len + 1);
	free(buf);
}

/* Reads what is there; returns bytes read, 0 at EOF (sets eof), -1 EAGAIN. */
static ssize_t
conn_fill(struct daemon_conn *c)
{
	ssize_t n;

	if (c->eof)
		return 0;
	if (c->in_cap - c->in_len < 65536) {
		c->in_cap = c->in_cap ? c->in_cap * 2 : 131072;
		c->in = realloc(c->in, c->in_cap);
		ck_assert_ptr_nonnull(c->in);
	}
	do
		n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len - 1);
	while (n < 0 && errno == EINTR);
	if (n > 0) {
		c->in_len += (size_t)n;
		return n;
	}
	if (n == 0 || errno == ECONNRESET) {
		/* a reset is the daemon closing with bytes of ours unread */
		c->eof = true;
		return 0;
	}
	if (errno == EAGAIN)
		return -1;
	ck_abort_msg("reading from the daemon: %s", strerror(errno));
	return 0;
}

/* A complete buffered line (malloc'd), or NULL. */
static char *
conn_take_line(struct daemon_conn *c)
{
	char *nl = c->in_len ? memchr(c->in, '\n', c->in_len) : NULL;
	size_t n;
	char *line;

	if (nl == NULL)
		return NULL;
	n = (size_t)(nl - c->in);
	line = malloc(n + 1);
	ck_assert_ptr_nonnull(line);
	memcpy(line, c->in, n);
	line[n] = '\0';
	memmove(c->in, nl + 1, c->in_len - n - 1);
	c->in_len -= n + 1;
	return line;
}

char *
daemon_conn_try_recv(struct daemon_conn *c, int timeout_ms, bool *timed_out)
{
	long long deadline = proc_now_ms() + timeout_ms;

	*timed_out = false;
	for (;;) {
		char *line = conn_take_line(c);
		ssize_t n;
		if (line != NULL)
			return line;
		n = conn_fill(c);
		if (n > 0)
			continue;
		if (n == 0)
			return NULL;
		{
			struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
			int left = left_ms(deadline);
			if (left == 0 || poll(&pfd, 1, left) == 0) {
				*timed_out = true;
				return NULL;
			}
		}
	}
}

char *
daemon_conn_recv(struct daemon_conn *c, int timeout_ms)
{
	bool timed_out;
	char *line = daemon_conn_try_recv(c, timeout_ms, &timed_out);

	if (timed_out)
		ck_abort_msg("no answer from the daemon within %d ms", timeout_ms);
	return line;
}

bool
daemon_conn_wait_closed(struct daemon_conn *c, int timeout_ms)
{
	bool timed_out;
	char *line = daemon_conn_try_recv(c, timeout_ms, &timed_out);

	if (line != NULL)
		ck_abort_msg("expected the daemon to close the connection, got: %s", line);
	return !timed_out;
}

char *
daemon_conn_call(struct daemon_conn *c, const char *line)
{
	char *answer;

	daemon_conn_send(c, line);
	answer = daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS);
	if (answer == NULL)
		ck_abort_msg("the daemon closed the connection instead of answering %s", line);
	return answer;
}

char **
daemon_conn_pipeline(struct daemon_conn *c, const char *const *lines, size_t n, int timeout_ms)
{
	char **answers = calloc(n ? n : 1, sizeof(*answers));
	char *out = NULL;
	size_t out_len = 0, out_off = 0, got = 0;
	long long deadline;

	ck_assert_ptr_nonnull(answers);
	for (size_t i = 0; i < n; i++)
		out_len += strlen(lines[i]) + 1;
	out = malloc(out_len + 1);
	ck_assert_ptr_nonnull(out);
	for (size_t i = 0, off = 0; i < n; i++) {
		size_t l = strlen(lines[i]);
		memcpy(out + off, lines[i], l);
		out[off + l] = '\n';
		off += l + 1;
	}
	deadline = proc_now_ms() + timeout_ms;
	while (got < n) {
		struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
		char *line;
		int pr;

		while (got < n && (line = conn_take_line(c)) != NULL) {
			answers[got++] = line;
			deadline = proc_now_ms() + timeout_ms;	/* progress */
		}
		if (got == n)
			break;
		if (out_off < out_len)
			pfd.events |= POLLOUT;
		pr = poll(&pfd, 1, left_ms(deadline));
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr <= 0)
			ck_abort_msg("pipeline: stalled for %d ms after %zu of %zu answers "
				     "(%zu of %zu bytes sent)", timeout_ms, got, n, out_off, out_len);
		if ((pfd.revents & POLLOUT) && out_off < out_len) {
			ssize_t w = send(c->fd, out + out_off, out_len - out_off, MSG_NOSIGNAL);
			if (w > 0) {
				out_off += (size_t)w;
				deadline = proc_now_ms() + timeout_ms;
			} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
				ck_abort_msg("pipeline: send after %zu of %zu answers: %s", got, n,
					     strerror(errno));
			}
		}
		if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t r = conn_fill(c);
			if (r == 0 && conn_take_line(c) == NULL)
				ck_abort_msg("pipeline: the daemon closed the connection after %zu "
					     "of %zu answers", got, n);
			if (r > 0)
				deadline = proc_now_ms() + timeout_ms;
		}
	}
	free(out);
	return answers;
}

void
daemon_lines_free(char **lines, size_t n)
{
	if (lines == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		free(lines[i]);
	free(lines);
}

char *
daemon_call(const struct daemon *d, const char *line)
{
	struct daemon_conn *c = daemon_connect(d);
	char *answer = daemon_conn_call(c, line);

	daemon_conn_close(c);
	return answer;
}

/* ---- answers ----------------------------------------------------------------------- */

struct json_object *
daemon_json(const char *line)
{
	json_object *o;

	ck_assert_msg(line != NULL, "expected an answer line, got none (connection closed)");
	o = json_tokener_parse(line);
	ck_assert_msg(o != NULL && json_object_is_type(o, json_type_object),
		      "answer is not a JSON object: %.2000s", line);
	return o;
}

struct json_object *
daemon_jget(struct json_object *o, const char *path)
{
	char buf[256], *save = NULL, *part;

	snprintf(buf, sizeof(buf), "%s", path);
	for (part = strtok_r(buf, ".", &save); part != NULL && o != NULL;
	     part = strtok_r(NULL, ".", &save)) {
		if (json_object_is_type(o, json_type_array)) {
			char *end;
			long i = strtol(part, &end, 10);
			if (*end != '\0' || i < 0 || (size_t)i >= json_object_array_length(o))
				return NULL;
			o = json_object_array_get_idx(o, (size_t)i);
		} else if (json_object_is_type(o, json_type_object)) {
			json_object *v = NULL;
			if (!json_object_object_get_ex(o, part, &v))
				return NULL;
			o = v;
		} else {
			return NULL;
		}
	}
	return o;
}

const char *
daemon_jstr(struct json_object *o, const char *path)
{
	json_object *v = daemon_jget(o, path);

	return v != NULL && json_object_is_type(v, json_type_string) ? json_object_get_string(v)
								     : NULL;
}

static bool
answer_is(const char *line, bool ok, const char *code)
{
	json_object *o, *v;
	bool r = false;

	if (line == NULL)
		return false;
	o = json_tokener_parse(line);
	if (o == NULL || !json_object_is_type(o, json_type_object))
		goto out;
	if (!json_object_object_get_ex(o, "ok", &v) || !json_object_is_type(v, json_type_boolean) ||
	    json_object_get_boolean(v) != ok)
		goto out;
	if (ok) {
		r = true;
	} else {
		const char *c = daemon_jstr(o, "error.code");
		const char *m = daemon_jstr(o, "error.message");
		r = c != NULL && strcmp(c, code) == 0 && m != NULL && m[0] != '\0';
	}
out:
	json_object_put(o);
	return r;
}

bool
daemon_answer_ok(const char *line)
{
	return answer_is(line, true, NULL);
}

bool
daemon_answer_error(const char *line, const char *code)
{
	return answer_is(line, false, code);
}

long long
daemon_answer_int(const char *line, const char *path)
{
	json_object *o = line ? json_tokener_parse(line) : NULL;
	json_object *v = o ? daemon_jget(o, path) : NULL;
	long long r = INT64_MIN;

	if (v != NULL && json_object_is_type(v, json_type_int))
		r = json_object_get_int64(v);
	json_object_put(o);
	return r;
}

char *
daemon_answer_str(const char *line, const char *path)
{
	json_object *o = line ? json_tokener_parse(line) : NULL;
	const char *v = o ? daemon_jstr(o, path) : NULL;
	char *r = v ? daemon_gc(xstrdup(v)) : NULL;

	json_object_put(o);
	return r;
}

/* ---- cmdd conveniences ------------------------------------------------------------- */

struct daemon *
daemon_new_cmdd(const char *conninfo, const char *plugins)
{
	struct daemon *d = daemon_new("cqrs-cmdd", conninfo);
	char list[2048] = "", names[512], *save = NULL;

	if (plugins != NULL) {
		snprintf(names, sizeof(names), "%s", plugins);
		for (char *n = strtok_r(names, " ", &save); n != NULL; n = strtok_r(NULL, " ", &save)) {
			size_t used = strlen(list);
			snprintf(list + used, sizeof(list) - used, "%s%s", used ? " " : "",
				 fixture_plugin(n));
		}
		daemon_set(d, "cmd", "plugins", "%s", list);
	}
	return d;
}

static void **gc_items;
static size_t gc_n, gc_cap;

void *
daemon_gc(void *p)
{
	if (p == NULL)
		return NULL;
	if (gc_n == gc_cap) {
		gc_cap = gc_cap ? gc_cap * 2 : 256;
		gc_items = realloc(gc_items, gc_cap * sizeof(*gc_items));
		ck_assert_ptr_nonnull(gc_items);
	}
	gc_items[gc_n++] = p;
	return p;
}

void
daemon_gc_run(void)
{
	for (size_t i = 0; i < gc_n; i++)
		free(gc_items[i]);
	free(gc_items);
	gc_items = NULL;
	gc_n = gc_cap = 0;
}

char *
daemon_fmt(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	ck_assert_int_ge(n, 0);
	return daemon_gc(s);
}

static long long
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint16_t
daemon_start_http(struct daemon *d)
{
	struct timespec pause = { 0, 20 * 1000000L };
	long long deadline;
	uint16_t port = 0;

	daemon_set(d, "cmd", "http", "127.0.0.1:0");
	daemon_start(d);
	deadline = mono_ms() + 10000;
	while (port == 0 && mono_ms() < deadline) {
		char *log = daemon_log(d);
		const char *line = strstr(log, "metrics and health on ");
		if (line != NULL)
			port = scrape_port_from_log(line);
		free(log);
		if (port == 0)
			nanosleep(&pause, NULL);
	}
	ck_assert_msg(port != 0, "no \"metrics and health on http://...\" in the log:\n%s",
		      (char *)daemon_gc(daemon_log_tail(d, 20)));
	/* /health says 503 until a store connection is up: wait for that */
	while (mono_ms() < deadline) {
		char *body = NULL;
		int status = scrape_http(port, "GET", "/health", NULL, &body, 1000);
		free(body);
		if (status == 200)
			break;
		nanosleep(&pause, NULL);
	}
	return port;
}

/* daemon.c - a daemon binary as a child process, and a line client, for tests. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "daemon.h"
#include "fixture.h"

#define MAX_KEYS 64
#define MAX_ENV 32
#define MAX_ARGS 16
#define LOG_TAIL_LINES 40

struct kv {
	char *section, *key, *value;
};

struct daemon {
	char program[512];
	char *dir;
	char config_path[128], log_path[128], socket_path[128], notify_path[128];
	struct kv keys[MAX_KEYS];
	int nkeys;
	char *config_extra;
	char *env_name[MAX_ENV], *env_value[MAX_ENV];
	int nenv;
	char *args[MAX_ARGS];
	int nargs;
	pid_t pid;		/* 0 when not running */
	int notify_fd;		/* -1 without daemon_use_notify() */
	char *notes;		/* sd_notify messages */
	size_t notes_len;
};

struct daemon_conn {
	int fd;
	char *in;
	size_t in_len, in_cap;
	bool eof;
};

/* ---- small things ------------------------------------------------------------------ */

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
left_ms(int64_t deadline)
{
	int64_t left = deadline - now_ms();

	return left < 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
}

static char *
xstrdup(const char *s)
{
	char *r = strdup(s);

	ck_assert_ptr_nonnull(r);
	return r;
}

/* Status from waitpid() as an exit code, 128 + signal when killed. */
static int
exit_code(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return -1;
}

/* Daemons alive in this process, killed at exit(): a test that ends
 * normally without stopping one must not leave it to the process group. */
static struct daemon *live[16];
static pid_t live_owner;

static void
kill_live(void)
{
	if (getpid() != live_owner)
		return;
	for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++) {
		if (live[i] != NULL && live[i]->pid > 0) {
			kill(live[i]->pid, SIGKILL);
			waitpid(live[i]->pid, NULL, 0);
			live[i]->pid = 0;
		}
	}
}

static void
track(struct daemon *d, bool on)
{
	if (live_owner != getpid()) {
		memset(live, 0, sizeof(live));
		live_owner = getpid();
		atexit(kill_live);
	}
	for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++) {
		if (on && live[i] == NULL) {
			live[i] = d;
			return;
		}
		if (!on && live[i] == d) {
			live[i] = NULL;
			return;
		}
	}
}

/* ---- the daemon ---------------------------------------------------------------------- */

struct daemon *
daemon_new(const char *program, const char *conninfo)
{
	struct daemon *d = calloc(1, sizeof(*d));

	ck_assert_ptr_nonnull(d);
	snprintf(d->program, sizeof(d->program), "%s", fixture_bin(program));
	d->dir = fixture_tmpdir();
	snprintf(d->config_path, sizeof(d->config_path), "%s/cqrs.conf", d->dir);
	snprintf(d->log_path, sizeof(d->log_path), "%s/daemon.log", d->dir);
	snprintf(d->socket_path, sizeof(d->socket_path), "%s/cmd.sock", d->dir);
	snprintf(d->notify_path, sizeof(d->notify_path), "%s/notify", d->dir);
	d->notify_fd = -1;
	d->notes = xstrdup("");
	if (conninfo != NULL)
		daemon_set(d, "store", "conninfo", "%s", conninfo);
	daemon_set(d, "cmd", "socket", "%s", d->socket_path);
	daemon_set(d, "log", "level", "info");
	return d;
}

void
daemon_free(struct daemon *d)
{
	if (d == NULL)
		return;
	if (d->pid > 0)
		daemon_kill(d);
	track(d, false);
	if (d->notify_fd >= 0)
		close(d->notify_fd);
	if (getenv("CQRS_TEST_KEEP") == NULL) {
		char cmd[200];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
		if (system(cmd) != 0)
			fprintf(stderr, "daemon: could not remove %s\n", d->dir);
	}
	for (int i = 0; i < d->nkeys; i++) {
		free(d->keys[i].section);
		free(d->keys[i].key);
		free(d->keys[i].value);
	}
	for (int i = 0; i < d->nenv; i++) {
		free(d->env_name[i]);
		free(d->env_value[i]);
	}
	for (int i = 0; i < d->nargs; i++)
		free(d->args[i]);
	free(d->config_extra);
	free(d->notes);
	free(d->dir);
	free(d);
}

void
daemon_set(struct daemon *d, const char *section, const char *key, const char *fmt, ...)
{
	char *value = NULL;
	int i;

	if (fmt != NULL) {
		va_list ap;
		va_start(ap, fmt);
		ck_assert_int_ge(vasprintf(&value, fmt, ap), 0);
		va_end(ap);
	}
	for (i = 0; i < d->nkeys; i++)
		if (strcmp(d->keys[i].section, section) == 0 && strcmp(d->keys[i].key, key) == 0)
			break;
	if (i < d->nkeys) {
		free(d->keys[i].value);
		d->keys[i].value = value;	/* NULL: left out of the file */
		return;
	}
	if (value == NULL)
		return;
	ck_assert_int_lt(d->nkeys, MAX_KEYS);
	d->keys[d->nkeys].section = xstrdup(section);
	d->keys[d->nkeys].key = xstrdup(key);
	d->keys[d->nkeys].value = value;
	d->nkeys++;
}

void
daemon_config_append(struct daemon *d, const char *text)
{
	size_t old = d->config_extra ? strlen(d->config_extra) : 0;

	d->config_extra = realloc(d->config_extra, old + strlen(text) + 1);
	ck_assert_ptr_nonnull(d->config_extra);
	memcpy(d->config_extra + old, text, strlen(text) + 1);
}

void
daemon_setenv(struct daemon *d, const char *name, const char *value)
{
	for (int i = 0; i < d->nenv; i++) {
		if (strcmp(d->env_name[i], name) == 0) {
			free(d->env_value[i]);
			d->env_value[i] = value ? xstrdup(value) : NULL;
			return;
		}
	}
	ck_assert_int_lt(d->nenv, MAX_ENV);
	d->env_name[d->nenv] = xstrdup(name);
	d->env_value[d->nenv] = value ? xstrdup(value) : NULL;
	d->nenv++;
}

void
daemon_add_arg(struct daemon *d, const char *arg)
{
	ck_assert_int_lt(d->nargs, MAX_ARGS);
	d->args[d->nargs++] = xstrdup(arg);
}

void
daemon_use_notify(struct daemon *d)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	if (d->notify_fd >= 0)
		return;
	d->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	ck_assert_int_ge(d->notify_fd, 0);
	ck_assert_uint_lt(strlen(d->notify_path), sizeof(sa.sun_path));
	memcpy(sa.sun_path, d->notify_path, strlen(d->notify_path) + 1);
	unlink(d->notify_path);
	if (bind(d->notify_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		ck_abort_msg("daemon: bind %s: %s", d->notify_path, strerror(errno));
	daemon_setenv(d, "NOTIFY_SOCKET", d->notify_path);
}

/* Takes the sd_notify datagrams waiting. */
static void
drain_notify(struct daemon *d)
{
	char buf[4096];
	ssize_t n;

	if (d->notify_fd < 0)
		return;
	while ((n = recv(d->notify_fd, buf, sizeof(buf) - 1, 0)) > 0) {
		d->notes = realloc(d->notes, d->notes_len + (size_t)n + 2);
		ck_assert_ptr_nonnull(d->notes);
		memcpy(d->notes + d->notes_len, buf, (size_t)n);
		d->notes_len += (size_t)n;
		d->notes[d->notes_len++] = '\n';
		d->notes[d->notes_len] = '\0';
	}
}

const char *
daemon_notifications(struct daemon *d)
{
	drain_notify(d);
	return d->notes;
}

static void
write_config(struct daemon *d)
{
	FILE *f = fopen(d->config_path, "w");
	const char *done[MAX_KEYS];
	int ndone = 0;

	if (f == NULL)
		ck_abort_msg("daemon: cannot write %s: %s", d->config_path, strerror(errno));
	fprintf(f, "# written by tests/lib/daemon.c\n");
	/* sections in order of first appearance, keys in order of setting */
	for (int i = 0; i < d->nkeys; i++) {
		bool seen = false;
		for (int j = 0; j < ndone; j++)
			seen = seen || strcmp(done[j], d->keys[i].section) == 0;
		if (seen)
			continue;
		done[ndone++] = d->keys[i].section;
		fprintf(f, "\n[%s]\n", d->keys[i].section);
		for (int j = i; j < d->nkeys; j++)
			if (strcmp(d->keys[j].section, d->keys[i].section) == 0 &&
			    d->keys[j].value != NULL)
				fprintf(f, "%s = %s\n", d->keys[j].key, d->keys[j].value);
	}
	if (d->config_extra != NULL)
		fprintf(f, "\n%s\n", d->config_extra);
	if (fclose(f) != 0)
		ck_abort_msg("daemon: writing %s: %s", d->config_path, strerror(errno));
}

static void
spawn(struct daemon *d)
{
	char *argv[MAX_ARGS + 4];
	int argc = 0, logfd;
	pid_t pid;

	ck_assert_msg(d->pid == 0, "daemon: %s is already running", d->program);
	if (access(d->program, X_OK) != 0)
		ck_abort_msg("daemon: %s is not built (%s)", d->program, strerror(errno));
	write_config(d);
	/* what the previous run said is not what this one says */
	drain_notify(d);
	d->notes_len = 0;
	d->notes[0] = '\0';
	logfd = open(d->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	ck_assert_int_ge(logfd, 0);
	{
		char mark[256];
		int n = snprintf(mark, sizeof(mark), "==== tests/lib/daemon.c: starting %s -c %s\n",
				 d->program, d->config_path);
		ck_assert_int_eq(write(logfd, mark, (size_t)n), n);
	}
	argv[argc++] = d->program;
	argv[argc++] = (char *)"-c";
	argv[argc++] = d->config_path;
	for (int i = 0; i < d->nargs; i++)
		argv[argc++] = d->args[i];
	argv[argc] = NULL;

	fflush(NULL);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int nullfd = open("/dev/null", O_RDONLY);
		if (nullfd < 0 || dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
			_exit(126);
		/* nothing of the test's (sockets to other daemons) leaks in */
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		for (int i = 0; i < d->nenv; i++) {
			if (d->env_value[i] != NULL)
				setenv(d->env_name[i], d->env_value[i], 1);
			else
				unsetenv(d->env_name[i]);
		}
		signal(SIGPIPE, SIG_DFL);
		execv(d->program, argv);
		dprintf(2, "daemon: exec %s: %s\n", d->program, strerror(errno));
		_exit(127);
	}
	close(logfd);
	d->pid = pid;
	track(d, true);
}

static int
can_connect(const char *path)
{
	struct daemon_conn *c = daemon_conn_try_open(path);

	if (c == NULL)
		return 0;
	daemon_conn_close(c);
	return 1;
}

/* Reaps the daemon if it has exited; its exit code, or -1 while it runs. */
static int
reap(struct daemon *d, int flags)
{
	int status;
	pid_t r;

	if (d->pid <= 0)
		return -1;
	do
		r = waitpid(d->pid, &status, flags);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return -1;
	d->pid = 0;
	track(d, false);
	return r < 0 ? -1 : exit_code(status);
}

void
daemon_start(struct daemon *d)
{
	int64_t deadline = now_ms() + DAEMON_START_TIMEOUT_MS;
	bool ready = false;

	spawn(d);
	while (!ready) {
		int code = reap(d, WNOHANG);
		if (d->pid == 0) {
			char *tail = daemon_log_tail(d, LOG_TAIL_LINES);
			ck_abort_msg("daemon: %s exited with status %d before it was ready; log:\n%s",
				     d->program, code, tail);
		}
		if (d->notify_fd >= 0) {
			drain_notify(d);
			ready = strstr(d->notes, "READY=1") != NULL;
			if (ready && !can_connect(d->socket_path)) {
				char *tail = daemon_log_tail(d, LOG_TAIL_LINES);
				ck_abort_msg("daemon: %s sent READY=1 but %s does not accept "
					     "connections; log:\n%s", d->program, d->socket_path, tail);
			}
		} else {
			ready = can_connect(d->socket_path);
		}
		if (!ready) {
			if (now_ms() > deadline) {
				char *tail = daemon_log_tail(d, LOG_TAIL_LINES);
				ck_abort_msg("daemon: %s not ready after %d ms (%s); log:\n%s",
					     d->program, DAEMON_START_TIMEOUT_MS,
					     d->notify_fd >= 0 ? "no READY=1" : "socket refuses",
					     tail);
			}
			usleep(20000);
		}
	}
}

int
daemon_run(struct daemon *d, int timeout_ms)
{
	int code;

	spawn(d);
	code = daemon_wait(d, timeout_ms);
	if (code < 0) {
		char *tail = daemon_log_tail(d, LOG_TAIL_LINES);
		daemon_kill(d);
		ck_abort_msg("daemon: %s still runs after %d ms, expected it to exit; log:\n%s",
			     d->program, timeout_ms, tail);
	}
	return code;
}

int
daemon_wait(struct daemon *d, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;

	for (;;) {
		int code = reap(d, WNOHANG);
		if (d->pid == 0)
			return code;
		if (now_ms() > deadline)
			return -1;
		usleep(10000);
	}
}

void
daemon_signal(struct daemon *d, int sig)
{
	ck_assert_msg(d->pid > 0, "daemon: %s is not running", d->program);
	ck_assert_int_eq(kill(d->pid, sig), 0);
}

int
daemon_stop(struct daemon *d)
{
	int code;

	ck_assert_msg(d->pid > 0, "daemon: %s is not running (it died?); log:\n%s",
		      d->program, daemon_log_tail(d, LOG_TAIL_LINES));
	kill(d->pid, SIGTERM);
	code = daemon_wait(d, DAEMON_STOP_TIMEOUT_MS);
	if (code < 0) {
		char *tail = daemon_log_tail(d, LOG_TAIL_LINES);
		daemon_kill(d);
		ck_abort_msg("daemon: %s did not exit within %d ms of SIGTERM; log:\n%s",
			     d->program, DAEMON_STOP_TIMEOUT_MS, tail);
	}
	return code;
}

void
daemon_kill(struct daemon *d)
{
	if (d->pid <= 0)
		return;
	kill(d->pid, SIGKILL);
	reap(d, 0);
}

void
daemon_restart(struct daemon *d)
{
	int code = daemon_stop(d);

	ck_assert_msg(code == 0, "daemon: %s exited %d on SIGTERM; log:\n%s", d->program,
		      code, daemon_log_tail(d, LOG_TAIL_LINES));
	daemon_start(d);
}

bool
daemon_running(struct daemon *d)
{
	reap(d, WNOHANG);
	return d->pid > 0;
}

pid_t
daemon_pid(const struct daemon *d)
{
	return d->pid;
}

const char *
daemon_dir(const struct daemon *d)
{
	return d->dir;
}

const char *
daemon_socket(const struct daemon *d)
{
	return d->socket_path;
}

const char *
daemon_config_path(const struct daemon *d)
{
	return d->config_path;
}

const char *
daemon_log_path(const struct daemon *d)
{
	return d->log_path;
}

char *
daemon_log(const struct daemon *d)
{
	return fixture_read_file(d->log_path);
}

char *
daemon_log_tail(const struct daemon *d, int n)
{
	return fixture_file_tail(d->log_path, n);
}

bool
daemon_log_contains(const struct daemon *d, const char *needle)
{
	char *all = daemon_log(d);
	bool r = strstr(all, needle) != NULL;

	free(all);
	return r;
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
	int64_t deadline = now_ms() + 30000;

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
	int64_t deadline = now_ms() + timeout_ms;

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
	int64_t deadline;

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
	deadline = now_ms() + timeout_ms;
	while (got < n) {
		struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
		char *line;
		int pr;

		while (got < n && (line = conn_take_line(c)) != NULL) {
			answers[got++] = line;
			deadline = now_ms() + timeout_ms;	/* progress */
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
				deadline = now_ms() + timeout_ms;
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
				deadline = now_ms() + timeout_ms;
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

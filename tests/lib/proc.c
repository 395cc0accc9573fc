/* proc.c - a program of the suite as a child process, for tests (see proc.h). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fixture.h"
#include "proc.h"

#define MAX_KEYS 64
#define MAX_ENV 32
#define MAX_ARGS 16
#define TAIL_LINES 40

struct proc_kv {
	char *section, *key, *value;
};

struct proc {
	char program[512];
	char *dir;
	char config_path[128], log_path[600], notify_path[128];
	struct proc_kv keys[MAX_KEYS];
	int nkeys;
	char *config_extra;
	char *env_name[MAX_ENV], *env_value[MAX_ENV];
	int nenv;
	char *args[MAX_ARGS];
	int nargs;
	enum proc_ready_kind ready_kind;
	char *ready_arg;
	pid_t pid;		/* 0 when not running */
	int status;		/* of the last exit; -1 before one */
	size_t log_mark;	/* log size after the start marker */
	int notify_fd;		/* -1 without a NOTIFY_SOCKET */
	/*
	 * sd_notify datagrams are taken by a thread as they come: the kernel
	 * queues only net.unix.max_dgram_qlen (often 10) of them, and a daemon
	 * whose notifications nobody reads blocks in sd_notify() (systemd always
	 * reads them).
	 */
	pthread_t drainer;
	int wake[2];		/* a byte here stops the drainer */
	pthread_mutex_t mu;	/* guards notes */
	char *notes;
	size_t notes_len;
	size_t notes_mark;	/* notes_len at the last start */
	char *notes_view;	/* proc_notifications()'s copy */
};

long long
proc_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *
xstrdup(const char *s)
{
	char *r = strdup(s);

	ck_assert_ptr_nonnull(r);
	return r;
}

/* Procs alive in this process, killed at exit(): a test that ends normally
 * without stopping one must not leave it to the process group. */
static struct proc *live[64];
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
track(struct proc *p, bool on)
{
	if (live_owner != getpid()) {
		memset(live, 0, sizeof(live));
		live_owner = getpid();
		atexit(kill_live);
	}
	for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++) {
		if (on && live[i] == NULL) {
			live[i] = p;
			return;
		}
		if (!on && live[i] == p) {
			live[i] = NULL;
			return;
		}
	}
}

/* ---- the proc and its settings ------------------------------------------------------- */

struct proc *
proc_new_ready(const char *program, struct proc_ready ready)
{
	struct proc *p = calloc(1, sizeof(*p));
	const char *base = strrchr(program, '/');

	ck_assert_ptr_nonnull(p);
	snprintf(p->program, sizeof(p->program), "%s", fixture_bin(program));
	p->dir = fixture_tmpdir();
	snprintf(p->config_path, sizeof(p->config_path), "%s/cqrs.conf", p->dir);
	snprintf(p->log_path, sizeof(p->log_path), "%s/%s.log", p->dir, base ? base + 1 : program);
	snprintf(p->notify_path, sizeof(p->notify_path), "%s/notify", p->dir);
	p->status = -1;
	p->notify_fd = -1;
	p->notes = xstrdup("");
	pthread_mutex_init(&p->mu, NULL);
	proc_set_ready(p, ready);
	proc_set(p, "log", "level", "info");
	return p;
}

void
proc_set_ready(struct proc *p, struct proc_ready ready)
{
	free(p->ready_arg);
	p->ready_kind = ready.kind;
	if (ready.kind == PROC_READY_SOCKET && ready.arg[0] != '/')
		ck_assert_int_ge(asprintf(&p->ready_arg, "%s/%s", p->dir, ready.arg), 0);
	else
		p->ready_arg = xstrdup(ready.arg);
	if (ready.kind == PROC_READY_NOTIFY)
		proc_use_notify(p);
}

struct proc *
proc_new(const char *program)
{
	return proc_new_ready(program, (struct proc_ready){ PROC_READY_NOTIFY, "READY=1" });
}

void
proc_free(struct proc *p)
{
	if (p == NULL)
		return;
	proc_kill(p);
	track(p, false);
	if (p->notify_fd >= 0) {
		ck_assert_int_eq(write(p->wake[1], "x", 1), 1);
		pthread_join(p->drainer, NULL);
		close(p->wake[0]);
		close(p->wake[1]);
		close(p->notify_fd);
	}
	pthread_mutex_destroy(&p->mu);
	if (getenv("CQRS_TEST_KEEP") == NULL) {
		char cmd[200];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p->dir);
		if (system(cmd) != 0)
			fprintf(stderr, "proc: could not remove %s\n", p->dir);
	} else {
		fprintf(stderr, "proc: kept %s\n", p->dir);
	}
	for (int i = 0; i < p->nkeys; i++) {
		free(p->keys[i].section);
		free(p->keys[i].key);
		free(p->keys[i].value);
	}
	for (int i = 0; i < p->nenv; i++) {
		free(p->env_name[i]);
		free(p->env_value[i]);
	}
	proc_clear_args(p);
	free(p->config_extra);
	free(p->ready_arg);
	free(p->notes);
	free(p->notes_view);
	free(p->dir);
	free(p);
}

void
proc_set(struct proc *p, const char *section, const char *key, const char *fmt, ...)
{
	char *value = NULL;
	int i;

	if (fmt != NULL) {
		va_list ap;
		va_start(ap, fmt);
		ck_assert_int_ge(vasprintf(&value, fmt, ap), 0);
		va_end(ap);
	}
	for (i = 0; i < p->nkeys; i++)
		if (strcmp(p->keys[i].section, section) == 0 && strcmp(p->keys[i].key, key) == 0)
			break;
	if (i < p->nkeys) {
		free(p->keys[i].value);
		p->keys[i].value = value;	/* NULL: left out of the file */
		return;
	}
	if (value == NULL)
		return;
	ck_assert_int_lt(p->nkeys, MAX_KEYS);
	p->keys[i].section = xstrdup(section);
	p->keys[i].key = xstrdup(key);
	p->keys[i].value = value;
	p->nkeys++;
}

void
proc_config_append(struct proc *p, const char *text)
{
	size_t old = p->config_extra ? strlen(p->config_extra) : 0;

	p->config_extra = realloc(p->config_extra, old + strlen(text) + 1);
	ck_assert_ptr_nonnull(p->config_extra);
	memcpy(p->config_extra + old, text, strlen(text) + 1);
}

void
proc_config_text(struct proc *p, const char *text)
{
	free(p->config_extra);
	p->config_extra = NULL;
	proc_config_append(p, text);
}

void
proc_write_config(struct proc *p)
{
	FILE *f = fopen(p->config_path, "w");

	if (f == NULL)
		ck_abort_msg("proc: cannot write %s: %s", p->config_path, strerror(errno));
	fprintf(f, "# written by tests/lib/proc.c\n");
	/* sections in order of first appearance (when they have a key left),
	 * keys in order of setting */
	for (int i = 0; i < p->nkeys; i++) {
		bool earlier = false, header = false;
		for (int j = 0; j < i; j++)
			earlier = earlier || strcmp(p->keys[j].section, p->keys[i].section) == 0;
		for (int j = i; j < p->nkeys && !earlier; j++) {
			if (strcmp(p->keys[j].section, p->keys[i].section) != 0 ||
			    p->keys[j].value == NULL)
				continue;
			if (!header)
				fprintf(f, "\n[%s]\n", p->keys[i].section);
			header = true;
			fprintf(f, "%s = %s\n", p->keys[j].key, p->keys[j].value);
		}
	}
	if (p->config_extra != NULL)
		fprintf(f, "\n%s\n", p->config_extra);
	if (fclose(f) != 0)
		ck_abort_msg("proc: writing %s: %s", p->config_path, strerror(errno));
}

void
proc_setenv(struct proc *p, const char *name, const char *value)
{
	int i;

	for (i = 0; i < p->nenv; i++)
		if (strcmp(p->env_name[i], name) == 0)
			break;
	if (i == p->nenv) {
		ck_assert_int_lt(p->nenv, MAX_ENV);
		p->env_name[p->nenv++] = xstrdup(name);
	} else {
		free(p->env_value[i]);
	}
	p->env_value[i] = value != NULL ? xstrdup(value) : NULL;
}

void
proc_add_arg(struct proc *p, const char *arg)
{
	ck_assert_int_lt(p->nargs, MAX_ARGS);
	p->args[p->nargs++] = xstrdup(arg);
}

void
proc_clear_args(struct proc *p)
{
	for (int i = 0; i < p->nargs; i++)
		free(p->args[i]);
	p->nargs = 0;
}

/* ---- notifications ------------------------------------------------------------------- */

static void
drain_notify(struct proc *p)
{
	char buf[4096];
	ssize_t n;

	if (p->notify_fd < 0)
		return;
	pthread_mutex_lock(&p->mu);
	while ((n = recv(p->notify_fd, buf, sizeof(buf) - 1, 0)) > 0) {
		char *grown = realloc(p->notes, p->notes_len + (size_t)n + 2);
		if (grown == NULL)
			break;
		p->notes = grown;
		memcpy(p->notes + p->notes_len, buf, (size_t)n);
		p->notes_len += (size_t)n;
		p->notes[p->notes_len++] = '\n';
		p->notes[p->notes_len] = '\0';
	}
	pthread_mutex_unlock(&p->mu);
}

static void *
drainer_main(void *arg)
{
	struct proc *p = arg;

	for (;;) {
		struct pollfd fds[2] = { { p->notify_fd, POLLIN, 0 }, { p->wake[0], POLLIN, 0 } };
		if (poll(fds, 2, -1) < 0 && errno != EINTR)
			return NULL;
		if (fds[1].revents != 0)
			return NULL;
		if (fds[0].revents != 0)
			drain_notify(p);
	}
}

void
proc_use_notify(struct proc *p)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	if (p->notify_fd >= 0)
		return;
	p->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	ck_assert_int_ge(p->notify_fd, 0);
	ck_assert_uint_lt(strlen(p->notify_path), sizeof(sa.sun_path));
	memcpy(sa.sun_path, p->notify_path, strlen(p->notify_path) + 1);
	if (bind(p->notify_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		ck_abort_msg("proc: bind %s: %s", p->notify_path, strerror(errno));
	ck_assert_int_eq(pipe2(p->wake, O_CLOEXEC), 0);
	ck_assert_int_eq(pthread_create(&p->drainer, NULL, drainer_main, p), 0);
}

/* Whether a message since the mark (or since ever) contains needle. */
static bool
notes_contain(struct proc *p, size_t from, const char *needle)
{
	bool found;

	drain_notify(p);
	pthread_mutex_lock(&p->mu);
	found = strstr(p->notes + from, needle) != NULL;
	pthread_mutex_unlock(&p->mu);
	return found;
}

bool
proc_notified(struct proc *p, const char *needle)
{
	return notes_contain(p, 0, needle);
}

bool
proc_wait_notified(struct proc *p, const char *needle, int timeout_ms)
{
	long long deadline = proc_now_ms() + timeout_ms;

	while (!proc_notified(p, needle)) {
		if (proc_now_ms() > deadline)
			return false;
		usleep(20000);
	}
	return true;
}

const char *
proc_notifications(struct proc *p)
{
	drain_notify(p);
	free(p->notes_view);
	pthread_mutex_lock(&p->mu);
	p->notes_view = strdup(p->notes + p->notes_mark);
	pthread_mutex_unlock(&p->mu);
	ck_assert_ptr_nonnull(p->notes_view);
	return p->notes_view;
}

/* ---- running it ---------------------------------------------------------------------- */

/*
 * The child's environment, built before fork(): ours, without NOTIFY_SOCKET
 * (given only to a proc that has one) and with the proc's variables.
 */
static char **
child_env(struct proc *p)
{
	size_t n = 0, k = 0;
	bool own_notify = p->notify_fd >= 0;
	char **env;

	while (environ[n] != NULL)
		n++;
	env = calloc(n + (size_t)p->nenv + 2, sizeof(*env));
	ck_assert_ptr_nonnull(env);
	for (size_t i = 0; i < n; i++) {
		bool drop = strncmp(environ[i], "NOTIFY_SOCKET=", 14) == 0;
		for (int j = 0; j < p->nenv && !drop; j++) {
			size_t l = strlen(p->env_name[j]);
			drop = strncmp(environ[i], p->env_name[j], l) == 0 && environ[i][l] == '=';
		}
		if (!drop)
			env[k++] = xstrdup(environ[i]);
	}
	for (int j = 0; j < p->nenv; j++) {
		if (strcmp(p->env_name[j], "NOTIFY_SOCKET") == 0)
			own_notify = false;	/* the test's (or none) */
		if (p->env_value[j] != NULL)
			ck_assert_int_ge(asprintf(&env[k++], "%s=%s", p->env_name[j], p->env_value[j]),
					 0);
	}
	if (own_notify)
		ck_assert_int_ge(asprintf(&env[k++], "NOTIFY_SOCKET=%s", p->notify_path), 0);
	return env;
}

static void
free_strv(char **v)
{
	for (size_t i = 0; v[i] != NULL; i++)
		free(v[i]);
	free(v);
}

void
proc_spawn(struct proc *p)
{
	char *argv[MAX_ARGS + 12], **envp, vglog[200], mark[1024];
	const char *vg = getenv("CQRS_TEST_VALGRIND");
	int argc = 0, logfd, len;
	pid_t pid;

	ck_assert_msg(p->pid == 0, "proc: %s is already running", p->program);
	if (access(p->program, X_OK) != 0)
		ck_abort_msg("proc: %s is not built (%s)", p->program, strerror(errno));
	proc_write_config(p);
	/* what the previous run said is not what this one says */
	drain_notify(p);
	pthread_mutex_lock(&p->mu);
	p->notes_mark = p->notes_len;
	pthread_mutex_unlock(&p->mu);
	if (vg != NULL && vg[0] != '\0') {
		/* memory errors and leaks make the exit status 97, and the
		 * report goes to DIR/valgrind.PID */
		snprintf(vglog, sizeof(vglog), "--log-file=%s/valgrind.%%p", p->dir);
		argv[argc++] = (char *)"valgrind";
		argv[argc++] = (char *)"--leak-check=full";
		argv[argc++] = (char *)"--show-leak-kinds=definite,indirect";
		argv[argc++] = (char *)"--errors-for-leak-kinds=definite,indirect";
		argv[argc++] = (char *)"--error-exitcode=97";
		argv[argc++] = vglog;
	}
	argv[argc++] = p->program;
	argv[argc++] = (char *)"-c";
	argv[argc++] = p->config_path;
	for (int i = 0; i < p->nargs; i++)
		argv[argc++] = p->args[i];
	argv[argc] = NULL;
	envp = child_env(p);

	logfd = open(p->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	ck_assert_int_ge(logfd, 0);
	len = snprintf(mark, sizeof(mark), "==== tests/lib/proc.c: starting");
	for (int i = 0; i < argc && len < (int)sizeof(mark) - 2; i++)
		len += snprintf(mark + len, sizeof(mark) - (size_t)len - 1, " %s", argv[i]);
	if (len > (int)sizeof(mark) - 2)
		len = (int)sizeof(mark) - 2;
	mark[len++] = '\n';
	ck_assert_int_eq(write(logfd, mark, (size_t)len), len);
	p->log_mark = (size_t)lseek(logfd, 0, SEEK_END);

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
		signal(SIGPIPE, SIG_DFL);
		execvpe(argv[0], argv, envp);
		dprintf(2, "proc: exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(logfd);
	free_strv(envp);
	p->pid = pid;
	p->status = -1;
	track(p, true);
}

static int
exit_code(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return -1;
}

/* Reaps it if it exited; keeps the status. */
static void
reap(struct proc *p, int flags)
{
	int status;
	pid_t r;

	if (p->pid <= 0)
		return;
	do
		r = waitpid(p->pid, &status, flags);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return;
	p->pid = 0;
	p->status = r < 0 ? -1 : exit_code(status);
	track(p, false);
}

static bool
socket_accepts(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;
	bool ok;

	if (strlen(path) >= sizeof(sa.sun_path))
		return false;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	/* an AF_UNIX connect does not wait for the peer's accept(), only for
	 * room in its backlog */
	ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

static bool
log_since_start(struct proc *p, const char *needle)
{
	char *log = fixture_read_file(p->log_path);
	bool found = strlen(log) >= p->log_mark && strstr(log + p->log_mark, needle) != NULL;

	free(log);
	return found;
}

static bool
is_ready(struct proc *p)
{
	switch (p->ready_kind) {
	case PROC_READY_NOTIFY:
		return notes_contain(p, p->notes_mark, p->ready_arg);
	case PROC_READY_SOCKET:
		return socket_accepts(p->ready_arg);
	case PROC_READY_LOG:
		return log_since_start(p, p->ready_arg);
	}
	return false;
}

bool
proc_wait_ready(struct proc *p, int timeout_ms)
{
	long long deadline = proc_now_ms() + timeout_ms;

	for (;;) {
		if (is_ready(p))
			return true;
		reap(p, WNOHANG);
		if (p->pid == 0 || proc_now_ms() > deadline)
			return false;
		usleep(10000);
	}
}

void
proc_start(struct proc *p)
{
	static const char *const what[] = {
		[PROC_READY_NOTIFY] = "no notification",
		[PROC_READY_SOCKET] = "no connection to",
		[PROC_READY_LOG] = "nothing in its log like",
	};

	proc_spawn(p);
	if (!proc_wait_ready(p, PROC_START_TIMEOUT_MS)) {
		char *tail = proc_log_tail(p, TAIL_LINES);
		if (p->pid == 0)
			ck_abort_msg("proc: %s exited with status %d before it was ready "
				     "(%s \"%s\"); log:\n%s", p->program, p->status,
				     what[p->ready_kind], p->ready_arg, tail);
		ck_abort_msg("proc: %s not ready after %d ms (%s \"%s\"); log:\n%s", p->program,
			     PROC_START_TIMEOUT_MS, what[p->ready_kind], p->ready_arg, tail);
	}
}

int
proc_run(struct proc *p, int timeout_ms)
{
	int code;

	proc_spawn(p);
	code = proc_wait_exit(p, timeout_ms);
	if (code < 0 && p->pid > 0) {
		char *tail = proc_log_tail(p, TAIL_LINES);
		proc_kill(p);
		ck_abort_msg("proc: %s still runs after %d ms, expected it to exit; log:\n%s",
			     p->program, timeout_ms, tail);
	}
	return code;
}

int
proc_wait_exit(struct proc *p, int timeout_ms)
{
	long long deadline = proc_now_ms() + timeout_ms;

	for (;;) {
		reap(p, WNOHANG);
		if (p->pid == 0)
			return p->status;
		if (proc_now_ms() > deadline)
			return -1;
		usleep(10000);
	}
}

int
proc_stop(struct proc *p)
{
	int code;

	ck_assert_msg(p->pid > 0, "proc: %s is not running (it died?); log:\n%s", p->program,
		      proc_log_tail(p, TAIL_LINES));
	kill(p->pid, SIGTERM);
	code = proc_wait_exit(p, PROC_STOP_TIMEOUT_MS);
	if (p->pid > 0) {
		char *tail = proc_log_tail(p, TAIL_LINES);
		proc_kill(p);
		ck_abort_msg("proc: %s did not exit within %d ms of SIGTERM; log:\n%s", p->program,
			     PROC_STOP_TIMEOUT_MS, tail);
	}
	return code;
}

void
proc_restart(struct proc *p)
{
	int code = proc_stop(p);

	ck_assert_msg(code == 0, "proc: %s exited %d on SIGTERM; log:\n%s", p->program, code,
		      proc_log_tail(p, TAIL_LINES));
	proc_start(p);
}

void
proc_kill(struct proc *p)
{
	if (p->pid <= 0)
		return;
	kill(p->pid, SIGKILL);
	reap(p, 0);
}

void
proc_signal(struct proc *p, int sig)
{
	ck_assert_msg(p->pid > 0, "proc: %s is not running", p->program);
	ck_assert_int_eq(kill(p->pid, sig), 0);
}

bool
proc_running(struct proc *p)
{
	reap(p, WNOHANG);
	return p->pid > 0;
}

pid_t
proc_pid(const struct proc *p)
{
	return p->pid;
}

/* ---- paths and the log --------------------------------------------------------------- */

const char *
proc_program(const struct proc *p)
{
	return p->program;
}

const char *
proc_dir(const struct proc *p)
{
	return p->dir;
}

const char *
proc_config_path(const struct proc *p)
{
	return p->config_path;
}

const char *
proc_log_path(const struct proc *p)
{
	return p->log_path;
}

char *
proc_log(const struct proc *p)
{
	return fixture_read_file(p->log_path);
}

char *
proc_log_tail(const struct proc *p, int n)
{
	return fixture_file_tail(p->log_path, n);
}

int
proc_log_count(const struct proc *p, const char *needle)
{
	char *all = proc_log(p);
	int n = 0;

	for (const char *s = all; (s = strstr(s, needle)) != NULL; s += strlen(needle))
		n++;
	free(all);
	return n;
}

bool
proc_log_contains(const struct proc *p, const char *needle)
{
	return proc_log_count(p, needle) > 0;
}

bool
proc_wait_log(struct proc *p, const char *needle, int times, int timeout_ms)
{
	long long deadline = proc_now_ms() + timeout_ms;

	for (;;) {
		if (proc_log_count(p, needle) >= times)
			return true;
		if (proc_now_ms() > deadline)
			return false;
		usleep(20000);
	}
}

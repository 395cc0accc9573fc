/* proc.c - a socketless daemon as a child process, for tests (see proc.h). */
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
#define MAX_ENV 16
#define TAIL_LINES 40

struct proc_kv {
	char *section, *key, *value;
};

struct proc {
	char program[512];
	char *dir;
	char config_path[128], log_path[128], notify_path[128];
	struct proc_kv keys[MAX_KEYS];
	int nkeys;
	char *env[MAX_ENV];	/* "NAME=VALUE" */
	int nenv;
	pid_t pid;
	int notify_fd;
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
};

long long
proc_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Procs alive in this process, killed at exit(). */
static struct proc *live[16];
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

static void *drainer_main(void *arg);

struct proc *
proc_new(const char *program)
{
	struct proc *p = calloc(1, sizeof(*p));
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	ck_assert_ptr_nonnull(p);
	snprintf(p->program, sizeof(p->program), "%s", fixture_bin(program));
	p->dir = fixture_tmpdir();
	snprintf(p->config_path, sizeof(p->config_path), "%s/cqrs.conf", p->dir);
	snprintf(p->log_path, sizeof(p->log_path), "%s/proc.log", p->dir);
	snprintf(p->notify_path, sizeof(p->notify_path), "%s/notify", p->dir);
	p->notes = strdup("");
	ck_assert_ptr_nonnull(p->notes);
	p->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	ck_assert_int_ge(p->notify_fd, 0);
	memcpy(sa.sun_path, p->notify_path, strlen(p->notify_path) + 1);
	if (bind(p->notify_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		ck_abort_msg("proc: bind %s: %s", p->notify_path, strerror(errno));
	pthread_mutex_init(&p->mu, NULL);
	ck_assert_int_eq(pipe2(p->wake, O_CLOEXEC), 0);
	ck_assert_int_eq(pthread_create(&p->drainer, NULL, drainer_main, p), 0);
	proc_set(p, "log", "level", "info");
	return p;
}

void
proc_free(struct proc *p)
{
	if (p == NULL)
		return;
	proc_kill(p);
	track(p, false);
	ck_assert_int_eq(write(p->wake[1], "x", 1), 1);
	pthread_join(p->drainer, NULL);
	close(p->wake[0]);
	close(p->wake[1]);
	pthread_mutex_destroy(&p->mu);
	close(p->notify_fd);
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
	for (int i = 0; i < p->nenv; i++)
		free(p->env[i]);
	free(p->notes);
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
		p->keys[i].value = value;
		return;
	}
	if (value == NULL)
		return;
	ck_assert_int_lt(p->nkeys, MAX_KEYS);
	p->keys[i].section = strdup(section);
	p->keys[i].key = strdup(key);
	p->keys[i].value = value;
	ck_assert(p->keys[i].section != NULL && p->keys[i].key != NULL);
	p->nkeys++;
}

void
proc_setenv(struct proc *p, const char *name, const char *value)
{
	ck_assert_int_lt(p->nenv, MAX_ENV);
	ck_assert_int_ge(asprintf(&p->env[p->nenv], "%s=%s", name, value), 0);
	p->nenv++;
}

static void
write_config(struct proc *p)
{
	FILE *f = fopen(p->config_path, "w");

	if (f == NULL)
		ck_abort_msg("proc: cannot write %s: %s", p->config_path, strerror(errno));
	fprintf(f, "# written by tests/lib/proc.c\n");
	for (int i = 0; i < p->nkeys; i++) {
		bool seen = false;
		for (int j = 0; j < i; j++)
			seen = seen || strcmp(p->keys[j].section, p->keys[i].section) == 0;
		if (seen)
			continue;
		fprintf(f, "\n[%s]\n", p->keys[i].section);
		for (int j = i; j < p->nkeys; j++)
			if (strcmp(p->keys[j].section, p->keys[i].section) == 0 &&
			    p->keys[j].value != NULL)
				fprintf(f, "%s = %s\n", p->keys[j].key, p->keys[j].value);
	}
	if (fclose(f) != 0)
		ck_abort_msg("proc: writing %s: %s", p->config_path, strerror(errno));
}

static void
drain_notify(struct proc *p)
{
	char buf[4096];
	ssize_t n;

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

bool
proc_notified(struct proc *p, const char *needle)
{
	bool found;

	drain_notify(p);
	pthread_mutex_lock(&p->mu);
	found = strstr(p->notes, needle) != NULL;
	pthread_mutex_unlock(&p->mu);
	return found;
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

void
proc_spawn(struct proc *p)
{
	char *argv[4];
	int logfd;
	pid_t pid;
	char mark[700];
	int n;

	ck_assert_msg(p->pid == 0, "proc: %s is already running", p->program);
	if (access(p->program, X_OK) != 0)
		ck_abort_msg("proc: %s is not built (%s)", p->program, strerror(errno));
	write_config(p);
	drain_notify(p);
	pthread_mutex_lock(&p->mu);
	p->notes_mark = p->notes_len;
	pthread_mutex_unlock(&p->mu);
	logfd = open(p->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	ck_assert_int_ge(logfd, 0);
	n = snprintf(mark, sizeof(mark), "==== tests/lib/proc.c: starting %s -c %s\n", p->program,
		     p->config_path);
	ck_assert_int_eq(write(logfd, mark, (size_t)n), n);
	argv[0] = p->program;
	argv[1] = (char *)"-c";
	argv[2] = p->config_path;
	argv[3] = NULL;
	fflush(NULL);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int nullfd = open("/dev/null", O_RDONLY);
		if (nullfd < 0 || dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
			_exit(126);
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		setenv("NOTIFY_SOCKET", p->notify_path, 1);
		for (int i = 0; i < p->nenv; i++)
			putenv(p->env[i]);
		signal(SIGPIPE, SIG_DFL);
		if (getenv("CQRS_TEST_VALGRIND") != NULL) {
			/* memory errors and leaks make the exit status 97, and
			 * the report goes to DIR/valgrind.PID */
			char logopt[200];
			char *vargv[] = { (char *)"valgrind", (char *)"--leak-check=full",
					  (char *)"--errors-for-leak-kinds=definite,indirect",
					  (char *)"--error-exitcode=97", logopt, p->program,
					  (char *)"-c", p->config_path, NULL };
			snprintf(logopt, sizeof(logopt), "--log-file=%s/valgrind.%%p", p->dir);
			execvp("valgrind", vargv);
		}
		execv(p->program, argv);
		dprintf(2, "proc: exec %s: %s\n", p->program, strerror(errno));
		_exit(127);
	}
	close(logfd);
	p->pid = pid;
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

/* Reaps it if it exited: its status, or -1 while it runs. */
static int
reap(struct proc *p, int flags)
{
	int status;
	pid_t r;

	if (p->pid <= 0)
		return -1;
	do
		r = waitpid(p->pid, &status, flags);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return -1;
	p->pid = 0;
	track(p, false);
	return r < 0 ? -1 : exit_code(status);
}

bool
proc_wait_ready(struct proc *p, int timeout_ms)
{
	long long deadline = proc_now_ms() + timeout_ms;

	for (;;) {
		bool ready;
		drain_notify(p);
		pthread_mutex_lock(&p->mu);
		ready = strstr(p->notes + p->notes_mark, "READY=1") != NULL;
		pthread_mutex_unlock(&p->mu);
		if (ready)
			return true;
		if (p->pid > 0)
			reap(p, WNOHANG);
		if (p->pid == 0 || proc_now_ms() > deadline)
			return false;
		usleep(10000);
	}
}

void
proc_start(struct proc *p)
{
	proc_spawn(p);
	if (!proc_wait_ready(p, PROC_START_TIMEOUT_MS)) {
		char *tail = proc_log_tail(p, TAIL_LINES);
		ck_abort_msg("proc: %s %s within %d ms; log:\n%s", p->program,
			     p->pid == 0 ? "exited before READY=1" : "sent no READY=1",
			     PROC_START_TIMEOUT_MS, tail);
	}
}

int
proc_wait_exit(struct proc *p, int timeout_ms)
{
	long long deadline = proc_now_ms() + timeout_ms;

	for (;;) {
		int code = reap(p, WNOHANG);
		if (p->pid == 0)
			return code;
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
	if (code < 0) {
		char *tail = proc_log_tail(p, TAIL_LINES);
		proc_kill(p);
		ck_abort_msg("proc: %s did not exit within %d ms of SIGTERM; log:\n%s", p->program,
			     PROC_STOP_TIMEOUT_MS, tail);
	}
	return code;
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

/*
 * proc.h - a program of the suite as a child process, for integration tests:
 * generated config, environment, arguments, a readiness condition, log,
 * SIGTERM with a deadline, kill -9, restart.
 *
 *   struct proc *p = proc_new("cqrs-tracker");   // ready means READY=1
 *   proc_set(p, "store", "conninfo", "%s", conninfo);
 *   proc_start(p);                    // fails the test (with the log's tail) if not ready
 *   proc_wait_log(p, "active:", 1, 10000);
 *   ck_assert_int_eq(proc_stop(p), 0);
 *   proc_free(p);
 *
 * What "ready" means is the test's choice, given to proc_new_ready():
 * READY=1 (or another message) on a private NOTIFY_SOCKET, a Unix socket
 * that accepts connections, or a line in the log since this start.
 * tests/lib/daemon.c (cqrs-cmdd, ready when its command socket accepts) and
 * tests/lib/consumer_fixture.c (cqrs-consumer, ready when its log says it is
 * live) are thin layers on this one.
 *
 * Each proc has a fresh temporary directory with its config (DIR/cqrs.conf,
 * written at each start), its stdout and stderr (DIR/PROGRAM.log, appended
 * across restarts, each start marked by a "==== tests/lib/proc.c: starting"
 * line) and, when it uses one, its notify socket (DIR/notify). It runs as
 * `PROGRAM -c DIR/cqrs.conf [args]` in the test's process group (Check kills
 * the group after each test); processes still running at exit() are killed.
 * Every function fails the test rather than returning an error, unless it
 * says otherwise.
 *
 * With CQRS_TEST_VALGRIND set (not empty) in the environment, the program
 * runs under valgrind (leak check; exit status 97 on an error or a leak,
 * report in DIR/valgrind.PID). CQRS_TEST_KEEP keeps the directory.
 */
#ifndef CQRS_TEST_PROC_H
#define CQRS_TEST_PROC_H

#include <stdbool.h>
#include <sys/types.h>

#define PROC_START_TIMEOUT_MS 30000
#define PROC_STOP_TIMEOUT_MS 40000

/* When a started proc counts as ready. */
enum proc_ready_kind {
	PROC_READY_NOTIFY,	/* an sd_notify message since this start contains arg
				 * ("READY=1"); the proc gets a NOTIFY_SOCKET */
	PROC_READY_SOCKET,	/* the Unix socket at path arg (relative: in the
				 * proc's directory) accepts a connection */
	PROC_READY_LOG,		/* the log since this start contains arg */
};

struct proc_ready {
	enum proc_ready_kind kind;
	const char *arg;	/* copied by proc_new_ready() */
};

struct proc;

/* A proc of fixture_bin(program), not started, ready on READY=1; its config
 * [log] level = info. */
struct proc *proc_new(const char *program);

/* The same with another readiness condition. */
struct proc *proc_new_ready(const char *program, struct proc_ready ready);

/* Changes it for the next starts. */
void proc_set_ready(struct proc *p, struct proc_ready ready);

/* Kills it if it runs and removes its directory (kept when CQRS_TEST_KEEP
 * is set). NULL is a no-op. */
void proc_free(struct proc *p);

/* Sets section.key for the next start (replacing it); a NULL fmt removes it.
 * Sections are written in order of first appearance. */
void proc_set(struct proc *p, const char *section, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Raw text written after the keys (a config given whole, or a bad file). */
void proc_config_append(struct proc *p, const char *text);
/* Replaces that text. */
void proc_config_text(struct proc *p, const char *text);

/* Writes the config file now (each start does it too). */
void proc_write_config(struct proc *p);

/* An environment variable for the next starts (value NULL: unset in the
 * child); replaces an earlier value. */
void proc_setenv(struct proc *p, const char *name, const char *value);

/* An extra command-line argument (after -c FILE) for the next starts. */
void proc_add_arg(struct proc *p, const char *arg);
void proc_clear_args(struct proc *p);

/* Gives it a NOTIFY_SOCKET (DIR/notify) from the next start, whatever its
 * readiness condition; procs ready on a notification have one already. */
void proc_use_notify(struct proc *p);

/* Starts it and waits until it is ready; fails the test (with its exit
 * status and the log's tail) if it exits first or is not ready within
 * PROC_START_TIMEOUT_MS. */
void proc_start(struct proc *p);

/* Starts it without waiting. */
void proc_spawn(struct proc *p);

/* Waits up to timeout_ms until it is ready since the last start; false if it
 * exited first or the time ran out. */
bool proc_wait_ready(struct proc *p, int timeout_ms);

/* Starts it and waits for it to exit by itself (a program that must refuse
 * to start): its exit status. Fails the test (and kills it) if it still runs
 * after timeout_ms. */
int proc_run(struct proc *p, int timeout_ms);

/* SIGTERM and wait; the exit status (128 + signal). Fails the test if it
 * is not running, or (after SIGKILL) if it does not exit within
 * PROC_STOP_TIMEOUT_MS. */
int proc_stop(struct proc *p);

/* proc_stop(), which must give 0, then proc_start(). */
void proc_restart(struct proc *p);

/* SIGKILL and reap; a no-op when it does not run. */
void proc_kill(struct proc *p);

/* Sends sig without waiting; fails the test if it does not run. */
void proc_signal(struct proc *p, int sig);

/* Waits up to timeout_ms for it to exit: its status, also when it exited
 * (and was reaped) before; -1 if it still runs or never ran. */
int proc_wait_exit(struct proc *p, int timeout_ms);

/* Whether it is alive (reaps it when it is not). */
bool proc_running(struct proc *p);
pid_t proc_pid(const struct proc *p);

/* Whether an sd_notify message received so far (all runs) contains needle
 * ("READY=1", "STATUS=standby"). */
bool proc_notified(struct proc *p, const char *needle);
/* Waits up to timeout_ms for such a message. */
bool proc_wait_notified(struct proc *p, const char *needle, int timeout_ms);
/* The messages of the current (or last) run, each followed by a newline.
 * Borrowed until the next call or proc_free(). */
const char *proc_notifications(struct proc *p);

/* Paths, borrowed for the proc's life. */
const char *proc_program(const struct proc *p);
const char *proc_dir(const struct proc *p);
const char *proc_config_path(const struct proc *p);
const char *proc_log_path(const struct proc *p);

/* The whole log (malloc'd); its last n lines (malloc'd). */
char *proc_log(const struct proc *p);
char *proc_log_tail(const struct proc *p, int n);
bool proc_log_contains(const struct proc *p, const char *needle);
/* How many times needle occurs in the log. */
int proc_log_count(const struct proc *p, const char *needle);

/* Waits up to timeout_ms until the log contains needle at least `times`
 * times in all (1: once). */
bool proc_wait_log(struct proc *p, const char *needle, int times, int timeout_ms);

/* Milliseconds on a monotonic clock, for test deadlines. */
long long proc_now_ms(void);

#endif

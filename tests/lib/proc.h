/*
 * proc.h - a daemon without a command socket (cqrs-tracker) as a child
 * process, for integration tests: generated config, sd_notify READY, log,
 * SIGTERM, kill -9, restart.
 *
 *   struct proc *p = proc_new("cqrs-tracker");
 *   proc_set(p, "store", "conninfo", "%s", conninfo);
 *   proc_start(p);                    // waits for READY=1 (fails the test if not)
 *   proc_wait_log(p, "active:", 10000);
 *   ck_assert_int_eq(proc_stop(p), 0);
 *   proc_free(p);
 *
 * (tests/lib/daemon.c starts daemons that listen on a socket and waits for
 * that socket; this one waits for READY=1 on a private NOTIFY_SOCKET.)
 *
 * Each proc has a fresh temporary directory with its config (DIR/cqrs.conf),
 * its stdout and stderr (DIR/proc.log, appended across restarts) and its
 * notify socket. Every function fails the test rather than returning an error,
 * unless it says otherwise. Processes still running at exit() are killed.
 *
 * With CQRS_TEST_VALGRIND set in the environment, the program runs under
 * valgrind (leak check; exit status 97 on an error or a leak, report in
 * DIR/valgrind.PID; keep it with CQRS_TEST_KEEP).
 */
#ifndef CQRS_TEST_PROC_H
#define CQRS_TEST_PROC_H

#include <stdbool.h>
#include <sys/types.h>

#define PROC_START_TIMEOUT_MS 20000
#define PROC_STOP_TIMEOUT_MS 40000

struct proc;

/* A proc of fixture_bin(program), not started; config [log] level = info. */
struct proc *proc_new(const char *program);

/* Kills it if it runs and removes its directory (kept when CQRS_TEST_KEEP
 * is set). NULL is a no-op. */
void proc_free(struct proc *p);

/* Sets section.key for the next start; a NULL fmt removes it. */
void proc_set(struct proc *p, const char *section, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* An environment variable for the next starts. */
void proc_setenv(struct proc *p, const char *name, const char *value);

/* Starts it and waits for READY=1; fails the test (with the log's tail) if
 * it exits or is not ready within PROC_START_TIMEOUT_MS. */
void proc_start(struct proc *p);

/* Starts it without waiting. */
void proc_spawn(struct proc *p);

/* Waits up to timeout_ms for READY=1 since the last start; false if none. */
bool proc_wait_ready(struct proc *p, int timeout_ms);

/* SIGTERM and wait; the exit status (128 + signal). Fails the test if it
 * does not exit within PROC_STOP_TIMEOUT_MS. */
int proc_stop(struct proc *p);

/* SIGKILL and reap. */
void proc_kill(struct proc *p);

/* Sends sig without waiting. */
void proc_signal(struct proc *p, int sig);

/* Waits up to timeout_ms for it to exit: its status, or -1 if it still runs. */
int proc_wait_exit(struct proc *p, int timeout_ms);

bool proc_running(struct proc *p);
pid_t proc_pid(const struct proc *p);

/* Whether an sd_notify message received so far contains needle
 * ("READY=1", "STATUS=standby"). */
bool proc_notified(struct proc *p, const char *needle);
/* Waits up to timeout_ms for such a message. */
bool proc_wait_notified(struct proc *p, const char *needle, int timeout_ms);

/* Paths, borrowed. */
const char *proc_dir(const struct proc *p);
const char *proc_config_path(const struct proc *p);

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

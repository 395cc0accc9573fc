/*
 * daemon.h - a daemon binary as a child process, for integration tests.
 *
 *   struct daemon *d = daemon_new("cqrs-cmdd", conninfo);
 *   daemon_set(d, "cmd", "plugins", "%s", fixture_plugin("bank"));
 *   daemon_start(d);                  // fails the test with its log's tail
 *   char *answer = daemon_call(d, "{\"command\":...}");
 *   ck_assert_int_eq(daemon_stop(d), 0);
 *   daemon_free(d);
 *
 * The process is a tests/lib/proc.h proc (daemon_proc() gives it): a fresh
 * short temporary directory holds its config file (DIR/cqrs.conf), its
 * stderr and stdout (DIR/PROGRAM.log, appended across restarts), and its
 * socket (DIR/cmd.sock). It is started as `PROGRAM -c DIR/cqrs.conf [extra
 * args]`, in the test's process group (Check kills the group after each
 * test, so a failed test leaves no daemon behind). Every function fails the
 * test (ck_abort) rather than returning an error, unless it says otherwise.
 *
 * Also here: a tiny line client for the command socket with timeouts, which
 * can do what a well-behaved client would not (half lines, raw bytes), and
 * a few helpers to look at JSON answers.
 */
#ifndef CQRS_TEST_DAEMON_H
#define CQRS_TEST_DAEMON_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#include "proc.h"

struct json_object;

/* Default wait for a daemon to come up or to stop, and for one answer. */
#define DAEMON_START_TIMEOUT_MS PROC_START_TIMEOUT_MS
#define DAEMON_STOP_TIMEOUT_MS PROC_STOP_TIMEOUT_MS
#define DAEMON_RECV_TIMEOUT_MS 30000

struct daemon;

/*
 * A daemon of fixture_bin(program), not started. Its config begins as
 *   [log]   level = info
 *   [store] conninfo = CONNINFO      (omitted when conninfo is NULL)
 *   [cmd]   socket = DIR/cmd.sock
 */
struct daemon *daemon_new(const char *program, const char *conninfo);

/* Kills the daemon if it runs (SIGKILL), removes its directory (kept when
 * CQRS_TEST_KEEP is set). NULL is a no-op. */
void daemon_free(struct daemon *d);

/* Its process, for what tests/lib/proc.h offers beyond what is here.
 * Borrowed. */
struct proc *daemon_proc(struct daemon *d);

/* Sets section.key (replacing it); a NULL fmt removes the key. Written to
 * the config file at the next start. */
void daemon_set(struct daemon *d, const char *section, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Environment for the next starts (value NULL: unset it in the child). */
void daemon_setenv(struct daemon *d, const char *name, const char *value);

/* An extra command-line argument (after -c FILE). */
void daemon_add_arg(struct daemon *d, const char *arg);

/*
 * Use a NOTIFY_SOCKET (DIR/notify): daemon_start() then waits for READY=1
 * instead of polling the command socket, and fails if the socket does not
 * accept connections once READY=1 has come.
 */
void daemon_use_notify(struct daemon *d);

/* The sd_notify messages of the current (or last) run, each followed by
 * a newline. Borrowed until the next call. */
const char *daemon_notifications(struct daemon *d);

/*
 * Writes the config, starts the daemon, and waits until its socket accepts
 * connections (or READY=1 with daemon_use_notify()). Fails the test with the
 * exit status and the last lines of the log when it exits or is not ready
 * within DAEMON_START_TIMEOUT_MS.
 */
void daemon_start(struct daemon *d);

/* Starts it and waits for it to exit by itself (a daemon that must refuse to
 * start). Returns the exit status (128 + signal when killed). Fails the test
 * if it still runs after timeout_ms (and kills it). */
int daemon_run(struct daemon *d, int timeout_ms);

/* SIGTERM, then waits for the exit (failing the test after
 * DAEMON_STOP_TIMEOUT_MS). Returns the exit status (128 + signal). */
int daemon_stop(struct daemon *d);

/* Sends sig without waiting. */
void daemon_signal(struct daemon *d, int sig);

/* Waits up to timeout_ms for an exit that was asked for: its status, or -1
 * on timeout. */
int daemon_wait(struct daemon *d, int timeout_ms);

/* SIGKILL and reap. */
void daemon_kill(struct daemon *d);

/* daemon_stop() (which must give 0) then daemon_start(). */
void daemon_restart(struct daemon *d);

/* Whether the process is alive (reaps it when it is not). */
bool daemon_running(struct daemon *d);
pid_t daemon_pid(const struct daemon *d);

/* Paths, borrowed for the daemon's life. */
const char *daemon_dir(const struct daemon *d);
const char *daemon_socket(const struct daemon *d);
const char *daemon_config_path(const struct daemon *d);

/* The whole log (malloc'd), or its last n lines. */
char *daemon_log(const struct daemon *d);
char *daemon_log_tail(const struct daemon *d, int n);
/* Waits up to timeout_ms for needle in the log (a line written after
 * readiness, such as the metrics address). */
bool daemon_wait_log(struct daemon *d, const char *needle, int timeout_ms);

/* ---- client ------------------------------------------------------------------------ */

struct daemon_conn;

/* Connects to a Unix socket path / to a started daemon. */
struct daemon_conn *daemon_conn_open(const char *path);
struct daemon_conn *daemon_connect(const struct daemon *d);
/* Connects, or returns NULL with errno set. */
struct daemon_conn *daemon_conn_try_open(const char *path);
void daemon_conn_close(struct daemon_conn *c);
int daemon_conn_fd(const struct daemon_conn *c);

/* Writes all of buf (fails the test on error or after 30 s). */
void daemon_conn_write(struct daemon_conn *c, const void *buf, size_t len);
/* Same, returning 0 or -errno (EPIPE, ECONNRESET) instead of failing. */
int daemon_conn_try_write(struct daemon_conn *c, const void *buf, size_t len);
/* Writes line and '\n'. */
void daemon_conn_send(struct daemon_conn *c, const char *line);

/*
 * The next answer line without its '\n', malloc'd; NULL when the daemon
 * closed the connection (EOF or reset) first. Fails the test on timeout.
 */
char *daemon_conn_recv(struct daemon_conn *c, int timeout_ms);

/* Like daemon_conn_recv() but *timed_out is set instead of failing. */
char *daemon_conn_try_recv(struct daemon_conn *c, int timeout_ms, bool *timed_out);

/* Waits for the daemon to close the connection: true if it did within
 * timeout_ms with no further line, false on timeout. A line fails the test. */
bool daemon_conn_wait_closed(struct daemon_conn *c, int timeout_ms);

/* Sends line, returns its answer (malloc'd). Fails the test on EOF. */
char *daemon_conn_call(struct daemon_conn *c, const char *line);

/*
 * Pipelines n lines (each gets a '\n'), writing while reading so neither
 * side's buffers fill up, and returns the n answers (malloc'd array of
 * malloc'd strings; free with daemon_lines_free). Fails the test if the
 * connection closes or stalls for timeout_ms before n answers.
 */
char **daemon_conn_pipeline(struct daemon_conn *c, const char *const *lines, size_t n,
			    int timeout_ms);
void daemon_lines_free(char **lines, size_t n);

/* One connection, one exchange. */
char *daemon_call(const struct daemon *d, const char *line);

/* ---- answers ----------------------------------------------------------------------- */

/* Parses an answer line; fails the test unless it is a JSON object. Owned. */
struct json_object *daemon_json(const char *line);

/* Field lookups on an object (borrowed results, NULL when absent). */
struct json_object *daemon_jget(struct json_object *o, const char *path);
/* String at a dotted path ("error.code"), or NULL when absent or not a string. */
const char *daemon_jstr(struct json_object *o, const char *path);

/* Whether line is {"ok":true,...} / {"ok":false,"error":{"code":CODE,...}}
 * with a non-empty message. NULL (connection closed) is neither. */
bool daemon_answer_ok(const char *line);
bool daemon_answer_error(const char *line, const char *code);
/* An integer at a dotted path of an answer ("version", "events.0.position"),
 * or INT64_MIN when absent or not an integer. */
long long daemon_answer_int(const char *line, const char *path);
/* A string at a dotted path, malloc'd (freed by daemon_gc_run), or NULL. */
char *daemon_answer_str(const char *line, const char *path);

#define DAEMON_ASSERT_OK(line)                                                         \
	do {                                                                            \
		const char *da_line_ = (const char *)(line);                            \
		ck_assert_msg(daemon_answer_ok(da_line_), "expected an ok answer, got %s", \
			      da_line_ ? da_line_ : "(connection closed)");             \
	} while (0)
#define DAEMON_ASSERT_ERROR(line, code)                                                \
	do {                                                                            \
		const char *da_line_ = (const char *)(line);                            \
		ck_assert_msg(daemon_answer_error(da_line_, code),                      \
			      "expected error \"%s\", got %s", (code),                  \
			      da_line_ ? da_line_ : "(connection closed)");             \
	} while (0)

/* ---- cmdd conveniences ------------------------------------------------------------- */

/*
 * A cqrs-cmdd (not started) on conninfo with the plugins named (space-
 * separated names under build/plugins, "bank other"; NULL: none), log level
 * info.
 */
struct daemon *daemon_new_cmdd(const char *conninfo, const char *plugins);

/*
 * Starts d with /health and /metrics on 127.0.0.1 (a port of the kernel's
 * choosing) and returns that port, once /health says 200 (a store
 * connection is up). Fails the test after 10 s.
 */
uint16_t daemon_start_http(struct daemon *d);

/* asprintf that fails the test; the result is freed by daemon_gc_run(). */
char *daemon_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Frees p (malloc'd) at the next daemon_gc_run(); returns p. */
void *daemon_gc(void *p);
/* Frees what daemon_gc() and daemon_fmt() collected. Call it from a checked
 * teardown so sanitizer builds see no leaks. */
void daemon_gc_run(void);

#endif

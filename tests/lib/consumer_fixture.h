/*
 * consumer_fixture.h - cqrs-consumer processes and queue helpers for the
 * consumer's integration tests.
 *
 *   struct cons *c = cons_new("projections", config_text);
 *   cons_start(c);                        // waits for "live: consuming"
 *   cons_wait_log(c, "dead-lettered", 1, 10000);
 *   ck_assert_int_eq(cons_stop(c), 0);    // SIGTERM, exit status
 *   cons_free(c);
 *
 * A cons is a tests/lib/proc.h proc (cons_proc() gives it) that is ready
 * when its log says "live: consuming" since this start: a fresh temporary
 * directory with the config file given (DIR/cqrs.conf, written at once and
 * at each start) and the process's stdout and stderr
 * (DIR/cqrs-consumer.log, appended across restarts). It runs `cqrs-consumer
 * -c DIR/cqrs.conf -n NAME [args]` in the test's process group; processes
 * still running at exit() are killed. Every function fails the test rather
 * than returning an error, unless it says otherwise.
 */
#ifndef CQRS_TEST_CONSUMER_FIXTURE_H
#define CQRS_TEST_CONSUMER_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proc.h"

#define CONS_START_TIMEOUT_MS PROC_START_TIMEOUT_MS
#define CONS_STOP_TIMEOUT_MS PROC_STOP_TIMEOUT_MS

struct cons;

struct cons *cons_new(const char *name, const char *config_text);
void cons_free(struct cons *c);

/* Its process, for what tests/lib/proc.h offers beyond what is here.
 * Borrowed. */
struct proc *cons_proc(struct cons *c);

/* An extra argument after -c FILE -n NAME for the next starts ("--replay"). */
void cons_add_arg(struct cons *c, const char *arg);

/* Starts it and waits until its log says it is live (consuming its queue),
 * since this start; fails the test with the log's tail otherwise. */
void cons_start(struct cons *c);
/* Starts it without waiting. */
void cons_spawn(struct cons *c);
/* SIGTERM and wait: the exit status (128 + signal); one that exited already
 * gives its status. */
int cons_stop(struct cons *c);
void cons_kill(struct cons *c);
/* Sends sig when it runs. */
void cons_signal(struct cons *c, int sig);
/* Its status when it exited (now or before) within timeout_ms, else -1. */
int cons_wait_exit(struct cons *c, int timeout_ms);
bool cons_running(struct cons *c);

char *cons_log(const struct cons *c);			/* malloc'd */
char *cons_log_tail(const struct cons *c, int lines);	/* malloc'd */
int cons_log_count(const struct cons *c, const char *needle);
/* Waits until needle occurs `times` times in the whole log. */
bool cons_wait_log(struct cons *c, const char *needle, int times, int timeout_ms);

/* GET path from the consumer's HTTP endpoint (the address its log names:
 * "serving /health and /metrics on http://HOST:PORT/"); the whole answer,
 * status line and headers included (malloc'd). */
char *cons_http_get(const struct cons *c, const char *path);

/* "build/bin/cqrsctl -c FILE ARGS" of this cons's config: exit status, and
 * the output (stdout and stderr, malloc'd) in *out when not NULL. */
int cons_ctl(const struct cons *c, const char *args, char **out);

/* ---- queues ------------------------------------------------------------------------ */

/* A name unique to this test run: "cqrs.t.PID.N.what". Static buffer. */
const char *cons_unique_queue(const char *what);

/* Publishes body to queue through the default exchange, as the tracker would
 * publish it (persistent, message_id, type, headers stream/version/position),
 * and waits for the broker's confirm. */
void cons_publish(const char *queue, const char *body, const char *message_id,
		  const char *type, const char *stream, int64_t version, int64_t position);

/* Messages ready in queue (passive declare); -1 when it does not exist. */
long cons_queue_depth(const char *queue);

/* Polls it until it is want, up to timeout_ms: the last depth seen (the
 * tracker publishes, and the broker requeues a closed channel's deliveries,
 * on their own time). */
long cons_wait_queue_depth(const char *queue, long want, int timeout_ms);

/* Removes the binding of queue to exchange with key (the topology an
 * operator broke); fails the test when the broker refuses. */
void cons_unbind(const char *queue, const char *exchange, const char *key);

/* Deletes queue alone (not QUEUE.dead); fails the test when the broker
 * refuses. */
void cons_delete_queue(const char *queue);

/* Deletes queue (and QUEUE.dead); missing ones are fine. */
void cons_delete_queues(const char *queue);

/* ---- configuration and the store ----------------------------------------------------- */

/*
 * A config file's text (malloc'd): [store] conninfo, [broker] url of the test
 * node, [cmd] socket (when not NULL), [log] level = info, then `more` (the
 * [consumer.*] sections) verbatim.
 */
char *cons_config(const char *conninfo, const char *cmd_socket, const char *more);

/* Appends one event (type, data JSON) to stream; its version, or fails. */
long cons_append(const char *conninfo, const char *stream, const char *type, const char *data);

/* The first column of the first row as an integer; -1 when the query fails
 * (a table not created yet) or returns no row. */
long long cons_query_int(const char *conninfo, const char *sql);

/* Waits until sql gives at least want; the last value. */
long long cons_wait_query(const char *conninfo, const char *sql, long long want, int timeout_ms);

/* ---- tests/plugins/poison ------------------------------------------------------------ */

/* Rows of poison_applied (0 before the table exists). */
long long cons_poison_count(const char *conninfo);
/* Waits (30 s) until exactly want rows; fails with c's log otherwise. */
void cons_poison_wait(struct cons *c, const char *conninfo, long long want);
/*
 * Every event of the store in streams poison-1..poison-N whose version is at
 * most upto[k - 1] (upto NULL: all) was applied exactly once, in version
 * order, and nothing else was.
 */
void cons_poison_check(const char *conninfo, const int *upto, int nstreams);

#endif

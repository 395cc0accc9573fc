/*
 * cmdclient.h - a small client for cqrs-cmdd's command socket (DESIGN.md,
 * "Command protocol"): one JSON request per line out, one answer per line
 * back, in request order.
 *
 * Two ways to use it:
 *
 *   Blocking, one request at a time (process managers, scripts):
 *     cqrs_cmdclient_connect() -> cqrs_cmdclient_call() ... -> cqrs_cmdclient_free()
 *
 *   Pipelined (cqrsctl send -): queue request bytes with cqrs_cmdclient_queue(),
 *   poll() cqrs_cmdclient_fd() for POLLOUT while cqrs_cmdclient_queued() > 0 and for
 *   POLLIN always, then call cqrs_cmdclient_flush() / cqrs_cmdclient_fill() and take
 *   complete answers with cqrs_cmdclient_next_line(). Nothing here blocks.
 *
 * The socket is non-blocking; the blocking calls wait with poll() up to
 * their timeout (milliseconds, < 0 waits forever). Writes use MSG_NOSIGNAL,
 * so a daemon that goes away never raises SIGPIPE in the caller.
 *
 * Errors (all with a message naming the socket path):
 *   CQRS_EUNAVAILABLE  cannot connect, connection closed or reset, timeout:
 *                      the outcome of requests in flight is unknown; resend
 *                      them with the same id on a new connection to learn it
 *   CQRS_ETOOLARGE     an answer line is over the limit (cqrs_cmdclient_set_max_line)
 *   CQRS_EINVALID      the path does not fit a Unix socket address
 *   CQRS_ENOMEM
 * After any error other than CQRS_EINVALID the connection is unusable:
 * free it and connect again.
 *
 * A struct cmdclient is used from one thread at a time.
 */
#ifndef CQRS_CMDCLIENT_H
#define CQRS_CMDCLIENT_H

#include <stddef.h>

#include "cqrs/err.h"

#define CMDCLIENT_DEFAULT_SOCKET "/run/cqrs/cmd.sock"
#define CMDCLIENT_DEFAULT_MAX_LINE ((size_t)16 << 20)	/* 16 MiB */

struct cmdclient;

/*
 * Connects to the Unix socket at path (copied), waiting up to timeout_ms
 * when the daemon's accept backlog is full. On success *out is owned by the
 * caller: free it with cqrs_cmdclient_free().
 */
int cqrs_cmdclient_connect(const char *path, int timeout_ms, struct cmdclient **out,
		      struct cqrs_err *err) __attribute__((warn_unused_result));

/* Closes the connection; NULL is a no-op. Queued bytes not yet written are
 * dropped. */
void cqrs_cmdclient_free(struct cmdclient *c);

/* The socket, for poll(). Borrowed: do not close it or read from it. */
int cqrs_cmdclient_fd(const struct cmdclient *c);

/* The path given to cqrs_cmdclient_connect() (borrowed). */
const char *cqrs_cmdclient_path(const struct cmdclient *c);

/* Longest answer line accepted, without its '\n' (default 16 MiB). */
void cqrs_cmdclient_set_max_line(struct cmdclient *c, size_t max);

/* ---- blocking ------------------------------------------------------------ */

/* Writes line and a '\n' (added when line does not end with one). */
int cqrs_cmdclient_send(struct cmdclient *c, const char *line, size_t len, int timeout_ms,
		   struct cqrs_err *err) __attribute__((warn_unused_result));

/*
 * Reads the next answer line. *line is NUL-terminated, without the '\n', and
 * borrowed: valid until the next call on c. *len (may be NULL) gets its
 * length.
 */
int cqrs_cmdclient_recv(struct cmdclient *c, int timeout_ms, const char **line, size_t *len,
		   struct cqrs_err *err) __attribute__((warn_unused_result));

/*
 * Sends one request and waits for its answer; timeout_ms bounds the whole
 * exchange. *answer is owned by the caller (free()). Answers to requests
 * queued before are not skipped: call this only with none in flight.
 */
int cqrs_cmdclient_call(struct cmdclient *c, const char *request, int timeout_ms, char **answer,
		   struct cqrs_err *err) __attribute__((warn_unused_result));

/* ---- non-blocking building blocks for pipelining -------------------------- */

/* Appends bytes to the output buffer (copied); no I/O. */
int cqrs_cmdclient_queue(struct cmdclient *c, const char *data, size_t len, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Bytes queued and not yet written. */
size_t cqrs_cmdclient_queued(const struct cmdclient *c);

/* Writes as much of the queue as the socket takes now. */
int cqrs_cmdclient_flush(struct cmdclient *c, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/*
 * Reads what the socket has now into the input buffer. Returns 0 (maybe
 * having read nothing), or CQRS_EUNAVAILABLE once the daemon has closed the
 * connection and every complete line before the close has been taken; a
 * partial last line is then reported in the message.
 */
int cqrs_cmdclient_fill(struct cmdclient *c, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/*
 * Takes the next complete line from the input buffer: returns 1 with *line
 * (borrowed as in cqrs_cmdclient_recv()) and *len, 0 when no complete line is
 * buffered, or CQRS_ETOOLARGE when the partial line is over the limit.
 */
int cqrs_cmdclient_next_line(struct cmdclient *c, const char **line, size_t *len,
			struct cqrs_err *err) __attribute__((warn_unused_result));

#endif

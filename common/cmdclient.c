/* cmdclient.c - a small client for cqrs-cmdd's command socket. */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "cmdclient.h"

/* Bytes asked of each read(2): answers are small, but a 16 MiB one should
 * not take thousands of calls. */
#define READ_CHUNK 65536

struct cmdclient {
	int fd;
	char *path;
	size_t max_line;
	bool eof;		/* the daemon closed its side */

	/* input: in[in_start, in_end) unread; in[in_start, scan) has no '\n' */
	char *in;
	size_t in_start, in_end, in_cap, scan;

	/* output: out[out_start, out_end) not yet written */
	char *out;
	size_t out_start, out_end, out_cap;
};

/* Milliseconds left before deadline (-1: none), for poll(). */
static int
left_ms(int64_t deadline)
{
	int64_t left;

	if (deadline < 0)
		return -1;
	left = deadline - cqrs_now_ms();
	if (left < 0)
		return 0;
	return left > INT32_MAX ? INT32_MAX : (int)left;
}

static int64_t
deadline_after(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : cqrs_now_ms() + timeout_ms;
}

int
cqrs_cmdclient_connect(const char *path, int timeout_ms, struct cmdclient **out,
		  struct cqrs_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct cmdclient *c = NULL;
	int64_t deadline = deadline_after(timeout_ms);
	int rc;

	if (path == NULL || path[0] == '\0')
		return cqrs_err_set(err, CQRS_EINVALID, "command socket path is empty");
	if (strlen(path) >= sizeof(sa.sun_path))
		return cqrs_err_set(err, CQRS_EINVALID,
				    "command socket path \"%s\" is too long (%zu bytes, at most %zu)",
				    path, strlen(path), sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, strlen(path) + 1);

	c = calloc(1, sizeof(*c));
	if (c == NULL || (c->path = strdup(path)) == NULL) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		goto fail;
	}
	c->max_line = CMDCLIENT_DEFAULT_MAX_LINE;
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		rc = cqrs_err_set(err, CQRS_EIO, "socket: %s", strerror(errno));
		goto fail;
	}
	for (;;) {
		if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno == EINPROGRESS) {
			/* not usual for AF_UNIX, but allowed: wait, then ask */
			struct pollfd p = { .fd = c->fd, .events = POLLOUT };
			int soerr = 0;
			socklen_t sl = sizeof(soerr);
			if (poll(&p, 1, left_ms(deadline)) <= 0) {
				rc = cqrs_err_set(err, CQRS_EUNAVAILABLE,
						  "cannot connect to %s: timed out", path);
				goto fail;
			}
			if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr != 0) {
				errno = soerr;
				goto refused;
			}
			break;
		}
		if (errno == EAGAIN) {
			/* the daemon's accept queue is full: it is busy, not gone */
			if (left_ms(deadline) == 0) {
				rc = cqrs_err_set(err, CQRS_EUNAVAILABLE,
						  "cannot connect to %s: the daemon's accept queue "
						  "stayed full", path);
				goto fail;
			}
			usleep(10000);
			continue;
		}
refused:
		rc = cqrs_err_set(err, CQRS_EUNAVAILABLE, "cannot connect to %s: %s%s", path,
				  strerror(errno),
				  (errno == ENOENT || errno == ECONNREFUSED)
					  ? " (is cqrs-cmdd running?)" : "");
		goto fail;
	}
	*out = c;
	return 0;
fail:
	cqrs_cmdclient_free(c);
	return rc;
}

void
cqrs_cmdclient_free(struct cmdclient *c)
{
	if (c == NULL)
		return;
	if (c->fd >= 0)
		close(c->fd);
	free(c->in);
	free(c->out);
	free(c->path);
	free(c);
}

int
cqrs_cmdclient_fd(const struct cmdclient *c)
{
	return c->fd;
}

const char *
cqrs_cmdclient_path(const struct cmdclient *c)
{
	return c->path;
}

void
cqrs_cmdclient_set_max_line(struct cmdclient *c, size_t max)
{
	c->max_line = max;
}

/* ---- output ---------------------------------------------------------------- */

int
cqrs_cmdclient_queue(struct cmdclient *c, const char *data, size_t len, struct cqrs_err *err)
{
	size_t pending = c->out_end - c->out_start;

	if (len == 0)
		return 0;
	if (c->out_start > 0 && c->out_cap - c->out_end < len) {
		memmove(c->out, c->out + c->out_start, pending);
		c->out_start = 0;
		c->out_end = pending;
	}
	if (c->out_cap - c->out_end < len) {
		size_t cap = c->out_cap ? c->out_cap : 4096;
		char *nb;
		while (cap - c->out_end < len) {
			if (cap > SIZE_MAX / 2)
				return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
			cap *= 2;
		}
		nb = realloc(c->out, cap);
		if (nb == NULL)
			return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		c->out = nb;
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_end, data, len);
	c->out_end += len;
	return 0;
}

size_t
cqrs_cmdclient_queued(const struct cmdclient *c)
{
	return c->out_end - c->out_start;
}

int
cqrs_cmdclient_flush(struct cmdclient *c, struct cqrs_err *err)
{
	while (c->out_start < c->out_end) {
		ssize_t n = send(c->fd, c->out + c->out_start, c->out_end - c->out_start,
				 MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return cqrs_err_set(err, CQRS_EUNAVAILABLE,
					    "connection to %s lost while sending: %s", c->path,
					    strerror(errno));
		}
		c->out_start += (size_t)n;
	}
	c->out_start = c->out_end = 0;
	return 0;
}

/* ---- input ----------------------------------------------------------------- */

/* Room for at least one more chunk, within max_line plus one chunk. */
static int
make_room(struct cmdclient *c, struct cqrs_err *err)
{
	size_t unread = c->in_end - c->in_start;
	size_t limit = c->max_line + 1 + READ_CHUNK;

	if (c->in_cap - c->in_end >= READ_CHUNK)
		return 0;
	if (c->in_start > 0) {
		/* lines handed out before are no longer borrowed: reuse their room */
		memmove(c->in, c->in + c->in_start, unread);
		c->scan -= c->in_start;
		c->in_start = 0;
		c->in_end = unread;
		if (c->in_cap - c->in_end >= READ_CHUNK)
			return 0;
	}
	if (c->in_cap < limit) {
		size_t cap = c->in_cap ? c->in_cap * 2 : 2 * READ_CHUNK;
		char *nb;
		if (cap > limit)
			cap = limit;
		if (cap < c->in_end + READ_CHUNK)
			cap = c->in_end + READ_CHUNK;
		nb = realloc(c->in, cap);
		if (nb == NULL)
			return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		c->in = nb;
		c->in_cap = cap;
	}
	return 0;
}

/* Reads what is there; *got is the byte count (0 at EAGAIN or EOF). */
static int
fill_some(struct cmdclient *c, size_t *got, struct cqrs_err *err)
{
	*got = 0;
	if (c->eof)
		return 0;
	for (;;) {
		ssize_t n;
		int rc = make_room(c, err);
		if (rc < 0)
			return rc;
		if (c->in_cap == c->in_end)
			return 0;	/* full of lines the caller has not taken */
		n = read(c->fd, c->in + c->in_end, c->in_cap - c->in_end);
		if (n > 0) {
			c->in_end += (size_t)n;
			*got += (size_t)n;
			continue;
		}
		if (n == 0) {
			c->eof = true;
			return 0;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return 0;
		if (errno == ECONNRESET) {
			/* the daemon closed with bytes of ours unread: a close all the same */
			c->eof = true;
			return 0;
		}
		return cqrs_err_set(err, CQRS_EUNAVAILABLE, "reading from %s: %s", c->path,
				    strerror(errno));
	}
}

/* The first '\n' not yet scanned, or NULL (memchr must not see a NULL
 * buffer, even for 0 bytes). */
static char *
find_nl(const struct cmdclient *c)
{
	if (c->scan >= c->in_end)
		return NULL;
	return memchr(c->in + c->scan, '\n', c->in_end - c->scan);
}

static bool
has_line(const struct cmdclient *c)
{
	return find_nl(c) != NULL;
}

static int
closed_error(const struct cmdclient *c, struct cqrs_err *err)
{
	size_t partial = c->in_end - c->in_start;

	if (partial > 0)
		return cqrs_err_set(err, CQRS_EUNAVAILABLE,
				    "connection closed by %s in the middle of an answer "
				    "(%zu bytes without a newline)", c->path, partial);
	return cqrs_err_set(err, CQRS_EUNAVAILABLE, "connection closed by %s", c->path);
}

int
cqrs_cmdclient_fill(struct cmdclient *c, struct cqrs_err *err)
{
	size_t got;
	int rc = fill_some(c, &got, err);

	if (rc < 0)
		return rc;
	if (c->eof && !has_line(c))
		return closed_error(c, err);
	return 0;
}

int
cqrs_cmdclient_next_line(struct cmdclient *c, const char **line, size_t *len, struct cqrs_err *err)
{
	char *nl = find_nl(c);
	size_t n;

	if (nl == NULL) {
		c->scan = c->in_end;
		if (c->in_end - c->in_start > c->max_line)
			return cqrs_err_set(err, CQRS_ETOOLARGE,
					    "answer from %s is over the limit of %zu bytes",
					    c->path, c->max_line);
		return 0;
	}
	n = (size_t)(nl - (c->in + c->in_start));
	if (n > c->max_line)
		return cqrs_err_set(err, CQRS_ETOOLARGE,
				    "answer from %s is over the limit of %zu bytes", c->path,
				    c->max_line);
	*nl = '\0';
	*line = c->in + c->in_start;
	if (len != NULL)
		*len = n;
	c->in_start += n + 1;
	c->scan = c->in_start;
	return 1;
}

/* ---- blocking ---------------------------------------------------------------- */

static int
wait_for(struct cmdclient *c, short events, int64_t deadline, const char *what,
	 struct cqrs_err *err)
{
	struct pollfd p = { .fd = c->fd, .events = events };
	int n;

	do
		n = poll(&p, 1, left_ms(deadline));
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return cqrs_err_set(err, CQRS_EIO, "poll: %s", strerror(errno));
	if (n == 0)
		return cqrs_err_set(err, CQRS_EUNAVAILABLE, "timed out %s %s", what, c->path);
	return 0;
}

static int
send_until(struct cmdclient *c, const char *line, size_t len, int64_t deadline,
	   struct cqrs_err *err)
{
	int rc = cqrs_cmdclient_queue(c, line, len, err);

	if (rc == 0 && (len == 0 || line[len - 1] != '\n'))
		rc = cqrs_cmdclient_queue(c, "\n", 1, err);
	while (rc == 0) {
		rc = cqrs_cmdclient_flush(c, err);
		if (rc < 0 || cqrs_cmdclient_queued(c) == 0)
			break;
		rc = wait_for(c, POLLOUT, deadline, "sending to", err);
	}
	return rc;
}

static int
recv_until(struct cmdclient *c, int64_t deadline, const char **line, size_t *len,
	   struct cqrs_err *err)
{
	for (;;) {
		size_t got;
		int rc = cqrs_cmdclient_next_line(c, line, len, err);
		if (rc != 0)
			return rc < 0 ? rc : 0;
		rc = fill_some(c, &got, err);
		if (rc < 0)
			return rc;
		if (got > 0)
			continue;
		if (c->eof)
			return closed_error(c, err);
		rc = wait_for(c, POLLIN, deadline, "waiting for an answer from", err);
		if (rc < 0)
			return rc;
	}
}

int
cqrs_cmdclient_send(struct cmdclient *c, const char *line, size_t len, int timeout_ms,
	       struct cqrs_err *err)
{
	return send_until(c, line, len, deadline_after(timeout_ms), err);
}

int
cqrs_cmdclient_recv(struct cmdclient *c, int timeout_ms, const char **line, size_t *len,
	       struct cqrs_err *err)
{
	return recv_until(c, deadline_after(timeout_ms), line, len, err);
}

int
cqrs_cmdclient_call(struct cmdclient *c, const char *request, int timeout_ms, char **answer,
	       struct cqrs_err *err)
{
	int64_t deadline = deadline_after(timeout_ms);
	const char *line;
	size_t len;
	int rc;

	rc = send_until(c, request, strlen(request), deadline, err);
	if (rc == 0)
		rc = recv_until(c, deadline, &line, &len, err);
	if (rc < 0)
		return rc;
	*answer = strndup(line, len);
	if (*answer == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	return 0;
}

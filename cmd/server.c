/*
 * server.c - the command socket: listening (or the socket systemd passes),
 * clients, line framing, pipelining with answers in request order, limits.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "cmdd.h"
#include "sdnotify.h"

/* Stop reading a client whose unread answers pile up past this. */
#define OUTPUT_HIGH_WATER (4 * 1024 * 1024)

struct client {
	struct cmdd *d;
	struct bufferevent *bev;
	TAILQ_ENTRY(client) link;
	struct job_queue jobs;		/* in request order */
	int n_jobs;
	bool closing;			/* no more requests: close once answered */
	bool in_read;			/* client_read is on the stack */
	bool paused;			/* reading stopped: pipeline full or answers unread */
	unsigned long no;
	struct cqrs_log_ctx log;
	char name[32];
};

static unsigned long client_counter;

static void client_read(struct bufferevent *bev, void *arg);
static void client_flush(struct client *c);

static void
client_free(struct client *c)
{
	struct cmdd *d = c->d;

	while (!TAILQ_EMPTY(&c->jobs)) {
		struct job *j = TAILQ_FIRST(&c->jobs);
		TAILQ_REMOVE(&c->jobs, j, client_link);
		if (j->done) {
			job_free(j);
		} else {
			/* it finishes on its own; the answer has nowhere to go */
			j->client = NULL;
		}
	}
	TAILQ_REMOVE(&d->clients, c, link);
	d->n_clients--;
	bufferevent_free(c->bev);
	cqrs_log_debug(&c->log, "client %lu closed", c->no);
	free(c);
}

static void
client_close_when_flushed(struct bufferevent *bev, void *arg)
{
	struct client *c = arg;

	(void)bev;
	if (TAILQ_EMPTY(&c->jobs))
		client_free(c);
}

static void
client_wrote(struct bufferevent *bev, void *arg)
{
	struct client *c = arg;

	(void)bev;
	/* answers drained below the mark: maybe read requests again */
	if (c->paused)
		client_flush(c);
}

/* Writes the answers that are next in order; frees their jobs. */
static void
client_flush(struct client *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);

	while (!TAILQ_EMPTY(&c->jobs)) {
		struct job *j = TAILQ_FIRST(&c->jobs);
		if (!j->done)
			break;
		TAILQ_REMOVE(&c->jobs, j, client_link);
		c->n_jobs--;
		bufferevent_write(c->bev, j->answer, strlen(j->answer));
		job_free(j);
	}
	if (c->in_read)
		return;		/* client_read flushes again when it is done */
	if (c->closing || c->d->stopping) {
		if (TAILQ_EMPTY(&c->jobs)) {
			bufferevent_disable(c->bev, EV_READ);
			if (evbuffer_get_length(out) == 0)
				client_free(c);
			else
				bufferevent_setcb(c->bev, NULL, client_close_when_flushed, NULL, c);
		}
		return;
	}
	if (evbuffer_get_length(out) > OUTPUT_HIGH_WATER) {
		c->paused = true;
		bufferevent_disable(c->bev, EV_READ);
	} else if (c->paused && c->n_jobs < c->d->cfg.max_pipeline) {
		c->paused = false;
		bufferevent_enable(c->bev, EV_READ);
		/* complete lines may be waiting in the input buffer */
		if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
			client_read(c->bev, c);	/* not on the stack: checked above */
	}
}

void
server_job_done(struct job *job)
{
	struct client *c = job->client;

	if (c == NULL) {
		job_free(job);
		return;
	}
	if (job == TAILQ_FIRST(&c->jobs))
		client_flush(c);
}

static struct job *
job_new(struct client *c)
{
	struct job *j = calloc(1, sizeof(*j));

	if (j == NULL)
		return NULL;
	j->d = c->d;
	j->client = c;
	TAILQ_INIT(&j->waiters);
	j->log.comp = "cmdd";
	j->log.command_id = j->req.id;
	TAILQ_INSERT_TAIL(&c->jobs, j, client_link);
	c->n_jobs++;
	c->d->stats.requests++;
	c->d->jobs_active++;
	return j;
}

/* An answer that needs no command: framing and parse errors. */
static void
early_answer(struct client *c, const char *id, const char *code, const char *msg)
{
	struct job *j = job_new(c);

	if (j == NULL) {
		c->closing = true;
		return;
	}
	exec_answer(j, proto_answer_error(id, code, msg), code);
}

static void
handle_line(struct client *c, const char *line, size_t len)
{
	struct job *j;
	const char *code;
	char msg[CQRS_ERR_MSG_MAX];
	bool close;

	j = job_new(c);
	if (j == NULL) {
		c->closing = true;
		return;
	}
	if (proto_parse(line, len, &j->req, &code, msg, sizeof(msg), &close) < 0) {
		const char *id = j->req.id_given ? j->req.id : j->req.echo_id;
		if (close)
			c->closing = true;
		cqrs_log_info(&c->log, "client %lu: %s: %s", c->no, code, msg);
		exec_answer(j, proto_answer_error(id, code, msg), code);
		return;
	}
	exec_submit(j);
}

static void
client_read(struct bufferevent *bev, void *arg)
{
	struct client *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t max = (size_t)c->d->cfg.max_request_bytes;

	if (c->in_read)
		return;
	c->in_read = true;
	while (!c->closing && !c->d->stopping && c->n_jobs < c->d->cfg.max_pipeline) {
		struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF);
		size_t avail = evbuffer_get_length(in);
		size_t len;
		char *line;

		if (eol.pos < 0) {
			if (avail > max) {
				c->closing = true;
				early_answer(c, NULL, PROTO_TOO_LARGE,
					     "request line is over max_request_bytes");
				evbuffer_drain(in, avail);
			}
			break;
		}
		len = (size_t)eol.pos;
		if (len > max) {
			c->closing = true;
			early_answer(c, NULL, PROTO_TOO_LARGE, "request line is over max_request_bytes");
			evbuffer_drain(in, avail);
			break;
		}
		line = (char *)evbuffer_pullup(in, (ev_ssize_t)len + 1);
		if (len > 0 && line[len - 1] == '\r')
			len--;
		if (len > 0) {
			/* handle_line may finish the job at once and flush: the line
			 * stays valid, nothing drains `in` until we do */
			handle_line(c, line, len);
		}
		evbuffer_drain(in, (size_t)eol.pos + 1);
		if (c->closing)
			break;
	}
	c->in_read = false;
	if (c->n_jobs >= c->d->cfg.max_pipeline) {
		c->paused = true;
		bufferevent_disable(bev, EV_READ);
	}
	/* answers finished while reading; may also free the client */
	client_flush(c);
}

static void
client_event(struct bufferevent *bev, short what, void *arg)
{
	struct client *c = arg;

	(void)bev;
	if ((what & BEV_EVENT_TIMEOUT) && c->n_jobs > 0) {
		/* busy, not idle: keep waiting */
		bufferevent_enable(bev, EV_READ);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT)
		cqrs_log_debug(&c->log, "client %lu idle: closing", c->no);
	else if (what & BEV_EVENT_ERROR)
		cqrs_log_debug(&c->log, "client %lu: %s", c->no, strerror(errno));
	if ((what & BEV_EVENT_EOF) && evbuffer_get_length(bufferevent_get_input(bev)) > 0)
		cqrs_log_info(&c->log, "client %lu vanished mid-request", c->no);
	client_free(c);
}

static void
accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int socklen,
	  void *arg)
{
	struct cmdd *d = arg;
	struct client *c;
	struct timeval tv;

	(void)l;
	(void)sa;
	(void)socklen;
	if (d->stopping) {
		close(fd);
		return;
	}
	if (d->n_clients >= d->cfg.max_connections) {
		static const char busy[] = "{\"id\":null,\"ok\":false,\"error\":{\"code\":"
			"\"unavailable\",\"message\":\"too many connections\"}}\n";
		ssize_t w = send(fd, busy, sizeof(busy) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
		(void)w;
		close(fd);
		cqrs_log_warn(&d->log, "refused a client: %d connections (max_connections)",
			      d->n_clients);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		close(fd);
		return;
	}
	c->d = d;
	c->no = ++client_counter;
	c->log.comp = "cmdd";
	TAILQ_INIT(&c->jobs);
	c->bev = bufferevent_socket_new(d->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL) {
		close(fd);
		free(c);
		return;
	}
	TAILQ_INSERT_TAIL(&d->clients, c, link);
	d->n_clients++;
	bufferevent_setcb(c->bev, client_read, client_wrote, client_event, c);
	tv.tv_sec = d->cfg.idle_timeout_ms / 1000;
	tv.tv_usec = (d->cfg.idle_timeout_ms % 1000) * 1000;
	bufferevent_set_timeouts(c->bev, &tv, NULL);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	cqrs_log_debug(&c->log, "client %lu connected", c->no);
}

/* Binds cfg.socket_path, after checking nobody is live on it. */
static int
bind_path(struct cmdd *d, struct cqrs_err *err)
{
	const char *path = d->cfg.socket_path;
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = -1;

	if (strlen(path) >= sizeof(sun.sun_path))
		return cqrs_err_set(err, CQRS_ECONFIG, "cmd.socket \"%s\" is too long (max %zu bytes)",
				    path, sizeof(sun.sun_path) - 1);
	memcpy(sun.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return cqrs_err_set(err, CQRS_EIO, "socket: %s", strerror(errno));
	if (access(path, F_OK) == 0) {
		/* a live daemon answers connect(); a stale file refuses */
		if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
			close(fd);
			return cqrs_err_set(err, CQRS_EIO, "another daemon is listening on \"%s\"", path);
		}
		close(fd);
		if (unlink(path) != 0)
			return cqrs_err_set(err, CQRS_EIO, "cannot remove stale socket \"%s\": %s",
					    path, strerror(errno));
		cqrs_log_info(&d->log, "removed stale socket %s", path);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return cqrs_err_set(err, CQRS_EIO, "socket: %s", strerror(errno));
	}
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		int e = errno;
		close(fd);
		return cqrs_err_set(err, CQRS_EIO, "cannot bind \"%s\": %s", path, strerror(e));
	}
	d->own_socket = true;
	if (chmod(path, (mode_t)d->cfg.socket_mode) != 0)
		cqrs_log_warn(&d->log, "cannot chmod %s: %s", path, strerror(errno));
	if (d->cfg.socket_group != NULL && d->cfg.socket_group[0] != '\0') {
		struct group *g = getgrnam(d->cfg.socket_group);
		if (g == NULL) {
			close(fd);
			return cqrs_err_set(err, CQRS_ECONFIG, "cmd.socket_group: no group \"%s\"",
					    d->cfg.socket_group);
		}
		if (chown(path, (uid_t)-1, g->gr_gid) != 0)
			cqrs_log_warn(&d->log, "cannot chown %s to group %s: %s", path,
				      d->cfg.socket_group, strerror(errno));
	}
	if (listen(fd, 511) != 0) {
		int e = errno;
		close(fd);
		return cqrs_err_set(err, CQRS_EIO, "listen on \"%s\": %s", path, strerror(e));
	}
	return fd;
}

int
server_listen(struct cmdd *d, struct cqrs_err *err)
{
	int fd;

	if (sdnotify_listen_fds() >= 1) {
		fd = 3;		/* SD_LISTEN_FDS_START */
		cqrs_log_info(&d->log, "using the socket passed by systemd");
	} else {
		fd = bind_path(d, err);
		if (fd < 0)
			return fd;
		cqrs_log_info(&d->log, "listening on %s", d->cfg.socket_path);
	}
	evutil_make_socket_nonblocking(fd);
	d->listener = evconnlistener_new(d->base, accept_cb, d,
					 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
	if (d->listener == NULL) {
		close(fd);
		return cqrs_err_set(err, CQRS_EIO, "cannot listen on the command socket");
	}
	return 0;
}

void
server_close(struct cmdd *d)
{
	if (d->listener != NULL) {
		evconnlistener_free(d->listener);
		d->listener = NULL;
		if (d->own_socket)
			unlink(d->cfg.socket_path);
		d->own_socket = false;
	}
}

void
server_close_idle(struct cmdd *d)
{
	struct client *c, *next;

	for (c = TAILQ_FIRST(&d->clients); c != NULL; c = next) {
		next = TAILQ_NEXT(c, link);
		client_flush(c);
	}
}

bool
server_drained(struct cmdd *d)
{
	return TAILQ_EMPTY(&d->clients);
}

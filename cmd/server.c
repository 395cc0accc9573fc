/*
 * server.c - the command socket: listening (or the socket systemd passes),
 * clients, line framing, pipelining with answers in request order, limits.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "access.h"
#include "cmdd.h"
#include "sdnotify.h"
#include "unixsock.h"

#define READ_CHUNK CMDD_READ_CHUNK

/*
 * A client's socket is driven directly (read/write on the fd, one persistent
 * read event with the idle timeout, a write event only while answers are
 * left over): a bufferevent would add and remove a write event around every
 * answer, two epoll_ctl calls per command.
 */
struct client {
	struct cmdd *d;
	int fd;
	struct cmdd_peer peer;
	struct event *ev_read;		/* persistent, with the idle timeout */
	struct event *ev_write;		/* armed while out holds unsent bytes */
	struct evbuffer *out;
	/* the unread input: ibuf[ioff, ilen) of a block of icap bytes, counted
	 * at icap (what it really holds); no '\n' in ibuf[ioff, iscan) */
	char *ibuf;
	size_t ioff, ilen, icap, iscan;
	TAILQ_ENTRY(client) link;
	struct job_queue jobs;		/* in request order */
	int n_jobs;
	bool closing;			/* no more requests: close once answered */
	bool shut_rd;			/* closing: reading stopped for good */
	bool in_read;			/* client_read is on the stack */
	bool paused;			/* reading stopped (client_update()) */
	bool held_back;			/* ... by a budget or the pipeline (d->clients_paused) */
	bool eof;			/* the peer shut its side */
	unsigned long no;
	struct cqrs_log_ctx log;
	struct event *ev_idle;		/* the idle timeout while reading is paused */
	/* byte budgets: c->held = jobs_bytes + icap + what out buffers */
	size_t jobs_bytes;		/* its jobs' requests, events and answers */
	size_t held;
	size_t need;			/* a whole line waits for this much room */
	bool budget_waiting;		/* in d->budget_wait: the daemon's budget is spent */
	TAILQ_ENTRY(client) budget_link;
	unsigned wake_gen;
};

static unsigned long client_counter;

static void client_process(struct client *c);
static void client_flush(struct client *c);
static void client_update(struct client *c);

/* ---- the input -----------------------------------------------------------
 *
 * A block of its own rather than an evbuffer: an evbuffer's chains are
 * rounded up to powers of two (a read of 64 KiB takes a 128 KiB chain), and
 * a few bytes of an unfinished line would keep a whole chain, uncounted,
 * for as long as the client waits. Here the block grows to what it holds,
 * is counted at its size, and is given back once the lines in it are taken.
 * A line is parsed where it lies: no copy to make it contiguous.
 */

/* A block this small is kept when emptied: no malloc per read. */
#define IN_KEEP 4096

static size_t
in_len(const struct client *c)
{
	return c->ilen - c->ioff;
}

static void
in_free(struct client *c)
{
	free(c->ibuf);
	c->ibuf = NULL;
	c->ioff = c->ilen = c->icap = c->iscan = 0;
}

/* Drops the first n bytes (lines taken). */
static void
in_consume(struct client *c, size_t n)
{
	c->ioff += n;
	if (c->iscan < c->ioff)
		c->iscan = c->ioff;
	if (c->ioff == c->ilen) {
		c->ioff = c->ilen = c->iscan = 0;
		if (c->icap > IN_KEEP)
			in_free(c);
	}
}

/*
 * Moves what is left to the front and gives the rest of the block back. Done
 * when what was taken is at least what is left, so that each byte moves at
 * most once on average (a client whose pipeline is full has one line taken
 * per answer), or when forced (before growing; when the client waits for
 * room, which the taken part would hold).
 */
static void
in_compact(struct client *c, bool force)
{
	size_t left = in_len(c);
	char *b;

	if (c->ioff == 0 || (!force && c->ioff < left))
		return;
	memmove(c->ibuf, c->ibuf + c->ioff, left);
	c->iscan -= c->ioff;
	c->ilen = left;
	c->ioff = 0;
	if (c->icap > left + IN_KEEP && left > 0 && (b = realloc(c->ibuf, left)) != NULL) {
		c->ibuf = b;
		c->icap = left;
	}
}

static int
in_append(struct client *c, const char *p, size_t n)
{
	if (c->ilen + n > c->icap) {
		char *b;

		in_compact(c, true);
		if (c->ilen + n > c->icap) {
			if ((b = realloc(c->ibuf, c->ilen + n)) == NULL)
				return -1;
			c->ibuf = b;
			c->icap = c->ilen + n;
		}
	}
	memcpy(c->ibuf + c->ilen, p, n);
	c->ilen += n;
	return 0;
}

/* ---- byte budgets -------------------------------------------------------
 *
 * Every byte a client makes the daemon hold is counted against it: the
 * unparsed input, each queued job (the struct, its parsed request at what
 * json-c really holds, its events while an append is prepared, its answer)
 * and the answers not yet sent. A client may hold cmd.client_budget; all
 * clients together cmd.memory_budget, counting only what each holds past
 * CMDD_CLIENT_FLOOR, so that a few small commands always fit. Past a budget
 * the client is not read any more (backpressure); nothing is buffered
 * beyond it. Jobs of a client that went away still count until they end.
 */

static size_t
over_floor(size_t held)
{
	return held > CMDD_CLIENT_FLOOR ? held - CMDD_CLIENT_FLOOR : 0;
}

/* Room the daemon's budget leaves, past the clients' floors. */
static size_t
daemon_room(const struct cmdd *d)
{
	size_t over = d->clients_over + d->detached;

	return over < (size_t)d->cfg.memory_budget ? (size_t)d->cfg.memory_budget - over : 0;
}

/*
 * The bytes c may still take in: up to its floor whatever the others hold,
 * past it what both budgets leave. own_too false: its own budget left out
 * (a client that holds nothing but its input must be able to take the next
 * request that fits the budget at all).
 */
static size_t
client_room(const struct client *c, bool own_too)
{
	const struct cmdd *d = c->d;
	size_t floor = CMDD_CLIENT_FLOOR > c->held ? CMDD_CLIENT_FLOOR - c->held : 0;
	size_t room = floor + daemon_room(d);

	if (own_too) {
		size_t own = (size_t)d->cfg.client_budget > c->held ?
			     (size_t)d->cfg.client_budget - c->held : 0;
		if (own < room)
			room = own;
	}
	return room > floor ? room : floor;
}

static void
budget_wake_later(struct cmdd *d)
{
	if (!TAILQ_EMPTY(&d->budget_wait) && d->wake_ev != NULL && daemon_room(d) > 0)
		event_active(d->wake_ev, 0, 0);
}

/* Keeps d->clients_paused: clients not read for a budget or the pipeline. */
static void
client_held_back(struct client *c, bool on)
{
	if (c->held_back != on) {
		c->held_back = on;
		c->d->clients_paused += on ? 1 : -1;
	}
}

static void
budget_wait_add(struct client *c)
{
	TAILQ_INSERT_TAIL(&c->d->budget_wait, c, budget_link);
	c->budget_waiting = true;
	c->d->budget_waiting++;
}

static void
budget_wait_remove(struct client *c)
{
	TAILQ_REMOVE(&c->d->budget_wait, c, budget_link);
	c->budget_waiting = false;
	c->d->budget_waiting--;
}

/* Brings c->held and the daemon's sums up to date. */
static void
client_account(struct client *c)
{
	struct cmdd *d = c->d;
	size_t held = c->jobs_bytes + c->icap + evbuffer_get_length(c->out);

	d->clients_over = d->clients_over - over_floor(c->held) + over_floor(held);
	d->clients_held = d->clients_held - c->held + held;
	if (held < c->held)
		budget_wake_later(d);
	c->held = held;
}

void
server_job_hold(struct job *job, long delta)
{
	struct cmdd *d = job->d;

	job->held = (size_t)((long)job->held + delta);
	if (job->client != NULL) {
		job->client->jobs_bytes = (size_t)((long)job->client->jobs_bytes + delta);
		client_account(job->client);
	} else {
		d->detached = (size_t)((long)d->detached + delta);
		if (delta < 0)
			budget_wake_later(d);
	}
}

/* The job stays, its client goes (or has its answer): it counts apart. */
static void
job_detach(struct client *c, struct job *j)
{
	c->jobs_bytes -= j->held;
	c->d->detached += j->held;
	j->client = NULL;
}

/*
 * Runs from the loop (never from inside another client's work): gives the
 * clients waiting for the daemon's budget their turn, oldest first, each
 * once, while room is left.
 */
static void
budget_wake(evutil_socket_t fd, short what, void *arg)
{
	struct cmdd *d = arg;
	unsigned gen = ++d->wake_gen;
	struct client *c;

	(void)fd;
	(void)what;
	while ((c = TAILQ_FIRST(&d->budget_wait)) != NULL && c->wake_gen != gen &&
	       daemon_room(d) > 0) {
		c->wake_gen = gen;
		TAILQ_REMOVE(&d->budget_wait, c, budget_link);
		TAILQ_INSERT_TAIL(&d->budget_wait, c, budget_link);
		client_update(c);	/* may free c, or queue it again */
	}
}

static void
client_free(struct client *c)
{
	struct cmdd *d = c->d;

	while (!TAILQ_EMPTY(&c->jobs)) {
		struct job *j = TAILQ_FIRST(&c->jobs);
		TAILQ_REMOVE(&c->jobs, j, client_link);
		/* a running one finishes on its own; its answer has nowhere to go */
		job_detach(c, j);
		if (j->done)
			job_free(j);
	}
	if (c->budget_waiting)
		budget_wait_remove(c);
	client_held_back(c, false);
	d->clients_over -= over_floor(c->held);
	d->clients_held -= c->held;
	budget_wake_later(d);
	TAILQ_REMOVE(&d->clients, c, link);
	d->n_clients--;
	if (c->ev_read != NULL)
		event_free(c->ev_read);
	if (c->ev_write != NULL)
		event_free(c->ev_write);
	if (c->ev_idle != NULL)
		event_free(c->ev_idle);
	free(c->ibuf);
	evbuffer_free(c->out);
	close(c->fd);
	cqrs_log_debug(&c->log, "client %lu closed", c->no);
	free(c);
}

static struct timeval
idle_timeval(const struct cmdd *d)
{
	struct timeval tv = { d->cfg.idle_timeout_ms / 1000, (d->cfg.idle_timeout_ms % 1000) * 1000 };

	return tv;
}

static struct timeval
ms_timeval(int64_t ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	return tv;
}

/*
 * Waits for the socket to take more of out. A client that takes no byte of
 * its answers for cmd.write_timeout is dropped: its answers would stay held
 * for ever, and its budget with them.
 */
static void
client_wait_writable(struct client *c)
{
	struct timeval tv = ms_timeval(c->d->cfg.write_timeout_ms);

	event_add(c->ev_write, &tv);
}

/*
 * A closing client's further bytes count for nothing: stop reading them,
 * drop what is buffered, and shut the socket's read side so that the
 * client's writes fail (EPIPE) instead of filling our buffers or the
 * kernel's. The answers still owed are flushed before the close.
 */
static void
client_stop_reading(struct client *c)
{
	if (c->shut_rd)
		return;
	c->shut_rd = true;
	if (!c->paused)
		event_del(c->ev_read);
	c->paused = true;
	client_held_back(c, false);
	event_del(c->ev_idle);
	in_free(c);
	client_account(c);
	if (shutdown(c->fd, SHUT_RD) != 0)
		cqrs_log_debug(&c->log, "client %lu: shutdown: %s", c->no, strerror(errno));
}

/* Sends what it can of out; returns -1 when the client is gone (freed). */
static int
client_send(struct client *c)
{
	while (evbuffer_get_length(c->out) > 0) {
		int n = evbuffer_write(c->out, c->fd);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				break;
			cqrs_log_debug(&c->log, "client %lu: write: %s", c->no, strerror(errno));
			client_free(c);
			return -1;
		}
		if (n == 0)
			break;
	}
	if (evbuffer_get_length(c->out) > 0)
		client_wait_writable(c);	/* the deadline restarts with each byte taken */
	client_account(c);
	return 0;
}

static void
client_writable(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;

	(void)fd;
	if (what & EV_TIMEOUT) {
		cqrs_log_info(&c->log, "client %lu took no answer bytes for cmd.write_timeout "
			      "(%.1f s), %zu bytes unsent: closing", c->no,
			      (double)c->d->cfg.write_timeout_ms / 1000, evbuffer_get_length(c->out));
		client_free(c);
		return;
	}
	if (client_send(c) < 0)
		return;
	if (evbuffer_get_length(c->out) == 0)
		client_flush(c);	/* may resume reading, or finish closing */
}

/* Writes the answers that are next in order; frees their jobs. */
static void
client_flush(struct client *c)
{
	while (!TAILQ_EMPTY(&c->jobs)) {
		struct job *j = TAILQ_FIRST(&c->jobs);
		if (!j->done)
			break;
		TAILQ_REMOVE(&c->jobs, j, client_link);
		c->n_jobs--;
		evbuffer_add(c->out, j->answer, strlen(j->answer));
		job_detach(c, j);
		job_free(j);
	}
	if (c->in_read)
		return;		/* client_read sends and checks again when done */
	if (client_send(c) < 0)
		return;
	if (c->closing || c->eof || c->d->stopping) {
		if (TAILQ_EMPTY(&c->jobs) && evbuffer_get_length(c->out) == 0)
			client_free(c);
		else
			client_update(c);
		return;
	}
	client_update(c);
}

enum stall { STALL_NONE, STALL_ENDING, STALL_PIPELINE, STALL_OWN, STALL_DAEMON };

/* What keeps c from reading (or from taking its next whole line) now. */
static enum stall
client_stall(const struct client *c)
{
	size_t need = c->need > 0 ? c->need : 1;
	bool own_too = c->need == 0 || c->n_jobs > 0 || evbuffer_get_length(c->out) > 0;

	if (c->closing || c->eof || c->d->stopping)
		return STALL_ENDING;
	if (c->n_jobs >= c->d->cfg.max_pipeline)
		return STALL_PIPELINE;
	if (need <= client_room(c, own_too))
		return STALL_NONE;
	return need <= client_room(c, false) && own_too ? STALL_OWN : STALL_DAEMON;
}

/*
 * Reads c, or stops reading it, as its state asks. A paused client still has
 * its idle timeout (ev_idle); one stopped by the daemon's budget waits in
 * d->budget_wait for budget_wake(). May free c (through client_process()).
 */
static void
client_update(struct client *c)
{
	struct cmdd *d = c->d;
	enum stall s = client_stall(c);
	bool resumed = false;

	if (s == STALL_DAEMON && !c->budget_waiting)
		budget_wait_add(c);
	else if (s != STALL_DAEMON && c->budget_waiting)
		budget_wait_remove(c);
	client_held_back(c, s == STALL_PIPELINE || s == STALL_OWN || s == STALL_DAEMON);
	if (s != STALL_NONE) {
		if (!c->paused) {
			struct timeval tv = idle_timeval(d);

			event_del(c->ev_read);
			c->paused = true;
			if (s != STALL_ENDING)
				event_add(c->ev_idle, &tv);
		}
		return;
	}
	if (c->paused) {
		struct timeval tv = idle_timeval(d);

		c->paused = false;
		event_del(c->ev_idle);
		event_add(c->ev_read, &tv);
		resumed = true;
	}
	/* whole lines may be waiting in the input buffer */
	if (!c->in_read && (resumed || c->need > 0) && in_len(c) > 0)
		client_process(c);
}

/* The idle timeout of a client whose reading is paused. */
static void
client_idle(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;
	struct timeval tv = idle_timeval(c->d);

	(void)fd;
	(void)what;
	if (c->n_jobs > 0 || evbuffer_get_length(c->out) > 0) {
		event_add(c->ev_idle, &tv);	/* busy, not idle */
		return;
	}
	cqrs_log_info(&c->log, "client %lu idle for cmd.idle_timeout with %zu bytes of an "
		      "unfinished request while the daemon had no room: closing", c->no,
		      in_len(c));
	client_free(c);
}

void
server_job_done(struct job *job)
{
	struct client *c = job->client;

	if (c == NULL) {
		job_free(job);
		return;
	}
	server_job_hold(job, (long)strlen(job->answer) + 1);
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
	TAILQ_INSERT_TAIL(&c->d->live, j, live_link);
	j->log.comp = "cmdd";
	j->peer = c->peer;
	if (j->peer.known)
		j->log.uid = j->peer.uid_text;
	TAILQ_INSERT_TAIL(&c->jobs, j, client_link);
	c->n_jobs++;
	j->held = CMDD_JOB_BYTES;
	c->jobs_bytes += j->held;
	c->d->stats.requests++;
	c->d->jobs_active++;
	return j;
}

/* An answer that needs no command: framing errors. */
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
	bool close_after;
	int rc;

	j = job_new(c);
	if (j == NULL) {
		c->closing = true;
		return;
	}
	rc = proto_parse(line, len, &j->req, &code, msg, sizeof(msg), &close_after);
	server_job_hold(j, (long)proto_request_bytes(&j->req));
	if (rc < 0) {
		const char *id = j->req.echo_id ? j->req.echo_id : j->req.id_given ? j->req.id : NULL;
		if (close_after)
			c->closing = true;
		cqrs_log_info(&c->log, "client %lu: %s: %s", c->no, code, msg);
		exec_answer(j, proto_answer_error(id, code, msg), code);
		return;
	}
	j->log.command_id = j->req.id;
	if (!access_allows(c->d->cfg.access, j->req.command, &c->peer)) {
		char m[CQRS_ERR_MSG_MAX];

		if (c->peer.known)
			snprintf(m, sizeof(m), "uid %u%s%s%s may not send %s ([access])",
				 (unsigned)c->peer.uid, c->peer.user[0] ? " (" : "", c->peer.user,
				 c->peer.user[0] ? ")" : "", j->req.command);
		else
			snprintf(m, sizeof(m), "a sender without credentials may not send %s "
				 "([access])", j->req.command);
		cqrs_log_warn(&j->log, "forbidden: %s", m);
		exec_answer(j, proto_answer_error(j->req.id, PROTO_FORBIDDEN, m), PROTO_FORBIDDEN);
		return;
	}
	exec_submit(j);
}

/* Runs every complete line of the input, within the pipeline limit. */
static void
client_process(struct client *c)
{
	size_t max = (size_t)c->d->cfg.max_request_bytes;
	size_t budget = (size_t)c->d->cfg.client_budget;

	if (c->in_read)
		return;
	c->in_read = true;
	c->need = 0;
	while (!c->closing && !c->d->stopping && c->n_jobs < c->d->cfg.max_pipeline) {
		size_t avail = in_len(c);
		char *line = c->ibuf + c->ioff, *eol;
		size_t len, cost, net;
		bool own_too;

		if (avail == 0)
			break;
		eol = memchr(c->ibuf + c->iscan, '\n', c->ilen - c->iscan);
		if (eol == NULL) {
			c->iscan = c->ilen;
			if (avail > max) {
				c->closing = true;
				early_answer(c, NULL, PROTO_TOO_LARGE,
					     "request line is over max_request_bytes");
				in_free(c);
			}
			break;
		}
		len = (size_t)(eol - line);
		if (len > max) {
			c->closing = true;
			early_answer(c, NULL, PROTO_TOO_LARGE, "request line is over max_request_bytes");
			in_free(c);
			break;
		}
		/* what parsing it may hold, at most, before it is parsed: json-c
		 * can hold a hundred times the text ({"a":{}} ...) */
		cost = CMDD_JOB_BYTES + proto_cost_bound(line, len);
		if (cost > budget) {
			char msg[160];

			snprintf(msg, sizeof(msg), "request could hold up to %zu bytes once parsed, "
				 "over cmd.client_budget (%zu)", cost, budget);
			c->closing = true;
			early_answer(c, NULL, PROTO_TOO_LARGE, msg);
			in_free(c);
			break;
		}
		/* its text leaves the input as the job takes it */
		net = cost > len + 1 ? cost - (len + 1) : 1;
		own_too = c->n_jobs > 0 || evbuffer_get_length(c->out) > 0;
		if (net > client_room(c, own_too)) {
			c->need = net;	/* client_update() waits for room */
			break;
		}
		if (len > 0 && line[len - 1] == '\r')
			len--;
		if (len > 0)
			handle_line(c, line, len);	/* nothing touches the input meanwhile */
		in_consume(c, (size_t)(eol - line) + 1);
		client_account(c);
	}
	/* what was taken goes; a client waiting for room must not hold it */
	in_compact(c, c->need > 0);
	c->in_read = false;
	client_account(c);
	if (c->closing)
		client_stop_reading(c);
	/* answers that finished while reading; may also free the client;
	 * pauses reading when the pipeline or a budget is full */
	client_flush(c);
}

static void
client_readable(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;
	char buf[READ_CHUNK];
	size_t room;
	ssize_t n;

	if (what & EV_TIMEOUT) {
		if (c->n_jobs > 0)
			return;		/* busy, not idle */
		cqrs_log_debug(&c->log, "client %lu idle: closing", c->no);
		client_free(c);
		return;
	}
	if (c->shut_rd || c->paused)
		return;		/* an event already on its way */
	/* never more than the budgets leave: the input buffer counts too */
	room = client_room(c, true);
	if (room == 0) {
		client_update(c);
		return;
	}
	n = read(fd, buf, room < sizeof(buf) ? room : sizeof(buf));
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		cqrs_log_debug(&c->log, "client %lu: read: %s", c->no, strerror(errno));
		client_free(c);
		return;
	}
	if (n == 0) {
		/* the client shut its side: answer what it sent, then close */
		if (in_len(c) > 0)
			cqrs_log_info(&c->log, "client %lu vanished mid-request", c->no);
		c->eof = true;
		event_del(c->ev_read);
		event_del(c->ev_idle);
		c->paused = true;
		client_held_back(c, false);
		client_flush(c);
		return;
	}
	if (in_append(c, buf, (size_t)n) != 0) {
		client_free(c);
		return;
	}
	client_process(c);
}

/*
 * The peer's credentials, as the kernel saw them at connect(): what every
 * event of its commands records as metadata.peer. The name is looked up
 * once per connection (NSS: /etc/passwd, or whatever nsswitch.conf says).
 */
static void
peer_read(int fd, struct cmdd_peer *p)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct passwd pw, *found = NULL;
	char buf[1024];

	memset(p, 0, sizeof(*p));
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof(cred))
		return;
	p->known = true;
	p->uid = cred.uid;
	p->gid = cred.gid;
	p->pid = cred.pid;
	snprintf(p->uid_text, sizeof(p->uid_text), "%u", (unsigned)cred.uid);
	len = sizeof(p->groups);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, p->groups, &len) == 0)
		p->n_groups = (int)(len / sizeof(p->groups[0]));
	/* more than CMDD_PEER_GROUPS (ERANGE): the first ones are not given
	 * either, so rules on groups match none; names and uids still do */
	if (getpwuid_r(cred.uid, &pw, buf, sizeof(buf), &found) == 0 && found != NULL &&
	    strlen(pw.pw_name) < sizeof(p->user))
		snprintf(p->user, sizeof(p->user), "%s", pw.pw_name);
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
	c->fd = fd;
	peer_read(fd, &c->peer);
	if (c->peer.known)
		c->log.uid = c->peer.uid_text;
	c->no = ++client_counter;
	c->log.comp = "cmdd";
	TAILQ_INIT(&c->jobs);
	evutil_make_socket_nonblocking(fd);
	c->out = evbuffer_new();
	c->ev_read = event_new(d->base, fd, EV_READ | EV_PERSIST, client_readable, c);
	c->ev_write = event_new(d->base, fd, EV_WRITE, client_writable, c);
	c->ev_idle = evtimer_new(d->base, client_idle, c);
	TAILQ_INSERT_TAIL(&d->clients, c, link);
	d->n_clients++;
	if (c->out == NULL || c->ev_read == NULL || c->ev_write == NULL ||
	    c->ev_idle == NULL) {
		client_free(c);
		return;
	}
	tv.tv_sec = d->cfg.idle_timeout_ms / 1000;
	tv.tv_usec = (d->cfg.idle_timeout_ms % 1000) * 1000;
	event_add(c->ev_read, &tv);
	cqrs_log_debug(&c->log, "client %lu connected: uid %s, pid %d", c->no,
		       c->peer.known ? c->peer.uid_text : "unknown", (int)c->peer.pid);
}

/*
 * Binds cfg.socket_path, after checking nobody is live on it. A file left
 * there is removed only when it is a socket that refuses connections (what
 * a daemon that died leaves); anything else (a listener whose backlog is
 * full, no permission, not a socket) stops the start with the file in place.
 */
static int
bind_path(struct cmdd *d, struct cqrs_err *err)
{
	const char *path = d->cfg.socket_path;
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	bool removed;
	int fd, rc;

	if ((rc = cqrs_unix_socket_clear(path, "cmd.socket", &removed, err)) < 0)
		return rc;
	if (removed)
		cqrs_log_info(&d->log, "removed stale socket %s", path);
	memcpy(sun.sun_path, path, strlen(path) + 1);	/* its length checked above */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return cqrs_err_set(err, CQRS_EIO, "socket: %s", strerror(errno));
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

	if (cqrs_sdnotify_listen_fds() >= 1) {
		fd = 3;		/* SD_LISTEN_FDS_START */
		cqrs_log_info(&d->log, "using the socket passed by systemd");
	} else {
		fd = bind_path(d, err);
		if (fd < 0)
			return fd;
		cqrs_log_info(&d->log, "listening on %s", d->cfg.socket_path);
	}
	evutil_make_socket_nonblocking(fd);
	if ((d->wake_ev = event_new(d->base, -1, 0, budget_wake, d)) == NULL) {
		close(fd);
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	}
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
server_free_clients(struct cmdd *d)
{
	while (!TAILQ_EMPTY(&d->clients))
		client_free(TAILQ_FIRST(&d->clients));
	if (d->wake_ev != NULL)
		event_free(d->wake_ev);
	d->wake_ev = NULL;
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

/*
 * fuzz_http.c - what the /health and /metrics endpoint (common/httpd.c)
 * makes of the bytes a client sends: evhttp's request parsing with our
 * limits (headers, body, timeout) and our handler, on a real loopback
 * connection, as a scraper or anyone else on the host would reach it.
 *
 * One endpoint lives for the whole run, on a loop of this thread. Each
 * input is sent on a new connection, which then shuts down its sending
 * side; the loop runs until the endpoint has answered and closed, and at
 * most DEADLINE_S (an endpoint that neither answers nor closes a client
 * that has said everything would hold a connection: that fails the input).
 *
 * Properties besides the sanitizers': the endpoint closes every such
 * connection, and whatever it sends starts with a status line.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "fuzz.h"
#include "httpd.h"

#define DEADLINE_S 20

static struct event_base *base;
static struct httpd *httpd;
static struct sockaddr_in server;
static unsigned long scrapes;

struct client {
	int fd;
	const uint8_t *data;
	size_t size, sent;
	bool shut;		/* everything sent, then SHUT_WR */
	bool closed;		/* the endpoint closed (or reset) the connection */
	char head[64];		/* the first bytes of the answer */
	size_t got;
	struct event *rd, *wr;
};

/* "HTTP/VERSION NNN ": evhttp answers in the version the request named,
 * whatever it was ("HTTP/0.1", "HTTP/-1.1"), so that part is not checked. */
static bool
status_line(const char *s, size_t n)
{
	const char *sp;

	if (n < 5 || memcmp(s, "HTTP/", 5) != 0)
		return false;
	sp = memchr(s, ' ', n);
	return sp != NULL && (size_t)(sp - s) + 5 <= n && sp[1] >= '1' && sp[1] <= '5' &&
	       sp[2] >= '0' && sp[2] <= '9' && sp[3] >= '0' && sp[3] <= '9' && sp[4] == ' ';
}

static bool
health(void *arg, char *reason, size_t size)
{
	(void)arg;
	/* every other scrape unhealthy, with a reason that needs care */
	if (++scrapes % 2 == 0)
		return true;
	snprintf(reason, size, "store \"down\"\nsince\\now");
	return false;
}

static void
metrics(void *arg, struct evbuffer *out)
{
	static struct httpd_hist h;
	char label[64], labels[96];

	(void)arg;
	cqrs_httpd_hist_observe_us(&h, scrapes * 1000);
	cqrs_httpd_counter(out, "fuzz_scrapes_total", "Scrapes\\so far\n", scrapes);
	cqrs_httpd_gauge(out, "fuzz_nan", "Not a number", 0.0 / 0.0);
	cqrs_httpd_label_escape("a\"b\\c\nd", label, sizeof(label));
	snprintf(labels, sizeof(labels), "name=\"%s\"", label);
	cqrs_httpd_hist_write(out, "fuzz_seconds", "Latency", labels, &h);
}

static void
on_read(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;
	char buf[4096];
	ssize_t n;

	(void)what;
	n = recv(fd, buf, sizeof(buf), 0);
	if (n > 0) {
		size_t take = (size_t)n < sizeof(c->head) - c->got ? (size_t)n : sizeof(c->head) - c->got;

		memcpy(c->head + c->got, buf, take);
		c->got += take;
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	c->closed = true;	/* EOF, or a reset */
	event_base_loopbreak(base);
}

static void
on_write(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;
	ssize_t n;

	(void)what;
	if (c->sent < c->size) {
		n = send(fd, c->data + c->sent, c->size - c->sent, MSG_NOSIGNAL);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n < 0) {
			/* the endpoint closed while we sent: what it answered is
			 * still to read */
			c->sent = c->size;
		} else {
			c->sent += (size_t)n;
		}
	}
	if (c->sent == c->size && !c->shut) {
		(void)shutdown(fd, SHUT_WR);
		c->shut = true;
		event_del(c->wr);
	}
}

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	event_base_loopbreak(base);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct httpd_handlers hd = { .health = health, .metrics = metrics, .arg = NULL };
	struct httpd_addr addr;
	struct cqrs_err err = { 0 };

	(void)argc;
	(void)argv;
	if (base != NULL)
		return 0;
	base = event_base_new();
	FUZZ_CHECK(base != NULL, "no event base");
	FUZZ_CHECK(cqrs_httpd_parse_addr("127.0.0.1:0", false, "fuzz", &addr, &err) == 0, "%s",
		   err.msg);
	FUZZ_CHECK(cqrs_httpd_new(base, &addr, &hd, &httpd, &err) == 0, "%s", err.msg);
	memset(&server, 0, sizeof(server));
	server.sin_family = AF_INET;
	server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	server.sin_port = htons(cqrs_httpd_port(httpd));
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct client c = { .data = data, .size = size };
	struct timeval deadline = { .tv_sec = DEADLINE_S };
	struct event *timer;

	c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	FUZZ_CHECK(c.fd >= 0, "socket: %s", strerror(errno));
	FUZZ_CHECK(connect(c.fd, (struct sockaddr *)&server, sizeof(server)) == 0 ||
			   errno == EINPROGRESS,
		   "connect: %s", strerror(errno));
	c.rd = event_new(base, c.fd, EV_READ | EV_PERSIST, on_read, &c);
	c.wr = event_new(base, c.fd, EV_WRITE | EV_PERSIST, on_write, &c);
	timer = evtimer_new(base, on_deadline, NULL);
	FUZZ_CHECK(c.rd != NULL && c.wr != NULL && timer != NULL, "out of memory");
	event_add(c.rd, NULL);
	event_add(c.wr, NULL);
	evtimer_add(timer, &deadline);
	/* loopbreak ends a dispatch early: the timer's, or the client's end */
	while (!c.closed && evtimer_pending(timer, NULL))
		event_base_dispatch(base);
	FUZZ_CHECK(c.closed, "the endpoint neither answered nor closed within %d s (%zu bytes sent)",
		   DEADLINE_S, c.sent);
	if (c.got > 0)
		FUZZ_CHECK(status_line(c.head, c.got), "answer starts \"%.*s\"", (int)c.got, c.head);
	event_free(timer);
	event_free(c.rd);
	event_free(c.wr);
	close(c.fd);
	return 0;
}

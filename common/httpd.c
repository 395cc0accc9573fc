/*
 * httpd.c - /health and /metrics on libevent's evhttp (httpd.h).
 *
 * The socket is made here rather than by evhttp_bind_socket(), so a bind
 * error keeps its errno for the message and an IPv6 address is IPv6 only.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "config.h"
#include "httpd.h"
#include "unixsock.h"

/* Slow or idle scrapers are cut off after this. */
#define HTTP_TIMEOUT_S 10
#define HTTP_MAX_HEADERS 8192
#define REASON_MAX 256

struct httpd {
	struct event_base *base;
	bool own_base;			/* threaded mode: base is ours */
	struct evhttp *http;
	struct httpd_handlers hd;
	uint16_t port;
	char address[136];
	bool threaded;
	pthread_t thread;
	int wake[2];			/* threaded mode: a byte on wake[1] stops the loop */
	struct event *wake_ev;
	char *unix_path;		/* owned: the socket file we made, unlinked at the end */
	/* the connection cap: evhttp 2.1 says nothing when it frees a
	 * connection, so each one's bufferevent is made here (bevcb) and held
	 * by one more reference; evhttp's bufferevent_free() clears its
	 * callbacks, which sweep() sees */
	struct evconnlistener *listener;
	struct bufferevent *conns[HTTPD_MAX_CONNECTIONS + 1];
	atomic_int n_conns;
	bool paused;
	struct event *sweep_ev;
};

static const uint64_t default_le_us[] = { HTTPD_HIST_DEFAULT_BUCKETS };
#define DEFAULT_N (sizeof(default_le_us) / sizeof(default_le_us[0]))

/* ---- the address -------------------------------------------------------- */

static int
parse_port(const char *s, const char *what, const char *spec, uint16_t *out,
	   struct cqrs_err *err)
{
	unsigned long v = 0;

	if (*s == '\0')
		return cqrs_err_set(err, CQRS_ECONFIG, "%s: \"%s\" has no port", what, spec);
	for (const char *p = s; *p != '\0'; p++) {
		if (!isdigit((unsigned char)*p) || v > 65535)
			return cqrs_err_set(err, CQRS_ECONFIG,
					    "%s: \"%s\": the port must be a number from 0 to 65535",
					    what, spec);
		v = v * 10 + (unsigned long)(*p - '0');
	}
	if (v > 65535)
		return cqrs_err_set(err, CQRS_ECONFIG,
				    "%s: \"%s\": the port must be a number from 0 to 65535",
				    what, spec);
	*out = (uint16_t)v;
	return 0;
}

static bool
is_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
		return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
	}
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
		if (IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr))
			return true;
		return IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr) && sin6->sin6_addr.s6_addr[12] == 127;
	}
	return false;
}

int
cqrs_httpd_parse_addr(const char *spec, bool allow_remote, const char *what, struct httpd_addr *out,
		 struct cqrs_err *err)
{
	char host[64];
	const char *port_s;
	uint16_t port = 0;
	bool all_digits = true;
	struct httpd_addr a;
	int rc;

	memset(&a, 0, sizeof(a));
	if (spec == NULL || spec[0] == '\0') {
		*out = a;
		return 0;
	}
	if (spec[0] == '/') {
		struct sockaddr_un *sun = (struct sockaddr_un *)&a.ss;
		size_t len = strlen(spec);

		if (len >= sizeof(sun->sun_path) || len + 5 >= sizeof(a.text))
			return cqrs_err_set(err, CQRS_ECONFIG, "%s: \"%s\" is too long for a Unix "
					    "socket (at most %zu bytes)", what, spec,
					    sizeof(sun->sun_path) - 1);
		sun->sun_family = AF_UNIX;
		memcpy(sun->sun_path, spec, len + 1);
		a.len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
		snprintf(a.text, sizeof(a.text), "unix:%s", spec);
		*out = a;
		return 0;
	}
	for (const char *p = spec; *p != '\0'; p++)
		all_digits = all_digits && isdigit((unsigned char)*p);
	if (all_digits) {
		snprintf(host, sizeof(host), "127.0.0.1");
		port_s = spec;
	} else if (spec[0] == '[') {
		const char *close = strchr(spec, ']');
		size_t len = close ? (size_t)(close - spec - 1) : 0;
		if (close == NULL || close[1] != ':' || len == 0 || len >= sizeof(host))
			return cqrs_err_set(err, CQRS_ECONFIG,
					    "%s: \"%s\" is not [IPV6]:PORT", what, spec);
		memcpy(host, spec + 1, len);
		host[len] = '\0';
		port_s = close + 2;
	} else {
		const char *colon = strrchr(spec, ':');
		size_t len = colon ? (size_t)(colon - spec) : 0;
		if (colon == NULL || len == 0 || len >= sizeof(host) ||
		    memchr(spec, ':', len) != NULL)
			return cqrs_err_set(err, CQRS_ECONFIG,
					    "%s: \"%s\" is not HOST:PORT, [IPV6]:PORT or PORT",
					    what, spec);
		memcpy(host, spec, len);
		host[len] = '\0';
		port_s = colon + 1;
	}
	if ((rc = parse_port(port_s, what, spec, &port, err)) < 0)
		return rc;
	if (strcmp(host, "localhost") == 0)
		snprintf(host, sizeof(host), "127.0.0.1");
	if (spec[0] == '[') {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a.ss;
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
			return cqrs_err_set(err, CQRS_ECONFIG, "%s: \"%s\" is not an IPv6 address",
					    what, host);
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		a.len = sizeof(*sin6);
		snprintf(a.text, sizeof(a.text), "[%s]:%u", host, (unsigned)port);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&a.ss;
		if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
			return cqrs_err_set(err, CQRS_ECONFIG,
					    "%s: \"%s\" is not an IPv4 address or \"localhost\" "
					    "(host names are not resolved)", what, host);
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		a.len = sizeof(*sin);
		snprintf(a.text, sizeof(a.text), "%s:%u", host, (unsigned)port);
	}
	if (!allow_remote && !is_loopback(&a.ss))
		return cqrs_err_set(err, CQRS_ECONFIG,
				    "%s: %s is not a loopback address: the endpoint has no "
				    "authentication (set http_allow_remote = true to serve it "
				    "beyond this host)", what, a.text);
	*out = a;
	return 0;
}

int
cqrs_httpd_config_load(const struct config *cfg, const char *section, struct httpd_addr *out,
		  struct cqrs_err *err)
{
	char what[96];
	bool remote = false;
	int rc;

	if ((rc = cqrs_config_get_bool(cfg, section, "http_allow_remote", false, &remote, err)) < 0)
		return rc;
	snprintf(what, sizeof(what), "[%s] http", section);
	return cqrs_httpd_parse_addr(cqrs_config_get(cfg, section, "http", NULL), remote, what, out, err);
}

/* ---- serving ------------------------------------------------------------ */

/* Whether the answer carries a body: not for HEAD (evhttp would send it). */
static bool
wants_body(struct evhttp_request *req)
{
	return evhttp_request_get_command(req) != EVHTTP_REQ_HEAD;
}

static void
reply_text(struct evhttp_request *req, int code, const char *phrase, const char *text)
{
	struct evbuffer *body = evbuffer_new();

	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; charset=utf-8");
	if (body != NULL && wants_body(req))
		evbuffer_add_printf(body, "%s\n", text);
	evhttp_send_reply(req, code, phrase, body);
	if (body != NULL)
		evbuffer_free(body);
}

static void
on_request(struct evhttp_request *req, void *arg)
{
	struct httpd *h = arg;
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	struct evkeyvalq *hdrs = evhttp_request_get_output_headers(req);

	evhttp_add_header(hdrs, "Cache-Control", "no-store");
	if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD) {
		evhttp_add_header(hdrs, "Allow", "GET, HEAD");
		reply_text(req, 405, "Method Not Allowed", "method not allowed");
		return;
	}
	if (path != NULL && strcmp(path, "/health") == 0) {
		char reason[REASON_MAX] = "";
		bool ok = h->hd.health == NULL || h->hd.health(h->hd.arg, reason, sizeof(reason));
		reason[sizeof(reason) - 1] = '\0';
		if (ok)
			reply_text(req, 200, "OK", "ok");
		else
			reply_text(req, 503, "Service Unavailable",
				   reason[0] != '\0' ? reason : "unavailable");
		return;
	}
	if (path != NULL && strcmp(path, "/metrics") == 0) {
		struct evbuffer *body = evbuffer_new();
		if (body == NULL) {
			evhttp_send_error(req, 500, "out of memory");
			return;
		}
		if (h->hd.metrics != NULL && wants_body(req))
			h->hd.metrics(h->hd.arg, body);
		evhttp_add_header(hdrs, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
		evhttp_send_reply(req, 200, "OK", body);
		evbuffer_free(body);
		return;
	}
	reply_text(req, 404, "Not Found", "not found: try /health or /metrics");
}

static void
on_wake(evutil_socket_t fd, short what, void *arg)
{
	struct httpd *h = arg;

	(void)fd;
	(void)what;
	event_base_loopbreak(h->base);
}

static void *
thread_main(void *arg)
{
	struct httpd *h = arg;

	event_base_dispatch(h->base);
	return NULL;
}

/* Binds and listens; the fd, or a negative error. */
static int
bind_addr(const struct httpd_addr *addr, struct cqrs_err *err)
{
	int one = 1, fd, rc;
	bool removed;

	if (addr->ss.ss_family == AF_UNIX &&
	    (rc = cqrs_unix_socket_clear(((const struct sockaddr_un *)&addr->ss)->sun_path,
					 "http", &removed, err)) < 0)
		return rc;
	fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return cqrs_err_set(err, CQRS_EIO, "http %s: socket: %s", addr->text,
				    strerror(errno));
	if (addr->ss.ss_family != AF_UNIX)
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (addr->ss.ss_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&addr->ss, addr->len) != 0 || listen(fd, 64) != 0) {
		int e = errno;
		close(fd);
		return cqrs_err_set(err, CQRS_EIO, "http: cannot listen on %s: %s", addr->text,
				    strerror(e));
	}
	/* who may scrape is who may open the file: the daemons' group */
	if (addr->ss.ss_family == AF_UNIX &&
	    chmod(((const struct sockaddr_un *)&addr->ss)->sun_path, 0660) != 0) {
		int e = errno;
		close(fd);
		return cqrs_err_set(err, CQRS_EIO, "http %s: chmod: %s", addr->text, strerror(e));
	}
	return fd;
}

/* ---- the connection cap -------------------------------------------------- */

/* Drops the connections evhttp has freed; accepts again below the cap. */
static void
sweep(struct httpd *h)
{
	int n = atomic_load(&h->n_conns);

	for (int i = 0; i < n;) {
		bufferevent_data_cb r, w;
		bufferevent_event_cb e;
		void *arg;

		bufferevent_getcb(h->conns[i], &r, &w, &e, &arg);
		if (r != NULL || w != NULL || e != NULL) {
			i++;
			continue;
		}
		bufferevent_decref(h->conns[i]);	/* evhttp's is gone: closes it */
		h->conns[i] = h->conns[--n];
	}
	atomic_store(&h->n_conns, n);
	if (h->paused && n < HTTPD_MAX_CONNECTIONS && h->listener != NULL) {
		evconnlistener_enable(h->listener);
		h->paused = false;
	}
}

static void
on_sweep(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	sweep(arg);
}

/* evhttp's new connection: its bufferevent, counted. */
static struct bufferevent *
conn_new(struct event_base *base, void *arg)
{
	struct httpd *h = arg;
	struct bufferevent *bev;
	int n;

	sweep(h);
	bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL)
		return NULL;
	n = atomic_load(&h->n_conns);
	if (n >= HTTPD_MAX_CONNECTIONS + 1)
		return bev;	/* cannot happen: accepting stops at the cap */
	bufferevent_incref(bev);
	h->conns[n++] = bev;
	atomic_store(&h->n_conns, n);
	if (n >= HTTPD_MAX_CONNECTIONS && h->listener != NULL && !h->paused) {
		evconnlistener_disable(h->listener);
		h->paused = true;
	}
	return bev;
}

int
cqrs_httpd_new(struct event_base *base, const struct httpd_addr *addr,
	  const struct httpd_handlers *handlers, struct httpd **out, struct cqrs_err *err)
{
	struct httpd *h = NULL;
	struct sockaddr_storage bound;
	socklen_t blen = sizeof(bound);
	char host[INET6_ADDRSTRLEN];
	int fd = -1, rc;

	*out = NULL;
	if (addr == NULL || addr->len == 0)
		return cqrs_err_set(err, CQRS_EINVALID, "http: no address to listen on");
	h = calloc(1, sizeof(*h));
	if (h == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	h->wake[0] = h->wake[1] = -1;
	if (handlers != NULL)
		h->hd = *handlers;
	h->base = base;
	if (base == NULL) {
		h->own_base = true;
		h->threaded = true;
		h->base = event_base_new();
		if (h->base == NULL || pipe2(h->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
			rc = cqrs_err_set(err, CQRS_ENOMEM, "http: cannot make its event loop");
			goto fail;
		}
		h->wake_ev = event_new(h->base, h->wake[0], EV_READ, on_wake, h);
		if (h->wake_ev == NULL || event_add(h->wake_ev, NULL) != 0) {
			rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
			goto fail;
		}
	}
	h->http = evhttp_new(h->base);
	if (h->http == NULL) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		goto fail;
	}
	evhttp_set_timeout(h->http, HTTP_TIMEOUT_S);
	evhttp_set_max_headers_size(h->http, HTTP_MAX_HEADERS);
	evhttp_set_max_body_size(h->http, 0);
	evhttp_set_gencb(h->http, on_request, h);
	evhttp_set_bevcb(h->http, conn_new, h);
	h->sweep_ev = event_new(h->base, -1, EV_PERSIST, on_sweep, h);
	if (h->sweep_ev == NULL || event_add(h->sweep_ev, &(struct timeval){ 1, 0 }) != 0) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		goto fail;
	}
	if ((fd = bind_addr(addr, err)) < 0) {
		rc = fd;
		goto fail;
	}
	if (addr->ss.ss_family == AF_UNIX &&
	    (h->unix_path = strdup(((const struct sockaddr_un *)&addr->ss)->sun_path)) == NULL) {
		close(fd);
		unlink(((const struct sockaddr_un *)&addr->ss)->sun_path);
		rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		goto fail;
	}
	if (getsockname(fd, (struct sockaddr *)&bound, &blen) != 0) {
		rc = cqrs_err_set(err, CQRS_EIO, "http %s: getsockname: %s", addr->text,
				  strerror(errno));
		close(fd);
		goto fail;
	}
	if (bound.ss_family == AF_UNIX) {
		h->port = 0;
		snprintf(h->address, sizeof(h->address), "%s", addr->text);
	} else if (bound.ss_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&bound;
		h->port = ntohs(s6->sin6_port);
		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		snprintf(h->address, sizeof(h->address), "[%s]:%u", host, (unsigned)h->port);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&bound;
		h->port = ntohs(s4->sin_port);
		inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
		snprintf(h->address, sizeof(h->address), "%s:%u", host, (unsigned)h->port);
	}
	/* once accepted, evhttp owns fd and closes it in evhttp_free() */
	{
		struct evhttp_bound_socket *bound_sock = evhttp_accept_socket_with_handle(h->http, fd);

		if (bound_sock == NULL) {
			close(fd);
			rc = cqrs_err_set(err, CQRS_EIO, "http: cannot serve on %s", addr->text);
			goto fail;
		}
		h->listener = evhttp_bound_socket_get_listener(bound_sock);
	}
	if (h->threaded) {
		sigset_t all, old;
		/* signals go to the daemon's own threads, not this one */
		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, &old);
		rc = pthread_create(&h->thread, NULL, thread_main, h);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (rc != 0) {
			h->threaded = false;
			rc = cqrs_err_set(err, CQRS_ENOMEM, "http: cannot start its thread: %s",
					  strerror(rc));
			goto fail;
		}
	}
	*out = h;
	return 0;
fail:
	cqrs_httpd_free(h);
	return rc;
}

void
cqrs_httpd_free(struct httpd *h)
{
	if (h == NULL)
		return;
	if (h->threaded) {
		char b = 1;
		ssize_t w = write(h->wake[1], &b, 1);
		(void)w;
		pthread_join(h->thread, NULL);
	}
	if (h->http != NULL)
		evhttp_free(h->http);	/* frees its connections: ours go below */
	for (int i = 0; i < atomic_load(&h->n_conns); i++)
		bufferevent_decref(h->conns[i]);
	if (h->sweep_ev != NULL)
		event_free(h->sweep_ev);
	if (h->unix_path != NULL) {
		unlink(h->unix_path);
		free(h->unix_path);
	}
	if (h->wake_ev != NULL)
		event_free(h->wake_ev);
	if (h->wake[0] >= 0)
		close(h->wake[0]);
	if (h->wake[1] >= 0)
		close(h->wake[1]);
	if (h->own_base && h->base != NULL)
		event_base_free(h->base);
	free(h);
}

uint16_t
cqrs_httpd_port(const struct httpd *h)
{
	return h->port;
}

int
cqrs_httpd_connections(const struct httpd *h)
{
	return atomic_load(&h->n_conns);
}

const char *
cqrs_httpd_address(const struct httpd *h)
{
	return h->address;
}

/* ---- Prometheus text format ---------------------------------------------- */

void
cqrs_httpd_metric_header(struct evbuffer *out, const char *name, const char *type, const char *help)
{
	/* HELP text escapes only '\\' and newlines */
	evbuffer_add_printf(out, "# HELP %s ", name);
	for (const char *p = help; p != NULL && *p != '\0'; p++) {
		if (*p == '\\')
			evbuffer_add(out, "\\\\", 2);
		else if (*p == '\n')
			evbuffer_add(out, "\\n", 2);
		else
			evbuffer_add(out, p, 1);
	}
	evbuffer_add_printf(out, "\n# TYPE %s %s\n", name, type);
}

static void
sample_name(struct evbuffer *out, const char *name, const char *labels)
{
	if (labels != NULL && labels[0] != '\0')
		evbuffer_add_printf(out, "%s{%s} ", name, labels);
	else
		evbuffer_add_printf(out, "%s ", name);
}

void
cqrs_httpd_metric_u64(struct evbuffer *out, const char *name, const char *labels, uint64_t v)
{
	sample_name(out, name, labels);
	evbuffer_add_printf(out, "%" PRIu64 "\n", v);
}

void
cqrs_httpd_metric_double(struct evbuffer *out, const char *name, const char *labels, double v)
{
	sample_name(out, name, labels);
	if (isnan(v))
		evbuffer_add_printf(out, "NaN\n");
	else if (isinf(v))
		evbuffer_add_printf(out, "%sInf\n", v > 0 ? "+" : "-");
	else
		evbuffer_add_printf(out, "%.15g\n", v);
}

void
cqrs_httpd_counter(struct evbuffer *out, const char *name, const char *help, uint64_t v)
{
	cqrs_httpd_metric_header(out, name, "counter", help);
	cqrs_httpd_metric_u64(out, name, NULL, v);
}

void
cqrs_httpd_gauge(struct evbuffer *out, const char *name, const char *help, double v)
{
	cqrs_httpd_metric_header(out, name, "gauge", help);
	cqrs_httpd_metric_double(out, name, NULL, v);
}

void
cqrs_httpd_label_escape(const char *in, char *out, size_t size)
{
	size_t o = 0;

	if (size == 0)
		return;
	for (; in != NULL && *in != '\0'; in++) {
		const char *rep = NULL;
		char c[2] = { *in, '\0' };
		size_t len;
		if (*in == '\\')
			rep = "\\\\";
		else if (*in == '"')
			rep = "\\\"";
		else if (*in == '\n')
			rep = "\\n";
		else
			rep = c;
		len = strlen(rep);
		if (o + len >= size)
			break;
		memcpy(out + o, rep, len);
		o += len;
	}
	out[o] = '\0';
}

/* ---- histograms ---------------------------------------------------------- */

int
cqrs_httpd_hist_init(struct httpd_hist *h, const uint64_t *le_us, size_t n)
{
	if (n == 0 || n > HTTPD_HIST_MAX_BUCKETS)
		return CQRS_EINVALID;
	for (size_t i = 1; i < n; i++)
		if (le_us[i] <= le_us[i - 1])
			return CQRS_EINVALID;
	memcpy(h->le_us, le_us, n * sizeof(*le_us));
	for (size_t i = 0; i <= HTTPD_HIST_MAX_BUCKETS; i++)
		atomic_store_explicit(&h->counts[i], 0, memory_order_relaxed);
	atomic_store_explicit(&h->sum_us, 0, memory_order_relaxed);
	h->n = n;
	return 0;
}

void
cqrs_httpd_hist_observe_us(struct httpd_hist *h, uint64_t us)
{
	size_t n = h->n ? h->n : DEFAULT_N;
	const uint64_t *le = h->n ? h->le_us : default_le_us;
	size_t i = 0;

	while (i < n && us > le[i])
		i++;
	atomic_fetch_add_explicit(&h->counts[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_us, us, memory_order_relaxed);
}

uint64_t
cqrs_httpd_hist_count(const struct httpd_hist *h)
{
	size_t n = h->n ? h->n : DEFAULT_N;
	uint64_t total = 0;

	for (size_t i = 0; i <= n; i++)
		total += atomic_load_explicit(&h->counts[i], memory_order_relaxed);
	return total;
}

void
cqrs_httpd_hist_write(struct evbuffer *out, const char *name, const char *help, const char *labels,
		 const struct httpd_hist *h)
{
	size_t n = h->n ? h->n : DEFAULT_N;
	const uint64_t *le = h->n ? h->le_us : default_le_us;
	bool lab = labels != NULL && labels[0] != '\0';
	double sum;
	uint64_t cum = 0;

	if (help != NULL)
		cqrs_httpd_metric_header(out, name, "histogram", help);
	/* one pass over the counts: _count is the +Inf bucket of this very pass */
	for (size_t i = 0; i < n; i++) {
		cum += atomic_load_explicit(&h->counts[i], memory_order_relaxed);
		evbuffer_add_printf(out, "%s_bucket{%s%sle=\"%.6g\"} %" PRIu64 "\n", name,
				    lab ? labels : "", lab ? "," : "", (double)le[i] / 1e6, cum);
	}
	cum += atomic_load_explicit(&h->counts[n], memory_order_relaxed);
	evbuffer_add_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name,
			    lab ? labels : "", lab ? "," : "", cum);
	sum = (double)atomic_load_explicit(&h->sum_us, memory_order_relaxed) / 1e6;
	if (lab) {
		evbuffer_add_printf(out, "%s_sum{%s} %.6f\n", name, labels, sum);
		evbuffer_add_printf(out, "%s_count{%s} %" PRIu64 "\n", name, labels, cum);
	} else {
		evbuffer_add_printf(out, "%s_sum %.6f\n", name, sum);
		evbuffer_add_printf(out, "%s_count %" PRIu64 "\n", name, cum);
	}
}

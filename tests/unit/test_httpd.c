/*
 * test_httpd.c - common/httpd.c: the address rules (loopback only unless
 * allowed), the Prometheus text it writes (parsed back strictly), the
 * latency histogram, and serving /health and /metrics on a caller's loop
 * and on its own thread.
 */
#include <arpa/inet.h>
#include <check.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "config.h"
#include "httpd.h"
#include "scrape.h"

/* ---- addresses ------------------------------------------------------------------------- */

static struct httpd_addr
addr_ok(const char *spec, bool remote)
{
	struct httpd_addr a;
	struct cqrs_err err = { 0 };
	int rc = cqrs_httpd_parse_addr(spec, remote, "[x] http", &a, &err);

	ck_assert_msg(rc == 0, "\"%s\": %s", spec, err.msg);
	return a;
}

static void
addr_bad(const char *spec, bool remote, const char *want)
{
	struct httpd_addr a;
	struct cqrs_err err = { 0 };
	int rc = cqrs_httpd_parse_addr(spec, remote, "[x] http", &a, &err);

	ck_assert_msg(rc == CQRS_ECONFIG, "\"%s\" should be refused, rc %d", spec, rc);
	ck_assert_msg(strncmp(err.msg, "[x] http: ", 10) == 0, "message names the key: %s", err.msg);
	ck_assert_msg(strstr(err.msg, want) != NULL, "\"%s\": message \"%s\" should say \"%s\"",
		      spec, err.msg, want);
}

START_TEST(addresses)
{
	struct httpd_addr a;

	a = addr_ok(NULL, false);
	ck_assert_int_eq(a.len, 0);
	a = addr_ok("", false);
	ck_assert_int_eq(a.len, 0);
	a = addr_ok("9101", false);
	ck_assert_str_eq(a.text, "127.0.0.1:9101");
	ck_assert_int_eq(a.ss.ss_family, AF_INET);
	a = addr_ok("127.0.0.1:0", false);
	ck_assert_str_eq(a.text, "127.0.0.1:0");
	a = addr_ok("127.1.2.3:65535", false);
	ck_assert_str_eq(a.text, "127.1.2.3:65535");
	a = addr_ok("localhost:80", false);
	ck_assert_str_eq(a.text, "127.0.0.1:80");
	a = addr_ok("[::1]:9101", false);
	ck_assert_str_eq(a.text, "[::1]:9101");
	ck_assert_int_eq(a.ss.ss_family, AF_INET6);
	a = addr_ok("0.0.0.0:9101", true);
	ck_assert_str_eq(a.text, "0.0.0.0:9101");
	a = addr_ok("[::]:1", true);
	ck_assert_int_eq(a.ss.ss_family, AF_INET6);

	addr_bad("0.0.0.0:9101", false, "not a loopback address");
	addr_bad("10.1.2.3:9101", false, "http_allow_remote");
	addr_bad("[::]:9101", false, "not a loopback address");
	addr_bad("127.0.0.1", false, "is not HOST:PORT");
	addr_bad("127.0.0.1:", false, "has no port");
	addr_bad("127.0.0.1:65536", false, "0 to 65535");
	addr_bad("127.0.0.1:99999999999999999999", false, "0 to 65535");
	addr_bad("127.0.0.1:http", false, "0 to 65535");
	addr_bad("127.0.0.1:-1", false, "0 to 65535");
	addr_bad("example.com:80", true, "not resolved");
	addr_bad("::1:9101", false, "is not HOST:PORT");
	addr_bad("[::1]9101", false, "[IPV6]:PORT");
	addr_bad("[127.0.0.1]:80", false, "not an IPv6 address");
	addr_bad("[]:80", false, "[IPV6]:PORT");
}
END_TEST

START_TEST(config_keys)
{
	struct config *cfg = NULL;
	struct httpd_addr a;
	struct cqrs_err err = { 0 };

	ck_assert_int_eq(cqrs_config_load_string("[a]\nhttp = 0.0.0.0:1\n[b]\nhttp = 0.0.0.0:1\n"
					    "http_allow_remote = yes\n[c]\nhttp_allow_remote = maybe\n",
					    "t", &cfg, &err), 0);
	ck_assert_int_eq(cqrs_httpd_config_load(cfg, "a", &a, &err), CQRS_ECONFIG);
	ck_assert_msg(strstr(err.msg, "[a] http: 0.0.0.0:1 is not a loopback") != NULL, "%s",
		      err.msg);
	ck_assert_int_eq(cqrs_httpd_config_load(cfg, "b", &a, &err), 0);
	ck_assert_int_ne(a.len, 0);
	ck_assert_int_eq(cqrs_httpd_config_load(cfg, "c", &a, &err), CQRS_ECONFIG);
	ck_assert_msg(strstr(err.msg, "http_allow_remote") != NULL, "%s", err.msg);
	ck_assert_int_eq(cqrs_httpd_config_load(cfg, "none", &a, &err), 0);
	ck_assert_int_eq(a.len, 0);
	cqrs_config_free(cfg);
}
END_TEST

/* ---- the text format --------------------------------------------------------------------- */

static char *
text_of(struct evbuffer *b)
{
	size_t n = evbuffer_get_length(b);
	char *s = malloc(n + 1);

	ck_assert_ptr_nonnull(s);
	evbuffer_copyout(b, s, n);
	s[n] = '\0';
	return s;
}

static struct scrape *
parse_ok(const char *text)
{
	char err[300];
	struct scrape *s = scrape_parse(text, err, sizeof(err));

	ck_assert_msg(s != NULL, "%s in:\n%s", err, text);
	return s;
}

START_TEST(prometheus_text)
{
	struct evbuffer *b = evbuffer_new();
	char esc[64], labels[96];
	struct scrape *s;
	char *text;

	cqrs_httpd_counter(b, "x_total", "Things\\done\nsecond line.", UINT64_MAX);
	cqrs_httpd_gauge(b, "g", "A gauge.", -2.5);
	cqrs_httpd_gauge(b, "g_inf", "Inf.", INFINITY);
	cqrs_httpd_gauge(b, "g_nan", "NaN.", NAN);
	cqrs_httpd_metric_header(b, "by_label", "counter", "Labelled.");
	cqrs_httpd_label_escape("a\"b\\c\nd", esc, sizeof(esc));
	ck_assert_str_eq(esc, "a\\\"b\\\\c\\nd");
	snprintf(labels, sizeof(labels), "k=\"%s\"", esc);
	cqrs_httpd_metric_u64(b, "by_label", labels, 7);
	cqrs_httpd_metric_u64(b, "by_label", "k=\"plain\"", 8);
	text = text_of(b);
	ck_assert_msg(strstr(text, "# HELP x_total Things\\\\done\\nsecond line.\n# TYPE x_total counter\n"
				   "x_total 18446744073709551615\n") != NULL, "%s", text);
	ck_assert_msg(strstr(text, "g_inf +Inf\n") != NULL && strstr(text, "g_nan NaN\n") != NULL,
		      "%s", text);
	s = parse_ok(text);
	ck_assert_str_eq(scrape_type(s, "x_total"), "counter");
	ck_assert(scrape_value(s, "g", NULL) == -2.5);
	ck_assert(isinf(scrape_value(s, "g_inf", NULL)));
	ck_assert(scrape_value(s, "by_label", labels) == 7);
	ck_assert(scrape_value(s, "by_label", "k=\"plain\"") == 8);
	ck_assert_uint_eq(scrape_count(s, "by_label"), 2);
	scrape_free(s);
	free(text);

	/* escaping stops at the buffer's end, whole escapes only */
	cqrs_httpd_label_escape("\"\"\"", esc, 4);
	ck_assert_str_eq(esc, "\\\"");
	evbuffer_free(b);
}
END_TEST

/* The parser used by the integration tests refuses what Prometheus refuses. */
START_TEST(parser_is_strict)
{
	static const char *const bad[] = {
		"x 1\n",					/* no TYPE */
		"# TYPE x counter\nx 1",			/* no final newline */
		"# TYPE x counter\nx one\n",
		"# TYPE x counter\nx{a=\"b} 1\n",
		"# TYPE x counter\nx{a=b} 1\n",
		"# TYPE x counter\nx{1a=\"b\"} 1\n",
		"# TYPE x counter\n# TYPE x counter\nx 1\n",
		"# TYPE x frequency\nx 1\n",
		"# TYPE 1x counter\n",
		"# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
		"# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n",
		"# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\n",
		"# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\n"
		"h_bucket{le=\"+Inf\"} 1\nh_count 1\n",
	};
	char err[300];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct scrape *s = scrape_parse(bad[i], err, sizeof(err));
		ck_assert_msg(s == NULL, "accepted:\n%s", bad[i]);
	}
	scrape_free(parse_ok("# TYPE h histogram\nh_bucket{a=\"1\",le=\"0.5\"} 1\n"
			     "h_bucket{a=\"1\",le=\"+Inf\"} 3\nh_sum{a=\"1\"} 2.5\nh_count{a=\"1\"} 3\n"
			     "# a comment\n\n# TYPE x untyped\nx{a=\"}\"} 1 1700000000000\n"));
	scrape_free(parse_ok(""));
}
END_TEST

START_TEST(histogram)
{
	struct httpd_hist h;
	struct evbuffer *b = evbuffer_new();
	static const uint64_t le[] = { 1000, 2000 };
	static const uint64_t unordered[] = { 2000, 1000 };
	struct scrape *s;
	char *text;

	memset(&h, 0, sizeof(h));		/* zeroed: the default buckets */
	cqrs_httpd_hist_observe_us(&h, 0);
	cqrs_httpd_hist_observe_us(&h, 500);		/* le is inclusive */
	cqrs_httpd_hist_observe_us(&h, 501);
	cqrs_httpd_hist_observe_us(&h, 10000000);
	cqrs_httpd_hist_observe_us(&h, 10000001);	/* +Inf only */
	ck_assert_uint_eq(cqrs_httpd_hist_count(&h), 5);
	cqrs_httpd_hist_write(b, "lat_seconds", "Latency.", NULL, &h);
	text = text_of(b);
	s = parse_ok(text);
	ck_assert_str_eq(scrape_type(s, "lat_seconds"), "histogram");
	ck_assert(scrape_value(s, "lat_seconds_bucket", "le=\"0.0005\"") == 2);
	ck_assert(scrape_value(s, "lat_seconds_bucket", "le=\"0.001\"") == 3);
	ck_assert(scrape_value(s, "lat_seconds_bucket", "le=\"10\"") == 4);
	ck_assert(scrape_value(s, "lat_seconds_bucket", "le=\"+Inf\"") == 5);
	ck_assert(scrape_value(s, "lat_seconds_count", NULL) == 5);
	ck_assert_msg(fabs(scrape_value(s, "lat_seconds_sum", NULL) - 20.001002) < 1e-9, "%s", text);
	ck_assert_uint_eq(scrape_count(s, "lat_seconds_bucket"), 15);
	scrape_free(s);
	free(text);

	/* custom buckets, labelled series under one header */
	evbuffer_drain(b, evbuffer_get_length(b));
	ck_assert_int_eq(cqrs_httpd_hist_init(&h, unordered, 2), CQRS_EINVALID);
	ck_assert_int_eq(cqrs_httpd_hist_init(&h, le, 0), CQRS_EINVALID);
	ck_assert_int_eq(cqrs_httpd_hist_init(&h, le, 2), 0);
	ck_assert_uint_eq(cqrs_httpd_hist_count(&h), 0);
	cqrs_httpd_hist_observe_us(&h, 1500);
	cqrs_httpd_metric_header(b, "h_seconds", "histogram", "Two series.");
	cqrs_httpd_hist_write(b, "h_seconds", NULL, "g=\"a\"", &h);
	cqrs_httpd_hist_observe_us(&h, 3000);
	cqrs_httpd_hist_write(b, "h_seconds", NULL, "g=\"b\"", &h);
	text = text_of(b);
	s = parse_ok(text);
	ck_assert(scrape_value(s, "h_seconds_bucket", "g=\"a\",le=\"0.002\"") == 1);
	ck_assert(scrape_value(s, "h_seconds_count", "g=\"a\"") == 1);
	ck_assert(scrape_value(s, "h_seconds_bucket", "g=\"b\",le=\"0.002\"") == 1);
	ck_assert(scrape_value(s, "h_seconds_bucket", "g=\"b\",le=\"+Inf\"") == 2);
	ck_assert(scrape_value(s, "h_seconds_sum", "g=\"b\"") == 0.0045);
	scrape_free(s);
	free(text);
	evbuffer_free(b);
}
END_TEST

/* Observers on several threads while another thread writes: nothing lost. */
static struct httpd_hist shared_hist;

static void *
observer(void *arg)
{
	(void)arg;
	for (int i = 0; i < 100000; i++)
		cqrs_httpd_hist_observe_us(&shared_hist, (uint64_t)(i % 3000));
	return NULL;
}

START_TEST(histogram_threads)
{
	pthread_t t[4];
	struct evbuffer *b = evbuffer_new();

	memset(&shared_hist, 0, sizeof(shared_hist));
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, observer, NULL), 0);
	for (int i = 0; i < 20; i++) {
		char *text, err[300];
		struct scrape *s;
		cqrs_httpd_hist_write(b, "c_seconds", "Concurrent.", NULL, &shared_hist);
		text = text_of(b);
		s = scrape_parse(text, err, sizeof(err));
		ck_assert_msg(s != NULL, "%s", err);	/* cumulative even mid-update */
		scrape_free(s);
		free(text);
		evbuffer_drain(b, evbuffer_get_length(b));
	}
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	ck_assert_uint_eq(cqrs_httpd_hist_count(&shared_hist), 400000);
	evbuffer_free(b);
}
END_TEST

/* ---- serving ------------------------------------------------------------------------------ */

struct owner {
	atomic_int healthy;
	atomic_int scrapes;
};

static bool
owner_health(void *arg, char *reason, size_t size)
{
	struct owner *o = arg;

	if (atomic_load(&o->healthy))
		return true;
	snprintf(reason, size, "no database (0 of 8 up)");
	return false;
}

static void
owner_metrics(void *arg, struct evbuffer *out)
{
	struct owner *o = arg;

	cqrs_httpd_counter(out, "owner_scrapes_total", "Scrapes so far.",
		      (uint64_t)atomic_fetch_add(&o->scrapes, 1) + 1);
}

static void
exercise(struct httpd *h, struct owner *o)
{
	char *headers, *body;
	struct scrape *s;
	int status;

	ck_assert_uint_ne(cqrs_httpd_port(h), 0);
	ck_assert_msg(strncmp(cqrs_httpd_address(h), "127.0.0.1:", 10) == 0, "%s", cqrs_httpd_address(h));
	status = scrape_http(cqrs_httpd_port(h), "GET", "/health", &headers, &body, 5000);
	ck_assert_int_eq(status, 200);
	ck_assert_str_eq(body, "ok\n");
	free(headers);
	free(body);
	atomic_store(&o->healthy, 0);
	status = scrape_http(cqrs_httpd_port(h), "GET", "/health?verbose=1", NULL, &body, 5000);
	ck_assert_int_eq(status, 503);
	ck_assert_str_eq(body, "no database (0 of 8 up)\n");
	free(body);
	atomic_store(&o->healthy, 1);

	s = scrape_metrics(cqrs_httpd_port(h));
	ck_assert(scrape_value(s, "owner_scrapes_total", NULL) == 1);
	scrape_free(s);
	s = scrape_metrics(cqrs_httpd_port(h));
	ck_assert(scrape_value(s, "owner_scrapes_total", NULL) == 2);
	scrape_free(s);

	status = scrape_http(cqrs_httpd_port(h), "HEAD", "/metrics", &headers, &body, 5000);
	ck_assert_int_eq(status, 200);
	ck_assert_str_eq(body, "");
	free(headers);
	free(body);
	status = scrape_http(cqrs_httpd_port(h), "POST", "/metrics", &headers, &body, 5000);
	ck_assert_int_eq(status, 405);
	ck_assert_msg(strstr(headers, "Allow: GET, HEAD") != NULL, "%s", headers);
	free(headers);
	free(body);
	status = scrape_http(cqrs_httpd_port(h), "GET", "/", NULL, &body, 5000);
	ck_assert_int_eq(status, 404);
	free(body);
	status = scrape_http(cqrs_httpd_port(h), "GET", "/metricsx", NULL, &body, 5000);
	ck_assert_int_eq(status, 404);
	free(body);
}

static void *
run_loop(void *arg)
{
	event_base_dispatch(arg);
	return NULL;
}

static void
stop_loop(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	event_base_loopbreak(arg);
}

START_TEST(serve_on_callers_loop)
{
	struct owner o = { 1, 0 };
	struct httpd_handlers hd = { owner_health, owner_metrics, &o };
	struct event_base *base = event_base_new();
	struct httpd_addr a = addr_ok("127.0.0.1:0", false);
	struct httpd *h = NULL;
	struct cqrs_err err = { 0 };
	struct event *stop;
	int pipefd[2];
	pthread_t t;
	char one = 1;

	ck_assert_int_eq(cqrs_httpd_new(base, &a, &hd, &h, &err), 0);
	/* the loop runs on a thread of the test: the test is the scraper */
	ck_assert_int_eq(pipe(pipefd), 0);
	stop = event_new(base, pipefd[0], EV_READ, stop_loop, base);
	event_add(stop, NULL);
	ck_assert_int_eq(pthread_create(&t, NULL, run_loop, base), 0);
	exercise(h, &o);
	ck_assert_int_eq(write(pipefd[1], &one, 1), 1);
	pthread_join(t, NULL);
	cqrs_httpd_free(h);
	event_free(stop);
	event_base_free(base);
	close(pipefd[0]);
	close(pipefd[1]);
}
END_TEST

START_TEST(serve_on_own_thread)
{
	struct owner o = { 1, 0 };
	struct httpd_handlers hd = { owner_health, owner_metrics, &o };
	struct httpd_addr a = addr_ok("localhost:0", false), taken;
	struct httpd *h = NULL, *h2 = NULL;
	struct cqrs_err err = { 0 };
	char spec[32];

	ck_assert_int_eq(cqrs_httpd_new(NULL, &a, &hd, &h, &err), 0);
	exercise(h, &o);
	/* the port is taken now: a second endpoint says so */
	snprintf(spec, sizeof(spec), "127.0.0.1:%u", (unsigned)cqrs_httpd_port(h));
	taken = addr_ok(spec, false);
	ck_assert_int_eq(cqrs_httpd_new(NULL, &taken, &hd, &h2, &err), CQRS_EIO);
	ck_assert_ptr_null(h2);
	ck_assert_msg(strstr(err.msg, spec) != NULL && strstr(err.msg, "in use") != NULL, "%s",
		      err.msg);
	cqrs_httpd_free(h);
	cqrs_httpd_free(NULL);
	/* free and bound again at once (SO_REUSEADDR) */
	ck_assert_int_eq(cqrs_httpd_new(NULL, &taken, NULL, &h2, &err), 0);
	{
		char *body;
		ck_assert_int_eq(scrape_http(cqrs_httpd_port(h2), "GET", "/health", NULL, &body, 5000), 200);
		free(body);
		ck_assert_int_eq(scrape_http(cqrs_httpd_port(h2), "GET", "/metrics", NULL, &body, 5000), 200);
		ck_assert_str_eq(body, "");
		free(body);
	}
	cqrs_httpd_free(h2);
}
END_TEST

/* A TCP connection to 127.0.0.1:port that sends nothing; its fd. */
static int
idle_conn(uint16_t port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	return fd;
}

/* Waits up to ms for cqrs_httpd_connections(h) == want. */
static bool
connections_become(struct httpd *h, int want, int ms)
{
	for (int i = 0; i < ms / 10; i++) {
		if (cqrs_httpd_connections(h) == want)
			return true;
		usleep(10000);
	}
	return cqrs_httpd_connections(h) == want;
}

/* Clients that open connections and send nothing cannot take more than
 * HTTPD_MAX_CONNECTIONS: past it the endpoint stops accepting, and serves
 * again as soon as one closes. */
START_TEST(connections_are_capped)
{
	struct httpd_addr a = addr_ok("127.0.0.1:0", false);
	struct httpd *h = NULL;
	struct cqrs_err err = { 0 };
	int fds[HTTPD_MAX_CONNECTIONS], extra;
	struct pollfd pfd;
	char buf[256];
	ssize_t n;

	ck_assert_int_eq(cqrs_httpd_new(NULL, &a, NULL, &h, &err), 0);
	for (int i = 0; i < HTTPD_MAX_CONNECTIONS; i++)
		fds[i] = idle_conn(cqrs_httpd_port(h));
	ck_assert_msg(connections_become(h, HTTPD_MAX_CONNECTIONS, 5000), "%d open",
		      cqrs_httpd_connections(h));
	/* one more: the kernel completes it, the endpoint leaves it waiting */
	extra = idle_conn(cqrs_httpd_port(h));
	ck_assert_int_eq(write(extra, "GET /health HTTP/1.0\r\n\r\n", 24), 24);
	pfd = (struct pollfd){ .fd = extra, .events = POLLIN };
	ck_assert_int_eq(poll(&pfd, 1, 300), 0);
	ck_assert_int_eq(cqrs_httpd_connections(h), HTTPD_MAX_CONNECTIONS);
	/* one closes: the waiting one is served */
	close(fds[0]);
	pfd = (struct pollfd){ .fd = extra, .events = POLLIN };
	ck_assert_int_eq(poll(&pfd, 1, 20000), 1);
	n = read(extra, buf, sizeof(buf) - 1);
	ck_assert_int_gt(n, 0);
	buf[n] = '\0';
	ck_assert_msg(strncmp(buf, "HTTP/1.0 200", 12) == 0 || strncmp(buf, "HTTP/1.1 200", 12) == 0,
		      "%s", buf);
	close(extra);
	for (int i = 1; i < HTTPD_MAX_CONNECTIONS; i++)
		close(fds[i]);
	ck_assert_msg(connections_become(h, 0, 20000), "%d still open", cqrs_httpd_connections(h));
	cqrs_httpd_free(h);
}
END_TEST

/* An absolute path: a Unix socket, 0660, a stale one replaced, a live one
 * refused, removed at the end. */
START_TEST(serve_on_a_unix_socket)
{
	char dir[] = "/tmp/cqrs-httpd.XXXXXX", path[64], spec[80], buf[512];
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct httpd_addr a;
	struct httpd *h = NULL, *h2 = NULL;
	struct cqrs_err err = { 0 };
	struct stat st;
	int fd;
	ssize_t n;
	size_t got = 0;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/metrics.sock", dir);
	snprintf(spec, sizeof(spec), "%s", path);
	/* a stale socket file (nobody listens) */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	close(fd);
	a = addr_ok(spec, false);
	ck_assert_int_eq(cqrs_httpd_new(NULL, &a, NULL, &h, &err), 0);
	ck_assert_int_eq(cqrs_httpd_port(h), 0);
	{
		char want[96];
		snprintf(want, sizeof(want), "unix:%s", path);
		ck_assert_str_eq(cqrs_httpd_address(h), want);
	}
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0660);
	/* a live one is left alone */
	ck_assert_int_eq(cqrs_httpd_new(NULL, &a, NULL, &h2, &err), CQRS_EIO);
	ck_assert_msg(strstr(err.msg, "another daemon is listening on") != NULL, "%s", err.msg);
	/* it answers */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	ck_assert_int_eq(write(fd, "GET /health HTTP/1.0\r\n\r\n", 24), 24);
	while (got < sizeof(buf) - 1 && (n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
		got += (size_t)n;
	buf[got] = '\0';
	close(fd);
	ck_assert_msg(strstr(buf, " 200 ") != NULL && strstr(buf, "\r\n\r\nok\n") != NULL, "%s", buf);
	cqrs_httpd_free(h);
	ck_assert_int_ne(access(path, F_OK), 0);
	/* a path too long for sun_path, and a file that is no socket */
	{
		char lng[200];
		struct httpd_addr b;

		memset(lng, 'x', sizeof(lng) - 1);
		lng[0] = '/';
		lng[sizeof(lng) - 1] = '\0';
		ck_assert_int_eq(cqrs_httpd_parse_addr(lng, false, "[cmd] http", &b, &err), CQRS_ECONFIG);
		ck_assert_msg(strstr(err.msg, "too long for a Unix socket") != NULL, "%s", err.msg);
	}
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	close(fd);
	ck_assert_int_eq(cqrs_httpd_new(NULL, &a, NULL, &h2, &err), CQRS_EIO);
	ck_assert_msg(strstr(err.msg, "is not a socket") != NULL, "%s", err.msg);
	unlink(path);
	rmdir(dir);
}
END_TEST

START_TEST(serve_ipv6_loopback)
{
	struct httpd_addr a = addr_ok("[::1]:0", false);
	struct httpd *h = NULL;
	struct cqrs_err err = { 0 };
	int rc = cqrs_httpd_new(NULL, &a, NULL, &h, &err);

	if (rc != 0) {
		/* a host without IPv6 at all says so, naming the address */
		ck_assert_msg(strstr(err.msg, "[::1]:0") != NULL, "%s", err.msg);
		return;
	}
	ck_assert_msg(strncmp(cqrs_httpd_address(h), "[::1]:", 6) == 0, "%s", cqrs_httpd_address(h));
	ck_assert_uint_ne(cqrs_httpd_port(h), 0);
	cqrs_httpd_free(h);
}
END_TEST

static Suite *
httpd_suite(void)
{
	Suite *s = suite_create("httpd");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, addresses);
	tcase_add_test(tc, config_keys);
	tcase_add_test(tc, prometheus_text);
	tcase_add_test(tc, parser_is_strict);
	tcase_add_test(tc, histogram);
	tcase_add_test(tc, histogram_threads);
	tcase_add_test(tc, serve_on_callers_loop);
	tcase_add_test(tc, serve_on_own_thread);
	tcase_add_test(tc, serve_ipv6_loopback);
	tcase_add_test(tc, connections_are_capped);
	tcase_add_test(tc, serve_on_a_unix_socket);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(httpd_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

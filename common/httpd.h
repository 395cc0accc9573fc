/*
 * httpd.h - a daemon's optional HTTP endpoint for health and metrics
 * (DESIGN.md, "Operations"), on libevent's evhttp.
 *
 *   [cmd]
 *   http = 127.0.0.1:9101
 *
 *   GET /health   200 "ok\n" when the daemon can do its work, else
 *                 503 "<reason>\n" (the owner's health callback decides)
 *   GET /metrics  200, Prometheus text exposition format 0.0.4
 *                 (the owner's metrics callback writes the samples)
 *   other paths 404, other methods than GET and HEAD 405.
 *
 * Address ([SECTION] http): "PORT" (127.0.0.1), "HOST:PORT" with an IPv4
 * literal or "localhost", "[IPV6]:PORT", or an absolute path: a Unix socket
 * (mode 0660; file permissions are its access control; a stale one is
 * replaced, a live one refused). Empty or absent: no endpoint.
 * PORT 0 binds an ephemeral port; cqrs_httpd_port() tells which. Only loopback
 * addresses are accepted, because the endpoint has no authentication:
 * [SECTION] http_allow_remote = true lifts that (for a Prometheus on
 * another host; put a firewall in front of it).
 *
 * Every daemon with an endpoint lists both keys as known in its section
 * (HTTPD_CONFIG_KEYS) and reads them with cqrs_httpd_config_load().
 *
 * Loops and threads: with a base, the endpoint lives on that loop and the
 * callbacks run on its thread, between the owner's own callbacks (so they
 * may read the owner's state freely). With base NULL it runs its own loop on
 * a thread of its own (for daemons whose main loop blocks, like the
 * tracker's): the callbacks then run on that thread, and must only read what
 * is safe to read from another thread (atomics, or under the owner's lock).
 *
 * At most HTTPD_MAX_CONNECTIONS connections are open at once: past that the
 * endpoint stops accepting (later ones wait in the listen backlog) until
 * one closes; an idle or slow one is closed after 10 s.
 *
 * The metric helpers below only format text; the histogram's counters are
 * C11 atomics (relaxed), so one thread may observe while another scrapes.
 */
#ifndef CQRS_HTTPD_H
#define CQRS_HTTPD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "cqrs/err.h"

struct config;
struct event_base;
struct evbuffer;
struct httpd;

/* The two keys cqrs_httpd_config_load() reads, for a daemon's list of known keys. */
#define HTTPD_CONFIG_KEYS "http", "http_allow_remote"

#define HTTPD_MAX_CONNECTIONS 32

/* Where to listen; len 0: no endpoint. */
struct httpd_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	char text[128];			/* as configured, for logs: "127.0.0.1:9101",
					 * "unix:/run/cqrs/metrics.sock" */
};

/*
 * Parses spec (see above) into *out. A NULL or empty spec gives out->len 0.
 * A non-loopback address without allow_remote, a bad host or a bad port is
 * CQRS_ECONFIG; the message begins with what (a key name like "[cmd] http").
 */
int cqrs_httpd_parse_addr(const char *spec, bool allow_remote, const char *what,
		     struct httpd_addr *out, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Reads [section] http and http_allow_remote from cfg into *out. */
int cqrs_httpd_config_load(const struct config *cfg, const char *section, struct httpd_addr *out,
		      struct cqrs_err *err) __attribute__((warn_unused_result));

/*
 * Health: true when the daemon can do its work; otherwise false with a
 * short reason written to reason (NUL-terminated, at most size bytes).
 */
typedef bool (*httpd_health_fn)(void *arg, char *reason, size_t size);
/* Metrics: appends the samples to out, for example with cqrs_httpd_counter(). */
typedef void (*httpd_metrics_fn)(void *arg, struct evbuffer *out);

struct httpd_handlers {
	httpd_health_fn health;		/* NULL: always healthy */
	httpd_metrics_fn metrics;	/* NULL: an empty page */
	void *arg;			/* borrowed: passed to both */
};

/*
 * Binds addr (len must not be 0) and serves. base is borrowed and must
 * outlive the endpoint; NULL runs a loop on a new thread. handlers is
 * copied. On success *out is owned by the caller (cqrs_httpd_free()); errors:
 * CQRS_EIO (cannot bind, with the address and the reason), CQRS_ENOMEM.
 */
int cqrs_httpd_new(struct event_base *base, const struct httpd_addr *addr,
	      const struct httpd_handlers *handlers, struct httpd **out, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Stops serving, closes the socket and its connections; joins the thread
 * in threaded mode. NULL does nothing. */
void cqrs_httpd_free(struct httpd *h);

/* The bound port (the ephemeral one for port 0). */
uint16_t cqrs_httpd_port(const struct httpd *h);
/* Connections open now (the endpoint's own thread or loop counts them). */
int cqrs_httpd_connections(const struct httpd *h);

/* "HOST:PORT" as bound ("127.0.0.1:41234", "[::1]:9101"). Borrowed. */
const char *cqrs_httpd_address(const struct httpd *h);

/* ---- Prometheus text format ------------------------------------------- */

/*
 * Sample lines are "NAME{LABELS} VALUE". labels is NULL or the text between
 * the braces, already escaped ("outcome=\"ok\""); cqrs_httpd_label_escape()
 * escapes a value that may hold '\\', '"' or a newline. Names must match
 * [a-zA-Z_:][a-zA-Z0-9_:]*; that is the caller's business.
 */

/* "# HELP NAME HELP" and "# TYPE NAME TYPE" (type: counter, gauge, histogram). */
void cqrs_httpd_metric_header(struct evbuffer *out, const char *name, const char *type,
			 const char *help);
void cqrs_httpd_metric_u64(struct evbuffer *out, const char *name, const char *labels, uint64_t v);
/* NaN and infinities as "NaN", "+Inf", "-Inf". */
void cqrs_httpd_metric_double(struct evbuffer *out, const char *name, const char *labels, double v);

/* Header and one unlabelled sample. */
void cqrs_httpd_counter(struct evbuffer *out, const char *name, const char *help, uint64_t v);
void cqrs_httpd_gauge(struct evbuffer *out, const char *name, const char *help, double v);

/* Escapes in into out (at most size bytes, always NUL-terminated). */
void cqrs_httpd_label_escape(const char *in, char *out, size_t size);

/*
 * A latency histogram with fixed buckets in seconds. A zeroed struct is
 * ready to use, with the default buckets (HTTPD_HIST_DEFAULT_BUCKETS:
 * 0.5 ms to 10 s); cqrs_httpd_hist_init() sets others.
 */
#define HTTPD_HIST_MAX_BUCKETS 24
#define HTTPD_HIST_DEFAULT_BUCKETS \
	500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, \
		5000000, 10000000

struct httpd_hist {
	size_t n;				/* buckets; 0: the defaults */
	uint64_t le_us[HTTPD_HIST_MAX_BUCKETS];	/* upper bounds, ascending, in us */
	atomic_uint_fast64_t counts[HTTPD_HIST_MAX_BUCKETS + 1];	/* last: +Inf */
	atomic_uint_fast64_t sum_us;
};

/* n bounds (1..HTTPD_HIST_MAX_BUCKETS, ascending, microseconds); clears the counts.
 * Returns 0, or CQRS_EINVALID for bounds out of that shape. */
int cqrs_httpd_hist_init(struct httpd_hist *h, const uint64_t *le_us, size_t n)
	__attribute__((warn_unused_result));
/* Counts one observation of us microseconds. Safe from any thread. */
void cqrs_httpd_hist_observe_us(struct httpd_hist *h, uint64_t us);
/* Observations so far. */
uint64_t cqrs_httpd_hist_count(const struct httpd_hist *h);
/*
 * NAME_bucket{LABELS,le="..."} (cumulative, ending with le="+Inf"),
 * NAME_sum (seconds) and NAME_count; with the header when help is not
 * NULL (write it once before several labelled series of one name).
 */
void cqrs_httpd_hist_write(struct evbuffer *out, const char *name, const char *help,
		      const char *labels, const struct httpd_hist *h);

#endif

/*
 * scrape.h - a daemon's /health and /metrics seen from a test: a small
 * HTTP/1.1 client and a strict parser of the Prometheus text format 0.0.4.
 *
 *   uint16_t port = scrape_port_from_log(log);     // "http://127.0.0.1:PORT/"
 *   struct scrape *m = scrape_metrics(port);       // GET /metrics, parsed
 *   ck_assert(scrape_value(m, "cqrs_cmdd_commands_total", "outcome=\"ok\"") == 1);
 *   scrape_free(m);
 *
 * The parser refuses what Prometheus would refuse (a bad name, label or
 * value, a sample whose family has no # TYPE before it, a TYPE given twice,
 * a missing final newline) and checks histograms: buckets cumulative and
 * ending with le="+Inf", whose count equals _count. Every function fails the
 * test (ck_abort) on an error, unless it says otherwise.
 */
#ifndef CQRS_TEST_SCRAPE_H
#define CQRS_TEST_SCRAPE_H

#include <stddef.h>
#include <stdint.h>

struct scrape;

/*
 * One request to http://127.0.0.1:PORT/PATH with method (GET, HEAD, POST,
 * ...), Connection: close. Returns the status code; *headers and *body
 * (malloc'd, may be NULL when not wanted) get the header block and the body.
 * Fails the test when there is no answer within timeout_ms.
 */
int scrape_http(uint16_t port, const char *method, const char *path, char **headers,
		char **body, int timeout_ms);

/* Parses text; NULL on a format error, with the reason and line in err. */
struct scrape *scrape_parse(const char *text, char *err, size_t errlen);
void scrape_free(struct scrape *s);

/* GET /metrics: status 200, the 0.0.4 content type, a valid body. */
struct scrape *scrape_metrics(uint16_t port);

/*
 * The value of the sample NAME{LABELS}: labels NULL or "" for none, else
 * exactly as exposed ("outcome=\"ok\"", in the exposed order). NaN when
 * absent (test with isnan()).
 */
double scrape_value(const struct scrape *s, const char *name, const char *labels);
/* The TYPE of a family ("counter", ...), or NULL. */
const char *scrape_type(const struct scrape *s, const char *family);
/* Samples whose name is name (any labels). */
size_t scrape_count(const struct scrape *s, const char *name);

/* The port of the first "http://HOST:PORT" in text (a daemon's log); 0 if none. */
uint16_t scrape_port_from_log(const char *text);

#endif

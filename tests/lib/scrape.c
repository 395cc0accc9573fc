/* scrape.c - HTTP client and Prometheus text parser for tests (scrape.h). */
#include <check.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "scrape.h"

struct sample {
	char *name;
	char *labels;		/* between the braces, as exposed; "" for none */
	double value;
};

struct family {
	char *name;
	char *type;
};

struct scrape {
	struct sample *samples;
	size_t n, cap;
	struct family *fams;
	size_t nfams, capfams;
};

static long long
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- HTTP ------------------------------------------------------------------------------ */

int
scrape_http(uint16_t port, const char *method, const char *path, char **headers, char **body,
	    int timeout_ms)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
	long long deadline = mono_ms() + timeout_ms;
	char *buf = NULL, *sep, req[512];
	size_t len = 0, cap = 0;
	int fd, status = 0, n;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0)
		ck_abort_msg("scrape: connect 127.0.0.1:%u: %s", (unsigned)port, strerror(errno));
	n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\n"
		     "Connection: close\r\n\r\n", method, path, (unsigned)port);
	ck_assert_int_eq(write(fd, req, (size_t)n), n);
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		long long left = deadline - mono_ms();
		ssize_t got;
		if (left <= 0)
			ck_abort_msg("scrape: %s %s: no complete answer within %d ms", method, path,
				     timeout_ms);
		if (poll(&p, 1, (int)left) <= 0)
			continue;
		if (cap - len < 4096) {
			cap = cap ? cap * 2 : 16384;
			buf = realloc(buf, cap);
			ck_assert_ptr_nonnull(buf);
		}
		got = read(fd, buf + len, cap - len - 1);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		len += (size_t)got;
	}
	close(fd);
	ck_assert_msg(buf != NULL && len > 0, "scrape: %s %s: empty answer", method, path);
	buf[len] = '\0';
	if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
		ck_abort_msg("scrape: %s %s: not an HTTP answer: %.80s", method, path, buf);
	sep = strstr(buf, "\r\n\r\n");
	ck_assert_msg(sep != NULL, "scrape: %s %s: no end of headers", method, path);
	*sep = '\0';
	if (headers != NULL) {
		*headers = strdup(buf);
		ck_assert_ptr_nonnull(*headers);
	}
	if (body != NULL) {
		*body = strdup(sep + 4);
		ck_assert_ptr_nonnull(*body);
	}
	free(buf);
	return status;
}

/* ---- the text format ------------------------------------------------------------------- */

static bool
valid_name(const char *s, size_t len, bool label)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		bool ok = isalpha((unsigned char)c) || c == '_' || (!label && c == ':') ||
			  (i > 0 && isdigit((unsigned char)c));
		if (!ok)
			return false;
	}
	return true;
}

static int
bad_at(char *err, size_t errlen, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int
bad_at(char *err, size_t errlen, int line, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(err, errlen, "line %d: %s", line, msg);
	return -1;
}

static struct family *
find_family(const struct scrape *s, const char *name)
{
	for (size_t i = 0; i < s->nfams; i++)
		if (strcmp(s->fams[i].name, name) == 0)
			return &s->fams[i];
	return NULL;
}

static double
parse_value(const char *s, bool *ok)
{
	char *end;
	double v;

	*ok = true;
	if (strcmp(s, "+Inf") == 0)
		return INFINITY;
	if (strcmp(s, "-Inf") == 0)
		return -INFINITY;
	if (strcmp(s, "NaN") == 0)
		return NAN;
	errno = 0;
	v = strtod(s, &end);
	*ok = end != s && *end == '\0' && errno == 0 && !isnan(v) && !isinf(v);
	return v;
}

/* The family a sample belongs to: NAME, or NAME without _bucket/_sum/_count
 * when that is a histogram. */
static const struct family *
family_of(const struct scrape *s, const char *name)
{
	static const char *const sfx[] = { "_bucket", "_sum", "_count" };
	const struct family *f = find_family(s, name);

	if (f != NULL)
		return f;
	for (size_t i = 0; i < 3; i++) {
		size_t n = strlen(name), k = strlen(sfx[i]);
		char base[256];
		if (n <= k || n - k >= sizeof(base) || strcmp(name + n - k, sfx[i]) != 0)
			continue;
		memcpy(base, name, n - k);
		base[n - k] = '\0';
		f = find_family(s, base);
		if (f != NULL && strcmp(f->type, "histogram") == 0)
			return f;
	}
	return NULL;
}

/* Checks "k=\"v\",k2=\"v2\"" (with escapes, an optional trailing comma). */
static bool
valid_labels(const char *p, const char **why)
{
	while (*p != '\0') {
		const char *eq = strchr(p, '=');
		if (eq == NULL || !valid_name(p, (size_t)(eq - p), true)) {
			*why = "bad label name";
			return false;
		}
		p = eq + 1;
		if (*p++ != '"') {
			*why = "label value not quoted";
			return false;
		}
		while (*p != '"') {
			if (*p == '\0' || *p == '\n') {
				*why = "unterminated label value";
				return false;
			}
			if (*p == '\\') {
				p++;
				if (*p != '\\' && *p != '"' && *p != 'n') {
					*why = "bad escape in a label value";
					return false;
				}
			}
			p++;
		}
		p++;
		if (*p == ',')
			p++;
		else if (*p != '\0') {
			*why = "labels not separated by ','";
			return false;
		}
	}
	return true;
}

static int
parse_line(struct scrape *s, char *line, int no, char *err, size_t errlen)
{
	char *p = line, *name_end, *labels = NULL, *val, *ts;
	const char *why = "";
	bool ok;
	double v;

	if (line[0] == '\0')
		return 0;
	if (line[0] == '#') {
		char kind[8], name[256], rest[256];
		int n = sscanf(line, "# %7s %255s %255[^\n]", kind, name, rest);
		if (n >= 2 && strcmp(kind, "TYPE") == 0) {
			static const char *const types[] = { "counter", "gauge", "histogram",
							     "summary", "untyped" };
			bool known = false;
			if (n != 3)
				return bad_at(err, errlen, no, "TYPE without a type");
			for (size_t i = 0; i < 5; i++)
				known = known || strcmp(rest, types[i]) == 0;
			if (!known)
				return bad_at(err, errlen, no, "unknown type \"%s\"", rest);
			if (!valid_name(name, strlen(name), false))
				return bad_at(err, errlen, no, "bad metric name \"%s\"", name);
			if (find_family(s, name) != NULL)
				return bad_at(err, errlen, no, "second TYPE for %s", name);
			for (size_t i = 0; i < s->n; i++)
				if (family_of(s, s->samples[i].name) == NULL &&
				    strcmp(s->samples[i].name, name) == 0)
					return bad_at(err, errlen, no, "TYPE of %s after its samples", name);
			if (s->nfams == s->capfams) {
				s->capfams = s->capfams ? s->capfams * 2 : 32;
				s->fams = realloc(s->fams, s->capfams * sizeof(*s->fams));
				ck_assert_ptr_nonnull(s->fams);
			}
			s->fams[s->nfams].name = strdup(name);
			s->fams[s->nfams].type = strdup(rest);
			s->nfams++;
		} else if (n >= 2 && strcmp(kind, "HELP") == 0) {
			if (!valid_name(name, strlen(name), false))
				return bad_at(err, errlen, no, "bad metric name \"%s\"", name);
		}
		return 0;
	}
	/* NAME[{LABELS}] VALUE [TIMESTAMP] */
	while (*p != '\0' && *p != '{' && *p != ' ')
		p++;
	name_end = p;
	if (!valid_name(line, (size_t)(name_end - line), false))
		return bad_at(err, errlen, no, "bad metric name in \"%s\"", line);
	if (*p == '{') {
		char *close;
		labels = p + 1;
		/* the closing brace is the first '}' outside a quoted value */
		for (close = labels; *close != '\0' && *close != '}'; close++) {
			if (*close == '"') {
				for (close++; *close != '\0' && *close != '"'; close++)
					if (*close == '\\' && close[1] != '\0')
						close++;
				if (*close == '\0')
					break;
			}
		}
		if (*close != '}')
			return bad_at(err, errlen, no, "unterminated labels in \"%s\"", line);
		*close = '\0';
		if (!valid_labels(labels, &why))
			return bad_at(err, errlen, no, "%s in \"%s\"", why, labels);
		p = close + 1;
	}
	if (*p != ' ')
		return bad_at(err, errlen, no, "no space before the value");
	while (*p == ' ')
		p++;
	*name_end = '\0';	/* (after the labels' brace, or the space itself) */
	val = p;
	ts = strchr(val, ' ');
	if (ts != NULL) {
		*ts++ = '\0';
		for (char *q = ts; *q != '\0'; q++)
			if (!isdigit((unsigned char)*q) && !(q == ts && *q == '-'))
				return bad_at(err, errlen, no, "bad timestamp \"%s\"", ts);
	}
	v = parse_value(val, &ok);
	if (!ok)
		return bad_at(err, errlen, no, "bad value \"%s\" for %s", val, line);
	if (family_of(s, line) == NULL)
		return bad_at(err, errlen, no, "sample %s without a # TYPE before it", line);
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 64;
		s->samples = realloc(s->samples, s->cap * sizeof(*s->samples));
		ck_assert_ptr_nonnull(s->samples);
	}
	s->samples[s->n].name = strdup(line);
	s->samples[s->n].labels = strdup(labels ? labels : "");
	s->samples[s->n].value = v;
	s->n++;
	return 0;
}

/* labels without its le="..." pair, into out */
static void
strip_le(const char *labels, char *out, size_t size, char *le, size_t lesize)
{
	const char *p = strstr(labels, "le=\"");
	size_t pre;

	le[0] = '\0';
	if (p == NULL || (p != labels && p[-1] != ',')) {
		snprintf(out, size, "%s", labels);
		return;
	}
	{
		const char *q = strchr(p + 4, '"');
		size_t l = q ? (size_t)(q - p - 4) : 0;
		snprintf(le, lesize, "%.*s", (int)l, p + 4);
		q = q ? q + 1 : p + strlen(p);
		if (*q == ',')
			q++;
		pre = (size_t)(p - labels);
		if (pre > 0 && *q == '\0')
			pre--;	/* drop the comma before a last le */
		snprintf(out, size, "%.*s%s", (int)pre, labels, q);
	}
}

static int
check_histograms(const struct scrape *s, char *err, size_t errlen)
{
	for (size_t f = 0; f < s->nfams; f++) {
		char bucket[300], count[300];
		if (strcmp(s->fams[f].type, "histogram") != 0)
			continue;
		snprintf(bucket, sizeof(bucket), "%s_bucket", s->fams[f].name);
		snprintf(count, sizeof(count), "%s_count", s->fams[f].name);
		for (size_t c = 0; c < s->n; c++) {
			double prev_le = -INFINITY, prev_v = 0;
			bool inf = false;
			if (strcmp(s->samples[c].name, count) != 0)
				continue;
			for (size_t i = 0; i < s->n; i++) {
				char base[512], le[64];
				bool ok;
				double lev;
				if (strcmp(s->samples[i].name, bucket) != 0)
					continue;
				strip_le(s->samples[i].labels, base, sizeof(base), le, sizeof(le));
				if (strcmp(base, s->samples[c].labels) != 0)
					continue;
				if (le[0] == '\0')
					return bad_at(err, errlen, 0, "%s{%s} has no le", bucket,
						    s->samples[i].labels);
				lev = parse_value(le, &ok);
				if (!ok || lev <= prev_le)
					return bad_at(err, errlen, 0, "%s: le=\"%s\" out of order", bucket, le);
				if (s->samples[i].value < prev_v)
					return bad_at(err, errlen, 0, "%s: le=\"%s\" is not cumulative",
						    bucket, le);
				prev_le = lev;
				prev_v = s->samples[i].value;
				inf = isinf(lev);
			}
			if (!inf)
				return bad_at(err, errlen, 0, "%s{%s}: no le=\"+Inf\" bucket", bucket,
					    s->samples[c].labels);
			if (prev_v != s->samples[c].value)
				return bad_at(err, errlen, 0, "%s: +Inf bucket %g, _count %g", bucket, prev_v,
					    s->samples[c].value);
		}
	}
	return 0;
}

struct scrape *
scrape_parse(const char *text, char *err, size_t errlen)
{
	struct scrape *s = calloc(1, sizeof(*s));
	char *copy = strdup(text), *line, *next;
	int no = 0;

	ck_assert_ptr_nonnull(s);
	ck_assert_ptr_nonnull(copy);
	if (copy[0] != '\0' && copy[strlen(copy) - 1] != '\n') {
		bad_at(err, errlen, 0, "the text does not end with a newline");
		goto bad;
	}
	for (line = copy; line != NULL && *line != '\0'; line = next) {
		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		if (parse_line(s, line, ++no, err, errlen) < 0)
			goto bad;
	}
	if (check_histograms(s, err, errlen) < 0)
		goto bad;
	free(copy);
	return s;
bad:
	free(copy);
	scrape_free(s);
	return NULL;
}

void
scrape_free(struct scrape *s)
{
	if (s == NULL)
		return;
	for (size_t i = 0; i < s->n; i++) {
		free(s->samples[i].name);
		free(s->samples[i].labels);
	}
	for (size_t i = 0; i < s->nfams; i++) {
		free(s->fams[i].name);
		free(s->fams[i].type);
	}
	free(s->samples);
	free(s->fams);
	free(s);
}

struct scrape *
scrape_metrics(uint16_t port)
{
	char *headers = NULL, *body = NULL, err[300];
	struct scrape *s;
	int status = scrape_http(port, "GET", "/metrics", &headers, &body, 10000);

	ck_assert_msg(status == 200, "GET /metrics: status %d: %s", status, body);
	ck_assert_msg(strcasestr(headers, "\r\nContent-Type: text/plain; version=0.0.4") != NULL,
		      "GET /metrics: not the text format 0.0.4:\n%s", headers);
	s = scrape_parse(body, err, sizeof(err));
	ck_assert_msg(s != NULL, "GET /metrics: %s in:\n%s", err, body);
	free(headers);
	free(body);
	return s;
}

double
scrape_value(const struct scrape *s, const char *name, const char *labels)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->samples[i].name, name) == 0 &&
		    strcmp(s->samples[i].labels, labels ? labels : "") == 0)
			return s->samples[i].value;
	return NAN;
}

const char *
scrape_type(const struct scrape *s, const char *family)
{
	const struct family *f = find_family(s, family);

	return f ? f->type : NULL;
}

size_t
scrape_count(const struct scrape *s, const char *name)
{
	size_t n = 0;

	for (size_t i = 0; i < s->n; i++)
		n += strcmp(s->samples[i].name, name) == 0;
	return n;
}

uint16_t
scrape_port_from_log(const char *text)
{
	const char *p = text;

	while ((p = strstr(p, "http://")) != NULL) {
		const char *colon;
		unsigned long port;
		p += 7;
		if (*p == '[') {
			p = strchr(p, ']');
			if (p == NULL)
				return 0;
		}
		colon = strchr(p, ':');
		if (colon == NULL)
			return 0;
		port = strtoul(colon + 1, NULL, 10);
		if (port > 0 && port <= 65535)
			return (uint16_t)port;
	}
	return 0;
}

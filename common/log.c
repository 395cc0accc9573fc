/*
 * log.c - logfmt lines to stderr, with journald priority prefixes.
 *
 * A line is built in a fixed stack buffer and handed to the kernel with one
 * write(2), so nothing here allocates and lines from several threads do not
 * interleave. Anything longer than the buffer is cut and marked, never split
 * over two lines.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cqrs/log.h"

/* Longest line written, newline included. */
#define LOG_LINE_MAX 8192
/* A context value longer than this is cut, so the message keeps its room. */
#define LOG_FIELD_MAX 256
#define TRUNC_MARK "...(truncated)"

int cqrs_log_threshold = CQRS_LOG_INFO;

/* NULL means stderr; not fixed at startup because stderr is not constant. */
static FILE *_Atomic log_out;
/* What cqrs_log_set_output() asked for: 1 on, 0 off, -1 detect. */
static atomic_int log_journal_mode = -1;
/* The detection result, -1 until the first line. Racing threads compute the
 * same answer, so a plain atomic is enough. */
static atomic_int log_journal_detected = -1;

struct linebuf {
	char *buf;
	size_t cap;		/* usable bytes, the NUL not counted */
	size_t len;
};

const char *
cqrs_log_level_name(int level)
{
	switch (level) {
	case 0: return "emerg";
	case 1: return "alert";
	case 2: return "crit";
	case CQRS_LOG_ERROR: return "error";
	case CQRS_LOG_WARN: return "warn";
	case 5: return "notice";
	case CQRS_LOG_INFO: return "info";
	case CQRS_LOG_DEBUG: return "debug";
	}
	return "unknown";
}

int
cqrs_log_level_parse(const char *name)
{
	static const struct {
		const char *name;
		int level;
	} names[] = {
		{ "error", CQRS_LOG_ERROR },
		{ "warn", CQRS_LOG_WARN },
		{ "info", CQRS_LOG_INFO },
		{ "debug", CQRS_LOG_DEBUG },
	};

	if (name == NULL)
		return -1;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcasecmp(name, names[i].name) == 0)
			return names[i].level;
	return -1;
}

void
cqrs_log_set_level(int level)
{
	cqrs_log_threshold = level;
}

void
cqrs_log_set_output(FILE *out, int journal)
{
	atomic_store(&log_out, out);
	atomic_store(&log_journal_mode, journal < 0 ? -1 : journal != 0);
	atomic_store(&log_journal_detected, -1);
}

/*
 * JOURNAL_STREAM alone is not proof: it is inherited by children whose stderr
 * was redirected elsewhere. systemd.exec(5) says to compare it with the
 * device and inode of the stream, which is what this does.
 */
static int
journal_detect(FILE *out)
{
	const char *env = getenv("JOURNAL_STREAM");
	uintmax_t dev, ino;
	struct stat st;
	int fd;

	if (env == NULL || *env == '\0')
		return 0;
	if (sscanf(env, "%ju:%ju", &dev, &ino) != 2)
		return 0;
	fd = fileno(out);
	if (fd < 0 || fstat(fd, &st) != 0)
		return 0;
	return (uintmax_t)st.st_dev == dev && (uintmax_t)st.st_ino == ino;
}

static int
journal_enabled(FILE *out)
{
	int mode = atomic_load(&log_journal_mode);
	int det;

	if (mode >= 0)
		return mode;
	det = atomic_load(&log_journal_detected);
	if (det < 0) {
		det = journal_detect(out);
		atomic_store(&log_journal_detected, det);
	}
	return det;
}

static size_t
room(const struct linebuf *lb)
{
	return lb->cap - lb->len;
}

/* Appends what fits of s; the buffer stays NUL-terminated. */
static void
put_raw(struct linebuf *lb, const char *s, size_t n)
{
	if (n > room(lb))
		n = room(lb);
	memcpy(lb->buf + lb->len, s, n);
	lb->len += n;
	lb->buf[lb->len] = '\0';
}

static void
put_str(struct linebuf *lb, const char *s)
{
	put_raw(lb, s, strlen(s));
}

/* logfmt readers split on space and '=' and treat '"' as a quote, so those
 * and every control byte force quoting. Bytes >= 0x80 are UTF-8, kept as is. */
static bool
needs_quotes(const char *v)
{
	if (*v == '\0')
		return true;
	for (const unsigned char *p = (const unsigned char *)v; *p; p++)
		if (*p <= ' ' || *p == '=' || *p == '"' || *p == 0x7f)
			return true;
	return false;
}

/* The escaped form of c, in out (at least 7 bytes); returns its length. */
static size_t
escape_byte(unsigned char c, bool quoted, char *out)
{
	if (!quoted) {
		out[0] = (char)c;
		return 1;
	}
	switch (c) {
	case '"': memcpy(out, "\\\"", 2); return 2;
	case '\\': memcpy(out, "\\\\", 2); return 2;
	case '\n': memcpy(out, "\\n", 2); return 2;
	case '\r': memcpy(out, "\\r", 2); return 2;
	case '\t': memcpy(out, "\\t", 2); return 2;
	}
	if (c < 0x20 || c == 0x7f)
		return (size_t)snprintf(out, 7, "\\u%04x", c);
	out[0] = (char)c;
	return 1;
}

/*
 * Writes value, quoted when needed, using at most limit bytes. When it does
 * not fit (or cut is set: the caller already lost the end of it) the value
 * ends with TRUNC_MARK; the cut never falls inside an escape or a UTF-8
 * sequence.
 */
static void
put_value(struct linebuf *lb, const char *v, bool force_quotes, size_t limit,
	  bool cut)
{
	bool quoted = force_quotes || needs_quotes(v);
	size_t quotes = quoted ? 2 : 0;
	size_t mark = strlen(TRUNC_MARK);
	size_t full = 0, budget, start;
	const unsigned char *p;
	char esc[8];

	if (limit > room(lb))
		limit = room(lb);
	for (p = (const unsigned char *)v; *p; p++)
		full += escape_byte(*p, quoted, esc);
	if (!cut && full + quotes <= limit) {
		budget = full;
	} else {
		cut = true;
		budget = limit > quotes + mark ? limit - quotes - mark : 0;
	}
	if (quoted)
		put_raw(lb, "\"", 1);
	start = lb->len;
	for (p = (const unsigned char *)v; *p; p++) {
		size_t n = escape_byte(*p, quoted, esc);

		if (lb->len - start + n > budget)
			break;
		put_raw(lb, esc, n);
	}
	if ((*p & 0xc0) == 0x80) {
		/* Stopped inside a UTF-8 sequence: drop the bytes of it already
		 * written. Only bytes >= 0x80 are dropped; those were copied one
		 * for one, so an escape is never cut (even in invalid UTF-8). */
		while (p > (const unsigned char *)v && (p[-1] & 0x80) &&
		       lb->len > start) {
			p--;
			lb->len--;
			if ((*p & 0xc0) != 0x80)
				break;
		}
		lb->buf[lb->len] = '\0';
	}
	if (cut)
		put_str(lb, TRUNC_MARK);
	if (quoted)
		put_raw(lb, "\"", 1);
}

static void
put_field(struct linebuf *lb, const char *key, const char *v)
{
	if (v == NULL)
		return;
	put_raw(lb, " ", 1);
	put_str(lb, key);
	put_raw(lb, "=", 1);
	put_value(lb, v, false, LOG_FIELD_MAX, false);
}

static int
clamp_level(int level)
{
	if (level < 0)
		return 0;
	if (level > 7)
		return 7;
	return level;
}

static size_t
format_line(char *buf, size_t size, const struct cqrs_log_ctx *ctx, int level,
	    int journal, const char *msg, bool msg_cut)
{
	struct linebuf lb;
	char head[128];

	if (size == 0)
		return 0;
	lb.buf = buf;
	lb.cap = size - 1;
	lb.len = 0;
	buf[0] = '\0';
	level = clamp_level(level);
	if (journal) {
		snprintf(head, sizeof(head), "<%d>", level);
	} else {
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		snprintf(head, sizeof(head), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
			 tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L);
	}
	put_str(&lb, head);
	put_str(&lb, "level=");
	put_str(&lb, cqrs_log_level_name(level));
	if (ctx != NULL) {
		put_field(&lb, "comp", ctx->comp);
		put_field(&lb, "correlation_id", ctx->correlation_id);
		put_field(&lb, "causation_id", ctx->causation_id);
		put_field(&lb, "command_id", ctx->command_id);
		put_field(&lb, "stream", ctx->stream);
		put_field(&lb, "event_id", ctx->event_id);
		put_field(&lb, "consumer", ctx->consumer);
		put_field(&lb, "uid", ctx->uid);
	}
	put_str(&lb, " msg=");
	/* msg is always quoted, so lines look alike and grep for msg=" works */
	put_value(&lb, msg != NULL ? msg : "", true, room(&lb), msg_cut);
	return lb.len;
}

size_t
cqrs_log_format(char *buf, size_t size, const struct cqrs_log_ctx *ctx,
		int level, int journal, const char *msg)
{
	return format_line(buf, size, ctx, level, journal, msg, false);
}

static void
write_all(FILE *out, const char *buf, size_t len)
{
	int fd = fileno(out);

	if (fd < 0) {
		/* a memory stream: no fd, the stream lock keeps the line whole */
		flockfile(out);
		fwrite_unlocked(buf, 1, len, out);
		fflush_unlocked(out);
		funlockfile(out);
		return;
	}
	/* whatever the caller left in the stream's buffer goes first */
	fflush(out);
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;		/* nowhere left to report it */
		}
		buf += n;
		len -= (size_t)n;
	}
}

void
cqrs_log_write(const struct cqrs_log_ctx *ctx, int level, const char *fmt, ...)
{
	char msg[LOG_LINE_MAX];
	char line[LOG_LINE_MAX];
	FILE *out;
	va_list ap;
	int saved_errno = errno;
	int n;
	size_t len;

	if (!cqrs_log_enabled(level))
		return;
	out = atomic_load(&log_out);
	if (out == NULL)
		out = stderr;
	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0) {
		snprintf(msg, sizeof(msg), "(could not format log message \"%s\")", fmt);
		n = 0;
	}
	/* one byte kept for the newline */
	len = format_line(line, sizeof(line) - 1, ctx, level, journal_enabled(out),
			  msg, (size_t)n >= sizeof(msg));
	line[len++] = '\n';
	write_all(out, line, len);
	errno = saved_errno;
}

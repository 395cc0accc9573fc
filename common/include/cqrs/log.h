/*
 * cqrs/log.h - logging for the daemons and for plugins.
 *
 * Lines are logfmt (`key=value`), one per call, written to stderr:
 *
 *   ts=2026-11-26T05:20:49.123Z level=info comp=cmdd correlation_id=... msg="..."
 *
 * Under journald (JOURNAL_STREAM set and naming the device:inode of the
 * output, as systemd.exec(5) advises) the timestamp is left out and each line
 * starts with the sd-daemon priority prefix (<3> error ... <7> debug), so the
 * journal keeps the level. A struct cqrs_log_ctx carries the ids of what the
 * line is about; every non-NULL field is printed, in the struct's order,
 * after ts and level; msg comes last and is always quoted.
 * Plugins get a context from the daemon and log through the same calls.
 *
 * A value with a space, '"', '=' or a control byte, or an empty one, is
 * quoted, with \" \\ \n \r \t and \u00XX escapes inside, so no value can
 * start a new key or a new line. A line is at most 8 KiB: a context value is
 * cut after 256 bytes, the message where the line ends, each marked with
 * "...(truncated)" (never inside a UTF-8 sequence). Nothing is allocated.
 * cqrs_log_write() keeps errno, so "%m" and later errno checks still work.
 *
 * Thread-safety: one line is written with one write(2), so lines from several
 * threads do not interleave. The level and output are process-wide.
 */
#ifndef CQRS_LOG_H
#define CQRS_LOG_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Values are syslog priorities, as journald expects them. */
enum cqrs_log_level {
	CQRS_LOG_ERROR = 3,
	CQRS_LOG_WARN = 4,
	CQRS_LOG_INFO = 6,
	CQRS_LOG_DEBUG = 7,
};

/* What a line is about. All fields are borrowed and optional (NULL). The
 * daemons hand plugins theirs (cqrs_cmd_log(), cqrs_event_log()); one of
 * your own must be zeroed whole ({ .comp = "x" }): fields are added at the
 * end. */
struct cqrs_log_ctx {
	const char *comp;		/* component: "cmdd", "tracker", plugin name */
	const char *correlation_id;
	const char *causation_id;
	const char *command_id;
	const char *stream;
	const char *event_id;
	const char *consumer;
	const char *uid;		/* the uid that sent the command (cqrs-cmdd) */
};

/* Current threshold; lines above it (less severe) are dropped. */
extern int cqrs_log_threshold;

static inline int
cqrs_log_enabled(int level)
{
	return level <= cqrs_log_threshold;
}

/* Writes one line. ctx may be NULL. Prefer the macros below. */
void cqrs_log_write(const struct cqrs_log_ctx *ctx, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* The level's name ("error", "warn", "info", "debug"; other syslog
 * priorities get their syslog names, anything else "unknown"). */
const char *cqrs_log_level_name(int level);

/* Parses "error", "warn", "info", "debug" in any case; returns -1 when
 * unknown or NULL. */
int cqrs_log_level_parse(const char *name);

void cqrs_log_set_level(int level);

/*
 * Where lines go (default stderr) and whether to use journald prefixes
 * (default: detected from JOURNAL_STREAM at the first line). For tests.
 * journal: 1 on, 0 off, -1 detect.
 */
void cqrs_log_set_output(FILE *out, int journal);

/*
 * Formats one line into buf (at most size bytes, always NUL-terminated) and
 * returns its length, without the trailing newline. Exposed for tests.
 */
size_t cqrs_log_format(char *buf, size_t size, const struct cqrs_log_ctx *ctx,
		       int level, int journal, const char *msg);

#define cqrs_log_error(ctx, ...) \
	do { if (cqrs_log_enabled(CQRS_LOG_ERROR)) cqrs_log_write((ctx), CQRS_LOG_ERROR, __VA_ARGS__); } while (0)
#define cqrs_log_warn(ctx, ...) \
	do { if (cqrs_log_enabled(CQRS_LOG_WARN)) cqrs_log_write((ctx), CQRS_LOG_WARN, __VA_ARGS__); } while (0)
#define cqrs_log_info(ctx, ...) \
	do { if (cqrs_log_enabled(CQRS_LOG_INFO)) cqrs_log_write((ctx), CQRS_LOG_INFO, __VA_ARGS__); } while (0)
#define cqrs_log_debug(ctx, ...) \
	do { if (cqrs_log_enabled(CQRS_LOG_DEBUG)) cqrs_log_write((ctx), CQRS_LOG_DEBUG, __VA_ARGS__); } while (0)

#ifdef __cplusplus
}
#endif
#endif

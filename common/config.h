/*
 * config.h - the suite's INI file (DESIGN.md, "Configuration").
 *
 *   [store]
 *   conninfo = host=/run/postgresql dbname=cqrs
 *   [consumer.projections]
 *   plugins = /usr/lib/cqrs/plugins/bank.so
 *
 * Every key can be overridden from the environment: CQRS_<SECTION>_<KEY>,
 * upper-cased, with every character that is not a letter or digit turned
 * into '_' (consumer.projections/from -> CQRS_CONSUMER_PROJECTIONS_FROM).
 * The environment wins over the file.
 *
 * Getters take a default, used when the key is absent from both. A value that
 * does not parse is an error that names the file, line and key:
 *   /etc/cqrs/cqrs.conf:12: [cmd] pool_size: "ten" is not an integer
 * (for an environment override: "environment CQRS_CMD_POOL_SIZE: ...").
 * On an error *out is left alone; the value shown is cut after 64 bytes.
 *
 * File syntax (libinih):
 * - "[name]" starts a section; the name is trimmed, case-sensitive, and may
 *   contain dots. A repeated header continues the same section.
 * - "key = value" (or "key: value"); keys are case-sensitive, key and value
 *   are trimmed, quotes are kept as written. No continuation lines: an
 *   indented line is a line like any other.
 * - ';' or '#' at the start of a line, and " ;" after a value, begin a
 *   comment ('#' after a value does not).
 * - CQRS_ECONFIG, naming file and line: a key outside any section, a key set
 *   twice in one section (the message names both lines), a line libinih
 *   cannot parse, a value over 64 KiB, a NUL byte, a file over 1 MiB.
 *
 * The environment is read once, by cqrs_config_load*: every CQRS_* variable is
 * copied (value trimmed; one over 64 KiB fails the load), so values stay
 * valid until cqrs_config_free() and a reload sees the environment of its time.
 * An override needs no section or key in the file, but cqrs_config_each_section()
 * and cqrs_config_check_keys() only see what the file holds.
 *
 * Threads: loads may run in any thread (they take a lock, because libinih's
 * options are process-wide); a loaded config is read-only and can be shared.
 */
#ifndef CQRS_CONFIG_H
#define CQRS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cqrs/err.h"

struct config;

/* The file the daemons and cqrsctl read when -c is not given. */
#define CQRS_CONFIG_DEFAULT "/etc/cqrs/cqrs.conf"

/*
 * Reads path. A missing file is CQRS_ENOTFOUND; a syntax error is
 * CQRS_ECONFIG naming the file and line; another open or read failure is
 * CQRS_EIO. path NULL gives an empty config (environment and defaults only).
 * On success *out is owned by the caller; on failure it is NULL.
 */
int cqrs_config_load(const char *path, struct config **out, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Same, from a string; name is used in messages in place of a file name. */
int cqrs_config_load_string(const char *text, const char *name, struct config **out,
		       struct cqrs_err *err) __attribute__((warn_unused_result));

/* Same, from len bytes that need not end in a NUL (a NUL among them is an
 * error, as in a file). */
int cqrs_config_load_buffer(const char *text, size_t len, const char *name, struct config **out,
		       struct cqrs_err *err) __attribute__((warn_unused_result));

void cqrs_config_free(struct config *cfg);

/* The raw value (borrowed, valid until cqrs_config_free), or def when absent. */
const char *cqrs_config_get(const struct config *cfg, const char *section,
		       const char *key, const char *def);

/* Whether the key is set in the file or environment. */
bool cqrs_config_has(const struct config *cfg, const char *section, const char *key);

/* Integer in [min, max]; accepts decimal with an optional sign and an
 * optional k/K/M/G suffix (powers of 1024) for sizes. Outside [min, max]:
 *   FILE:LINE: [section] key: "100k" is out of range [1, 64] */
int cqrs_config_get_int(const struct config *cfg, const char *section, const char *key,
		   int64_t def, int64_t min, int64_t max, int64_t *out,
		   struct cqrs_err *err) __attribute__((warn_unused_result));

/* true/false, yes/no, on/off, 1/0, in any case. */
int cqrs_config_get_bool(const struct config *cfg, const char *section, const char *key,
		    bool def, bool *out, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Duration in milliseconds: "250ms", "5s", "2m", "1h", or a bare number of
 * ms; whole numbers only, no space before the unit. */
int cqrs_config_get_ms(const struct config *cfg, const char *section, const char *key,
		  int64_t def, int64_t min, int64_t max, int64_t *out,
		  struct cqrs_err *err) __attribute__((warn_unused_result));

/* One of choices (NULL-terminated, compared ignoring case); *out is its
 * index. def NULL: *out is -1 when the key is absent; a def that is not in
 * choices is CQRS_EINTERNAL. */
int cqrs_config_get_enum(const struct config *cfg, const char *section, const char *key,
		    const char *def, const char *const *choices, int *out,
		    struct cqrs_err *err) __attribute__((warn_unused_result));

/*
 * Keys in section that are not in known (NULL-terminated): the first one is
 * reported as CQRS_ECONFIG naming file, line and key, so typos do not pass
 * silently. Sections not named are not checked.
 */
int cqrs_config_check_keys(const struct config *cfg, const char *section,
		      const char *const *known, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Calls fn for each section whose name starts with prefix (in file order). */
void cqrs_config_each_section(const struct config *cfg, const char *prefix,
			 void (*fn)(const char *section, void *arg), void *arg);

/* Calls fn for each key of section in the file, in file order, with its
 * value and line. Environment overrides are not seen. */
void cqrs_config_each_key(const struct config *cfg, const char *section,
			  void (*fn)(const char *key, const char *value, int line, void *arg),
			  void *arg);

/* Where the file was read from: the path, cqrs_config_load_string()'s name (or
 * "<string>"), or NULL for none. */
const char *cqrs_config_path(const struct config *cfg);

#endif

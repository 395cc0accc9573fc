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
 */
#ifndef CQRS_CONFIG_H
#define CQRS_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "cqrs/err.h"

struct config;

/*
 * Reads path. A missing file is CQRS_ENOTFOUND; a syntax error is
 * CQRS_ECONFIG naming the file and line. path NULL gives an empty config
 * (environment and defaults only). On success *out is owned by the caller.
 */
int config_load(const char *path, struct config **out, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Same, from a string; name is used in messages in place of a file name. */
int config_load_string(const char *text, const char *name, struct config **out,
		       struct cqrs_err *err) __attribute__((warn_unused_result));

void config_free(struct config *cfg);

/* The raw value (borrowed, valid until config_free), or def when absent. */
const char *config_get(const struct config *cfg, const char *section,
		       const char *key, const char *def);

/* Whether the key is set in the file or environment. */
bool config_has(const struct config *cfg, const char *section, const char *key);

/* Integer in [min, max]; accepts decimal with an optional k/M/G suffix
 * (powers of 1024) for sizes. */
int config_get_int(const struct config *cfg, const char *section, const char *key,
		   int64_t def, int64_t min, int64_t max, int64_t *out,
		   struct cqrs_err *err) __attribute__((warn_unused_result));

/* true/false, yes/no, on/off, 1/0. */
int config_get_bool(const struct config *cfg, const char *section, const char *key,
		    bool def, bool *out, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Duration in milliseconds: "250ms", "5s", "2m", or a bare number of ms. */
int config_get_ms(const struct config *cfg, const char *section, const char *key,
		  int64_t def, int64_t min, int64_t max, int64_t *out,
		  struct cqrs_err *err) __attribute__((warn_unused_result));

/* One of choices (NULL-terminated); *out is its index. */
int config_get_enum(const struct config *cfg, const char *section, const char *key,
		    const char *def, const char *const *choices, int *out,
		    struct cqrs_err *err) __attribute__((warn_unused_result));

/*
 * Keys in section that are not in known (NULL-terminated): the first one is
 * reported as CQRS_ECONFIG naming file, line and key, so typos do not pass
 * silently. Sections not named are not checked.
 */
int config_check_keys(const struct config *cfg, const char *section,
		      const char *const *known, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Calls fn for each section whose name starts with prefix (in file order). */
void config_each_section(const struct config *cfg, const char *prefix,
			 void (*fn)(const char *section, void *arg), void *arg);

/* Where the file was read from ("<string>" or NULL for none). */
const char *config_path(const struct config *cfg);

#endif

/*
 * bank.h - the bank example domain, shared by its files (not installed).
 *
 *   bank.c      the plugin's entry point: registers each part
 *   account.c   aggregate "account": open, deposit, withdraw, close
 *   transfer.c  aggregate "transfer": start, complete, fail (driven later
 *               by a process manager)
 *   payload.c   strict payload checks and JSON helpers for the above
 *
 * Money is integer cents in JSON int64. Amounts and overdraft limits are at
 * most BANK_AMOUNT_MAX and balances stay within +-BANK_BALANCE_MAX, so no
 * sum or difference the domain computes can overflow int64.
 */
#ifndef BANK_H
#define BANK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cqrs/plugin.h>

#define BANK_AMOUNT_MAX INT64_C(1000000000000000)	/* 10^15 cents */
#define BANK_BALANCE_MAX INT64_C(1000000000000000000)	/* 10^18 cents */
#define BANK_OWNER_MAX 200				/* bytes */
#define BANK_REASON_MAX 500				/* bytes */
#define BANK_ID_MAX CQRS_AGGREGATE_ID_MAX		/* an account id, in bytes */

/* Each registers its aggregate, appliers and commands; 0 or negative. */
int account_register(struct cqrs_registry *reg);
int transfer_register(struct cqrs_registry *reg);

/*
 * Payload checks for command handlers. Each returns CQRS_OUTCOME_OK, or
 * CQRS_OUTCOME_INVALID after cqrs_invalid() with a message naming the field,
 * so a handler writes `if ((rc = payload_...) != CQRS_OUTCOME_OK) return rc;`.
 * Strings handed back are borrowed from data.
 */

/* data is an object whose fields are all in allowed (NULL-terminated). */
int payload_fields(struct cqrs_cmd_ctx *ctx, struct json_object *data,
		   const char *const *allowed);
/* An integer in [min, max]; rule says what the bound is ("> 0"). When the
 * field is absent and not required, *out is left as it is. */
int payload_int(struct cqrs_cmd_ctx *ctx, struct json_object *data, const char *field,
		bool required, int64_t min, int64_t max, const char *rule, int64_t *out);
/* A string of min..max bytes without NUL. */
int payload_string(struct cqrs_cmd_ctx *ctx, struct json_object *data, const char *field,
		   size_t min, size_t max, const char **out);
/* An aggregate id: 1..BANK_ID_MAX bytes of letters, digits and "-_.:@". */
int payload_id(struct cqrs_cmd_ctx *ctx, struct json_object *data, const char *field,
	       const char **out);

/* cqrs_reject() that also logs the refusal at info. */
int bank_reject(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Building event data: each adds one field and returns obj, or frees obj and
 * returns NULL when out of memory (NULL in, NULL out), so calls nest and
 * cqrs_emit() refuses the NULL at the end.
 */
struct json_object *json_with_int(struct json_object *obj, const char *key, int64_t v);
struct json_object *json_with_str(struct json_object *obj, const char *key, const char *s);

/*
 * Reading event data and snapshots in appliers: 0, or -1 when the field is
 * absent, of another type or out of range (a corrupt stream).
 */
int field_int(struct json_object *obj, const char *key, int64_t min, int64_t max,
	      int64_t *out);
/* Copies a string of at most size - 1 bytes (and no NUL) into buf. */
int field_str(struct json_object *obj, const char *key, char *buf, size_t size);

#endif

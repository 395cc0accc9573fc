/*
 * payload.c - strict payload checks (unknown fields are refused, so a typo
 * like "ammount" is an error rather than a deposit of nothing) and the
 * small JSON helpers the bank's handlers and appliers share.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "bank.h"

int
payload_fields(struct cqrs_cmd_ctx *ctx, struct json_object *data, const char *const *allowed)
{
	const char *const *a;

	if (!json_object_is_type(data, json_type_object))
		return cqrs_invalid(ctx, "data must be a JSON object");
	json_object_object_foreach(data, key, val) {
		(void)val;
		for (a = allowed; *a != NULL; a++)
			if (strcmp(*a, key) == 0)
				break;
		if (*a == NULL)
			return cqrs_invalid(ctx, "unknown field \"%s\"", key);
	}
	return CQRS_OUTCOME_OK;
}

int
payload_int(struct cqrs_cmd_ctx *ctx, struct json_object *data, const char *field,
	    bool required, int64_t min, int64_t max, const char *rule, int64_t *out)
{
	struct json_object *v;
	int64_t n;

	if (!json_object_object_get_ex(data, field, &v)) {
		if (required)
			return cqrs_invalid(ctx, "\"%s\" is missing (an integer %s)", field, rule);
		return CQRS_OUTCOME_OK;
	}
	/* json_type_int only: 1.0, "1" and true are not amounts */
	if (!json_object_is_type(v, json_type_int))
		return cqrs_invalid(ctx, "\"%s\" must be an integer %s", field, rule);
	/* json-c clamps integers beyond int64 to its bounds, which are
	 * outside every range used here */
	n = json_object_get_int64(v);
	if (n < min)
		return cqrs_invalid(ctx, "\"%s\" must be an integer %s", field, rule);
	if (n > max)
		return cqrs_invalid(ctx, "\"%s\" must be at most %" PRId64, field, max);
	*out = n;
	return CQRS_OUTCOME_OK;
}

int
payload_string(struct cqrs_cmd_ctx *ctx, struct json_object *data, const char *field,
	       size_t min, size_t max, const char **out)
{
	struct json_object *v;
	const char *s;
	size_t len;

	if (!json_object_object_get_ex(data, field, &v))
		return cqrs_invalid(ctx, "\"%s\" is missing (a string of %zu to %zu bytes)",
				    field, min, max);
	if (!json_object_is_type(v, json_type_string))
		return cqrs_invalid(ctx, "\"%s\" must be a string of %zu to %zu bytes",
				    field, min, max);
	s = json_object_get_string(v);
	len = (size_t)json_object_get_string_len(v);
	if (len < min || len > max)
		return cqrs_invalid(ctx, "\"%s\" must be a string of %zu to %zu bytes",
				    field, min, max);
	/* "\u0000" would cut the string in two for every C reader after us */
	if (strlen(s) != len)
		return cqrs_invalid(ctx, "\"%s\" must not contain NUL", field);
	*out = s;
	return CQRS_OUTCOME_OK;
}

int
payload_id(struct cqrs_cmd_ctx *ctx, struct json_object *data, const char *field,
	   const char **out)
{
	struct json_object *v;
	const char *s;
	size_t len;
	size_t i;

	if (!json_object_object_get_ex(data, field, &v))
		return cqrs_invalid(ctx, "\"%s\" is missing (an account id)", field);
	if (!json_object_is_type(v, json_type_string))
		goto bad;
	s = json_object_get_string(v);
	len = (size_t)json_object_get_string_len(v);
	if (len == 0 || len > BANK_ID_MAX || strlen(s) != len)
		goto bad;
	/* the rule cqrs-cmdd applies to aggregate ids, so the id can become
	 * a command on that account later */
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      strchr("-_.:@", c) != NULL))
			goto bad;
	}
	*out = s;
	return CQRS_OUTCOME_OK;
bad:
	return cqrs_invalid(ctx, "\"%s\" must be an account id (1 to %d letters, digits "
			    "and \"-_.:@\")", field, BANK_ID_MAX);
}

int
bank_reject(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cqrs_log_info(cqrs_cmd_log(ctx), "%s on %s rejected: %s", cmd->type, cmd->stream, msg);
	return cqrs_reject(ctx, "%s", msg);
}

struct json_object *
json_with_int(struct json_object *obj, const char *key, int64_t v)
{
	struct json_object *n;

	if (obj == NULL)
		return NULL;
	n = json_object_new_int64(v);
	if (n == NULL || json_object_object_add(obj, key, n) < 0) {
		json_object_put(n);
		json_object_put(obj);
		return NULL;
	}
	return obj;
}

struct json_object *
json_with_str(struct json_object *obj, const char *key, const char *s)
{
	struct json_object *n;

	if (obj == NULL)
		return NULL;
	n = json_object_new_string(s);
	if (n == NULL || json_object_object_add(obj, key, n) < 0) {
		json_object_put(n);
		json_object_put(obj);
		return NULL;
	}
	return obj;
}

int
field_int(struct json_object *obj, const char *key, int64_t min, int64_t max, int64_t *out)
{
	struct json_object *v;
	int64_t n;

	if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_int))
		return -1;
	n = json_object_get_int64(v);
	if (n < min || n > max)
		return -1;
	*out = n;
	return 0;
}

int
field_str(struct json_object *obj, const char *key, char *buf, size_t size)
{
	struct json_object *v;
	const char *s;
	size_t len;

	if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
		return -1;
	s = json_object_get_string(v);
	len = (size_t)json_object_get_string_len(v);
	if (len >= size || strlen(s) != len)
		return -1;
	memcpy(buf, s, len + 1);
	return 0;
}

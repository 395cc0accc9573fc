/* proto.c - the command protocol v1: request parsing and answers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "envelope.h"
#include "proto.h"

bool
proto_utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;

	while (i < len) {
		unsigned char c = s[i];
		size_t n;
		uint32_t cp;

		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			n = 1;
			cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			n = 2;
			cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (i + n >= len)
			return false;
		for (size_t k = 1; k <= n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
		    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += n + 1;
	}
	return true;
}

void
request_clear(struct request *req)
{
	json_object_put(req->root);
	free(req->echo_id);
	memset(req, 0, sizeof(*req));
}

/* json-c keeps "\u0000" inside strings; C strings would stop there. */
static bool
has_nul(struct json_object *v)
{
	return strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v);
}

static int
fail(const char **code, const char *c, char *msg, size_t size, const char *m)
{
	*code = c;
	snprintf(msg, size, "%s", m);
	return -1;
}

int
proto_parse(const char *line, size_t len, struct request *req, const char **code,
	    char *msg, size_t msgsize, bool *close)
{
	struct json_tokener *tok;
	struct json_object *v;
	struct cqrs_err err;
	size_t end;

	memset(req, 0, sizeof(*req));
	req->expected = STORE_ANY;
	*close = false;
	if (!proto_utf8_valid(line, len)) {
		*close = true;
		return fail(code, PROTO_MALFORMED, msg, msgsize, "request is not valid UTF-8");
	}
	tok = json_tokener_new();
	if (tok == NULL)
		return fail(code, PROTO_INTERNAL, msg, msgsize, "out of memory");
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	req->root = json_tokener_parse_ex(tok, line, (int)len);
	end = json_tokener_get_parse_end(tok);
	/* not strchr(): it finds the terminator, and a NUL is no blank */
	while (req->root != NULL && end < len &&
	       (line[end] == ' ' || line[end] == '\t' || line[end] == '\r'))
		end++;
	if (req->root == NULL || end != len) {
		snprintf(msg, msgsize, "request is not JSON: %s",
			 req->root ? "characters after the object" :
			 json_tokener_error_desc(json_tokener_get_error(tok)));
		json_tokener_free(tok);
		*code = PROTO_MALFORMED;
		return -1;
	}
	json_tokener_free(tok);
	if (!json_object_is_type(req->root, json_type_object))
		return fail(code, PROTO_MALFORMED, msg, msgsize, "request is not a JSON object");

	if (json_object_object_get_ex(req->root, "id", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_string))
			return fail(code, PROTO_MALFORMED, msg, msgsize, "\"id\" is not a string");
		if (!cqrs_uuid_valid(json_object_get_string(v)) ||
		    has_nul(v)) {
			if (json_object_get_string_len(v) <= 64 && !has_nul(v))
				req->echo_id = strdup(json_object_get_string(v));
			return fail(code, PROTO_MALFORMED, msg, msgsize, "\"id\" is not a UUID");
		}
		/* lower case, so "A..." and "a..." are one command; the answer
		 * echoes the id as it was sent */
		for (int i = 0; i < UUID_STR_LEN - 1; i++)
			req->id[i] = (char)(json_object_get_string(v)[i] | 0x20);
		req->id[UUID_STR_LEN - 1] = '\0';
		if (strcmp(req->id, json_object_get_string(v)) != 0)
			req->echo_id = strdup(json_object_get_string(v));
		req->id_given = true;
	} else {
		cqrs_uuid_v7(req->id);
	}

	if (!json_object_object_get_ex(req->root, "command", &v))
		return fail(code, PROTO_MALFORMED, msg, msgsize, "\"command\" is missing");
	if (!json_object_is_type(v, json_type_string))
		return fail(code, PROTO_MALFORMED, msg, msgsize, "\"command\" is not a string");
	req->command = json_object_get_string(v);
	if (has_nul(v))
		return fail(code, PROTO_MALFORMED, msg, msgsize, "\"command\" contains a NUL character");
	if (cqrs_envelope_check_type("command", req->command, &err) < 0)
		return fail(code, PROTO_MALFORMED, msg, msgsize, err.msg);

	if (!json_object_object_get_ex(req->root, "aggregate_id", &v))
		return fail(code, PROTO_MALFORMED, msg, msgsize, "\"aggregate_id\" is missing");
	if (!json_object_is_type(v, json_type_string))
		return fail(code, PROTO_MALFORMED, msg, msgsize, "\"aggregate_id\" is not a string");
	req->aggregate_id = json_object_get_string(v);
	if (has_nul(v))
		return fail(code, PROTO_MALFORMED, msg, msgsize,
			    "\"aggregate_id\" contains a NUL character");
	if (cqrs_envelope_check_aggregate_id(req->aggregate_id, &err) < 0)
		return fail(code, PROTO_MALFORMED, msg, msgsize, err.msg);

	if (json_object_object_get_ex(req->root, "expected_version", &v) &&
	    !json_object_is_type(v, json_type_null)) {
		int64_t e;
		if (!json_object_is_type(v, json_type_int))
			return fail(code, PROTO_MALFORMED, msg, msgsize,
				    "\"expected_version\" is not an integer");
		e = json_object_get_int64(v);
		if (e < 0 || e > INT32_MAX)
			return fail(code, PROTO_MALFORMED, msg, msgsize,
				    "\"expected_version\" must be 0..2147483647");
		req->expected = e;
	}

	if (!json_object_object_get_ex(req->root, "data", &v))
		return fail(code, PROTO_MALFORMED, msg, msgsize, "\"data\" is missing");
	if (!json_object_is_type(v, json_type_object))
		return fail(code, PROTO_MALFORMED, msg, msgsize, "\"data\" is not an object");
	req->data = v;

	if (json_object_object_get_ex(req->root, "metadata", &v) &&
	    !json_object_is_type(v, json_type_null)) {
		struct json_object *corr;
		if (!json_object_is_type(v, json_type_object))
			return fail(code, PROTO_MALFORMED, msg, msgsize,
				    "\"metadata\" is not an object");
		/* the correlation id goes into every log line about the command */
		if (json_object_object_get_ex(v, "correlation_id", &corr) &&
		    (!json_object_is_type(corr, json_type_string) || has_nul(corr) ||
		     json_object_get_string_len(corr) < 1 ||
		     json_object_get_string_len(corr) > CQRS_TYPE_MAX))
			return fail(code, PROTO_MALFORMED, msg, msgsize,
				    "\"metadata.correlation_id\" must be a string of 1..200 bytes");
		req->metadata = v;
	}
	return 0;
}

static char *
finish(struct json_object *o)
{
	const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
						       JSON_C_TO_STRING_NOSLASHESCAPE);
	size_t n = strlen(s);
	char *line = malloc(n + 2);

	if (line != NULL) {
		memcpy(line, s, n);
		line[n] = '\n';
		line[n + 1] = '\0';
	}
	json_object_put(o);
	return line;
}

char *
proto_answer_error(const char *id, const char *code, const char *message)
{
	struct json_object *o = json_object_new_object();
	struct json_object *e = json_object_new_object();

	json_object_object_add(o, "id", id ? json_object_new_string(id) : NULL);
	json_object_object_add(o, "ok", json_object_new_boolean(0));
	json_object_object_add(e, "code", json_object_new_string(code));
	json_object_object_add(e, "message", json_object_new_string(message ? message : ""));
	json_object_object_add(o, "error", e);
	return finish(o);
}

char *
proto_answer_ok(const char *id, const char *stream, const struct store_append_result *r)
{
	return finish(cqrs_store_append_result_json(id, stream, r));
}

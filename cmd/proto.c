/* proto.c - the command protocol v1: request parsing and answers. */
#include <inttypes.h>
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

/*
 * What malloc hands out for n bytes (glibc: an 8-byte header, 16-byte steps,
 * 32 at least), so that many small objects are not counted at half their cost.
 */
static size_t
alloc_cost(size_t n)
{
	size_t c = (n + 8 + 15) & ~(size_t)15;

	if (c >= 128 * 1024)	/* M_MMAP_THRESHOLD: whole pages of their own */
		return (n + 16 + 4095) & ~(size_t)4095;
	return c < 32 ? 32 : c;
}

/*
 * The heap a parsed JSON value holds, from json-c 0.15+'s layout: a 40-byte
 * header per value and its own part per type (a string's bytes inline, 9 at
 * least; a number the parser saw as a double keeps its text too); an
 * object's hash table (56 bytes and 40 per slot) and a copy of each key; an
 * array's list (32 bytes and 8 per slot). Slot counts are read from the
 * value itself. The parser limits depth to 32 (json_tokener_new), so the
 * recursion is bounded. tests/unit/test_cmdd_budget.c holds it against the
 * allocator's own count.
 */
static size_t
json_held(struct json_object *v)
{
	size_t n = 0;

	switch (json_object_get_type(v)) {
	case json_type_null:
		return 0;	/* a NULL pointer */
	case json_type_boolean:
		return alloc_cost(48);
	case json_type_double: {
		const char *text = json_object_get_userdata(v);

		return alloc_cost(48) + (text != NULL ? alloc_cost(strlen(text) + 1) : 0);
	}
	case json_type_int:
		return alloc_cost(56);
	case json_type_string: {
		size_t len = (size_t)json_object_get_string_len(v);

		return alloc_cost(48 + (len < 8 ? 9 : len + 1));
	}
	case json_type_object: {
		struct lh_table *t = json_object_get_object(v);

		n = alloc_cost(48) + alloc_cost(56) + alloc_cost((size_t)t->size * 40);
		json_object_object_foreach(v, key, val) {
			n += alloc_cost(strlen(key) + 1);
			n += json_held(val);
		}
		return n;
	}
	case json_type_array: {
		struct array_list *a = json_object_get_array(v);

		n = alloc_cost(48) + alloc_cost(32) + alloc_cost(a->size * sizeof(void *));
		for (size_t i = 0; i < a->length; i++)
			n += json_held(a->array[i]);
		return n;
	}
	}
	return n;
}

/*
 * Upper bounds, per piece of text, of what json_held() counts for it: an
 * object with its 16-slot table 784; an array 112, and 16 per element for
 * the slots it grows through; a key 176 (its copy, and table slots when the
 * table doubles past two thirds full); a value 128 (the largest header, a
 * double's copy of its text). Text bytes (strings, keys, numbers) count
 * once more, for the copies the parser keeps.
 */
size_t
proto_cost_bound(const char *line, size_t len)
{
	size_t objects = 0, arrays = 0, keys = 0, commas = 0;
	bool in_string = false;

	for (size_t i = 0; i < len; i++) {
		char c = line[i];

		if (in_string) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
			continue;
		}
		switch (c) {
		case '"':
			in_string = true;
			break;
		case '{':
			objects++;
			break;
		case '[':
			arrays++;
			break;
		case ':':
			keys++;
			break;
		case ',':
			commas++;
			break;
		default:
			break;
		}
	}
	/* values: one per comma, the first of each container, the root */
	return 784 * objects + 112 * arrays + 176 * keys + (128 + 16) * (commas + objects + arrays + 1) +
	       2 * len;
}

size_t
proto_json_bytes(struct json_object *v)
{
	return json_held(v);
}

size_t
proto_json_object_bytes(struct json_object *o, struct json_object *from)
{
	struct lh_table *t;
	size_t n;

	if (!json_object_is_type(o, json_type_object))
		return json_held(o);
	t = json_object_get_object(o);
	n = alloc_cost(48) + alloc_cost(56) + alloc_cost((size_t)t->size * 40);
	json_object_object_foreach(o, key, val) {
		struct json_object *orig = NULL;

		n += alloc_cost(strlen(key) + 1);
		if (from == NULL || !json_object_object_get_ex(from, key, &orig) || orig != val)
			n += json_held(val);
	}
	return n;
}

size_t
proto_request_bytes(const struct request *req)
{
	size_t n = 0;

	if (req->root != NULL)
		n += json_held(req->root);
	if (req->echo_id != NULL)
		n += alloc_cost(strlen(req->echo_id) + 1);
	return n;
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
		/* who sent it is what the socket says, never what the sender says */
		if (json_object_object_get_ex(v, "peer", NULL))
			return fail(code, PROTO_MALFORMED, msg, msgsize,
				    "\"metadata.peer\" is set by the daemon: who sent the command");
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

/*
 * Written straight into one block, as cqrs_store_append_result_json() and
 * json-c would write it: every command answered ok goes through here, and
 * a tree of json-c objects for it cost a dozen allocations.
 */
char *
proto_answer_ok(const char *id, const char *stream, const struct store_append_result *r)
{
	static const char ev_fmt[] = "{\"id\":\"%s\",\"type\":%s,\"version\":%" PRId64
				     ",\"position\":%" PRId64 "}";
	size_t size = 128 + cqrs_json_quote(NULL, stream) + (id ? cqrs_json_quote(NULL, id) : 0);
	size_t n = 0;
	char *line, *q;

	for (size_t i = 0; i < r->n; i++)
		size += 96 + 2 * cqrs_json_quote(NULL, r->events[i].type) + 40;
	line = malloc(size);
	q = malloc(size);
	if (line == NULL || q == NULL) {
		free(line);
		free(q);
		return NULL;
	}
	line[n++] = '{';
	if (id != NULL) {
		memcpy(line + n, "\"id\":", 5);
		n += 5;
		n += cqrs_json_quote(line + n, id);
		line[n++] = ',';
	}
	q[cqrs_json_quote(q, stream)] = '\0';
	n += (size_t)snprintf(line + n, size - n, "\"ok\":true,\"stream\":%s,\"version\":%" PRId64 "%s"
			      ",\"events\":[", q, r->version, r->duplicate ? ",\"duplicate\":true" : "");
	for (size_t i = 0; i < r->n; i++) {
		const struct store_written *w = &r->events[i];

		q[cqrs_json_quote(q, w->type)] = '\0';
		if (i > 0)
			line[n++] = ',';
		n += (size_t)snprintf(line + n, size - n, ev_fmt, w->id, q, w->version, w->position);
	}
	memcpy(line + n, "]}\n", 4);
	free(q);
	return line;
}

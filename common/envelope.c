/*
 * envelope.c - the event envelope in JSON (DESIGN.md, "Event envelope"), and
 * the rules for names and ids that come from outside.
 *
 * json-c's strict mode still lets through things that PostgreSQL's jsonb and
 * other readers refuse or that change meaning on the way: overlong UTF-8 and
 * surrogates, raw control characters in strings, NaN and Infinity, "1.", and
 * integers beyond 64 bits (clamped without a word). A small lexer pass over
 * the text refuses those before json-c builds the tree.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "envelope.h"
#include "uuid.h"

#define ENCODE_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

static int
fail(struct cqrs_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Sets err to "envelope: " and the message; returns code. */
static int
fail(struct cqrs_err *err, int code, const char *fmt, ...)
{
	char msg[CQRS_ERR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return cqrs_err_set(err, code, "envelope: %s", msg);
}

/* Puts "envelope: " before a message from a name rule. */
static int
prefixed(struct cqrs_err *err, int rc)
{
	if (err != NULL)
		cqrs_err_prefix(err, "envelope");
	return rc;
}

/* ---- UTF-8 and the lexer pass ------------------------------------------ */

/*
 * Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0. *cp gets the code
 * point.
 */
static size_t
utf8_seq(const unsigned char *s, size_t len, uint32_t *cp)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80;
	unsigned char hi = 0xbf;
	size_t n;
	size_t i;
	uint32_t v;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		v = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		v = c & 0x0f;
		if (c == 0xe0)
			lo = 0xa0;	/* overlong */
		else if (c == 0xed)
			hi = 0x9f;	/* surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		v = c & 0x07;
		if (c == 0xf0)
			lo = 0x90;	/* overlong */
		else if (c == 0xf4)
			hi = 0x8f;	/* above U+10FFFF */
	} else {
		return 0;
	}
	if (len < n)
		return 0;
	for (i = 1; i < n; i++) {
		unsigned char b = s[i];

		if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf))
			return 0;
		v = (v << 6) | (b & 0x3f);
	}
	*cp = v;
	return n;
}

static bool
is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool
is_letter(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool
is_json_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * Length of the JSON number at s (RFC 8259 grammar), or 0 when malformed.
 * *overflow is set for an integer json-c cannot hold: below INT64_MIN or
 * above UINT64_MAX.
 */
static size_t
scan_number(const unsigned char *s, size_t len, bool *overflow)
{
	static const char int64_min[] = "9223372036854775808";
	static const char uint64_max[] = "18446744073709551615";
	const char *limit;
	size_t i = 0;
	size_t start;
	size_t ndigits;
	size_t nlimit;
	bool neg = false;
	bool integer = true;

	*overflow = false;
	if (s[i] == '-') {
		neg = true;
		i++;
	}
	start = i;
	if (i < len && s[i] == '0') {
		i++;
	} else if (i < len && s[i] >= '1' && s[i] <= '9') {
		while (i < len && is_digit(s[i]))
			i++;
	} else {
		return 0;
	}
	ndigits = i - start;
	if (i < len && s[i] == '.') {
		integer = false;
		if (++i >= len || !is_digit(s[i]))
			return 0;
		while (i < len && is_digit(s[i]))
			i++;
	}
	if (i < len && (s[i] == 'e' || s[i] == 'E')) {
		integer = false;
		if (++i < len && (s[i] == '+' || s[i] == '-'))
			i++;
		if (i >= len || !is_digit(s[i]))
			return 0;
		while (i < len && is_digit(s[i]))
			i++;
	}
	if (integer) {
		limit = neg ? int64_min : uint64_max;
		nlimit = strlen(limit);
		if (ndigits > nlimit ||
		    (ndigits == nlimit && memcmp(s + start, limit, nlimit) > 0))
			*overflow = true;
	}
	return i;
}

/*
 * The lexer pass (see the comment at the top of the file), up to where the
 * first value's brackets close: what follows is the trailing-data check's.
 * Whether the brackets match is json-c's business.
 */
static int
scan_text(const unsigned char *s, size_t len, struct cqrs_err *err)
{
	bool in_string = false;
	bool overflow;
	size_t depth = 0;
	uint32_t cp;
	size_t i = 0;
	size_t n;

	while (i < len) {
		unsigned char c = s[i];

		if (c >= 0x80) {
			n = utf8_seq(s + i, len - i, &cp);
			if (n == 0)
				return fail(err, CQRS_EINVALID, "invalid UTF-8 at byte %zu", i);
			if (!in_string)
				return fail(err, CQRS_EINVALID,
					    "not JSON: unexpected character at byte %zu", i);
			i += n;
			continue;
		}
		if (in_string) {
			if (c < 0x20)
				return fail(err, CQRS_EINVALID,
					    "not JSON: control character in a string at byte %zu", i);
			if (c == '"')
				in_string = false;
			else if (c == '\\' && i + 1 < len && s[i + 1] >= 0x20 && s[i + 1] < 0x80)
				i++;	/* the escaped character; json-c checks the escape */
			i++;
			continue;
		}
		if (c == '"') {
			in_string = true;
			i++;
		} else if (c == '{' || c == '[') {
			depth++;
			i++;
		} else if (c == '}' || c == ']') {
			if (depth > 0 && --depth == 0)
				break;
			i++;
		} else if (is_json_space(c) || c == ',' || c == ':') {
			i++;
		} else if (c == '-' || is_digit(c)) {
			n = scan_number(s + i, len - i, &overflow);
			if (n == 0)
				return fail(err, CQRS_EINVALID, "not JSON: malformed number at byte %zu", i);
			if (overflow)
				return fail(err, CQRS_EINVALID,
					    "integer at byte %zu is out of the 64-bit range", i);
			i += n;
		} else if (is_letter(c)) {
			for (n = 0; i + n < len && is_letter(s[i + n]); n++)
				;
			if (!((n == 4 && memcmp(s + i, "true", 4) == 0) ||
			      (n == 5 && memcmp(s + i, "false", 5) == 0) ||
			      (n == 4 && memcmp(s + i, "null", 4) == 0)))
				return fail(err, CQRS_EINVALID,
					    "not JSON: unexpected character at byte %zu", i);
			i += n;
		} else {
			return fail(err, CQRS_EINVALID, "not JSON: unexpected character at byte %zu", i);
		}
	}
	return 0;
}

/* ---- name rules ---------------------------------------------------------- */

/* 1..max bytes of ASCII letters, digits and the characters in extra. */
static int
check_name(const char *what, const char *s, size_t max, const char *extra,
	   struct cqrs_err *err)
{
	size_t len;
	size_t i;

	if (s == NULL)
		return cqrs_err_set(err, CQRS_EINVALID, "\"%s\" is missing", what);
	len = strnlen(s, max + 1);
	if (len == 0)
		return cqrs_err_set(err, CQRS_EINVALID, "\"%s\" is empty", what);
	if (len > max)
		return cqrs_err_set(err, CQRS_EINVALID, "\"%s\" is longer than %zu bytes",
				    what, max);
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (!is_letter(c) && !is_digit(c) && strchr(extra, c) == NULL)
			return cqrs_err_set(err, CQRS_EINVALID,
					    "\"%s\" may only have letters, digits and \"%s\" "
					    "(byte %zu is not one)", what, extra, i);
	}
	return 0;
}

int
cqrs_envelope_check_stream(const char *stream, struct cqrs_err *err)
{
	const unsigned char *s = (const unsigned char *)stream;
	uint32_t cp;
	size_t len;
	size_t i;
	size_t n;

	if (stream == NULL)
		return cqrs_err_set(err, CQRS_EINVALID, "\"stream\" is missing");
	len = strnlen(stream, CQRS_STREAM_MAX + 1);
	if (len == 0)
		return cqrs_err_set(err, CQRS_EINVALID, "\"stream\" is empty");
	if (len > CQRS_STREAM_MAX)
		return cqrs_err_set(err, CQRS_EINVALID, "\"stream\" is longer than %d bytes",
				    CQRS_STREAM_MAX);
	for (i = 0; i < len; i += n) {
		n = utf8_seq(s + i, len - i, &cp);
		if (n == 0)
			return cqrs_err_set(err, CQRS_EINVALID,
					    "\"stream\" is not valid UTF-8 at byte %zu", i);
		/* C0, DEL and C1: nothing a log line or a terminal should get */
		if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
			return cqrs_err_set(err, CQRS_EINVALID,
					    "\"stream\" has a control character at byte %zu", i);
	}
	return 0;
}

int
cqrs_envelope_check_type(const char *what, const char *type, struct cqrs_err *err)
{
	return check_name(what != NULL ? what : "type", type, CQRS_TYPE_MAX, "._-:", err);
}

int
cqrs_envelope_check_aggregate_type(const char *type, struct cqrs_err *err)
{
	return check_name("aggregate type", type, CQRS_TYPE_MAX, "_", err);
}

int
cqrs_envelope_check_aggregate_id(const char *id, struct cqrs_err *err)
{
	return check_name("aggregate_id", id, CQRS_AGGREGATE_ID_MAX, "-_.:@", err);
}

static int
digits(const char *s, size_t n)
{
	int v = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		if (!is_digit((unsigned char)s[i]))
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

static int
days_in_month(int year, int month)
{
	static const int days[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;

	return month == 2 && leap ? 29 : days[month - 1];
}

int
cqrs_envelope_check_recorded_at(const char *s, struct cqrs_err *err)
{
	int year, month, day, hour, minute, second;
	size_t i;
	size_t nfrac;

	if (s == NULL)
		return cqrs_err_set(err, CQRS_EINVALID, "\"recorded_at\" is missing");
	/* digits() stops at the first non-digit, and each step runs only when the
	 * one before matched, so a short string is never read past its NUL. */
	year = digits(s, 4);
	month = year >= 0 && s[4] == '-' ? digits(s + 5, 2) : -1;
	day = month >= 0 && s[7] == '-' ? digits(s + 8, 2) : -1;
	hour = day >= 0 && s[10] == 'T' ? digits(s + 11, 2) : -1;
	minute = hour >= 0 && s[13] == ':' ? digits(s + 14, 2) : -1;
	second = minute >= 0 && s[16] == ':' ? digits(s + 17, 2) : -1;
	i = 19;
	nfrac = 0;
	if (second >= 0 && s[i] == '.') {
		for (i++; is_digit((unsigned char)s[i]) && nfrac <= 6; i++)
			nfrac++;
		if (nfrac == 0 || nfrac > 6)
			second = -1;
	}
	if (year < 0 || second < 0 || s[i] != 'Z' || s[i + 1] != '\0')
		return cqrs_err_set(err, CQRS_EINVALID,
				    "\"recorded_at\" must be a UTC time like "
				    "\"2026-11-26T05:20:49.123456Z\"");
	if (month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) ||
	    hour > 23 || minute > 59 || second > 60)
		return cqrs_err_set(err, CQRS_EINVALID,
				    "\"recorded_at\" is not a real date and time");
	return 0;
}

int
cqrs_envelope_stream_type(const char *stream, char *buf, size_t size)
{
	const char *dash;
	size_t len;

	if (buf != NULL && size > 0)
		buf[0] = '\0';
	if (stream == NULL || buf == NULL)
		return CQRS_EINVALID;
	dash = strchr(stream, '-');
	if (dash == NULL || dash == stream)
		return CQRS_EINVALID;
	len = (size_t)(dash - stream);
	if (len >= size)
		return CQRS_EINVALID;
	memcpy(buf, stream, len);
	buf[len] = '\0';
	return 0;
}

void
cqrs_envelope_now(char *buf, size_t size)
{
	struct timespec ts;
	struct tm tm;

	if (buf == NULL || size == 0)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		 (long)(ts.tv_nsec / 1000));
}

/* ---- events ---------------------------------------------------------------- */

/* *dst = a copy of src (NULL stays NULL); -1 when out of memory. */
static int
copy_string(char **dst, const char *src)
{
	*dst = NULL;
	if (src == NULL)
		return 0;
	*dst = strdup(src);
	return *dst == NULL ? -1 : 0;
}

struct cqrs_event *
cqrs_event_new(const char *id, const char *stream, int64_t version, int64_t position,
	  const char *type, struct json_object *data, struct json_object *metadata,
	  const char *recorded_at)
{
	struct cqrs_event *ev = NULL;
	struct cqrs_event *ret = NULL;

	ev = calloc(1, sizeof(*ev));
	if (ev == NULL)
		goto out;
	if (copy_string(&ev->id, id) != 0 || copy_string(&ev->stream, stream) != 0 ||
	    copy_string(&ev->type, type) != 0 ||
	    copy_string(&ev->recorded_at, recorded_at) != 0)
		goto out;
	ev->version = version;
	ev->position = position;
	ev->data = json_object_get(data);
	ev->metadata = metadata != NULL ? json_object_get(metadata) : json_object_new_object();
	if (ev->metadata == NULL)
		goto out;

	ret = ev;
	ev = NULL;
out:
	cqrs_event_free(ev);
	return ret;
}

void
cqrs_event_free(struct cqrs_event *ev)
{
	if (ev == NULL)
		return;
	free(ev->id);
	free(ev->stream);
	free(ev->type);
	json_object_put(ev->data);
	json_object_put(ev->metadata);
	free(ev->recorded_at);
	free(ev);
}

/* Adds val (owned: dropped on failure) to obj; -1 when out of memory. */
static int
add_field(struct json_object *obj, const char *key, struct json_object *val, bool may_be_null)
{
	if (val == NULL && !may_be_null)
		return -1;
	if (json_object_object_add(obj, key, val) != 0) {
		json_object_put(val);
		return -1;
	}
	return 0;
}

static int
add_string(struct json_object *obj, const char *key, const char *s)
{
	if (s == NULL)
		return add_field(obj, key, NULL, true);
	return add_field(obj, key, json_object_new_string(s), false);
}

char *
cqrs_envelope_encode(const struct cqrs_event *ev)
{
	struct json_object *obj = NULL;
	const char *text;
	char *ret = NULL;

	if (ev == NULL)
		goto out;
	obj = json_object_new_object();
	if (obj == NULL)
		goto out;
	/* The order of DESIGN.md; json-c keeps insertion order. */
	if (add_string(obj, "id", ev->id) != 0 ||
	    add_string(obj, "stream", ev->stream) != 0 ||
	    add_field(obj, "version", json_object_new_int64(ev->version), false) != 0 ||
	    add_field(obj, "position", json_object_new_int64(ev->position), false) != 0 ||
	    add_string(obj, "type", ev->type) != 0 ||
	    add_field(obj, "data", json_object_get(ev->data), true) != 0 ||
	    add_field(obj, "metadata", json_object_get(ev->metadata), true) != 0 ||
	    add_string(obj, "recorded_at", ev->recorded_at) != 0)
		goto out;
	text = json_object_to_json_string_ext(obj, ENCODE_FLAGS);
	if (text != NULL)
		ret = strdup(text);
out:
	json_object_put(obj);
	return ret;
}

/* ---- field rules, shared by validate and decode --------------------------- */

static int
check_id(const char *id, struct cqrs_err *err)
{
	if (id == NULL)
		return fail(err, CQRS_EINVALID, "\"id\" is missing");
	if (!cqrs_uuid_valid(id))
		return fail(err, CQRS_EINVALID, "\"id\" is not a UUID");
	return 0;
}

static int
check_int(const char *key, int64_t v, int64_t min, struct cqrs_err *err)
{
	if (v < min)
		return fail(err, CQRS_EINVALID, "\"%s\" must be an integer >= %" PRId64, key, min);
	return 0;
}

static int
check_object(const char *key, struct json_object *v, struct cqrs_err *err)
{
	if (!json_object_is_type(v, json_type_object))
		return fail(err, CQRS_EINVALID, "\"%s\" must be an object", key);
	return 0;
}

int
cqrs_envelope_validate(const struct cqrs_event *ev, struct cqrs_err *err)
{
	int rc;

	if (ev == NULL)
		return fail(err, CQRS_EINVALID, "no event");
	if ((rc = check_id(ev->id, err)) != 0)
		return rc;
	if ((rc = cqrs_envelope_check_stream(ev->stream, err)) != 0)
		return prefixed(err, rc);
	if ((rc = check_int("version", ev->version, 1, err)) != 0 ||
	    (rc = check_int("position", ev->position, 0, err)) != 0)
		return rc;
	if ((rc = cqrs_envelope_check_type("type", ev->type, err)) != 0)
		return prefixed(err, rc);
	if ((rc = check_object("data", ev->data, err)) != 0 ||
	    (rc = check_object("metadata", ev->metadata, err)) != 0)
		return rc;
	if ((rc = cqrs_envelope_check_recorded_at(ev->recorded_at, err)) != 0)
		return prefixed(err, rc);
	return 0;
}

/* *out = the field key of obj (borrowed), or an error when it is missing. */
static int
get_field(struct json_object *obj, const char *key, struct json_object **out,
	  struct cqrs_err *err)
{
	if (!json_object_object_get_ex(obj, key, out))
		return fail(err, CQRS_EINVALID, "\"%s\" is missing", key);
	return 0;
}

static int
get_string(struct json_object *obj, const char *key, const char **out, struct cqrs_err *err)
{
	struct json_object *v;
	int rc;

	if ((rc = get_field(obj, key, &v, err)) != 0)
		return rc;
	if (!json_object_is_type(v, json_type_string))
		return fail(err, CQRS_EINVALID, "\"%s\" must be a string", key);
	*out = json_object_get_string(v);
	/* "\u0000" would cut the copy short without a word */
	if (strlen(*out) != (size_t)json_object_get_string_len(v))
		return fail(err, CQRS_EINVALID, "\"%s\" has a NUL character", key);
	return 0;
}

static int
get_int(struct json_object *obj, const char *key, int64_t min, int64_t *out,
	struct cqrs_err *err)
{
	struct json_object *v;
	int rc;

	if ((rc = get_field(obj, key, &v, err)) != 0)
		return rc;
	if (!json_object_is_type(v, json_type_int))
		return fail(err, CQRS_EINVALID, "\"%s\" must be an integer >= %" PRId64, key, min);
	*out = json_object_get_int64(v);
	/* json-c holds 2^63..2^64-1 as unsigned and get_int64 clamps those */
	if (*out == INT64_MAX && json_object_get_uint64(v) > (uint64_t)INT64_MAX)
		return fail(err, CQRS_EINVALID, "\"%s\" is larger than %" PRId64, key, INT64_MAX);
	return check_int(key, *out, min, err);
}

int
cqrs_envelope_decode_object(struct json_object *obj, struct cqrs_event **out,
		       struct cqrs_err *err)
{
	const char *id, *stream, *type, *recorded_at;
	struct json_object *data, *metadata;
	int64_t version, position;
	int rc;

	*out = NULL;
	if (!json_object_is_type(obj, json_type_object))
		return fail(err, CQRS_EINVALID, "not a JSON object");
	if ((rc = get_string(obj, "id", &id, err)) != 0 || (rc = check_id(id, err)) != 0)
		return rc;
	if ((rc = get_string(obj, "stream", &stream, err)) != 0)
		return rc;
	if ((rc = cqrs_envelope_check_stream(stream, err)) != 0)
		return prefixed(err, rc);
	if ((rc = get_int(obj, "version", 1, &version, err)) != 0 ||
	    (rc = get_int(obj, "position", 0, &position, err)) != 0 ||
	    (rc = get_string(obj, "type", &type, err)) != 0)
		return rc;
	if ((rc = cqrs_envelope_check_type("type", type, err)) != 0)
		return prefixed(err, rc);
	if ((rc = get_field(obj, "data", &data, err)) != 0 ||
	    (rc = check_object("data", data, err)) != 0 ||
	    (rc = get_field(obj, "metadata", &metadata, err)) != 0 ||
	    (rc = check_object("metadata", metadata, err)) != 0 ||
	    (rc = get_string(obj, "recorded_at", &recorded_at, err)) != 0)
		return rc;
	if ((rc = cqrs_envelope_check_recorded_at(recorded_at, err)) != 0)
		return prefixed(err, rc);

	*out = cqrs_event_new(id, stream, version, position, type, data, metadata, recorded_at);
	if (*out == NULL)
		return fail(err, CQRS_ENOMEM, "out of memory");
	return 0;
}

int
cqrs_envelope_decode(const char *json, size_t len, struct cqrs_event **out,
		struct cqrs_err *err)
{
	struct json_tokener *tok = NULL;
	struct json_object *root = NULL;
	enum json_tokener_error jerr;
	size_t end;
	int rc;

	*out = NULL;
	if (json == NULL) {
		rc = fail(err, CQRS_EINVALID, "no input");
		goto out;
	}
	if (len > ENVELOPE_MAX_INPUT) {
		rc = fail(err, CQRS_EINVALID, "too large: %zu bytes, the limit is %zu",
			  len, ENVELOPE_MAX_INPUT);
		goto out;
	}
	if ((rc = scan_text((const unsigned char *)json, len, err)) != 0)
		goto out;
	/* json-c reports a lone number at the end of the input as incomplete */
	for (end = 0; end < len && is_json_space((unsigned char)json[end]); end++)
		;
	if (end < len && json[end] != '{') {
		rc = fail(err, CQRS_EINVALID, "not a JSON object");
		goto out;
	}

	tok = json_tokener_new_ex(ENVELOPE_MAX_DEPTH);
	if (tok == NULL) {
		rc = fail(err, CQRS_ENOMEM, "out of memory");
		goto out;
	}
	/* trailing bytes are checked below, for a message that says so */
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS |
			       JSON_TOKENER_VALIDATE_UTF8);
	root = json_tokener_parse_ex(tok, json, (int)len);	/* len <= 2 MiB */
	if (root == NULL) {
		jerr = json_tokener_get_error(tok);
		if (jerr == json_tokener_success || jerr == json_tokener_continue)
			rc = fail(err, CQRS_EINVALID, "not JSON: %s",
				  len == 0 ? "empty input" : "unexpected end of input");
		else if (jerr == json_tokener_error_depth)
			rc = fail(err, CQRS_EINVALID, "nested deeper than %d levels",
				  ENVELOPE_MAX_DEPTH);
		else
			rc = fail(err, CQRS_EINVALID, "not JSON: %s at byte %zu",
				  json_tokener_error_desc(jerr), json_tokener_get_parse_end(tok));
		goto out;
	}
	for (end = json_tokener_get_parse_end(tok); end < len; end++) {
		if (!is_json_space((unsigned char)json[end])) {
			rc = fail(err, CQRS_EINVALID, "trailing data after the object at byte %zu",
				  end);
			goto out;
		}
	}
	rc = cqrs_envelope_decode_object(root, out, err);
out:
	json_object_put(root);
	if (tok != NULL)
		json_tokener_free(tok);
	return rc;
}

size_t
cqrs_json_quote(char *out, const char *s)
{
	size_t n = 0;

	if (out != NULL)
		out[n] = '"';
	n++;
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		if (*p == '"' || *p == '\\') {
			if (out != NULL) {
				out[n] = '\\';
				out[n + 1] = (char)*p;
			}
			n += 2;
		} else if (*p < 0x20) {
			if (out != NULL)
				snprintf(out + n, 7, "\\u%04x", *p);
			n += 6;
		} else {
			if (out != NULL)
				out[n] = (char)*p;
			n++;
		}
	}
	if (out != NULL)
		out[n] = '"';
	return n + 1;
}

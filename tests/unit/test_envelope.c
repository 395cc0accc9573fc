/* test_envelope.c - envelope encode/decode, validation and the name rules. */
#include <check.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "envelope.h"
#include "uuid.h"

/* ---- building envelopes ---------------------------------------------------- */

#define N_FIELDS 8

static const char *const field_names[N_FIELDS] = {
	"id", "stream", "version", "position", "type", "data", "metadata", "recorded_at",
};

/* A valid envelope, field by field, in the encoder's exact output form. */
static const char *const field_values[N_FIELDS] = {
	"\"0190a6d2-7c5e-7b3a-8f00-1234567890ab\"",
	"\"account-42\"",
	"4",
	"1234",
	"\"MoneyDeposited\"",
	"{\"amount\":100}",
	"{\"correlation_id\":\"c1\",\"causation_id\":\"c1\",\"command\":\"account.deposit\"}",
	"\"2026-11-26T05:20:49.123456Z\"",
};

#define VALID_JSON \
	"{\"id\":\"0190a6d2-7c5e-7b3a-8f00-1234567890ab\",\"stream\":\"account-42\"," \
	"\"version\":4,\"position\":1234,\"type\":\"MoneyDeposited\"," \
	"\"data\":{\"amount\":100},\"metadata\":{\"correlation_id\":\"c1\"," \
	"\"causation_id\":\"c1\",\"command\":\"account.deposit\"}," \
	"\"recorded_at\":\"2026-11-26T05:20:49.123456Z\"}"

/*
 * The valid envelope with field's raw JSON value replaced by raw, or the
 * field left out when raw is NULL (field NULL: unchanged). Caller frees.
 */
static char *
build(const char *field, const char *raw)
{
	size_t cap = 64;
	size_t len = 0;
	char *out;
	int i;

	for (i = 0; i < N_FIELDS; i++)
		cap += strlen(field_names[i]) + strlen(field_values[i]) + 4;
	if (raw != NULL)
		cap += strlen(raw);
	out = malloc(cap);
	ck_assert_ptr_nonnull(out);
	out[len++] = '{';
	for (i = 0; i < N_FIELDS; i++) {
		const char *v = field_values[i];

		if (field != NULL && strcmp(field, field_names[i]) == 0) {
			if (raw == NULL)
				continue;
			v = raw;
		}
		if (len > 1)
			out[len++] = ',';
		len += (size_t)sprintf(out + len, "\"%s\":%s", field_names[i], v);
	}
	out[len++] = '}';
	out[len] = '\0';
	return out;
}

/* A string of n copies of c. Caller frees. */
static char *
repeat(char c, size_t n)
{
	char *s = malloc(n + 1);

	ck_assert_ptr_nonnull(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

static void
expect_decode_error(const char *json, size_t len, const char *msg)
{
	struct cqrs_event *ev = (struct cqrs_event *)1;
	struct cqrs_err err = { 0, "" };

	ck_assert_int_eq(cqrs_envelope_decode(json, len, &ev, &err), CQRS_EINVALID);
	ck_assert_int_eq(err.code, CQRS_EINVALID);
	ck_assert_ptr_null(ev);
	ck_assert_str_eq(err.msg, msg);
}

static struct cqrs_event *
expect_decode_ok(const char *json, size_t len)
{
	struct cqrs_event *ev = NULL;
	struct cqrs_err err = { 0, "" };
	int rc;

	rc = cqrs_envelope_decode(json, len, &ev, &err);
	ck_assert_msg(rc == 0, "decode failed: %s", err.msg);
	ck_assert_ptr_nonnull(ev);
	return ev;
}

/* ---- one test per field error (a loop test: each row is its own check) ---- */

struct field_case {
	const char *field;
	const char *raw;	/* NULL: the field is left out */
	const char *msg;
};

#define MISSING(f) { f, NULL, "envelope: \"" f "\" is missing" }
#define NOT_STRING(f, raw) { f, raw, "envelope: \"" f "\" must be a string" }
#define TIME_SHAPE "\"recorded_at\" must be a UTC time like \"2026-11-26T05:20:49.123456Z\""
#define TIME_REAL "\"recorded_at\" is not a real date and time"
#define BAD_TIME "envelope: " TIME_SHAPE
#define NOT_REAL_TIME "envelope: " TIME_REAL

static const struct field_case field_cases[] = {
	MISSING("id"),
	NOT_STRING("id", "42"),
	NOT_STRING("id", "null"),
	{ "id", "\"not-a-uuid\"", "envelope: \"id\" is not a UUID" },
	{ "id", "\"0190a6d2-7c5e-7b3a-8f00-1234567890a\"", "envelope: \"id\" is not a UUID" },
	{ "id", "\"0190a6d27c5e7b3a8f001234567890ab\"", "envelope: \"id\" is not a UUID" },
	{ "id", "\"0190a6d2-7c5e-7b3a-8f00-1234567890ab\\u0000\"",
	  "envelope: \"id\" has a NUL character" },

	MISSING("stream"),
	NOT_STRING("stream", "[\"account-42\"]"),
	{ "stream", "\"\"", "envelope: \"stream\" is empty" },
	{ "stream", "\"account\\n-42\"", "envelope: \"stream\" has a control character at byte 7" },
	{ "stream", "\"acc\\u007f-1\"", "envelope: \"stream\" has a control character at byte 3" },
	{ "stream", "\"acc\\u0085-1\"", "envelope: \"stream\" has a control character at byte 3" },
	{ "stream", "\"acc\\u0000-1\"", "envelope: \"stream\" has a NUL character" },

	MISSING("version"),
	{ "version", "\"4\"", "envelope: \"version\" must be an integer >= 1" },
	{ "version", "0", "envelope: \"version\" must be an integer >= 1" },
	{ "version", "-1", "envelope: \"version\" must be an integer >= 1" },
	{ "version", "4.0", "envelope: \"version\" must be an integer >= 1" },
	{ "version", "4e0", "envelope: \"version\" must be an integer >= 1" },
	{ "version", "true", "envelope: \"version\" must be an integer >= 1" },
	{ "version", "null", "envelope: \"version\" must be an integer >= 1" },
	{ "version", "9223372036854775808",
	  "envelope: \"version\" is larger than 9223372036854775807" },
	{ "version", "18446744073709551615",
	  "envelope: \"version\" is larger than 9223372036854775807" },

	MISSING("position"),
	{ "position", "\"1234\"", "envelope: \"position\" must be an integer >= 0" },
	{ "position", "-1", "envelope: \"position\" must be an integer >= 0" },
	{ "position", "1.5", "envelope: \"position\" must be an integer >= 0" },
	{ "position", "{}", "envelope: \"position\" must be an integer >= 0" },

	MISSING("type"),
	NOT_STRING("type", "7"),
	{ "type", "\"\"", "envelope: \"type\" is empty" },
	{ "type", "\"Money Deposited\"",
	  "envelope: \"type\" may only have letters, digits and \"._-:\" (byte 5 is not one)" },
	{ "type", "\"Money/Deposited\"",
	  "envelope: \"type\" may only have letters, digits and \"._-:\" (byte 5 is not one)" },
	{ "type", "\"Mon\\u00e9y\"",
	  "envelope: \"type\" may only have letters, digits and \"._-:\" (byte 3 is not one)" },
	{ "type", "\"Money@Bank\"",
	  "envelope: \"type\" may only have letters, digits and \"._-:\" (byte 5 is not one)" },

	MISSING("data"),
	{ "data", "[]", "envelope: \"data\" must be an object" },
	{ "data", "null", "envelope: \"data\" must be an object" },
	{ "data", "\"{}\"", "envelope: \"data\" must be an object" },
	{ "data", "42", "envelope: \"data\" must be an object" },

	MISSING("metadata"),
	{ "metadata", "[]", "envelope: \"metadata\" must be an object" },
	{ "metadata", "null", "envelope: \"metadata\" must be an object" },
	{ "metadata", "\"x\"", "envelope: \"metadata\" must be an object" },

	MISSING("recorded_at"),
	NOT_STRING("recorded_at", "5"),
	NOT_STRING("recorded_at", "null"),
	{ "recorded_at", "\"\"", BAD_TIME },
	{ "recorded_at", "\"2026-11-26 05:20:49Z\"", BAD_TIME },
	{ "recorded_at", "\"2026-11-26T05:20:49.123456\"", BAD_TIME },
	{ "recorded_at", "\"2026-11-26T05:20:49.123456+00:00\"", BAD_TIME },
	{ "recorded_at", "\"2026-11-26T05:20:49.1234567Z\"", BAD_TIME },
	{ "recorded_at", "\"2026-11-26T05:20:49.Z\"", BAD_TIME },
	{ "recorded_at", "\"2026-11-26t05:20:49Z\"", BAD_TIME },
	{ "recorded_at", "\"2026-11-26T05:20:49z\"", BAD_TIME },
	{ "recorded_at", "\"26-11-26T05:20:49Z\"", BAD_TIME },
	{ "recorded_at", "\"2026-1-26T05:20:49Z\"", BAD_TIME },
	{ "recorded_at", "\"2026-11-26T05:20:49Z \"", BAD_TIME },
	{ "recorded_at", "\"2026-11-26T05:20Z\"", BAD_TIME },
	{ "recorded_at", "\"2026-11-26\"", BAD_TIME },
	{ "recorded_at", "\"2026\"", BAD_TIME },
	{ "recorded_at", "\"2026-13-01T00:00:00Z\"", NOT_REAL_TIME },
	{ "recorded_at", "\"2026-00-10T00:00:00Z\"", NOT_REAL_TIME },
	{ "recorded_at", "\"2026-11-00T00:00:00Z\"", NOT_REAL_TIME },
	{ "recorded_at", "\"2026-02-29T00:00:00Z\"", NOT_REAL_TIME },
	{ "recorded_at", "\"1900-02-29T00:00:00Z\"", NOT_REAL_TIME },
	{ "recorded_at", "\"2026-04-31T00:00:00Z\"", NOT_REAL_TIME },
	{ "recorded_at", "\"2026-11-26T24:00:00Z\"", NOT_REAL_TIME },
	{ "recorded_at", "\"2026-11-26T23:60:00Z\"", NOT_REAL_TIME },
	{ "recorded_at", "\"2026-11-26T23:59:61Z\"", NOT_REAL_TIME },
};

#define N_FIELD_CASES ((int)(sizeof(field_cases) / sizeof(field_cases[0])))

START_TEST(test_decode_field_error)
{
	const struct field_case *c = &field_cases[_i];
	char *json = build(c->field, c->raw);

	expect_decode_error(json, strlen(json), c->msg);
	free(json);
}
END_TEST

/* ---- errors in the text as a whole ------------------------------------------ */

/* The valid envelope with data replaced; *at = where marker starts in it. */
static char *
build_data(const char *data, const char *marker, size_t *at)
{
	char *json = build("data", data);
	const char *p = strstr(json, marker);

	ck_assert_ptr_nonnull(p);
	*at = (size_t)(p - json);
	return json;
}

static void
expect_data_error(const char *data, const char *marker, const char *fmt)
{
	char msg[256];
	size_t at;
	char *json = build_data(data, marker, &at);

	snprintf(msg, sizeof(msg), fmt, at);
	expect_decode_error(json, strlen(json), msg);
	free(json);
}

START_TEST(test_decode_null_input)
{
	expect_decode_error(NULL, 0, "envelope: no input");
}
END_TEST

START_TEST(test_decode_empty_input)
{
	expect_decode_error("", 0, "envelope: not JSON: empty input");
	expect_decode_error("  \n", 3, "envelope: not JSON: unexpected end of input");
}
END_TEST

START_TEST(test_decode_truncated)
{
	size_t len = strlen(VALID_JSON) - 1;

	expect_decode_error(VALID_JSON, len, "envelope: not JSON: unexpected end of input");
	expect_decode_error("{", 1, "envelope: not JSON: unexpected end of input");
}
END_TEST

START_TEST(test_decode_not_an_object)
{
	expect_decode_error("[]", 2, "envelope: not a JSON object");
	expect_decode_error("42", 2, "envelope: not a JSON object");
	expect_decode_error("\"x\"", 3, "envelope: not a JSON object");
	expect_decode_error("null", 4, "envelope: not a JSON object");
}
END_TEST

START_TEST(test_decode_trailing_garbage)
{
	const char *json = VALID_JSON "x";
	size_t n = strlen(VALID_JSON);
	char msg[128];

	snprintf(msg, sizeof(msg), "envelope: trailing data after the object at byte %zu", n);
	expect_decode_error(json, strlen(json), msg);
}
END_TEST

START_TEST(test_decode_trailing_object)
{
	const char *json = VALID_JSON VALID_JSON;
	size_t n = strlen(VALID_JSON);
	char msg[128];

	snprintf(msg, sizeof(msg), "envelope: trailing data after the object at byte %zu", n);
	expect_decode_error(json, strlen(json), msg);
}
END_TEST

START_TEST(test_decode_trailing_after_space)
{
	const char *json = VALID_JSON " \n,";
	size_t n = strlen(VALID_JSON) + 2;
	char msg[128];

	snprintf(msg, sizeof(msg), "envelope: trailing data after the object at byte %zu", n);
	expect_decode_error(json, strlen(json), msg);
}
END_TEST

START_TEST(test_decode_trailing_nul)
{
	const char json[] = VALID_JSON "\0";
	size_t n = strlen(VALID_JSON);
	char msg[128];

	snprintf(msg, sizeof(msg), "envelope: trailing data after the object at byte %zu", n);
	expect_decode_error(json, sizeof(json) - 1, msg);
}
END_TEST

START_TEST(test_decode_whitespace_around_ok)
{
	const char *json = " \t\r\n" VALID_JSON "\r\n ";
	struct cqrs_event *ev = expect_decode_ok(json, strlen(json));

	cqrs_event_free(ev);
}
END_TEST

START_TEST(test_decode_len_not_nul)
{
	/* len rules, not the NUL: the bytes after len are never read */
	char *json = malloc(strlen(VALID_JSON) + 5);
	struct cqrs_event *ev;

	ck_assert_ptr_nonnull(json);
	memcpy(json, VALID_JSON "}}}}}", strlen(VALID_JSON) + 5);
	ev = expect_decode_ok(json, strlen(VALID_JSON));
	ck_assert_str_eq(ev->stream, "account-42");
	cqrs_event_free(ev);
	free(json);
}
END_TEST

START_TEST(test_decode_invalid_utf8)
{
	expect_data_error("{\"s\":\"ab\xff\"}", "\xff", "envelope: invalid UTF-8 at byte %zu");
}
END_TEST

START_TEST(test_decode_utf8_overlong)
{
	/* "/" as two bytes: json-c's own check lets this through */
	expect_data_error("{\"s\":\"a\xc0\xaf\"}", "\xc0", "envelope: invalid UTF-8 at byte %zu");
	expect_data_error("{\"s\":\"a\xe0\x80\xaf\"}", "\xe0", "envelope: invalid UTF-8 at byte %zu");
}
END_TEST

START_TEST(test_decode_utf8_surrogate)
{
	expect_data_error("{\"s\":\"a\xed\xa0\x80\"}", "\xed", "envelope: invalid UTF-8 at byte %zu");
}
END_TEST

START_TEST(test_decode_utf8_above_max)
{
	expect_data_error("{\"s\":\"a\xf4\x90\x80\x80\"}", "\xf4",
			  "envelope: invalid UTF-8 at byte %zu");
	expect_data_error("{\"s\":\"a\xf5\x80\x80\x80\"}", "\xf5",
			  "envelope: invalid UTF-8 at byte %zu");
}
END_TEST

START_TEST(test_decode_utf8_truncated)
{
	/* the first two bytes of a three-byte sequence, then the closing quote */
	expect_data_error("{\"s\":\"a\xe6\x97\"}", "\xe6", "envelope: invalid UTF-8 at byte %zu");
}
END_TEST

START_TEST(test_decode_utf8_stray_continuation)
{
	expect_data_error("{\"s\":\"a\x80\"}", "\x80", "envelope: invalid UTF-8 at byte %zu");
}
END_TEST

START_TEST(test_decode_utf8_truncated_at_end)
{
	const char json[] = "{\"s\":\"\xe6\x97";

	expect_decode_error(json, sizeof(json) - 1, "envelope: invalid UTF-8 at byte 6");
}
END_TEST

START_TEST(test_decode_utf8_outside_string)
{
	expect_data_error("{\"s\":\xc3\xa9}", "\xc3",
			  "envelope: not JSON: unexpected character at byte %zu");
}
END_TEST

START_TEST(test_decode_raw_control_in_string)
{
	expect_data_error("{\"s\":\"a\tb\"}", "\t",
			  "envelope: not JSON: control character in a string at byte %zu");
	expect_data_error("{\"s\":\"a\nb\"}", "\n",
			  "envelope: not JSON: control character in a string at byte %zu");
}
END_TEST

START_TEST(test_decode_nan_infinity)
{
	expect_data_error("{\"x\":NaN}", "NaN", "envelope: not JSON: unexpected character at byte %zu");
	expect_data_error("{\"x\":Infinity}", "Infinity",
			  "envelope: not JSON: unexpected character at byte %zu");
	expect_data_error("{\"x\":-Infinity}", "-Infinity",
			  "envelope: not JSON: malformed number at byte %zu");
}
END_TEST

START_TEST(test_decode_malformed_numbers)
{
	expect_data_error("{\"x\":1.}", "1.}", "envelope: not JSON: malformed number at byte %zu");
	expect_data_error("{\"x\":1.e5}", "1.e5", "envelope: not JSON: malformed number at byte %zu");
	expect_data_error("{\"x\":1e}", "1e}", "envelope: not JSON: malformed number at byte %zu");
	expect_data_error("{\"x\":-}", "-}", "envelope: not JSON: malformed number at byte %zu");
	expect_data_error("{\"x\":.5}", ".5", "envelope: not JSON: unexpected character at byte %zu");
	expect_data_error("{\"x\":+5}", "+5", "envelope: not JSON: unexpected character at byte %zu");
}
END_TEST

START_TEST(test_decode_leading_zero)
{
	char *json = build("data", "{\"x\":01}");
	struct cqrs_event *ev = NULL;
	struct cqrs_err err = { 0, "" };

	ck_assert_int_eq(cqrs_envelope_decode(json, strlen(json), &ev, &err), CQRS_EINVALID);
	ck_assert_msg(strncmp(err.msg, "envelope: not JSON: ", 20) == 0, "%s", err.msg);
	free(json);
}
END_TEST

START_TEST(test_decode_integer_overflow)
{
	/* json-c would clamp these to INT64_MIN / UINT64_MAX without a word */
	expect_data_error("{\"x\":18446744073709551616}", "1844",
			  "envelope: integer at byte %zu is out of the 64-bit range");
	expect_data_error("{\"x\":-9223372036854775809}", "-9223",
			  "envelope: integer at byte %zu is out of the 64-bit range");
	expect_data_error("{\"x\":[123456789012345678901234567890]}", "12345678901234567890",
			  "envelope: integer at byte %zu is out of the 64-bit range");
}
END_TEST

START_TEST(test_decode_bad_literals)
{
	expect_data_error("{\"x\":True}", "True", "envelope: not JSON: unexpected character at byte %zu");
	expect_data_error("{\"x\":nul}", "nul", "envelope: not JSON: unexpected character at byte %zu");
	expect_data_error("{\"x\":'y'}", "'y'", "envelope: not JSON: unexpected character at byte %zu");
	expect_data_error("{x:1}", "x:1", "envelope: not JSON: unexpected character at byte %zu");
	expect_data_error("{\"x\":1 /* c */}", "/*",
			  "envelope: not JSON: unexpected character at byte %zu");
}
END_TEST

START_TEST(test_decode_syntax_errors)
{
	const char *bad[] = { "{\"x\":[1,2,]}", "{\"x\":1,}", "{\"x\" 1}", "{\"x\":\"\\q\"}" };
	struct cqrs_event *ev = NULL;
	struct cqrs_err err = { 0, "" };
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *json = build("data", bad[i]);

		ck_assert_int_eq(cqrs_envelope_decode(json, strlen(json), &ev, &err), CQRS_EINVALID);
		ck_assert_ptr_null(ev);
		ck_assert_msg(strncmp(err.msg, "envelope: not JSON: ", 20) == 0 &&
			      strstr(err.msg, " at byte ") != NULL, "%s: %s", bad[i], err.msg);
		free(json);
	}
}
END_TEST

/* Nesting: root, data, then n arrays. */
static char *
build_nested(size_t n)
{
	char *open = repeat('[', n);
	char *close = repeat(']', n);
	char *data = malloc(2 * n + 16);
	char *json;

	ck_assert_ptr_nonnull(data);
	sprintf(data, "{\"a\":%s%s}", open, close);
	json = build("data", data);
	free(open);
	free(close);
	free(data);
	return json;
}

START_TEST(test_decode_depth)
{
	char *ok = build_nested(ENVELOPE_MAX_DEPTH - 2);
	char *deep = build_nested(ENVELOPE_MAX_DEPTH - 1);
	struct cqrs_event *ev = expect_decode_ok(ok, strlen(ok));

	cqrs_event_free(ev);
	expect_decode_error(deep, strlen(deep), "envelope: nested deeper than 64 levels");
	free(ok);
	free(deep);
}
END_TEST

/* A valid envelope of exactly len bytes, padded in data. */
static char *
build_sized(size_t len)
{
	char *base = build("data", "{\"pad\":\"\"}");
	size_t pad = len - strlen(base);
	char *fill = repeat('x', pad);
	char *data = malloc(pad + 16);
	char *json;

	ck_assert_ptr_nonnull(data);
	sprintf(data, "{\"pad\":\"%s\"}", fill);
	json = build("data", data);
	ck_assert_uint_eq(strlen(json), len);
	free(base);
	free(fill);
	free(data);
	return json;
}

START_TEST(test_decode_at_size_limit)
{
	char *json = build_sized(ENVELOPE_MAX_INPUT);
	char *base = build("data", "{\"pad\":\"\"}");
	struct cqrs_event *ev = expect_decode_ok(json, strlen(json));
	struct json_object *pad = json_object_object_get(ev->data, "pad");

	ck_assert_uint_eq((size_t)json_object_get_string_len(pad),
			  ENVELOPE_MAX_INPUT - strlen(base));
	cqrs_event_free(ev);
	free(base);
	free(json);
}
END_TEST

START_TEST(test_decode_too_large)
{
	char *json = build_sized(ENVELOPE_MAX_INPUT + 1);
	char msg[128];

	ck_assert_uint_eq(ENVELOPE_MAX_INPUT, (size_t)CQRS_EVENT_MAX_BYTES * 2);
	snprintf(msg, sizeof(msg), "envelope: too large: %zu bytes, the limit is %zu",
		 ENVELOPE_MAX_INPUT + 1, ENVELOPE_MAX_INPUT);
	expect_decode_error(json, strlen(json), msg);
	free(json);
}
END_TEST

/* ---- what decodes ------------------------------------------------------------ */

START_TEST(test_decode_fields)
{
	struct cqrs_event *ev = expect_decode_ok(VALID_JSON, strlen(VALID_JSON));
	struct cqrs_err err = { 0, "" };

	ck_assert_str_eq(ev->id, "0190a6d2-7c5e-7b3a-8f00-1234567890ab");
	ck_assert_str_eq(ev->stream, "account-42");
	ck_assert_int_eq(ev->version, 4);
	ck_assert_int_eq(ev->position, 1234);
	ck_assert_str_eq(ev->type, "MoneyDeposited");
	ck_assert_int_eq(json_object_get_int(json_object_object_get(ev->data, "amount")), 100);
	ck_assert_str_eq(json_object_get_string(json_object_object_get(ev->metadata, "command")),
			 "account.deposit");
	ck_assert_str_eq(ev->recorded_at, "2026-11-26T05:20:49.123456Z");
	ck_assert_int_eq(cqrs_envelope_validate(ev, &err), 0);
	cqrs_event_free(ev);
}
END_TEST

START_TEST(test_round_trip_identical)
{
	struct cqrs_event *ev = expect_decode_ok(VALID_JSON, strlen(VALID_JSON));
	struct cqrs_event *again;
	char *first = cqrs_envelope_encode(ev);
	char *second;

	ck_assert_ptr_nonnull(first);
	ck_assert_str_eq(first, VALID_JSON);
	again = expect_decode_ok(first, strlen(first));
	second = cqrs_envelope_encode(again);
	ck_assert_str_eq(second, first);
	free(first);
	free(second);
	cqrs_event_free(ev);
	cqrs_event_free(again);
}
END_TEST

START_TEST(test_encode_field_order)
{
	struct json_object *data = json_tokener_parse("{\"amount\":100}");
	struct json_object *meta = json_tokener_parse(
		"{\"correlation_id\":\"c1\",\"causation_id\":\"c1\",\"command\":\"account.deposit\"}");
	struct cqrs_event *ev;
	char *json;

	ev = cqrs_event_new("0190a6d2-7c5e-7b3a-8f00-1234567890ab", "account-42", 4, 1234,
		       "MoneyDeposited", data, meta, "2026-11-26T05:20:49.123456Z");
	ck_assert_ptr_nonnull(ev);
	json = cqrs_envelope_encode(ev);
	ck_assert_str_eq(json, VALID_JSON);
	free(json);
	cqrs_event_free(ev);
	json_object_put(data);
	json_object_put(meta);
}
END_TEST

/* Decoded data: the string value of key. */
static const char *
data_string(const struct cqrs_event *ev, const char *key)
{
	struct json_object *v = NULL;

	ck_assert(json_object_object_get_ex(ev->data, key, &v));
	ck_assert(json_object_is_type(v, json_type_string));
	return json_object_get_string(v);
}

START_TEST(test_round_trip_unicode_and_escapes)
{
	char *json = build("data",
			   "{\"raw\":\"Zo\xc3\xab \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80\","
			   "\"escaped\":\"\\u00e9\\u65e5\\ud83d\\ude00\","
			   "\"specials\":\"q\\\" b\\\\ s\\/ / n\\n t\\t r\\r c\\u0001 d\\u007f\","
			   "\"nul\":\"a\\u0000b\"}");
	struct cqrs_event *ev = expect_decode_ok(json, strlen(json));
	struct cqrs_event *again;
	struct json_object *nul;
	char *enc;
	char *enc2;

	ck_assert_str_eq(data_string(ev, "raw"), "Zo\xc3\xab \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80");
	ck_assert_str_eq(data_string(ev, "escaped"), "\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80");
	ck_assert_str_eq(data_string(ev, "specials"), "q\" b\\ s/ / n\n t\t r\r c\x01 d\x7f");
	nul = json_object_object_get(ev->data, "nul");
	ck_assert_int_eq(json_object_get_string_len(nul), 3);
	ck_assert(memcmp(json_object_get_string(nul), "a\0b", 3) == 0);

	enc = cqrs_envelope_encode(ev);
	ck_assert_ptr_nonnull(enc);
	/* UTF-8 goes out as it is, "/" unescaped, control characters escaped */
	ck_assert_ptr_nonnull(strstr(enc, "\"raw\":\"Zo\xc3\xab \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80\""));
	ck_assert_ptr_nonnull(strstr(enc, "s/ / n\\n t\\t r\\r c\\u0001"));
	again = expect_decode_ok(enc, strlen(enc));
	ck_assert_str_eq(data_string(again, "raw"), data_string(ev, "raw"));
	ck_assert_str_eq(data_string(again, "escaped"), data_string(ev, "escaped"));
	ck_assert_str_eq(data_string(again, "specials"), data_string(ev, "specials"));
	ck_assert_int_eq(json_object_get_string_len(json_object_object_get(again->data, "nul")), 3);
	enc2 = cqrs_envelope_encode(again);
	ck_assert_str_eq(enc2, enc);
	free(enc);
	free(enc2);
	cqrs_event_free(ev);
	cqrs_event_free(again);
	free(json);
}
END_TEST

START_TEST(test_round_trip_numbers)
{
	const char *data = "{\"max\":9223372036854775807,\"min\":-9223372036854775808,"
			   "\"umax\":18446744073709551615,\"zero\":0,\"neg\":-42,"
			   "\"f\":0.1,\"g\":1.10,\"e\":1e300,\"E\":-2.5E-3,\"big\":1e999}";
	char *json = build("data", data);
	struct cqrs_event *ev = expect_decode_ok(json, strlen(json));
	struct cqrs_event *again;
	char *enc;

	ck_assert(json_object_get_int64(json_object_object_get(ev->data, "max")) == INT64_MAX);
	ck_assert(json_object_get_int64(json_object_object_get(ev->data, "min")) == INT64_MIN);
	ck_assert(json_object_get_uint64(json_object_object_get(ev->data, "umax")) == UINT64_MAX);
	ck_assert(json_object_get_int64(json_object_object_get(ev->data, "neg")) == -42);
	enc = cqrs_envelope_encode(ev);
	/* numbers keep their text, so the re-encoded envelope is the input */
	ck_assert_str_eq(enc, json);
	again = expect_decode_ok(enc, strlen(enc));
	ck_assert(json_object_get_int64(json_object_object_get(again->data, "max")) == INT64_MAX);
	ck_assert(json_object_get_int64(json_object_object_get(again->data, "min")) == INT64_MIN);
	cqrs_event_free(again);
	cqrs_event_free(ev);
	free(enc);
	free(json);
}
END_TEST

START_TEST(test_decode_int64_version_position)
{
	char *json = build("version", "9223372036854775807");
	struct cqrs_event *ev = expect_decode_ok(json, strlen(json));

	ck_assert(ev->version == INT64_MAX);
	cqrs_event_free(ev);
	free(json);
	json = build("position", "0");
	ev = expect_decode_ok(json, strlen(json));
	ck_assert(ev->position == 0);
	cqrs_event_free(ev);
	free(json);
}
END_TEST

START_TEST(test_decode_ignores_unknown_fields)
{
	const char *json = "{\"extra\":{\"a\":[1,2]},\"id\":\"0190a6d2-7c5e-7b3a-8f00-1234567890ab\","
			   "\"stream\":\"account-42\",\"version\":4,\"position\":1234,"
			   "\"type\":\"MoneyDeposited\",\"data\":{\"amount\":100},"
			   "\"metadata\":{\"correlation_id\":\"c1\",\"causation_id\":\"c1\","
			   "\"command\":\"account.deposit\"},\"more\":null,"
			   "\"recorded_at\":\"2026-11-26T05:20:49.123456Z\"}";
	struct cqrs_event *ev = expect_decode_ok(json, strlen(json));
	char *enc = cqrs_envelope_encode(ev);

	ck_assert_str_eq(enc, VALID_JSON);
	free(enc);
	cqrs_event_free(ev);
}
END_TEST

START_TEST(test_decode_uppercase_id_and_empty_metadata)
{
	char *json = build("id", "\"0190A6D2-7C5E-7B3A-8F00-1234567890AB\"");
	struct cqrs_event *ev = expect_decode_ok(json, strlen(json));

	ck_assert_str_eq(ev->id, "0190A6D2-7C5E-7B3A-8F00-1234567890AB");
	cqrs_event_free(ev);
	free(json);
	json = build("metadata", "{}");
	ev = expect_decode_ok(json, strlen(json));
	ck_assert_int_eq(json_object_object_length(ev->metadata), 0);
	cqrs_event_free(ev);
	free(json);
}
END_TEST

START_TEST(test_decode_time_variants)
{
	const char *ok[] = {
		"\"2026-11-26T05:20:49Z\"", "\"2026-11-26T05:20:49.1Z\"",
		"\"2026-11-26T05:20:49.000000Z\"", "\"2024-02-29T23:59:60Z\"",
		"\"2000-02-29T00:00:00Z\"", "\"1970-01-01T00:00:00Z\"", "\"9999-12-31T23:59:59.999999Z\"",
	};
	size_t i;

	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		char *json = build("recorded_at", ok[i]);
		struct cqrs_event *ev = expect_decode_ok(json, strlen(json));

		cqrs_event_free(ev);
		free(json);
	}
}
END_TEST

START_TEST(test_decode_error_without_err)
{
	const char *json = "{\"id\":\"0190a6d2-7c5e-7b3a-8f00-1234567890ab\",\"stream\":\"\"}";
	struct cqrs_event *ev = NULL;

	/* err may be NULL; the code still comes back */
	ck_assert_int_eq(cqrs_envelope_decode("[]", 2, &ev, NULL), CQRS_EINVALID);
	ck_assert_int_eq(cqrs_envelope_decode("{\"id\":1}", 8, &ev, NULL), CQRS_EINVALID);
	ck_assert_int_eq(cqrs_envelope_decode(json, strlen(json), &ev, NULL), CQRS_EINVALID);
	ck_assert_ptr_null(ev);
}
END_TEST

START_TEST(test_decode_object)
{
	struct json_object *obj = json_tokener_parse(VALID_JSON);
	struct json_object *arr = json_object_new_array();
	struct cqrs_event *ev = NULL;
	struct cqrs_err err = { 0, "" };
	char *enc;

	ck_assert_int_eq(cqrs_envelope_decode_object(obj, &ev, &err), 0);
	json_object_put(obj);	/* the event holds its own references */
	enc = cqrs_envelope_encode(ev);
	ck_assert_str_eq(enc, VALID_JSON);
	free(enc);
	cqrs_event_free(ev);
	ck_assert_int_eq(cqrs_envelope_decode_object(arr, &ev, &err), CQRS_EINVALID);
	ck_assert_str_eq(err.msg, "envelope: not a JSON object");
	ck_assert_ptr_null(ev);
	json_object_put(arr);
}
END_TEST

/* ---- cqrs_event_new, validate --------------------------------------------------- */

START_TEST(test_event_new_copies)
{
	char id[UUID_STR_LEN];
	char stream[] = "account-42";
	char type[] = "MoneyDeposited";
	char at[ENVELOPE_TIME_SIZE];
	struct json_object *data = json_object_new_object();
	struct cqrs_event *ev;
	struct cqrs_err err = { 0, "" };
	char *enc;

	cqrs_uuid_v7(id);
	cqrs_envelope_now(at, sizeof(at));
	json_object_object_add(data, "amount", json_object_new_int(5));
	ev = cqrs_event_new(id, stream, 1, 0, type, data, NULL, at);
	ck_assert_ptr_nonnull(ev);
	/* the caller's buffers and reference are its own */
	ck_assert_ptr_ne(ev->id, id);
	ck_assert_ptr_ne(ev->stream, stream);
	memset(stream, 'x', sizeof(stream) - 1);
	memset(type, 'y', sizeof(type) - 1);
	json_object_put(data);
	ck_assert_str_eq(ev->stream, "account-42");
	ck_assert_str_eq(ev->type, "MoneyDeposited");
	ck_assert_str_eq(ev->id, id);
	ck_assert_ptr_eq(ev->data, data);	/* a reference, not a copy */
	ck_assert(json_object_is_type(ev->metadata, json_type_object));
	ck_assert_int_eq(json_object_object_length(ev->metadata), 0);
	ck_assert_int_eq(cqrs_envelope_validate(ev, &err), 0);
	enc = cqrs_envelope_encode(ev);
	ck_assert_ptr_nonnull(strstr(enc, "\"data\":{\"amount\":5},\"metadata\":{},"));
	free(enc);
	cqrs_event_free(ev);
}
END_TEST

START_TEST(test_event_free_null)
{
	cqrs_event_free(NULL);
	ck_assert_ptr_null(cqrs_envelope_encode(NULL));
}
END_TEST

START_TEST(test_encode_nulls)
{
	struct cqrs_event *ev = cqrs_event_new(NULL, NULL, 0, 0, NULL, NULL, NULL, NULL);
	char *enc;

	ck_assert_ptr_nonnull(ev);
	enc = cqrs_envelope_encode(ev);
	ck_assert_str_eq(enc, "{\"id\":null,\"stream\":null,\"version\":0,\"position\":0,"
			 "\"type\":null,\"data\":null,\"metadata\":{},\"recorded_at\":null}");
	free(enc);
	cqrs_event_free(ev);
}
END_TEST

struct validate_case {
	int field;		/* what to break */
	const char *msg;
};

static const struct validate_case validate_cases[] = {
	{ 0, "envelope: \"id\" is missing" },
	{ 1, "envelope: \"id\" is not a UUID" },
	{ 2, "envelope: \"stream\" is missing" },
	{ 3, "envelope: \"stream\" has a control character at byte 3" },
	{ 4, "envelope: \"version\" must be an integer >= 1" },
	{ 5, "envelope: \"position\" must be an integer >= 0" },
	{ 6, "envelope: \"type\" is missing" },
	{ 7, "envelope: \"type\" may only have letters, digits and \"._-:\" (byte 1 is not one)" },
	{ 8, "envelope: \"data\" must be an object" },
	{ 9, "envelope: \"data\" must be an object" },
	{ 10, "envelope: \"metadata\" must be an object" },
	{ 11, "envelope: \"recorded_at\" is missing" },
	{ 12, BAD_TIME },
	{ 13, "envelope: no event" },
};

#define N_VALIDATE_CASES ((int)(sizeof(validate_cases) / sizeof(validate_cases[0])))

START_TEST(test_validate_error)
{
	const struct validate_case *c = &validate_cases[_i];
	struct cqrs_event *ev = expect_decode_ok(VALID_JSON, strlen(VALID_JSON));
	struct cqrs_err err = { 0, "" };
	char **str = NULL;
	const char *value = NULL;

	switch (c->field) {
	case 0: str = &ev->id; break;
	case 1: str = &ev->id; value = "0190a6d2"; break;
	case 2: str = &ev->stream; break;
	case 3: str = &ev->stream; value = "acc\x1b-1"; break;
	case 4: ev->version = 0; break;
	case 5: ev->position = -1; break;
	case 6: str = &ev->type; break;
	case 7: str = &ev->type; value = "a b"; break;
	case 8:
		json_object_put(ev->data);
		ev->data = NULL;
		break;
	case 9:
		json_object_put(ev->data);
		ev->data = json_object_new_array();
		break;
	case 10:
		json_object_put(ev->metadata);
		ev->metadata = json_object_new_string("{}");
		break;
	case 11: str = &ev->recorded_at; break;
	case 12: str = &ev->recorded_at; value = "2026-11-26T05:20:49+01:00"; break;
	case 13:
		ck_assert_int_eq(cqrs_envelope_validate(NULL, &err), CQRS_EINVALID);
		ck_assert_str_eq(err.msg, c->msg);
		cqrs_event_free(ev);
		return;
	}
	if (str != NULL) {
		free(*str);
		*str = value != NULL ? strdup(value) : NULL;
	}
	ck_assert_int_eq(cqrs_envelope_validate(ev, &err), CQRS_EINVALID);
	ck_assert_int_eq(err.code, CQRS_EINVALID);
	ck_assert_str_eq(err.msg, c->msg);
	cqrs_event_free(ev);
}
END_TEST

/* ---- name rules ---------------------------------------------------------------- */

static void
expect_rule_error(int rc, const struct cqrs_err *err, const char *msg)
{
	ck_assert_int_eq(rc, CQRS_EINVALID);
	ck_assert_int_eq(err->code, CQRS_EINVALID);
	ck_assert_str_eq(err->msg, msg);
}

START_TEST(test_check_stream)
{
	struct cqrs_err err = { 0, "" };
	char *max = repeat('s', CQRS_STREAM_MAX);
	char *over = repeat('s', CQRS_STREAM_MAX + 1);

	ck_assert_int_eq(cqrs_envelope_check_stream("account-42", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_stream("a", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_stream("order-2026/11 #3", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_stream("konto-\xc3\xb8\xf0\x9f\x98\x80", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_stream(max, &err), 0);
	expect_rule_error(cqrs_envelope_check_stream(over, &err), &err,
			  "\"stream\" is longer than 256 bytes");
	expect_rule_error(cqrs_envelope_check_stream(NULL, &err), &err, "\"stream\" is missing");
	expect_rule_error(cqrs_envelope_check_stream("", &err), &err, "\"stream\" is empty");
	expect_rule_error(cqrs_envelope_check_stream("a\x01", &err), &err,
			  "\"stream\" has a control character at byte 1");
	expect_rule_error(cqrs_envelope_check_stream("a\t", &err), &err,
			  "\"stream\" has a control character at byte 1");
	expect_rule_error(cqrs_envelope_check_stream("ab\x7f", &err), &err,
			  "\"stream\" has a control character at byte 2");
	expect_rule_error(cqrs_envelope_check_stream("\xc2\x9b[0m", &err), &err,
			  "\"stream\" has a control character at byte 0");
	expect_rule_error(cqrs_envelope_check_stream("a\xff", &err), &err,
			  "\"stream\" is not valid UTF-8 at byte 1");
	expect_rule_error(cqrs_envelope_check_stream("a\xc0\xaf", &err), &err,
			  "\"stream\" is not valid UTF-8 at byte 1");
	ck_assert_int_eq(cqrs_envelope_check_stream("", NULL), CQRS_EINVALID);
	free(max);
	free(over);
}
END_TEST

START_TEST(test_check_type)
{
	struct cqrs_err err = { 0, "" };
	char *max = repeat('T', CQRS_TYPE_MAX);
	char *over = repeat('T', CQRS_TYPE_MAX + 1);

	ck_assert_int_eq(cqrs_envelope_check_type("type", "MoneyDeposited", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_type("command", "account.deposit", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_type("type", "v2:Money_Deposited-1.x", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_type("type", max, &err), 0);
	expect_rule_error(cqrs_envelope_check_type("type", over, &err), &err,
			  "\"type\" is longer than 200 bytes");
	expect_rule_error(cqrs_envelope_check_type("command", "", &err), &err, "\"command\" is empty");
	expect_rule_error(cqrs_envelope_check_type("command", NULL, &err), &err,
			  "\"command\" is missing");
	expect_rule_error(cqrs_envelope_check_type("command", "account deposit", &err), &err,
			  "\"command\" may only have letters, digits and \"._-:\" (byte 7 is not one)");
	expect_rule_error(cqrs_envelope_check_type("type", "a/b", &err), &err,
			  "\"type\" may only have letters, digits and \"._-:\" (byte 1 is not one)");
	expect_rule_error(cqrs_envelope_check_type("type", "a@b", &err), &err,
			  "\"type\" may only have letters, digits and \"._-:\" (byte 1 is not one)");
	expect_rule_error(cqrs_envelope_check_type("type", "\xc3\xa9t\xc3\xa9", &err), &err,
			  "\"type\" may only have letters, digits and \"._-:\" (byte 0 is not one)");
	free(max);
	free(over);
}
END_TEST

START_TEST(test_check_aggregate_type)
{
	struct cqrs_err err = { 0, "" };
	char *max = repeat('a', CQRS_TYPE_MAX);
	char *over = repeat('a', CQRS_TYPE_MAX + 1);

	ck_assert_int_eq(cqrs_envelope_check_aggregate_type("account", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_aggregate_type("bank_account", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_aggregate_type("Acc2", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_aggregate_type(max, &err), 0);
	expect_rule_error(cqrs_envelope_check_aggregate_type(over, &err), &err,
			  "\"aggregate type\" is longer than 200 bytes");
	expect_rule_error(cqrs_envelope_check_aggregate_type("", &err), &err,
			  "\"aggregate type\" is empty");
	expect_rule_error(cqrs_envelope_check_aggregate_type(NULL, &err), &err,
			  "\"aggregate type\" is missing");
	/* "-" would make the stream's type ambiguous */
	expect_rule_error(cqrs_envelope_check_aggregate_type("bank-account", &err), &err,
			  "\"aggregate type\" may only have letters, digits and \"_\" (byte 4 is not one)");
	expect_rule_error(cqrs_envelope_check_aggregate_type("bank.account", &err), &err,
			  "\"aggregate type\" may only have letters, digits and \"_\" (byte 4 is not one)");
	expect_rule_error(cqrs_envelope_check_aggregate_type("bank:account", &err), &err,
			  "\"aggregate type\" may only have letters, digits and \"_\" (byte 4 is not one)");
	free(max);
	free(over);
}
END_TEST

START_TEST(test_check_aggregate_id)
{
	struct cqrs_err err = { 0, "" };
	char *max = repeat('7', CQRS_AGGREGATE_ID_MAX);
	char *over = repeat('7', CQRS_AGGREGATE_ID_MAX + 1);
	const char *bad[] = { " ", "a b", "a/b", "a+b", "a#b", "a\"b", "a\x01", "\xc3\xa9", "a,b" };
	size_t i;

	ck_assert_uint_eq(strlen(max), 200);
	ck_assert_int_eq(cqrs_envelope_check_aggregate_id("42", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_aggregate_id("a-b_c.d:e@f", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_aggregate_id("-_.:@", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_aggregate_id("alice@example.com", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_aggregate_id("0190a6d2-7c5e-7b3a-8f00-1234567890ab", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_aggregate_id("AZaz09", &err), 0);
	ck_assert_int_eq(cqrs_envelope_check_aggregate_id(max, &err), 0);
	expect_rule_error(cqrs_envelope_check_aggregate_id(over, &err), &err,
			  "\"aggregate_id\" is longer than 200 bytes");
	expect_rule_error(cqrs_envelope_check_aggregate_id("", &err), &err, "\"aggregate_id\" is empty");
	expect_rule_error(cqrs_envelope_check_aggregate_id(NULL, &err), &err,
			  "\"aggregate_id\" is missing");
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_int_eq(cqrs_envelope_check_aggregate_id(bad[i], &err), CQRS_EINVALID);
		ck_assert_msg(strncmp(err.msg, "\"aggregate_id\" may only have letters, digits and "
				      "\"-_.:@\"", 56) == 0, "%s", err.msg);
	}
	free(max);
	free(over);
}
END_TEST

START_TEST(test_stream_type)
{
	char buf[16];

	ck_assert_int_eq(cqrs_envelope_stream_type("account-42", buf, sizeof(buf)), 0);
	ck_assert_str_eq(buf, "account");
	ck_assert_int_eq(cqrs_envelope_stream_type("account-a-b-c", buf, sizeof(buf)), 0);
	ck_assert_str_eq(buf, "account");
	ck_assert_int_eq(cqrs_envelope_stream_type("bank_account-", buf, sizeof(buf)), 0);
	ck_assert_str_eq(buf, "bank_account");
	/* no "-", nothing before it */
	ck_assert_int_eq(cqrs_envelope_stream_type("account", buf, sizeof(buf)), CQRS_EINVALID);
	ck_assert_str_eq(buf, "");
	ck_assert_int_eq(cqrs_envelope_stream_type("-42", buf, sizeof(buf)), CQRS_EINVALID);
	ck_assert_int_eq(cqrs_envelope_stream_type("", buf, sizeof(buf)), CQRS_EINVALID);
	ck_assert_int_eq(cqrs_envelope_stream_type(NULL, buf, sizeof(buf)), CQRS_EINVALID);
	/* "account" needs 8 bytes with its NUL */
	ck_assert_int_eq(cqrs_envelope_stream_type("account-42", buf, 8), 0);
	ck_assert_str_eq(buf, "account");
	memcpy(buf, "junk", 5);
	ck_assert_int_eq(cqrs_envelope_stream_type("account-42", buf, 7), CQRS_EINVALID);
	ck_assert_str_eq(buf, "");
	ck_assert_int_eq(cqrs_envelope_stream_type("account-42", buf, 0), CQRS_EINVALID);
	ck_assert_int_eq(cqrs_envelope_stream_type("account-42", NULL, 0), CQRS_EINVALID);
}
END_TEST

START_TEST(test_now)
{
	char buf[ENVELOPE_TIME_SIZE];
	char small[11];
	struct cqrs_err err = { 0, "" };
	struct tm tm;
	time_t before = time(NULL);
	time_t t;

	cqrs_envelope_now(buf, sizeof(buf));
	ck_assert_uint_eq(strlen(buf), ENVELOPE_TIME_SIZE - 1);
	ck_assert_int_eq(buf[26], 'Z');
	ck_assert_int_eq(cqrs_envelope_check_recorded_at(buf, &err), 0);
	memset(&tm, 0, sizeof(tm));
	ck_assert_ptr_nonnull(strptime(buf, "%Y-%m-%dT%H:%M:%S", &tm));
	t = timegm(&tm);
	ck_assert_msg(t >= before && t <= time(NULL) + 1, "%s is not now", buf);
	cqrs_envelope_now(small, sizeof(small));
	ck_assert_uint_eq(strlen(small), sizeof(small) - 1);
	ck_assert(strncmp(small, buf, 4) == 0);
	cqrs_envelope_now(NULL, 0);
}
END_TEST

START_TEST(test_check_recorded_at_direct)
{
	struct cqrs_err err = { 0, "" };

	ck_assert_int_eq(cqrs_envelope_check_recorded_at("2026-11-26T05:20:49.123456Z", &err), 0);
	expect_rule_error(cqrs_envelope_check_recorded_at(NULL, &err), &err, "\"recorded_at\" is missing");
	expect_rule_error(cqrs_envelope_check_recorded_at("2026-11-26T05:20:49.123456Zx", &err), &err,
			  TIME_SHAPE);
	expect_rule_error(cqrs_envelope_check_recorded_at("2026-02-30T05:20:49Z", &err), &err,
			  TIME_REAL);
}
END_TEST

static Suite *
envelope_suite(void)
{
	Suite *s = suite_create("envelope");
	TCase *errors = tcase_create("decode errors");
	TCase *decode = tcase_create("decode");
	TCase *events = tcase_create("events");
	TCase *rules = tcase_create("name rules");

	tcase_add_loop_test(errors, test_decode_field_error, 0, N_FIELD_CASES);
	tcase_add_test(errors, test_decode_null_input);
	tcase_add_test(errors, test_decode_empty_input);
	tcase_add_test(errors, test_decode_truncated);
	tcase_add_test(errors, test_decode_not_an_object);
	tcase_add_test(errors, test_decode_trailing_garbage);
	tcase_add_test(errors, test_decode_trailing_object);
	tcase_add_test(errors, test_decode_trailing_after_space);
	tcase_add_test(errors, test_decode_trailing_nul);
	tcase_add_test(errors, test_decode_invalid_utf8);
	tcase_add_test(errors, test_decode_utf8_overlong);
	tcase_add_test(errors, test_decode_utf8_surrogate);
	tcase_add_test(errors, test_decode_utf8_above_max);
	tcase_add_test(errors, test_decode_utf8_truncated);
	tcase_add_test(errors, test_decode_utf8_stray_continuation);
	tcase_add_test(errors, test_decode_utf8_truncated_at_end);
	tcase_add_test(errors, test_decode_utf8_outside_string);
	tcase_add_test(errors, test_decode_raw_control_in_string);
	tcase_add_test(errors, test_decode_nan_infinity);
	tcase_add_test(errors, test_decode_malformed_numbers);
	tcase_add_test(errors, test_decode_leading_zero);
	tcase_add_test(errors, test_decode_integer_overflow);
	tcase_add_test(errors, test_decode_bad_literals);
	tcase_add_test(errors, test_decode_syntax_errors);
	tcase_add_test(errors, test_decode_depth);
	tcase_add_test(errors, test_decode_too_large);
	tcase_add_test(errors, test_decode_error_without_err);
	suite_add_tcase(s, errors);

	/* the 2 MiB inputs take a moment under sanitizers */
	tcase_set_timeout(decode, 30);
	tcase_add_test(decode, test_decode_fields);
	tcase_add_test(decode, test_decode_whitespace_around_ok);
	tcase_add_test(decode, test_decode_len_not_nul);
	tcase_add_test(decode, test_decode_at_size_limit);
	tcase_add_test(decode, test_round_trip_identical);
	tcase_add_test(decode, test_encode_field_order);
	tcase_add_test(decode, test_round_trip_unicode_and_escapes);
	tcase_add_test(decode, test_round_trip_numbers);
	tcase_add_test(decode, test_decode_int64_version_position);
	tcase_add_test(decode, test_decode_ignores_unknown_fields);
	tcase_add_test(decode, test_decode_uppercase_id_and_empty_metadata);
	tcase_add_test(decode, test_decode_time_variants);
	tcase_add_test(decode, test_decode_object);
	suite_add_tcase(s, decode);

	tcase_add_test(events, test_event_new_copies);
	tcase_add_test(events, test_event_free_null);
	tcase_add_test(events, test_encode_nulls);
	tcase_add_loop_test(events, test_validate_error, 0, N_VALIDATE_CASES);
	suite_add_tcase(s, events);

	tcase_add_test(rules, test_check_stream);
	tcase_add_test(rules, test_check_type);
	tcase_add_test(rules, test_check_aggregate_type);
	tcase_add_test(rules, test_check_aggregate_id);
	tcase_add_test(rules, test_stream_type);
	tcase_add_test(rules, test_now);
	tcase_add_test(rules, test_check_recorded_at_direct);
	suite_add_tcase(s, rules);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(envelope_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

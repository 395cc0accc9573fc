/*
 * envelope.h - the JSON envelope of an event (DESIGN.md, "Event envelope"):
 *
 *   {"id":"uuid","stream":"account-42","version":4,"position":1234,
 *    "type":"MoneyDeposited","data":{...},"metadata":{...},
 *    "recorded_at":"2026-11-26T05:20:49.123456Z"}
 *
 * Encoding and decoding with json-c, and the validation rules that every
 * part applies to names and ids from outside.
 */
#ifndef CQRS_ENVELOPE_H
#define CQRS_ENVELOPE_H

#include <stddef.h>

#include "cqrs/err.h"
#include "cqrs/event.h"

/* cqrs_envelope_decode() refuses more input than this, and deeper nesting. */
#define ENVELOPE_MAX_INPUT ((size_t)CQRS_EVENT_MAX_BYTES * 2)
#define ENVELOPE_MAX_DEPTH 64

/* Size of the buffer cqrs_envelope_now() fills: "2026-11-26T05:20:49.123456Z". */
#define ENVELOPE_TIME_SIZE 28

/* A new event with copies of the strings and a new reference to data and
 * metadata (metadata NULL: an empty object). NULL when out of memory. */
struct cqrs_event *cqrs_event_new(const char *id, const char *stream, int64_t version,
			     int64_t position, const char *type,
			     struct json_object *data, struct json_object *metadata,
			     const char *recorded_at);

/* Frees an event made by cqrs_event_new() or cqrs_envelope_decode(); NULL is a no-op. */
void cqrs_event_free(struct cqrs_event *ev);

/*
 * The envelope as compact JSON, NUL-terminated, malloc'd (caller frees).
 * NULL when out of memory. Does not validate: see cqrs_envelope_validate().
 * Fields in DESIGN.md's order; NULL strings and data come out as null. It
 * briefly takes a reference on data and metadata, and json-c's reference
 * counts are not atomic: don't encode or share one event's objects in two
 * threads at once.
 */
char *cqrs_envelope_encode(const struct cqrs_event *ev);

/*
 * Parses and validates len bytes of JSON. On success *out is a new event
 * owned by the caller. On failure returns CQRS_EINVALID (or CQRS_ENOMEM) with
 * a message naming the field: `envelope: "version" must be an integer >= 1`.
 *
 * Every field is required (metadata may be {}); unknown fields are ignored.
 * Refused as well: more than ENVELOPE_MAX_INPUT bytes, invalid UTF-8 (also
 * overlong forms and surrogates), anything but one JSON object with optional
 * whitespace around it, NaN/Infinity, numbers like "1." or "01", raw control
 * characters in strings, integers outside int64/uint64 (json-c would clamp
 * them silently), nesting deeper than ENVELOPE_MAX_DEPTH.
 */
int cqrs_envelope_decode(const char *json, size_t len, struct cqrs_event **out,
		    struct cqrs_err *err) __attribute__((warn_unused_result));

/*
 * Like cqrs_envelope_decode() for an object already parsed (obj is borrowed; the
 * event takes its own references to "data" and "metadata"). Only the field
 * rules apply: the checks on the text are the parser's business.
 */
int cqrs_envelope_decode_object(struct json_object *obj, struct cqrs_event **out,
			   struct cqrs_err *err) __attribute__((warn_unused_result));

/* Checks every field of ev; CQRS_EINVALID with the field's name. */
int cqrs_envelope_validate(const struct cqrs_event *ev, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/*
 * Name rules (each returns 0 or CQRS_EINVALID with a message naming `what`):
 * - stream: 1..CQRS_STREAM_MAX bytes, no control characters;
 * - event/command type: 1..CQRS_TYPE_MAX bytes of letters, digits and "._-:";
 * - aggregate type: 1..CQRS_TYPE_MAX bytes of letters, digits and "_"
 *   (no "-": the stream's type is what precedes the first "-");
 * - aggregate id: 1..CQRS_AGGREGATE_ID_MAX bytes of letters, digits and "-_.:@".
 */
int cqrs_envelope_check_stream(const char *stream, struct cqrs_err *err);
int cqrs_envelope_check_type(const char *what, const char *type, struct cqrs_err *err);
int cqrs_envelope_check_aggregate_type(const char *type, struct cqrs_err *err);
int cqrs_envelope_check_aggregate_id(const char *id, struct cqrs_err *err);

/* recorded_at: "YYYY-MM-DDTHH:MM:SS[.f]Z", 1 to 6 fraction digits, a real
 * date and time (seconds up to 60, for a leap second); the message names
 * "recorded_at". */
int cqrs_envelope_check_recorded_at(const char *s, struct cqrs_err *err);

/* Copies the aggregate type of stream (text before the first '-') into buf;
 * returns 0, or CQRS_EINVALID when there is no '-', the type before it is
 * empty, or it does not fit (buf is then ""). */
int cqrs_envelope_stream_type(const char *stream, char *buf, size_t size);

/* Current UTC time as "YYYY-MM-DDTHH:MM:SS.uuuuuuZ" (buf of >= 28 bytes,
 * ENVELOPE_TIME_SIZE; a smaller buf gets a truncated string). */
void cqrs_envelope_now(char *buf, size_t size);

/*
 * s (UTF-8, NUL-terminated) as a JSON string, quotes included, written to
 * out (NULL: only counted; else room for the length returned). Escapes '"',
 * '\\' and control characters only: cheaper than json-c for the short
 * strings of answers and batches.
 */
size_t cqrs_json_quote(char *out, const char *s);

#endif

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

/* A new event with copies of the strings and a new reference to data and
 * metadata (metadata NULL: an empty object). NULL when out of memory. */
struct cqrs_event *event_new(const char *id, const char *stream, int64_t version,
			     int64_t position, const char *type,
			     struct json_object *data, struct json_object *metadata,
			     const char *recorded_at);

/* Frees an event made by event_new() or envelope_decode(); NULL is a no-op. */
void event_free(struct cqrs_event *ev);

/*
 * The envelope as compact JSON, NUL-terminated, malloc'd (caller frees).
 * NULL when out of memory. Does not validate: see envelope_validate().
 */
char *envelope_encode(const struct cqrs_event *ev);

/*
 * Parses and validates len bytes of JSON. On success *out is a new event
 * owned by the caller. On failure returns CQRS_EINVALID (or CQRS_ENOMEM) with
 * a message naming the field: `envelope: "version" must be an integer >= 1`.
 */
int envelope_decode(const char *json, size_t len, struct cqrs_event **out,
		    struct cqrs_err *err) __attribute__((warn_unused_result));

/* Checks every field of ev; CQRS_EINVALID with the field's name. */
int envelope_validate(const struct cqrs_event *ev, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/*
 * Name rules (each returns 0 or CQRS_EINVALID with a message naming `what`):
 * - stream: 1..CQRS_STREAM_MAX bytes, no control characters;
 * - event/command type: 1..CQRS_TYPE_MAX bytes of letters, digits and "._-:";
 * - aggregate type: 1..CQRS_TYPE_MAX bytes of letters, digits and "_"
 *   (no "-": the stream's type is what precedes the first "-");
 * - aggregate id: 1..CQRS_AGGREGATE_ID_MAX bytes of letters, digits and "-_.:@".
 */
int envelope_check_stream(const char *stream, struct cqrs_err *err);
int envelope_check_type(const char *what, const char *type, struct cqrs_err *err);
int envelope_check_aggregate_type(const char *type, struct cqrs_err *err);
int envelope_check_aggregate_id(const char *id, struct cqrs_err *err);

/* Copies the aggregate type of stream (text before the first '-') into buf;
 * returns 0, or CQRS_EINVALID when there is no '-' or it does not fit. */
int envelope_stream_type(const char *stream, char *buf, size_t size);

/* Current UTC time as "YYYY-MM-DDTHH:MM:SS.uuuuuuZ" (buf of >= 28 bytes). */
void envelope_now(char *buf, size_t size);

#endif

/*
 * cqrs/event.h - a recorded event, as the store, the broker and event
 * handlers see it (the envelope of DESIGN.md).
 */
#ifndef CQRS_EVENT_H
#define CQRS_EVENT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct json_object;

/* Limits that every part enforces on input from outside. */
#define CQRS_STREAM_MAX 256		/* bytes in a stream name */
#define CQRS_TYPE_MAX 200		/* bytes in an event or command type */
#define CQRS_AGGREGATE_ID_MAX 200	/* bytes in an aggregate id */
#define CQRS_EVENT_MAX_BYTES (1024 * 1024)	/* encoded data + metadata of one event */
#define CQRS_APPEND_MAX_EVENTS 1000	/* events in one append */

/*
 * All strings are NUL-terminated. In an event returned by libcqrs every
 * pointer is owned by the event (free it with the function that made it);
 * data and metadata are json-c objects holding one reference each.
 */
struct cqrs_event {
	char *id;			/* UUID */
	char *stream;			/* "<aggregate type>-<aggregate id>" */
	int64_t version;		/* 1-based, per stream */
	int64_t position;		/* global, from the store */
	char *type;			/* "MoneyDeposited" */
	struct json_object *data;	/* a JSON object */
	struct json_object *metadata;	/* a JSON object, maybe empty */
	char *recorded_at;		/* "2026-11-26T05:20:49.123456Z" */
};

#ifdef __cplusplus
}
#endif
#endif

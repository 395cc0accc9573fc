/*
 * proto.h - the command protocol v1 (DESIGN.md, "Command protocol"):
 * parsing a request line and writing answer lines.
 */
#ifndef CQRS_CMD_PROTO_H
#define CQRS_CMD_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"
#include "uuid.h"

struct json_object;

/* Error codes on the wire. */
#define PROTO_MALFORMED "malformed"
#define PROTO_TOO_LARGE "too_large"
#define PROTO_UNKNOWN_COMMAND "unknown_command"
#define PROTO_INVALID "invalid"
#define PROTO_REJECTED "rejected"
#define PROTO_CONFLICT "conflict"
#define PROTO_UNAVAILABLE "unavailable"
#define PROTO_INTERNAL "internal"
#define PROTO_ID_REUSED "id_reused"
#define PROTO_FORBIDDEN "forbidden"

struct request {
	struct json_object *root;	/* owned: the parsed line */
	char id[UUID_STR_LEN];		/* given, or generated when absent */
	bool id_given;
	char *echo_id;			/* owned: the id as sent, when it is not the
					 * canonical form or not a UUID at all */
	const char *command;		/* borrowed from root */
	const char *aggregate_id;
	int64_t expected;		/* STORE_ANY when absent */
	struct json_object *data;	/* borrowed from root */
	struct json_object *metadata;	/* borrowed; NULL when absent */
};

/*
 * Parses one line (without its '\n'). On failure returns -1 with *code one
 * of the PROTO_* codes and msg filled; *close is set for framing errors
 * (invalid UTF-8), after which the connection is closed. req->echo_id and
 * req->id are still set when the id could be read. Always call
 * request_clear().
 */
int proto_parse(const char *line, size_t len, struct request *req, const char **code,
		char *msg, size_t msgsize, bool *close);
void request_clear(struct request *req);
/* The heap bytes a parsed request holds (json-c's values included), for the
 * byte budgets; close to what malloc counts, never far below. */
size_t proto_request_bytes(const struct request *req);
/* The same for one JSON value. */
size_t proto_json_bytes(struct json_object *v);
/* The same for object o, less the values it shares with object from (NULL:
 * none), taken over with their keys (a copy of an object that adds keys). */
size_t proto_json_object_bytes(struct json_object *o, struct json_object *from);
/*
 * The most parsing line could hold, from its text alone (containers, keys
 * and values counted at their largest): what the budgets reserve before
 * parsing, so that a short line holding a hundred times its size (json-c
 * gives each object a hash table) is never parsed past a budget.
 */
size_t proto_cost_bound(const char *line, size_t len);

/* The id an answer carries: the request's id as sent (or the one made for
 * it). For a request that failed to parse, NULL when it had no id. */
static inline const char *
request_answer_id(const struct request *req)
{
	return req->echo_id ? req->echo_id : req->id[0] ? req->id : NULL;
}

/* True when s[0..len) is valid UTF-8 (no overlongs, no surrogates). */
bool proto_utf8_valid(const char *s, size_t len);

/* Answer lines, '\n'-terminated, malloc'd; NULL when out of memory.
 * id NULL gives "id":null. */
char *proto_answer_error(const char *id, const char *code, const char *message);
char *proto_answer_ok(const char *id, const char *stream, const struct store_append_result *r);

#endif

/*
 * cqrs/plugin.h - the plugin ABI: everything a domain plugin needs.
 *
 * A plugin is a shared object that exports one function,
 *
 *	CQRS_PLUGIN_EXPORT const struct cqrs_plugin *cqrs_plugin_entry(void);
 *
 * returning a descriptor that starts with the ABI version and the struct's
 * size. The daemon dlopen()s the plugin with RTLD_NOW | RTLD_LOCAL, refuses
 * an ABI version it does not know or a struct smaller than it knows, and
 * calls register_all() with a registry, through which the plugin registers:
 *
 *  - aggregate types: state new/free, an applier per event type, optional
 *    snapshot encode/decode (used by cqrs-cmdd);
 *  - command handlers: command type -> aggregate type + handler (cqrs-cmdd);
 *  - event handlers: handler group + routing pattern -> handler, optional
 *    reset for replays (cqrs-consumer).
 *
 * One plugin may carry a whole domain; each daemon uses what it needs. Two
 * plugins may be loaded side by side; registering a name twice (in one
 * plugin or across plugins) is refused at load time.
 *
 * Threads and I/O: handlers run on the daemon's loop thread, one at a time.
 * Command handlers and appliers must not do I/O and must be deterministic:
 * the daemon may run a handler again after a conflict, and appliers rebuild
 * state from events at any time. Event handlers may do I/O; database writes
 * go through cqrs_event_pg() so they commit with the consumer's bookkeeping.
 *
 * Ownership: strings and json objects passed to a handler are borrowed for
 * the call. Registration copies names. JSON values given to cqrs_emit() and
 * cqrs_send() are taken over (their reference is consumed), even on error.
 *
 * New fields are only ever added at the end of the structs.
 */
#ifndef CQRS_PLUGIN_H
#define CQRS_PLUGIN_H

#include <stdint.h>

#include <json-c/json.h>

#include "cqrs/err.h"
#include "cqrs/event.h"
#include "cqrs/log.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CQRS_PLUGIN_ABI 1
#define CQRS_PLUGIN_EXPORT __attribute__((visibility("default")))
#define CQRS_PLUGIN_ENTRY_SYMBOL "cqrs_plugin_entry"

struct cqrs_registry;		/* borrowed: valid only inside register_all() */

struct cqrs_plugin {
	uint32_t abi_version;	/* CQRS_PLUGIN_ABI at build time */
	uint32_t struct_size;	/* sizeof(struct cqrs_plugin) at build time */
	const char *name;	/* for logs: "bank" */
	/*
	 * Registers everything; may set *state to plugin-wide data, passed back
	 * to handlers (cqrs_*_plugin_state) and to fini(). Returns 0, or a
	 * negative value to refuse loading (after cqrs_registry_error()).
	 */
	int (*register_all)(struct cqrs_registry *reg, void **state);
	void (*fini)(void *state);	/* may be NULL */
};

typedef const struct cqrs_plugin *(*cqrs_plugin_entry_fn)(void);

/* What the plugin defines (declared here so the plugin need not). */
CQRS_PLUGIN_EXPORT const struct cqrs_plugin *cqrs_plugin_entry(void);

/* ---- aggregates -------------------------------------------------------- */

struct cqrs_aggregate_type {
	/* letters, digits and '_': the stream is "<name>-<aggregate id>" */
	const char *name;
	/* a new, empty state (the aggregate before its first event); NULL: OOM */
	void *(*state_new)(void *plugin_state);
	void (*state_free)(void *state);
	/* optional: the state as JSON (a new reference), and back into a state
	 * made by state_new(). Both or neither. decode returns 0 or -1. */
	struct json_object *(*snapshot_encode)(const void *state);
	int (*snapshot_decode)(void *state, struct json_object *snapshot);
};

/*
 * An applier folds one event into the state. It must not fail for events
 * that the aggregate's own handlers emit; returning non-zero marks the
 * stream as corrupt and the daemon refuses commands on it.
 */
typedef int (*cqrs_applier_fn)(void *state, const struct cqrs_event *ev);

/* The struct is copied; its strings must outlive the plugin (literals). */
int cqrs_register_aggregate(struct cqrs_registry *reg, const struct cqrs_aggregate_type *type);

/* Events of types without an applier are skipped when rebuilding. */
int cqrs_register_applier(struct cqrs_registry *reg, const char *aggregate_type,
			  const char *event_type, cqrs_applier_fn fn);

/* ---- commands ---------------------------------------------------------- */

struct cqrs_command {
	const char *id;			/* UUID (generated when the client sent none) */
	const char *type;		/* "account.deposit" */
	const char *aggregate_id;	/* "42" */
	const char *stream;		/* "account-42" */
	struct json_object *data;	/* a JSON object */
	struct json_object *metadata;	/* a JSON object with correlation_id, causation_id */
};

struct cqrs_cmd_ctx;

/* What a command handler returns. */
enum cqrs_outcome {
	CQRS_OUTCOME_OK = 0,
	CQRS_OUTCOME_INVALID = 1,	/* the payload is wrong (answer "invalid") */
	CQRS_OUTCOME_REJECTED = 2,	/* the aggregate's state refuses it ("rejected") */
};

/*
 * state: the aggregate rebuilt from its events (borrowed, read-only);
 * version: its stream version (0: no events yet). The handler validates the
 * payload first (so a wrong payload is "invalid" whatever the state), then
 * checks the state and emits events. Returns a cqrs_outcome; use
 * cqrs_invalid()/cqrs_reject() to return with a message.
 */
typedef int (*cqrs_command_fn)(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd,
			       const void *state, int64_t version);

int cqrs_register_command(struct cqrs_registry *reg, const char *command_type,
			  const char *aggregate_type, cqrs_command_fn fn);

/*
 * Raises an event. data (a JSON object) is taken over. The event gets the
 * command's metadata. Returns 0, or -1 (bad type, not an object, too many
 * events, out of memory): the command then fails with "internal".
 */
int cqrs_emit(struct cqrs_cmd_ctx *ctx, const char *event_type, struct json_object *data);

/* Set the answer's message and return CQRS_OUTCOME_INVALID / _REJECTED:
 *	return cqrs_invalid(ctx, "\"amount\" must be an integer > 0"); */
int cqrs_invalid(struct cqrs_cmd_ctx *ctx, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
int cqrs_reject(struct cqrs_cmd_ctx *ctx, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* The logger context of this command (correlation and command ids). */
const struct cqrs_log_ctx *cqrs_cmd_log(struct cqrs_cmd_ctx *ctx);
void *cqrs_cmd_plugin_state(struct cqrs_cmd_ctx *ctx);

/* ---- event handlers ---------------------------------------------------- */

struct cqrs_event_ctx;
struct pg_conn;			/* libpq's PGconn */

/* What an event handler returns. */
enum cqrs_handled {
	CQRS_HANDLED_OK = 0,
	CQRS_HANDLED_RETRY = 1,	/* transient: roll back, redeliver later */
	CQRS_HANDLED_FAIL = 2,	/* permanent: roll back, dead-letter */
};

typedef int (*cqrs_event_fn)(struct cqrs_event_ctx *ctx, const struct cqrs_event *ev);
/* Drops the read model before a replay; same transaction rules. */
typedef int (*cqrs_reset_fn)(struct cqrs_event_ctx *ctx);

/*
 * Registers fn for events whose routing key "<aggregate type>.<EventType>"
 * matches pattern (AMQP topic syntax: words separated by '.', '*' one word,
 * '#' zero or more words: "account.*", "#", "transfer.TransferStarted").
 * group: the handler group ("projections"); a consumer runs the groups its
 * configuration names. reset may be NULL.
 */
int cqrs_register_event_handler(struct cqrs_registry *reg, const char *group,
				const char *pattern, cqrs_event_fn fn, cqrs_reset_fn reset);

/* The open transaction's connection (a PGconn *): read-model writes made
 * here commit exactly when the consumer records the event as handled. */
struct pg_conn *cqrs_event_pg(struct cqrs_event_ctx *ctx);

/* The logger context of this event (correlation id, stream, event id). */
const struct cqrs_log_ctx *cqrs_event_log(struct cqrs_event_ctx *ctx);
void *cqrs_event_plugin_state(struct cqrs_event_ctx *ctx);

/* Sets the reason given with CQRS_HANDLED_FAIL / _RETRY, and returns it. */
int cqrs_event_fail(struct cqrs_event_ctx *ctx, int outcome, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Sends a command to cqrs-cmdd (process managers). data is taken over.
 * The command id is derived from the event id and key, so a redelivered
 * event sends the same command id and cqrs-cmdd answers it as a duplicate;
 * correlation_id is carried over and causation_id is the event id.
 * Returns 0 when acked, CQRS_EREJECTED / CQRS_EINVALID / CQRS_ECONFLICT
 * with the daemon's message in err, CQRS_EUNAVAILABLE when it cannot be
 * reached (return CQRS_HANDLED_RETRY then).
 */
int cqrs_send(struct cqrs_event_ctx *ctx, const char *key, const char *command,
	      const char *aggregate_id, struct json_object *data, struct cqrs_err *err);

/* ---- registration errors ----------------------------------------------- */

/* Records why register_all() fails; the loader shows it with the file name. */
void cqrs_registry_error(struct cqrs_registry *reg, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif
#endif

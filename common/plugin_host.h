/*
 * plugin_host.h - the daemons' side of the plugin ABI: loading plugins,
 * the registry they fill, lookups, and the contexts handed to handlers.
 * Plugins see only cqrs/plugin.h.
 */
#ifndef CQRS_PLUGIN_HOST_H
#define CQRS_PLUGIN_HOST_H

#include <stdbool.h>
#include <stddef.h>

#include "cqrs/plugin.h"

struct registry;

struct reg_aggregate {
	struct cqrs_aggregate_type type;	/* name points to an owned copy */
	void *plugin_state;
	const char *plugin;			/* file it came from (owned by the registry) */
};

struct reg_command {
	const char *type;			/* owned by the registry */
	const struct reg_aggregate *aggregate;
	cqrs_command_fn fn;
	void *plugin_state;
	const char *plugin;
};

struct reg_handler {
	const char *group;			/* owned by the registry */
	const char *pattern;
	cqrs_event_fn fn;
	cqrs_reset_fn reset;			/* may be NULL */
	void *plugin_state;
	const char *plugin;
};

struct registry *cqrs_registry_new(void);

/* Calls each plugin's fini, then dlclose()s them. NULL is a no-op. */
void cqrs_registry_free(struct registry *reg);

/*
 * Loads one plugin: dlopen(RTLD_NOW | RTLD_LOCAL), dlsym of
 * CQRS_PLUGIN_ENTRY_SYMBOL, ABI and size checks, register_all(). Errors name
 * the file and say why (the dlerror() text, "exports no cqrs_plugin_entry",
 * "ABI version 7, this daemon knows 1", "command \"account.open\" is already
 * registered by /x/bank.so"). A plugin that fails leaves nothing registered.
 */
int cqrs_registry_load(struct registry *reg, const char *path, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* Loads each path of a space-separated list, in order. Stops at the first
 * failure; the plugins loaded before it stay loaded. "" loads nothing. */
int cqrs_registry_load_list(struct registry *reg, const char *paths, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/*
 * Registers a plugin that is already in the process (built into a program,
 * or a test's own descriptor): the same checks, rollback and messages as
 * cqrs_registry_load() without dlopen(). origin names it in messages and in the
 * entries' `plugin` field (copied). desc is borrowed for the registry's life.
 *
 * Both return 0, CQRS_ENOMEM, or CQRS_ECONFIG for every refusal. fini is
 * called once for every register_all() that ran, even a failed one (with
 * whatever *state holds then, maybe NULL). A registration call that failed
 * fails the load even when register_all() goes on and returns 0. Successful
 * loads log one info line with the plugin's counts.
 */
int cqrs_registry_add(struct registry *reg, const struct cqrs_plugin *desc, const char *origin,
		 struct cqrs_err *err) __attribute__((warn_unused_result));

/* Lookups; NULL when absent. Pointers live as long as the registry. */
const struct reg_aggregate *cqrs_registry_aggregate(const struct registry *reg, const char *name);
const struct reg_command *cqrs_registry_command(const struct registry *reg, const char *type);
cqrs_applier_fn cqrs_registry_applier(const struct registry *reg, const struct reg_aggregate *agg,
				 const char *event_type);

/* Event handlers, in registration order. */
size_t cqrs_registry_handler_count(const struct registry *reg);
const struct reg_handler *cqrs_registry_handler(const struct registry *reg, size_t i);

/* Counts, for logs: "loaded bank.so: 2 aggregates, 7 commands, 5 handlers". */
size_t cqrs_registry_command_count(const struct registry *reg);
size_t cqrs_registry_aggregate_count(const struct registry *reg);
size_t cqrs_registry_plugin_count(const struct registry *reg);

/* AMQP topic matching: '*' one word, '#' zero or more words. */
bool cqrs_routing_match(const char *pattern, const char *key);

/* ---- running a command handler ----------------------------------------- */

#define CMD_CTX_MAX_EVENTS CQRS_APPEND_MAX_EVENTS

struct emitted {
	const char *type;		/* owned copy */
	struct json_object *data;	/* owned reference */
};

struct cqrs_cmd_ctx {
	struct cqrs_log_ctx log;	/* borrowed strings */
	void *plugin_state;
	struct emitted *events;		/* owned */
	size_t n_events, cap_events;
	bool emit_failed;		/* cqrs_emit refused something */
	char message[512];		/* set by cqrs_invalid / cqrs_reject / emit errors */
};

/* Fills ctx for rc (log copied; its strings are borrowed and must outlive
 * the run). It does not free anything: cqrs_cmd_ctx_clear() a used ctx first. */
void cqrs_cmd_ctx_init(struct cqrs_cmd_ctx *ctx, const struct reg_command *rc,
		  const struct cqrs_log_ctx *log);
/* Frees the emitted events; the ctx can be reused after cqrs_cmd_ctx_init. */
void cqrs_cmd_ctx_clear(struct cqrs_cmd_ctx *ctx);

/*
 * Runs rc's handler. Returns the handler's cqrs_outcome; an out-of-range
 * return or an emit failure gives -1 with ctx->message set (answer
 * "internal"). On CQRS_OUTCOME_OK the events are in ctx->events (maybe none:
 * a command may change nothing); on any other outcome there are none, and
 * ctx->message is never empty. Events and message of an earlier run are
 * dropped first, so one ctx can run again after a conflict. The handler does
 * not see its own events applied: state stays as given.
 */
int cqrs_cmd_ctx_run(struct cqrs_cmd_ctx *ctx, const struct reg_command *rc,
		const struct cqrs_command *cmd, const void *state, int64_t version);

/* Applies ev to state with the aggregate's applier for ev->type (no applier:
 * nothing to do). Returns 0, or CQRS_EINTERNAL naming the event. */
int cqrs_aggregate_apply(const struct registry *reg, const struct reg_aggregate *agg, void *state,
		    const struct cqrs_event *ev, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* ---- running an event handler ------------------------------------------ */

/* What the consumer provides behind cqrs_send(); NULL send: refused. send
 * takes data over (consumes its reference) whatever it returns, and fills
 * err as cqrs_send() documents. cause is the event being handled. */
struct event_ctx_ops {
	int (*send)(void *arg, const struct cqrs_event *cause, const char *key,
		    const char *command, const char *aggregate_id,
		    struct json_object *data, struct cqrs_err *err);
	void *arg;
};

struct cqrs_event_ctx {
	struct cqrs_log_ctx log;
	void *plugin_state;
	struct pg_conn *pg;		/* borrowed: the open transaction */
	const struct cqrs_event *event;	/* borrowed; NULL in reset */
	const struct event_ctx_ops *ops;
	char reason[512];		/* set by cqrs_event_fail */
};

/* Fills ctx for one call of h (log copied, strings borrowed; pg, event and
 * ops borrowed, each may be NULL). cqrs_send() refuses without ops->send
 * (CQRS_EUNAVAILABLE) and in a reset, where event is NULL (CQRS_EINVALID). */
void cqrs_event_ctx_init(struct cqrs_event_ctx *ctx, const struct reg_handler *h,
		    const struct cqrs_log_ctx *log, struct pg_conn *pg,
		    const struct cqrs_event *event, const struct event_ctx_ops *ops);

#endif

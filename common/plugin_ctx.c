/*
 * plugin_ctx.c - the contexts handed to handlers (plugin_host.h) and the
 * calls plugins make on them (cqrs/plugin.h): emitting events, invalid and
 * rejected answers, sending commands, applying events to a state.
 *
 * Whatever a plugin does wrong inside a handler ends as an outcome with a
 * message, never as a crash or a leak here: JSON handed over is always
 * consumed, and a failed emit poisons the whole command (the daemon answers
 * "internal" rather than append part of what the handler meant).
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "plugin_host.h"

/* ---- command handlers --------------------------------------------------- */

void
cqrs_cmd_ctx_init(struct cqrs_cmd_ctx *ctx, const struct reg_command *rc,
	     const struct cqrs_log_ctx *log)
{
	memset(ctx, 0, sizeof(*ctx));
	if (log != NULL)
		ctx->log = *log;
	if (rc != NULL)
		ctx->plugin_state = rc->plugin_state;
}

void
cqrs_cmd_ctx_clear(struct cqrs_cmd_ctx *ctx)
{
	size_t i;

	if (ctx == NULL)
		return;
	for (i = 0; i < ctx->n_events; i++) {
		free((char *)ctx->events[i].type);
		json_object_put(ctx->events[i].data);
	}
	free(ctx->events);
	ctx->events = NULL;
	ctx->n_events = 0;
	ctx->cap_events = 0;
}

static void
emit_failed(struct cqrs_cmd_ctx *ctx, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* The first emit failure names the cause; later calls keep it. */
static void
emit_failed(struct cqrs_cmd_ctx *ctx, const char *fmt, ...)
{
	va_list ap;

	if (ctx->emit_failed)
		return;
	ctx->emit_failed = true;
	va_start(ap, fmt);
	vsnprintf(ctx->message, sizeof(ctx->message), fmt, ap);
	va_end(ap);
}

int
cqrs_emit(struct cqrs_cmd_ctx *ctx, const char *event_type, struct json_object *data)
{
	struct cqrs_err err = { 0 };
	struct emitted *ev;
	char *type = NULL;
	size_t cap;
	int rc = -1;

	if (ctx == NULL)
		goto out;
	if (ctx->emit_failed)
		goto out;
	if (cqrs_envelope_check_type("event type", event_type, &err) < 0) {
		emit_failed(ctx, "cqrs_emit: %s", err.msg);
		goto out;
	}
	if (!json_object_is_type(data, json_type_object)) {
		emit_failed(ctx, "cqrs_emit: data of event \"%s\" is not a JSON object",
			    event_type);
		goto out;
	}
	if (ctx->n_events >= CMD_CTX_MAX_EVENTS) {
		emit_failed(ctx, "cqrs_emit: more than %d events for one command",
			    CMD_CTX_MAX_EVENTS);
		goto out;
	}
	if (ctx->n_events == ctx->cap_events) {
		cap = ctx->cap_events == 0 ? 4 : ctx->cap_events * 2;
		ev = realloc(ctx->events, cap * sizeof(*ev));
		if (ev == NULL) {
			emit_failed(ctx, "cqrs_emit: out of memory");
			goto out;
		}
		ctx->events = ev;
		ctx->cap_events = cap;
	}
	type = strdup(event_type);
	if (type == NULL) {
		emit_failed(ctx, "cqrs_emit: out of memory");
		goto out;
	}
	ctx->events[ctx->n_events].type = type;
	ctx->events[ctx->n_events].data = data;
	ctx->n_events++;
	data = NULL;		/* the ctx has it */
	rc = 0;
out:
	json_object_put(data);
	return rc;
}

static int
outcome(struct cqrs_cmd_ctx *ctx, int code, const char *fmt, va_list ap)
{
	/* an emit failure stays the answer: the handler's words would hide it */
	if (ctx != NULL && !ctx->emit_failed && fmt != NULL)
		vsnprintf(ctx->message, sizeof(ctx->message), fmt, ap);
	return code;
}

int
cqrs_invalid(struct cqrs_cmd_ctx *ctx, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = outcome(ctx, CQRS_OUTCOME_INVALID, fmt, ap);
	va_end(ap);
	return rc;
}

int
cqrs_reject(struct cqrs_cmd_ctx *ctx, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = outcome(ctx, CQRS_OUTCOME_REJECTED, fmt, ap);
	va_end(ap);
	return rc;
}

const struct cqrs_log_ctx *
cqrs_cmd_log(struct cqrs_cmd_ctx *ctx)
{
	return ctx != NULL ? &ctx->log : NULL;
}

void *
cqrs_cmd_plugin_state(struct cqrs_cmd_ctx *ctx)
{
	return ctx != NULL ? ctx->plugin_state : NULL;
}

int
cqrs_cmd_ctx_run(struct cqrs_cmd_ctx *ctx, const struct reg_command *rc,
	    const struct cqrs_command *cmd, const void *state, int64_t version)
{
	int r;

	cqrs_cmd_ctx_clear(ctx);
	ctx->emit_failed = false;
	ctx->message[0] = '\0';
	if (rc == NULL || rc->fn == NULL || cmd == NULL) {
		snprintf(ctx->message, sizeof(ctx->message), "no command or no handler to run");
		return -1;
	}
	ctx->plugin_state = rc->plugin_state;
	r = rc->fn(ctx, cmd, state, version);
	if (ctx->emit_failed) {
		r = -1;
	} else if (r == CQRS_OUTCOME_OK) {
		ctx->message[0] = '\0';
		return r;
	} else if (r == CQRS_OUTCOME_INVALID) {
		if (ctx->message[0] == '\0')
			snprintf(ctx->message, sizeof(ctx->message),
				 "the command's data was refused");
	} else if (r == CQRS_OUTCOME_REJECTED) {
		if (ctx->message[0] == '\0')
			snprintf(ctx->message, sizeof(ctx->message),
				 "the command was refused in the aggregate's state");
	} else {
		snprintf(ctx->message, sizeof(ctx->message),
			 "the handler of \"%s\" (%s) returned %d, not a cqrs_outcome",
			 rc->type, rc->plugin != NULL ? rc->plugin : "?", r);
		r = -1;
	}
	/* only a command that succeeds appends anything */
	cqrs_cmd_ctx_clear(ctx);
	return r;
}

int
cqrs_aggregate_apply(const struct registry *reg, const struct reg_aggregate *agg, void *state,
		const struct cqrs_event *ev, struct cqrs_err *err)
{
	cqrs_applier_fn fn;
	int r;

	if (agg == NULL || ev == NULL || ev->type == NULL)
		return cqrs_err_set(err, CQRS_EINTERNAL, "cqrs_aggregate_apply: no aggregate or event");
	fn = cqrs_registry_applier(reg, agg, ev->type);
	if (fn == NULL)
		return 0;
	r = fn(state, ev);
	if (r != 0)
		return cqrs_err_set(err, CQRS_EINTERNAL,
				    "event \"%s\" (%s version %" PRId64 "): the applier of "
				    "aggregate \"%s\" (%s) refused it (returned %d)",
				    ev->type, ev->stream != NULL ? ev->stream : "?", ev->version,
				    agg->type.name, agg->plugin != NULL ? agg->plugin : "?", r);
	return 0;
}

/* ---- event handlers ----------------------------------------------------- */

void
cqrs_event_ctx_init(struct cqrs_event_ctx *ctx, const struct reg_handler *h,
	       const struct cqrs_log_ctx *log, struct pg_conn *pg,
	       const struct cqrs_event *event, const struct event_ctx_ops *ops)
{
	memset(ctx, 0, sizeof(*ctx));
	if (log != NULL)
		ctx->log = *log;
	if (h != NULL)
		ctx->plugin_state = h->plugin_state;
	ctx->pg = pg;
	ctx->event = event;
	ctx->ops = ops;
}

struct pg_conn *
cqrs_event_pg(struct cqrs_event_ctx *ctx)
{
	return ctx != NULL ? ctx->pg : NULL;
}

const struct cqrs_log_ctx *
cqrs_event_log(struct cqrs_event_ctx *ctx)
{
	return ctx != NULL ? &ctx->log : NULL;
}

void *
cqrs_event_plugin_state(struct cqrs_event_ctx *ctx)
{
	return ctx != NULL ? ctx->plugin_state : NULL;
}

int
cqrs_event_fail(struct cqrs_event_ctx *ctx, int outcome_code, const char *fmt, ...)
{
	va_list ap;

	if (ctx != NULL && fmt != NULL) {
		va_start(ap, fmt);
		vsnprintf(ctx->reason, sizeof(ctx->reason), fmt, ap);
		va_end(ap);
	}
	return outcome_code;
}

int
cqrs_send(struct cqrs_event_ctx *ctx, const char *key, const char *command,
	  const char *aggregate_id, struct json_object *data, struct cqrs_err *err)
{
	if (ctx == NULL || ctx->ops == NULL || ctx->ops->send == NULL) {
		json_object_put(data);
		return cqrs_err_set(err, CQRS_EUNAVAILABLE, "no command socket");
	}
	/* the command id derives from the event id: without an event (a
	 * reset) a resend could not be recognized as the same command */
	if (ctx->event == NULL) {
		json_object_put(data);
		return cqrs_err_set(err, CQRS_EINVALID,
				    "cqrs_send: no event to derive the command id from "
				    "(called from a reset?)");
	}
	if (command == NULL || aggregate_id == NULL) {
		json_object_put(data);
		return cqrs_err_set(err, CQRS_EINVALID, "cqrs_send: no command or aggregate id");
	}
	/* send takes data over, whatever it returns */
	return ctx->ops->send(ctx->ops->arg, ctx->event, key, command, aggregate_id, data,
			      err);
}

/*
 * other.c - a second, small domain loaded beside bank.so: aggregate
 * "counter" with one command, and an event handler with a reset, using a
 * plugin-wide state that fini frees.
 *
 *   counter.add {"by": int, -1000000..1000000, not 0} -> CounterAdded {by, value}
 *   counter.check {"at_most": int} -> no event; rejected when the value is over
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <cqrs/plugin.h>

#define COUNTER_STEP_MAX 1000000
#define COUNTER_VALUE_MAX INT64_C(1000000000000)

struct counter {
	int64_t value;
};

/* plugin-wide: handed to every handler through cqrs_*_plugin_state() */
struct other {
	int64_t value_max;
	long events_seen;
};

static void *
counter_new(void *plugin_state)
{
	(void)plugin_state;
	return calloc(1, sizeof(struct counter));
}

static void
counter_free(void *state)
{
	free(state);
}

static int
on_added(void *state, const struct cqrs_event *ev)
{
	struct counter *c = state;
	struct json_object *by;

	if (!json_object_object_get_ex(ev->data, "by", &by) ||
	    !json_object_is_type(by, json_type_int))
		return -1;
	c->value += json_object_get_int64(by);
	return 0;
}

static int
counter_add(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
	    int64_t version)
{
	const struct counter *c = state;
	const struct other *o = cqrs_cmd_plugin_state(ctx);
	struct json_object *by;
	struct json_object *data;
	int64_t n;

	(void)version;
	if (!json_object_object_get_ex(cmd->data, "by", &by) ||
	    !json_object_is_type(by, json_type_int))
		return cqrs_invalid(ctx, "\"by\" must be an integer");
	n = json_object_get_int64(by);
	if (n == 0 || n < -COUNTER_STEP_MAX || n > COUNTER_STEP_MAX)
		return cqrs_invalid(ctx, "\"by\" must be a non-zero integer from %d to %d",
				    -COUNTER_STEP_MAX, COUNTER_STEP_MAX);
	if (c->value + n > o->value_max || c->value + n < -o->value_max)
		return cqrs_reject(ctx, "counter would leave +-%" PRId64, o->value_max);
	data = json_object_new_object();
	json_object_object_add(data, "by", json_object_new_int64(n));
	json_object_object_add(data, "value", json_object_new_int64(c->value + n));
	if (cqrs_emit(ctx, "CounterAdded", data) < 0)
		return -1;
	return CQRS_OUTCOME_OK;
}

/* A command that raises no event: accepted or rejected, nothing to append. */
static int
counter_check(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
	      int64_t version)
{
	const struct counter *c = state;
	struct json_object *at_most;

	(void)version;
	if (!json_object_object_get_ex(cmd->data, "at_most", &at_most) ||
	    !json_object_is_type(at_most, json_type_int))
		return cqrs_invalid(ctx, "\"at_most\" must be an integer");
	if (c->value > json_object_get_int64(at_most))
		return cqrs_reject(ctx, "counter is at %" PRId64, c->value);
	return CQRS_OUTCOME_OK;
}

static int
counter_seen(struct cqrs_event_ctx *ctx, const struct cqrs_event *ev)
{
	struct other *o = cqrs_event_plugin_state(ctx);

	if (ev == NULL)
		return cqrs_event_fail(ctx, CQRS_HANDLED_FAIL, "no event");
	o->events_seen++;
	cqrs_log_debug(cqrs_event_log(ctx), "counter event %s seen (%ld so far)", ev->type,
		       o->events_seen);
	return CQRS_HANDLED_OK;
}

static int
counter_reset(struct cqrs_event_ctx *ctx)
{
	struct other *o = cqrs_event_plugin_state(ctx);

	o->events_seen = 0;
	return CQRS_HANDLED_OK;
}

static const struct cqrs_aggregate_type counter_type = {
	.name = "counter",
	.state_new = counter_new,
	.state_free = counter_free,
};

static int
other_register(struct cqrs_registry *reg, void **state)
{
	struct other *o;

	o = calloc(1, sizeof(*o));
	if (o == NULL) {
		cqrs_registry_error(reg, "other: out of memory");
		return -1;
	}
	o->value_max = COUNTER_VALUE_MAX;
	*state = o;		/* fini frees it, whatever happens next */
	if (cqrs_register_aggregate(reg, &counter_type) < 0 ||
	    cqrs_register_applier(reg, "counter", "CounterAdded", on_added) < 0 ||
	    cqrs_register_command(reg, "counter.add", "counter", counter_add) < 0 ||
	    cqrs_register_command(reg, "counter.check", "counter", counter_check) < 0 ||
	    cqrs_register_event_handler(reg, "other", "counter.#", counter_seen,
					counter_reset) < 0)
		return -1;
	return 0;
}

static void
other_fini(void *state)
{
	free(state);
}

static const struct cqrs_plugin other = {
	.abi_version = CQRS_PLUGIN_ABI,
	.struct_size = sizeof(struct cqrs_plugin),
	.name = "other",
	.register_all = other_register,
	.fini = other_fini,
};

/* plugin.h does not declare it; -Wmissing-prototypes wants a prototype */
CQRS_PLUGIN_EXPORT const struct cqrs_plugin *cqrs_plugin_entry(void);

CQRS_PLUGIN_EXPORT const struct cqrs_plugin *
cqrs_plugin_entry(void)
{
	return &other;
}

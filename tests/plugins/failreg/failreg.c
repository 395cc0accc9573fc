/*
 * failreg.c - a test plugin whose register_all() refuses to load after
 * registering an aggregate, a command and an event handler, with a reason
 * of its own. Nothing it registered may stay, and its fini must run (it
 * frees the state it made: a leak checker sees whether it did).
 */
#include <stdlib.h>

#include <cqrs/plugin.h>

static void *
thing_new(void *plugin_state)
{
	(void)plugin_state;
	return calloc(1, 1);
}

static void
thing_free(void *state)
{
	free(state);
}

static int
thing_handle(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
	     int64_t version)
{
	(void)cmd;
	(void)state;
	(void)version;
	return cqrs_reject(ctx, "never loaded");
}

static int
thing_event(struct cqrs_event_ctx *ctx, const struct cqrs_event *ev)
{
	(void)ctx;
	(void)ev;
	return CQRS_HANDLED_OK;
}

static const struct cqrs_aggregate_type thing_type = {
	.name = "failthing",
	.state_new = thing_new,
	.state_free = thing_free,
};

static int
failreg_register(struct cqrs_registry *reg, void **state)
{
	*state = malloc(64);
	if (cqrs_register_aggregate(reg, &thing_type) < 0 ||
	    cqrs_register_command(reg, "failthing.do", "failthing", thing_handle) < 0 ||
	    cqrs_register_event_handler(reg, "failreg", "failthing.#", thing_event, NULL) < 0)
		return -1;
	cqrs_registry_error(reg, "failreg: the required setting \"%s\" is missing", "frobnicate");
	return -1;
}

static const struct cqrs_plugin failreg = {
	.abi_version = CQRS_PLUGIN_ABI,
	.struct_size = sizeof(struct cqrs_plugin),
	.name = "failreg",
	.register_all = failreg_register,
	.fini = free,
};

/* plugin.h does not declare it; -Wmissing-prototypes wants a prototype */
CQRS_PLUGIN_EXPORT const struct cqrs_plugin *cqrs_plugin_entry(void);

CQRS_PLUGIN_EXPORT const struct cqrs_plugin *
cqrs_plugin_entry(void)
{
	return &failreg;
}

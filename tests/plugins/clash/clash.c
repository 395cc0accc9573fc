/*
 * clash.c - a plugin that defines, with default visibility (as a plugin
 * built without -fvisibility=hidden does), names that libcqrs and libevent
 * use or once exported: store_connect, config_get, event_new. Its handlers
 * call its own store_connect() and config_get() and record what they
 * returned, so a test sees whose function ran.
 *
 *   clash.touch {}  ->  Touched {"config": config_get(), "store": store_connect(7)}
 *   group "clash", "clash.#": INSERT INTO clash_seen (event_id, config, store)
 *
 * libcqrs.so exports only cqrs_ names; before it did, a plugin's call to its
 * own config_get() bound to the library's (the global scope is searched
 * first), and the daemon crashed.
 */
#include <stdio.h>
#include <stdlib.h>

#include <libpq-fe.h>

#include <cqrs/plugin.h>

#define CLASH_PUBLIC __attribute__((visibility("default")))

/* What the plugin's own functions answer. */
#define CLASH_CONFIG "clash: its own config_get"
#define CLASH_STORE(n) ((n) * 6)

/* Not declared in any header the plugin includes: prototypes for -Wmissing-prototypes. */
CLASH_PUBLIC const char *config_get(void);
CLASH_PUBLIC int store_connect(int n);
CLASH_PUBLIC void *event_new(void *base, int fd, short what, void *cb, void *arg);

CLASH_PUBLIC const char *
config_get(void)
{
	return CLASH_CONFIG;
}

CLASH_PUBLIC int
store_connect(int n)
{
	return CLASH_STORE(n);
}

/* libevent's name. The plugin never calls it: it must simply not replace
 * libevent's in the daemon that loads it. */
CLASH_PUBLIC void *
event_new(void *base, int fd, short what, void *cb, void *arg)
{
	(void)base, (void)fd, (void)what, (void)cb, (void)arg;
	abort();
}

static void *
clash_state_new(void *plugin_state)
{
	(void)plugin_state;
	return calloc(1, 1);
}

static void
clash_state_free(void *state)
{
	free(state);
}

static int
on_touched(void *state, const struct cqrs_event *ev)
{
	(void)state, (void)ev;
	return 0;
}

static int
clash_touch(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
	    int64_t version)
{
	struct json_object *data = json_object_new_object();

	(void)cmd, (void)state, (void)version;
	json_object_object_add(data, "config", json_object_new_string(config_get()));
	json_object_object_add(data, "store", json_object_new_int(store_connect(7)));
	if (cqrs_emit(ctx, "Touched", data) < 0)
		return -1;
	return CQRS_OUTCOME_OK;
}

static int
clash_seen(struct cqrs_event_ctx *ctx, const struct cqrs_event *ev)
{
	char store[16];
	const char *params[3] = { ev->id, config_get(), store };
	PGresult *res;
	int ok;

	snprintf(store, sizeof(store), "%d", store_connect(7));
	res = PQexecParams((PGconn *)cqrs_event_pg(ctx),
			   "INSERT INTO clash_seen (event_id, config, store) VALUES ($1, $2, $3)",
			   3, NULL, params, NULL, NULL, 0);
	ok = PQresultStatus(res) == PGRES_COMMAND_OK;
	PQclear(res);
	if (!ok)
		return cqrs_event_fail(ctx, CQRS_HANDLED_RETRY, "insert into clash_seen failed");
	return CQRS_HANDLED_OK;
}

static const struct cqrs_aggregate_type clash_type = {
	.name = "clash",
	.state_new = clash_state_new,
	.state_free = clash_state_free,
};

static int
clash_register(struct cqrs_registry *reg, void **state)
{
	(void)state;
	if (cqrs_register_aggregate(reg, &clash_type) < 0 ||
	    cqrs_register_applier(reg, "clash", "Touched", on_touched) < 0 ||
	    cqrs_register_command(reg, "clash.touch", "clash", clash_touch) < 0 ||
	    cqrs_register_event_handler(reg, "clash", "clash.#", clash_seen, NULL) < 0)
		return -1;
	return 0;
}

static const struct cqrs_plugin clash = {
	.abi_version = CQRS_PLUGIN_ABI,
	.struct_size = sizeof(struct cqrs_plugin),
	.name = "clash",
	.register_all = clash_register,
};

CQRS_PLUGIN_EXPORT const struct cqrs_plugin *cqrs_plugin_entry(void);

CQRS_PLUGIN_EXPORT const struct cqrs_plugin *
cqrs_plugin_entry(void)
{
	return &clash;
}

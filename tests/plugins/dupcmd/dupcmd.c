/*
 * dupcmd.c - a test plugin that registers "account.open" again. Loaded
 * after bank.so it must be refused, naming both files, and leave nothing of
 * itself behind: its own aggregate and command come first, so the test can
 * see that they were rolled back.
 */
#include <stdlib.h>

#include <cqrs/plugin.h>

static void *
dup_new(void *plugin_state)
{
	(void)plugin_state;
	return calloc(1, 1);
}

static void
dup_free(void *state)
{
	free(state);
}

static int
dup_handle(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
	   int64_t version)
{
	(void)cmd;
	(void)state;
	(void)version;
	return cqrs_reject(ctx, "dupcmd handles nothing");
}

static const struct cqrs_aggregate_type dup_type = {
	.name = "dupcheck",
	.state_new = dup_new,
	.state_free = dup_free,
};

static int
dupcmd_register(struct cqrs_registry *reg, void **state)
{
	int rc;

	(void)state;
	if ((rc = cqrs_register_aggregate(reg, &dup_type)) < 0 ||
	    (rc = cqrs_register_command(reg, "dupcheck.ping", "dupcheck", dup_handle)) < 0 ||
	    (rc = cqrs_register_command(reg, "account.open", "dupcheck", dup_handle)) < 0)
		return rc;
	return 0;
}

static const struct cqrs_plugin dupcmd = {
	.abi_version = CQRS_PLUGIN_ABI,
	.struct_size = sizeof(struct cqrs_plugin),
	.name = "dupcmd",
	.register_all = dupcmd_register,
};

/* plugin.h does not declare it; -Wmissing-prototypes wants a prototype */
CQRS_PLUGIN_EXPORT const struct cqrs_plugin *cqrs_plugin_entry(void);

CQRS_PLUGIN_EXPORT const struct cqrs_plugin *
cqrs_plugin_entry(void)
{
	return &dupcmd;
}

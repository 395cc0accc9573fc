/*
 * badabi.c - a test plugin built for an ABI this daemon does not know:
 * the loader must refuse it before calling anything but the entry point.
 */
#include <cqrs/plugin.h>

static int
badabi_register(struct cqrs_registry *reg, void **state)
{
	(void)state;
	/* never reached: a refused ABI is not called into */
	cqrs_registry_error(reg, "badabi: register_all must not run");
	return -1;
}

static const struct cqrs_plugin badabi = {
	.abi_version = 999,
	.struct_size = sizeof(struct cqrs_plugin),
	.name = "badabi",
	.register_all = badabi_register,
};

/* plugin.h does not declare it; -Wmissing-prototypes wants a prototype */
CQRS_PLUGIN_EXPORT const struct cqrs_plugin *cqrs_plugin_entry(void);

CQRS_PLUGIN_EXPORT const struct cqrs_plugin *
cqrs_plugin_entry(void)
{
	return &badabi;
}

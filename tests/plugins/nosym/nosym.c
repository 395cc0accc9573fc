/*
 * nosym.c - a test plugin that exports no cqrs_plugin_entry: its entry point
 * has another name, a mistake a plugin author can make.
 */
#include <cqrs/plugin.h>

CQRS_PLUGIN_EXPORT const struct cqrs_plugin *plugin_entry(void);

static const struct cqrs_plugin nosym = {
	.abi_version = CQRS_PLUGIN_ABI,
	.struct_size = sizeof(struct cqrs_plugin),
	.name = "nosym",
};

const struct cqrs_plugin *
plugin_entry(void)
{
	return &nosym;
}

/*
 * nosym.c - a test plugin that exports no cqrs_plugin_entry: the function
 * exists but stays hidden (-fvisibility=hidden, no CQRS_PLUGIN_EXPORT), the
 * mistake a plugin author is most likely to make.
 */
#include <cqrs/plugin.h>

const struct cqrs_plugin *cqrs_plugin_entry(void);

static const struct cqrs_plugin nosym = {
	.abi_version = CQRS_PLUGIN_ABI,
	.struct_size = sizeof(struct cqrs_plugin),
	.name = "nosym",
};

const struct cqrs_plugin *
cqrs_plugin_entry(void)
{
	return &nosym;
}

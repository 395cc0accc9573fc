/*
 * bank.c - the bank example plugin: accounts and transfers (command side).
 *
 * The plugin's only exported symbol is cqrs_plugin_entry(); everything else
 * is hidden by -fvisibility=hidden. Each part of the domain lives in its own
 * file and registers itself; the read side (event handlers for projections
 * and the transfer process manager) will register here the same way.
 */
#include "bank.h"
#include "readside.h"

static int
bank_register(struct cqrs_registry *reg, void **state)
{
	/* nothing plugin-wide: handlers need only the aggregate's state */
	(void)state;
	if (account_register(reg) < 0 || transfer_register(reg) < 0)
		return -1;	/* the failing call told the registry why */
	/* the read side: event handlers for cqrs-consumer (readside.h) */
	if (projection_register(reg) < 0 || notify_register(reg) < 0 ||
	    process_register(reg) < 0)
		return -1;
	return 0;
}

static const struct cqrs_plugin bank = {
	.abi_version = CQRS_PLUGIN_ABI,
	.struct_size = sizeof(struct cqrs_plugin),
	.name = "bank",
	.register_all = bank_register,
	.fini = NULL,
};

CQRS_PLUGIN_EXPORT const struct cqrs_plugin *
cqrs_plugin_entry(void)
{
	return &bank;
}

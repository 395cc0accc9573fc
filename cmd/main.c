/* cqrs-cmdd - the command daemon. */
#include <stdio.h>
#include <string.h>

#include <event2/event.h>

#include "cmdd.h"
#include "config.h"
#include "cqrs_daemon.h"
#include "store.h"

static bool migrate;

static int
option(int val, const char *arg, void *ctx)
{
	(void)val;		/* --migrate, the only one */
	(void)arg;
	(void)ctx;
	migrate = true;
	return 0;
}

static const struct option options[] = {
	{ "migrate", no_argument, NULL, 'm' },
	{ NULL, 0, NULL, 0 },
};

static const struct cqrs_daemon_spec spec = {
	.name = "cqrs-cmdd",
	.comp = "cmdd",
	.usage = "usage: cqrs-cmdd [-c FILE] [--check-config] [--migrate]\n\n"
		 "Takes commands as JSON lines on a Unix socket (cmd.socket), runs them\n"
		 "with the domain plugins of cmd.plugins and appends their events to\n"
		 "PostgreSQL (store.conninfo).\n\n"
		 "  -c, --config FILE  configuration file (default " CQRS_CONFIG_DEFAULT ")\n"
		 "      --check-config  load the configuration and plugins, then exit\n"
		 "      --migrate       apply database migrations before starting\n"
		 "  -h, --help\n  -V, --version\n",
	.options = options,
	.option = option,
};

static void
stop(void *arg)
{
	cmdd_begin_shutdown(arg);
}

static int
run_migrations(const char *conninfo)
{
	struct store *st = NULL;
	struct cqrs_err err = { 0 };
	int applied = 0;

	if (cqrs_store_connect(conninfo, &st, &err) < 0 ||
	    cqrs_store_migrate(st, &applied, &err) < 0) {
		cqrs_log_error(NULL, "migrate: %s", err.msg);
		cqrs_store_free(st);
		return -1;
	}
	cqrs_store_free(st);
	cqrs_log_info(NULL, "migrations applied: %d", applied);
	return 0;
}

/* n as the config file would say it, or near: 256 MiB, 42 KiB, 2.1 MiB. */
static const char *
size_text(char *buf, size_t size, size_t n)
{
	if (n >= 1024 * 1024 && n % (1024 * 1024) == 0)
		snprintf(buf, size, "%zu MiB", n / (1024 * 1024));
	else if (n < 1024 * 1024 && n % 1024 == 0)
		snprintf(buf, size, "%zu KiB", n / 1024);
	else
		snprintf(buf, size, "%.1f MiB", (double)n / (1024 * 1024));
	return buf;
}

/* The figure of docs/deploy.md, "How much memory cqrs-cmdd can hold". */
static void
print_memory_bound(const struct cmdd_config *c)
{
	struct cmdd_memory m;
	size_t total = cmdd_memory_parts(c, &m);
	char a[32], b[32], e[32], f[32];

	printf("memory bound: %zu bytes (%zu MiB) = memory_budget %s + max_connections %d x %s "
	       "(a client's floor and connection) + 2 x max_request_bytes + 64 KiB = %s (a line "
	       "being parsed) + pool_size %d x %s (libpq's copy of the largest append, "
	       "client_budget, and a group commit's joined text, 1 MiB)\n", total, (total + 1024 * 1024 - 1) / (1024 * 1024),
	       size_text(a, sizeof(a), m.budget), c->max_connections,
	       size_text(b, sizeof(b), m.per_client), size_text(e, sizeof(e), m.parse),
	       c->pool_size, size_text(f, sizeof(f), m.per_store));
	if (c->snapshot_every > 0)
		printf("not counted: the aggregates in memory (cache_size %d idle, and one per "
		       "command in flight, each the size of its state) and an aggregate's load (its "
		       "events since its last snapshot, up to snapshot_every %d, read in one "
		       "result)\n", c->cache_size, c->snapshot_every);
	else
		printf("not counted: the aggregates in memory (cache_size %d idle, and one per "
		       "command in flight, each the size of its state) and an aggregate's load (all "
		       "its events, read in one result: snapshot_every is 0)\n", c->cache_size);
}

int
main(int argc, char **argv)
{
	struct cqrs_daemon dm;
	struct cmdd_config ccfg = { 0 };
	struct registry *reg = NULL;
	struct event_base *base = NULL;
	struct cmdd d;
	struct cqrs_err err = { 0 };
	int rc;

	if ((rc = cqrs_daemon_start(&dm, &spec, argc, argv)) != CQRS_DAEMON_RUN)
		return rc;
	rc = 1;
	if (cmdd_config_load(dm.cfg, &ccfg, &err) < 0) {
		cqrs_log_error(NULL, "%s", err.msg);
		goto out;
	}
	reg = cqrs_registry_new();
	if (reg == NULL || cqrs_registry_load_list(reg, ccfg.plugins, &err) < 0) {
		cqrs_log_error(NULL, "%s", reg ? err.msg : "out of memory");
		goto out;
	}
	if (cqrs_registry_command_count(reg) == 0)
		cqrs_log_warn(NULL, "no command handlers loaded (cmd.plugins is \"%s\")", ccfg.plugins);
	if (dm.check_config) {
		printf("configuration ok: %zu commands, %zu aggregates\n",
		       cqrs_registry_command_count(reg), cqrs_registry_aggregate_count(reg));
		print_memory_bound(&ccfg);
		rc = 0;
		goto out;
	}
	if (migrate && run_migrations(ccfg.conninfo) < 0)
		goto out;
	if ((base = event_base_new()) == NULL) {
		cqrs_log_error(NULL, "cannot create the event loop");
		goto out;
	}
	/* the signals first: cmdd_init() opens the socket and the metrics
	 * address, and a SIGTERM sent as soon as they answer must drain, not kill */
	if (cqrs_daemon_signals_event(&dm, base, stop, &d) < 0) {
		cqrs_log_error(NULL, "out of memory");
		goto out;
	}
	dm.reload = cmdd_reload;
	dm.reload_arg = &d;
	dm.reload_what = "[access]";
	rc = cmdd_init(&d, base, &ccfg, reg, &err);
	memset(&ccfg, 0, sizeof(ccfg));	/* d owns it now, also after a failure */
	if (rc < 0) {
		cqrs_log_error(NULL, "%s", err.msg);
		rc = 1;
	} else {
		rc = cmdd_run(&d);
	}
	cmdd_fini(&d);
out:
	cmdd_config_clear(&ccfg);
	cqrs_daemon_end(&dm);	/* its events before their loop */
	if (base != NULL)
		event_base_free(base);
	cqrs_registry_free(reg);
	return rc;
}

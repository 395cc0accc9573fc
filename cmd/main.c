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

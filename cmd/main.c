/* cqrs-cmdd - the command daemon. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "cmdd.h"
#include "config.h"
#include "store.h"

#define DEFAULT_CONFIG "/etc/cqrs/cqrs.conf"

static void
usage(FILE *f)
{
	fprintf(f, "usage: cqrs-cmdd [-c FILE] [--check-config] [--migrate]\n\n"
		   "Takes commands as JSON lines on a Unix socket (cmd.socket), runs them\n"
		   "with the domain plugins of cmd.plugins and appends their events to\n"
		   "PostgreSQL (store.conninfo).\n\n"
		   "  -c, --config FILE  configuration file (default " DEFAULT_CONFIG ")\n"
		   "      --check-config  load the configuration and plugins, then exit\n"
		   "      --migrate       apply database migrations before starting\n"
		   "  -h, --help\n  -V, --version\n");
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", no_argument, NULL, 'k' },
		{ "migrate", no_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = DEFAULT_CONFIG;
	bool check_only = false, migrate = false;
	struct config *cfg = NULL;
	struct cmdd_config ccfg;
	struct registry *reg = NULL;
	struct event_base *base = NULL;
	struct cmdd d;
	struct cqrs_err err = { 0 };
	int c, level, rc = 1;

	while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case 'k': check_only = true; break;
		case 'm': migrate = true; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("cqrs-cmdd %s\n", CQRS_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (cqrs_config_load(path, &cfg, &err) < 0) {
		fprintf(stderr, "cqrs-cmdd: %s\n", err.msg);
		return 1;
	}
	level = cqrs_log_level_parse(cqrs_config_get(cfg, "log", "level", "info"));
	if (level < 0) {
		fprintf(stderr, "cqrs-cmdd: log.level: \"%s\" is not error, warn, info or debug\n",
			cqrs_config_get(cfg, "log", "level", ""));
		goto out;
	}
	cqrs_log_set_level(level);
	if (cmdd_config_load(cfg, &ccfg, &err) < 0) {
		cqrs_log_error(NULL, "%s", err.msg);
		cmdd_config_clear(&ccfg);
		goto out;
	}
	reg = cqrs_registry_new();
	if (reg == NULL || cqrs_registry_load_list(reg, ccfg.plugins, &err) < 0) {
		cqrs_log_error(NULL, "%s", reg ? err.msg : "out of memory");
		cmdd_config_clear(&ccfg);
		goto out;
	}
	if (cqrs_registry_command_count(reg) == 0)
		cqrs_log_warn(NULL, "no command handlers loaded (cmd.plugins is \"%s\")", ccfg.plugins);
	if (check_only) {
		printf("configuration ok: %zu commands, %zu aggregates\n",
		       cqrs_registry_command_count(reg), cqrs_registry_aggregate_count(reg));
		cmdd_config_clear(&ccfg);
		rc = 0;
		goto out;
	}
	if (migrate) {
		struct store *st = NULL;
		int applied = 0;
		if (cqrs_store_connect(ccfg.conninfo, &st, &err) < 0 ||
		    cqrs_store_migrate(st, &applied, &err) < 0) {
			cqrs_log_error(NULL, "migrate: %s", err.msg);
			cqrs_store_free(st);
			cmdd_config_clear(&ccfg);
			goto out;
		}
		cqrs_store_free(st);
		cqrs_log_info(NULL, "migrations applied: %d", applied);
	}
	base = event_base_new();
	if (base == NULL) {
		cqrs_log_error(NULL, "cannot create the event loop");
		cmdd_config_clear(&ccfg);
		goto out;
	}
	if (cmdd_init(&d, base, &ccfg, reg, &err) < 0) {
		cqrs_log_error(NULL, "%s", err.msg);
		cmdd_fini(&d);
		goto out;
	}
	d.config_path = path;
	rc = cmdd_run(&d);
	cmdd_fini(&d);
out:
	if (base != NULL)
		event_base_free(base);
	cqrs_registry_free(reg);
	cqrs_config_free(cfg);
	return rc;
}

/* cqrs-tracker - publishes committed events from PostgreSQL to RabbitMQ. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "cqrs/log.h"
#include "tracker.h"

#define DEFAULT_CONFIG "/etc/cqrs/cqrs.conf"

static struct tracker *the_tracker;
static volatile sig_atomic_t terms;

static void
usage(FILE *f)
{
	fprintf(f, "usage: cqrs-tracker [-c FILE] [--check-config]\n\n"
		   "Reads newly committed events from PostgreSQL (store.conninfo) in commit-safe\n"
		   "order and publishes them to RabbitMQ (broker.url, exchange cqrs.events) with\n"
		   "publisher confirms, moving its checkpoint (tracker.name) after the confirms.\n"
		   "Trackers of the same name run one active, the others standing by.\n\n"
		   "  -c, --config FILE  configuration file (default " DEFAULT_CONFIG ")\n"
		   "      --check-config  load and check the configuration, then exit\n"
		   "  -h, --help\n  -V, --version\n");
}

/* First SIGTERM/SIGINT: finish the batch in flight, then exit 0. Second:
 * exit at once (the batch is published again by whoever runs next). */
static void
on_term(int sig)
{
	static const char msg[] = "cqrs-tracker: second signal, exiting at once\n";

	(void)sig;
	if (++terms > 1) {
		(void)!write(2, msg, sizeof(msg) - 1);
		_exit(1);
	}
	if (the_tracker != NULL)
		tracker_stop(the_tracker);
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", no_argument, NULL, 'k' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = DEFAULT_CONFIG;
	bool check_only = false;
	struct config *cfg = NULL;
	struct tracker_config tcfg = { 0 };
	struct tracker *t = NULL;
	struct cqrs_err err = { 0 };
	struct sigaction sa;
	int c, level, rc = 1;

	while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case 'k': check_only = true; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("cqrs-tracker %s\n", CQRS_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (cqrs_config_load(path, &cfg, &err) < 0) {
		fprintf(stderr, "cqrs-tracker: %s\n", err.msg);
		return 1;
	}
	level = cqrs_log_level_parse(cqrs_config_get(cfg, "log", "level", "info"));
	if (level < 0) {
		fprintf(stderr, "cqrs-tracker: log.level: \"%s\" is not error, warn, info or debug\n",
			cqrs_config_get(cfg, "log", "level", ""));
		goto out;
	}
	cqrs_log_set_level(level);
	if (tracker_config_load(cfg, &tcfg, &err) < 0) {
		cqrs_log_error(NULL, "%s", err.msg);
		goto out;
	}
	if (check_only) {
		printf("configuration ok: tracker \"%s\", batch_size %d\n", tcfg.name, tcfg.batch_size);
		rc = 0;
		goto out;
	}
	if (tracker_new(&tcfg, &t, &err) < 0) {
		cqrs_log_error(NULL, "%s", err.msg);
		goto out;
	}
	if (tracker_metrics_start(t, &err) < 0) {
		cqrs_log_error(NULL, "%s", err.msg);
		goto out;
	}
	the_tracker = t;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0;	/* no SA_RESTART: poll() returns at once */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	rc = tracker_run(t);
	the_tracker = NULL;
out:
	if (t != NULL)
		tracker_metrics_stop(t);
	tracker_free(t);
	tracker_config_clear(&tcfg);
	cqrs_config_free(cfg);
	return rc;
}

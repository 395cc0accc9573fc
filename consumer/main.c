/* cqrs-consumer - feeds events from its RabbitMQ queue to event-handler plugins. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "consumer.h"
#include "cqrs/log.h"

#define DEFAULT_CONFIG "/etc/cqrs/cqrs.conf"

static struct consumer *the_consumer;
static volatile sig_atomic_t terms;

static void
usage(FILE *f)
{
	fprintf(f, "usage: cqrs-consumer -n NAME [-c FILE] [--replay [--once]] [--check-config]\n\n"
		   "Runs the event-handler groups of [consumer.NAME] (plugins, groups) on the\n"
		   "queue consumer.NAME.queue (default cqrs.NAME): each event is handled once,\n"
		   "in stream order, in a PostgreSQL transaction with the consumer's\n"
		   "bookkeeping. A consumer that never ran first catches up from the store.\n\n"
		   "  -n, --name NAME    the consumer (section [consumer.NAME]); required\n"
		   "  -c, --config FILE  configuration file (default " DEFAULT_CONFIG ")\n"
		   "      --replay       reset the handlers' read models, feed them every event\n"
		   "                     of the store, then go on live\n"
		   "      --once         with --replay (or for a consumer that never ran): exit\n"
		   "                     once caught up with the store instead of going live\n"
		   "                     (`cqrsctl replay NAME` runs --replay --once)\n"
		   "      --check-config load the configuration and the plugins, then exit\n"
		   "  -h, --help\n  -V, --version\n");
}

/* First SIGTERM/SIGINT: finish the events in hand, ack, exit 0. Second: exit
 * at once (what was not acked is delivered again, as a duplicate if its
 * transaction committed). */
static void
on_term(int sig)
{
	static const char msg[] = "cqrs-consumer: second signal, exiting at once\n";

	(void)sig;
	if (++terms > 1) {
		(void)!write(2, msg, sizeof(msg) - 1);
		_exit(1);
	}
	if (the_consumer != NULL)
		consumer_stop(the_consumer);
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "name", required_argument, NULL, 'n' },
		{ "config", required_argument, NULL, 'c' },
		{ "replay", no_argument, NULL, 'r' },
		{ "once", no_argument, NULL, 'o' },
		{ "check-config", no_argument, NULL, 'k' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = DEFAULT_CONFIG;
	const char *name = NULL;
	bool check_only = false;
	struct consumer_run_opts ro = { 0 };
	struct config *cfg = NULL;
	struct consumer_config ccfg = { 0 };
	struct consumer *c = NULL;
	struct cqrs_err err = { 0 };
	struct sigaction sa;
	int ch, level, rc = 1;

	while ((ch = getopt_long(argc, argv, "n:c:hV", opts, NULL)) != -1) {
		switch (ch) {
		case 'n': name = optarg; break;
		case 'c': path = optarg; break;
		case 'r': ro.replay = true; break;
		case 'o': ro.once = true; break;
		case 'k': check_only = true; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("cqrs-consumer %s\n", CQRS_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc || name == NULL) {
		usage(stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (cqrs_config_load(path, &cfg, &err) < 0) {
		fprintf(stderr, "cqrs-consumer: %s\n", err.msg);
		return 1;
	}
	level = cqrs_log_level_parse(cqrs_config_get(cfg, "log", "level", "info"));
	if (level < 0) {
		fprintf(stderr, "cqrs-consumer: log.level: \"%s\" is not error, warn, info or debug\n",
			cqrs_config_get(cfg, "log", "level", ""));
		goto out;
	}
	cqrs_log_set_level(level);
	if (consumer_config_load(cfg, name, &ccfg, &err) < 0) {
		cqrs_log_error(NULL, "%s", err.msg);
		goto out;
	}
	if (consumer_new(&ccfg, &c, &err) < 0) {
		cqrs_log_error(NULL, "%s", err.msg);
		goto out;
	}
	if (check_only) {
		printf("configuration ok: consumer \"%s\", queue \"%s\", %zu handlers, bindings:",
		       ccfg.name, ccfg.queue, c->n_handlers);
		for (size_t i = 0; i < c->n_bindings; i++)
			printf(" %s", c->bindings[i]);
		printf("\n");
		rc = 0;
		goto out;
	}
	the_consumer = c;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0;	/* no SA_RESTART: poll() returns at once */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	rc = consumer_run(c, &ro);
	the_consumer = NULL;
out:
	consumer_free(c);
	consumer_config_clear(&ccfg);
	cqrs_config_free(cfg);
	return rc;
}

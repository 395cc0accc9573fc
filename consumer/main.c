/* cqrs-consumer - feeds events from its RabbitMQ queue to event-handler plugins. */
#include <stdio.h>

#include "config.h"
#include "consumer.h"
#include "cqrs/log.h"
#include "cqrs_daemon.h"

struct args {
	const char *name;
	struct consumer_run_opts ro;
};

static int
option(int val, const char *arg, void *ctx)
{
	struct args *a = ctx;

	switch (val) {
	case 'n': a->name = arg; break;
	case 'r': a->ro.replay = true; break;
	case 'o': a->ro.once = true; break;
	default: return -1;
	}
	return 0;
}

static int
options_done(void *ctx)
{
	return ((struct args *)ctx)->name == NULL ? -1 : 0;
}

static const struct option options[] = {
	{ "name", required_argument, NULL, 'n' },
	{ "replay", no_argument, NULL, 'r' },
	{ "once", no_argument, NULL, 'o' },
	{ NULL, 0, NULL, 0 },
};

static const char usage[] =
	"usage: cqrs-consumer -n NAME [-c FILE] [--replay [--once]] [--check-config]\n\n"
	"Runs the event-handler groups of [consumer.NAME] (plugins, groups) on the\n"
	"queue consumer.NAME.queue (default cqrs.NAME): each event is handled once,\n"
	"in stream order, in a PostgreSQL transaction with the consumer's\n"
	"bookkeeping. A consumer that never ran first catches up from the store.\n\n"
	"  -n, --name NAME    the consumer (section [consumer.NAME]); required\n"
	"  -c, --config FILE  configuration file (default " CQRS_CONFIG_DEFAULT ")\n"
	"      --replay       reset the handlers' read models, feed them every event\n"
	"                     of the store, then go on live\n"
	"      --once         with --replay (or for a consumer that never ran): exit\n"
	"                     once caught up with the store instead of going live\n"
	"                     (`cqrsctl replay NAME` runs --replay --once)\n"
	"      --check-config load the configuration and the plugins, then exit\n"
	"  -h, --help\n  -V, --version\n";

/* First SIGTERM/SIGINT: finish the events in hand, ack, exit 0. A second
 * one exits at once (what was not acked is delivered again, as a duplicate
 * if its transaction committed). */
static void
stop(void *arg)
{
	consumer_stop(arg);
}

int
main(int argc, char **argv)
{
	struct args a = { 0 };
	const struct cqrs_daemon_spec spec = {
		.name = "cqrs-consumer", .comp = "consumer", .usage = usage,
		.options = options, .short_options = "n:",
		.option = option, .options_done = options_done, .ctx = &a,
	};
	struct cqrs_daemon dm;
	struct consumer_config ccfg = { 0 };
	struct consumer *c = NULL;
	struct cqrs_err err = { 0 };
	int rc;

	if ((rc = cqrs_daemon_start(&dm, &spec, argc, argv)) != CQRS_DAEMON_RUN)
		return rc;
	rc = 1;
	if (consumer_config_load(dm.cfg, a.name, &ccfg, &err) < 0 ||
	    consumer_new(&ccfg, &c, &err) < 0) {
		cqrs_log_error(NULL, "%s", err.msg);
		goto out;
	}
	if (dm.check_config) {
		printf("configuration ok: consumer \"%s\", queue \"%s\", %zu handlers, bindings:",
		       ccfg.name, ccfg.queue, c->n_handlers);
		for (size_t i = 0; i < c->n_bindings; i++)
			printf(" %s", c->bindings[i]);
		printf("\n");
		rc = 0;
		goto out;
	}
	cqrs_daemon_signals(&dm, stop, c);
	rc = consumer_run(c, &a.ro);
out:
	cqrs_daemon_end(&dm);
	consumer_free(c);
	consumer_config_clear(&ccfg);
	return rc;
}

/* cqrs-tracker - publishes committed events from PostgreSQL to RabbitMQ. */
#include <stdio.h>

#include "config.h"
#include "cqrs/log.h"
#include "cqrs_daemon.h"
#include "tracker.h"

static const struct cqrs_daemon_spec spec = {
	.name = "cqrs-tracker",
	.comp = "tracker",
	.usage = "usage: cqrs-tracker [-c FILE] [--check-config]\n\n"
		 "Reads newly committed events from PostgreSQL (store.conninfo) in commit-safe\n"
		 "order and publishes them to RabbitMQ (broker.url, exchange cqrs.events) with\n"
		 "publisher confirms, moving its checkpoint (tracker.name) after the confirms.\n"
		 "Trackers of the same name run one active, the others standing by.\n\n"
		 "  -c, --config FILE  configuration file (default " CQRS_CONFIG_DEFAULT ")\n"
		 "      --check-config  load and check the configuration, then exit\n"
		 "  -h, --help\n  -V, --version\n",
};

/* First SIGTERM/SIGINT: finish the batch in flight, then exit 0. A second
 * one exits at once (the batch is published again by whoever runs next). */
static void
stop(void *arg)
{
	tracker_stop(arg);
}

int
main(int argc, char **argv)
{
	struct cqrs_daemon dm;
	struct tracker_config tcfg = { 0 };
	struct tracker *t = NULL;
	struct cqrs_err err = { 0 };
	int rc;

	if ((rc = cqrs_daemon_start(&dm, &spec, argc, argv)) != CQRS_DAEMON_RUN)
		return rc;
	rc = 1;
	if (tracker_config_load(dm.cfg, &tcfg, &err) < 0) {
		cqrs_log_error(NULL, "%s", err.msg);
		goto out;
	}
	if (dm.check_config) {
		printf("configuration ok: tracker \"%s\", batch_size %d\n", tcfg.name, tcfg.batch_size);
		rc = 0;
		goto out;
	}
	if (tracker_new(&tcfg, &t, &err) < 0) {
		cqrs_log_error(NULL, "%s", err.msg);
		goto out;
	}
	/* before the metrics address answers: a SIGTERM from then on stops cleanly */
	cqrs_daemon_signals(&dm, stop, t);
	if (tracker_metrics_start(t, &err) < 0) {
		cqrs_log_error(NULL, "%s", err.msg);
		goto out;
	}
	rc = tracker_run(t);
out:
	cqrs_daemon_end(&dm);
	if (t != NULL)
		tracker_metrics_stop(t);
	tracker_free(t);
	tracker_config_clear(&tcfg);
	return rc;
}

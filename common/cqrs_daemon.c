/* cqrs_daemon.c - options, config, log level, signals and watchdog of the daemons. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "clock.h"
#include "config.h"
#include "cqrs_daemon.h"
#include "secret.h"
#include "sdnotify.h"

/* val of --check-config: beyond every letter a daemon's option may use */
#define OPT_CHECK_CONFIG 0x100
#define OWN_OPTIONS_MAX 24

/*
 * The blocking shape's state. A signal handler can reach nothing else, so
 * it is process-wide: one daemon per process.
 */
static struct cqrs_daemon *volatile signal_daemon;
static volatile sig_atomic_t reload_due;
static char second_msg[128];
static size_t second_len;

static int
usage_error(const struct cqrs_daemon_spec *spec)
{
	fputs(spec->usage, stderr);
	return 2;
}

static int
parse(struct cqrs_daemon *d, int argc, char **argv)
{
	static const struct option common[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", no_argument, NULL, OPT_CHECK_CONFIG },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
	};
	const struct cqrs_daemon_spec *spec = d->spec;
	struct option opts[OWN_OPTIONS_MAX + 4 + 1];
	char shorts[64];
	size_t n = 0;
	int c;

	for (const struct option *o = spec->options; o != NULL && o->name != NULL; o++) {
		if (n == OWN_OPTIONS_MAX) {
			fprintf(stderr, "%s: more than %d options of its own\n", spec->name,
				OWN_OPTIONS_MAX);
			return 1;
		}
		opts[n++] = *o;
	}
	memcpy(opts + n, common, sizeof(common));
	memset(opts + n + 4, 0, sizeof(opts[0]));
	snprintf(shorts, sizeof(shorts), "c:hV%s", spec->short_options ? spec->short_options : "");
	optind = 0;		/* glibc: start afresh, even on another argv */
	while ((c = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			d->config_path = optarg;
			break;
		case OPT_CHECK_CONFIG:
			d->check_config = true;
			break;
		case 'h':
			fputs(spec->usage, stdout);
			return 0;
		case 'V':
			printf("%s %s\n", spec->name, CQRS_VERSION);
			return 0;
		case '?':
		case ':':
			return usage_error(spec);
		default:
			if (spec->option == NULL || spec->option(c, optarg, spec->ctx) != 0)
				return usage_error(spec);
			break;
		}
	}
	if (optind != argc)
		return usage_error(spec);
	if (spec->options_done != NULL && spec->options_done(spec->ctx) != 0)
		return usage_error(spec);
	return CQRS_DAEMON_RUN;
}

int
cqrs_daemon_start(struct cqrs_daemon *d, const struct cqrs_daemon_spec *spec, int argc,
		  char **argv)
{
	struct cqrs_err err = { 0 };
	int rc, level;

	memset(d, 0, sizeof(*d));
	d->spec = spec;
	d->config_path = CQRS_CONFIG_DEFAULT;
	d->log.comp = spec->comp;
	if ((rc = parse(d, argc, argv)) != CQRS_DAEMON_RUN)
		return rc;
	signal(SIGPIPE, SIG_IGN);
	if (cqrs_config_load(d->config_path, &d->cfg, &err) < 0) {
		fprintf(stderr, "%s: %s\n", spec->name, err.msg);
		return 1;
	}
	level = cqrs_log_level_parse(cqrs_config_get(d->cfg, "log", "level", "info"));
	if (level < 0) {
		fprintf(stderr, "%s: log.level: \"%s\" is not error, warn, info or debug\n", spec->name,
			cqrs_config_get(d->cfg, "log", "level", ""));
		cqrs_config_free(d->cfg);
		d->cfg = NULL;
		return 1;
	}
	cqrs_log_set_level(level);
	if (cqrs_secret_setup(d->cfg, &err) < 0) {
		fprintf(stderr, "%s: %s\n", spec->name, err.msg);
		cqrs_config_free(d->cfg);
		d->cfg = NULL;
		return 1;
	}
	return CQRS_DAEMON_RUN;
}

void
cqrs_daemon_end(struct cqrs_daemon *d)
{
	if (d == NULL)
		return;
	if (signal_daemon == d) {
		signal_daemon = NULL;
		reload_due = 0;
	}
	for (size_t i = 0; i < sizeof(d->ev) / sizeof(d->ev[0]); i++) {
		if (d->ev[i] != NULL)
			event_free(d->ev[i]);
		d->ev[i] = NULL;
	}
	cqrs_config_free(d->cfg);
	d->cfg = NULL;
}

int
cqrs_daemon_reload(struct cqrs_daemon *d)
{
	struct config *cfg = NULL;
	struct cqrs_err err = { 0 };
	bool announce = cqrs_sdnotify_serving();
	int level, rc = 0;

	if (announce)
		cqrs_sdnotify_reloading();
	if ((rc = cqrs_config_load(d->config_path, &cfg, &err)) < 0) {
		cqrs_log_error(&d->log, "reload: %s (keeping the running configuration)", err.msg);
	} else if ((level = cqrs_log_level_parse(cqrs_config_get(cfg, "log", "level", "info"))) < 0) {
		cqrs_log_error(&d->log, "reload: log.level \"%s\" is not error, warn, info or debug",
			       cqrs_config_get(cfg, "log", "level", ""));
		rc = CQRS_ECONFIG;
	} else if (d->reload != NULL && (rc = d->reload(d->reload_arg, cfg, &err)) < 0) {
		cqrs_log_error(&d->log, "reload: %s (keeping the running configuration)", err.msg);
	} else {
		cqrs_log_set_level(level);
		/* warn: seen at every level but error */
		cqrs_log_warn(&d->log, "reloaded %s: log.level=%s%s%s; other keys take effect at "
			      "restart", d->config_path, cqrs_log_level_name(level),
			      d->reload_what != NULL ? ", " : "",
			      d->reload_what != NULL ? d->reload_what : "");
	}
	cqrs_config_free(cfg);
	if (announce)
		cqrs_sdnotify_ready(NULL);
	return rc;
}

/* ---- the blocking shape ----------------------------------------------------------- */

/* Async-signal-safe: flags, write(2), _exit(2) and the daemon's stop(). */
static void
on_signal(int sig)
{
	struct cqrs_daemon *d = signal_daemon;

	if (sig == SIGHUP) {
		reload_due = 1;
		return;
	}
	if (d == NULL)
		return;
	if (++d->terms > 1) {
		(void)!write(2, second_msg, second_len);
		_exit(1);
	}
	if (d->stop != NULL)
		d->stop(d->stop_arg);
}

void
cqrs_daemon_signals(struct cqrs_daemon *d, void (*stop)(void *arg), void *arg)
{
	struct sigaction sa;
	int n;

	d->stop = stop;
	d->stop_arg = arg;
	d->terms = 0;
	n = snprintf(second_msg, sizeof(second_msg), "%s: second signal, exiting at once\n",
		     d->spec->name);
	second_len = n < 0 ? 0 : (size_t)n < sizeof(second_msg) ? (size_t)n : sizeof(second_msg) - 1;
	reload_due = 0;
	signal_daemon = d;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0;	/* no SA_RESTART: poll() returns at once */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
}

/* ---- the libevent shape ----------------------------------------------------------- */

static void
on_event_signal(evutil_socket_t sig, short what, void *arg)
{
	struct cqrs_daemon *d = arg;

	(void)what;
	if (sig == SIGHUP) {
		(void)cqrs_daemon_reload(d);
		return;
	}
	if (++d->terms > 1) {
		cqrs_log_warn(&d->log, "second signal: exiting now");
		event_base_loopbreak(d->base);
		return;
	}
	if (d->stop != NULL)
		d->stop(d->stop_arg);
}

int
cqrs_daemon_signals_event(struct cqrs_daemon *d, struct event_base *base, void (*stop)(void *arg),
			  void *arg)
{
	static const int sigs[3] = { SIGTERM, SIGINT, SIGHUP };

	d->stop = stop;
	d->stop_arg = arg;
	d->terms = 0;
	d->base = base;
	for (size_t i = 0; i < 3; i++) {
		d->ev[i] = evsignal_new(base, sigs[i], on_event_signal, d);
		if (d->ev[i] == NULL || evsignal_add(d->ev[i], NULL) < 0)
			return CQRS_ENOMEM;
	}
	return 0;
}

/* ---- watchdog ---------------------------------------------------------------------- */

void
cqrs_daemon_watchdog_init(struct cqrs_daemon_watchdog *w)
{
	uint64_t usec = cqrs_sdnotify_watchdog_usec();

	/* ping at half the interval, so one late turn is not a missed ping */
	w->interval_ms = (int64_t)(usec / 2000);
	if (usec > 0 && w->interval_ms == 0)
		w->interval_ms = 1;
	w->next_ms = 0;
}

int64_t
cqrs_daemon_tick(struct cqrs_daemon_watchdog *w)
{
	int64_t now;

	if (reload_due) {
		struct cqrs_daemon *d = signal_daemon;

		reload_due = 0;
		if (d != NULL)
			(void)cqrs_daemon_reload(d);
	}
	if (w->interval_ms <= 0)
		return INT64_MAX;
	now = cqrs_now_ms();
	if (now >= w->next_ms) {
		cqrs_sdnotify_watchdog();
		w->next_ms = now + w->interval_ms;
	}
	return w->next_ms - now;
}

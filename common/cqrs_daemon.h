/*
 * cqrs_daemon.h - the start and life that cqrs-cmdd, cqrs-tracker and
 * cqrs-consumer share (STYLE.md, "Lifecycle"): options, the configuration
 * file and log.level, signals, systemd's watchdog. A daemon's main.c keeps
 * what is its own: its options, its wiring, its loop.
 *
 *   struct cqrs_daemon dm;
 *   int rc = cqrs_daemon_start(&dm, &spec, argc, argv);
 *   if (rc != CQRS_DAEMON_RUN)
 *       return rc;                       // --help, --version, 2 or 1
 *   ... load the daemon's keys from dm.cfg; dm.check_config: print, end ...
 *   cqrs_daemon_signals(&dm, stop, x);   // blocking loop (tracker, consumer)
 *   rc = x_run(x);                       // calls cqrs_daemon_tick() as it turns
 *   cqrs_daemon_end(&dm);
 *
 * Signals, in either shape:
 * - SIGTERM or SIGINT, the first: stop(arg), which starts a graceful stop
 *   (drain, then the run returns and the daemon exits 0).
 * - the second: exit at once. The blocking shape writes
 *   "NAME: second signal, exiting at once" and _exit(1)s, because its loop
 *   may sit in a synchronous call; the libevent shape logs
 *   "second signal: exiting now" and breaks the loop, so the daemon drops
 *   what is in flight and cleans up.
 * - SIGHUP: re-reads the file for log.level, between RELOADING=1 and
 *   READY=1. A file that does not load, or a bad level, changes nothing.
 * - SIGPIPE: ignored (from cqrs_daemon_start() on).
 *
 * One daemon per process: the signal shapes are process-wide.
 */
#ifndef CQRS_CQRS_DAEMON_H
#define CQRS_CQRS_DAEMON_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>

#include "cqrs/log.h"

struct config;
struct cqrs_err;
struct event_base;
struct event;

/* cqrs_daemon_start(): go on and run (any other value is main()'s exit status) */
#define CQRS_DAEMON_RUN (-1)

struct cqrs_daemon_spec {
	const char *name;		/* "cqrs-tracker": --version and messages */
	const char *comp;		/* log component of the daemon's own lines: "tracker" */
	const char *usage;		/* --help's text, printed as is */
	/*
	 * The daemon's own options, beside -c/--config, --check-config,
	 * -h/--help and -V/--version: getopt_long's table (ending with a zero
	 * entry; NULL for none; at most 24), their short letters ("n:"), and
	 * option(), called with each one's val and argument (NULL without
	 * one). option() returning non-zero is a usage error.
	 */
	const struct option *options;
	const char *short_options;
	int (*option)(int val, const char *arg, void *ctx);
	/* After the options: non-zero when what is required is missing (a
	 * usage error). NULL: nothing is required. */
	int (*options_done)(void *ctx);
	void *ctx;
};

struct cqrs_daemon {
	const struct cqrs_daemon_spec *spec;	/* borrowed */
	const char *config_path;	/* -c FILE or CQRS_CONFIG_DEFAULT; borrowed from argv */
	bool check_config;		/* --check-config */
	struct config *cfg;		/* owned; freed by cqrs_daemon_end() */
	struct cqrs_log_ctx log;	/* comp = spec->comp */
	/* signals */
	void (*stop)(void *arg);
	void *stop_arg;
	volatile int terms;		/* SIGTERM/SIGINT seen */
	struct event_base *base;	/* borrowed: the libevent shape */
	struct event *ev[3];		/* its SIGTERM, SIGINT and SIGHUP events */
	/* SIGHUP: what the daemon takes from the new file besides log.level
	 * (reload_what names it in the log); a refusal keeps everything */
	int (*reload)(void *arg, const struct config *cfg, struct cqrs_err *err);
	void *reload_arg;
	const char *reload_what;
};

/*
 * Parses argv, ignores SIGPIPE, loads the file (with its CQRS_<SECTION>_<KEY>
 * environment overrides) and sets the log level from log.level (default
 * info). Returns CQRS_DAEMON_RUN, or what main() returns:
 * - 0 after --help (usage on stdout) or --version ("NAME VERSION");
 * - 2 on a usage error: an unknown option, a missing argument, an operand,
 *   the daemon's option() or options_done() refusing (usage on stderr);
 * - 1 when the file does not load ("NAME: MESSAGE" on stderr) or log.level
 *   is not a level ("NAME: log.level: \"X\" is not error, warn, info or debug").
 * d is cleared first; after CQRS_DAEMON_RUN, cqrs_daemon_end() it.
 * spec is borrowed and must outlive d.
 */
int cqrs_daemon_start(struct cqrs_daemon *d, const struct cqrs_daemon_spec *spec, int argc,
		      char **argv) __attribute__((warn_unused_result));

/* Undoes the signal set-up (a later first signal does nothing), frees the
 * events (before their event_base is freed) and the config. NULL-safe. */
void cqrs_daemon_end(struct cqrs_daemon *d);

/*
 * The blocking shape: sigaction handlers without SA_RESTART, so a poll() in
 * the loop returns with EINTR. stop(arg) runs in the handler: it must be
 * async-signal-safe (an atomic store, like tracker_stop()). A SIGHUP only
 * marks a reload due; the loop runs it from cqrs_daemon_tick().
 */
void cqrs_daemon_signals(struct cqrs_daemon *d, void (*stop)(void *arg), void *arg);

/*
 * The libevent shape: the signals are events of base, so stop(arg) and the
 * reload run in the loop and may log. CQRS_ENOMEM when libevent fails.
 */
int cqrs_daemon_signals_event(struct cqrs_daemon *d, struct event_base *base,
			      void (*stop)(void *arg), void *arg) __attribute__((warn_unused_result));

/*
 * SIGHUP's work: re-reads d->config_path for log.level (and what
 * d->reload takes) and logs the outcome. RELOADING=1 and READY=1 are sent around it when the daemon has
 * said READY=1 and not STOPPING=1. Returns 0, or the error's code when
 * nothing changed.
 */
int cqrs_daemon_reload(struct cqrs_daemon *d);

/* ---- systemd's watchdog, for loops of their own -------------------------------- */

struct cqrs_daemon_watchdog {
	int64_t interval_ms;		/* half of WATCHDOG_USEC (at least 1); 0: no pings */
	int64_t next_ms;		/* CLOCK_MONOTONIC ms when the next ping is due */
};

/* Reads WATCHDOG_USEC (and WATCHDOG_PID) once; the first tick pings. */
void cqrs_daemon_watchdog_init(struct cqrs_daemon_watchdog *w);

/*
 * The loop turns: sends WATCHDOG=1 when due, and runs the reload of a
 * SIGHUP that came in the blocking shape since the last tick. Returns the
 * ms until the next ping is due (0 or more), INT64_MAX without a watchdog:
 * a loop's longest sleep.
 */
int64_t cqrs_daemon_tick(struct cqrs_daemon_watchdog *w);

#endif

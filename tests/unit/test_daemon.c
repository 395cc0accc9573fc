/* test_daemon.c - the daemons' shared start: options, config, log level,
 * signals in both shapes, sd_notify around a reload, the watchdog's pace. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "clock.h"
#include "config.h"
#include "cqrs/log.h"
#include "cqrs_daemon.h"
#include "sdnotify.h"

#define USAGE "usage: cqrs-test -n NAME [--flag]\n"

/* what the daemon's own options set */
struct own {
	const char *name;
	int flags;
	int calls;
	bool refuse;		/* option() says no */
	bool need_name;		/* options_done() wants -n */
};

static int
own_option(int val, const char *arg, void *ctx)
{
	struct own *o = ctx;

	o->calls++;
	if (o->refuse)
		return -1;
	switch (val) {
	case 'n': o->name = arg; return 0;
	case 'f': o->flags++; return 0;
	default: return -1;
	}
}

static int
own_done(void *ctx)
{
	struct own *o = ctx;

	return o->need_name && o->name == NULL ? -1 : 0;
}

static const struct option own_options[] = {
	{ "name", required_argument, NULL, 'n' },
	{ "flag", no_argument, NULL, 'f' },
	{ NULL, 0, NULL, 0 },
};

static struct cqrs_daemon_spec
spec_for(struct own *o)
{
	struct cqrs_daemon_spec s = {
		.name = "cqrs-test", .comp = "test", .usage = USAGE,
		.options = own_options, .short_options = "n:",
		.option = own_option, .options_done = own_done, .ctx = o,
	};
	return s;
}

/* ---- small helpers ------------------------------------------------------------------ */

static char tmpdir[64];

static void
setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/cqrs-test-daemon.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	unsetenv("CQRS_LOG_LEVEL");
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	cqrs_log_set_level(CQRS_LOG_INFO);
}

static void
teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	(void)!system(cmd);
}

/* Writes text to DIR/name; returns the path (static buffer per call site ok). */
static const char *
write_file(const char *name, const char *text)
{
	static char path[2][128];
	static int turn;
	char *p = path[turn++ % 2];
	FILE *f;

	snprintf(p, sizeof(path[0]), "%s/%s", tmpdir, name);
	f = fopen(p, "w");
	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	ck_assert_int_eq(fclose(f), 0);
	return p;
}

/* Sends what fd (1 or 2) gets to a file until capture_end(). */
struct capture {
	int fd, saved;
	char path[128];
};

static void
capture_begin(struct capture *c, int fd)
{
	int tmp;

	fflush(NULL);
	c->fd = fd;
	snprintf(c->path, sizeof(c->path), "%s/capture.%d", tmpdir, fd);
	tmp = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(tmp, 0);
	c->saved = dup(fd);
	ck_assert_int_ge(c->saved, 0);
	ck_assert_int_ge(dup2(tmp, fd), 0);
	close(tmp);
}

/* What was captured (owned by the caller). */
static char *
capture_end(struct capture *c)
{
	char *text = NULL;
	size_t size = 0;
	FILE *f;

	fflush(NULL);
	ck_assert_int_ge(dup2(c->saved, c->fd), 0);
	close(c->saved);
	f = fopen(c->path, "r");
	ck_assert_ptr_nonnull(f);
	if (getdelim(&text, &size, '\0', f) < 0) {	/* empty */
		free(text);
		text = NULL;
	}
	fclose(f);
	if (text == NULL)
		text = strdup("");
	return text;
}

/* cqrs_daemon_start() on a NULL-terminated list of arguments, with stdout
 * and stderr captured into *out and *errout (owned by the caller). */
static int
start_with(struct cqrs_daemon *d, const struct cqrs_daemon_spec *spec, char **out, char **errout,
	   const char *const *args)
{
	char *argv[16];
	int argc = 0, rc;
	struct capture co, ce;

	argv[argc++] = (char *)"cqrs-test";
	for (; *args != NULL; args++)
		argv[argc++] = (char *)*args;
	argv[argc] = NULL;
	capture_begin(&co, 1);
	capture_begin(&ce, 2);
	rc = cqrs_daemon_start(d, spec, argc, argv);
	*errout = capture_end(&ce);
	*out = capture_end(&co);
	return rc;
}

#define START(d, spec, out, err, ...) \
	start_with(d, spec, out, err, (const char *const[]){ __VA_ARGS__, NULL })

/* A datagram socket standing in for systemd's NOTIFY_SOCKET. */
static int
notify_socket(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify", tmpdir);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	setenv("NOTIFY_SOCKET", sa.sun_path, 1);
	return fd;
}

/* Every datagram waiting on fd, each followed by '|'. sd_notify() has sent
 * them before it returned, so nothing is still on its way. */
static void
notes(int fd, char *buf, size_t size)
{
	size_t len = 0;
	ssize_t n;

	buf[0] = '\0';
	while (len + 2 < size && (n = recv(fd, buf + len, size - len - 2, 0)) > 0) {
		len += (size_t)n;
		buf[len++] = '|';
		buf[len] = '\0';
	}
}

/* ---- options ------------------------------------------------------------------------ */

START_TEST(help_and_version_exit_0_before_the_config)
{
	struct own o = { .need_name = true };
	struct cqrs_daemon_spec spec = spec_for(&o);
	struct cqrs_daemon d;
	char *out, *err;

	/* no -n and a file that does not exist: --help answers all the same */
	ck_assert_int_eq(START(&d, &spec, &out, &err, "-c", "/nonexistent/x.conf", "--help"), 0);
	ck_assert_str_eq(out, USAGE);
	ck_assert_str_eq(err, "");
	free(out);
	free(err);
	ck_assert_int_eq(START(&d, &spec, &out, &err, "-h"), 0);
	ck_assert_str_eq(out, USAGE);
	free(out);
	free(err);
	ck_assert_int_eq(START(&d, &spec, &out, &err, "--version"), 0);
	ck_assert_str_eq(out, "cqrs-test " CQRS_VERSION "\n");
	free(out);
	free(err);
	ck_assert_int_eq(START(&d, &spec, &out, &err, "-V"), 0);
	ck_assert_str_eq(out, "cqrs-test " CQRS_VERSION "\n");
	free(out);
	free(err);
}
END_TEST

START_TEST(own_and_common_options_are_taken)
{
	struct own o = { .need_name = true };
	struct cqrs_daemon_spec spec = spec_for(&o);
	struct cqrs_daemon d;
	const char *path = write_file("ok.conf", "[log]\nlevel = warn\n");
	char *out, *err;

	ck_assert_int_eq(START(&d, &spec, &out, &err, "-n", "projections", "--flag", "-c", path,
			       "--flag", "--check-config"), CQRS_DAEMON_RUN);
	ck_assert_str_eq(out, "");
	ck_assert_str_eq(err, "");
	ck_assert_str_eq(o.name, "projections");
	ck_assert_int_eq(o.flags, 2);
	ck_assert_int_eq(o.calls, 3);
	ck_assert_str_eq(d.config_path, path);
	ck_assert(d.check_config);
	ck_assert_ptr_nonnull(d.cfg);
	ck_assert_str_eq(cqrs_config_get(d.cfg, "log", "level", "?"), "warn");
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_WARN);
	cqrs_daemon_end(&d);
	ck_assert_ptr_null(d.cfg);
	free(out);
	free(err);

	/* long forms; without -c the default path, without --check-config not */
	memset(&o, 0, sizeof(o));
	ck_assert_int_eq(START(&d, &spec, &out, &err, "--name=x", "--config", path), CQRS_DAEMON_RUN);
	ck_assert_str_eq(o.name, "x");
	ck_assert(!d.check_config);
	cqrs_daemon_end(&d);
	free(out);
	free(err);
	memset(&o, 0, sizeof(o));
	ck_assert_int_eq(START(&d, &spec, &out, &err, "-n", "x"), 1);	/* the default file */
	ck_assert_str_eq(d.config_path, CQRS_CONFIG_DEFAULT);
	ck_assert_ptr_nonnull(strstr(err, "cqrs-test: "));
	ck_assert_ptr_nonnull(strstr(err, CQRS_CONFIG_DEFAULT));
	free(out);
	free(err);
}
END_TEST

/* One usage error: exit status 2, usage on stderr, nothing on stdout. */
static void
usage_error(struct own *o, const char *const *args)
{
	struct cqrs_daemon_spec spec = spec_for(o);
	struct cqrs_daemon d;
	char *out, *err;
	int rc;

	o->name = NULL;
	rc = start_with(&d, &spec, &out, &err, args);

	ck_assert_msg(rc == 2, "%s: rc %d, want 2", args[0] ? args[0] : "(none)", rc);
	ck_assert_str_eq(out, "");
	ck_assert_msg(strstr(err, USAGE) != NULL, "%s: stderr %s", args[0] ? args[0] : "-", err);
	ck_assert_ptr_null(d.cfg);
	free(out);
	free(err);
}

#define USAGE_ERROR(o, ...) usage_error(o, (const char *const[]){ __VA_ARGS__, NULL })

START_TEST(usage_errors_exit_2)
{
	const char *path = write_file("ok.conf", "");
	struct own o = { .need_name = true };
	struct cqrs_daemon_spec spec;

	USAGE_ERROR(&o, "--bogus", "-n", "x", "-c", path);
	USAGE_ERROR(&o, "-x", "-n", "x", "-c", path);
	USAGE_ERROR(&o, "-n", "x", "-c");	/* -c without its file */
	USAGE_ERROR(&o, "-n", "x", "-c", path, "operand");
	USAGE_ERROR(&o, "--check-config", "-c", path);	/* options_done: -n is required */
	USAGE_ERROR(&o, "--name");
	/* the daemon's option() refusing */
	o = (struct own){ .refuse = true };
	USAGE_ERROR(&o, "--flag", "-c", path);
	ck_assert_int_eq(o.calls, 1);
	/* options without an option() to take them */
	o = (struct own){ 0 };
	spec = spec_for(&o);
	spec.option = NULL;
	{
		struct cqrs_daemon d;
		char *out, *err;

		ck_assert_int_eq(START(&d, &spec, &out, &err, "--flag", "-c", path), 2);
		free(out);
		free(err);
		/* and a spec with none of its own: the daemon's letters are unknown */
		spec.options = NULL;
		spec.short_options = NULL;
		ck_assert_int_eq(START(&d, &spec, &out, &err, "-n", "x", "-c", path), 2);
		free(out);
		free(err);
		ck_assert_int_eq(START(&d, &spec, &out, &err, "-c", path), CQRS_DAEMON_RUN);
		cqrs_daemon_end(&d);
		free(out);
		free(err);
	}
}
END_TEST

/* ---- config and log level ----------------------------------------------------------- */

START_TEST(config_errors_exit_1)
{
	struct own o = { 0 };
	struct cqrs_daemon_spec spec = spec_for(&o);
	struct cqrs_daemon d;
	char *out, *err, want[256];
	const char *path;

	path = write_file("missing.conf", "");
	unlink(path);
	ck_assert_int_eq(START(&d, &spec, &out, &err, "-c", path), 1);
	snprintf(want, sizeof(want), "cqrs-test: %s", path);
	ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s", err);
	ck_assert_ptr_null(d.cfg);
	free(out);
	free(err);

	path = write_file("syntax.conf", "[log]\nthis line is no key\n");
	ck_assert_int_eq(START(&d, &spec, &out, &err, "-c", path), 1);
	snprintf(want, sizeof(want), "cqrs-test: %s:2", path);
	ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s", err);
	free(out);
	free(err);

	path = write_file("level.conf", "[log]\nlevel = loud\n");
	ck_assert_int_eq(START(&d, &spec, &out, &err, "-c", path), 1);
	ck_assert_str_eq(err, "cqrs-test: log.level: \"loud\" is not error, warn, info or debug\n");
	ck_assert_ptr_null(d.cfg);
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_INFO);
	free(out);
	free(err);

	/* the environment wins over the file, both ways */
	setenv("CQRS_LOG_LEVEL", "loud", 1);
	path = write_file("ok.conf", "[log]\nlevel = debug\n");
	ck_assert_int_eq(START(&d, &spec, &out, &err, "-c", path), 1);
	ck_assert_str_eq(err, "cqrs-test: log.level: \"loud\" is not error, warn, info or debug\n");
	free(out);
	free(err);
	setenv("CQRS_LOG_LEVEL", "error", 1);
	path = write_file("level.conf", "[log]\nlevel = loud\n");
	ck_assert_int_eq(START(&d, &spec, &out, &err, "-c", path), CQRS_DAEMON_RUN);
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_ERROR);
	cqrs_daemon_end(&d);
	free(out);
	free(err);
	unsetenv("CQRS_LOG_LEVEL");
	/* no level: info */
	cqrs_log_set_level(CQRS_LOG_DEBUG);
	path = write_file("empty.conf", "");
	ck_assert_int_eq(START(&d, &spec, &out, &err, "-c", path), CQRS_DAEMON_RUN);
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_INFO);
	cqrs_daemon_end(&d);
	free(out);
	free(err);
}
END_TEST

START_TEST(sigpipe_is_ignored_after_start)
{
	struct own o = { 0 };
	struct cqrs_daemon_spec spec = spec_for(&o);
	struct cqrs_daemon d;
	struct sigaction sa;
	char *out, *err;

	signal(SIGPIPE, SIG_DFL);
	ck_assert_int_eq(START(&d, &spec, &out, &err, "-c", write_file("ok.conf", "")),
			 CQRS_DAEMON_RUN);
	ck_assert_int_eq(sigaction(SIGPIPE, NULL, &sa), 0);
	ck_assert(sa.sa_handler == SIG_IGN);
	cqrs_daemon_end(&d);
	free(out);
	free(err);
}
END_TEST

/* ---- signals: the blocking shape ---------------------------------------------------- */

static volatile sig_atomic_t stops;

static void
count_stop(void *arg)
{
	(void)arg;
	stops++;
}

/* A started daemon on file path (for the signal tests). */
static void
started(struct cqrs_daemon *d, struct cqrs_daemon_spec *spec, struct own *o, const char *path)
{
	char *out, *err;

	*o = (struct own){ 0 };
	*spec = spec_for(o);
	ck_assert_int_eq(START(d, spec, &out, &err, "-c", path), CQRS_DAEMON_RUN);
	free(out);
	free(err);
}

START_TEST(first_term_stops_second_exits_1)
{
	int out[2], errp[2];
	pid_t pid;
	char buf[512] = { 0 };
	ssize_t n;
	size_t len = 0;
	int status;

	ck_assert_int_eq(pipe(out), 0);
	ck_assert_int_eq(pipe(errp), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct cqrs_daemon d;
		struct cqrs_daemon_spec spec;
		struct own o;
		struct sigaction sa;

		started(&d, &spec, &o, write_file("ok.conf", ""));
		dup2(errp[1], 2);
		stops = 0;
		cqrs_daemon_signals(&d, count_stop, NULL);
		/* no SA_RESTART: a poll() in the loop returns with EINTR */
		sigaction(SIGTERM, NULL, &sa);
		if (sa.sa_flags & SA_RESTART)
			_exit(10);
		raise(SIGTERM);
		dprintf(out[1], "after first: %d\n", (int)stops);
		raise(SIGINT);	/* INT counts as TERM */
		dprintf(out[1], "not reached\n");
		_exit(0);
	}
	close(out[1]);
	close(errp[1]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status), "status %#x", status);
	ck_assert_int_eq(WEXITSTATUS(status), 1);
	n = read(out[0], buf, sizeof(buf) - 1);
	ck_assert_int_gt(n, 0);
	ck_assert_str_eq(buf, "after first: 1\n");
	memset(buf, 0, sizeof(buf));
	while (len < sizeof(buf) - 1 && (n = read(errp[0], buf + len, sizeof(buf) - 1 - len)) > 0)
		len += (size_t)n;
	ck_assert_str_eq(buf, "cqrs-test: second signal, exiting at once\n");
	close(out[0]);
	close(errp[0]);
}
END_TEST

START_TEST(signals_after_end_do_nothing)
{
	pid_t pid = fork();
	int status;

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct cqrs_daemon d;
		struct cqrs_daemon_spec spec;
		struct own o;

		started(&d, &spec, &o, write_file("ok.conf", ""));
		stops = 0;
		cqrs_daemon_signals(&d, count_stop, NULL);
		cqrs_daemon_end(&d);
		raise(SIGTERM);
		_exit(stops == 0 ? 42 : 43);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 42, "status %#x", status);
}
END_TEST

/* SIGHUP marks a reload; the loop's tick runs it. */
START_TEST(hup_reloads_log_level_at_the_next_tick)
{
	struct cqrs_daemon d;
	struct cqrs_daemon_spec spec;
	struct own o;
	struct cqrs_daemon_watchdog w;
	struct capture ce;
	char *log, buf[512];
	int nfd;

	started(&d, &spec, &o, write_file("ok.conf", "[log]\nlevel = info\n"));
	cqrs_daemon_signals(&d, count_stop, NULL);
	cqrs_daemon_watchdog_init(&w);
	nfd = notify_socket();
	write_file("ok.conf", "[log]\nlevel = warn\n");
	raise(SIGHUP);
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_INFO);	/* not in the handler */
	capture_begin(&ce, 2);
	ck_assert_int_eq(cqrs_daemon_tick(&w), INT64_MAX);
	log = capture_end(&ce);
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_WARN);
	ck_assert_msg(strstr(log, "comp=test") && strstr(log, "log.level=warn; other keys take "
							      "effect at restart"), "%s", log);
	free(log);
	/* not READY=1 yet: a reload is not announced (systemd would take it
	 * for the start being over) */
	notes(nfd, buf, sizeof(buf));
	ck_assert_str_eq(buf, "");

	/* once ready: RELOADING=1 then READY=1; a bad level changes nothing */
	cqrs_sdnotify_ready(NULL);
	notes(nfd, buf, sizeof(buf));
	write_file("ok.conf", "[log]\nlevel = loud\n");
	raise(SIGHUP);
	capture_begin(&ce, 2);
	(void)cqrs_daemon_tick(&w);
	log = capture_end(&ce);
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_WARN);
	ck_assert_msg(strstr(log, "reload: log.level \\\"loud\\\" is not error, warn, info or debug"),
		      "%s", log);
	free(log);
	notes(nfd, buf, sizeof(buf));
	ck_assert_str_eq(buf, "RELOADING=1|READY=1|");
	/* a tick without a SIGHUP reloads nothing */
	write_file("ok.conf", "[log]\nlevel = debug\n");
	(void)cqrs_daemon_tick(&w);
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_WARN);
	/* a file that went away: kept running as it was */
	unlink(d.config_path);
	raise(SIGHUP);
	ck_assert_int_eq(cqrs_daemon_reload(&d), CQRS_ENOTFOUND);
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_WARN);
	/* after STOPPING=1, no READY=1 again */
	notes(nfd, buf, sizeof(buf));
	cqrs_sdnotify_stopping();
	write_file("ok.conf", "[log]\nlevel = error\n");
	ck_assert_int_eq(cqrs_daemon_reload(&d), 0);
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_ERROR);
	notes(nfd, buf, sizeof(buf));
	ck_assert_str_eq(buf, "STOPPING=1|");
	ck_assert_int_eq(stops, 0);	/* none of this was a stop */
	cqrs_daemon_end(&d);
	close(nfd);
}
END_TEST

/* ---- signals: the libevent shape ---------------------------------------------------- */

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	*(bool *)arg = true;
}

/* Turns the loop until stops reaches want (or, want < 0, the log level is
 * -want), the loop is broken, or 20 s. */
static bool
done(struct event_base *base, int want)
{
	if (event_base_got_break(base))
		return true;
	return want >= 0 ? stops >= want : cqrs_log_threshold == -want;
}

static void
turn_until(struct event_base *base, int want)
{
	bool late = false;
	struct timeval tv = { 20, 0 };
	struct event *deadline = evtimer_new(base, on_deadline, &late);

	evtimer_add(deadline, &tv);
	while (!late && !done(base, want))
		event_base_loop(base, EVLOOP_ONCE);
	event_free(deadline);
	ck_assert_msg(!late, "no signal event within 20 s");
}

START_TEST(event_shape_stops_then_breaks_the_loop)
{
	struct cqrs_daemon d;
	struct cqrs_daemon_spec spec;
	struct own o;
	struct event_base *base = event_base_new();
	struct capture ce;
	char *log;

	ck_assert_ptr_nonnull(base);
	started(&d, &spec, &o, write_file("ok.conf", "[log]\nlevel = info\n"));
	stops = 0;
	ck_assert_int_eq(cqrs_daemon_signals_event(&d, base, count_stop, NULL), 0);
	raise(SIGTERM);
	ck_assert_int_eq(stops, 0);	/* in the loop, not in the handler */
	turn_until(base, 1);
	ck_assert_int_eq(stops, 1);
	ck_assert(!event_base_got_break(base));

	/* SIGHUP: the reload runs in the loop */
	write_file("ok.conf", "[log]\nlevel = debug\n");
	raise(SIGHUP);
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_INFO);
	turn_until(base, -CQRS_LOG_DEBUG);
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_DEBUG);
	ck_assert_int_eq(stops, 1);

	capture_begin(&ce, 2);
	raise(SIGINT);
	turn_until(base, 2);
	log = capture_end(&ce);
	ck_assert_int_eq(stops, 1);
	ck_assert(event_base_got_break(base));
	ck_assert_msg(strstr(log, "second signal: exiting now") && strstr(log, "comp=test"), "%s", log);
	free(log);
	cqrs_daemon_end(&d);
	event_base_free(base);
}
END_TEST

/* ---- watchdog ----------------------------------------------------------------------- */

START_TEST(watchdog_pings_at_half_the_interval)
{
	struct cqrs_daemon_watchdog w;
	char buf[256];
	int nfd = notify_socket();
	int64_t left;

	cqrs_daemon_watchdog_init(&w);
	ck_assert_int_eq(w.interval_ms, 0);
	ck_assert_int_eq(cqrs_daemon_tick(&w), INT64_MAX);
	notes(nfd, buf, sizeof(buf));
	ck_assert_str_eq(buf, "");

	setenv("WATCHDOG_USEC", "30000000", 1);	/* 30 s */
	cqrs_daemon_watchdog_init(&w);
	ck_assert_int_eq(w.interval_ms, 15000);
	left = cqrs_daemon_tick(&w);		/* the first tick pings */
	ck_assert_int_gt(left, 14000);
	ck_assert_int_le(left, 15000);
	left = cqrs_daemon_tick(&w);		/* the next one waits */
	ck_assert_int_gt(left, 14000);
	notes(nfd, buf, sizeof(buf));
	ck_assert_str_eq(buf, "WATCHDOG=1|");
	w.next_ms = cqrs_now_ms() - 1;	/* due */
	(void)cqrs_daemon_tick(&w);
	notes(nfd, buf, sizeof(buf));
	ck_assert_str_eq(buf, "WATCHDOG=1|");

	setenv("WATCHDOG_USEC", "1000", 1);	/* 1 ms: at least 1 ms, not 0 */
	cqrs_daemon_watchdog_init(&w);
	ck_assert_int_eq(w.interval_ms, 1);
	/* for another process: none */
	setenv("WATCHDOG_USEC", "30000000", 1);
	setenv("WATCHDOG_PID", "1", 1);
	cqrs_daemon_watchdog_init(&w);
	ck_assert_int_eq(w.interval_ms, 0);
	close(nfd);
}
END_TEST

static Suite *
daemon_suite(void)
{
	Suite *s = suite_create("daemon");
	TCase *tc = tcase_create("options");
	TCase *sig = tcase_create("signals");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, help_and_version_exit_0_before_the_config);
	tcase_add_test(tc, own_and_common_options_are_taken);
	tcase_add_test(tc, usage_errors_exit_2);
	tcase_add_test(tc, config_errors_exit_1);
	tcase_add_test(tc, sigpipe_is_ignored_after_start);
	suite_add_tcase(s, tc);
	/* these change the process's signal dispositions: run in fork mode
	 * (tests/run.sh), each in a process of its own */
	tcase_add_checked_fixture(sig, setup, teardown);
	tcase_set_timeout(sig, 60);
	tcase_add_test(sig, first_term_stops_second_exits_1);
	tcase_add_test(sig, signals_after_end_do_nothing);
	tcase_add_test(sig, hup_reloads_log_level_at_the_next_tick);
	tcase_add_test(sig, event_shape_stops_then_breaks_the_loop);
	tcase_add_test(sig, watchdog_pings_at_half_the_interval);
	suite_add_tcase(s, sig);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(daemon_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

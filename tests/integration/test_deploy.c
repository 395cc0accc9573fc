/*
 * test_deploy.c - cqrs as a Debian admin deploys it (docs/deploy.md):
 *
 *   units      `systemd-analyze verify` on deploy/systemd/ (through
 *              tests/deploy/verify-units.sh); the example configuration
 *              documents every key, and its defaults load; --check-config
 *              prints the memory bound that docs/deploy.md gives
 *   install    `make install DESTDIR=... PREFIX=/usr` writes the expected
 *              tree; a plugin built out of tree against the installed
 *              headers with `pkg-config cqrs` is loaded by the installed
 *              daemon and runs commands
 *   systemd    socket activation by systemd-socket-activate; a restart on a
 *              held socket refuses nobody; the notify protocol in order:
 *              READY=1, STATUS=, WATCHDOG=1 (at half of WATCHDOG_USEC),
 *              STOPPING=1
 *   metrics    cqrs-cmdd's /metrics scraped and parsed as counters move,
 *              /health following the store, the address rules
 *
 * The daemons run as separate processes against the shared PostgreSQL of
 * tests/run.sh.
 */
#include <check.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../cmd/cmdd.h"
#include "daemon.h"
#include "fixture.h"
#include "scrape.h"

#define SOCKET_ACTIVATE "/usr/bin/systemd-socket-activate"

static char *conninfo;

static const char *
db(void)
{
	if (conninfo == NULL)
		conninfo = daemon_gc(fixture_db_new(true));
	return conninfo;
}

static char *scratch_dirs[16];
static int n_scratch;

/* A fresh temporary directory, removed after a test that passes (kept
 * with CQRS_TEST_KEEP). */
static const char *
scratch(void)
{
	ck_assert_int_lt(n_scratch, 16);
	scratch_dirs[n_scratch] = fixture_tmpdir();
	return scratch_dirs[n_scratch++];
}

static void
setup(void)
{
	conninfo = NULL;
	n_scratch = 0;
}

static void
teardown(void)
{
	for (int i = 0; i < n_scratch; i++) {
		char *cmd = NULL;
		if (getenv("CQRS_TEST_KEEP") == NULL &&
		    asprintf(&cmd, "rm -rf '%s'", scratch_dirs[i]) >= 0 && system(cmd) != 0)
			fprintf(stderr, "test_deploy: could not remove %s\n", scratch_dirs[i]);
		free(cmd);
		free(scratch_dirs[i]);
	}
	n_scratch = 0;
	daemon_gc_run();
}

static long long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static char *
slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	long n;

	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	ck_assert_ptr_nonnull(buf);
	n = (long)fread(buf, 1, (size_t)n, f);
	buf[n] = '\0';
	fclose(f);
	return daemon_gc(buf);
}

static void
write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	ck_assert_msg(f != NULL, "cannot write %s: %s", path, strerror(errno));
	fputs(text, f);
	ck_assert_int_eq(fclose(f), 0);
}

/* Runs a shell command line with stderr folded into the output (gc'd). */
static int
sh(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int
sh(char **out, const char *fmt, ...)
{
	char *cmd, *full, *o = NULL;
	va_list ap;
	int rc;

	va_start(ap, fmt);
	ck_assert_int_ge(vasprintf(&cmd, fmt, ap), 0);
	va_end(ap);
	ck_assert_int_ge(asprintf(&full, "( %s ) 2>&1", cmd), 0);
	rc = fixture_run(full, &o);
	free(cmd);
	free(full);
	if (out != NULL)
		*out = daemon_gc(o);
	else
		free(o);
	return rc;
}

/* ---- processes started here (not through tests/lib/daemon.c) ------------------------ */

/*
 * Starts argv[0] with stdout and stderr appended to logpath. listen_fd >= 0
 * is passed as fd 3 the way systemd does it (LISTEN_FDS=1, LISTEN_PID).
 * env: NULL-terminated NAME=VALUE strings added to the environment.
 */
static pid_t
spawn(char *const argv[], const char *logpath, int listen_fd, const char *const *env)
{
	pid_t pid;

	fflush(NULL);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
		int nullfd = open("/dev/null", O_RDONLY);
		if (logfd < 0 || nullfd < 0 || dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 ||
		    dup2(logfd, 2) < 0)
			_exit(126);
		if (listen_fd >= 0) {
			char pidbuf[24];
			if (dup2(listen_fd, 3) < 0 || fcntl(3, F_SETFD, 0) < 0)
				_exit(126);
			snprintf(pidbuf, sizeof(pidbuf), "%d", (int)getpid());
			setenv("LISTEN_FDS", "1", 1);
			setenv("LISTEN_PID", pidbuf, 1);
		}
		for (int fd = listen_fd >= 0 ? 4 : 3; fd < 1024; fd++)
			close(fd);
		unsetenv("NOTIFY_SOCKET");
		unsetenv("WATCHDOG_USEC");
		unsetenv("WATCHDOG_PID");
		for (int i = 0; env != NULL && env[i] != NULL; i++)
			putenv((char *)env[i]);
		signal(SIGPIPE, SIG_DFL);
		execv(argv[0], argv);
		dprintf(2, "spawn: exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	return pid;
}

/* Exit status (128 + signal when killed), or -1 if it still runs after timeout_ms. */
static int
wait_exit(pid_t pid, int timeout_ms)
{
	long long deadline = now_ms() + timeout_ms;
	int status;

	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		ck_assert_int_eq(r, 0);
		if (now_ms() > deadline)
			return -1;
		sleep_ms(20);
	}
}

static void
kill_wait(pid_t pid)
{
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

/* Waits until something accepts connections at path. */
static bool
wait_accepting(const char *path, pid_t pid, int timeout_ms)
{
	long long deadline = now_ms() + timeout_ms;

	while (now_ms() < deadline) {
		struct daemon_conn *c = daemon_conn_try_open(path);
		if (c != NULL) {
			daemon_conn_close(c);
			return true;
		}
		if (pid > 0 && waitpid(pid, NULL, WNOHANG) == pid)
			return false;
		sleep_ms(20);
	}
	return false;
}

static bool
wait_exists(const char *path, int timeout_ms)
{
	long long deadline = now_ms() + timeout_ms;
	struct stat st;

	while (now_ms() < deadline) {
		if (stat(path, &st) == 0)
			return true;
		sleep_ms(20);
	}
	return false;
}

/* A listening Unix socket at path, as systemd's .socket unit holds one. */
static int
listen_unix(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	ck_assert_uint_lt(strlen(path), sizeof(sun.sun_path));
	memcpy(sun.sun_path, path, strlen(path) + 1);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0 || listen(fd, 64) != 0)
		ck_abort_msg("listen %s: %s", path, strerror(errno));
	return fd;
}

/* A config for a cqrs-cmdd started by hand: the bank plugin (or plugins). */
static char *
write_cmdd_conf(const char *dir, const char *plugins)
{
	char *path = daemon_fmt("%s/cqrs.conf", dir);

	write_file(path, daemon_fmt("[store]\nconninfo = %s\n[cmd]\nsocket = %s/cmd.sock\n"
				    "plugins = %s\n[log]\nlevel = info\n",
				    db(), dir, plugins ? plugins : fixture_plugin("bank")));
	return path;
}

static const char *
open_line(const char *agg)
{
	return daemon_fmt("{\"command\":\"account.open\",\"aggregate_id\":\"%s\","
			  "\"data\":{\"owner\":\"o\"}}", agg);
}

/* ---- units and the example configuration --------------------------------------------- */

START_TEST(units_pass_systemd_analyze_verify)
{
	char *out;
	int rc = sh(&out, "sh %s/tests/deploy/verify-units.sh %s", CQRS_SRCDIR, CQRS_BUILDDIR);

	ck_assert_msg(rc == 0, "verify-units.sh exit %d:\n%s", rc, out);
	/* every unit of the design was verified */
	ck_assert_msg(strstr(out, "cqrs-cmdd.socket: ok") && strstr(out, "cqrs-cmdd.service: ok") &&
		      strstr(out, "cqrs-tracker.service: ok") &&
		      strstr(out, "cqrs-consumer@.service: ok"), "%s", out);
}
END_TEST

START_TEST(units_say_what_the_design_says)
{
	static const char *const units[] = { "cqrs-cmdd.service", "cqrs-tracker.service",
					     "cqrs-consumer@.service" };
	static const char *const must[] = {
		"Type=notify\n", "User=cqrs\n", "Group=cqrs\n", "Restart=on-failure\n",
		"WatchdogSec=", "StateDirectory=cqrs\n", "ProtectSystem=strict\n",
		"ProtectHome=yes\n", "PrivateTmp=yes\n", "NoNewPrivileges=yes\n",
		"RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n",
		"SystemCallFilter=@system-service\n", "CapabilityBoundingSet=\n",
		"MemoryDenyWriteExecute=yes\n", "LockPersonality=yes\n", "RestrictNamespaces=yes\n",
		"ProtectKernelTunables=yes\n", "ProtectKernelModules=yes\n",
	};
	const char *sock, *svc, *cons;

	for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
		const char *text = slurp(daemon_fmt("%s/deploy/systemd/%s", CQRS_SRCDIR, units[u]));
		ck_assert_msg(text != NULL, "deploy/systemd/%s is missing", units[u]);
		for (size_t i = 0; i < sizeof(must) / sizeof(must[0]); i++)
			ck_assert_msg(strstr(text, must[i]) != NULL, "%s lacks %s", units[u], must[i]);
		ck_assert_msg(strstr(text, "DynamicUser=yes") == NULL, "%s", units[u]);
	}
	sock = slurp(daemon_fmt("%s/deploy/systemd/cqrs-cmdd.socket", CQRS_SRCDIR));
	ck_assert_ptr_nonnull(sock);
	ck_assert_msg(strstr(sock, "ListenStream=/run/cqrs/cmd.sock\n") != NULL, "%s", sock);
	/* senders are not the daemons' group, which reads cqrs.conf */
	ck_assert_msg(strstr(sock, "\nSocketGroup=cqrs-clients\n") != NULL, "%s", sock);
	svc = slurp(daemon_fmt("%s/deploy/systemd/cqrs-cmdd.service", CQRS_SRCDIR));
	ck_assert_msg(strstr(svc, "Requires=cqrs-cmdd.socket\n") != NULL, "%s", svc);
	ck_assert_msg(strstr(svc, "RuntimeDirectory=cqrs\n") != NULL &&
		      strstr(svc, "RuntimeDirectoryPreserve=yes\n") != NULL,
		      "the runtime directory holds the socket: it must survive restarts");
	ck_assert_msg(strstr(svc, "ExecStart=@BINDIR@/cqrs-cmdd -c @SYSCONFDIR@/cqrs/cqrs.conf\n"),
		      "%s", svc);
	cons = slurp(daemon_fmt("%s/deploy/systemd/cqrs-consumer@.service", CQRS_SRCDIR));
	ck_assert_msg(strstr(cons, "ExecStart=@BINDIR@/cqrs-consumer -c @SYSCONFDIR@/cqrs/cqrs.conf "
				   "-n %i\n") != NULL, "%s", cons);
}
END_TEST

/* Whether the [section] of text has key as a line "key = ..." or "#key = ...". */
static bool
documents(const char *text, const char *section, const char *key)
{
	const char *s = strstr(text, daemon_fmt("\n[%s]\n", section));
	const char *end;

	if (s == NULL)
		return false;
	s += strlen(section) + 3;
	end = strstr(s, "\n[");
	for (const char *p = s; p != NULL && (end == NULL || p < end); p = strchr(p, '\n')) {
		p += *p == '\n';
		if (*p == '#')
			p++;
		if (strncmp(p, key, strlen(key)) == 0 && strncmp(p + strlen(key), " =", 2) == 0)
			return true;
	}
	return false;
}

START_TEST(example_config_documents_every_key)
{
	static const char *const cmd_keys[] = { "socket", "socket_mode", "socket_group", "plugins",
		"pool_size", "max_connections", "max_request_bytes", "idle_timeout", "shutdown_timeout",
		"store_timeout", "cache_size",
		"snapshot_every", "max_retries", "batch_max", "append_connections", "max_pipeline", "client_budget", "memory_budget",
		"write_timeout", "http", "http_allow_remote" };
	static const char *const tracker_keys[] = { "name", "batch_size", "poll_ms", "lag_warn",
		"confirm_timeout", "status_interval", "http" };
	static const char *const consumer_keys[] = { "plugins", "groups", "queue", "queue_type",
		"delivery_limit", "prefetch", "batch_size", "from", "retry_limit", "retry_backoff",
		"retry_backoff_max", "catchup_batch", "cmd_timeout", "status_interval", "http" };
	static const char *const consumers[] = { "projections", "notifications", "transfers" };
	const char *example = daemon_fmt("%s/deploy/cqrs.conf.example", CQRS_SRCDIR);
	const char *text = slurp(example);
	const char *dir = scratch();
	const char *live = daemon_fmt("%s/live.conf", dir);
	bool have_consumer = access(daemon_fmt("%s/consumer/main.c", CQRS_SRCDIR), F_OK) == 0;
	char *out;
	int rc;

	ck_assert_msg(text != NULL, "deploy/cqrs.conf.example is missing");
	for (size_t i = 0; i < sizeof(cmd_keys) / sizeof(cmd_keys[0]); i++)
		ck_assert_msg(documents(text, "cmd", cmd_keys[i]), "[cmd] %s is not documented",
			      cmd_keys[i]);
	for (size_t i = 0; i < sizeof(tracker_keys) / sizeof(tracker_keys[0]); i++)
		ck_assert_msg(documents(text, "tracker", tracker_keys[i]),
			      "[tracker] %s is not documented", tracker_keys[i]);
	for (size_t i = 0; i < sizeof(consumer_keys) / sizeof(consumer_keys[0]); i++)
		ck_assert_msg(documents(text, "consumer.projections", consumer_keys[i]),
			      "[consumer.projections] %s is not documented", consumer_keys[i]);
	ck_assert(documents(text, "store", "conninfo"));
	ck_assert(documents(text, "broker", "url"));
	ck_assert(documents(text, "log", "level"));
	/* the defaults the design names */
	ck_assert(strstr(text, "\n#socket = /run/cqrs/cmd.sock\n") != NULL);
	ck_assert(strstr(text, "\n#socket_mode = 0660\n") != NULL);
	ck_assert(strstr(text, "\n#pool_size = 8\n") != NULL);
	ck_assert(strstr(text, "\n#snapshot_every = 500\n") != NULL);
	ck_assert(strstr(text, "\n#queue = cqrs.projections\n") != NULL);
	/* three consumers for the bank's three groups */
	ck_assert(strstr(text, "\n[consumer.notifications]\n") && strstr(text, "\n[consumer.transfers]\n"));

	/* as shipped: the daemons take it (plugins from the build) */
	rc = sh(&out, "CQRS_CMD_PLUGINS=%s %s -c %s --check-config", fixture_plugin("bank"),
		fixture_bin("cqrs-cmdd"), example);
	ck_assert_msg(rc == 0 && strstr(out, "configuration ok") != NULL, "exit %d:\n%s", rc, out);
	rc = sh(&out, "%s -c %s --check-config", fixture_bin("cqrs-tracker"), example);
	ck_assert_msg(rc == 0, "cqrs-tracker: exit %d:\n%s", rc, out);
	for (size_t i = 0; have_consumer && i < sizeof(consumers) / sizeof(consumers[0]); i++) {
		char *upper = daemon_fmt("%s", consumers[i]);
		for (char *p = upper; *p != '\0'; p++)
			*p = (char)toupper((unsigned char)*p);
		rc = sh(&out, "CQRS_CONSUMER_%s_PLUGINS=%s %s -c %s -n %s --check-config",
			upper, fixture_plugin("bank"),
			fixture_bin("cqrs-consumer"), example, consumers[i]);
		ck_assert_msg(rc == 0 && strstr(out, "configuration ok") != NULL,
			      "cqrs-consumer -n %s: exit %d:\n%s", consumers[i], rc, out);
	}
	/* every "#key = default" of [cmd], [store] and [log] made live still loads:
	 * the keys exist and the defaults parse */
	rc = sh(&out, "sed -E 's/^#([a-z_]+ =( .*)?)$/\\1/' %s > %s && grep -c '^http_allow_remote = ' %s",
		example, live, live);
	ck_assert_msg(rc == 0, "%s", out);
	rc = sh(&out, "CQRS_CMD_PLUGINS=%s %s -c %s --check-config", fixture_plugin("bank"),
		fixture_bin("cqrs-cmdd"), live);
	ck_assert_msg(rc == 0 && strstr(out, "configuration ok: 7 commands") != NULL,
		      "the example's defaults made live: exit %d:\n%s", rc, out);
	/* the same for the tracker and the consumer */
	rc = sh(&out, "%s -c %s --check-config", fixture_bin("cqrs-tracker"), live);
	ck_assert_msg(rc == 0, "cqrs-tracker, the defaults made live: exit %d:\n%s", rc, out);
	if (have_consumer) {
		rc = sh(&out, "CQRS_CONSUMER_PROJECTIONS_PLUGINS=%s %s -c %s -n projections "
			"--check-config", fixture_plugin("bank"), fixture_bin("cqrs-consumer"),
			live);
		ck_assert_msg(rc == 0, "cqrs-consumer, the defaults made live: exit %d:\n%s", rc,
			      out);
	}
}
END_TEST

/* "memory bound: N bytes" of cqrs-cmdd --check-config on conf, with env set. */
static size_t
memory_bound(const char *env, const char *conf)
{
	const char *line;
	size_t n = 0;
	char *out;
	int rc;

	rc = sh(&out, "%s CQRS_CMD_PLUGINS=%s %s -c %s --check-config", env,
		fixture_plugin("bank"), fixture_bin("cqrs-cmdd"), conf);
	ck_assert_msg(rc == 0, "%s: exit %d:\n%s", env, rc, out);
	line = strstr(out, "\nmemory bound: ");
	ck_assert_msg(line != NULL && strstr(out, "configuration ok") < line,
		      "%s: no \"memory bound:\" line after \"configuration ok\":\n%s", env, out);
	ck_assert_msg(sscanf(line + 1, "memory bound: %zu bytes", &n) == 1, "%s", line);
	/* what the figure leaves out is named next */
	line = strchr(line + 1, '\n');
	ck_assert_msg(line != NULL && strncmp(line, "\nnot counted: ", 14) == 0 &&
		      strstr(line, "cache_size") != NULL && strstr(line, "snapshot") != NULL,
		      "%s: no \"not counted:\" line naming the cache and the loads:\n%s", env, out);
	return n;
}

/*
 * The figure of docs/deploy.md, "How much memory cqrs-cmdd can hold": the
 * defaults give the sum it shows, and each setting moves it by its term.
 */
START_TEST(check_config_prints_the_memory_bound)
{
	const size_t kib = 1024, mib = 1024 * 1024;
	const size_t conn = CMDD_CLIENT_FLOOR + CMDD_CLIENT_OVERHEAD;
	const char *example = daemon_fmt("%s/deploy/cqrs.conf.example", CQRS_SRCDIR);
	const char *live = daemon_fmt("%s/live.conf", scratch());
	const char *doc = slurp(daemon_fmt("%s/docs/deploy.md", CQRS_SRCDIR));
	size_t defaults, want;
	char *out;

	/* every key at its default, written out */
	ck_assert_int_eq(sh(&out, "sed -E 's/^#([a-z_]+ =( .*)?)$/\\1/' %s > %s", example, live), 0);
	defaults = memory_bound("", live);
	/* memory_budget + max_connections x (floor + connection) + 2 x
	 * max_request_bytes + a read + pool_size x (client_budget + a batch) */
	want = 256 * mib + 1024 * conn + 2 * mib + 64 * kib + 8 * (16 * mib + CMDD_BATCH_BYTES);
	ck_assert_msg(defaults == want, "the defaults give %zu bytes, the formula %zu", defaults, want);
	ck_assert_msg(CMDD_READ_CHUNK == 64 * kib && conn == 42 * kib, "the constants moved: "
		      "docs/deploy.md and this test say 64 KiB and 42 KiB");
	/* a file without the keys gives the same (the example's defaults are the code's) */
	ck_assert_uint_eq(memory_bound("", write_cmdd_conf(scratch(), NULL)), defaults);
	ck_assert_msg(doc != NULL && strstr(doc, daemon_fmt("%zu bytes", defaults)) != NULL,
		      "docs/deploy.md does not give the default figure, %zu bytes", defaults);

	ck_assert_uint_eq(defaults - memory_bound("CQRS_CMD_MEMORY_BUDGET=64M", live), 192 * mib);
	ck_assert_uint_eq(memory_bound("CQRS_CMD_MAX_CONNECTIONS=2048", live) - defaults, 1024 * conn);
	ck_assert_uint_eq(defaults - memory_bound("CQRS_CMD_MAX_CONNECTIONS=24", live), 1000 * conn);
	ck_assert_uint_eq(memory_bound("CQRS_CMD_MAX_REQUEST_BYTES=4M", live) - defaults, 6 * mib);
	ck_assert_uint_eq(memory_bound("CQRS_CMD_POOL_SIZE=16", live) - defaults, 8 * 17 * mib);
	ck_assert_msg(CMDD_BATCH_BYTES == mib, "docs/deploy.md says 1 MiB per connection for a batch");
	/* libpq's buffer is a power of two: 16 KiB doubled up to client_budget */
	ck_assert_uint_eq(memory_bound("CQRS_CMD_CLIENT_BUDGET=20M", live) - defaults, 8 * 16 * mib);
	ck_assert_uint_eq(defaults - memory_bound("CQRS_CMD_CLIENT_BUDGET=4M", live), 8 * 12 * mib);
	/* the data's part is named, not counted */
	ck_assert_uint_eq(memory_bound("CQRS_CMD_CACHE_SIZE=1000000 CQRS_CMD_SNAPSHOT_EVERY=0", live),
			  defaults);
}
END_TEST

/* ---- make install -------------------------------------------------------------------- */

static char *stage;		/* DESTDIR of one install per run of the tcase */
static int stage_rc = -1;
static char *stage_log;

/* make's own command-line variables reach the sub-make through MAKEFLAGS;
 * a sanitizer build is named after its sanitizers (build/san-X-Y). */
static const char *
make_install_cmd(const char *destdir, const char *prefix)
{
	const char *b = strrchr(CQRS_BUILDDIR, '/');
	char san[64] = "";

	if (b != NULL && strncmp(b + 1, "san-", 4) == 0) {
		snprintf(san, sizeof(san), "SANITIZE=%s", b + 5);
		for (char *p = san; *p != '\0'; p++)
			if (*p == '-')
				*p = ',';
	}
	return daemon_fmt("cd %s && env -u MAKELEVEL make --no-print-directory install "
			  "DESTDIR=%s %s%s %s", CQRS_SRCDIR, destdir, prefix ? "PREFIX=" : "",
			  prefix ? prefix : "", san);
}

static void
stage_setup(void)
{
	char *out = NULL;

	stage = fixture_tmpdir();
	stage_rc = fixture_run(daemon_fmt("( %s ) 2>&1", make_install_cmd(stage, "/usr")), &out);
	stage_log = out;
}

static void
stage_teardown(void)
{
	if (stage != NULL && getenv("CQRS_TEST_KEEP") == NULL) {
		char *cmd = NULL;
		if (asprintf(&cmd, "rm -rf '%s'", stage) >= 0 && system(cmd) != 0)
			fprintf(stderr, "test_deploy: could not remove %s\n", stage);
		free(cmd);
	}
	free(stage);
	free(stage_log);
	stage = NULL;
	stage_log = NULL;
	daemon_gc_run();
}

static void
stage_ok(void)
{
	ck_assert_msg(stage_rc == 0, "make install DESTDIR=%s PREFIX=/usr: exit %d:\n%s", stage,
		      stage_rc, stage_log);
}

static const char *
staged(const char *rel)
{
	return daemon_fmt("%s/%s", stage, rel);
}

static void
expect_file(const char *root, const char *rel, unsigned mode)
{
	struct stat st;
	const char *path = daemon_fmt("%s/%s", root, rel);

	ck_assert_msg(lstat(path, &st) == 0, "%s is not installed", rel);
	ck_assert_msg(S_ISREG(st.st_mode), "%s is not a regular file", rel);
	ck_assert_msg((st.st_mode & 07777) == mode, "%s has mode %04o, want %04o", rel,
		      (unsigned)(st.st_mode & 07777), mode);
}

START_TEST(install_writes_the_expected_tree)
{
	static const char *const units[] = { "cqrs-cmdd.socket", "cqrs-cmdd.service",
					     "cqrs-tracker.service", "cqrs-consumer@.service" };
	static const char *const progs[] = { "cqrs-cmdd", "cqrs-tracker", "cqrsctl",
					     "cqrs-consumer" };
	char link[256], *out;
	const char *pc, *other;
	ssize_t n;
	int rc;

	stage_ok();
	for (size_t i = 0; i < sizeof(progs) / sizeof(progs[0]); i++) {
		/* cqrs-consumer is installed when it is built */
		if (strcmp(progs[i], "cqrs-consumer") == 0 &&
		    access(fixture_bin(progs[i]), X_OK) != 0)
			continue;
		expect_file(stage, daemon_fmt("usr/bin/%s", progs[i]), 0755);
	}
	expect_file(stage, "usr/lib/libcqrs.so.0", 0644);
	expect_file(stage, "usr/lib/libcqrs.a", 0644);
	n = readlink(staged("usr/lib/libcqrs.so"), link, sizeof(link) - 1);
	ck_assert_msg(n > 0, "usr/lib/libcqrs.so is not a symbolic link");
	link[n] = '\0';
	ck_assert_str_eq(link, "libcqrs.so.0");
	rc = sh(&out, "cd %s/common/include/cqrs && for h in *.h; do cmp $h %s/usr/include/cqrs/$h "
		"|| exit 1; done", CQRS_SRCDIR, stage);
	ck_assert_msg(rc == 0, "headers differ or are missing: %s", out);
	expect_file(stage, "usr/include/cqrs/plugin.h", 0644);
	expect_file(stage, "usr/lib/pkgconfig/cqrs.pc", 0644);
	pc = slurp(staged("usr/lib/pkgconfig/cqrs.pc"));
	ck_assert_msg(strstr(pc, "prefix=/usr\n") && strstr(pc, "libdir=${prefix}/lib\n") &&
		      strstr(pc, "includedir=${prefix}/include\n") &&
		      strstr(pc, "Version: 0.1.0\n"), "%s", pc);
	expect_file(stage, "usr/lib/cqrs/plugins/bank.so", 0644);
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		const char *rel = daemon_fmt("usr/lib/systemd/system/%s", units[i]);
		const char *text;
		expect_file(stage, rel, 0644);
		text = slurp(staged(rel));
		ck_assert_msg(strstr(text, "@BINDIR@") == NULL && strstr(text, "@SYSCONFDIR@") == NULL &&
			      strstr(text, "@DOCDIR@") == NULL, "%s keeps a placeholder", rel);
	}
	ck_assert(strstr(slurp(staged("usr/lib/systemd/system/cqrs-cmdd.service")),
			 "\nExecStart=/usr/bin/cqrs-cmdd -c /etc/cqrs/cqrs.conf\n") != NULL);
	ck_assert(strstr(slurp(staged("usr/lib/systemd/system/cqrs-consumer@.service")),
			 "\nExecStart=/usr/bin/cqrs-consumer -c /etc/cqrs/cqrs.conf -n %i\n") != NULL);
	expect_file(stage, "usr/lib/sysusers.d/cqrs.conf", 0644);
	ck_assert(strstr(slurp(staged("usr/lib/sysusers.d/cqrs.conf")), "\nu cqrs ") != NULL);
	{
		/* systemd-sysusers makes the user and group from it (in a scratch root) */
		const char *root = scratch();
		rc = sh(&out, "mkdir -p %s/etc && systemd-sysusers --root=%s %s && "
			"grep '^cqrs' %s/etc/passwd %s/etc/group", root, root,
			staged("usr/lib/sysusers.d/cqrs.conf"), root, root);
		ck_assert_msg(rc == 0 && strstr(out, ":cqrs daemons:/var/lib/cqrs:/usr/sbin/nologin\n"),
			      "systemd-sysusers: exit %d:\n%s", rc, out);
		ck_assert_msg(strstr(out, "/etc/group:cqrs-clients:x:") != NULL,
			      "no group cqrs-clients: %s", out);
	}
	expect_file(stage, "etc/cqrs/cqrs.conf.example", 0644);
	ck_assert(strstr(slurp(staged("etc/cqrs/cqrs.conf.example")),
			 "plugins = /usr/lib/cqrs/plugins/bank.so\n") != NULL);
	ck_assert_msg(access(staged("etc/cqrs/cqrs.conf"), F_OK) != 0,
		      "make install must not write a real cqrs.conf");
	expect_file(stage, "usr/share/doc/cqrs/deploy.md", 0644);
	/* nothing outside /usr and /etc */
	rc = sh(&out, "cd %s && ls -A", stage);
	ck_assert_msg(rc == 0 && strcmp(out, "etc\nusr\n") == 0, "top of the tree: %s", out);

	/* the installed daemon finds the installed library next to it */
	rc = sh(&out, "%s/usr/bin/cqrs-cmdd --version && ldd %s/usr/bin/cqrs-cmdd", stage, stage);
	ck_assert_msg(rc == 0 && strstr(out, "cqrs-cmdd 0.1.0\n") != NULL, "%s", out);
	ck_assert_msg(strstr(out, daemon_fmt("%s/usr/bin/../lib/libcqrs.so.0", stage)) != NULL,
		      "the installed cqrs-cmdd should use the installed libcqrs:\n%s", out);

	/* PREFIX=/usr/local moves the units along; an admin's cqrs.conf stays */
	other = scratch();
	rc = sh(&out, "mkdir -p %s/etc/cqrs && echo mine > %s/etc/cqrs/cqrs.conf && %s", other,
		other, make_install_cmd(other, NULL));
	ck_assert_msg(rc == 0, "make install (default PREFIX): exit %d:\n%s", rc, out);
	ck_assert_str_eq(slurp(daemon_fmt("%s/etc/cqrs/cqrs.conf", other)), "mine\n");
	expect_file(other, "usr/local/bin/cqrs-cmdd", 0755);
	expect_file(other, "usr/local/lib/systemd/system/cqrs-cmdd.service", 0644);
	ck_assert(strstr(slurp(daemon_fmt("%s/usr/local/lib/systemd/system/cqrs-cmdd.service", other)),
			 "\nExecStart=/usr/local/bin/cqrs-cmdd -c /etc/cqrs/cqrs.conf\n") != NULL);
	ck_assert(strstr(slurp(daemon_fmt("%s/etc/cqrs/cqrs.conf.example", other)),
			 "plugins = /usr/local/lib/cqrs/plugins/bank.so\n") != NULL);
}
END_TEST

static const char tally_c[] =
	"/* tally.c - a plugin built out of the tree, against installed headers */\n"
	"#include <stdlib.h>\n"
	"#include <cqrs/plugin.h>\n"
	"\n"
	"struct tally { long long n; };\n"
	"\n"
	"static void *tally_new(void *ps) { (void)ps; return calloc(1, sizeof(struct tally)); }\n"
	"static void tally_free(void *s) { free(s); }\n"
	"\n"
	"static int\n"
	"on_added(void *state, const struct cqrs_event *ev)\n"
	"{\n"
	"	struct tally *t = state;\n"
	"	(void)ev;\n"
	"	t->n++;\n"
	"	return 0;\n"
	"}\n"
	"\n"
	"static int\n"
	"tally_add(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,\n"
	"	  int64_t version)\n"
	"{\n"
	"	const struct tally *t = state;\n"
	"	struct json_object *d = json_object_new_object();\n"
	"	(void)cmd;\n"
	"	(void)version;\n"
	"	json_object_object_add(d, \"n\", json_object_new_int64(t->n + 1));\n"
	"	if (cqrs_emit(ctx, \"Added\", d) < 0)\n"
	"		return -1;\n"
	"	return CQRS_OUTCOME_OK;\n"
	"}\n"
	"\n"
	"static const struct cqrs_aggregate_type tally_type = {\n"
	"	.name = \"tally\", .state_new = tally_new, .state_free = tally_free,\n"
	"};\n"
	"\n"
	"static int\n"
	"tally_register(struct cqrs_registry *reg, void **state)\n"
	"{\n"
	"	(void)state;\n"
	"	if (cqrs_register_aggregate(reg, &tally_type) < 0 ||\n"
	"	    cqrs_register_applier(reg, \"tally\", \"Added\", on_added) < 0 ||\n"
	"	    cqrs_register_command(reg, \"tally.add\", \"tally\", tally_add) < 0)\n"
	"		return -1;\n"
	"	return 0;\n"
	"}\n"
	"\n"
	"static const struct cqrs_plugin tally = {\n"
	"	.abi_version = CQRS_PLUGIN_ABI,\n"
	"	.struct_size = sizeof(struct cqrs_plugin),\n"
	"	.name = \"tally\",\n"
	"	.register_all = tally_register,\n"
	"};\n"
	"\n"
	"CQRS_PLUGIN_EXPORT const struct cqrs_plugin *\n"
	"cqrs_plugin_entry(void)\n"
	"{\n"
	"	return &tally;\n"
	"}\n";

START_TEST(plugin_built_out_of_tree_with_pkg_config)
{
	const char *dir = scratch();
	const char *pkg = daemon_fmt("PKG_CONFIG_PATH=%s/usr/lib/pkgconfig pkg-config --define-prefix",
				     stage);
	const char *plugdir, *so, *conf, *log, *a;
	char *out, *flags;
	struct daemon_conn *c;
	pid_t pid;
	int rc;

	stage_ok();
	rc = sh(&out, "%s --modversion cqrs", pkg);
	ck_assert_msg(rc == 0 && strcmp(out, "0.1.0\n") == 0, "%s", out);
	rc = sh(&flags, "%s --cflags --libs cqrs", pkg);
	ck_assert_msg(rc == 0, "pkg-config cqrs: %s", flags);
	ck_assert_msg(strstr(flags, daemon_fmt("-I%s/usr/include ", stage)) != NULL &&
		      strstr(flags, daemon_fmt("-L%s/usr/lib ", stage)) != NULL &&
		      strstr(flags, "-lcqrs") != NULL, "pkg-config cqrs: %s", flags);
	flags[strcspn(flags, "\n")] = '\0';
	rc = sh(&out, "%s --variable=plugindir cqrs", pkg);
	ck_assert_msg(rc == 0 && strcmp(out, daemon_fmt("%s/usr/lib/cqrs/plugins\n", stage)) == 0,
		      "plugindir: %s", out);
	plugdir = daemon_fmt("%s/usr/lib/cqrs/plugins", stage);

	/* the way docs/plugins.md builds one, nothing from the source tree */
	write_file(daemon_fmt("%s/tally.c", dir), tally_c);
	rc = sh(&out, "cd %s && cc -std=c11 -Wall -Wextra -Werror -Wmissing-prototypes -O2 -fPIC "
		"-fvisibility=hidden -shared -MD -MF tally.d -o tally.so tally.c %s", dir, flags);
	ck_assert_msg(rc == 0, "building the plugin out of tree failed:\n%s", out);
	ck_assert_msg(strstr(slurp(daemon_fmt("%s/tally.d", dir)),
			     daemon_fmt("%s/usr/include/cqrs/plugin.h", stage)) != NULL,
		      "the plugin was not built against the installed headers");
	rc = sh(&out, "nm -D --defined-only %s/tally.so | awk '$2 == \"T\" { print $3 }'", dir);
	ck_assert_msg(rc == 0 && strcmp(out, "cqrs_plugin_entry\n") == 0,
		      "the plugin should export its entry point only: %s", out);
	rc = sh(&out, "install -m 644 %s/tally.so %s/", dir, plugdir);
	ck_assert_msg(rc == 0, "%s", out);
	so = daemon_fmt("%s/tally.so", plugdir);

	/* the installed daemon loads it beside the installed bank plugin */
	conf = write_cmdd_conf(dir, daemon_fmt("%s %s/bank.so", so, plugdir));
	rc = sh(&out, "%s/usr/bin/cqrs-cmdd -c %s --check-config", stage, conf);
	ck_assert_msg(rc == 0 && strstr(out, "configuration ok: 8 commands, 3 aggregates") != NULL,
		      "exit %d:\n%s", rc, out);

	/* and runs its commands */
	log = daemon_fmt("%s/daemon.log", dir);
	pid = spawn((char *const[]){ (char *)daemon_fmt("%s/usr/bin/cqrs-cmdd", stage), "-c",
				     (char *)conf, NULL }, log, -1, NULL);
	if (!wait_accepting(daemon_fmt("%s/cmd.sock", dir), pid, 20000)) {
		kill_wait(pid);
		ck_abort_msg("the installed cqrs-cmdd did not start:\n%s", slurp(log));
	}
	c = daemon_conn_open(daemon_fmt("%s/cmd.sock", dir));
	a = daemon_gc(daemon_conn_call(c, "{\"command\":\"tally.add\",\"aggregate_id\":\"t1\","
					  "\"data\":{}}"));
	DAEMON_ASSERT_OK(a);
	ck_assert_str_eq(daemon_answer_str(a, "stream"), "tally-t1");
	a = daemon_gc(daemon_conn_call(c, "{\"command\":\"tally.add\",\"aggregate_id\":\"t1\","
					  "\"data\":{}}"));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 2);
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line("b1"))));
	daemon_conn_close(c);
	kill(pid, SIGTERM);
	rc = wait_exit(pid, 20000);
	if (rc < 0)
		kill_wait(pid);
	ck_assert_msg(rc == 0, "exit %d:\n%s", rc, slurp(log));
	ck_assert_msg(strstr(slurp(log), "(tally): 1 aggregates, 1 commands") != NULL, "%s",
		      slurp(log));
}
END_TEST

/* ---- systemd ---------------------------------------------------------------------------- */

START_TEST(socket_activation_by_systemd_socket_activate)
{
	const char *dir = scratch();
	const char *conf = write_cmdd_conf(dir, NULL);
	const char *sock = daemon_fmt("%s/activated.sock", dir);
	const char *log = daemon_fmt("%s/daemon.log", dir);
	const char *asan = getenv("ASAN_OPTIONS");
	struct daemon_conn *c;
	const char *a;
	struct stat st;
	pid_t pid;
	int rc;

	ck_assert_msg(access(SOCKET_ACTIVATE, X_OK) == 0,
		      "%s is missing (Debian package systemd)", SOCKET_ACTIVATE);
	pid = spawn((char *const[]){ SOCKET_ACTIVATE, "-l", (char *)sock, "-E",
				     (char *)daemon_fmt("ASAN_OPTIONS=%s", asan ? asan : ""),
				     (char *)fixture_bin("cqrs-cmdd"), "-c", (char *)conf, NULL },
		    log, -1, NULL);
	ck_assert_msg(wait_exists(sock, 10000), "systemd-socket-activate did not listen:\n%s",
		      slurp(log));
	/* nothing runs the daemon yet: the first connection does */
	ck_assert_msg(strstr(slurp(log), "Execing") == NULL, "%s", slurp(log));
	c = daemon_conn_open(sock);
	a = daemon_gc(daemon_conn_call(c, open_line("sa1")));
	DAEMON_ASSERT_OK(a);
	a = daemon_gc(daemon_conn_call(c, "{\"command\":\"account.deposit\",\"aggregate_id\":\"sa1\","
					  "\"data\":{\"amount\":5}}"));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 2);
	daemon_conn_close(c);
	ck_assert_msg(strstr(slurp(log), "using the socket passed by systemd") != NULL, "%s",
		      slurp(log));
	/* the configured path is not bound when a socket is passed */
	ck_assert_msg(stat(daemon_fmt("%s/cmd.sock", dir), &st) != 0, "cmd.socket was bound too");
	/* a second client on the same socket */
	c = daemon_conn_open(sock);
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line("sa2"))));
	daemon_conn_close(c);
	kill(pid, SIGTERM);
	rc = wait_exit(pid, 20000);
	if (rc < 0)
		kill_wait(pid);
	ck_assert_msg(rc == 0, "exit %d:\n%s", rc, slurp(log));
	/* the socket belongs to whoever passed it: the daemon leaves the file */
	ck_assert_int_eq(stat(sock, &st), 0);
}
END_TEST

/*
 * What `systemctl restart cqrs-cmdd.service` does with the socket held by
 * cqrs-cmdd.socket: the old process drains and exits, a client that
 * connects meanwhile waits in the backlog, and the new process answers it.
 */
START_TEST(restart_on_a_held_socket_refuses_nobody)
{
	const char *dir = scratch();
	const char *conf = write_cmdd_conf(dir, NULL);
	const char *sock = daemon_fmt("%s/held.sock", dir);
	const char *log = daemon_fmt("%s/daemon.log", dir);
	char *const argv[] = { (char *)fixture_bin("cqrs-cmdd"), "-c", (char *)conf, NULL };
	int lfd = listen_unix(sock);
	struct daemon_conn *c, *waiting;
	const char *a;
	pid_t pid;
	int rc;

	pid = spawn(argv, log, lfd, NULL);
	c = daemon_conn_open(sock);	/* accepted by the backlog at once */
	a = daemon_gc(daemon_conn_call(c, open_line("rs1")));
	DAEMON_ASSERT_OK(a);
	daemon_conn_close(c);

	kill(pid, SIGTERM);
	rc = wait_exit(pid, 20000);
	if (rc < 0)
		kill_wait(pid);
	ck_assert_msg(rc == 0, "exit %d:\n%s", rc, slurp(log));

	/* no daemon now: the connection is still accepted, and the request waits */
	waiting = daemon_conn_try_open(sock);
	ck_assert_msg(waiting != NULL, "connect during the restart: %s", strerror(errno));
	daemon_conn_send(waiting, "{\"command\":\"account.deposit\",\"aggregate_id\":\"rs1\","
				  "\"data\":{\"amount\":7}}");
	pid = spawn(argv, log, lfd, NULL);
	a = daemon_gc(daemon_conn_recv(waiting, 30000));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 2);
	daemon_conn_close(waiting);
	kill(pid, SIGTERM);
	rc = wait_exit(pid, 20000);
	if (rc < 0)
		kill_wait(pid);
	ck_assert_msg(rc == 0, "exit %d:\n%s", rc, slurp(log));
	ck_assert_int_eq(access(sock, F_OK), 0);
	close(lfd);
}
END_TEST

/* The offset of the first needle in notes at or after from, or -1. */
static long
at(const char *notes, const char *needle, long from)
{
	const char *p = strstr(notes + from, needle);

	return p ? (long)(p - notes) : -1;
}

static int
count_in(const char *s, const char *needle)
{
	int n = 0;

	for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	return n;
}

START_TEST(notify_protocol_in_order)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank");
	const char *notes;
	long ready, status, live_status, watchdog, stopping;
	long long deadline;

	daemon_use_notify(d);
	/* a ping every 150 ms; the daemon's tick is 100 ms */
	daemon_setenv(d, "WATCHDOG_USEC", "300000");
	daemon_setenv(d, "WATCHDOG_PID", NULL);
	daemon_start(d);		/* returns once READY=1 came */
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, open_line("np1"))));
	deadline = now_ms() + 10000;
	while (count_in(daemon_notifications(d), "WATCHDOG=1") < 4 && now_ms() < deadline)
		sleep_ms(50);
	ck_assert_int_eq(daemon_stop(d), 0);
	notes = daemon_gc(strdup(daemon_notifications(d)));

	ready = at(notes, "READY=1", 0);
	status = at(notes, "STATUS=", 0);
	live_status = at(notes, "STATUS=", ready + 1);
	watchdog = at(notes, "WATCHDOG=1", 0);
	stopping = at(notes, "STOPPING=1", 0);
	ck_assert_msg(ready == 0, "READY=1 must come first:\n%s", notes);
	ck_assert_msg(status > ready && live_status > ready, "no STATUS= after READY=1:\n%s", notes);
	ck_assert_msg(strstr(notes + ready, "aggregates cached") != NULL,
		      "the live STATUS= line is missing:\n%s", notes);
	ck_assert_msg(watchdog > ready, "no WATCHDOG=1 after READY=1:\n%s", notes);
	ck_assert_msg(stopping > watchdog, "STOPPING=1 must come after the watchdog pings:\n%s",
		      notes);
	{
		char *before = daemon_gc(strndup(notes, (size_t)stopping));
		ck_assert_msg(count_in(before, "WATCHDOG=1") >= 4,
			      "WATCHDOG=1 every 150 ms: %d pings before STOPPING=1:\n%s",
			      count_in(before, "WATCHDOG=1"), notes);
	}
	ck_assert_int_eq(count_in(notes, "READY=1"), 1);
	ck_assert_int_eq(count_in(notes, "STOPPING=1"), 1);

	/* no watchdog asked for, or one asked for another process: no pings */
	daemon_setenv(d, "WATCHDOG_USEC", NULL);
	daemon_start(d);
	sleep_ms(700);
	ck_assert_int_eq(daemon_stop(d), 0);
	notes = daemon_notifications(d);
	ck_assert_msg(strstr(notes, "READY=1") && !strstr(notes, "WATCHDOG=1"), "%s", notes);
	daemon_setenv(d, "WATCHDOG_USEC", "300000");
	daemon_setenv(d, "WATCHDOG_PID", "1");
	daemon_start(d);
	sleep_ms(700);
	ck_assert_int_eq(daemon_stop(d), 0);
	notes = daemon_notifications(d);
	ck_assert_msg(strstr(notes, "READY=1") && !strstr(notes, "WATCHDOG=1"), "%s", notes);
	daemon_free(d);
}
END_TEST

/* ---- metrics and health -------------------------------------------------------------- */

/* Tests here stop PostgreSQL: the tcase's end (in the parent) makes sure it runs. */
static void
pg_ensure_up(void)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/pg.sh start %s --fast >/dev/null 2>&1",
		 CQRS_SRCDIR, fixture_pg_dir());
	if (system(cmd) != 0)
		fprintf(stderr, "test_deploy: could not (re)start PostgreSQL in %s\n",
			fixture_pg_dir());
}

static double
outcome(const struct scrape *m, const char *name)
{
	return scrape_value(m, "cqrs_cmdd_commands_total", daemon_fmt("outcome=\"%s\"", name));
}

START_TEST(metrics_scraped_as_commands_run)
{
	static const char *const outcomes[] = { "ok", "duplicate", "malformed", "too_large",
		"unknown_command", "invalid", "rejected", "conflict", "forbidden", "id_reused", "unavailable",
		"internal" };
	struct daemon *d = daemon_new_cmdd(db(), "bank");
	struct daemon_conn *c, *big;
	struct scrape *m;
	uint16_t port;
	char *body, *line;
	const char *id = "0190a9f4-0000-7000-8000-000000000001";
	long long deadline;

	daemon_set(d, "cmd", "pool_size", "3");
	daemon_set(d, "cmd", "max_request_bytes", "1k");
	port = daemon_start_http(d);

	ck_assert_int_eq(scrape_http(port, "GET", "/health", NULL, &body, 5000), 200);
	ck_assert_str_eq(daemon_gc(body), "ok\n");
	m = scrape_metrics(port);
	ck_assert_str_eq(scrape_type(m, "cqrs_cmdd_commands_total"), "counter");
	ck_assert_str_eq(scrape_type(m, "cqrs_cmdd_command_duration_seconds"), "histogram");
	for (size_t i = 0; i < sizeof(outcomes) / sizeof(outcomes[0]); i++)
		ck_assert_msg(outcome(m, outcomes[i]) == 0, "%s", outcomes[i]);
	ck_assert_uint_eq(scrape_count(m, "cqrs_cmdd_commands_total"),
			  sizeof(outcomes) / sizeof(outcomes[0]));
	ck_assert(scrape_value(m, "cqrs_cmdd_command_duration_seconds_count", NULL) == 0);
	ck_assert(scrape_value(m, "cqrs_cmdd_clients", NULL) == 0);
	ck_assert(scrape_value(m, "cqrs_cmdd_store_connections", NULL) == 3);
	ck_assert(scrape_value(m, "cqrs_cmdd_build_info", "version=\"0.1.0\"") == 1);
	scrape_free(m);
	/* every connection of the pool comes up, and the daemon says it is ready */
	deadline = now_ms() + 10000;
	for (;;) {
		double up, ready;
		m = scrape_metrics(port);
		up = scrape_value(m, "cqrs_cmdd_store_connections_up", NULL);
		ready = scrape_value(m, "cqrs_cmdd_ready", NULL);
		scrape_free(m);
		if (up == 3 && ready == 1)
			break;
		ck_assert_msg(now_ms() < deadline, "store connections up: %g of 3, ready %g", up,
			      ready);
		sleep_ms(50);
	}

	c = daemon_connect(d);
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line("m1"))));
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, daemon_fmt(
		"{\"id\":\"%s\",\"command\":\"account.open\",\"aggregate_id\":\"m2\","
		"\"data\":{\"owner\":\"o\"}}", id))));
	line = daemon_gc(daemon_conn_call(c, daemon_fmt(
		"{\"id\":\"%s\",\"command\":\"account.open\",\"aggregate_id\":\"m2\","
		"\"data\":{\"owner\":\"o\"}}", id)));
	DAEMON_ASSERT_OK(line);
	ck_assert_msg(strstr(line, "\"duplicate\":true") != NULL, "%s", line);
	DAEMON_ASSERT_ERROR(daemon_gc(daemon_conn_call(c, "{\"command\":\"account.deposit\","
		"\"aggregate_id\":\"m1\",\"data\":{\"amount\":\"x\"}}")), "invalid");
	DAEMON_ASSERT_ERROR(daemon_gc(daemon_conn_call(c, "{\"command\":\"account.withdraw\","
		"\"aggregate_id\":\"m1\",\"data\":{\"amount\":1000}}")), "rejected");
	DAEMON_ASSERT_ERROR(daemon_gc(daemon_conn_call(c, "{\"command\":\"no.such\","
		"\"aggregate_id\":\"m1\",\"data\":{}}")), "unknown_command");
	DAEMON_ASSERT_ERROR(daemon_gc(daemon_conn_call(c, "this is not json")), "malformed");
	DAEMON_ASSERT_ERROR(daemon_gc(daemon_conn_call(c, "{\"command\":\"account.deposit\","
		"\"aggregate_id\":\"m1\",\"expected_version\":7,\"data\":{\"amount\":1}}")), "conflict");
	big = daemon_connect(d);
	{
		char *huge = malloc(4096);
		ck_assert_ptr_nonnull(huge);
		memset(huge, 'x', 4095);
		huge[4095] = '\0';
		DAEMON_ASSERT_ERROR(daemon_gc(daemon_conn_call(big, huge)), "too_large");
		free(huge);
	}
	daemon_conn_close(big);

	m = scrape_metrics(port);
	ck_assert_msg(outcome(m, "ok") == 2, "ok %g", outcome(m, "ok"));
	ck_assert_msg(outcome(m, "duplicate") == 1, "duplicate %g", outcome(m, "duplicate"));
	ck_assert(outcome(m, "invalid") == 1);
	ck_assert(outcome(m, "rejected") == 1);
	ck_assert(outcome(m, "unknown_command") == 1);
	ck_assert(outcome(m, "malformed") == 1);
	ck_assert(outcome(m, "conflict") == 1);
	ck_assert(outcome(m, "too_large") == 1);
	ck_assert(outcome(m, "unavailable") == 0 && outcome(m, "internal") == 0);
	ck_assert(scrape_value(m, "cqrs_cmdd_requests_total", NULL) == 9);
	/* timed: every request that reached the command table (not framing errors) */
	ck_assert_msg(scrape_value(m, "cqrs_cmdd_command_duration_seconds_count", NULL) == 7,
		      "%g", scrape_value(m, "cqrs_cmdd_command_duration_seconds_count", NULL));
	ck_assert(scrape_value(m, "cqrs_cmdd_command_duration_seconds_sum", NULL) > 0);
	ck_assert(scrape_value(m, "cqrs_cmdd_command_duration_seconds_bucket", "le=\"10\"") == 7);
	ck_assert(scrape_value(m, "cqrs_cmdd_clients", NULL) == 1);	/* c is still open */
	ck_assert(scrape_value(m, "cqrs_cmdd_aggregates_cached", NULL) == 2);
	ck_assert(scrape_value(m, "cqrs_cmdd_commands_in_flight", NULL) == 0);
	ck_assert(scrape_value(m, "cqrs_cmdd_aggregate_loads_total", NULL) >= 2);
	ck_assert(scrape_value(m, "cqrs_cmdd_snapshots_written_total", NULL) == 0);
	ck_assert(scrape_value(m, "cqrs_cmdd_conflicts_retried_total", NULL) == 0);
	scrape_free(m);
	daemon_conn_close(c);

	/* the endpoint goes away with the daemon */
	ck_assert_int_eq(daemon_stop(d), 0);
	ck_assert_msg(scrape_port_from_log("") == 0 && access(daemon_socket(d), F_OK) != 0,
		      "the daemon's socket is left behind");
	{
		/* nothing listens on the port any more */
		struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		ck_assert_msg(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0,
			      "port %u still accepts after the daemon stopped", (unsigned)port);
		close(fd);
	}
	daemon_free(d);
}
END_TEST

/* Another writer (a second daemon) makes the first one retry and snapshot. */
START_TEST(metrics_count_retries_and_snapshots)
{
	struct daemon *a = daemon_new_cmdd(db(), "bank");
	struct daemon *b = daemon_new_cmdd(db(), "bank");
	struct scrape *m;
	uint16_t port;

	daemon_set(a, "cmd", "snapshot_every", "2");
	port = daemon_start_http(a);
	daemon_start(b);
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(a, open_line("r1"))));
	/* b moves the stream on behind a's cache: a's next append conflicts */
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(b, "{\"command\":\"account.deposit\","
		"\"aggregate_id\":\"r1\",\"data\":{\"amount\":3}}")));
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(a, "{\"command\":\"account.deposit\","
		"\"aggregate_id\":\"r1\",\"data\":{\"amount\":4}}")));
	m = scrape_metrics(port);
	ck_assert_msg(scrape_value(m, "cqrs_cmdd_conflicts_retried_total", NULL) == 1, "%g",
		      scrape_value(m, "cqrs_cmdd_conflicts_retried_total", NULL));
	scrape_free(m);
	/* version 4 crosses a multiple of 2: a snapshot is written (asynchronously) */
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(a, "{\"command\":\"account.deposit\","
		"\"aggregate_id\":\"r1\",\"data\":{\"amount\":5}}")));
	{
		long long deadline = now_ms() + 5000;
		double snaps = 0;
		while (snaps < 1 && now_ms() < deadline) {
			m = scrape_metrics(port);
			snaps = scrape_value(m, "cqrs_cmdd_snapshots_written_total", NULL);
			scrape_free(m);
			sleep_ms(20);
		}
		ck_assert_msg(snaps >= 1, "snapshots written: %g", snaps);
	}
	daemon_free(b);
	daemon_free(a);
}
END_TEST

static int
health(uint16_t port, char **body)
{
	return scrape_http(port, "GET", "/health", NULL, body, 5000);
}

START_TEST(health_follows_the_store)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank");
	struct scrape *m;
	uint16_t port;
	char *body = NULL;
	long long deadline;
	int code = 0;

	daemon_set(d, "cmd", "pool_size", "2");
	port = daemon_start_http(d);
	ck_assert_int_eq(health(port, &body), 200);
	free(body);

	fixture_pg_stop();
	deadline = now_ms() + 20000;
	while (now_ms() < deadline) {
		code = health(port, &body);
		if (code == 503)
			break;
		free(body);
		body = NULL;
		sleep_ms(100);
	}
	ck_assert_msg(code == 503, "/health with PostgreSQL stopped: %d", code);
	ck_assert_msg(strstr(body, "no PostgreSQL connection (0 of 2 up)\n") != NULL, "%s", body);
	free(body);
	m = scrape_metrics(port);
	ck_assert(scrape_value(m, "cqrs_cmdd_store_connections_up", NULL) == 0);
	scrape_free(m);
	DAEMON_ASSERT_ERROR(daemon_gc(daemon_call(d, open_line("h1"))), "unavailable");
	m = scrape_metrics(port);
	ck_assert(outcome(m, "unavailable") == 1);
	scrape_free(m);

	fixture_pg_start();
	deadline = now_ms() + 30000;
	while (now_ms() < deadline) {
		code = health(port, &body);
		free(body);
		if (code == 200)
			break;
		sleep_ms(100);
	}
	ck_assert_msg(code == 200, "/health after PostgreSQL came back: %d", code);
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, open_line("h1"))));
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

START_TEST(http_address_rules)
{
	struct daemon *d = daemon_new_cmdd(db(), "bank");
	char *log;
	int code;

	/* beyond loopback only when asked for */
	daemon_set(d, "cmd", "http", "0.0.0.0:0");
	code = daemon_run(d, 20000);
	log = daemon_gc(daemon_log(d));
	ck_assert_msg(code == 1, "exit %d:\n%s", code, log);
	ck_assert_msg(strstr(log, "[cmd] http: 0.0.0.0:0 is not a loopback address") != NULL, "%s",
		      log);
	daemon_set(d, "cmd", "http_allow_remote", "true");
	daemon_start(d);
	ck_assert_msg(daemon_wait_log(d, "metrics and health on http://0.0.0.0:", 20000), "%s",
		      (char *)daemon_gc(daemon_log_tail(d, 10)));
	ck_assert_int_eq(daemon_stop(d), 0);

	/* --check-config names a bad address */
	daemon_set(d, "cmd", "http_allow_remote", NULL);
	daemon_set(d, "cmd", "http", "localhost:http");
	daemon_add_arg(d, "--check-config");
	code = daemon_run(d, 20000);
	log = daemon_gc(daemon_log(d));
	ck_assert_msg(code == 1 && strstr(log, "[cmd] http: ") != NULL &&
		      strstr(log, "localhost:http") != NULL &&
		      strstr(log, "the port must be a number from 0 to 65535") != NULL,
		      "exit %d:\n%s", code, log);
	daemon_free(d);

	/* a taken port stops the start with the address and the reason */
	{
		struct daemon *first = daemon_new_cmdd(db(), "bank");
		struct daemon *second = daemon_new_cmdd(db(), "bank");
		uint16_t port = daemon_start_http(first);
		daemon_set(second, "cmd", "http", "127.0.0.1:%u", (unsigned)port);
		code = daemon_run(second, 20000);
		log = daemon_gc(daemon_log(second));
		ck_assert_msg(code == 1 && strstr(log, daemon_fmt("127.0.0.1:%u", (unsigned)port)) &&
			      strstr(log, "in use") != NULL, "exit %d:\n%s", code, log);
		daemon_free(second);
		daemon_free(first);
	}
}
END_TEST

static Suite *
deploy_suite(void)
{
	Suite *s = suite_create("deploy");
	TCase *units = tcase_create("units");
	TCase *install = tcase_create("install");
	TCase *sys = tcase_create("systemd");
	TCase *metrics = tcase_create("metrics");

	tcase_add_checked_fixture(units, setup, teardown);
	tcase_set_timeout(units, 60);
	tcase_add_test(units, units_pass_systemd_analyze_verify);
	tcase_add_test(units, units_say_what_the_design_says);
	tcase_add_test(units, example_config_documents_every_key);
	tcase_add_test(units, check_config_prints_the_memory_bound);
	suite_add_tcase(s, units);

	/* one install for the tcase, made in the parent before its tests */
	tcase_add_unchecked_fixture(install, stage_setup, stage_teardown);
	tcase_add_checked_fixture(install, setup, teardown);
	tcase_set_timeout(install, 300);
	tcase_add_test(install, install_writes_the_expected_tree);
	tcase_add_test(install, plugin_built_out_of_tree_with_pkg_config);
	suite_add_tcase(s, install);

	tcase_add_checked_fixture(sys, setup, teardown);
	tcase_set_timeout(sys, 120);
	tcase_add_test(sys, socket_activation_by_systemd_socket_activate);
	tcase_add_test(sys, restart_on_a_held_socket_refuses_nobody);
	tcase_add_test(sys, notify_protocol_in_order);
	suite_add_tcase(s, sys);

	tcase_add_checked_fixture(metrics, setup, teardown);
	tcase_add_unchecked_fixture(metrics, pg_ensure_up, pg_ensure_up);
	tcase_set_timeout(metrics, 120);
	tcase_add_test(metrics, metrics_scraped_as_commands_run);
	tcase_add_test(metrics, metrics_count_retries_and_snapshots);
	tcase_add_test(metrics, health_follows_the_store);
	tcase_add_test(metrics, http_address_rules);
	suite_add_tcase(s, metrics);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(deploy_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

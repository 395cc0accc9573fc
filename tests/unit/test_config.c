/* test_config.c - the INI file, environment overrides and typed getters. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

/* malloc for tests: a failure ends the test (abort is noreturn, so the
 * compiler knows the result is not NULL). */
static void *
xmalloc(size_t n)
{
	void *p = malloc(n);

	if (p == NULL)
		abort();
	return p;
}

/* A temp file holding text; the path is owned by the caller (unlink+free). */
static char *
write_temp(const char *text, size_t len)
{
	char *path = strdup("/tmp/cqrs-test-config.XXXXXX");
	int fd;

	ck_assert_ptr_nonnull(path);
	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, len), (ssize_t)len);
	close(fd);
	return path;
}

static void
drop_temp(char *path)
{
	unlink(path);
	free(path);
}

/* Loads text from a temp file; the load must succeed. */
static struct config *
load_ok(const char *text, char **path)
{
	struct config *cfg = NULL;
	struct cqrs_err err = { 0 };

	*path = write_temp(text, strlen(text));
	ck_assert_msg(cqrs_config_load(*path, &cfg, &err) == 0, "load failed: %s", err.msg);
	ck_assert_ptr_nonnull(cfg);
	return cfg;
}

/* Loads text from a temp file; the load must fail with code, and the message
 * must contain "PATH:want". */
static void
load_fails(const char *text, size_t len, int code, const char *want)
{
	struct config *cfg = (struct config *)1;
	struct cqrs_err err = { 0 };
	char *path = write_temp(text, len);
	char where[256];

	ck_assert_int_eq(cqrs_config_load(path, &cfg, &err), code);
	ck_assert_int_eq(err.code, code);
	ck_assert_ptr_null(cfg);
	snprintf(where, sizeof(where), "%s%s", path, want);
	ck_assert_msg(strstr(err.msg, where) != NULL, "\"%s\" not in \"%s\"", where, err.msg);
	drop_temp(path);
}

static const char sample[] =
	"; the suite's config\n"
	"# another comment style\n"
	"\n"
	"[store]\n"
	"conninfo = host=/run/postgresql dbname=cqrs   \n"
	"\n"
	"[cmd]\n"
	"  socket=/run/cqrs/cmd.sock\n"
	"pool_size = 8 ; inline comment\n"
	"Pool_Size = 9\n"
	"timeout = 250ms\n"
	"url = amqp://u:p@h:5672/v\n"
	"hash = a#b\n"
	"quoted = \"kept\"\n"
	"empty =\n"
	"\n"
	"[consumer.projections]\n"
	"plugins = /usr/lib/cqrs/plugins/bank.so\n"
	"[consumer.audit]\n"
	"[log]\n"
	"level = debug\n";

START_TEST(parses_sections_keys_and_comments)
{
	char *path;
	struct config *cfg = load_ok(sample, &path);

	ck_assert_str_eq(cqrs_config_path(cfg), path);
	ck_assert_str_eq(cqrs_config_get(cfg, "store", "conninfo", NULL),
			 "host=/run/postgresql dbname=cqrs");
	ck_assert_str_eq(cqrs_config_get(cfg, "cmd", "socket", NULL), "/run/cqrs/cmd.sock");
	ck_assert_str_eq(cqrs_config_get(cfg, "cmd", "pool_size", NULL), "8");
	/* case-sensitive: a different key */
	ck_assert_str_eq(cqrs_config_get(cfg, "cmd", "Pool_Size", NULL), "9");
	ck_assert_ptr_null(cqrs_config_get(cfg, "CMD", "pool_size", NULL));
	ck_assert_str_eq(cqrs_config_get(cfg, "cmd", "url", NULL), "amqp://u:p@h:5672/v");
	ck_assert_str_eq(cqrs_config_get(cfg, "cmd", "hash", NULL), "a#b");
	ck_assert_str_eq(cqrs_config_get(cfg, "cmd", "quoted", NULL), "\"kept\"");
	ck_assert_str_eq(cqrs_config_get(cfg, "cmd", "empty", "def"), "");
	ck_assert(cqrs_config_has(cfg, "cmd", "empty"));
	ck_assert_str_eq(cqrs_config_get(cfg, "consumer.projections", "plugins", NULL),
			 "/usr/lib/cqrs/plugins/bank.so");
	ck_assert_str_eq(cqrs_config_get(cfg, "log", "level", NULL), "debug");
	/* absent: the default, and not "has" */
	ck_assert_str_eq(cqrs_config_get(cfg, "cmd", "nope", "dflt"), "dflt");
	ck_assert_ptr_null(cqrs_config_get(cfg, "nosection", "key", NULL));
	ck_assert(!cqrs_config_has(cfg, "cmd", "nope"));
	ck_assert(!cqrs_config_has(cfg, "store", "pool_size"));
	cqrs_config_free(cfg);
	drop_temp(path);
}
END_TEST

START_TEST(load_string_and_null_path)
{
	struct config *cfg = NULL;
	struct cqrs_err err = { 0 };

	ck_assert_int_eq(cqrs_config_load_string("[a]\r\nk = v\r\n", "inline", &cfg, &err), 0);
	ck_assert_str_eq(cqrs_config_path(cfg), "inline");
	ck_assert_str_eq(cqrs_config_get(cfg, "a", "k", NULL), "v");	/* CRLF trimmed */
	cqrs_config_free(cfg);

	ck_assert_int_eq(cqrs_config_load_string("\xEF\xBB\xBF[a]\nk=v", NULL, &cfg, &err), 0);
	ck_assert_str_eq(cqrs_config_path(cfg), "<string>");
	ck_assert_str_eq(cqrs_config_get(cfg, "a", "k", NULL), "v");	/* BOM, no final newline */
	cqrs_config_free(cfg);

	/* no continuation lines: an indented pair is a pair of its own */
	ck_assert_int_eq(cqrs_config_load_string("[a]\nk = v\n  j = w\n\tl: x\n", NULL, &cfg, &err), 0);
	ck_assert_str_eq(cqrs_config_get(cfg, "a", "k", NULL), "v");
	ck_assert_str_eq(cqrs_config_get(cfg, "a", "j", NULL), "w");
	ck_assert_str_eq(cqrs_config_get(cfg, "a", "l", NULL), "x");
	cqrs_config_free(cfg);

	ck_assert_int_eq(cqrs_config_load(NULL, &cfg, &err), 0);
	ck_assert_ptr_null(cqrs_config_path(cfg));
	ck_assert_str_eq(cqrs_config_get(cfg, "store", "conninfo", "d"), "d");
	cqrs_config_free(cfg);
	cqrs_config_free(NULL);
}
END_TEST

START_TEST(env_overrides_file)
{
	char *path;
	struct config *cfg;

	setenv("CQRS_STORE_CONNINFO", "  dbname=other  ", 1);
	setenv("CQRS_CONSUMER_PROJECTIONS_PLUGINS", "/x.so /y.so", 1);
	cfg = load_ok(sample, &path);
	unsetenv("CQRS_STORE_CONNINFO");
	unsetenv("CQRS_CONSUMER_PROJECTIONS_PLUGINS");
	/* the environment wins, trimmed, and was copied at load time */
	ck_assert_str_eq(cqrs_config_get(cfg, "store", "conninfo", NULL), "dbname=other");
	ck_assert_str_eq(cqrs_config_get(cfg, "consumer.projections", "plugins", NULL),
			 "/x.so /y.so");
	/* others still come from the file */
	ck_assert_str_eq(cqrs_config_get(cfg, "cmd", "socket", NULL), "/run/cqrs/cmd.sock");
	cqrs_config_free(cfg);
	drop_temp(path);
}
END_TEST

START_TEST(env_only_keys)
{
	char *path;
	struct config *cfg;
	int64_t v = 0;
	struct cqrs_err err = { 0 };

	setenv("CQRS_CONSUMER_PROJECTIONS_FROM", "42", 1);
	setenv("CQRS_TRACKER_BATCH_SIZE", "4k", 1);
	setenv("CQRS_CMD_NEW_KEY", "x", 1);
	cfg = load_ok(sample, &path);
	unsetenv("CQRS_CONSUMER_PROJECTIONS_FROM");
	unsetenv("CQRS_TRACKER_BATCH_SIZE");
	unsetenv("CQRS_CMD_NEW_KEY");

	/* a key absent from a section that exists */
	ck_assert(cqrs_config_has(cfg, "cmd", "new_key"));
	ck_assert(cqrs_config_has(cfg, "cmd", "new-key"));	/* '-' maps to '_' too */
	ck_assert_str_eq(cqrs_config_get(cfg, "cmd", "new_key", NULL), "x");
	/* a dotted section name */
	ck_assert_str_eq(cqrs_config_get(cfg, "consumer.projections", "from", NULL), "42");
	/* a section absent from the file */
	ck_assert_int_eq(cqrs_config_get_int(cfg, "tracker", "batch_size", 1, 1, 1 << 20, &v, &err), 0);
	ck_assert_int_eq(v, 4096);
	/* names must match exactly */
	ck_assert(!cqrs_config_has(cfg, "tracker", "batch"));
	ck_assert(!cqrs_config_has(cfg, "consumer", "projections_from_x"));
	cqrs_config_free(cfg);
	drop_temp(path);

	/* with no file at all */
	setenv("CQRS_LOG_LEVEL", "warn", 1);
	ck_assert_int_eq(cqrs_config_load(NULL, &cfg, &err), 0);
	unsetenv("CQRS_LOG_LEVEL");
	ck_assert_str_eq(cqrs_config_get(cfg, "log", "level", NULL), "warn");
	cqrs_config_free(cfg);
}
END_TEST

START_TEST(get_int)
{
	struct config *cfg = NULL;
	struct cqrs_err err = { 0 };
	int64_t v = -7;

	ck_assert_int_eq(cqrs_config_load_string("[n]\n"
					    "plain = 12\n"
					    "neg = -3\n"
					    "plus = +5\n"
					    "kib = 4k\n"
					    "KIB = 2K\n"
					    "mib = 3M\n"
					    "gib = 2G\n"
					    "max = 9223372036854775807\n"
					    "min = -9223372036854775808\n"
					    "over = 9223372036854775808\n"
					    "bigg = 9999999999G\n"
					    "ten = ten\n"
					    "space = 1 k\n"
					    "frac = 1.5\n"
					    "empty =\n"
					    "bad_suffix = 4kb\n",
					    "n.conf", &cfg, &err), 0);

#define INT_OK(key, want)                                                           \
	do {                                                                        \
		ck_assert_msg(cqrs_config_get_int(cfg, "n", key, 0, INT64_MIN, INT64_MAX, &v, \
					     &err) == 0, "%s: %s", key, err.msg);   \
		ck_assert_int_eq(v, want);                                          \
	} while (0)
	INT_OK("plain", 12);
	INT_OK("neg", -3);
	INT_OK("plus", 5);
	INT_OK("kib", 4096);
	INT_OK("KIB", 2048);
	INT_OK("mib", 3 * 1024 * 1024);
	INT_OK("gib", INT64_C(2) * 1024 * 1024 * 1024);
	INT_OK("max", INT64_MAX);
	INT_OK("min", INT64_MIN);
#undef INT_OK

	/* absent: the default, even outside [min, max] it is the caller's */
	ck_assert_int_eq(cqrs_config_get_int(cfg, "n", "absent", 77, 0, 10, &v, &err), 0);
	ck_assert_int_eq(v, 77);

	/* bounds */
	ck_assert_int_eq(cqrs_config_get_int(cfg, "n", "plain", 0, 12, 12, &v, &err), 0);
	v = -7;
	ck_assert_int_eq(cqrs_config_get_int(cfg, "n", "plain", 0, 1, 11, &v, &err), CQRS_ECONFIG);
	ck_assert_int_eq(v, -7);	/* untouched on error */
	ck_assert_str_eq(err.msg, "n.conf:2: [n] plain: \"12\" is out of range [1, 11]");
	ck_assert_int_eq(cqrs_config_get_int(cfg, "n", "plain", 0, 13, 100, &v, &err), CQRS_ECONFIG);
	ck_assert_int_eq(cqrs_config_get_int(cfg, "n", "kib", 0, 0, 4095, &v, &err), CQRS_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err.msg, "n.conf:5: [n] kib: \"4k\" is out of range"));
	ck_assert_int_eq(cqrs_config_get_int(cfg, "n", "over", 0, INT64_MIN, INT64_MAX, &v, &err),
			 CQRS_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err.msg, "n.conf:11: [n] over: "));
	ck_assert_ptr_nonnull(strstr(err.msg, "out of range"));
	ck_assert_int_eq(cqrs_config_get_int(cfg, "n", "bigg", 0, INT64_MIN, INT64_MAX, &v, &err),
			 CQRS_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err.msg, "out of range"));

	/* not integers */
	ck_assert_int_eq(cqrs_config_get_int(cfg, "n", "ten", 0, 0, 100, &v, &err), CQRS_ECONFIG);
	ck_assert_str_eq(err.msg, "n.conf:13: [n] ten: \"ten\" is not an integer");
	ck_assert_int_eq(cqrs_config_get_int(cfg, "n", "space", 0, 0, 100, &v, &err), CQRS_ECONFIG);
	ck_assert_str_eq(err.msg, "n.conf:14: [n] space: \"1 k\" is not an integer");
	ck_assert_int_eq(cqrs_config_get_int(cfg, "n", "frac", 0, 0, 100, &v, &err), CQRS_ECONFIG);
	ck_assert_int_eq(cqrs_config_get_int(cfg, "n", "empty", 0, 0, 100, &v, &err), CQRS_ECONFIG);
	ck_assert_str_eq(err.msg, "n.conf:16: [n] empty: \"\" is not an integer");
	ck_assert_int_eq(cqrs_config_get_int(cfg, "n", "bad_suffix", 0, 0, 1 << 30, &v, &err),
			 CQRS_ECONFIG);
	cqrs_config_free(cfg);
}
END_TEST

START_TEST(get_int_from_file_and_env_names_the_source)
{
	char *path;
	struct config *cfg;
	struct cqrs_err err = { 0 };
	char want[300];
	int64_t v;

	cfg = load_ok("[cmd]\n\n# pool\npool_size = ten\n", &path);
	ck_assert_int_eq(cqrs_config_get_int(cfg, "cmd", "pool_size", 4, 1, 64, &v, &err),
			 CQRS_ECONFIG);
	ck_assert_int_eq(err.code, CQRS_ECONFIG);
	snprintf(want, sizeof(want), "%s:4: [cmd] pool_size: \"ten\" is not an integer", path);
	ck_assert_str_eq(err.msg, want);
	cqrs_config_free(cfg);

	setenv("CQRS_CMD_POOL_SIZE", "eleventy", 1);
	ck_assert_int_eq(cqrs_config_load(path, &cfg, &err), 0);
	unsetenv("CQRS_CMD_POOL_SIZE");
	ck_assert_int_eq(cqrs_config_get_int(cfg, "cmd", "pool_size", 4, 1, 64, &v, &err),
			 CQRS_ECONFIG);
	ck_assert_str_eq(err.msg, "environment CQRS_CMD_POOL_SIZE: [cmd] pool_size: "
			 "\"eleventy\" is not an integer");
	cqrs_config_free(cfg);
	drop_temp(path);
}
END_TEST

START_TEST(long_bad_value_is_cut_in_message)
{
	struct config *cfg = NULL;
	struct cqrs_err err = { 0 };
	char text[400];
	int64_t v;

	snprintf(text, sizeof(text), "[a]\nk = %0300d\"x\n", 7);
	ck_assert_int_eq(cqrs_config_load_string(text, "t", &cfg, &err), 0);
	ck_assert_int_eq(cqrs_config_get_int(cfg, "a", "k", 0, 0, 1, &v, &err), CQRS_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err.msg, "t:2: [a] k: \"0000"));
	ck_assert_ptr_nonnull(strstr(err.msg, "000...\" is not an integer"));
	ck_assert_uint_lt(strlen(err.msg), 120);
	cqrs_config_free(cfg);
}
END_TEST

START_TEST(get_bool)
{
	struct config *cfg = NULL;
	struct cqrs_err err = { 0 };
	const char *yes[] = { "t1", "t2", "t3", "t4", "t5" };
	const char *no[] = { "f1", "f2", "f3", "f4", "f5" };
	bool b;

	ck_assert_int_eq(cqrs_config_load_string("[b]\n"
					    "t1 = true\nt2 = yes\nt3 = on\nt4 = 1\nt5 = TRUE\n"
					    "f1 = false\nf2 = no\nf3 = off\nf4 = 0\nf5 = Off\n"
					    "bad = maybe\n",
					    "b.conf", &cfg, &err), 0);
	for (int i = 0; i < 5; i++) {
		b = false;
		ck_assert_int_eq(cqrs_config_get_bool(cfg, "b", yes[i], false, &b, &err), 0);
		ck_assert_msg(b, "%s", yes[i]);
		b = true;
		ck_assert_int_eq(cqrs_config_get_bool(cfg, "b", no[i], true, &b, &err), 0);
		ck_assert_msg(!b, "%s", no[i]);
	}
	ck_assert_int_eq(cqrs_config_get_bool(cfg, "b", "absent", true, &b, &err), 0);
	ck_assert(b);
	ck_assert_int_eq(cqrs_config_get_bool(cfg, "b", "absent", false, &b, &err), 0);
	ck_assert(!b);
	ck_assert_int_eq(cqrs_config_get_bool(cfg, "b", "bad", false, &b, &err), CQRS_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err.msg, "b.conf:12: [b] bad: \"maybe\" is not a boolean"));
	cqrs_config_free(cfg);
}
END_TEST

START_TEST(get_ms)
{
	struct config *cfg = NULL;
	struct cqrs_err err = { 0 };
	int64_t v;

	ck_assert_int_eq(cqrs_config_load_string("[d]\n"
					    "a = 250ms\nb = 5s\nc = 2m\nd = 100\ne = 1h\nf = 0\n"
					    "bad1 = 5x\nbad2 = ms\nbad3 = 5 s\nbad4 = 1.5s\n"
					    "big = 9999999999999999h\n",
					    "d.conf", &cfg, &err), 0);
#define MS_OK(key, want)                                                         \
	do {                                                                     \
		ck_assert_msg(cqrs_config_get_ms(cfg, "d", key, -1, 0, INT64_MAX, &v, &err) == 0, \
			      "%s: %s", key, err.msg);                           \
		ck_assert_int_eq(v, want);                                       \
	} while (0)
	MS_OK("a", 250);
	MS_OK("b", 5000);
	MS_OK("c", 120000);
	MS_OK("d", 100);
	MS_OK("e", 3600000);
	MS_OK("f", 0);
#undef MS_OK
	ck_assert_int_eq(cqrs_config_get_ms(cfg, "d", "absent", 1500, 0, 10, &v, &err), 0);
	ck_assert_int_eq(v, 1500);
	ck_assert_int_eq(cqrs_config_get_ms(cfg, "d", "b", 0, 0, 4999, &v, &err), CQRS_ECONFIG);
	ck_assert_str_eq(err.msg, "d.conf:3: [d] b: \"5s\" is out of range [0, 4999]");
	ck_assert_int_eq(cqrs_config_get_ms(cfg, "d", "a", 0, 251, 1000, &v, &err), CQRS_ECONFIG);
	for (int i = 1; i <= 4; i++) {
		char key[16];

		snprintf(key, sizeof(key), "bad%d", i);
		ck_assert_int_eq(cqrs_config_get_ms(cfg, "d", key, 0, 0, INT64_MAX, &v, &err),
				 CQRS_ECONFIG);
		ck_assert_msg(strstr(err.msg, "is not a duration") != NULL, "%s", err.msg);
		ck_assert_ptr_nonnull(strstr(err.msg, key));
	}
	ck_assert_ptr_nonnull(strstr(err.msg, "d.conf:11: [d] bad4: \"1.5s\""));
	ck_assert_int_eq(cqrs_config_get_ms(cfg, "d", "big", 0, 0, INT64_MAX, &v, &err),
			 CQRS_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err.msg, "out of range"));
	cqrs_config_free(cfg);
}
END_TEST

START_TEST(get_enum)
{
	static const char *const levels[] = { "error", "warn", "info", "debug", NULL };
	struct config *cfg = NULL;
	struct cqrs_err err = { 0 };
	int idx = -5;

	ck_assert_int_eq(cqrs_config_load_string("[log]\nlevel = debug\nshout = WARN\n"
					    "bad = verbose\n", "e.conf", &cfg, &err), 0);
	ck_assert_int_eq(cqrs_config_get_enum(cfg, "log", "level", "info", levels, &idx, &err), 0);
	ck_assert_int_eq(idx, 3);
	ck_assert_int_eq(cqrs_config_get_enum(cfg, "log", "shout", "info", levels, &idx, &err), 0);
	ck_assert_int_eq(idx, 1);
	ck_assert_int_eq(cqrs_config_get_enum(cfg, "log", "absent", "info", levels, &idx, &err), 0);
	ck_assert_int_eq(idx, 2);
	ck_assert_int_eq(cqrs_config_get_enum(cfg, "log", "absent", NULL, levels, &idx, &err), 0);
	ck_assert_int_eq(idx, -1);
	idx = -5;
	ck_assert_int_eq(cqrs_config_get_enum(cfg, "log", "bad", "info", levels, &idx, &err),
			 CQRS_ECONFIG);
	ck_assert_int_eq(idx, -5);
	ck_assert_str_eq(err.msg, "e.conf:4: [log] bad: \"verbose\" is not one of: "
			 "error, warn, info, debug");
	/* a default outside the choices is the caller's bug */
	ck_assert_int_eq(cqrs_config_get_enum(cfg, "log", "absent", "loud", levels, &idx, &err),
			 CQRS_EINTERNAL);
	cqrs_config_free(cfg);
}
END_TEST

START_TEST(missing_file)
{
	struct config *cfg = (struct config *)1;
	struct cqrs_err err = { 0 };

	ck_assert_int_eq(cqrs_config_load("/nonexistent/cqrs.conf", &cfg, &err), CQRS_ENOTFOUND);
	ck_assert_ptr_null(cfg);
	ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/cqrs.conf"));
	ck_assert_ptr_nonnull(strstr(err.msg, "No such file"));
	/* a directory is not a config file */
	ck_assert_int_eq(cqrs_config_load("/tmp", &cfg, &err), CQRS_EIO);
	ck_assert_ptr_nonnull(strstr(err.msg, "/tmp: "));
}
END_TEST

/* cqrs_config_load_buffer() on len bytes put right before a page that may not
 * be read: a read past the end is a crash, with or without a sanitizer. */
static int
load_guarded(const char *text, size_t len, struct config **cfg, struct cqrs_err *err)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	char *map = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int rc;

	ck_assert(map != MAP_FAILED && len <= page);
	ck_assert_int_eq(mprotect(map + page, page, PROT_NONE), 0);
	memcpy(map + page - len, text, len);
	rc = cqrs_config_load_buffer(map + page - len, len, "buf", cfg, err);
	munmap(map, 2 * page);
	return rc;
}

START_TEST(load_buffer_reads_only_its_bytes)
{
	static const struct {
		const char *text;
		const char *msg;	/* NULL: loads */
	} cases[] = {
		{ "", NULL },
		{ "[a]\nk = v", NULL },
		{ "\xEF\xBB\xBF[a]\nk = v", NULL },
		/* found by tests/fuzz/fuzz_config.c: a refused last line that is
		 * shorter than a BOM, or all blanks before its end */
		{ "\xEF", "buf:1: expected \"key = value\"" },
		{ "\xEF\xBB", "buf:1: expected \"key = value\"" },
		{ "[a]\nk = v\n \t[b", "buf:3: malformed section" },
		{ "[a]\nk = v\n \tjunk", "buf:3: expected \"key = value\"" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct config *cfg = NULL;
		struct cqrs_err err = { 0 };
		int rc = load_guarded(cases[i].text, strlen(cases[i].text), &cfg, &err);

		if (cases[i].msg == NULL) {
			ck_assert_msg(rc == 0, "case %zu: %s", i, err.msg);
			if (cases[i].text[0] != '\0')
				ck_assert_str_eq(cqrs_config_get(cfg, "a", "k", NULL), "v");
			cqrs_config_free(cfg);
			continue;
		}
		ck_assert_msg(rc == CQRS_ECONFIG && cfg == NULL, "case %zu: rc %d", i, rc);
		ck_assert_msg(strstr(err.msg, cases[i].msg) != NULL, "case %zu: \"%s\" should say \"%s\"",
			      i, err.msg, cases[i].msg);
	}
}
END_TEST

START_TEST(syntax_errors_name_the_line)
{
	static const char no_equals[] = "[store]\nconninfo = x\n\nthis is not a pair\nk = v\n";
	static const char open_section[] = "[store]\nk = v\n[cmd\nk = v\n";
	static const char outside[] = "; top\nk = v\n[store]\n";
	static const char empty_key[] = "[store]\n = v\n";
	static const char empty_section[] = "[store]\n[  ]\n";
	static const char nul[] = "[a]\nk = v\0\n";

	load_fails(no_equals, strlen(no_equals), CQRS_ECONFIG, ":4: expected \"key = value\"");
	load_fails(open_section, strlen(open_section), CQRS_ECONFIG, ":3: malformed section");
	load_fails(outside, strlen(outside), CQRS_ECONFIG, ":2: key \"k\" is outside any [section]");
	load_fails(empty_key, strlen(empty_key), CQRS_ECONFIG, ":2: [store] missing key");
	load_fails(empty_section, strlen(empty_section), CQRS_ECONFIG, ":2: empty section name");
	load_fails(nul, sizeof(nul) - 1, CQRS_ECONFIG, ":2: contains a NUL byte");
}
END_TEST

START_TEST(duplicate_key_names_both_lines)
{
	static const char text[] =
		"[cmd]\npool_size = 1\n[store]\nconninfo = x\n[cmd]\nsocket = s\n"
		"pool_size = 2\nsocket = t\n";

	/* the first repeat in the file is the one reported */
	load_fails(text, strlen(text), CQRS_ECONFIG,
		   ":7: [cmd] pool_size: duplicate key (first set on line 2)");
}
END_TEST

START_TEST(repeated_section_header_merges)
{
	char *path;
	struct config *cfg = load_ok("[cmd]\na = 1\n[store]\nx = 1\n[cmd]\nb = 2\n", &path);

	ck_assert_str_eq(cqrs_config_get(cfg, "cmd", "a", NULL), "1");
	ck_assert_str_eq(cqrs_config_get(cfg, "cmd", "b", NULL), "2");
	cqrs_config_free(cfg);
	drop_temp(path);
}
END_TEST

START_TEST(size_limits)
{
	size_t vmax = 64 * 1024;
	size_t fmax = 1024 * 1024;
	char *text = xmalloc(fmax + 64);
	char *path;
	struct config *cfg;
	struct cqrs_err err = { 0 };
	size_t n;

	ck_assert_ptr_nonnull(text);
	/* a value of exactly 64 KiB loads, far beyond libinih's 200-byte lines */
	n = (size_t)sprintf(text, "[a]\nplugins = ");
	memset(text + n, 'v', vmax);
	strcpy(text + n + vmax, "\nafter = 1\n");
	cfg = load_ok(text, &path);
	ck_assert_uint_eq(strlen(cqrs_config_get(cfg, "a", "plugins", "")), vmax);
	ck_assert_str_eq(cqrs_config_get(cfg, "a", "after", ""), "1");
	cqrs_config_free(cfg);
	drop_temp(path);

	/* one byte more is refused */
	n = (size_t)sprintf(text, "[a]\n\nplugins = ");
	memset(text + n, 'v', vmax + 1);
	strcpy(text + n + vmax + 1, "\n");
	load_fails(text, strlen(text), CQRS_ECONFIG,
		   ":3: [a] plugins: value is longer than 65536 bytes");

	/* a line far too long is refused, not split into two */
	n = (size_t)sprintf(text, "[a]\nplugins = ");
	memset(text + n, 'v', 3 * vmax);
	strcpy(text + n + 3 * vmax, "\n");
	load_fails(text, strlen(text), CQRS_ECONFIG, ":2: line is too long");

	/* a file over 1 MiB is refused before parsing */
	n = (size_t)sprintf(text, "[a]\n");
	while (n <= fmax) {
		memcpy(text + n, "; padding padding padding\n", 26);
		n += 26;
	}
	load_fails(text, n, CQRS_ECONFIG, ": file is larger than 1048576 bytes");
	/* the same from a string */
	text[n] = '\0';
	cfg = (struct config *)1;
	ck_assert_int_eq(cqrs_config_load_string(text, "big", &cfg, &err), CQRS_ECONFIG);
	ck_assert_ptr_null(cfg);
	ck_assert_str_eq(err.msg, "big: file is larger than 1048576 bytes");

	/* but 1 MiB of comments and keys is fine */
	n = (size_t)sprintf(text, "[a]\n");
	while (n + 26 <= fmax) {
		memcpy(text + n, "; padding padding padding\n", 26);
		n += 26;
	}
	text[n] = '\0';
	cfg = load_ok(text, &path);
	cqrs_config_free(cfg);
	drop_temp(path);
	free(text);
}
END_TEST

START_TEST(long_section_names_are_kept_whole)
{
	char *path;
	char name[200], text[300];
	struct config *cfg;

	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	memcpy(name, "consumer.", 9);
	snprintf(text, sizeof(text), "[ %s ]\nk = v\n", name);
	cfg = load_ok(text, &path);
	ck_assert_str_eq(cqrs_config_get(cfg, name, "k", ""), "v");
	cqrs_config_free(cfg);
	drop_temp(path);
}
END_TEST

START_TEST(check_keys_reports_unknown)
{
	static const char *const cmd_keys[] = { "socket", "pool_size", "timeout", "url",
						"hash", "quoted", "empty", "Pool_Size", NULL };
	static const char *const typo[] = { "socket", "pool_size", NULL };
	char *path;
	struct config *cfg = load_ok(sample, &path);
	struct cqrs_err err = { 0 };
	char want[300];

	ck_assert_int_eq(cqrs_config_check_keys(cfg, "cmd", cmd_keys, &err), 0);
	/* a section the file does not have is fine */
	ck_assert_int_eq(cqrs_config_check_keys(cfg, "tracker", typo, &err), 0);
	/* the first unknown key in file order is reported */
	ck_assert_int_eq(cqrs_config_check_keys(cfg, "cmd", typo, &err), CQRS_ECONFIG);
	snprintf(want, sizeof(want), "%s:10: [cmd] Pool_Size: unknown key", path);
	ck_assert_str_eq(err.msg, want);
	cqrs_config_free(cfg);
	drop_temp(path);
}
END_TEST

struct seen {
	int n;
	char names[8][64];
};

static void
collect(const char *section, void *arg)
{
	struct seen *s = arg;

	ck_assert_int_lt(s->n, 8);
	snprintf(s->names[s->n++], sizeof(s->names[0]), "%s", section);
}

START_TEST(each_section_with_prefix)
{
	char *path;
	struct config *cfg = load_ok("[consumer.b]\nk=1\n[store]\nk=1\n[consumer.a]\n"
				     "[consumer]\nk=1\n[consumer.b]\nj=2\n[consumers.x]\n",
				     &path);
	struct seen s = { 0 };

	/* file order, each once, empty sections included, prefix matched as is */
	cqrs_config_each_section(cfg, "consumer.", collect, &s);
	ck_assert_int_eq(s.n, 2);
	ck_assert_str_eq(s.names[0], "consumer.b");
	ck_assert_str_eq(s.names[1], "consumer.a");

	memset(&s, 0, sizeof(s));
	cqrs_config_each_section(cfg, "", collect, &s);
	ck_assert_int_eq(s.n, 5);
	ck_assert_str_eq(s.names[0], "consumer.b");
	ck_assert_str_eq(s.names[1], "store");
	ck_assert_str_eq(s.names[2], "consumer.a");
	ck_assert_str_eq(s.names[3], "consumer");
	ck_assert_str_eq(s.names[4], "consumers.x");

	memset(&s, 0, sizeof(s));
	cqrs_config_each_section(cfg, "tracker", collect, &s);
	ck_assert_int_eq(s.n, 0);
	cqrs_config_free(cfg);
	drop_temp(path);
}
END_TEST

START_TEST(many_keys_load_quickly)
{
	size_t cap = 1000 * 1000;
	char *text = xmalloc(cap);
	char *path;
	struct config *cfg;
	size_t n = 0;
	int i = 0;

	ck_assert_ptr_nonnull(text);
	n += (size_t)sprintf(text, "[s]\n");
	while (n + 32 < cap) {
		char line[32];
		int w = snprintf(line, sizeof(line), "k%d = %d\n", i, i);

		memcpy(text + n, line, (size_t)w + 1);
		n += (size_t)w;
		i++;
	}
	cfg = load_ok(text, &path);
	ck_assert_str_eq(cqrs_config_get(cfg, "s", "k0", ""), "0");
	ck_assert_str_eq(cqrs_config_get(cfg, "s", "k12345", ""), "12345");
	{
		char key[32], want[32];

		snprintf(key, sizeof(key), "k%d", i - 1);
		snprintf(want, sizeof(want), "%d", i - 1);
		ck_assert_str_eq(cqrs_config_get(cfg, "s", key, ""), want);
	}
	cqrs_config_free(cfg);
	drop_temp(path);
	free(text);
}
END_TEST

static Suite *
config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("parse");

	tcase_add_test(tc, parses_sections_keys_and_comments);
	tcase_add_test(tc, load_string_and_null_path);
	tcase_add_test(tc, missing_file);
	tcase_add_test(tc, syntax_errors_name_the_line);
	tcase_add_test(tc, load_buffer_reads_only_its_bytes);
	tcase_add_test(tc, duplicate_key_names_both_lines);
	tcase_add_test(tc, repeated_section_header_merges);
	tcase_add_test(tc, size_limits);
	tcase_add_test(tc, long_section_names_are_kept_whole);
	tcase_add_test(tc, many_keys_load_quickly);
	tcase_set_timeout(tc, 30);
	suite_add_tcase(s, tc);

	tc = tcase_create("env");
	tcase_add_test(tc, env_overrides_file);
	tcase_add_test(tc, env_only_keys);
	tcase_add_test(tc, get_int_from_file_and_env_names_the_source);
	suite_add_tcase(s, tc);

	tc = tcase_create("getters");
	tcase_add_test(tc, get_int);
	tcase_add_test(tc, long_bad_value_is_cut_in_message);
	tcase_add_test(tc, get_bool);
	tcase_add_test(tc, get_ms);
	tcase_add_test(tc, get_enum);
	suite_add_tcase(s, tc);

	tc = tcase_create("sections");
	tcase_add_test(tc, check_keys_reports_unknown);
	tcase_add_test(tc, each_section_with_prefix);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(config_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* test_log.c - logfmt lines: fields, quoting, journald prefixes, levels. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cqrs/log.h"

#define LINE 8192

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

static char *
fmt(char *buf, size_t size, const struct cqrs_log_ctx *ctx, int level,
    int journal, const char *msg)
{
	size_t n = cqrs_log_format(buf, size, ctx, level, journal, msg);

	ck_assert_uint_lt(n, size);
	ck_assert_uint_eq(n, strlen(buf));
	return buf;
}

/* Everything written to f since the start, as one string (owned). */
static char *
slurp(FILE *f)
{
	long n;
	char *s;

	fflush(f);
	n = ftell(f);
	ck_assert_int_ge(n, 0);
	s = xmalloc((size_t)n + 1);
	ck_assert_ptr_nonnull(s);
	rewind(f);
	ck_assert_uint_eq(fread(s, 1, (size_t)n, f), (size_t)n);
	s[n] = '\0';
	return s;
}

static int
count_lines(const char *s)
{
	int n = 0;

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static FILE *
capture(int journal)
{
	FILE *f = tmpfile();

	ck_assert_ptr_nonnull(f);
	cqrs_log_set_output(f, journal);
	cqrs_log_set_level(CQRS_LOG_INFO);
	return f;
}

static void
release(FILE *f)
{
	cqrs_log_set_output(NULL, -1);
	cqrs_log_set_level(CQRS_LOG_INFO);
	fclose(f);
}

START_TEST(every_field_in_order)
{
	struct cqrs_log_ctx ctx = {
		.comp = "cmdd",
		.correlation_id = "c-1",
		.causation_id = "c-2",
		.command_id = "k-3",
		.stream = "account-42",
		.event_id = "e-4",
		.consumer = "projections",
	};
	char buf[LINE];

	ck_assert_str_eq(fmt(buf, sizeof(buf), &ctx, CQRS_LOG_INFO, 1, "opened"),
			 "<6>level=info comp=cmdd correlation_id=c-1 causation_id=c-2 "
			 "command_id=k-3 stream=account-42 event_id=e-4 "
			 "consumer=projections msg=\"opened\"");
}
END_TEST

START_TEST(null_fields_are_left_out)
{
	struct cqrs_log_ctx ctx = { .comp = "tracker", .stream = "s" };
	char buf[LINE];

	ck_assert_str_eq(fmt(buf, sizeof(buf), &ctx, CQRS_LOG_WARN, 1, "x"),
			 "<4>level=warn comp=tracker stream=s msg=\"x\"");
	ck_assert_str_eq(fmt(buf, sizeof(buf), NULL, CQRS_LOG_ERROR, 1, "boom"),
			 "<3>level=error msg=\"boom\"");
	ck_assert_str_eq(fmt(buf, sizeof(buf), NULL, CQRS_LOG_ERROR, 1, NULL),
			 "<3>level=error msg=\"\"");
}
END_TEST

START_TEST(timestamp_without_journal)
{
	struct cqrs_log_ctx ctx = { .comp = "cmdd" };
	char buf[LINE];
	struct tm tm;
	const char *rest;
	time_t now = time(NULL), t;
	int ms = -1;

	fmt(buf, sizeof(buf), &ctx, CQRS_LOG_INFO, 0, "hi");
	/* ts=YYYY-MM-DDTHH:MM:SS.mmmZ, UTC, now */
	ck_assert_msg(strncmp(buf, "ts=", 3) == 0, "%s", buf);
	memset(&tm, 0, sizeof(tm));
	rest = strptime(buf + 3, "%Y-%m-%dT%H:%M:%S", &tm);
	ck_assert_ptr_nonnull(rest);
	ck_assert_int_eq(rest[0], '.');
	ck_assert_int_eq(sscanf(rest + 1, "%3d", &ms), 1);
	ck_assert(ms >= 0 && ms <= 999);
	ck_assert_int_eq(rest[4], 'Z');
	ck_assert_str_eq(rest + 5, " level=info comp=cmdd msg=\"hi\"");
	ck_assert_uint_eq(strlen("ts=2026-11-26T05:20:49.123Z"), (size_t)(rest + 5 - buf));
	t = timegm(&tm);
	ck_assert_msg(t >= now - 5 && t <= now + 5, "ts %s is not now", buf);
}
END_TEST

START_TEST(journal_prefix_per_level)
{
	char buf[LINE];

	ck_assert_str_eq(fmt(buf, sizeof(buf), NULL, CQRS_LOG_ERROR, 1, "m"),
			 "<3>level=error msg=\"m\"");
	ck_assert_str_eq(fmt(buf, sizeof(buf), NULL, CQRS_LOG_WARN, 1, "m"),
			 "<4>level=warn msg=\"m\"");
	ck_assert_str_eq(fmt(buf, sizeof(buf), NULL, CQRS_LOG_INFO, 1, "m"),
			 "<6>level=info msg=\"m\"");
	ck_assert_str_eq(fmt(buf, sizeof(buf), NULL, CQRS_LOG_DEBUG, 1, "m"),
			 "<7>level=debug msg=\"m\"");
	/* out of range priorities are clamped, never printed as <12> */
	ck_assert_str_eq(fmt(buf, sizeof(buf), NULL, 12, 1, "m"),
			 "<7>level=debug msg=\"m\"");
	ck_assert_str_eq(fmt(buf, sizeof(buf), NULL, -1, 1, "m"),
			 "<0>level=emerg msg=\"m\"");
	/* without journald there is no prefix at all */
	fmt(buf, sizeof(buf), NULL, CQRS_LOG_ERROR, 0, "m");
	ck_assert(buf[0] != '<');
}
END_TEST

START_TEST(values_are_quoted_when_needed)
{
	struct cqrs_log_ctx ctx = {
		.comp = "my plugin",		/* space */
		.correlation_id = "a=b",	/* '=' */
		.causation_id = "say \"hi\"",	/* quotes */
		.command_id = "",		/* empty */
		.stream = "back\\slash",	/* bare: kept as is */
		.event_id = "tab\there",	/* control */
		.consumer = "caf\xc3\xa9",	/* UTF-8 kept */
	};
	char buf[LINE];

	ck_assert_str_eq(fmt(buf, sizeof(buf), &ctx, CQRS_LOG_INFO, 1, "ok"),
			 "<6>level=info comp=\"my plugin\" correlation_id=\"a=b\" "
			 "causation_id=\"say \\\"hi\\\"\" command_id=\"\" "
			 "stream=back\\slash event_id=\"tab\\there\" "
			 "consumer=caf\xc3\xa9 msg=\"ok\"");
}
END_TEST

START_TEST(message_cannot_inject_keys_or_lines)
{
	char buf[LINE];

	ck_assert_str_eq(fmt(buf, sizeof(buf), NULL, CQRS_LOG_INFO, 1,
			     "x\" level=debug fake=\"y\nnext\\line\r\x01\x7f"),
			 "<6>level=info msg=\"x\\\" level=debug fake=\\\"y\\nnext\\\\line"
			 "\\r\\u0001\\u007f\"");
	ck_assert_ptr_null(strchr(buf, '\n'));
	/* a context value cannot either */
	{
		struct cqrs_log_ctx ctx = { .stream = "s\nlevel=error" };

		ck_assert_str_eq(fmt(buf, sizeof(buf), &ctx, CQRS_LOG_INFO, 1, "m"),
				 "<6>level=info stream=\"s\\nlevel=error\" msg=\"m\"");
	}
}
END_TEST

START_TEST(small_buffer_is_cut_and_marked)
{
	char buf[40];
	char big[200];

	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	fmt(buf, sizeof(buf), NULL, CQRS_LOG_INFO, 1, big);
	ck_assert_str_eq(buf, "<6>level=info msg=\"aaaaa...(truncated)\"");
	ck_assert_uint_eq(strlen(buf), sizeof(buf) - 1);
	/* a message that exactly fits is not marked */
	fmt(buf, sizeof(buf), NULL, CQRS_LOG_INFO, 1, "0123456789abcdefghi");
	ck_assert_str_eq(buf, "<6>level=info msg=\"0123456789abcdefghi\"");
	ck_assert_uint_eq(strlen(buf), sizeof(buf) - 1);
	/* one byte more is */
	fmt(buf, sizeof(buf), NULL, CQRS_LOG_INFO, 1, "0123456789abcdefghij");
	ck_assert_str_eq(buf, "<6>level=info msg=\"01234...(truncated)\"");
	/* degenerate sizes stay in bounds */
	ck_assert_uint_eq(cqrs_log_format(buf, 0, NULL, CQRS_LOG_INFO, 1, "m"), 0);
	ck_assert_uint_eq(cqrs_log_format(buf, 1, NULL, CQRS_LOG_INFO, 1, "m"), 0);
	ck_assert_str_eq(buf, "");
	ck_assert_uint_eq(cqrs_log_format(buf, 5, NULL, CQRS_LOG_INFO, 1, "m"), 4);
	ck_assert_str_eq(buf, "<6>l");
}
END_TEST

START_TEST(cut_never_splits_escapes_or_utf8)
{
	char buf[44];
	char big[400];
	size_t n;

	/* 'é' is two bytes; whatever the cut, no lone lead byte stays behind */
	for (size_t size = 35; size <= sizeof(buf); size++) {
		big[0] = '\0';
		for (int i = 0; i < 100; i++)
			strcat(big, "\xc3\xa9");
		n = cqrs_log_format(buf, size, NULL, CQRS_LOG_INFO, 1, big);
		ck_assert_uint_lt(n, size);
		ck_assert_msg(strstr(buf, "...(truncated)\"") != NULL, "%s", buf);
		for (const char *p = buf + strlen("<6>level=info msg=\""); *p != '.'; p += 2)
			ck_assert_msg((unsigned char)p[0] == 0xc3 && (unsigned char)p[1] == 0xa9,
				      "split UTF-8 at size %zu: %s", size, buf);
	}
	/* nor by invalid UTF-8 right after an escape */
	for (size_t size = 35; size <= sizeof(buf); size++) {
		big[0] = '\0';
		for (int i = 0; i < 60; i++)
			strcat(big, "\"\x80");
		cqrs_log_format(buf, size, NULL, CQRS_LOG_INFO, 1, big);
		{
			const char *mark = strstr(buf, "...(truncated)\"");
			int slashes = 0;

			ck_assert_ptr_nonnull(mark);
			for (const char *p = mark; p > buf && p[-1] == '\\'; p--)
				slashes++;
			ck_assert_msg(slashes % 2 == 0, "lone backslash at size %zu: %s", size, buf);
		}
	}
	/* an escape is never cut in half */
	for (size_t size = 35; size <= sizeof(buf); size++) {
		memset(big, '"', 100);
		big[100] = '\0';
		cqrs_log_format(buf, size, NULL, CQRS_LOG_INFO, 1, big);
		for (const char *p = buf + strlen("<6>level=info msg=\""); *p != '.'; p += 2)
			ck_assert_msg(p[0] == '\\' && p[1] == '"', "split escape: %s", buf);
	}
}
END_TEST

START_TEST(long_context_value_leaves_room_for_msg)
{
	char id[1000];
	struct cqrs_log_ctx ctx = { .correlation_id = id };
	char buf[LINE];

	memset(id, 'x', sizeof(id) - 1);
	id[sizeof(id) - 1] = '\0';
	fmt(buf, sizeof(buf), &ctx, CQRS_LOG_INFO, 1, "still here");
	ck_assert_ptr_nonnull(strstr(buf, "xxx...(truncated) msg=\"still here\""));
	ck_assert_uint_lt(strlen(buf), 400);
}
END_TEST

START_TEST(write_cuts_long_lines)
{
	FILE *f = capture(1);
	char *big = xmalloc(20000), *out;

	ck_assert_ptr_nonnull(big);
	memset(big, 'z', 19999);
	big[19999] = '\0';
	cqrs_log_info(NULL, "%s", big);
	out = slurp(f);
	ck_assert_int_eq(count_lines(out), 1);
	ck_assert_uint_le(strlen(out), 8192);
	ck_assert_uint_gt(strlen(out), 8000);
	ck_assert_msg(strncmp(out, "<6>level=info msg=\"zzz", 22) == 0, "%.40s", out);
	ck_assert_str_eq(out + strlen(out) - 16, "...(truncated)\"\n");
	free(out);
	free(big);
	release(f);
}
END_TEST

START_TEST(write_formats_and_ends_with_newline)
{
	FILE *f = capture(1);
	struct cqrs_log_ctx ctx = { .comp = "cmdd", .command_id = "k1" };
	char *out;

	cqrs_log_warn(&ctx, "could not open \"%s\": %s", "/x y", "denied");
	out = slurp(f);
	ck_assert_str_eq(out, "<4>level=warn comp=cmdd command_id=k1 "
			 "msg=\"could not open \\\"/x y\\\": denied\"\n");
	free(out);
	release(f);
}
END_TEST

START_TEST(threshold_filters)
{
	FILE *f = capture(1);
	int evaluated = 0;
	char *out;

	cqrs_log_set_level(CQRS_LOG_WARN);
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_WARN);
	ck_assert(!cqrs_log_enabled(CQRS_LOG_INFO));
	ck_assert(cqrs_log_enabled(CQRS_LOG_ERROR));
	cqrs_log_debug(NULL, "debug %d", ++evaluated);
	cqrs_log_info(NULL, "info %d", ++evaluated);
	cqrs_log_warn(NULL, "warn");
	cqrs_log_error(NULL, "error");
	/* direct calls are filtered too */
	cqrs_log_write(NULL, CQRS_LOG_DEBUG, "direct");
	/* the macros test the level before evaluating arguments */
	ck_assert_int_eq(evaluated, 0);
	out = slurp(f);
	ck_assert_str_eq(out, "<4>level=warn msg=\"warn\"\n<3>level=error msg=\"error\"\n");
	free(out);

	cqrs_log_set_level(CQRS_LOG_DEBUG);
	cqrs_log_debug(NULL, "now %s", "visible");
	out = slurp(f);
	ck_assert_ptr_nonnull(strstr(out, "<7>level=debug msg=\"now visible\"\n"));
	free(out);
	release(f);
}
END_TEST

START_TEST(default_threshold_is_info)
{
	ck_assert_int_eq(cqrs_log_threshold, CQRS_LOG_INFO);
	ck_assert(cqrs_log_enabled(CQRS_LOG_INFO));
	ck_assert(!cqrs_log_enabled(CQRS_LOG_DEBUG));
}
END_TEST

START_TEST(level_names_and_parse)
{
	ck_assert_str_eq(cqrs_log_level_name(CQRS_LOG_ERROR), "error");
	ck_assert_str_eq(cqrs_log_level_name(CQRS_LOG_WARN), "warn");
	ck_assert_str_eq(cqrs_log_level_name(CQRS_LOG_INFO), "info");
	ck_assert_str_eq(cqrs_log_level_name(CQRS_LOG_DEBUG), "debug");
	ck_assert_str_eq(cqrs_log_level_name(42), "unknown");
	ck_assert_int_eq(cqrs_log_level_parse("error"), CQRS_LOG_ERROR);
	ck_assert_int_eq(cqrs_log_level_parse("warn"), CQRS_LOG_WARN);
	ck_assert_int_eq(cqrs_log_level_parse("info"), CQRS_LOG_INFO);
	ck_assert_int_eq(cqrs_log_level_parse("debug"), CQRS_LOG_DEBUG);
	ck_assert_int_eq(cqrs_log_level_parse("DEBUG"), CQRS_LOG_DEBUG);
	ck_assert_int_eq(cqrs_log_level_parse("warning"), -1);
	ck_assert_int_eq(cqrs_log_level_parse("info "), -1);
	ck_assert_int_eq(cqrs_log_level_parse(""), -1);
	ck_assert_int_eq(cqrs_log_level_parse(NULL), -1);
	/* every name parses back to its level */
	for (int l = CQRS_LOG_ERROR; l <= CQRS_LOG_DEBUG; l++)
		if (l != 5)
			ck_assert_int_eq(cqrs_log_level_parse(cqrs_log_level_name(l)), l);
}
END_TEST

START_TEST(journal_detection)
{
	FILE *f = tmpfile();
	struct stat st;
	char env[64];
	char *out;

	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fstat(fileno(f), &st), 0);

	unsetenv("JOURNAL_STREAM");
	cqrs_log_set_output(f, -1);
	cqrs_log_info(NULL, "a");
	/* JOURNAL_STREAM naming this very file: journald */
	snprintf(env, sizeof(env), "%ju:%ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
	setenv("JOURNAL_STREAM", env, 1);
	cqrs_log_set_output(f, -1);	/* detection runs again at the next line */
	cqrs_log_info(NULL, "b");
	/* inherited from a parent whose stderr went elsewhere: not journald */
	snprintf(env, sizeof(env), "%ju:%ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino + 1);
	setenv("JOURNAL_STREAM", env, 1);
	cqrs_log_set_output(f, -1);
	cqrs_log_info(NULL, "c");
	/* forced on and off regardless of the environment */
	cqrs_log_set_output(f, 1);
	cqrs_log_info(NULL, "d");
	setenv("JOURNAL_STREAM", "garbage", 1);
	cqrs_log_set_output(f, 0);
	cqrs_log_info(NULL, "e");
	unsetenv("JOURNAL_STREAM");

	out = slurp(f);
	ck_assert_int_eq(count_lines(out), 5);
	ck_assert_msg(strncmp(out, "ts=", 3) == 0, "%s", out);
	ck_assert_ptr_nonnull(strstr(out, "\n<6>level=info msg=\"b\"\nts="));
	ck_assert_ptr_nonnull(strstr(out, "msg=\"c\"\n<6>level=info msg=\"d\"\nts="));
	ck_assert_ptr_nonnull(strstr(out, " level=info msg=\"e\"\n"));
	free(out);
	release(f);
}
END_TEST

START_TEST(write_keeps_errno)
{
	FILE *f = capture(1);
	char *out;

	errno = ENOENT;
	cqrs_log_error(NULL, "open: %m");
	ck_assert_int_eq(errno, ENOENT);
	out = slurp(f);
	ck_assert_str_eq(out, "<3>level=error msg=\"open: No such file or directory\"\n");
	free(out);
	release(f);
}
END_TEST

#define THREADS 8
#define PER_THREAD 400

static void *
spam(void *arg)
{
	struct cqrs_log_ctx ctx = { .comp = arg };
	char pad[3000];

	memset(pad, 'p', sizeof(pad) - 1);
	pad[sizeof(pad) - 1] = '\0';
	for (int i = 0; i < PER_THREAD; i++)
		cqrs_log_info(&ctx, "line %d %s end", i, pad);
	return NULL;
}

START_TEST(threads_do_not_interleave)
{
	FILE *f = capture(1);
	pthread_t th[THREADS];
	char names[THREADS][16];
	char *out, *line, *save = NULL;
	int n = 0;

	for (int i = 0; i < THREADS; i++) {
		snprintf(names[i], sizeof(names[i]), "t%d", i);
		ck_assert_int_eq(pthread_create(&th[i], NULL, spam, names[i]), 0);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	out = slurp(f);
	for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		ck_assert_msg(strncmp(line, "<6>level=info comp=t", 20) == 0, "%.60s", line);
		ck_assert_str_eq(line + strlen(line) - 5, " end\"");
		{
			int i = -1, used = 0;
			char digits[16];

			ck_assert_int_eq(sscanf(line + 20, "%*d msg=\"line %d %n", &i, &used), 1);
			ck_assert(i >= 0 && i < PER_THREAD);
			snprintf(digits, sizeof(digits), "%d", i);
			/* prefix + "line I " + pad + " end\"" and nothing else */
			ck_assert_uint_eq(strlen(line), 27 + 5 + strlen(digits) + 1 + 2999 + 5);
		}
		n++;
	}
	ck_assert_int_eq(n, THREADS * PER_THREAD);
	free(out);
	release(f);
}
END_TEST

static Suite *
log_suite(void)
{
	Suite *s = suite_create("log");
	TCase *tc = tcase_create("format");

	tcase_add_test(tc, every_field_in_order);
	tcase_add_test(tc, null_fields_are_left_out);
	tcase_add_test(tc, timestamp_without_journal);
	tcase_add_test(tc, journal_prefix_per_level);
	tcase_add_test(tc, values_are_quoted_when_needed);
	tcase_add_test(tc, message_cannot_inject_keys_or_lines);
	tcase_add_test(tc, small_buffer_is_cut_and_marked);
	tcase_add_test(tc, cut_never_splits_escapes_or_utf8);
	tcase_add_test(tc, long_context_value_leaves_room_for_msg);
	suite_add_tcase(s, tc);

	tc = tcase_create("write");
	tcase_add_test(tc, default_threshold_is_info);
	tcase_add_test(tc, write_cuts_long_lines);
	tcase_add_test(tc, write_formats_and_ends_with_newline);
	tcase_add_test(tc, threshold_filters);
	tcase_add_test(tc, level_names_and_parse);
	tcase_add_test(tc, journal_detection);
	tcase_add_test(tc, write_keeps_errno);
	tcase_add_test(tc, threads_do_not_interleave);
	tcase_set_timeout(tc, 30);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(log_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

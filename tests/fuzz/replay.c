/*
 * replay.c - a fuzz target as a Check suite, built with the normal compiler:
 * every file of tests/fuzz/corpus/TARGET/ (the seeds) and of
 * tests/fuzz/regress/TARGET/ (inputs that once crashed a target, kept so the
 * bug stays fixed) goes through LLVMFuzzerTestOneInput() once, one test per
 * file, so `make check` needs no clang and a failure names the file.
 * FUZZ_TARGET is the target's name, given by the Makefile.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

#ifndef FUZZ_TARGET
#error "FUZZ_TARGET must name the target"
#endif

/* libFuzzer's -max_len for the biggest target, and then some: a seed or a
 * reproducer is never this big */
#define REPLAY_MAX_INPUT (4 * 1024 * 1024)

static char **files;
static size_t n_files;

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Adds the regular files of dir (a missing dir has none). */
static void
add_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	size_t first = n_files;

	if (d == NULL) {
		if (errno != ENOENT) {
			fprintf(stderr, "%s: %s\n", dir, strerror(errno));
			exit(1);
		}
		return;
	}
	while ((e = readdir(d)) != NULL) {
		char *path;
		struct stat st;

		if (e->d_name[0] == '.')
			continue;
		if (asprintf(&path, "%s/%s", dir, e->d_name) < 0)
			abort();
		if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
			free(path);
			continue;
		}
		files = realloc(files, (n_files + 1) * sizeof(*files));
		if (files == NULL)
			abort();
		files[n_files++] = path;
	}
	closedir(d);
	qsort(files + first, n_files - first, sizeof(*files), cmp_str);
}

START_TEST(replay)
{
	const char *path = files[_i];
	FILE *f = fopen(path, "rb");
	uint8_t *buf, *map, *copy;
	size_t n, page, map_len;

	/* here, in the test's own process (Check forks one per test): a
	 * target's setup may hold an event loop, which does not survive a fork */
	LLVMFuzzerInitialize(NULL, NULL);
	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	buf = malloc(REPLAY_MAX_INPUT + 1);
	ck_assert(buf != NULL);
	n = fread(buf, 1, REPLAY_MAX_INPUT + 1, f);
	ck_assert_msg(!ferror(f) && n <= REPLAY_MAX_INPUT, "%s: unreadable or too big", path);
	fclose(f);
	/* exactly n bytes, as libFuzzer gives them, and right before a page
	 * that may not be read: a read past the end crashes without a
	 * sanitizer too */
	page = (size_t)sysconf(_SC_PAGESIZE);
	map_len = (n + page - 1) / page * page + page;
	map = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(map != MAP_FAILED);
	ck_assert(mprotect(map + map_len - page, page, PROT_NONE) == 0);
	copy = map + map_len - page - n;
	memcpy(copy, buf, n);
	free(buf);
	/* a crash leaves no message of Check's: say which file it was */
	fprintf(stderr, "replay %s\n", path);
	ck_assert_msg(LLVMFuzzerTestOneInput(copy, n) == 0, "%s", path);
	munmap(map, map_len);
}
END_TEST

/* no test at all would pass unnoticed: the corpus must be there */
START_TEST(has_seeds)
{
	ck_assert_msg(n_files > 0, "no seeds in " CQRS_SRCDIR "/tests/fuzz/corpus/" FUZZ_TARGET);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("fuzz_" FUZZ_TARGET);
	TCase *tc = tcase_create("replay");
	SRunner *sr;
	int failed;

	add_dir(CQRS_SRCDIR "/tests/fuzz/corpus/" FUZZ_TARGET);
	add_dir(CQRS_SRCDIR "/tests/fuzz/regress/" FUZZ_TARGET);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, has_seeds);
	tcase_add_loop_test(tc, replay, 0, (int)n_files);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	for (size_t i = 0; i < n_files; i++)
		free(files[i]);
	free(files);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

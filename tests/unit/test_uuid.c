/* test_uuid.c - UUID v4/v7 generation and cqrs_uuid_valid(). */
#include <check.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "uuid.h"

#define MANY 100000
#define THREADS 4
#define PER_THREAD 25000

struct id {
	char s[UUID_STR_LEN];
};

static int
cmp_ids(const void *a, const void *b)
{
	return strcmp(((const struct id *)a)->s, ((const struct id *)b)->s);
}

static struct id *
alloc_ids(size_t n)
{
	struct id *ids = calloc(n, sizeof(*ids));

	ck_assert_ptr_nonnull(ids);
	return ids;
}

/* Sorts ids and fails on the first pair of equal neighbours. */
static void
assert_unique(struct id *ids, size_t n)
{
	size_t i;

	qsort(ids, n, sizeof(*ids), cmp_ids);
	for (i = 1; i < n; i++)
		ck_assert_msg(strcmp(ids[i - 1].s, ids[i].s) != 0, "duplicate id %s", ids[i].s);
}

static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Lowercase canonical form with the given version and the RFC variant. */
static void
assert_shape(const char *id, int version)
{
	size_t i;
	int variant;

	ck_assert_uint_eq(strlen(id), 36);
	for (i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23)
			ck_assert_msg(id[i] == '-', "%s: no hyphen at %zu", id, i);
		else
			ck_assert_msg(hex_value(id[i]) >= 0, "%s: not lowercase hex at %zu", id, i);
	}
	ck_assert_msg(hex_value(id[14]) == version, "%s: version nibble is not %d", id, version);
	variant = hex_value(id[19]);
	ck_assert_msg(variant >= 8 && variant <= 0xb, "%s: variant nibble is not 8..b", id);
	ck_assert(cqrs_uuid_valid(id));
}

static uint64_t
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The 48-bit Unix milliseconds in the first 12 hex digits of a v7 id. */
static uint64_t
v7_ms(const char *id)
{
	uint64_t ms = 0;
	size_t i;

	for (i = 0; i < 13; i++) {
		if (i == 8)
			continue;
		ms = ms << 4 | (uint64_t)hex_value(id[i]);
	}
	return ms;
}

START_TEST(test_v4_shape)
{
	char id[UUID_STR_LEN];
	int i;

	for (i = 0; i < 1000; i++) {
		cqrs_uuid_v4(id);
		assert_shape(id, 4);
	}
}
END_TEST

START_TEST(test_v7_shape)
{
	char id[UUID_STR_LEN];
	int i;

	for (i = 0; i < 1000; i++) {
		cqrs_uuid_v7(id);
		assert_shape(id, 7);
	}
}
END_TEST

/* Version and variant bits are fixed; every other bit of a v4 id must vary. */
START_TEST(test_v4_random_bits_vary)
{
	char first[UUID_STR_LEN];
	char id[UUID_STR_LEN];
	int differs[36] = { 0 };
	int i;
	size_t j;

	cqrs_uuid_v4(first);
	for (i = 0; i < 200; i++) {
		cqrs_uuid_v4(id);
		for (j = 0; j < 36; j++)
			differs[j] |= id[j] != first[j];
	}
	for (j = 0; j < 36; j++) {
		if (j == 8 || j == 13 || j == 18 || j == 23 || j == 14)
			ck_assert_int_eq(differs[j], 0);
		else
			ck_assert_msg(differs[j], "hex digit %zu never changes", j);
	}
}
END_TEST

START_TEST(test_v4_unique)
{
	struct id *ids = alloc_ids(MANY);
	size_t i;

	for (i = 0; i < MANY; i++)
		cqrs_uuid_v4(ids[i].s);
	assert_unique(ids, MANY);
	free(ids);
}
END_TEST

START_TEST(test_v7_strictly_increasing)
{
	struct id *ids = alloc_ids(MANY);
	size_t i;

	/* a tight loop: thousands of ids share each millisecond */
	for (i = 0; i < MANY; i++)
		cqrs_uuid_v7(ids[i].s);
	for (i = 1; i < MANY; i++)
		ck_assert_msg(strcmp(ids[i - 1].s, ids[i].s) < 0, "id %zu: %s is not after %s",
			      i, ids[i].s, ids[i - 1].s);
	assert_unique(ids, MANY);
	free(ids);
}
END_TEST

START_TEST(test_v7_timestamp_is_now)
{
	char id[UUID_STR_LEN];
	uint64_t before, after, ms;
	int i;

	for (i = 0; i < 100; i++) {
		before = wall_ms();
		cqrs_uuid_v7(id);
		after = wall_ms();
		ms = v7_ms(id);
		/* ids may run ahead of the clock only when the counter runs out */
		ck_assert_msg(ms + 2 >= before && ms <= after + 2,
			      "%s: %llu ms, clock %llu..%llu", id, (unsigned long long)ms,
			      (unsigned long long)before, (unsigned long long)after);
	}
}
END_TEST

/* Ids of the same millisecond differ in more than a counter. */
START_TEST(test_v7_random_tail)
{
	char a[UUID_STR_LEN];
	char b[UUID_STR_LEN];
	int same_tail = 0;
	int i;

	for (i = 0; i < 100; i++) {
		cqrs_uuid_v7(a);
		cqrs_uuid_v7(b);
		/* the last 11 hex digits are random bits below the counter */
		same_tail += strcmp(a + 25, b + 25) == 0;
	}
	ck_assert_int_lt(same_tail, 2);
}
END_TEST

struct thread_ids {
	struct id *ids;
	int v7;
};

static void *
make_ids(void *arg)
{
	struct thread_ids *t = arg;
	size_t i;

	for (i = 0; i < PER_THREAD; i++) {
		if (t->v7)
			cqrs_uuid_v7(t->ids[i].s);
		else
			cqrs_uuid_v4(t->ids[i].s);
	}
	return NULL;
}

static void
run_threads(int v7)
{
	struct id *ids = alloc_ids((size_t)THREADS * PER_THREAD);
	struct thread_ids t[THREADS];
	pthread_t th[THREADS];
	size_t i;
	int k;

	for (k = 0; k < THREADS; k++) {
		t[k].ids = ids + (size_t)k * PER_THREAD;
		t[k].v7 = v7;
		ck_assert_int_eq(pthread_create(&th[k], NULL, make_ids, &t[k]), 0);
	}
	for (k = 0; k < THREADS; k++)
		ck_assert_int_eq(pthread_join(th[k], NULL), 0);
	/* each thread's v7 ids are still in order */
	for (k = 0; v7 && k < THREADS; k++)
		for (i = 1; i < PER_THREAD; i++)
			ck_assert(strcmp(t[k].ids[i - 1].s, t[k].ids[i].s) < 0);
	assert_unique(ids, (size_t)THREADS * PER_THREAD);
	free(ids);
}

START_TEST(test_v4_threads_unique)
{
	run_threads(0);
}
END_TEST

START_TEST(test_v7_threads_ordered_unique)
{
	run_threads(1);
}
END_TEST

/*
 * A forked child must not replay the parent's buffered random bytes: the
 * child's next ids and the parent's next ids are all different.
 */
START_TEST(test_fork_reseeds)
{
	enum { N = 64 };
	char parent[2 * N][UUID_STR_LEN];
	char child[2 * N][UUID_STR_LEN];
	char warm[UUID_STR_LEN];
	int fds[2];
	pid_t pid;
	int status;
	size_t got = 0;
	ssize_t n;
	int i, j;

	cqrs_uuid_v4(warm);	/* the pool now holds unused bytes */
	cqrs_uuid_v7(warm);
	ck_assert_int_eq(pipe(fds), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(fds[0]);
		for (i = 0; i < N; i++) {
			cqrs_uuid_v4(child[i]);
			cqrs_uuid_v7(child[N + i]);
		}
		n = write(fds[1], child, sizeof(child));
		_exit(n == (ssize_t)sizeof(child) ? 0 : 1);
	}
	close(fds[1]);
	for (i = 0; i < N; i++) {
		cqrs_uuid_v4(parent[i]);
		cqrs_uuid_v7(parent[N + i]);
	}
	while (got < sizeof(child)) {
		n = read(fds[0], (char *)child + got, sizeof(child) - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fds[0]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ck_assert_uint_eq(got, sizeof(child));
	for (i = 0; i < 2 * N; i++) {
		assert_shape(child[i], i < N ? 4 : 7);
		for (j = 0; j < 2 * N; j++)
			ck_assert_msg(strcmp(parent[i], child[j]) != 0,
				      "parent and child both made %s", child[j]);
	}
}
END_TEST

START_TEST(test_valid_accepts)
{
	char id[UUID_STR_LEN];

	ck_assert(cqrs_uuid_valid("0f8fad5b-d9cb-469f-a165-70867728950e"));
	ck_assert(cqrs_uuid_valid("0F8FAD5B-D9CB-469F-A165-70867728950E"));
	ck_assert(cqrs_uuid_valid("0f8fAD5b-d9cb-469F-a165-70867728950E"));
	ck_assert(cqrs_uuid_valid("00000000-0000-0000-0000-000000000000"));
	ck_assert(cqrs_uuid_valid("ffffffff-ffff-ffff-ffff-ffffffffffff"));
	/* any version and variant */
	ck_assert(cqrs_uuid_valid("0f8fad5b-d9cb-169f-c165-70867728950e"));
	cqrs_uuid_v4(id);
	ck_assert(cqrs_uuid_valid(id));
	cqrs_uuid_v7(id);
	ck_assert(cqrs_uuid_valid(id));
}
END_TEST

START_TEST(test_valid_rejects)
{
	ck_assert(!cqrs_uuid_valid(NULL));
	ck_assert(!cqrs_uuid_valid(""));
	/* length */
	ck_assert(!cqrs_uuid_valid("0f8fad5b-d9cb-469f-a165-70867728950"));
	ck_assert(!cqrs_uuid_valid("0f8fad5b-d9cb-469f-a165-70867728950ee"));
	ck_assert(!cqrs_uuid_valid("0f8fad5b-d9cb-469f-a165-70867728950e "));
	ck_assert(!cqrs_uuid_valid(" 0f8fad5b-d9cb-469f-a165-70867728950e"));
	/* hyphens missing, moved or extra */
	ck_assert(!cqrs_uuid_valid("0f8fad5bd9cb469fa16570867728950e"));
	ck_assert(!cqrs_uuid_valid("0f8fad5bd-9cb-469f-a165-70867728950e"));
	ck_assert(!cqrs_uuid_valid("0f8fad5b-d9cb-469f-a16570867728950e-"));
	ck_assert(!cqrs_uuid_valid("0f8fad5b-d9cb-469f-a165_70867728950e"));
	ck_assert(!cqrs_uuid_valid("------------------------------------"));
	/* not hex */
	ck_assert(!cqrs_uuid_valid("0f8fad5b-d9cb-469f-a165-70867728950g"));
	ck_assert(!cqrs_uuid_valid("0f8fad5b-d9cb-469f-a165-7086772895 e"));
	ck_assert(!cqrs_uuid_valid("{0f8fad5b-d9cb-469f-a165-70867728950e}"));
	ck_assert(!cqrs_uuid_valid("urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e"));
	ck_assert(!cqrs_uuid_valid("0f8fad5b-d9cb-469f-a165-70867728\xc3\xa9" "0e"));
	/* a NUL inside stops it short */
	ck_assert(!cqrs_uuid_valid("0f8fad5b-d9cb-469f-a165\0-70867728950e"));
}
END_TEST

static Suite *
uuid_suite(void)
{
	Suite *s = suite_create("uuid");
	TCase *tc = tcase_create("uuid");

	/* 100k-id loops under sanitizers take a few seconds */
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_v4_shape);
	tcase_add_test(tc, test_v7_shape);
	tcase_add_test(tc, test_v4_random_bits_vary);
	tcase_add_test(tc, test_v4_unique);
	tcase_add_test(tc, test_v7_strictly_increasing);
	tcase_add_test(tc, test_v7_timestamp_is_now);
	tcase_add_test(tc, test_v7_random_tail);
	tcase_add_test(tc, test_v4_threads_unique);
	tcase_add_test(tc, test_v7_threads_ordered_unique);
	tcase_add_test(tc, test_fork_reseeds);
	tcase_add_test(tc, test_valid_accepts);
	tcase_add_test(tc, test_valid_rejects);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(uuid_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/*
 * uuid.c - UUID versions 4 and 7 (RFC 9562), lowercase text form.
 *
 * Random bytes come from getrandom(2) through a small pool, so a syscall
 * serves dozens of ids. One mutex guards the pool and the version 7 clock
 * state; pthread_atfork() keeps it usable in a child forked while another
 * thread held it, and empties the pool there so parent and child never hand
 * out the same bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "uuid.h"

#define POOL_SIZE 512

/*
 * The version 7 counter (RFC 9562 section 6.2, method 1): the 12 bits of
 * rand_a, then the top 18 bits of rand_b. Each new millisecond seeds it with
 * random bits and its top bit clear, which leaves at least 2^29 increments
 * before it runs out within one millisecond; the 44 bits of rand_b below it
 * stay random in every id.
 */
#define COUNTER_BITS 30
#define COUNTER_MAX ((UINT32_C(1) << COUNTER_BITS) - 1)
#define COUNTER_SEED_MASK (COUNTER_MAX >> 1)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static unsigned char pool[POOL_SIZE];
static size_t pool_pos = POOL_SIZE;	/* POOL_SIZE: empty */
static uint64_t v7_last_ms;
static uint32_t v7_counter;

static void
atfork_prepare(void)
{
	pthread_mutex_lock(&lock);
}

static void
atfork_parent(void)
{
	pthread_mutex_unlock(&lock);
}

static void
atfork_child(void)
{
	/*
	 * The child keeps the version 7 state, so its ids still sort after the
	 * parent's earlier ones, but draws fresh random bytes.
	 */
	memset(pool, 0, sizeof(pool));
	pool_pos = POOL_SIZE;
	pthread_mutex_unlock(&lock);
}

static void
register_atfork(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/*
 * getrandom() blocks only until the kernel pool is first initialized, early
 * in boot. /dev/urandom is the fallback for a seccomp filter that refuses
 * getrandom. With neither there is no way to make a unique id and this void
 * API has no error to return, so it aborts rather than hand out guessable
 * or repeated ids.
 */
static void
fill_random(unsigned char *buf, size_t len)
{
	size_t got = 0;
	ssize_t n;
	int fd;

	while (got < len) {
		n = getrandom(buf + got, len - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		got += (size_t)n;
	}
	if (got == len)
		return;

	fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	while (fd >= 0 && got < len) {
		n = read(fd, buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (fd >= 0)
		close(fd);
	if (got < len) {
		fprintf(stderr, "<2>uuid: no source of random bytes: %s\n", strerror(errno));
		abort();
	}
}

/* Called with lock held. */
static void
take_random(unsigned char *out, size_t len)
{
	if (POOL_SIZE - pool_pos < len) {
		fill_random(pool, sizeof(pool));
		pool_pos = 0;
	}
	memcpy(out, pool + pool_pos, len);
	memset(pool + pool_pos, 0, len);
	pool_pos += len;
}

static void
format(const unsigned char b[16], char out[UUID_STR_LEN])
{
	static const char hex[] = "0123456789abcdef";
	size_t i;
	size_t o = 0;

	for (i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[o++] = '-';
		out[o++] = hex[b[i] >> 4];
		out[o++] = hex[b[i] & 0x0f];
	}
	out[o] = '\0';
}

void
cqrs_uuid_v4(char out[UUID_STR_LEN])
{
	unsigned char b[16];

	pthread_once(&atfork_once, register_atfork);
	pthread_mutex_lock(&lock);
	take_random(b, sizeof(b));
	pthread_mutex_unlock(&lock);

	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);	/* version 4 */
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);	/* variant 10 */
	format(b, out);
}

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void
cqrs_uuid_v7(char out[UUID_STR_LEN])
{
	unsigned char r[10];
	unsigned char b[16];
	uint64_t now = now_ms();
	uint64_t ms;
	uint32_t seed;
	uint32_t c;
	int i;

	pthread_once(&atfork_once, register_atfork);
	pthread_mutex_lock(&lock);
	take_random(r, sizeof(r));
	seed = ((uint32_t)r[6] << 24 | (uint32_t)r[7] << 16 | (uint32_t)r[8] << 8 | r[9]) &
	       COUNTER_SEED_MASK;
	if (now > v7_last_ms) {
		v7_last_ms = now;
		v7_counter = seed;
	} else if (v7_counter < COUNTER_MAX) {
		/* same millisecond, or the clock stepped back: keep counting */
		v7_counter++;
	} else {
		/* counter used up: borrow the next millisecond (RFC 9562 6.2) */
		v7_last_ms++;
		v7_counter = seed;
	}
	ms = v7_last_ms;
	c = v7_counter;
	pthread_mutex_unlock(&lock);

	for (i = 0; i < 6; i++)
		b[i] = (unsigned char)(ms >> (40 - 8 * i));
	b[6] = (unsigned char)(0x70 | ((c >> 26) & 0x0f));	/* version 7 */
	b[7] = (unsigned char)(c >> 18);
	b[8] = (unsigned char)(0x80 | ((c >> 12) & 0x3f));	/* variant 10 */
	b[9] = (unsigned char)(c >> 4);
	b[10] = (unsigned char)(((c & 0x0f) << 4) | (r[0] & 0x0f));
	memcpy(b + 11, r + 1, 5);
	format(b, out);
}

bool
cqrs_uuid_valid(const char *s)
{
	size_t i;

	if (s == NULL)
		return false;
	for (i = 0; i < UUID_STR_LEN - 1; i++) {
		char c = s[i];

		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (c != '-')
				return false;
		} else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
			     (c >= 'A' && c <= 'F'))) {
			return false;	/* also stops at a NUL before 36 characters */
		}
	}
	return s[UUID_STR_LEN - 1] == '\0';
}

/*
 * clock.h - the monotonic clock, in the two units the suite counts in:
 * milliseconds for deadlines and backoffs, microseconds for latencies.
 */
#ifndef CQRS_CLOCK_H
#define CQRS_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t
cqrs_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline uint64_t
cqrs_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

#endif

/*
 * backoff.h - the wait before reconnecting to a server that went away:
 * doubled after each failure up to a cap, back to the start after a success.
 * Used by the daemons for their PostgreSQL sessions and AMQP connections.
 *
 *   struct backoff bo;
 *   backoff_init(&bo, 100, 5000, 0);
 *   retry_at = now + backoff_next(&bo);     // 100, 200, 400 ... 5000, 5000
 *   backoff_reset(&bo);                     // connected: 100 again
 *
 * With jitter_pct > 0 each wait is shortened by a random 0 to jitter_pct
 * percent (random()), so that several daemons that lost the same server do
 * not knock in step. Header only: nothing to link.
 */
#ifndef CQRS_BACKOFF_H
#define CQRS_BACKOFF_H

#include <stdint.h>
#include <stdlib.h>

struct backoff {
	int64_t min_ms, max_ms;
	int64_t cur_ms;		/* the next wait, before jitter */
	int jitter_pct;		/* 0 to 100 */
};

static inline void
backoff_init(struct backoff *b, int64_t min_ms, int64_t max_ms, int jitter_pct)
{
	b->min_ms = min_ms;
	b->max_ms = max_ms;
	b->cur_ms = min_ms;
	b->jitter_pct = jitter_pct;
}

static inline void
backoff_reset(struct backoff *b)
{
	b->cur_ms = b->min_ms;
}

/* The wait to use now; the next one is doubled (capped). */
static inline int64_t
backoff_next(struct backoff *b)
{
	int64_t d = b->cur_ms;

	b->cur_ms = d * 2 > b->max_ms ? b->max_ms : d * 2;
	if (b->jitter_pct > 0)
		d -= (d * b->jitter_pct / 100) * (random() % 100) / 100;
	return d;
}

#endif

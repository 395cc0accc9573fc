/* uuid.h - UUID generation and validation (RFC 9562 text form). */
#ifndef CQRS_UUID_H
#define CQRS_UUID_H

#include <stdbool.h>

#define UUID_STR_LEN 37		/* 36 characters and the NUL */

/* Random UUID (version 4). */
void cqrs_uuid_v4(char out[UUID_STR_LEN]);

/* Time-ordered UUID (version 7): 48-bit Unix milliseconds, then random bits,
 * with a counter so ids made in one process sort in creation order. */
void cqrs_uuid_v7(char out[UUID_STR_LEN]);

/* true for the canonical 8-4-4-4-12 hex form (either case), any version. */
bool cqrs_uuid_valid(const char *s);

#endif

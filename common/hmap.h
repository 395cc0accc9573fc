/*
 * hmap.h - a string-keyed hash map with chaining (FNV-1a). Keys are copied;
 * values are borrowed pointers. Not thread-safe.
 */
#ifndef CQRS_HMAP_H
#define CQRS_HMAP_H

#include <stddef.h>

struct hmap;

struct hmap *cqrs_hmap_new(void);
/* Frees the map and its keys, not the values. NULL is a no-op. */
void cqrs_hmap_free(struct hmap *m);
void *cqrs_hmap_get(const struct hmap *m, const char *key);
/* Sets key to value (replacing). Returns 0, or -1 when out of memory. */
int cqrs_hmap_put(struct hmap *m, const char *key, void *value)
	__attribute__((warn_unused_result));
/* Removes key; returns its value or NULL. */
void *cqrs_hmap_del(struct hmap *m, const char *key);
size_t cqrs_hmap_count(const struct hmap *m);

#endif

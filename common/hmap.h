/*
 * hmap.h - a string-keyed hash map with chaining (FNV-1a). Keys are copied;
 * values are borrowed pointers. Not thread-safe.
 */
#ifndef CQRS_HMAP_H
#define CQRS_HMAP_H

#include <stddef.h>

struct hmap;

struct hmap *hmap_new(void);
/* Frees the map and its keys, not the values. NULL is a no-op. */
void hmap_free(struct hmap *m);
void *hmap_get(const struct hmap *m, const char *key);
/* Sets key to value (replacing). Returns 0, or -1 when out of memory. */
int hmap_put(struct hmap *m, const char *key, void *value)
	__attribute__((warn_unused_result));
/* Removes key; returns its value or NULL. */
void *hmap_del(struct hmap *m, const char *key);
size_t hmap_count(const struct hmap *m);

#endif

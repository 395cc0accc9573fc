/* hmap.c - string-keyed hash map with chaining; grows at load factor 1. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hmap.h"

struct hnode {
	struct hnode *next;
	uint64_t hash;
	void *value;
	char key[];
};

struct hmap {
	struct hnode **buckets;
	size_t nbuckets;	/* a power of two */
	size_t count;
};

static uint64_t
fnv1a(const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

struct hmap *
cqrs_hmap_new(void)
{
	struct hmap *m = calloc(1, sizeof(*m));

	if (m == NULL)
		return NULL;
	m->nbuckets = 64;
	m->buckets = calloc(m->nbuckets, sizeof(*m->buckets));
	if (m->buckets == NULL) {
		free(m);
		return NULL;
	}
	return m;
}

void
cqrs_hmap_free(struct hmap *m)
{
	if (m == NULL)
		return;
	for (size_t i = 0; i < m->nbuckets; i++) {
		struct hnode *n = m->buckets[i];
		while (n != NULL) {
			struct hnode *next = n->next;
			free(n);
			n = next;
		}
	}
	free(m->buckets);
	free(m);
}

void *
cqrs_hmap_get(const struct hmap *m, const char *key)
{
	uint64_t h = fnv1a(key);

	for (struct hnode *n = m->buckets[h & (m->nbuckets - 1)]; n; n = n->next)
		if (n->hash == h && strcmp(n->key, key) == 0)
			return n->value;
	return NULL;
}

static void
grow(struct hmap *m)
{
	size_t nb = m->nbuckets * 2;
	struct hnode **b = calloc(nb, sizeof(*b));

	if (b == NULL)
		return;		/* keep the old table: slower, still correct */
	for (size_t i = 0; i < m->nbuckets; i++) {
		struct hnode *n = m->buckets[i];
		while (n != NULL) {
			struct hnode *next = n->next;
			n->next = b[n->hash & (nb - 1)];
			b[n->hash & (nb - 1)] = n;
			n = next;
		}
	}
	free(m->buckets);
	m->buckets = b;
	m->nbuckets = nb;
}

int
cqrs_hmap_put(struct hmap *m, const char *key, void *value)
{
	uint64_t h = fnv1a(key);
	size_t len;
	struct hnode *n;

	for (n = m->buckets[h & (m->nbuckets - 1)]; n; n = n->next) {
		if (n->hash == h && strcmp(n->key, key) == 0) {
			n->value = value;
			return 0;
		}
	}
	len = strlen(key);
	n = malloc(sizeof(*n) + len + 1);
	if (n == NULL)
		return -1;
	memcpy(n->key, key, len + 1);
	n->hash = h;
	n->value = value;
	n->next = m->buckets[h & (m->nbuckets - 1)];
	m->buckets[h & (m->nbuckets - 1)] = n;
	if (++m->count > m->nbuckets)
		grow(m);
	return 0;
}

void *
cqrs_hmap_del(struct hmap *m, const char *key)
{
	uint64_t h = fnv1a(key);
	struct hnode **pp = &m->buckets[h & (m->nbuckets - 1)];

	for (; *pp; pp = &(*pp)->next) {
		struct hnode *n = *pp;
		if (n->hash == h && strcmp(n->key, key) == 0) {
			void *v = n->value;
			*pp = n->next;
			free(n);
			m->count--;
			return v;
		}
	}
	return NULL;
}

size_t
cqrs_hmap_count(const struct hmap *m)
{
	return m->count;
}

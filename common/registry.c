/*
 * registry.c - loading plugins and the registry they fill (plugin_host.h),
 * and the registration calls of cqrs/plugin.h.
 *
 * A plugin registers into a staging area (struct cqrs_registry), never into
 * the registry itself. Names are checked against the registry and the stage
 * as they come; only when register_all() has returned 0 and every call
 * succeeded is the stage committed. The commit first reserves room for all
 * of it, so it cannot fail half way: a plugin is either wholly in or not at
 * all, and a refused plugin leaves the registry as it was.
 *
 * Lookups by name go through small open-addressing hash tables: cqrs-cmdd
 * looks up one command per request and one applier per event it replays.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "envelope.h"
#include "plugin_host.h"

/*
 * An aggregate type must leave room in a stream name for the longest
 * aggregate id: "<type>-<id>" is at most CQRS_STREAM_MAX bytes.
 */
#define AGGREGATE_TYPE_MAX (CQRS_STREAM_MAX - 1 - CQRS_AGGREGATE_ID_MAX)
/* AMQP refuses longer routing keys, so a longer pattern can match nothing. */
#define PATTERN_MAX 255

/* ---- string -> pointer hash table -------------------------------------- */

struct strmap_slot {
	const char *key;	/* borrowed from the value; NULL: free slot */
	void *val;
};

struct strmap {
	struct strmap_slot *slots;
	size_t cap;		/* 0 or a power of two */
	size_t n;
};

static uint64_t
hash_str(const char *s)
{
	uint64_t h = 0xcbf29ce484222325u;	/* FNV-1a */

	for (; *s != '\0'; s++) {
		h ^= (unsigned char)*s;
		h *= 0x100000001b3u;
	}
	return h;
}

static struct strmap_slot *
strmap_slot(const struct strmap *m, const char *key)
{
	size_t mask = m->cap - 1;
	size_t i = (size_t)hash_str(key) & mask;

	/* at most half full, so there is always a free slot to stop at */
	while (m->slots[i].key != NULL && strcmp(m->slots[i].key, key) != 0)
		i = (i + 1) & mask;
	return &m->slots[i];
}

static void *
strmap_get(const struct strmap *m, const char *key)
{
	if (m->cap == 0 || key == NULL)
		return NULL;
	return strmap_slot(m, key)->val;
}

/* Makes room for n entries in all, so that strmap_put() cannot fail. */
static int
strmap_reserve(struct strmap *m, size_t n)
{
	struct strmap old = *m;
	size_t cap = 16;
	size_t i;

	if (n * 2 <= m->cap)
		return 0;
	while (cap < n * 2)
		cap *= 2;
	m->slots = calloc(cap, sizeof(*m->slots));
	if (m->slots == NULL) {
		*m = old;
		return CQRS_ENOMEM;
	}
	m->cap = cap;
	m->n = 0;
	for (i = 0; i < old.cap; i++)
		if (old.slots[i].key != NULL)
			*strmap_slot(m, old.slots[i].key) = old.slots[i];
	m->n = old.n;
	free(old.slots);
	return 0;
}

/* key must not be in m yet, and strmap_reserve() must have made room. */
static void
strmap_put(struct strmap *m, const char *key, void *val)
{
	struct strmap_slot *slot = strmap_slot(m, key);

	slot->key = key;
	slot->val = val;
	m->n++;
}

static void
strmap_clear(struct strmap *m)
{
	free(m->slots);
	m->slots = NULL;
	m->cap = 0;
	m->n = 0;
}

/* ---- pointer vectors ---------------------------------------------------- */

struct ptrvec {
	void **v;
	size_t n;
	size_t cap;
};

static int
ptrvec_reserve(struct ptrvec *pv, size_t n)
{
	void **v;
	size_t cap;

	if (n <= pv->cap)
		return 0;
	cap = pv->cap == 0 ? 8 : pv->cap;
	while (cap < n)
		cap *= 2;
	v = realloc(pv->v, cap * sizeof(*v));
	if (v == NULL)
		return CQRS_ENOMEM;
	pv->v = v;
	pv->cap = cap;
	return 0;
}

static int
ptrvec_push(struct ptrvec *pv, void *p)
{
	if (ptrvec_reserve(pv, pv->n + 1) < 0)
		return CQRS_ENOMEM;
	pv->v[pv->n++] = p;
	return 0;
}

/* ---- the registry ------------------------------------------------------- */

struct plugin {
	char *origin;			/* the file, or cqrs_registry_add()'s origin */
	void *handle;			/* NULL for an in-process plugin */
	const struct cqrs_plugin *desc;
	void *state;			/* from register_all() */
	bool ran;			/* register_all() ran: fini is owed */
};

struct applier {
	char *event_type;
	cqrs_applier_fn fn;
};

/* cqrs_registry_applier() gets from the public part back to the whole. */
struct agg_entry {
	struct reg_aggregate pub;	/* first member */
	struct strmap appliers;		/* event type -> struct applier */
	struct ptrvec applier_list;	/* owns them */
};

struct registry {
	struct ptrvec plugins;		/* struct plugin *, in load order */
	struct ptrvec aggregates;	/* struct agg_entry * */
	struct ptrvec commands;		/* struct reg_command * */
	struct ptrvec handlers;		/* struct reg_handler * */
	struct strmap aggregate_map;
	struct strmap command_map;
};

/* What a plugin sees while it registers: the stage of one load. */
struct cqrs_registry {
	const struct registry *reg;	/* committed entries, for duplicates */
	struct plugin *plugin;
	struct ptrvec aggregates;
	struct ptrvec commands;
	struct ptrvec handlers;
	int failed;			/* first failing call's code, or 0 */
	char call_error[CQRS_ERR_MSG_MAX];
	char plugin_error[CQRS_ERR_MSG_MAX];	/* from cqrs_registry_error() */
};

static void
agg_entry_free(struct agg_entry *a)
{
	size_t i;

	if (a == NULL)
		return;
	for (i = 0; i < a->applier_list.n; i++) {
		struct applier *ap = a->applier_list.v[i];

		free(ap->event_type);
		free(ap);
	}
	free(a->applier_list.v);
	strmap_clear(&a->appliers);
	free((char *)a->pub.type.name);
	free(a);
}

static void
command_free(struct reg_command *c)
{
	if (c == NULL)
		return;
	free((char *)c->type);
	free(c);
}

static void
handler_free(struct reg_handler *h)
{
	if (h == NULL)
		return;
	free((char *)h->group);
	free((char *)h->pattern);
	free(h);
}

static void
plugin_free(struct plugin *p)
{
	if (p == NULL)
		return;
	free(p->origin);
	free(p);
}

struct registry *
cqrs_registry_new(void)
{
	return calloc(1, sizeof(struct registry));
}

void
cqrs_registry_free(struct registry *reg)
{
	size_t i;

	if (reg == NULL)
		return;
	/* every fini before any dlclose: a plugin's state may point into
	 * another's code only through the registry, but none runs after this */
	for (i = reg->plugins.n; i-- > 0;) {
		struct plugin *p = reg->plugins.v[i];

		if (p->ran && p->desc->fini != NULL)
			p->desc->fini(p->state);
	}
	for (i = reg->plugins.n; i-- > 0;) {
		struct plugin *p = reg->plugins.v[i];

		if (p->handle != NULL)
			dlclose(p->handle);
		plugin_free(p);
	}
	for (i = 0; i < reg->aggregates.n; i++)
		agg_entry_free(reg->aggregates.v[i]);
	for (i = 0; i < reg->commands.n; i++)
		command_free(reg->commands.v[i]);
	for (i = 0; i < reg->handlers.n; i++)
		handler_free(reg->handlers.v[i]);
	free(reg->plugins.v);
	free(reg->aggregates.v);
	free(reg->commands.v);
	free(reg->handlers.v);
	strmap_clear(&reg->aggregate_map);
	strmap_clear(&reg->command_map);
	free(reg);
}

/* ---- registration (called by plugins) ----------------------------------- */

/* For messages about names that may be missing. */
static const char *
nz(const char *s)
{
	return s != NULL ? s : "(null)";
}

static int
call_failed(struct cqrs_registry *r, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Records why a registration call failed (the first one wins) and returns
 * code for the call to return. */
static int
call_failed(struct cqrs_registry *r, int code, const char *fmt, ...)
{
	va_list ap;

	if (r->failed == 0) {
		r->failed = code;
		va_start(ap, fmt);
		vsnprintf(r->call_error, sizeof(r->call_error), fmt, ap);
		va_end(ap);
	}
	return code;
}

static const struct agg_entry *
stage_find_aggregate(const struct cqrs_registry *r, const char *name)
{
	size_t i;

	for (i = 0; i < r->aggregates.n; i++) {
		const struct agg_entry *a = r->aggregates.v[i];

		if (strcmp(a->pub.type.name, name) == 0)
			return a;
	}
	return NULL;
}

static const struct reg_command *
stage_find_command(const struct cqrs_registry *r, const char *type)
{
	size_t i;

	for (i = 0; i < r->commands.n; i++) {
		const struct reg_command *c = r->commands.v[i];

		if (strcmp(c->type, type) == 0)
			return c;
	}
	return NULL;
}

int
cqrs_register_aggregate(struct cqrs_registry *r, const struct cqrs_aggregate_type *type)
{
	const struct reg_aggregate *dup;
	struct agg_entry *a = NULL;
	struct cqrs_err err = { 0 };

	if (r == NULL)
		return CQRS_EINVALID;
	if (type == NULL)
		return call_failed(r, CQRS_EINVALID, "cqrs_register_aggregate: type is NULL");
	if (cqrs_envelope_check_aggregate_type(type->name, &err) < 0)
		return call_failed(r, CQRS_EINVALID, "aggregate \"%s\": %s", nz(type->name),
				   err.msg);
	if (strlen(type->name) > AGGREGATE_TYPE_MAX)
		return call_failed(r, CQRS_EINVALID,
				   "aggregate \"%s\": the name is longer than %d bytes "
				   "(a stream name must fit it and a %d-byte id)",
				   type->name, AGGREGATE_TYPE_MAX, CQRS_AGGREGATE_ID_MAX);
	if (type->state_new == NULL || type->state_free == NULL)
		return call_failed(r, CQRS_EINVALID,
				   "aggregate \"%s\": state_new and state_free are required",
				   type->name);
	if ((type->snapshot_encode == NULL) != (type->snapshot_decode == NULL))
		return call_failed(r, CQRS_EINVALID,
				   "aggregate \"%s\": snapshot_encode and snapshot_decode "
				   "go together (both or neither)", type->name);
	dup = cqrs_registry_aggregate(r->reg, type->name);
	if (dup == NULL)
		dup = (const struct reg_aggregate *)stage_find_aggregate(r, type->name);
	if (dup != NULL)
		return call_failed(r, CQRS_EINVALID,
				   "aggregate \"%s\" is already registered by %s",
				   type->name, dup->plugin);

	a = calloc(1, sizeof(*a));
	if (a == NULL)
		goto nomem;
	a->pub.type = *type;
	a->pub.type.name = strdup(type->name);
	a->pub.plugin = r->plugin->origin;
	if (a->pub.type.name == NULL || ptrvec_push(&r->aggregates, a) < 0)
		goto nomem;
	return 0;
nomem:
	agg_entry_free(a);
	return call_failed(r, CQRS_ENOMEM, "aggregate \"%s\": out of memory", type->name);
}

int
cqrs_register_applier(struct cqrs_registry *r, const char *aggregate_type,
		      const char *event_type, cqrs_applier_fn fn)
{
	struct agg_entry *a;
	struct applier *ap = NULL;
	struct cqrs_err err = { 0 };

	if (r == NULL)
		return CQRS_EINVALID;
	if (aggregate_type == NULL)
		return call_failed(r, CQRS_EINVALID, "cqrs_register_applier: aggregate type is NULL");
	if (cqrs_envelope_check_type("event type", event_type, &err) < 0)
		return call_failed(r, CQRS_EINVALID, "applier of \"%s\" for aggregate \"%s\": %s",
				   nz(event_type), aggregate_type, err.msg);
	if (fn == NULL)
		return call_failed(r, CQRS_EINVALID, "applier of \"%s\" for aggregate \"%s\" is NULL",
				   event_type, aggregate_type);
	/* Only the plugin that defines the state knows its layout, and a
	 * refused plugin must not leave appliers on another's aggregate. */
	a = (struct agg_entry *)stage_find_aggregate(r, aggregate_type);
	if (a == NULL) {
		const struct reg_aggregate *other = cqrs_registry_aggregate(r->reg, aggregate_type);

		if (other != NULL)
			return call_failed(r, CQRS_EINVALID,
					   "applier of \"%s\": aggregate \"%s\" belongs to %s "
					   "(appliers go with their aggregate's plugin)",
					   event_type, aggregate_type, other->plugin);
		return call_failed(r, CQRS_EINVALID,
				   "applier of \"%s\": unknown aggregate \"%s\" "
				   "(register the aggregate first)", event_type, aggregate_type);
	}
	if (strmap_get(&a->appliers, event_type) != NULL)
		return call_failed(r, CQRS_EINVALID,
				   "applier of \"%s\" for aggregate \"%s\" is already registered",
				   event_type, aggregate_type);

	ap = calloc(1, sizeof(*ap));
	if (ap == NULL)
		goto nomem;
	ap->fn = fn;
	ap->event_type = strdup(event_type);
	if (ap->event_type == NULL)
		goto nomem;
	if (strmap_reserve(&a->appliers, a->appliers.n + 1) < 0 ||
	    ptrvec_push(&a->applier_list, ap) < 0)
		goto nomem;
	strmap_put(&a->appliers, ap->event_type, ap);
	return 0;
nomem:
	if (ap != NULL)
		free(ap->event_type);
	free(ap);
	return call_failed(r, CQRS_ENOMEM, "applier of \"%s\": out of memory", event_type);
}

int
cqrs_register_command(struct cqrs_registry *r, const char *command_type,
		      const char *aggregate_type, cqrs_command_fn fn)
{
	const struct reg_aggregate *agg;
	const struct reg_command *dup;
	struct reg_command *c = NULL;
	struct cqrs_err err = { 0 };

	if (r == NULL)
		return CQRS_EINVALID;
	if (cqrs_envelope_check_type("command type", command_type, &err) < 0)
		return call_failed(r, CQRS_EINVALID, "command \"%s\": %s", nz(command_type),
				   err.msg);
	if (fn == NULL)
		return call_failed(r, CQRS_EINVALID, "command \"%s\": the handler is NULL",
				   command_type);
	if (aggregate_type == NULL)
		return call_failed(r, CQRS_EINVALID, "command \"%s\": the aggregate type is NULL",
				   command_type);
	/* an aggregate of this plugin, or of one loaded before it */
	agg = (const struct reg_aggregate *)stage_find_aggregate(r, aggregate_type);
	if (agg == NULL)
		agg = cqrs_registry_aggregate(r->reg, aggregate_type);
	if (agg == NULL)
		return call_failed(r, CQRS_EINVALID,
				   "command \"%s\": unknown aggregate \"%s\" "
				   "(register the aggregate first)", command_type, aggregate_type);
	dup = cqrs_registry_command(r->reg, command_type);
	if (dup == NULL)
		dup = stage_find_command(r, command_type);
	if (dup != NULL)
		return call_failed(r, CQRS_EINVALID,
				   "command \"%s\" is already registered by %s",
				   command_type, dup->plugin);

	c = calloc(1, sizeof(*c));
	if (c == NULL)
		goto nomem;
	c->type = strdup(command_type);
	c->aggregate = agg;
	c->fn = fn;
	c->plugin = r->plugin->origin;
	if (c->type == NULL || ptrvec_push(&r->commands, c) < 0)
		goto nomem;
	return 0;
nomem:
	command_free(c);
	return call_failed(r, CQRS_ENOMEM, "command \"%s\": out of memory", command_type);
}

/* Words of letters, digits and "_-:" (what event and aggregate types are
 * made of), or exactly "*" or "#", separated by single dots. */
static int
check_pattern(const char *pattern, struct cqrs_err *err)
{
	const char *w = pattern;
	size_t len;
	size_t i;

	if (pattern == NULL)
		return cqrs_err_set(err, CQRS_EINVALID, "the pattern is NULL");
	if (strlen(pattern) > PATTERN_MAX)
		return cqrs_err_set(err, CQRS_EINVALID, "pattern is longer than %d bytes",
				    PATTERN_MAX);
	for (;;) {
		len = strcspn(w, ".");
		if (len == 0)
			return cqrs_err_set(err, CQRS_EINVALID,
					    "pattern \"%s\" has an empty word", pattern);
		if (!(len == 1 && (*w == '*' || *w == '#'))) {
			for (i = 0; i < len; i++) {
				unsigned char c = (unsigned char)w[i];

				if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
				      (c >= '0' && c <= '9') || c == '_' || c == '-' || c == ':'))
					return cqrs_err_set(err, CQRS_EINVALID,
							    "pattern \"%s\": a word is '*', '#', or "
							    "letters, digits and \"_-:\" (byte %zu is "
							    "not one)", pattern, (size_t)(w - pattern) + i);
			}
		}
		if (w[len] == '\0')
			return 0;
		w += len + 1;
	}
}

int
cqrs_register_event_handler(struct cqrs_registry *r, const char *group, const char *pattern,
			    cqrs_event_fn fn, cqrs_reset_fn reset)
{
	struct reg_handler *h = NULL;
	struct cqrs_err err = { 0 };

	if (r == NULL)
		return CQRS_EINVALID;
	if (cqrs_envelope_check_type("handler group", group, &err) < 0)
		return call_failed(r, CQRS_EINVALID, "event handler group \"%s\": %s", nz(group),
				   err.msg);
	if (check_pattern(pattern, &err) < 0)
		return call_failed(r, CQRS_EINVALID, "event handler in group \"%s\": %s",
				   group, err.msg);
	if (fn == NULL)
		return call_failed(r, CQRS_EINVALID,
				   "event handler \"%s\" in group \"%s\": the handler is NULL",
				   pattern, group);

	h = calloc(1, sizeof(*h));
	if (h == NULL)
		goto nomem;
	h->group = strdup(group);
	h->pattern = strdup(pattern);
	h->fn = fn;
	h->reset = reset;
	h->plugin = r->plugin->origin;
	if (h->group == NULL || h->pattern == NULL || ptrvec_push(&r->handlers, h) < 0)
		goto nomem;
	return 0;
nomem:
	handler_free(h);
	return call_failed(r, CQRS_ENOMEM, "event handler \"%s\": out of memory", pattern);
}

void
cqrs_registry_error(struct cqrs_registry *r, const char *fmt, ...)
{
	va_list ap;

	if (r == NULL || fmt == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(r->plugin_error, sizeof(r->plugin_error), fmt, ap);
	va_end(ap);
}

/* ---- loading ------------------------------------------------------------ */

static void
stage_discard(struct cqrs_registry *r)
{
	size_t i;

	for (i = 0; i < r->aggregates.n; i++)
		agg_entry_free(r->aggregates.v[i]);
	for (i = 0; i < r->commands.n; i++)
		command_free(r->commands.v[i]);
	for (i = 0; i < r->handlers.n; i++)
		handler_free(r->handlers.v[i]);
	free(r->aggregates.v);
	free(r->commands.v);
	free(r->handlers.v);
	memset(&r->aggregates, 0, sizeof(r->aggregates));
	memset(&r->commands, 0, sizeof(r->commands));
	memset(&r->handlers, 0, sizeof(r->handlers));
}

/* Moves the stage and its plugin into reg; nothing changes on failure. */
static int
stage_commit(struct registry *reg, struct cqrs_registry *r)
{
	void *state = r->plugin->state;
	size_t i;

	if (ptrvec_reserve(&reg->plugins, reg->plugins.n + 1) < 0 ||
	    ptrvec_reserve(&reg->aggregates, reg->aggregates.n + r->aggregates.n) < 0 ||
	    ptrvec_reserve(&reg->commands, reg->commands.n + r->commands.n) < 0 ||
	    ptrvec_reserve(&reg->handlers, reg->handlers.n + r->handlers.n) < 0 ||
	    strmap_reserve(&reg->aggregate_map, reg->aggregate_map.n + r->aggregates.n) < 0 ||
	    strmap_reserve(&reg->command_map, reg->command_map.n + r->commands.n) < 0)
		return CQRS_ENOMEM;

	/* the state is known only now that register_all() has returned */
	for (i = 0; i < r->aggregates.n; i++) {
		struct agg_entry *a = r->aggregates.v[i];

		a->pub.plugin_state = state;
		reg->aggregates.v[reg->aggregates.n++] = a;
		strmap_put(&reg->aggregate_map, a->pub.type.name, a);
	}
	for (i = 0; i < r->commands.n; i++) {
		struct reg_command *c = r->commands.v[i];

		c->plugin_state = state;
		reg->commands.v[reg->commands.n++] = c;
		strmap_put(&reg->command_map, c->type, c);
	}
	for (i = 0; i < r->handlers.n; i++) {
		struct reg_handler *h = r->handlers.v[i];

		h->plugin_state = state;
		reg->handlers.v[reg->handlers.n++] = h;
	}
	reg->plugins.v[reg->plugins.n++] = r->plugin;
	/* the entries now belong to reg */
	r->aggregates.n = 0;
	r->commands.n = 0;
	r->handlers.n = 0;
	r->plugin = NULL;
	return 0;
}

/* Why register_all() failed, in words: the plugin's own reason first (a
 * long one is cut at the end, where the detail is). */
static void
stage_reason(const struct cqrs_registry *r, int rc, struct cqrs_err *why)
{
	if (r->plugin_error[0] != '\0' && r->failed != 0)
		cqrs_err_set(why, CQRS_ECONFIG, "%s (first refused registration: %s)",
			     r->plugin_error, r->call_error);
	else if (r->plugin_error[0] != '\0')
		cqrs_err_set(why, CQRS_ECONFIG, "%s", r->plugin_error);
	else if (r->failed != 0)
		cqrs_err_set(why, CQRS_ECONFIG, "%s", r->call_error);
	else
		cqrs_err_set(why, CQRS_ECONFIG, "register_all returned %d without a reason", rc);
}

/*
 * Checks the descriptor, runs register_all() and commits. Takes over p (and
 * its handle): on failure it calls fini if register_all ran, closes the
 * handle and frees p.
 */
static int
load_plugin(struct registry *reg, struct plugin *p, struct cqrs_err *err)
{
	const struct cqrs_plugin *d = p->desc;
	struct cqrs_registry stage;
	struct cqrs_err why = { 0 };
	size_t n_aggregates, n_commands, n_handlers;
	int rc;

	memset(&stage, 0, sizeof(stage));
	if (d == NULL) {
		rc = cqrs_err_set(err, CQRS_ECONFIG, "could not load plugin \"%s\": "
				  "cqrs_plugin_entry returned NULL", p->origin);
		goto out;
	}
	if (d->abi_version != CQRS_PLUGIN_ABI) {
		rc = cqrs_err_set(err, CQRS_ECONFIG, "could not load plugin \"%s\": "
				  "ABI version %" PRIu32 ", this daemon knows %d",
				  p->origin, d->abi_version, CQRS_PLUGIN_ABI);
		goto out;
	}
	/* larger is fine: a newer build of the same ABI with fields at the end */
	if (d->struct_size < sizeof(struct cqrs_plugin)) {
		rc = cqrs_err_set(err, CQRS_ECONFIG, "could not load plugin \"%s\": "
				  "descriptor is %" PRIu32 " bytes, this daemon needs at least %zu",
				  p->origin, d->struct_size, sizeof(struct cqrs_plugin));
		goto out;
	}
	if (d->name == NULL || d->name[0] == '\0') {
		rc = cqrs_err_set(err, CQRS_ECONFIG, "could not load plugin \"%s\": "
				  "descriptor has no name", p->origin);
		goto out;
	}
	if (d->register_all == NULL) {
		rc = cqrs_err_set(err, CQRS_ECONFIG, "could not load plugin \"%s\": "
				  "descriptor has no register_all", p->origin);
		goto out;
	}

	stage.reg = reg;
	stage.plugin = p;
	p->ran = true;
	rc = d->register_all(&stage, &p->state);
	if (rc != 0 || stage.failed != 0) {
		stage_reason(&stage, rc, &why);
		rc = cqrs_err_set(err, stage.failed == CQRS_ENOMEM ? CQRS_ENOMEM : CQRS_ECONFIG,
				  "could not load plugin \"%s\": %s", p->origin, why.msg);
		goto out;
	}
	n_aggregates = stage.aggregates.n;
	n_commands = stage.commands.n;
	n_handlers = stage.handlers.n;
	if (stage_commit(reg, &stage) < 0) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "could not load plugin \"%s\": out of memory",
				  p->origin);
		goto out;
	}
	cqrs_log_info(NULL, "loaded plugin \"%s\" (%s): %zu aggregates, %zu commands, "
		      "%zu event handlers", p->origin, d->name, n_aggregates, n_commands,
		      n_handlers);
	p = NULL;		/* the registry has it */
	rc = 0;
out:
	stage_discard(&stage);
	if (p != NULL) {
		if (p->ran && d->fini != NULL)
			d->fini(p->state);
		if (p->handle != NULL)
			dlclose(p->handle);
		plugin_free(p);
	}
	return rc;
}

int
cqrs_registry_add(struct registry *reg, const struct cqrs_plugin *desc, const char *origin,
	     struct cqrs_err *err)
{
	struct plugin *p;

	if (reg == NULL || origin == NULL)
		return cqrs_err_set(err, CQRS_ECONFIG, "cqrs_registry_add: no registry or origin");
	p = calloc(1, sizeof(*p));
	if (p == NULL || (p->origin = strdup(origin)) == NULL) {
		free(p);
		return cqrs_err_set(err, CQRS_ENOMEM, "could not load plugin \"%s\": out of memory",
				    origin);
	}
	p->desc = desc;
	return load_plugin(reg, p, err);
}

/*
 * A plugin runs with the daemon's rights, so whoever can replace its file
 * (or rename a folder on its way) owns the daemon. As sudo and sshd do for
 * their files: the path must be absolute, and the file and every folder
 * from / to it (symbolic links resolved) must be owned by root or by the
 * daemon's user and writable by nobody else. A folder with the sticky bit
 * owned by root (/tmp) is fine: others cannot rename or remove what is
 * not theirs in it.
 */
static int
plugin_path_check(const char *path, struct cqrs_err *err)
{
	char real[PATH_MAX];
	uid_t me = geteuid();
	bool first = true;
	size_t end;

	if (path[0] != '/')
		return cqrs_err_set(err, CQRS_ECONFIG, "refusing plugin \"%s\": its path is not "
				    "absolute", path);
	if (realpath(path, real) == NULL)
		return 0;	/* dlopen() says why, in its words */
	/* the file, then each folder up to /: real is cut shorter each time */
	for (end = strlen(real);;) {
		const char *what = first ? "the file" : "its folder";
		const char *name = end == 0 ? "/" : real;
		struct stat st;

		real[end] = '\0';
		if (stat(name, &st) != 0)
			return cqrs_err_set(err, CQRS_ECONFIG, "could not load plugin \"%s\": %s: %s",
					    path, name, strerror(errno));
		if (first && !S_ISREG(st.st_mode))
			return cqrs_err_set(err, CQRS_ECONFIG, "refusing plugin \"%s\": not a regular "
					    "file", path);
		if (st.st_uid != 0 && st.st_uid != me)
			return cqrs_err_set(err, CQRS_ECONFIG, "refusing plugin \"%s\": %s %s is owned "
					    "by uid %u, not by root or the daemon's user (uid %u)", path,
					    what, name, (unsigned)st.st_uid, (unsigned)me);
		if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 &&
		    !(S_ISDIR(st.st_mode) && (st.st_mode & S_ISVTX) && st.st_uid == 0))
			return cqrs_err_set(err, CQRS_ECONFIG, "refusing plugin \"%s\": %s %s is "
					    "writable by %s (mode %04o)", path, what, name,
					    (st.st_mode & S_IWOTH) ? "anyone" : "its group",
					    (unsigned)(st.st_mode & 07777));
		if (end == 0)
			return 0;
		first = false;
		while (end > 0 && real[end - 1] != '/')
			end--;
		if (end > 0)
			end--;	/* the '/' before that last name */
	}
}

int
cqrs_registry_load(struct registry *reg, const char *path, struct cqrs_err *err)
{
	cqrs_plugin_entry_fn entry;
	struct plugin *p = NULL;
	void *handle = NULL;
	const char *why;
	size_t i;
	int rc;

	if (reg == NULL || path == NULL)
		return cqrs_err_set(err, CQRS_ECONFIG, "cqrs_registry_load: no registry or path");
	if ((rc = plugin_path_check(path, err)) < 0)
		return rc;
	p = calloc(1, sizeof(*p));
	if (p == NULL || (p->origin = strdup(path)) == NULL) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "could not load plugin \"%s\": out of memory",
				  path);
		goto out;
	}
	/* RTLD_NOW: a missing symbol refuses the load now, not at the first
	 * command; RTLD_LOCAL: two plugins' symbols never mix */
	handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (handle == NULL) {
		why = dlerror();
		rc = cqrs_err_set(err, CQRS_ECONFIG, "could not load plugin \"%s\": %s", path,
				  why != NULL ? why : "dlopen failed");
		goto out;
	}
	/* dlopen() of a file already open gives the same handle back */
	for (i = 0; i < reg->plugins.n; i++) {
		const struct plugin *q = reg->plugins.v[i];

		if (q->handle == handle) {
			rc = cqrs_err_set(err, CQRS_ECONFIG, "could not load plugin \"%s\": "
					  "already loaded as \"%s\"", path, q->origin);
			goto out;
		}
	}
	dlerror();
	entry = (cqrs_plugin_entry_fn)dlsym(handle, CQRS_PLUGIN_ENTRY_SYMBOL);
	if (entry == NULL) {
		rc = cqrs_err_set(err, CQRS_ECONFIG, "could not load plugin \"%s\": "
				  "exports no %s", path, CQRS_PLUGIN_ENTRY_SYMBOL);
		goto out;
	}
	p->handle = handle;
	p->desc = entry();
	handle = NULL;
	rc = load_plugin(reg, p, err);
	p = NULL;		/* load_plugin took it */
out:
	if (handle != NULL)
		dlclose(handle);
	plugin_free(p);
	return rc;
}

int
cqrs_registry_load_list(struct registry *reg, const char *paths, struct cqrs_err *err)
{
	char *copy = NULL;
	char *save = NULL;
	char *tok;
	int rc = 0;

	if (paths == NULL)
		return 0;
	copy = strdup(paths);
	if (copy == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "plugins: out of memory");
	for (tok = strtok_r(copy, " \t\n", &save); tok != NULL;
	     tok = strtok_r(NULL, " \t\n", &save)) {
		rc = cqrs_registry_load(reg, tok, err);
		if (rc < 0)
			break;
	}
	free(copy);
	return rc;
}

/* ---- lookups ------------------------------------------------------------ */

const struct reg_aggregate *
cqrs_registry_aggregate(const struct registry *reg, const char *name)
{
	const struct agg_entry *a;

	if (reg == NULL)
		return NULL;
	a = strmap_get(&reg->aggregate_map, name);
	return a != NULL ? &a->pub : NULL;
}

const struct reg_command *
cqrs_registry_command(const struct registry *reg, const char *type)
{
	if (reg == NULL)
		return NULL;
	return strmap_get(&reg->command_map, type);
}

cqrs_applier_fn
cqrs_registry_applier(const struct registry *reg, const struct reg_aggregate *agg,
		 const char *event_type)
{
	const struct agg_entry *a = (const struct agg_entry *)agg;
	const struct applier *ap;

	(void)reg;
	if (a == NULL)
		return NULL;
	ap = strmap_get(&a->appliers, event_type);
	return ap != NULL ? ap->fn : NULL;
}

size_t
cqrs_registry_handler_count(const struct registry *reg)
{
	return reg != NULL ? reg->handlers.n : 0;
}

const struct reg_handler *
cqrs_registry_handler(const struct registry *reg, size_t i)
{
	if (reg == NULL || i >= reg->handlers.n)
		return NULL;
	return reg->handlers.v[i];
}

size_t
cqrs_registry_command_count(const struct registry *reg)
{
	return reg != NULL ? reg->commands.n : 0;
}

size_t
cqrs_registry_aggregate_count(const struct registry *reg)
{
	return reg != NULL ? reg->aggregates.n : 0;
}

size_t
cqrs_registry_plugin_count(const struct registry *reg)
{
	return reg != NULL ? reg->plugins.n : 0;
}

/* ---- routing ------------------------------------------------------------ */

/* The word after the one at w, or NULL after the last. */
static const char *
next_word(const char *w)
{
	w += strcspn(w, ".");
	return *w == '.' ? w + 1 : NULL;
}

static bool
word_is(const char *w, char c)
{
	return w[0] == c && (w[1] == '.' || w[1] == '\0');
}

static bool
word_eq(const char *a, const char *b)
{
	size_t la = strcspn(a, ".");

	return la == strcspn(b, ".") && memcmp(a, b, la) == 0;
}

/*
 * Glob matching with words for characters: '#' is glob's '*' and '*' its
 * '?'. Only the last '#' seen needs a backtracking point (the classic
 * wildcard algorithm), so the cost is at most words(pattern) * words(key)
 * whatever the number of '#'.
 */
bool
cqrs_routing_match(const char *pattern, const char *key)
{
	const char *p = pattern;
	const char *k = key;
	const char *hash_p = NULL;	/* word after the last '#' */
	const char *hash_k = NULL;	/* key word that '#' would take next */

	if (pattern == NULL || key == NULL)
		return false;
	while (k != NULL) {
		if (p != NULL && word_is(p, '#')) {
			hash_p = next_word(p);
			hash_k = k;
			p = hash_p;
		} else if (p != NULL && (word_is(p, '*') || word_eq(p, k))) {
			p = next_word(p);
			k = next_word(k);
		} else if (hash_k != NULL) {
			/* let the last '#' take one more word, and retry after it */
			hash_k = next_word(hash_k);
			k = hash_k;
			p = hash_p;
		} else {
			return false;
		}
	}
	while (p != NULL && word_is(p, '#'))
		p = next_word(p);
	return p == NULL;
}

/*
 * test_plugin.c - the plugin host: loading and refusing plugins, the
 * registry's rollback, registration rules, routing patterns, and running
 * command handlers through cqrs_cmd_ctx_run().
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "plugin_host.h"

#define PLUGIN(name) CQRS_BUILDDIR "/plugins/" name ".so"

#define ck_assert_has(hay, needle) \
	ck_assert_msg(strstr((hay), (needle)) != NULL, "\"%s\" does not contain \"%s\"", \
		      (hay), (needle))

static struct registry *
new_registry(void)
{
	struct registry *reg = cqrs_registry_new();

	ck_assert_ptr_nonnull(reg);
	return reg;
}

static void
load_ok(struct registry *reg, const char *path)
{
	struct cqrs_err err = { 0 };

	if (cqrs_registry_load(reg, path, &err) != 0)
		ck_abort_msg("load %s: %s", path, err.msg);
}

static void
quiet(void)
{
	cqrs_log_set_level(CQRS_LOG_ERROR);
}

/* ---- loader refusals ---------------------------------------------------- */

START_TEST(missing_file_shows_dlerror)
{
	struct registry *reg = new_registry();
	struct cqrs_err err = { 0 };

	ck_assert_int_eq(cqrs_registry_load(reg, PLUGIN("does_not_exist"), &err), CQRS_ECONFIG);
	ck_assert_int_eq(err.code, CQRS_ECONFIG);
	ck_assert_has(err.msg, "does_not_exist.so");
	ck_assert_has(err.msg, "cannot open shared object file");
	ck_assert_uint_eq(cqrs_registry_plugin_count(reg), 0);
	cqrs_registry_free(reg);
}
END_TEST

START_TEST(not_a_shared_object)
{
	struct registry *reg = new_registry();
	struct cqrs_err err = { 0 };

	/* a C file is no ELF object: dlerror() says so */
	ck_assert_int_eq(cqrs_registry_load(reg, CQRS_SRCDIR "/tests/unit/test_plugin.c", &err),
			 CQRS_ECONFIG);
	ck_assert_has(err.msg, "could not load plugin");
	ck_assert_has(err.msg, "test_plugin.c");
	cqrs_registry_free(reg);
}
END_TEST

START_TEST(bad_abi_refused)
{
	struct registry *reg = new_registry();
	struct cqrs_err err = { 0 };

	ck_assert_int_eq(cqrs_registry_load(reg, PLUGIN("badabi"), &err), CQRS_ECONFIG);
	ck_assert_has(err.msg, "badabi.so");
	ck_assert_has(err.msg, "ABI version 999, this daemon knows 1");
	/* register_all was never called: its own message would show */
	ck_assert_ptr_null(strstr(err.msg, "must not run"));
	ck_assert_uint_eq(cqrs_registry_plugin_count(reg), 0);
	cqrs_registry_free(reg);
}
END_TEST

START_TEST(missing_entry_refused)
{
	struct registry *reg = new_registry();
	struct cqrs_err err = { 0 };

	ck_assert_int_eq(cqrs_registry_load(reg, PLUGIN("nosym"), &err), CQRS_ECONFIG);
	ck_assert_has(err.msg, "nosym.so");
	ck_assert_has(err.msg, "exports no cqrs_plugin_entry");
	cqrs_registry_free(reg);
}
END_TEST

START_TEST(failing_register_all_leaves_nothing)
{
	struct registry *reg = new_registry();
	struct cqrs_err err = { 0 };

	ck_assert_int_eq(cqrs_registry_load(reg, PLUGIN("failreg"), &err), CQRS_ECONFIG);
	ck_assert_has(err.msg, "failreg.so");
	ck_assert_has(err.msg, "the required setting \"frobnicate\" is missing");
	ck_assert_uint_eq(cqrs_registry_plugin_count(reg), 0);
	ck_assert_uint_eq(cqrs_registry_aggregate_count(reg), 0);
	ck_assert_uint_eq(cqrs_registry_command_count(reg), 0);
	ck_assert_uint_eq(cqrs_registry_handler_count(reg), 0);
	ck_assert_ptr_null(cqrs_registry_aggregate(reg, "failthing"));
	ck_assert_ptr_null(cqrs_registry_command(reg, "failthing.do"));
	/* the registry is still usable */
	load_ok(reg, PLUGIN("bank"));
	ck_assert_uint_eq(cqrs_registry_plugin_count(reg), 1);
	cqrs_registry_free(reg);
}
END_TEST

START_TEST(same_file_twice_refused)
{
	struct registry *reg = new_registry();
	struct cqrs_err err = { 0 };

	load_ok(reg, PLUGIN("other"));
	ck_assert_int_eq(cqrs_registry_load(reg, PLUGIN("other"), &err), CQRS_ECONFIG);
	ck_assert_has(err.msg, "already loaded");
	ck_assert_uint_eq(cqrs_registry_plugin_count(reg), 1);
	ck_assert_uint_eq(cqrs_registry_handler_count(reg), 1);
	cqrs_registry_free(reg);
}
END_TEST

/* ---- plugins side by side ------------------------------------------------ */

START_TEST(bank_and_other_side_by_side)
{
	struct registry *reg = new_registry();
	const struct reg_command *open;
	const struct reg_command *add;
	const struct reg_handler *h;
	struct cqrs_err err = { 0 };

	ck_assert_int_eq(cqrs_registry_load_list(reg, " " PLUGIN("bank") "  " PLUGIN("other") "\t",
					    &err), 0);
	ck_assert_uint_eq(cqrs_registry_plugin_count(reg), 2);
	ck_assert_uint_eq(cqrs_registry_aggregate_count(reg), 3);
	ck_assert_uint_eq(cqrs_registry_command_count(reg), 9);
	ck_assert_uint_eq(cqrs_registry_handler_count(reg), 4 + 1);

	open = cqrs_registry_command(reg, "account.open");
	ck_assert_ptr_nonnull(open);
	ck_assert_str_eq(open->type, "account.open");
	ck_assert_str_eq(open->aggregate->type.name, "account");
	ck_assert_has(open->plugin, "bank.so");
	ck_assert_ptr_eq(open->aggregate, cqrs_registry_aggregate(reg, "account"));

	add = cqrs_registry_command(reg, "counter.add");
	ck_assert_ptr_nonnull(add);
	ck_assert_has(add->plugin, "other.so");
	ck_assert_ptr_nonnull(add->plugin_state);
	ck_assert_ptr_eq(add->aggregate, cqrs_registry_aggregate(reg, "counter"));
	/* a plugin's applier is found through its own aggregate only */
	ck_assert_ptr_nonnull(cqrs_registry_applier(reg, add->aggregate, "CounterAdded"));
	ck_assert_ptr_null(cqrs_registry_applier(reg, add->aggregate, "MoneyDeposited"));
	ck_assert_ptr_nonnull(cqrs_registry_applier(reg, open->aggregate, "MoneyDeposited"));

	/* handlers in registration order: bank's four, then other's one */
	h = cqrs_registry_handler(reg, 4);
	ck_assert_ptr_nonnull(h);
	ck_assert_str_eq(h->group, "other");
	ck_assert_str_eq(h->pattern, "counter.#");
	ck_assert_ptr_nonnull(h->reset);
	ck_assert_ptr_eq(h->plugin_state, add->plugin_state);
	ck_assert_ptr_null(cqrs_registry_handler(reg, 5));
	ck_assert_str_eq(cqrs_registry_handler(reg, 0)->group, "projections");

	ck_assert_ptr_null(cqrs_registry_command(reg, "account.nope"));
	ck_assert_ptr_null(cqrs_registry_command(reg, NULL));
	ck_assert_ptr_null(cqrs_registry_aggregate(reg, "nope"));
	cqrs_registry_free(reg);
}
END_TEST

START_TEST(duplicate_command_refused_and_rolled_back)
{
	struct registry *reg = new_registry();
	struct cqrs_err err = { 0 };

	load_ok(reg, PLUGIN("bank"));
	ck_assert_int_eq(cqrs_registry_load(reg, PLUGIN("dupcmd"), &err), CQRS_ECONFIG);
	/* both files and the name */
	ck_assert_has(err.msg, "dupcmd.so");
	ck_assert_has(err.msg, "bank.so");
	ck_assert_has(err.msg, "command \"account.open\" is already registered by");
	/* nothing of dupcmd stays, bank is untouched */
	ck_assert_ptr_null(cqrs_registry_aggregate(reg, "dupcheck"));
	ck_assert_ptr_null(cqrs_registry_command(reg, "dupcheck.ping"));
	ck_assert_has(cqrs_registry_command(reg, "account.open")->plugin, "bank.so");
	ck_assert_uint_eq(cqrs_registry_plugin_count(reg), 1);
	ck_assert_uint_eq(cqrs_registry_aggregate_count(reg), 2);
	ck_assert_uint_eq(cqrs_registry_command_count(reg), 7);
	/* and the registry still takes plugins */
	load_ok(reg, PLUGIN("other"));
	ck_assert_uint_eq(cqrs_registry_command_count(reg), 9);
	cqrs_registry_free(reg);
}
END_TEST

START_TEST(load_list_stops_at_first_failure)
{
	struct registry *reg = new_registry();
	struct cqrs_err err = { 0 };

	ck_assert_int_eq(cqrs_registry_load_list(reg, "", &err), 0);
	ck_assert_int_eq(cqrs_registry_load_list(reg, PLUGIN("other") " " PLUGIN("badabi") " "
					    PLUGIN("bank"), &err), CQRS_ECONFIG);
	ck_assert_has(err.msg, "badabi.so");
	ck_assert_uint_eq(cqrs_registry_plugin_count(reg), 1);
	ck_assert_ptr_null(cqrs_registry_command(reg, "account.open"));
	cqrs_registry_free(reg);
}
END_TEST

START_TEST(free_null)
{
	cqrs_registry_free(NULL);
	cqrs_cmd_ctx_clear(NULL);
}
END_TEST

/* ---- registration rules, through in-process descriptors ----------------- */

static void *
st_new(void *ps)
{
	(void)ps;
	return calloc(1, 8);
}

static int
noop_applier(void *state, const struct cqrs_event *ev)
{
	(void)state;
	(void)ev;
	return 0;
}

static int
noop_command(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
	     int64_t version)
{
	(void)ctx;
	(void)cmd;
	(void)state;
	(void)version;
	return CQRS_OUTCOME_OK;
}

static int
noop_event(struct cqrs_event_ctx *ctx, const struct cqrs_event *ev)
{
	(void)ctx;
	(void)ev;
	return CQRS_HANDLED_OK;
}

static struct json_object *
enc(const void *s)
{
	(void)s;
	return json_object_new_object();
}

static const struct cqrs_aggregate_type good_type = {
	.name = "good", .state_new = st_new, .state_free = free,
};

/* What the rules plugin saw: each call's code and the message it left. */
#define MAX_CALLS 32
static int call_rc[MAX_CALLS];
static int n_calls;
static int fini_calls;

static void
count_fini(void *state)
{
	fini_calls++;
	free(state);
}

/* Registers good things and bad ones, ignoring the failures. */
static int
rules_register(struct cqrs_registry *r, void **state)
{
	static const struct cqrs_aggregate_type dashed = {
		.name = "bad-name", .state_new = st_new, .state_free = free,
	};
	static const struct cqrs_aggregate_type no_new = { .name = "nonew", .state_free = free };
	static const struct cqrs_aggregate_type half_snap = {
		.name = "halfsnap", .state_new = st_new, .state_free = free, .snapshot_encode = enc,
	};
	static const struct cqrs_aggregate_type too_long = {
		.name = "a23456789012345678901234567890123456789012345678901234567",
		.state_new = st_new, .state_free = free,
	};
	int *rc = call_rc;

	*state = malloc(16);
	n_calls = 0;
#define CALL(x) (rc[n_calls++] = (x))
	CALL(cqrs_register_aggregate(r, &good_type));			/* 0 ok */
	CALL(cqrs_register_aggregate(r, &dashed));			/* 1 */
	CALL(cqrs_register_aggregate(r, &no_new));			/* 2 */
	CALL(cqrs_register_aggregate(r, &half_snap));			/* 3 */
	CALL(cqrs_register_aggregate(r, &too_long));			/* 4 */
	CALL(cqrs_register_aggregate(r, &good_type));			/* 5 dup */
	CALL(cqrs_register_applier(r, "good", "Happened", noop_applier));	/* 6 ok */
	CALL(cqrs_register_applier(r, "good", "Happened", noop_applier));	/* 7 dup */
	CALL(cqrs_register_applier(r, "nosuch", "Happened", noop_applier));	/* 8 */
	CALL(cqrs_register_applier(r, "good", "Bad Type", noop_applier));	/* 9 */
	CALL(cqrs_register_applier(r, "good", "Other", NULL));		/* 10 */
	CALL(cqrs_register_command(r, "good.do", "good", noop_command));	/* 11 ok */
	CALL(cqrs_register_command(r, "good.do", "good", noop_command));	/* 12 dup */
	CALL(cqrs_register_command(r, "good do", "good", noop_command));	/* 13 */
	CALL(cqrs_register_command(r, "good.x", "nosuch", noop_command));	/* 14 */
	CALL(cqrs_register_command(r, "good.y", "good", NULL));		/* 15 */
	CALL(cqrs_register_event_handler(r, "g", "#", noop_event, NULL));	/* 16 ok */
	CALL(cqrs_register_event_handler(r, "g", "good.*.x.#", noop_event, NULL)); /* 17 ok */
	CALL(cqrs_register_event_handler(r, "g", "", noop_event, NULL));	/* 18 */
	CALL(cqrs_register_event_handler(r, "g", "a..b", noop_event, NULL));	/* 19 */
	CALL(cqrs_register_event_handler(r, "g", "a.b*", noop_event, NULL));	/* 20 */
	CALL(cqrs_register_event_handler(r, "g", "a.", noop_event, NULL));	/* 21 */
	CALL(cqrs_register_event_handler(r, "bad group", "a", noop_event, NULL)); /* 22 */
	CALL(cqrs_register_event_handler(r, "g", "a", NULL, NULL));		/* 23 */
	CALL(cqrs_register_aggregate(r, NULL));				/* 24 */
#undef CALL
	return 0;	/* the failed calls fail the load all the same */
}

static const struct cqrs_plugin rules_plugin = {
	.abi_version = CQRS_PLUGIN_ABI,
	.struct_size = sizeof(struct cqrs_plugin),
	.name = "rules",
	.register_all = rules_register,
	.fini = count_fini,
};

START_TEST(registration_rules)
{
	static const int expect_ok[] = { 0, 6, 11, 16, 17 };
	struct registry *reg = new_registry();
	struct cqrs_err err = { 0 };
	size_t i;
	int j;

	fini_calls = 0;
	ck_assert_int_eq(cqrs_registry_add(reg, &rules_plugin, "rules-origin", &err), CQRS_ECONFIG);
	ck_assert_int_eq(n_calls, 25);
	for (j = 0; j < n_calls; j++) {
		bool ok = false;

		for (i = 0; i < sizeof(expect_ok) / sizeof(expect_ok[0]); i++)
			ok = ok || expect_ok[i] == j;
		if (ok)
			ck_assert_msg(call_rc[j] == 0, "call %d failed: %d", j, call_rc[j]);
		else
			ck_assert_msg(call_rc[j] == CQRS_EINVALID, "call %d gave %d", j,
				      call_rc[j]);
	}
	/* the first refused call is the reason */
	ck_assert_has(err.msg, "rules-origin");
	ck_assert_has(err.msg, "aggregate \"bad-name\"");
	ck_assert_has(err.msg, "letters, digits");
	/* refused even though register_all returned 0; fini ran once */
	ck_assert_int_eq(fini_calls, 1);
	ck_assert_uint_eq(cqrs_registry_aggregate_count(reg), 0);
	ck_assert_uint_eq(cqrs_registry_handler_count(reg), 0);
	ck_assert_ptr_null(cqrs_registry_aggregate(reg, "good"));
	cqrs_registry_free(reg);
	ck_assert_int_eq(fini_calls, 1);
}
END_TEST

/* One bad call at a time, to see each message. */
static int bad_case;

static int
one_bad_register(struct cqrs_registry *r, void **state)
{
	(void)state;
	if (cqrs_register_aggregate(r, &good_type) < 0)
		return -1;
	switch (bad_case) {
	case 0:
		return cqrs_register_applier(r, "nosuch", "Happened", noop_applier);
	case 1:
		return cqrs_register_command(r, "good.do", "nosuch", noop_command);
	case 2:
		return cqrs_register_event_handler(r, "g", "a..b", noop_event, NULL);
	case 3:
		/* an aggregate of an earlier plugin: commands may use it,
		 * appliers may not */
		if (cqrs_register_command(r, "account.audit", "account", noop_command) < 0)
			return -1;
		return cqrs_register_applier(r, "account", "Audited", noop_applier);
	case 4:
		return cqrs_register_aggregate(r, &good_type);
	}
	return -1;	/* without a reason */
}

static const struct cqrs_plugin one_bad_plugin = {
	.abi_version = CQRS_PLUGIN_ABI,
	.struct_size = sizeof(struct cqrs_plugin),
	.name = "onebad",
	.register_all = one_bad_register,
};

START_TEST(registration_messages)
{
	static const char *const want[] = {
		"unknown aggregate \"nosuch\"",
		"command \"good.do\": unknown aggregate \"nosuch\"",
		"pattern \"a..b\" has an empty word",
		"aggregate \"account\" belongs to",
		"aggregate \"good\" is already registered by onebad",
		"register_all returned -1 without a reason",
	};
	struct registry *reg = new_registry();
	struct cqrs_err err = { 0 };

	load_ok(reg, PLUGIN("bank"));
	bad_case = _i;
	ck_assert_int_eq(cqrs_registry_add(reg, &one_bad_plugin, "onebad", &err), CQRS_ECONFIG);
	ck_assert_has(err.msg, "could not load plugin \"onebad\"");
	ck_assert_has(err.msg, want[_i]);
	if (_i == 3)
		ck_assert_has(err.msg, "bank.so");
	ck_assert_ptr_null(cqrs_registry_aggregate(reg, "good"));
	ck_assert_ptr_null(cqrs_registry_command(reg, "account.audit"));
	ck_assert_uint_eq(cqrs_registry_command_count(reg), 7);
	cqrs_registry_free(reg);
}
END_TEST

static const struct cqrs_plugin bad_descriptors[] = {
	{ .abi_version = CQRS_PLUGIN_ABI, .struct_size = 8, .name = "small",
	  .register_all = one_bad_register },
	{ .abi_version = CQRS_PLUGIN_ABI, .struct_size = sizeof(struct cqrs_plugin),
	  .name = NULL, .register_all = one_bad_register },
	{ .abi_version = CQRS_PLUGIN_ABI, .struct_size = sizeof(struct cqrs_plugin),
	  .name = "noreg" },
	{ .abi_version = 0, .struct_size = sizeof(struct cqrs_plugin), .name = "old",
	  .register_all = one_bad_register },
};

START_TEST(descriptor_checks)
{
	static const char *const want[] = {
		"descriptor is 8 bytes, this daemon needs at least",
		"descriptor has no name",
		"descriptor has no register_all",
		"ABI version 0, this daemon knows 1",
	};
	struct registry *reg = new_registry();
	struct cqrs_err err = { 0 };

	ck_assert_int_eq(cqrs_registry_add(reg, &bad_descriptors[_i], "desc", &err), CQRS_ECONFIG);
	ck_assert_has(err.msg, "\"desc\"");
	ck_assert_has(err.msg, want[_i]);
	ck_assert_uint_eq(cqrs_registry_plugin_count(reg), 0);
	cqrs_registry_free(reg);
}
END_TEST

START_TEST(bigger_descriptor_accepted)
{
	/* a newer build of ABI 1 with fields at the end */
	static const struct {
		struct cqrs_plugin p;
		void *extra;
	} newer = {
		.p = { .abi_version = CQRS_PLUGIN_ABI,
		       .struct_size = sizeof(struct cqrs_plugin) + sizeof(void *),
		       .name = "newer", .register_all = one_bad_register },
	};
	struct registry *reg = new_registry();
	struct cqrs_err err = { 0 };

	/* case 5: refuses without a reason, after passing the checks */
	bad_case = 5;
	ck_assert_int_eq(cqrs_registry_add(reg, &newer.p, "newer", &err), CQRS_ECONFIG);
	ck_assert_has(err.msg, "without a reason");
	cqrs_registry_free(reg);
}
END_TEST

/* ---- routing ------------------------------------------------------------- */

START_TEST(routing)
{
	static const struct {
		const char *pattern;
		const char *key;
		bool match;
	} cases[] = {
		{ "#", "account.MoneyDeposited", true },
		{ "#", "a", true },
		{ "#", "", true },
		{ "account.#", "account", true },
		{ "account.#", "account.MoneyDeposited", true },
		{ "account.#", "account.a.b.c", true },
		{ "account.#", "accounts.x", false },
		{ "account.*", "account.MoneyDeposited", true },
		{ "account.*", "account", false },
		{ "account.*", "account.a.b", false },
		{ "*.MoneyDeposited", "account.MoneyDeposited", true },
		{ "*.MoneyDeposited", "account.MoneyWithdrawn", false },
		{ "*", "account", true },
		{ "*", "account.x", false },
		{ "account.MoneyDeposited", "account.MoneyDeposited", true },
		{ "account.MoneyDeposited", "account.MoneyDeposite", false },
		{ "account.MoneyDeposite", "account.MoneyDeposited", false },
		{ "account", "account.MoneyDeposited", false },
		{ "#.MoneyDeposited", "account.MoneyDeposited", true },
		{ "#.MoneyDeposited", "MoneyDeposited", true },
		{ "#.MoneyDeposited", "a.b.MoneyDeposited", true },
		{ "#.MoneyDeposited", "a.MoneyDeposited.x", false },
		{ "a.#.b", "a.b", true },
		{ "a.#.b", "a.x.y.b", true },
		{ "a.#.b", "a.x.y.c", false },
		{ "a.#.b.#", "a.b.b.b", true },
		{ "#.#", "x", true },
		{ "#.*", "", true },
		{ "#.*", "x.y", true },
		{ "*.#", "x", true },
		{ "*.*.#", "x", false },
		{ "#.b.#.c", "a.b.x.b.c", true },
		{ "#.b.#.c", "a.b.x.b.d", false },
		{ "#.#.#.#.#.#.#.#.#.#.#.#.#.z", "a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a", false },
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		ck_assert_msg(cqrs_routing_match(cases[i].pattern, cases[i].key) == cases[i].match,
			      "cqrs_routing_match(\"%s\", \"%s\") should be %d", cases[i].pattern,
			      cases[i].key, cases[i].match);
	ck_assert(!cqrs_routing_match(NULL, "a"));
	ck_assert(!cqrs_routing_match("a", NULL));
}
END_TEST

/* The definition, recursively over word arrays: slow and obviously right. */
static bool
ref_match(char **p, int np, char **k, int nk)
{
	int i;

	if (np == 0)
		return nk == 0;
	if (strcmp(p[0], "#") == 0) {
		for (i = 0; i <= nk; i++)
			if (ref_match(p + 1, np - 1, k + i, nk - i))
				return true;
		return false;
	}
	if (nk == 0)
		return false;
	if (strcmp(p[0], "*") != 0 && strcmp(p[0], k[0]) != 0)
		return false;
	return ref_match(p + 1, np - 1, k + 1, nk - 1);
}

START_TEST(routing_against_reference)
{
	static char *const pw[] = { "a", "b", "*", "#" };
	static char *const kw[] = { "a", "b", "" };
	char *p[6];
	char *k[6];
	char pattern[64];
	char key[64];
	unsigned seed = 12345;
	int n;
	int np;
	int nk;
	int i;

	for (n = 0; n < 20000; n++) {
		seed = seed * 1103515245u + 12345u;
		np = 1 + (int)((seed >> 16) % 6);
		nk = 1 + (int)((seed >> 8) % 6);
		pattern[0] = key[0] = '\0';
		for (i = 0; i < np; i++) {
			seed = seed * 1103515245u + 12345u;
			p[i] = pw[(seed >> 16) % 4];
			strcat(pattern, i > 0 ? "." : "");
			strcat(pattern, p[i]);
		}
		for (i = 0; i < nk; i++) {
			seed = seed * 1103515245u + 12345u;
			/* empty words only as the whole key, which keys never are */
			k[i] = kw[(seed >> 16) % (nk == 1 ? 3 : 2)];
			strcat(key, i > 0 ? "." : "");
			strcat(key, k[i]);
		}
		ck_assert_msg(cqrs_routing_match(pattern, key) == ref_match(p, np, k, nk),
			      "cqrs_routing_match(\"%s\", \"%s\")", pattern, key);
	}
}
END_TEST

/* ---- cqrs_cmd_ctx_run --------------------------------------------------------- */

static int handler_mode;

static int
test_handler(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
	     int64_t version)
{
	int i;

	(void)cmd;
	(void)state;
	(void)version;
	switch (handler_mode) {
	case 0:		/* two events */
		ck_assert_int_eq(cqrs_emit(ctx, "A", json_object_new_object()), 0);
		ck_assert_int_eq(cqrs_emit(ctx, "B.x-y:z", json_object_new_object()), 0);
		return CQRS_OUTCOME_OK;
	case 1:
		return cqrs_invalid(ctx, "\"amount\" must be an integer > %d", 0);
	case 2:		/* emitted, then rejected: nothing may stay */
		cqrs_emit(ctx, "A", json_object_new_object());
		return cqrs_reject(ctx, "insufficient funds");
	case 3:
		return 7;
	case 4:		/* bad type; the handler ignores the error */
		ck_assert_int_eq(cqrs_emit(ctx, "Bad Type", json_object_new_object()), -1);
		return CQRS_OUTCOME_OK;
	case 5:		/* not an object */
		ck_assert_int_eq(cqrs_emit(ctx, "A", json_object_new_array()), -1);
		ck_assert_int_eq(cqrs_emit(ctx, "A", NULL), -1);
		/* an emit failure stays the answer, whatever comes after */
		return cqrs_reject(ctx, "this must not hide the emit failure");
	case 6:		/* too many */
		for (i = 0; i < CMD_CTX_MAX_EVENTS; i++)
			ck_assert_int_eq(cqrs_emit(ctx, "A", json_object_new_object()), 0);
		ck_assert_int_eq(cqrs_emit(ctx, "A", json_object_new_object()), -1);
		return CQRS_OUTCOME_OK;
	case 7:		/* outcomes without words */
		return CQRS_OUTCOME_REJECTED;
	case 8:
		return CQRS_OUTCOME_INVALID;
	case 9:		/* nothing to do is fine */
		return CQRS_OUTCOME_OK;
	case 10:
		ck_assert_ptr_eq(cqrs_cmd_plugin_state(ctx), &handler_mode);
		ck_assert_str_eq(cqrs_cmd_log(ctx)->correlation_id, "corr-1");
		return CQRS_OUTCOME_OK;
	}
	return -1;
}

START_TEST(cmd_ctx_outcomes)
{
	struct reg_command rc = {
		.type = "test.cmd", .fn = test_handler, .plugin = "test.so",
		.plugin_state = &handler_mode,
	};
	struct cqrs_log_ctx log = { .comp = "test", .correlation_id = "corr-1" };
	struct json_object *data = json_object_new_object();
	struct cqrs_command cmd = {
		.id = "00000000-0000-4000-8000-000000000000", .type = "test.cmd",
		.aggregate_id = "1", .stream = "test-1", .data = data, .metadata = data,
	};
	struct cqrs_cmd_ctx ctx;

	quiet();
	cqrs_cmd_ctx_init(&ctx, &rc, &log);

	handler_mode = 0;
	ck_assert_int_eq(cqrs_cmd_ctx_run(&ctx, &rc, &cmd, NULL, 0), CQRS_OUTCOME_OK);
	ck_assert_uint_eq(ctx.n_events, 2);
	ck_assert_str_eq(ctx.events[0].type, "A");
	ck_assert_str_eq(ctx.events[1].type, "B.x-y:z");
	ck_assert(json_object_is_type(ctx.events[1].data, json_type_object));
	ck_assert_str_eq(ctx.message, "");

	/* run again on the same ctx: the earlier events are gone */
	handler_mode = 1;
	ck_assert_int_eq(cqrs_cmd_ctx_run(&ctx, &rc, &cmd, NULL, 0), CQRS_OUTCOME_INVALID);
	ck_assert_uint_eq(ctx.n_events, 0);
	ck_assert_str_eq(ctx.message, "\"amount\" must be an integer > 0");

	handler_mode = 2;
	ck_assert_int_eq(cqrs_cmd_ctx_run(&ctx, &rc, &cmd, NULL, 0), CQRS_OUTCOME_REJECTED);
	ck_assert_uint_eq(ctx.n_events, 0);
	ck_assert_str_eq(ctx.message, "insufficient funds");

	handler_mode = 3;
	ck_assert_int_eq(cqrs_cmd_ctx_run(&ctx, &rc, &cmd, NULL, 0), -1);
	ck_assert_has(ctx.message, "returned 7");
	ck_assert_has(ctx.message, "test.cmd");

	handler_mode = 4;
	ck_assert_int_eq(cqrs_cmd_ctx_run(&ctx, &rc, &cmd, NULL, 0), -1);
	ck_assert_has(ctx.message, "event type");
	ck_assert_uint_eq(ctx.n_events, 0);

	handler_mode = 5;
	ck_assert_int_eq(cqrs_cmd_ctx_run(&ctx, &rc, &cmd, NULL, 0), -1);
	ck_assert_has(ctx.message, "not a JSON object");

	handler_mode = 6;
	ck_assert_int_eq(cqrs_cmd_ctx_run(&ctx, &rc, &cmd, NULL, 0), -1);
	ck_assert_has(ctx.message, "more than 1000 events");
	ck_assert_uint_eq(ctx.n_events, 0);

	handler_mode = 7;
	ck_assert_int_eq(cqrs_cmd_ctx_run(&ctx, &rc, &cmd, NULL, 0), CQRS_OUTCOME_REJECTED);
	ck_assert_str_ne(ctx.message, "");
	handler_mode = 8;
	ck_assert_int_eq(cqrs_cmd_ctx_run(&ctx, &rc, &cmd, NULL, 0), CQRS_OUTCOME_INVALID);
	ck_assert_str_ne(ctx.message, "");

	handler_mode = 9;
	ck_assert_int_eq(cqrs_cmd_ctx_run(&ctx, &rc, &cmd, NULL, 0), CQRS_OUTCOME_OK);
	ck_assert_uint_eq(ctx.n_events, 0);

	handler_mode = 10;
	ck_assert_int_eq(cqrs_cmd_ctx_run(&ctx, &rc, &cmd, NULL, 0), CQRS_OUTCOME_OK);

	ck_assert_int_eq(cqrs_cmd_ctx_run(&ctx, NULL, &cmd, NULL, 0), -1);
	cqrs_cmd_ctx_clear(&ctx);
	cqrs_cmd_ctx_clear(&ctx);
	json_object_put(data);
}
END_TEST

START_TEST(emit_without_ctx_consumes)
{
	/* the reference is taken over even when there is nowhere to put it */
	ck_assert_int_eq(cqrs_emit(NULL, "A", json_object_new_object()), -1);
	ck_assert_int_eq(cqrs_invalid(NULL, "x"), CQRS_OUTCOME_INVALID);
	ck_assert_int_eq(cqrs_reject(NULL, "x"), CQRS_OUTCOME_REJECTED);
}
END_TEST

/* ---- cqrs_aggregate_apply ----------------------------------------------------- */

START_TEST(apply_through_registry)
{
	struct registry *reg = new_registry();
	const struct reg_aggregate *counter;
	struct json_object *data = json_object_new_object();
	struct cqrs_event ev = {
		.stream = "counter-1", .version = 1, .type = "CounterAdded", .data = data,
	};
	struct cqrs_err err = { 0 };
	void *state;

	quiet();
	load_ok(reg, PLUGIN("other"));
	counter = cqrs_registry_aggregate(reg, "counter");
	ck_assert_ptr_nonnull(counter);
	state = counter->type.state_new(counter->plugin_state);
	/* the applier refuses an event without "by": a corrupt stream */
	ck_assert_int_eq(cqrs_aggregate_apply(reg, counter, state, &ev, &err), CQRS_EINTERNAL);
	ck_assert_has(err.msg, "CounterAdded");
	ck_assert_has(err.msg, "counter-1");
	json_object_object_add(data, "by", json_object_new_int(3));
	ck_assert_int_eq(cqrs_aggregate_apply(reg, counter, state, &ev, &err), 0);
	ck_assert_int_eq(*(int64_t *)state, 3);
	/* no applier: skipped */
	ev.type = "SomethingElse";
	ck_assert_int_eq(cqrs_aggregate_apply(reg, counter, state, &ev, &err), 0);
	ck_assert_int_eq(*(int64_t *)state, 3);
	counter->type.state_free(state);
	json_object_put(data);
	cqrs_registry_free(reg);
}
END_TEST

/* ---- event contexts ------------------------------------------------------ */

struct sent {
	int calls;
	char command[64];
	char key[64];
};

static int
fake_send(void *arg, const struct cqrs_event *cause, const char *key, const char *command,
	  const char *aggregate_id, struct json_object *data, struct cqrs_err *err)
{
	struct sent *s = arg;

	(void)aggregate_id;
	s->calls++;
	snprintf(s->command, sizeof(s->command), "%s", command);
	snprintf(s->key, sizeof(s->key), "%s/%s", cause->id, key != NULL ? key : "");
	json_object_put(data);
	if (strcmp(command, "account.withdraw") == 0)
		return cqrs_err_set(err, CQRS_EREJECTED, "insufficient funds");
	return 0;
}

START_TEST(event_ctx_and_send)
{
	struct registry *reg = new_registry();
	const struct reg_handler *h;
	struct cqrs_event ev = { .id = "ev-1", .stream = "counter-1", .type = "CounterAdded" };
	struct cqrs_log_ctx log = { .comp = "test", .event_id = "ev-1" };
	struct sent sent = { 0 };
	struct event_ctx_ops ops = { .send = fake_send, .arg = &sent };
	struct event_ctx_ops no_send = { .send = NULL };
	struct cqrs_event_ctx ctx;
	struct cqrs_err err = { 0 };

	quiet();
	load_ok(reg, PLUGIN("other"));
	h = cqrs_registry_handler(reg, 0);
	ck_assert(cqrs_routing_match(h->pattern, "counter.CounterAdded"));

	/* no ops: refused, data consumed */
	cqrs_event_ctx_init(&ctx, h, &log, NULL, &ev, NULL);
	ck_assert_ptr_eq(cqrs_event_plugin_state(&ctx), h->plugin_state);
	ck_assert_str_eq(cqrs_event_log(&ctx)->event_id, "ev-1");
	ck_assert_ptr_null(cqrs_event_pg(&ctx));
	ck_assert_int_eq(h->fn(&ctx, &ev), CQRS_HANDLED_OK);
	ck_assert_int_eq(cqrs_send(&ctx, "k", "counter.add", "2", json_object_new_object(), &err),
			 CQRS_EUNAVAILABLE);
	ck_assert_str_eq(err.msg, "no command socket");
	cqrs_event_ctx_init(&ctx, h, &log, NULL, &ev, &no_send);
	ck_assert_int_eq(cqrs_send(&ctx, "k", "counter.add", "2", json_object_new_object(), &err),
			 CQRS_EUNAVAILABLE);
	ck_assert_int_eq(cqrs_send(NULL, "k", "counter.add", "2", json_object_new_object(), &err),
			 CQRS_EUNAVAILABLE);

	/* with ops: passed on with the cause */
	cqrs_event_ctx_init(&ctx, h, &log, NULL, &ev, &ops);
	ck_assert_int_eq(cqrs_send(&ctx, "debit", "account.deposit", "7",
				   json_object_new_object(), &err), 0);
	ck_assert_int_eq(sent.calls, 1);
	ck_assert_str_eq(sent.command, "account.deposit");
	ck_assert_str_eq(sent.key, "ev-1/debit");
	ck_assert_int_eq(cqrs_send(&ctx, "debit", "account.withdraw", "7",
				   json_object_new_object(), &err), CQRS_EREJECTED);
	ck_assert_str_eq(err.msg, "insufficient funds");
	ck_assert_int_eq(cqrs_send(&ctx, "k", NULL, "7", json_object_new_object(), &err),
			 CQRS_EINVALID);

	/* a reset has no event to derive a command id from */
	cqrs_event_ctx_init(&ctx, h, &log, NULL, NULL, &ops);
	ck_assert_int_eq(h->reset(&ctx), CQRS_HANDLED_OK);
	ck_assert_int_eq(cqrs_send(&ctx, "k", "counter.add", "2", json_object_new_object(), &err),
			 CQRS_EINVALID);
	ck_assert_int_eq(sent.calls, 2);

	ck_assert_int_eq(cqrs_event_fail(&ctx, CQRS_HANDLED_RETRY, "db down: %s", "timeout"),
			 CQRS_HANDLED_RETRY);
	ck_assert_str_eq(ctx.reason, "db down: timeout");
	ck_assert_int_eq(cqrs_event_fail(NULL, CQRS_HANDLED_FAIL, "x"), CQRS_HANDLED_FAIL);
	cqrs_registry_free(reg);
}
END_TEST

/* ---- who may have written the file ---------------------------------------- */

/* A copy of bank.so at DIR/bank.so in a fresh folder under /tmp (mode
 * dir_mode), the file with file_mode; the copy's path (static). */
static const char *
plugin_copy(mode_t dir_mode, mode_t file_mode, char *dir, size_t size)
{
	static char path[256];
	char buf[65536];
	int in, out;
	ssize_t n;

	snprintf(dir, size, "/tmp/cqrs-plugin.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/bank.so", dir);
	in = open(PLUGIN("bank"), O_RDONLY);
	out = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	ck_assert_int_ge(in, 0);
	ck_assert_int_ge(out, 0);
	while ((n = read(in, buf, sizeof(buf))) > 0)
		ck_assert_int_eq(write(out, buf, (size_t)n), n);
	close(in);
	close(out);
	ck_assert_int_eq(chmod(path, file_mode), 0);
	ck_assert_int_eq(chmod(dir, dir_mode), 0);
	return path;
}

static void
plugin_copy_remove(const char *dir)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/bank.so", dir);
	unlink(path);
	rmdir(dir);
}

/* Loading path fails naming want (NULL: it loads). */
static void
load_expect(const char *path, const char *want)
{
	struct registry *reg = new_registry();
	struct cqrs_err err = { 0 };
	int rc = cqrs_registry_load(reg, path, &err);

	if (want == NULL) {
		ck_assert_msg(rc == 0, "load %s: %s", path, err.msg);
		ck_assert_uint_eq(cqrs_registry_plugin_count(reg), 1);
	} else {
		ck_assert_msg(rc == CQRS_ECONFIG, "%s loaded; it should be refused for: %s", path,
			      want);
		ck_assert_has(err.msg, want);
		ck_assert_uint_eq(cqrs_registry_plugin_count(reg), 0);
	}
	cqrs_registry_free(reg);
}

START_TEST(relative_path_refused)
{
	char cwd[512];

	ck_assert_ptr_nonnull(getcwd(cwd, sizeof(cwd)));
	ck_assert_int_eq(chdir(CQRS_BUILDDIR), 0);
	load_expect("plugins/bank.so", "its path is not absolute");
	load_expect("./plugins/bank.so", "its path is not absolute");
	ck_assert_int_eq(chdir(cwd), 0);
}
END_TEST

START_TEST(writable_by_others_refused)
{
	char dir[64];
	const char *path;

	path = plugin_copy(0755, 0664, dir, sizeof(dir));
	load_expect(path, "the file");
	load_expect(path, "is writable by its group (mode 0664)");
	plugin_copy_remove(dir);

	path = plugin_copy(0755, 0646, dir, sizeof(dir));
	load_expect(path, "is writable by anyone (mode 0646)");
	plugin_copy_remove(dir);

	path = plugin_copy(0775, 0644, dir, sizeof(dir));
	load_expect(path, "its folder");
	load_expect(path, "is writable by its group (mode 0775)");
	plugin_copy_remove(dir);

	/* sticky and root's, like /tmp: others cannot replace what is ours */
	path = plugin_copy(01777, 0644, dir, sizeof(dir));
	load_expect(path, geteuid() == 0 ? NULL : "is writable by anyone");
	plugin_copy_remove(dir);

	/* a symbolic link is judged by where it leads */
	path = plugin_copy(0755, 0664, dir, sizeof(dir));
	{
		char link[128];

		snprintf(link, sizeof(link), "%s.link", dir);
		ck_assert_int_eq(symlink(path, link), 0);
		load_expect(link, "is writable by its group");
		unlink(link);
	}
	plugin_copy_remove(dir);

	path = plugin_copy(0755, 0644, dir, sizeof(dir));
	load_expect(path, NULL);
	plugin_copy_remove(dir);
}
END_TEST

/* The tests run as root (make check installs packages): another owner is
 * one chown away. */
START_TEST(owned_by_another_user_refused)
{
	char dir[64];
	const char *path;

	ck_assert_msg(geteuid() == 0, "this test changes owners: run it as root");
	path = plugin_copy(0755, 0644, dir, sizeof(dir));
	ck_assert_int_eq(chown(path, 4242, 0), 0);
	load_expect(path, "the file");
	load_expect(path, "is owned by uid 4242, not by root or the daemon's user (uid 0)");
	ck_assert_int_eq(chown(path, 0, 0), 0);
	ck_assert_int_eq(chown(dir, 4242, 4242), 0);
	load_expect(path, "its folder");
	load_expect(path, "is owned by uid 4242");
	ck_assert_int_eq(chown(dir, 0, 0), 0);
	load_expect(path, NULL);
	plugin_copy_remove(dir);
}
END_TEST

static Suite *
plugin_suite(void)
{
	Suite *s = suite_create("plugin");
	TCase *tc;

	tc = tcase_create("loader");
	tcase_add_checked_fixture(tc, quiet, NULL);
	tcase_add_test(tc, missing_file_shows_dlerror);
	tcase_add_test(tc, relative_path_refused);
	tcase_add_test(tc, writable_by_others_refused);
	tcase_add_test(tc, owned_by_another_user_refused);
	tcase_add_test(tc, not_a_shared_object);
	tcase_add_test(tc, bad_abi_refused);
	tcase_add_test(tc, missing_entry_refused);
	tcase_add_test(tc, failing_register_all_leaves_nothing);
	tcase_add_test(tc, same_file_twice_refused);
	tcase_add_test(tc, bank_and_other_side_by_side);
	tcase_add_test(tc, duplicate_command_refused_and_rolled_back);
	tcase_add_test(tc, load_list_stops_at_first_failure);
	tcase_add_test(tc, free_null);
	suite_add_tcase(s, tc);

	tc = tcase_create("registration");
	tcase_add_checked_fixture(tc, quiet, NULL);
	tcase_add_test(tc, registration_rules);
	tcase_add_loop_test(tc, registration_messages, 0, 6);
	tcase_add_loop_test(tc, descriptor_checks, 0, 4);
	tcase_add_test(tc, bigger_descriptor_accepted);
	suite_add_tcase(s, tc);

	tc = tcase_create("routing");
	tcase_add_test(tc, routing);
	tcase_add_test(tc, routing_against_reference);
	suite_add_tcase(s, tc);

	tc = tcase_create("contexts");
	tcase_add_test(tc, cmd_ctx_outcomes);
	tcase_add_test(tc, emit_without_ctx_consumes);
	tcase_add_test(tc, apply_through_registry);
	tcase_add_test(tc, event_ctx_and_send);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(plugin_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

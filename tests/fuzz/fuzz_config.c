/*
 * fuzz_config.c - the INI parser (common/config.c, around libinih) and what
 * each program reads from it: cqrs-cmdd's [cmd], the tracker's [tracker],
 * every [consumer.NAME], [broker] with its URL, and the /metrics address.
 *
 * The bytes are the whole file, handed over as a buffer that does not end
 * in a NUL, as cqrs_config_load_buffer() allows. CQRS_* variables are
 * cleared once, so an input means the same thing on every run.
 *
 * Properties besides the sanitizers': a refused file is CQRS_ECONFIG (or
 * CQRS_ENOMEM) with a message that names the file; a loaded file
 * answers every getter without crashing, and a getter's error is
 * CQRS_ECONFIG with a message.
 */
#include <string.h>

#include "../../cmd/cmdd.h"
#include "config.h"
#include "../../consumer/consumer.h"
#include "fuzz.h"
#include "httpd.h"
#include "../../tracker/tracker.h"

#define NAME "fuzz.conf"
#define MAX_SECTIONS 16

extern char **environ;

struct sections {
	const char *name[MAX_SECTIONS];
	size_t n;
};

static void
collect(const char *section, void *arg)
{
	struct sections *s = arg;

	if (s->n < MAX_SECTIONS)
		s->name[s->n++] = section;
}

static void
getter_rc(int rc, const struct cqrs_err *err)
{
	FUZZ_CHECK(rc == 0 || (rc == CQRS_ECONFIG && err->msg[0] != '\0'), "getter: %d %s", rc,
		   err->msg);
}

/* A program's loader: its own errors are about the values (CQRS_ECONFIG),
 * or CQRS_ENOMEM. */
static void
loader_rc(int rc, const struct cqrs_err *err)
{
	FUZZ_CHECK(rc == 0 || ((rc == CQRS_ECONFIG || rc == CQRS_ENOMEM) && err->msg[0] != '\0'),
		   "loader: %d %s", rc, err->msg);
}

/* The generic getters on keys the programs read, in any section. */
static void
getters(const struct config *cfg, const char *section)
{
	static const char *const choices[] = { "quorum", "classic", NULL };
	static const char *const known[] = { "plugins", "http", "url", NULL };
	struct cqrs_err err = { 0 };
	struct httpd_addr a;
	int64_t v;
	bool b;
	int idx;

	(void)cqrs_config_get(cfg, section, "plugins", NULL);
	(void)cqrs_config_has(cfg, section, "socket");
	getter_rc(cqrs_config_get_int(cfg, section, "pool_size", 8, 1, 256, &v, &err), &err);
	getter_rc(cqrs_config_get_int(cfg, section, "max_request_bytes", 1, INT64_MIN, INT64_MAX,
				      &v, &err), &err);
	getter_rc(cqrs_config_get_ms(cfg, section, "idle_timeout", 1, INT64_MIN, INT64_MAX, &v,
				     &err), &err);
	getter_rc(cqrs_config_get_bool(cfg, section, "verify", true, &b, &err), &err);
	getter_rc(cqrs_config_get_enum(cfg, section, "queue_type", "quorum", choices, &idx, &err),
		  &err);
	getter_rc(cqrs_config_check_keys(cfg, section, known, &err), &err);
	getter_rc(cqrs_httpd_config_load(cfg, section, &a, &err), &err);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	for (;;) {
		char name[256];
		char **e;

		for (e = environ; *e != NULL && strncmp(*e, "CQRS_", 5) != 0; e++)
			;
		if (*e == NULL)
			break;
		snprintf(name, sizeof(name), "%.*s", (int)strcspn(*e, "="), *e);
		unsetenv(name);
	}
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config *cfg = NULL;
	struct cqrs_err err = { 0 };
	struct sections s = { .n = 0 };
	struct cmdd_config cc;
	struct tracker_config tc;
	struct broker_config bc;
	int rc;

	rc = cqrs_config_load_buffer((const char *)data, size, NAME, &cfg, &err);
	if (rc != 0) {
		FUZZ_CHECK(cfg == NULL, "refused, yet a config");
		FUZZ_CHECK((rc == CQRS_ECONFIG || rc == CQRS_ENOMEM) &&
				   strncmp(err.msg, NAME ":", strlen(NAME ":")) == 0,
			   "refused with %d: %s", rc, err.msg);
		return 0;
	}
	FUZZ_CHECK(cfg != NULL, "loaded without a config");
	cqrs_config_each_section(cfg, NULL, collect, &s);
	for (size_t i = 0; i < s.n; i++) {
		getters(cfg, s.name[i]);
		if (strncmp(s.name[i], "consumer.", 9) == 0) {
			struct consumer_config oc;

			loader_rc(consumer_config_load(cfg, s.name[i] + 9, &oc, &err), &err);
			consumer_config_clear(&oc);
		}
	}
	/* cqrs-cmdd's contract: clear after a failure too */
	loader_rc(cmdd_config_load(cfg, &cc, &err), &err);
	cmdd_config_clear(&cc);
	loader_rc(tracker_config_load(cfg, &tc, &err), &err);
	tracker_config_clear(&tc);
	rc = cqrs_broker_config_load(cfg, &bc, &err);
	loader_rc(rc, &err);
	if (rc == 0)
		cqrs_broker_config_clear(&bc);
	cqrs_config_free(cfg);
	return 0;
}

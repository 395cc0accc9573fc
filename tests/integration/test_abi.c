/*
 * test_abi.c - what libcqrs.so exports, and a plugin that defines names the
 * library and libevent use (tests/plugins/clash) loaded into real daemons:
 * cqrs-cmdd answers its commands and everyone else's, cqrs-consumer runs its
 * handler, and the plugin's own functions are the ones it calls.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "consumer_fixture.h"
#include "daemon.h"
#include "fixture.h"
#include "proc.h"
#include "rabbit.h"

#define WAIT_MS 60000
#define CLASH_CONFIG "clash: its own config_get"

/* The names `nm -D --defined-only` lists for a shared object (malloc'd,
 * one per line). */
static char *
dynamic_symbols(const char *path)
{
	char cmd[1024], *out = NULL;
	int rc;

	snprintf(cmd, sizeof(cmd), "nm -D --defined-only '%s' | awk '{ print $NF }'", path);
	rc = fixture_run(cmd, &out);
	ck_assert_msg(rc == 0 && out != NULL, "%s: exit %d", cmd, rc);
	return out;
}

static bool
has_line(const char *text, const char *line)
{
	size_t n = strlen(line);

	for (const char *p = text; (p = strstr(p, line)) != NULL; p += n)
		if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0'))
			return true;
	return false;
}

START_TEST(libcqrs_exports_cqrs_names_only)
{
	char *syms = dynamic_symbols(CQRS_BUILDDIR "/lib/libcqrs.so");
	int n = 0;

	for (char *line = strtok(syms, "\n"); line != NULL; line = strtok(NULL, "\n")) {
		ck_assert_msg(strncmp(line, "cqrs_", 5) == 0,
			      "libcqrs.so exports \"%s\", which has no cqrs_ prefix", line);
		n++;
	}
	free(syms);
	/* the plugin API and the daemons' units are there */
	syms = dynamic_symbols(CQRS_BUILDDIR "/lib/libcqrs.so");
	ck_assert_msg(has_line(syms, "cqrs_emit") && has_line(syms, "cqrs_register_command") &&
			      has_line(syms, "cqrs_store_connect") && has_line(syms, "cqrs_config_get"),
		      "libcqrs.so lacks part of its API (%d names)", n);
	free(syms);
}
END_TEST

/* Otherwise the next test proves nothing: the plugin must really export the
 * clashing names, as one built without -fvisibility=hidden does. */
START_TEST(clash_plugin_exports_the_clashing_names)
{
	char *syms = dynamic_symbols(fixture_plugin("clash"));

	ck_assert_msg(has_line(syms, "store_connect") && has_line(syms, "config_get") &&
			      has_line(syms, "event_new"),
		      "clash.so does not export its clashing names:\n%s", syms);
	free(syms);
}
END_TEST

START_TEST(daemons_run_a_plugin_that_defines_library_names)
{
	char *conninfo = fixture_db_new(true);
	struct daemon *cmdd = daemon_new_cmdd(conninfo, "bank clash");
	struct proc *tracker;
	struct cons *c;
	char *section, *config, *answer, queue[200];
	PGconn *pg;

	pg = PQconnectdb(conninfo);
	ck_assert_int_eq(PQstatus(pg), CONNECTION_OK);
	fixture_exec(pg, "CREATE TABLE clash_seen (event_id uuid PRIMARY KEY, config text, store int)");

	/* cqrs-cmdd: the plugin's command runs its own functions; libevent's
	 * event_new still serves every new connection, bank's commands too */
	daemon_start(cmdd);
	answer = daemon_gc(daemon_call(cmdd, "{\"command\":\"clash.touch\",\"aggregate_id\":\"1\",\"data\":{}}"));
	DAEMON_ASSERT_OK(answer);
	for (int i = 0; i < 3; i++) {
		answer = daemon_gc(daemon_call(
			cmdd, daemon_fmt("{\"command\":\"account.open\",\"aggregate_id\":\"a%d\","
					 "\"data\":{\"owner\":\"o\"}}",
					 i)));
		DAEMON_ASSERT_OK(answer);
	}
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(*) FROM cqrs.events WHERE stream = 'clash-1' "
					       "AND data->>'config' = '" CLASH_CONFIG "' "
					       "AND (data->>'store')::int = 42"),
			 1);

	/* cqrs-consumer: the handler group of the same plugin */
	snprintf(queue, sizeof(queue), "%s", cons_unique_queue("clash"));
	ck_assert_int_ge(asprintf(&section, "[consumer.clash]\nplugins = %s\nqueue = %s\n",
				  fixture_plugin("clash"), queue),
			 0);
	config = cons_config(conninfo, daemon_socket(cmdd), section);
	c = cons_new("clash", config);
	cons_start(c);
	tracker = proc_new("cqrs-tracker");
	proc_set(tracker, "store", "conninfo", "%s", conninfo);
	proc_set(tracker, "broker", "url", "%s", fixture_broker_url());
	proc_set(tracker, "tracker", "poll_ms", "100");
	proc_start(tracker);
	answer = daemon_gc(daemon_call(cmdd, "{\"command\":\"clash.touch\",\"aggregate_id\":\"2\",\"data\":{}}"));
	DAEMON_ASSERT_OK(answer);
	ck_assert_int_eq(cons_wait_query(conninfo, "SELECT count(*) FROM clash_seen", 2, WAIT_MS), 2);
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(*) FROM clash_seen s JOIN cqrs.events e "
					       "ON e.id = s.event_id WHERE s.config = '" CLASH_CONFIG "' "
					       "AND s.store = 42 AND e.type = 'Touched'"),
			 2);

	ck_assert_int_eq(proc_stop(tracker), 0);
	ck_assert_int_eq(cons_stop(c), 0);
	ck_assert_int_eq(daemon_stop(cmdd), 0);
	proc_free(tracker);
	cons_free(c);
	daemon_free(cmdd);
	cons_delete_queues(queue);
	PQfinish(pg);
	free(section);
	free(config);
	free(conninfo);
	daemon_gc_run();
}
END_TEST

static Suite *
abi_suite(void)
{
	Suite *s = suite_create("abi");
	TCase *tc = tcase_create("abi");

	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, libcqrs_exports_cqrs_names_only);
	tcase_add_test(tc, clash_plugin_exports_the_clashing_names);
	tcase_add_test(tc, daemons_run_a_plugin_that_defines_library_names);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(abi_suite());
	int failed;

	(void)fixture_broker_url();	/* start the node once, here, if needed */
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

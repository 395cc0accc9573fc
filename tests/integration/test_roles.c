/*
 * test_roles.c - least privilege in PostgreSQL (sql/006_roles.sql): each
 * daemon runs on a login role that holds only its group role (cqrs_writer,
 * cqrs_tracker, cqrs_consumer, cqrs_reader), the whole path works so, and
 * no such role can INSERT, UPDATE, DELETE, TRUNCATE or ALTER cqrs.events.
 * Every test migrates databases of one cluster: the roles' creation must be
 * idempotent.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "consumer_fixture.h"
#include "daemon.h"
#include "fixture.h"
#include "proc.h"
#include "rabbit.h"

static const struct {
	const char *login, *group;
} roles[] = {
	{ "cqrs_test_cmdd", "cqrs_writer" },
	{ "cqrs_test_tracker", "cqrs_tracker" },
	{ "cqrs_test_consumer", "cqrs_consumer" },
	{ "cqrs_test_reader", "cqrs_reader" },
};
#define N_ROLES (sizeof(roles) / sizeof(roles[0]))

/* The login roles, each holding only its group role (the cluster's: made
 * once, kept). */
static void
make_login_roles(const char *conninfo)
{
	PGconn *pg = fixture_connect(conninfo);

	for (size_t i = 0; i < N_ROLES; i++)
		fixture_exec(pg, daemon_fmt(
			"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '%s') "
			"THEN CREATE ROLE %s LOGIN; END IF; END $$; GRANT %s TO %s",
			roles[i].login, roles[i].login, roles[i].group, roles[i].login));
	/* the projection's table is the consumer's own: it may create it */
	fixture_exec(pg, "GRANT CREATE ON SCHEMA public TO cqrs_test_consumer");
	PQfinish(pg);
}

static const char *
as(const char *conninfo, const char *login)
{
	return daemon_fmt("%s user=%s", conninfo, login);
}

/* The SQLSTATE of sql run as login ("" when it worked). */
static const char *
sqlstate_as(const char *conninfo, const char *login, const char *sql)
{
	PGconn *pg = fixture_connect(as(conninfo, login));
	PGresult *res = PQexec(pg, sql);
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *r = daemon_fmt("%s", state != NULL ? state : "");

	PQclear(res);
	PQfinish(pg);
	return r;
}

START_TEST(each_daemon_on_its_role_and_none_can_rewrite_history)
{
	const char *conninfo = daemon_gc(fixture_db_new(true));
	const char *other = daemon_gc(fixture_db_new(true));	/* a second database */
	struct daemon *cmdd;
	struct proc *tracker;
	struct cons *c;
	char *config, *out = NULL;
	const char *queue = cons_unique_queue("projections");
	static const char *const writes[] = {
		"INSERT INTO cqrs.events (stream, version, id, type, data, metadata) VALUES "
		"('account-x', 9, gen_random_uuid(), 'Forged', '{}', '{}')",
		"UPDATE cqrs.events SET data = '{\"balance\":1000000}'",
		"DELETE FROM cqrs.events",
		"TRUNCATE cqrs.events",
		"ALTER TABLE cqrs.events DISABLE TRIGGER ALL",
		"ALTER TABLE cqrs.events ADD COLUMN x int",
		"INSERT INTO cqrs.commands (id, stream, first_version, last_version) VALUES "
		"(gen_random_uuid(), 'account-x', 1, 1)",
	};

	(void)other;
	make_login_roles(conninfo);

	cmdd = daemon_new_cmdd(as(conninfo, "cqrs_test_cmdd"), "bank");
	daemon_set(cmdd, "cmd", "snapshot_every", "2");
	daemon_start(cmdd);
	tracker = proc_new("cqrs-tracker");
	proc_set(tracker, "store", "conninfo", "%s", as(conninfo, "cqrs_test_tracker"));
	proc_set(tracker, "broker", "url", "%s", fixture_broker_url());
	proc_set(tracker, "tracker", "poll_ms", "100");
	proc_start(tracker);
	config = cons_config(as(conninfo, "cqrs_test_consumer"), daemon_socket(cmdd),
			     daemon_fmt("[consumer.projections]\nplugins = %s\nqueue = %s\n",
					fixture_plugin("bank"), queue));
	c = cons_new("projections", config);
	free(config);
	cons_start(c);

	DAEMON_ASSERT_OK(daemon_gc(daemon_call(cmdd, "{\"command\":\"account.open\","
		"\"aggregate_id\":\"r1\",\"data\":{\"owner\":\"r\"}}")));
	for (int i = 0; i < 5; i++)
		DAEMON_ASSERT_OK(daemon_gc(daemon_call(cmdd, "{\"command\":\"account.deposit\","
			"\"aggregate_id\":\"r1\",\"data\":{\"amount\":10}}")));
	/* snapshots were written on the writer's role */
	ck_assert_int_ge(cons_query_int(conninfo, "SELECT count(*) FROM cqrs.snapshots"), 1);
	/* published on the tracker's, projected on the consumer's */
	ck_assert_int_eq(cons_wait_query(conninfo, "SELECT balance FROM bank_balances "
					 "WHERE account_id = 'r1'", 50, 60000), 50);
	/* read on the reader's */
	{
		char *dir = fixture_tmpdir();
		const char *path = daemon_fmt("%s/reader.conf", dir);
		FILE *f = fopen(path, "w");
		int rc;

		ck_assert_ptr_nonnull(f);
		fprintf(f, "[store]\nconninfo = %s\n[broker]\nurl = %s\n",
			as(conninfo, "cqrs_test_reader"), fixture_broker_url());
		fclose(f);
		rc = fixture_run(daemon_fmt("%s -c %s status", fixture_bin("cqrsctl"), path), &out);
		ck_assert_msg(rc == 0, "cqrsctl status as cqrs_reader: exit %d: %s", rc, out);
		ck_assert_msg(strstr(out, "lag: 0 events") != NULL && strstr(out, "(null)") == NULL,
			      "%s", out);
		free(out);
		unlink(path);
		rmdir(dir);
		free(dir);
	}

	/* and none of them can change what happened */
	for (size_t i = 0; i < N_ROLES; i++)
		for (size_t w = 0; w < sizeof(writes) / sizeof(writes[0]); w++) {
			const char *state = sqlstate_as(conninfo, roles[i].login, writes[w]);
			ck_assert_msg(strcmp(state, "42501") == 0, "%s (%s): \"%s\" gave SQLSTATE "
				      "\"%s\", not 42501 (insufficient privilege)", roles[i].login,
				      roles[i].group, writes[w], state);
		}
	/* nor append past the commands' rules, except through cqrs.append() */
	for (size_t i = 1; i < N_ROLES; i++)
		ck_assert_str_eq(sqlstate_as(conninfo, roles[i].login,
					     "SELECT * FROM cqrs.append('account-x', -1, NULL, "
					     "'[]'::jsonb)"), "42501");
	/* the batch append likewise: the writer's only */
	for (size_t i = 1; i < N_ROLES; i++)
		ck_assert_str_eq(sqlstate_as(conninfo, roles[i].login,
					     "SELECT * FROM cqrs.append_batch('[{\"stream\":\"account-x\","
					     "\"events\":[]}]')"), "42501");
	ck_assert_str_eq(sqlstate_as(conninfo, roles[0].login, "SELECT * FROM cqrs.append_batch('[]')"),
			 "");
	ck_assert_int_eq(cons_query_int(conninfo, "SELECT count(*) FROM cqrs.events"), 6);

	ck_assert_int_eq(cons_stop(c), 0);
	cons_free(c);
	ck_assert_int_eq(proc_stop(tracker), 0);
	proc_free(tracker);
	ck_assert_int_eq(daemon_stop(cmdd), 0);
	daemon_free(cmdd);
	cons_delete_queues(queue);
}
END_TEST

static void
teardown(void)
{
	daemon_gc_run();
}

static Suite *
roles_suite(void)
{
	Suite *s = suite_create("roles");
	TCase *tc = tcase_create("roles");

	tcase_add_checked_fixture(tc, NULL, teardown);
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, each_daemon_on_its_role_and_none_can_rewrite_history);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(roles_suite());
	int failed;

	(void)fixture_broker_url();
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

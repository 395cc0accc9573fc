/*
 * test_consumer_units.c - cqrs-consumer's units without servers: its
 * configuration, the handlers it picks, routing keys, and the commands of
 * process managers (name-based ids, metadata).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "../../consumer/consumer.h"
#include "config.h"
#include "envelope.h"
#include "fixture.h"
#include "uuid.h"

static struct config *
conf(const char *text)
{
	struct config *cfg = NULL;
	struct cqrs_err err = { 0 };

	if (cqrs_config_load_string(text, "test.conf", &cfg, &err) < 0)
		ck_abort_msg("config: %s", err.msg);
	return cfg;
}

static char *
base_text(const char *section)
{
	char *t;

	ck_assert_int_ge(asprintf(&t, "[store]\nconninfo = dbname=x\n[broker]\nurl = amqp://u:p@h/%%2f\n%s",
				  section),
			 0);
	return t;
}

static void
hex(const uint8_t *h, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", h[i]);
}

START_TEST(sha1_vectors)
{
	static const struct {
		const char *in, *out;
	} v[] = {
		{ "", "da39a3ee5e6b4b0d3255bfef95601890afd80709" },
		{ "abc", "a9993e364706816aba3e25717850c26c9cd0d89d" },
		{ "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
		  "84983e441c3bd26ebaae4aa1f95129e5e54670f1" },
	};
	uint8_t h[20];
	char s[41];

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		send_sha1(v[i].in, strlen(v[i].in), h);
		hex(h, 20, s);
		ck_assert_str_eq(s, v[i].out);
	}
	/* a million 'a', across many blocks */
	{
		char *a = malloc(1000000);

		memset(a, 'a', 1000000);
		send_sha1(a, 1000000, h);
		hex(h, 20, s);
		ck_assert_str_eq(s, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
		free(a);
	}
}
END_TEST

START_TEST(command_ids_are_name_based)
{
	char a[37], b[37], c[37], d[37], e[37];
	const char *ev = "01a216cc-4fc4-7428-93c8-6e527a142f8f";

	send_command_id(ev, "withdraw", a);
	send_command_id(ev, "withdraw", b);
	send_command_id(ev, "deposit", c);
	send_command_id("01a216cc-4fc4-7428-93c8-6e527a142f90", "withdraw", d);
	send_command_id(ev, NULL, e);
	ck_assert_str_eq(a, b);
	ck_assert_str_ne(a, c);
	ck_assert_str_ne(a, d);
	ck_assert_str_ne(a, e);
	ck_assert(cqrs_uuid_valid(a));
	ck_assert_int_eq(a[14], '5');	/* version 5 */
	ck_assert(strchr("89ab", a[19]) != NULL);	/* RFC variant */
	/* the separator keeps ("x", "yz") apart from ("xy", "z") */
	send_command_id("x", "yz", a);
	send_command_id("xy", "z", b);
	ck_assert_str_ne(a, b);
}
END_TEST

START_TEST(request_carries_cause)
{
	struct json_object *meta = json_object_new_object(), *data = json_object_new_object();
	struct json_object *req, *m, *v;
	struct cqrs_event *cause;
	char id[37], *line;

	json_object_object_add(meta, "correlation_id", json_object_new_string("corr-1"));
	json_object_object_add(data, "from", json_object_new_string("a"));
	cause = cqrs_event_new("01a216cc-4fc4-7428-93c8-6e527a142f8f", "transfer-t1", 1, 7,
			       "TransferStarted", data, meta, "2026-11-26T05:20:49.123456Z");
	json_object_put(meta);
	json_object_put(data);
	ck_assert_ptr_nonnull(cause);
	line = send_request(cause, "withdraw", "account.withdraw", "a",
			    json_object_new_object());
	ck_assert_ptr_nonnull(line);
	ck_assert_ptr_null(strchr(line, '\n'));
	req = json_tokener_parse(line);
	ck_assert_ptr_nonnull(req);
	send_command_id(cause->id, "withdraw", id);
	ck_assert(json_object_object_get_ex(req, "id", &v));
	ck_assert_str_eq(json_object_get_string(v), id);
	ck_assert(json_object_object_get_ex(req, "command", &v));
	ck_assert_str_eq(json_object_get_string(v), "account.withdraw");
	ck_assert(json_object_object_get_ex(req, "aggregate_id", &v));
	ck_assert_str_eq(json_object_get_string(v), "a");
	ck_assert(json_object_object_get_ex(req, "metadata", &m));
	ck_assert(json_object_object_get_ex(m, "correlation_id", &v));
	ck_assert_str_eq(json_object_get_string(v), "corr-1");
	ck_assert(json_object_object_get_ex(m, "causation_id", &v));
	ck_assert_str_eq(json_object_get_string(v), cause->id);
	ck_assert(json_object_object_get_ex(m, "cause_stream", &v));
	ck_assert_str_eq(json_object_get_string(v), "transfer-t1");
	ck_assert(json_object_object_get_ex(m, "cause_type", &v));
	ck_assert_str_eq(json_object_get_string(v), "TransferStarted");
	json_object_put(req);
	free(line);

	/* no correlation id: the event's id stands in */
	json_object_object_del(cause->metadata, "correlation_id");
	line = send_request(cause, "k", "x.y", "1", json_object_new_object());
	req = json_tokener_parse(line);
	ck_assert(json_object_object_get_ex(req, "metadata", &m));
	ck_assert(json_object_object_get_ex(m, "correlation_id", &v));
	ck_assert_str_eq(json_object_get_string(v), cause->id);
	json_object_put(req);
	free(line);
	cqrs_event_free(cause);
}
END_TEST

START_TEST(config_defaults)
{
	char *text = base_text("[consumer.projections]\nplugins = x.so\n");
	struct config *cfg = conf(text);
	struct consumer_config c;
	struct cqrs_err err = { 0 };

	ck_assert_int_eq(consumer_config_load(cfg, "projections", &c, &err), 0);
	ck_assert_str_eq(c.queue, "cqrs.projections");
	ck_assert_str_eq(c.dead_queue, "cqrs.projections.dead");
	ck_assert_uint_eq(c.n_groups, 1);
	ck_assert_str_eq(c.groups[0], "projections");
	ck_assert(c.quorum);
	ck_assert_int_eq(c.delivery_limit, 5);
	ck_assert_int_eq(c.prefetch, 200);
	ck_assert_int_eq(c.batch_size, 100);
	ck_assert(c.from_beginning);
	ck_assert_int_eq(c.retry_limit, 10);
	ck_assert_int_eq(c.retry_backoff_ms, 500);
	ck_assert_int_eq(c.retry_backoff_max_ms, 30000);
	ck_assert_str_eq(c.cmd_socket, "/run/cqrs/cmd.sock");
	consumer_config_clear(&c);
	cqrs_config_free(cfg);
	free(text);
}
END_TEST

START_TEST(config_values_and_environment)
{
	char *text = base_text("[cmd]\nsocket = /tmp/s\n[consumer.pm]\nplugins = x.so\n"
			       "groups = transfers, audit\nqueue = my.q\nqueue_type = classic\n"
			       "delivery_limit = 0\nprefetch = 10\nbatch_size = 5\nfrom = now\n"
			       "retry_limit = 3\nretry_backoff = 2s\nretry_backoff_max = 1s\n");
	struct config *cfg;
	struct consumer_config c;
	struct cqrs_err err = { 0 };

	setenv("CQRS_CONSUMER_PM_PREFETCH", "77", 1);
	cfg = conf(text);
	unsetenv("CQRS_CONSUMER_PM_PREFETCH");
	ck_assert_int_eq(consumer_config_load(cfg, "pm", &c, &err), 0);
	ck_assert_uint_eq(c.n_groups, 2);
	ck_assert_str_eq(c.groups[0], "transfers");
	ck_assert_str_eq(c.groups[1], "audit");
	ck_assert_str_eq(c.queue, "my.q");
	ck_assert_str_eq(c.dead_queue, "my.q.dead");
	ck_assert(!c.quorum);
	ck_assert_int_eq(c.delivery_limit, 0);
	ck_assert_int_eq(c.prefetch, 77);
	ck_assert_int_eq(c.batch_size, 5);
	ck_assert(!c.from_beginning);
	ck_assert_int_eq(c.retry_limit, 3);
	ck_assert_int_eq(c.retry_backoff_ms, 2000);
	ck_assert_int_eq(c.retry_backoff_max_ms, 2000);	/* never below the first */
	ck_assert_str_eq(c.cmd_socket, "/tmp/s");
	consumer_config_clear(&c);
	cqrs_config_free(cfg);
	free(text);
}
END_TEST

START_TEST(config_errors_name_the_key)
{
	static const struct {
		const char *name, *section, *needle;
	} cases[] = {
		{ "p", "[consumer.p]\nplugins = x.so\nprefetch = 0\n", "prefetch" },
		{ "p", "[consumer.p]\nplugins = x.so\nprefetch = many\n", "prefetch" },
		{ "p", "[consumer.p]\nplugins = x.so\nqueue_type = stream\n", "queue_type" },
		{ "p", "[consumer.p]\nplugins = x.so\nfrom = then\n", "from" },
		{ "p", "[consumer.p]\nplugins = x.so\nbatch = 3\n", "batch" },
		{ "p", "[consumer.p]\nplugins = x.so\ngroups = a/b\n", "groups" },
		{ "p", "[consumer.p]\n", "plugins" },
		{ "bad name", "[consumer.p]\nplugins = x.so\n", "consumer name" },
		{ "", "[consumer.p]\nplugins = x.so\n", "consumer name" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *text = base_text(cases[i].section);
		struct config *cfg = conf(text);
		struct consumer_config c;
		struct cqrs_err err = { 0 };

		ck_assert_msg(consumer_config_load(cfg, cases[i].name, &c, &err) < 0, "case %zu", i);
		ck_assert_msg(strstr(err.msg, cases[i].needle) != NULL, "case %zu: %s", i, err.msg);
		cqrs_config_free(cfg);
		free(text);
	}
	/* no broker: refused too */
	{
		struct config *cfg = conf("[store]\nconninfo = x\n[consumer.p]\nplugins = x.so\n");
		struct consumer_config c;
		struct cqrs_err err = { 0 };

		unsetenv("CQRS_BROKER_URL");
		ck_assert_int_lt(consumer_config_load(cfg, "p", &c, &err), 0);
		ck_assert_msg(strstr(err.msg, "broker.url") != NULL, "%s", err.msg);
		cqrs_config_free(cfg);
	}
}
END_TEST

/* The handlers of the configured groups, their bindings, and routing. */
START_TEST(handlers_and_routing)
{
	char *section, *text;
	struct config *cfg;
	struct consumer_config cc;
	struct consumer *c = NULL;
	struct cqrs_err err = { 0 };
	struct cqrs_event *ev;
	char key[CONSUMER_KEY_MAX];

	ck_assert_int_ge(asprintf(&section, "[consumer.transfers]\nplugins = %s\n",
				  fixture_plugin("bank")),
			 0);
	text = base_text(section);
	cfg = conf(text);
	ck_assert_int_eq(consumer_config_load(cfg, "transfers", &cc, &err), 0);
	ck_assert_msg(consumer_new(&cc, &c, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(c->n_handlers, 2);
	ck_assert_uint_eq(c->n_bindings, 2);
	ck_assert_str_eq(c->bindings[0], "transfer.TransferStarted");
	ck_assert_str_eq(c->bindings[1], "account.MoneyWithdrawn");
	ck_assert(consumer_wants(c, "account.MoneyWithdrawn"));
	ck_assert(!consumer_wants(c, "account.MoneyDeposited"));
	ev = cqrs_event_new("01a216cc-4fc4-7428-93c8-6e527a142f8f", "account-x-y", 2, 3,
			    "MoneyWithdrawn", NULL, NULL, "2026-11-26T05:20:49Z");
	consumer_routing_key(ev, key, sizeof(key));
	ck_assert_str_eq(key, "account.MoneyWithdrawn");
	cqrs_event_free(ev);
	consumer_free(c);
	consumer_config_clear(&cc);
	cqrs_config_free(cfg);
	free(text);
	free(section);

	/* a group no plugin registered is refused */
	ck_assert_int_ge(asprintf(&section, "[consumer.nothing]\nplugins = %s\n",
				  fixture_plugin("bank")),
			 0);
	text = base_text(section);
	cfg = conf(text);
	ck_assert_int_eq(consumer_config_load(cfg, "nothing", &cc, &err), 0);
	ck_assert_int_eq(consumer_new(&cc, &c, &err), CQRS_ECONFIG);
	ck_assert_msg(strstr(err.msg, "no event handler of group \"nothing\"") != NULL, "%s",
		      err.msg);
	consumer_config_clear(&cc);
	cqrs_config_free(cfg);
	free(text);
	free(section);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("consumer_units");
	TCase *tc = tcase_create("units");

	tcase_add_test(tc, sha1_vectors);
	tcase_add_test(tc, command_ids_are_name_based);
	tcase_add_test(tc, request_carries_cause);
	tcase_add_test(tc, config_defaults);
	tcase_add_test(tc, config_values_and_environment);
	tcase_add_test(tc, config_errors_name_the_key);
	tcase_add_test(tc, handlers_and_routing);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

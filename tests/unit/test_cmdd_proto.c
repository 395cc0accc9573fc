/*
 * test_cmdd_proto.c - the texts cqrs-cmdd writes without json-c: the ok
 * answer (proto_answer_ok()), a prepared append's events and a batch's one
 * parameter. Each must be the JSON json-c would write, byte for byte where
 * there is a json-c twin, and hold what it names.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "../../cmd/proto.h"
#include "envelope.h"
#include "store.h"

static char *
json_c_answer(const char *id, const char *stream, const struct store_append_result *r)
{
	struct json_object *o = cqrs_store_append_result_json(id, stream, r);
	const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
						       JSON_C_TO_STRING_NOSLASHESCAPE);
	char *line = malloc(strlen(s) + 2);

	sprintf(line, "%s\n", s);
	json_object_put(o);
	return line;
}

static void
same_answer(const char *id, const char *stream, const struct store_append_result *r)
{
	char *want = json_c_answer(id, stream, r);
	char *got = proto_answer_ok(id, stream, r);

	ck_assert_ptr_nonnull(got);
	ck_assert_str_eq(got, want);
	free(want);
	free(got);
}

START_TEST(ok_answer_as_json_c_writes_it)
{
	struct store_written evs[3] = {
		{ "0190a9f4-0000-7000-8000-000000000001", "MoneyDeposited", 4, 1234 },
		{ "0190a9f4-0000-7000-8000-000000000002", "a.b_c-d:e", 5, 9007199254740993LL },
		{ "0190a9f4-0000-7000-8000-000000000003", "X", 2147483647, 1 },
	};
	struct store_append_result r = { .version = 5, .n = 2, .events = evs };

	same_answer("4f1c0000-0000-4000-8000-000000000000", "account-42", &r);
	r.duplicate = true;
	same_answer("4f1c0000-0000-4000-8000-000000000000", "account-42", &r);
	r.n = 3;
	r.version = 2147483647;
	same_answer(NULL, "account-a.b:c@d_e-f", &r);
	/* no events; a stream the store allows but the daemon never makes */
	r.n = 0;
	r.duplicate = false;
	r.version = 0;
	same_answer("4f1c0000-0000-4000-8000-000000000000", "we\"ird\\stré\x01am", &r);
}
END_TEST

START_TEST(json_quote_escapes_what_json_needs)
{
	char out[64];
	size_t n = cqrs_json_quote(out, "a\"b\\c\n\x1f\xc3\xa9/");

	ck_assert_uint_eq(n, cqrs_json_quote(NULL, "a\"b\\c\n\x1f\xc3\xa9/"));
	out[n] = '\0';
	ck_assert_str_eq(out, "\"a\\\"b\\\\c\\u000a\\u001f\xc3\xa9/\"");
	ck_assert_uint_eq(cqrs_json_quote(out, ""), 2);
}
END_TEST

/* The events' text: one JSON array, each event's data and metadata as given. */
START_TEST(prepared_events_are_one_array)
{
	struct store_event_in evs[3] = {
		{ .type = "A", .data = "{\"k\":1,\"s\":\"x/y\"}", .metadata = "{\"m\":true}" },
		{ .id = "0190a9f4-0000-7000-8000-0000000000aa", .type = "B", .data = "{}" },
		{ .type = "C", .data = "{\"n\":[1,2,3]}" },
	};
	struct store_append_req req;
	struct cqrs_err err = { 0 };
	struct json_object *arr, *e;

	ck_assert_int_eq(cqrs_store_append_prepare(&req, "s-1", STORE_ANY, evs, 0, NULL, NULL, &err), 0);
	ck_assert_str_eq(req.events_json, "[]");
	cqrs_store_append_req_clear(&req);

	ck_assert_msg(cqrs_store_append_prepare(&req, "s-1", 3, evs, 3, NULL, "c.d", &err) == 0,
		      "%s", err.msg);
	arr = json_tokener_parse(req.events_json);
	ck_assert_ptr_nonnull(arr);
	ck_assert_int_eq(json_object_array_length(arr), 3);
	e = json_object_array_get_idx(arr, 0);
	ck_assert_str_eq(json_object_get_string(json_object_object_get(e, "type")), "A");
	ck_assert_str_eq(json_object_to_json_string_ext(json_object_object_get(e, "data"),
							JSON_C_TO_STRING_PLAIN), "{\"k\":1,\"s\":\"x\\/y\"}");
	ck_assert(json_object_get_boolean(json_object_object_get(json_object_object_get(e, "metadata"), "m")));
	ck_assert_int_eq(json_object_get_string_len(json_object_object_get(e, "id")), 36);
	e = json_object_array_get_idx(arr, 1);
	ck_assert_str_eq(json_object_get_string(json_object_object_get(e, "id")),
			 "0190a9f4-0000-7000-8000-0000000000aa");
	ck_assert_str_eq(json_object_to_json_string(json_object_object_get(e, "metadata")), "{ }");
	json_object_put(arr);
	ck_assert_str_eq(req.values[0], "s-1");
	ck_assert_str_eq(req.values[1], "3");
	ck_assert_ptr_null(req.values[2]);
	ck_assert_str_eq(req.values[4], "c.d");
	cqrs_store_append_req_clear(&req);
}
END_TEST

/* data and metadata of one event: CQRS_EVENT_MAX_BYTES together, not a byte more */
START_TEST(event_size_limit_exact)
{
	/* {"p":"…"} and {"q":""}: 8 + pad and 8 bytes */
	size_t pad = CQRS_EVENT_MAX_BYTES - 8 - 8;
	char *data = malloc(pad + 16);
	struct store_event_in ev = { .type = "Big", .metadata = "{\"q\":\"\"}" };
	struct store_append_req req;
	struct cqrs_err err = { 0 };

	sprintf(data, "{\"p\":\"%0*d\"}", (int)pad, 0);
	ev.data = data;
	ck_assert_msg(cqrs_store_append_prepare(&req, "s-1", STORE_ANY, &ev, 1, NULL, NULL, &err) == 0,
		      "%s", err.msg);
	cqrs_store_append_req_clear(&req);
	sprintf(data, "{\"p\":\"%0*d\"}", (int)pad + 1, 0);
	ck_assert_int_eq(cqrs_store_append_prepare(&req, "s-1", STORE_ANY, &ev, 1, NULL, NULL, &err),
			 CQRS_EINVALID);
	ck_assert_msg(strstr(err.msg, "over the limit") != NULL, "%s", err.msg);
	free(data);
}
END_TEST

/* A batch's parameter: the commands in order, each with its fields. */
START_TEST(batch_json_holds_each_command)
{
	struct store_event_in ev = { .type = "A", .data = "{\"k\":1}" };
	struct store_append_req a, b;
	const struct store_append_req *reqs[2] = { &a, &b };
	struct cqrs_err err = { 0 };
	struct json_object *arr, *c;
	size_t len;
	char *json;

	ck_assert_int_eq(cqrs_store_append_prepare(&a, "acc-\"1\\", 0, &ev, 1,
						   "0190a9f4-0000-7000-8000-0000000000bb", "x.y", &err), 0);
	ck_assert_int_eq(cqrs_store_append_prepare(&b, "acc-2", STORE_ANY, &ev, 0, NULL, NULL, &err), 0);
	json = cqrs_store_batch_json(reqs, 2, &len);
	ck_assert_ptr_nonnull(json);
	ck_assert_uint_eq(len, strlen(json));
	arr = json_tokener_parse(json);
	ck_assert_msg(arr != NULL && json_object_array_length(arr) == 2, "%s", json);
	c = json_object_array_get_idx(arr, 0);
	ck_assert_str_eq(json_object_get_string(json_object_object_get(c, "stream")), "acc-\"1\\");
	ck_assert_int_eq(json_object_get_int(json_object_object_get(c, "expected")), 0);
	ck_assert_str_eq(json_object_get_string(json_object_object_get(c, "id")),
			 "0190a9f4-0000-7000-8000-0000000000bb");
	ck_assert_str_eq(json_object_get_string(json_object_object_get(c, "command")), "x.y");
	ck_assert_int_eq(json_object_array_length(json_object_object_get(c, "events")), 1);
	c = json_object_array_get_idx(arr, 1);
	ck_assert_int_eq(json_object_get_int(json_object_object_get(c, "expected")), -1);
	ck_assert(!json_object_object_get_ex(c, "id", NULL));
	ck_assert(!json_object_object_get_ex(c, "command", NULL));
	ck_assert_int_eq(json_object_array_length(json_object_object_get(c, "events")), 0);
	json_object_put(arr);
	free(json);
	cqrs_store_append_req_clear(&a);
	cqrs_store_append_req_clear(&b);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("cmdd_proto");
	TCase *tc = tcase_create("texts");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, ok_answer_as_json_c_writes_it);
	tcase_add_test(tc, json_quote_escapes_what_json_needs);
	tcase_add_test(tc, prepared_events_are_one_array);
	tcase_add_test(tc, event_size_limit_exact);
	tcase_add_test(tc, batch_json_holds_each_command);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

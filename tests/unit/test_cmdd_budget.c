/*
 * test_cmdd_budget.c - what a parsed request is counted at against the byte
 * budgets (proto_request_bytes()), checked against what the allocator
 * really hands out for it.
 */
#include <check.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "../../cmd/proto.h"
#include "store.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#ifdef UNDER_ASAN
/* <sanitizer/allocator_interface.h>, which gcc does not install */
size_t __sanitizer_get_current_allocated_bytes(void);
/* ASan's allocator counts the bytes asked for; mallinfo2 sees nothing */
static size_t
heap_in_use(void)
{
	return __sanitizer_get_current_allocated_bytes();
}
#else
static size_t
heap_in_use(void)
{
	struct mallinfo2 m = mallinfo2();

	return m.uordblks + m.hblkhd;	/* big blocks are mmap()ed apart */
}
#endif

/*
 * glibc counts the chunks its per-thread cache keeps as in use: what the
 * parser frees on its way (its own buffers) shows as heap that the request
 * does not hold. A few KiB at most; ASan's count has no such cache.
 */
#define SLACK (16 * 1024)

/* Buffer of a request whose data is made by fill(buf, room). */
static char *
make_request(size_t room, void (*fill)(char *p, size_t room))
{
	static const char head[] = "{\"command\":\"account.deposit\",\"aggregate_id\":\"a1\","
				   "\"data\":{\"v\":";
	char *line = malloc(room + sizeof(head) + 3);

	ck_assert_ptr_nonnull(line);
	memcpy(line, head, sizeof(head) - 1);
	fill(line + sizeof(head) - 1, room);
	strcat(line, "}}");
	return line;
}

static void
many_keys(char *p, size_t room)
{
	size_t n = 0;

	n += (size_t)sprintf(p + n, "{");
	for (int i = 0; n + 32 < room; i++)
		n += (size_t)sprintf(p + n, "%s\"k%d\":%d", i ? "," : "", i, i);
	sprintf(p + n, "}");
}

static void
long_string(char *p, size_t room)
{
	p[0] = '"';
	memset(p + 1, 'x', room - 3);
	p[room - 2] = '"';
	p[room - 1] = '\0';
}

static void
int_arrays(char *p, size_t room)
{
	size_t n = 0;

	n += (size_t)sprintf(p + n, "[");
	for (int i = 0; n + 64 < room; i++)
		n += (size_t)sprintf(p + n, "%s[%d,%d,%d]", i ? "," : "", i, i + 1, i + 2);
	sprintf(p + n, "]");
}

static void
doubles(char *p, size_t room)
{
	size_t n = 0;

	n += (size_t)sprintf(p + n, "[");
	for (int i = 0; n + 32 < room; i++)
		n += (size_t)sprintf(p + n, "%s%d.25", i ? "," : "", i);
	sprintf(p + n, "]");
}

static void
short_strings(char *p, size_t room)
{
	size_t n = 0;

	n += (size_t)sprintf(p + n, "{\"tags\":[");
	for (int i = 0; n + 32 < room; i++)
		n += (size_t)sprintf(p + n, "%s\"t%d\",null,true", i ? "," : "", i);
	sprintf(p + n, "]}");
}

static void
nested_objects(char *p, size_t room)
{
	size_t n = 0;

	n += (size_t)sprintf(p + n, "[");
	for (int i = 0; n + 64 < room; i++)
		n += (size_t)sprintf(p + n, "%s{\"a\":{\"b\":{}}}", i ? "," : "");
	sprintf(p + n, "]");
}

static void (*const shapes[])(char *, size_t) = {
	many_keys, long_string, int_arrays, doubles, short_strings, nested_objects,
};
static const char *const shape_names[] = {
	"many_keys", "long_string", "int_arrays", "doubles", "short_strings", "nested_objects",
};

/*
 * For each shape of request, 256 KiB of text: the count is never below what
 * the heap grew by (a budget that undercounts is no bound), and not so far
 * above that the budget would turn honest clients away.
 */
START_TEST(request_counted_at_what_it_holds)
{
	int i = _i;
	char *line = make_request(256 * 1024, shapes[i]);
	struct request req = { 0 };
	const char *code = NULL;
	char msg[256];
	bool close_after = false;
	size_t before, after, counted;
	int rc;

	before = heap_in_use();
	rc = proto_parse(line, strlen(line), &req, &code, msg, sizeof(msg), &close_after);
	after = heap_in_use();
	ck_assert_msg(rc == 0, "%s: %s", shape_names[i], msg);
	counted = proto_request_bytes(&req);
	fprintf(stderr, "%-15s text %zu, heap +%zu, counted %zu (%.2f)\n", shape_names[i],
		strlen(line), after - before, counted, (double)counted / (double)(after - before));
	ck_assert_msg(counted + SLACK >= after - before, "%s: counted %zu, the heap grew by %zu",
		      shape_names[i], counted, after - before);
	ck_assert_msg(counted <= (after - before) * 2, "%s: counted %zu, the heap grew by %zu only",
		      shape_names[i], counted, after - before);
	/* and what is reserved before parsing covers it */
	ck_assert_msg(proto_cost_bound(line, strlen(line)) >= counted,
		      "%s: bound %zu before parsing, %zu held after", shape_names[i],
		      proto_cost_bound(line, strlen(line)), counted);
	fprintf(stderr, "%-15s bound %zu (%.2f)\n", shape_names[i], proto_cost_bound(line, strlen(line)),
		(double)proto_cost_bound(line, strlen(line)) / (double)counted);
	request_clear(&req);
	free(line);
}
END_TEST

/* The text is no measure: a few bytes of text can hold many times more. */
START_TEST(small_text_can_hold_much_more)
{
	char *line = make_request(64 * 1024, many_keys);
	struct request req = { 0 };
	const char *code = NULL;
	char msg[256];
	bool close_after = false;

	ck_assert_int_eq(proto_parse(line, strlen(line), &req, &code, msg, sizeof(msg), &close_after), 0);
	ck_assert_msg(proto_request_bytes(&req) > 5 * strlen(line), "%zu for %zu bytes of text",
		      proto_request_bytes(&req), strlen(line));
	request_clear(&req);
	free(line);
}
END_TEST

/*
 * Preparing an append leaves nothing on the caller's objects: json-c keeps
 * the text of json_object_to_json_string() in the object asked, for its
 * life, and cqrs-cmdd keeps a command's metadata object until its answer is
 * sent (one copy of the metadata per command, outside the byte budgets).
 */
START_TEST(append_prepare_keeps_no_text_on_the_events)
{
	const size_t pad = 256 * 1024;
	char *text = malloc(pad + 1);
	struct json_object *data, *meta;
	struct store_event_in ev = { .type = "Padded" };
	struct store_append_req req;
	struct cqrs_err err = { 0 };
	size_t before, after;

	ck_assert_ptr_nonnull(text);
	memset(text, 'x', pad);
	text[pad] = '\0';
	data = json_object_new_object();
	json_object_object_add(data, "amount", json_object_new_int(1));
	meta = json_object_new_object();
	json_object_object_add(meta, "pad", json_object_new_string(text));
	free(text);
	ev.data_obj = data;
	ev.metadata_obj = meta;
	before = heap_in_use();
	ck_assert_msg(cqrs_store_append_prepare(&req, "account-1", STORE_ANY, &ev, 1, NULL, NULL,
						&err) == 0, "%s", err.msg);
	ck_assert_uint_gt(strlen(req.events_json), pad);
	cqrs_store_append_req_clear(&req);
	after = heap_in_use();
	ck_assert_msg(after < before + SLACK, "the objects hold %zu bytes more after the append "
		      "was prepared and cleared", after - before);
	json_object_put(data);
	json_object_put(meta);
}
END_TEST

/*
 * A command's metadata object (cmd/exec.c, build_event_meta()): the
 * request's keys and values, and three of its own. What it is counted at is
 * what it adds to the heap, the values it shares with the request left out.
 */
START_TEST(metadata_copy_counted_at_what_it_adds)
{
	size_t room = 64 * 1024, n = 0;
	char *line = malloc(room + 256);
	struct request req = { 0 };
	struct json_object *m;
	const char *code = NULL;
	char msg[256];
	bool close_after = false;
	size_t before, after, counted;

	ck_assert_ptr_nonnull(line);
	n += (size_t)sprintf(line, "{\"command\":\"account.deposit\",\"aggregate_id\":\"a1\","
			     "\"data\":{\"amount\":1},\"metadata\":{");
	for (int i = 0; n + 64 < room; i++)
		n += (size_t)sprintf(line + n, "%s\"key%d\":\"value %d\"", i ? "," : "", i, i);
	sprintf(line + n, "}}");
	ck_assert_int_eq(proto_parse(line, strlen(line), &req, &code, msg, sizeof(msg),
				     &close_after), 0);
	before = heap_in_use();
	m = json_object_new_object();
	json_object_object_foreach(req.metadata, k, v)
		json_object_object_add(m, k, json_object_get(v));
	json_object_object_add(m, "correlation_id",
			       json_object_new_string("0190a9f4-0000-7000-8000-000000000001"));
	json_object_object_add(m, "causation_id",
			       json_object_new_string("0190a9f4-0000-7000-8000-000000000001"));
	json_object_object_add(m, "command", json_object_new_string("account.deposit"));
	after = heap_in_use();
	counted = proto_json_object_bytes(m, req.metadata);
	fprintf(stderr, "metadata copy: heap +%zu, counted %zu\n", after - before, counted);
	ck_assert_msg(counted + SLACK >= after - before, "counted %zu, the heap grew by %zu",
		      counted, after - before);
	ck_assert_msg(counted <= (after - before) * 2, "counted %zu, the heap grew by %zu only",
		      counted, after - before);
	/* the shared values are the request's: counted there, not twice */
	ck_assert_uint_lt(counted, proto_request_bytes(&req));
	json_object_put(m);
	request_clear(&req);
	free(line);
}
END_TEST

static Suite *
budget_suite(void)
{
	Suite *s = suite_create("cmdd_budget");
	TCase *tc = tcase_create("request_bytes");

	tcase_add_loop_test(tc, request_counted_at_what_it_holds, 0,
			    (int)(sizeof(shapes) / sizeof(shapes[0])));
	tcase_add_test(tc, small_text_can_hold_much_more);
	tcase_add_test(tc, append_prepare_keeps_no_text_on_the_events);
	tcase_add_test(tc, metadata_copy_counted_at_what_it_adds);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(budget_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

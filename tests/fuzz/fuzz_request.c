/*
 * fuzz_request.c - a request line of the command protocol (cmd/proto.c):
 * the UTF-8 check, the JSON parse and the field rules, then the answer the
 * daemon would send back.
 *
 * Properties besides the sanitizers':
 * - proto_utf8_valid() agrees with a second, table-driven reading of the
 *   Unicode standard (Table 3-7, well-formed byte sequences), and a framing
 *   error (close) is reported for invalid UTF-8 and only for it;
 * - an accepted request has every field the executor reads, and no raw NUL
 *   byte (JSON has none outside a string, and a string must escape it);
 * - every answer, ok or error, is one line of valid UTF-8 JSON that carries
 *   the request's id as it is echoed.
 */
#include <stdbool.h>
#include <string.h>

#include <json-c/json.h>

#include "fuzz.h"
#include "../../cmd/proto.h"

/* Table 3-7: the first byte decides the ranges of the ones after it. */
static bool
utf8_ref(const uint8_t *s, size_t len)
{
	size_t i = 0;

	while (i < len) {
		uint8_t c = s[i];
		uint8_t lo = 0x80, hi = 0xbf;
		size_t n;

		if (c <= 0x7f) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			n = 1;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			if (c == 0xe0)
				lo = 0xa0;
			else if (c == 0xed)
				hi = 0x9f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			if (c == 0xf0)
				lo = 0x90;
			else if (c == 0xf4)
				hi = 0x8f;
		} else {
			return false;
		}
		if (len - i <= n)
			return false;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t k = 2; k <= n; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xbf)
				return false;
		i += n + 1;
	}
	return true;
}

/* One line: the JSON object, then '\n' and nothing else. */
static void
check_answer(const char *line, const char *want_id)
{
	size_t n;
	struct json_object *o, *id;

	FUZZ_CHECK(line != NULL, "no answer");
	n = strlen(line);
	FUZZ_CHECK(n > 1 && line[n - 1] == '\n' && memchr(line, '\n', n - 1) == NULL,
		   "not one line: %s", line);
	FUZZ_CHECK(utf8_ref((const uint8_t *)line, n), "answer is not UTF-8: %s", line);
	o = json_tokener_parse(line);
	FUZZ_CHECK(o != NULL && json_object_is_type(o, json_type_object), "not JSON: %s", line);
	if (want_id != NULL)
		FUZZ_CHECK(json_object_object_get_ex(o, "id", &id) &&
				   json_object_is_type(id, json_type_string) &&
				   strcmp(json_object_get_string(id), want_id) == 0,
			   "answer does not carry id \"%s\": %s", want_id, line);
	json_object_put(o);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *line = (const char *)data;
	struct request req;
	const char *code = NULL, *id;
	char msg[256];
	bool close = false, valid;
	char *answer;
	int rc;

	valid = utf8_ref(data, size);
	FUZZ_CHECK(proto_utf8_valid(line, size) == valid, "proto_utf8_valid says %d, Table 3-7 %d",
		   !valid, valid);
	msg[0] = '\0';
	rc = proto_parse(line, size, &req, &code, msg, sizeof(msg), &close);
	FUZZ_CHECK(close == !valid, "close %d for %s UTF-8", close, valid ? "valid" : "invalid");
	if (rc == 0) {
		struct store_append_result r = { .version = 1 };
		char stream[CQRS_STREAM_MAX + 1];

		FUZZ_CHECK(memchr(data, '\0', size) == NULL, "accepted with a raw NUL byte");
		FUZZ_CHECK(req.root != NULL && req.command != NULL && req.aggregate_id != NULL &&
				   req.data != NULL && json_object_is_type(req.data, json_type_object),
			   "accepted without a field the executor reads");
		FUZZ_CHECK(req.expected == STORE_ANY || (req.expected >= 0 && req.expected <= INT32_MAX),
			   "expected_version %lld", (long long)req.expected);
		FUZZ_CHECK(strlen(req.id) == UUID_STR_LEN - 1, "id \"%s\"", req.id);
		snprintf(stream, sizeof(stream), "fuzz-%s", req.aggregate_id);
		id = request_answer_id(&req);
		answer = proto_answer_ok(id, stream, &r);
	} else {
		FUZZ_CHECK(code != NULL && msg[0] != '\0', "refused without a code or a message");
		/* as cmd/server.c's handle_line() answers it */
		id = req.echo_id ? req.echo_id : req.id_given ? req.id : NULL;
		answer = proto_answer_error(id, code, msg);
	}
	check_answer(answer, id);
	free(answer);
	request_clear(&req);
	return 0;
}

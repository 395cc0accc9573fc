/* events.c - cqrsctl verbs on the event store: migrate, append, read, read-all. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "ctl.h"
#include "envelope.h"
#include "store.h"

/* Whole input from a file or stdin, at most max bytes. */
static int
slurp(struct ctl *ctl, const char *path, size_t max, char **out, size_t *len)
{
	FILE *f = (path == NULL || strcmp(path, "-") == 0) ? stdin : fopen(path, "r");
	char *buf = NULL;
	size_t n = 0, cap = 0;

	if (f == NULL)
		return ctl_fail(ctl, "cannot open \"%s\": %s", path, strerror(errno));
	for (;;) {
		if (n + 4096 + 1 > cap) {
			cap = cap ? cap * 2 : 65536;
			char *nb = realloc(buf, cap);
			if (nb == NULL) {
				free(buf);
				return ctl_fail(ctl, "out of memory");
			}
			buf = nb;
		}
		size_t got = fread(buf + n, 1, cap - n - 1, f);
		n += got;
		if (n > max) {
			free(buf);
			if (f != stdin)
				fclose(f);
			return ctl_fail(ctl, "input is over the limit of %zu bytes", max);
		}
		if (got == 0)
			break;
	}
	buf[n] = '\0';
	if (f != stdin)
		fclose(f);
	*out = buf;
	*len = n;
	return 0;
}

static int
parse_version_arg(const char *s, int64_t *out)
{
	char *end;
	long long v;

	if (strcmp(s, "any") == 0) {
		*out = STORE_ANY;
		return 0;
	}
	if (strcmp(s, "no-stream") == 0) {
		*out = STORE_NO_STREAM;
		return 0;
	}
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < 0 || v > INT32_MAX)
		return -1;
	*out = v;
	return 0;
}

int
ctl_migrate(struct ctl *ctl, int argc, char **argv)
{
	struct store *st = NULL;
	struct cqrs_err err = { 0 };
	const char *ci;
	int applied = 0;

	(void)argv;
	if (argc != 1)
		return ctl_usage(ctl, &ctl_verbs[0]);
	if ((ci = ctl_conninfo(ctl)) == NULL)
		return 1;
	if (cqrs_store_connect(ci, &st, &err) < 0 || cqrs_store_migrate(st, &applied, &err) < 0) {
		cqrs_store_free(st);
		return ctl_fail(ctl, "migrate: %s", err.msg);
	}
	cqrs_store_free(st);
	fprintf(ctl->out, "migrations applied: %d\n", applied);
	return 0;
}

static void
print_result(struct ctl *ctl, const char *stream, const struct store_append_result *r)
{
	json_object *o = cqrs_store_append_result_json(NULL, stream, r);

	fprintf(ctl->out, "%s\n", json_object_to_json_string_ext(o,
		JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
}

/* Fills in[i] from the JSON event e (borrowed: in[] points into e). */
static int
event_from_json(struct ctl *ctl, json_object *e, size_t i, struct store_event_in *in)
{
	json_object *v;

	if (!json_object_is_type(e, json_type_object))
		return ctl_fail(ctl, "event %zu: not a JSON object", i);
	memset(in, 0, sizeof(*in));
	if (!json_object_object_get_ex(e, "type", &v) || !json_object_is_type(v, json_type_string))
		return ctl_fail(ctl, "event %zu: \"type\" is missing or not a string", i);
	in->type = json_object_get_string(v);
	if (!json_object_object_get_ex(e, "data", &v))
		return ctl_fail(ctl, "event %zu: \"data\" is missing", i);
	if (!json_object_is_type(v, json_type_object))
		return ctl_fail(ctl, "event %zu: \"data\" is not a JSON object", i);
	in->data_obj = v;
	if (json_object_object_get_ex(e, "metadata", &v)) {
		if (!json_object_is_type(v, json_type_object))
			return ctl_fail(ctl, "event %zu: \"metadata\" is not a JSON object", i);
		in->metadata_obj = v;
	}
	if (json_object_object_get_ex(e, "id", &v)) {
		if (!json_object_is_type(v, json_type_string))
			return ctl_fail(ctl, "event %zu: \"id\" is not a string", i);
		in->id = json_object_get_string(v);
	}
	return 0;
}

int
ctl_append(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "expected", required_argument, NULL, 'e' },
		{ "command-id", required_argument, NULL, 'i' },
		{ NULL, 0, NULL, 0 },
	};
	const struct ctl_verb *verb = &ctl_verbs[1];
	int64_t expected = STORE_ANY;
	const char *command_id = NULL, *stream, *path = NULL, *ci;
	char *text = NULL;
	size_t len = 0, n = 0;
	json_object *root = NULL;
	struct json_tokener *tok = NULL;
	struct store_event_in *in = NULL;
	struct store *st = NULL;
	struct store_append_result r = { 0 };
	struct cqrs_err err = { 0 };
	int c, rc = 1;

	optind = 1;
	while ((c = getopt_long(argc, argv, "e:i:", opts, NULL)) != -1) {
		switch (c) {
		case 'e':
			if (parse_version_arg(optarg, &expected) < 0)
				return ctl_fail(ctl, "--expected \"%s\": want a version >= 0, "
						     "\"any\" or \"no-stream\"", optarg);
			break;
		case 'i':
			command_id = optarg;
			break;
		default:
			return ctl_usage(ctl, verb);
		}
	}
	if (optind >= argc || argc - optind > 2)
		return ctl_usage(ctl, verb);
	stream = argv[optind];
	if (argc - optind == 2)
		path = argv[optind + 1];
	if (slurp(ctl, path, (size_t)CQRS_APPEND_MAX_EVENTS * 2 * CQRS_EVENT_MAX_BYTES / 100,
		  &text, &len) != 0)
		return 1;
	tok = json_tokener_new();
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	root = json_tokener_parse_ex(tok, text, (int)len);
	{
		/* allow trailing whitespace (a final newline) */
		size_t end = json_tokener_get_parse_end(tok);
		while (root != NULL && end < len && strchr(" \t\r\n", text[end]))
			end++;
		if (root == NULL || end != len) {
			enum json_tokener_error je = json_tokener_get_error(tok);
			rc = ctl_fail(ctl, "%s: not valid JSON: %s", path ? path : "stdin",
				      root ? "trailing characters" : json_tokener_error_desc(je));
			goto out;
		}
	}
	if (json_object_is_type(root, json_type_array)) {
		n = json_object_array_length(root);
		if (n > CQRS_APPEND_MAX_EVENTS) {
			rc = ctl_fail(ctl, "%zu events, over the limit of %d", n,
				      CQRS_APPEND_MAX_EVENTS);
			goto out;
		}
		in = calloc(n ? n : 1, sizeof(*in));
		for (size_t i = 0; i < n; i++)
			if (event_from_json(ctl, json_object_array_get_idx(root, i), i, &in[i]) != 0)
				goto out;
	} else {
		n = 1;
		in = calloc(1, sizeof(*in));
		if (event_from_json(ctl, root, 0, &in[0]) != 0)
			goto out;
	}
	if ((ci = ctl_conninfo(ctl)) == NULL)
		goto out;
	if (cqrs_store_connect(ci, &st, &err) < 0) {
		rc = ctl_fail(ctl, "%s", err.msg);
		goto out;
	}
	rc = cqrs_store_append(st, stream, expected, in, n, command_id, &r, &err);
	if (rc == 0) {
		print_result(ctl, stream, &r);
	} else {
		ctl_fail(ctl, "append: %s", err.msg);
		rc = rc == CQRS_ECONFLICT ? 3 : 1;
	}
out:
	cqrs_store_append_result_clear(&r);
	cqrs_store_free(st);
	free(in);
	json_object_put(root);
	json_tokener_free(tok);
	free(text);
	return rc;
}

static void
print_events(struct ctl *ctl, const struct store_events *evs)
{
	for (size_t i = 0; i < evs->n; i++) {
		char *s = cqrs_envelope_encode(evs->ev[i]);
		fprintf(ctl->out, "%s\n", s ? s : "");
		free(s);
	}
}

static int
parse_limit(struct ctl *ctl, const char *s, int *out)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (end == s || *end != '\0' || v < 1 || v > 1000000)
		return ctl_fail(ctl, "--limit \"%s\": want 1..1000000", s);
	*out = (int)v;
	return 0;
}

int
ctl_read(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "from", required_argument, NULL, 'f' },
		{ "limit", required_argument, NULL, 'l' },
		{ NULL, 0, NULL, 0 },
	};
	int64_t from = 1;
	int limit = 1000000, c, rc = 0;
	const char *ci, *stream;
	struct store *st = NULL;
	struct cqrs_err err = { 0 };

	optind = 1;
	while ((c = getopt_long(argc, argv, "f:l:", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			if (parse_version_arg(optarg, &from) < 0 || from < 1)
				return ctl_fail(ctl, "--from \"%s\": want a version >= 1", optarg);
			break;
		case 'l':
			if (parse_limit(ctl, optarg, &limit) != 0)
				return 1;
			break;
		default:
			return ctl_usage(ctl, &ctl_verbs[2]);
		}
	}
	if (argc - optind != 1)
		return ctl_usage(ctl, &ctl_verbs[2]);
	stream = argv[optind];
	if ((ci = ctl_conninfo(ctl)) == NULL)
		return 1;
	if (cqrs_store_connect(ci, &st, &err) < 0)
		return ctl_fail(ctl, "%s", err.msg);
	while (limit > 0) {
		struct store_events evs;
		int chunk = limit > 1000 ? 1000 : limit;
		if (cqrs_store_read_stream(st, stream, from, chunk, &evs, &err) < 0) {
			rc = ctl_fail(ctl, "read: %s", err.msg);
			break;
		}
		print_events(ctl, &evs);
		limit -= (int)evs.n;
		if (evs.n > 0)
			from = evs.ev[evs.n - 1]->version + 1;
		if ((int)evs.n < chunk) {
			cqrs_store_events_clear(&evs);
			break;
		}
		cqrs_store_events_clear(&evs);
	}
	cqrs_store_free(st);
	return rc;
}

int
ctl_read_all(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "after", required_argument, NULL, 'a' },
		{ "limit", required_argument, NULL, 'l' },
		{ NULL, 0, NULL, 0 },
	};
	struct store_checkpoint cp = STORE_CHECKPOINT_START;
	int limit = 1000000, c, rc = 0;
	const char *ci;
	struct store *st = NULL;
	struct cqrs_err err = { 0 };
	char cpbuf[48];

	optind = 1;
	while ((c = getopt_long(argc, argv, "a:l:", opts, NULL)) != -1) {
		switch (c) {
		case 'a':
			if (cqrs_store_checkpoint_parse(optarg, &cp, &err) < 0)
				return ctl_fail(ctl, "--after: %s", err.msg);
			break;
		case 'l':
			if (parse_limit(ctl, optarg, &limit) != 0)
				return 1;
			break;
		default:
			return ctl_usage(ctl, &ctl_verbs[3]);
		}
	}
	if (argc != optind)
		return ctl_usage(ctl, &ctl_verbs[3]);
	if ((ci = ctl_conninfo(ctl)) == NULL)
		return 1;
	if (cqrs_store_connect(ci, &st, &err) < 0)
		return ctl_fail(ctl, "%s", err.msg);
	while (limit > 0) {
		struct store_events evs;
		int chunk = limit > 1000 ? 1000 : limit;
		if (cqrs_store_read_all(st, &cp, chunk, &evs, &err) < 0) {
			rc = ctl_fail(ctl, "read-all: %s", err.msg);
			break;
		}
		print_events(ctl, &evs);
		limit -= (int)evs.n;
		if (evs.n > 0)
			cp = evs.at[evs.n - 1];
		if ((int)evs.n < chunk) {
			cqrs_store_events_clear(&evs);
			break;
		}
		cqrs_store_events_clear(&evs);
	}
	cqrs_store_checkpoint_format(&cp, cpbuf, sizeof(cpbuf));
	fprintf(ctl->err, "checkpoint %s\n", cpbuf);
	cqrs_store_free(st);
	return rc;
}

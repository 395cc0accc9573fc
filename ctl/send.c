/* send.c - cqrsctl send: commands to cqrs-cmdd over its socket. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "cmdclient.h"
#include "config.h"
#include "ctl.h"
#include "uuid.h"

/* Stop reading stdin while this much is waiting for the socket: the daemon
 * reads at its own pace, and a big input must not end up in memory whole. */
#define SEND_HIGH_WATER ((size_t)4 << 20)
#define DEFAULT_TIMEOUT_S 60

static const struct ctl_verb *
send_verb(void)
{
	for (const struct ctl_verb *v = ctl_verbs; v->name != NULL; v++)
		if (strcmp(v->name, "send") == 0)
			return v;
	return &ctl_verbs[0];
}

/* A JSON object from an argument, or NULL after a message. Owned. */
static json_object *
parse_object_arg(struct ctl *ctl, const char *what, const char *text)
{
	struct json_tokener *tok = json_tokener_new();
	json_object *o;
	size_t len = strlen(text), end;

	if (tok == NULL) {
		ctl_fail(ctl, "out of memory");
		return NULL;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	o = json_tokener_parse_ex(tok, text, (int)(len > INT_MAX ? INT_MAX : len));
	end = json_tokener_get_parse_end(tok);
	while (o != NULL && end < len && strchr(" \t\r\n", text[end]) != NULL && text[end] != '\0')
		end++;
	if (o == NULL || end != len) {
		ctl_fail(ctl, "%s is not valid JSON: %s", what,
			 o ? "trailing characters"
			   : json_tokener_error_desc(json_tokener_get_error(tok)));
		json_object_put(o);
		o = NULL;
	} else if (!json_object_is_type(o, json_type_object)) {
		ctl_fail(ctl, "%s must be a JSON object ({...})", what);
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	return o;
}

static int
parse_seconds(struct ctl *ctl, const char *s, int *out_ms)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < 1 || v > 86400) {
		ctl_fail(ctl, "--timeout \"%s\": want seconds, 1..86400", s);
		return -1;
	}
	*out_ms = (int)v * 1000;
	return 0;
}

/* Whether an answer line says "ok":true. */
static bool
answer_ok(const char *line, size_t len)
{
	struct json_tokener *tok = json_tokener_new();
	json_object *o, *ok;
	bool r = false;

	if (tok == NULL)
		return false;
	o = json_tokener_parse_ex(tok, line, (int)(len > INT_MAX ? INT_MAX : len));
	if (o != NULL && json_object_object_get_ex(o, "ok", &ok) &&
	    json_object_is_type(ok, json_type_boolean))
		r = json_object_get_boolean(ok);
	json_object_put(o);
	json_tokener_free(tok);
	return r;
}

static const char *
socket_path(struct ctl *ctl, const char *opt)
{
	if (opt != NULL)
		return opt;
	return cqrs_config_get(ctl->cfg, "cmd", "socket", CMDCLIENT_DEFAULT_SOCKET);
}

/* ---- one command ---------------------------------------------------------------- */

static int
send_one(struct ctl *ctl, const char *path, json_object *req, int timeout_ms)
{
	struct cmdclient *c = NULL;
	struct cqrs_err err = { 0 };
	const char *text;
	char *answer = NULL;
	int rc;

	text = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN |
						   JSON_C_TO_STRING_NOSLASHESCAPE);
	if (text == NULL)
		return ctl_fail(ctl, "out of memory");
	if (cqrs_cmdclient_connect(path, timeout_ms, &c, &err) < 0)
		return ctl_fail(ctl, "%s", err.msg);
	if (cqrs_cmdclient_call(c, text, timeout_ms, &answer, &err) < 0) {
		rc = ctl_fail(ctl, "%s (the command's outcome is unknown: resend it with the "
				   "same --id to learn it)", err.msg);
		goto out;
	}
	fprintf(ctl->out, "%s\n", answer);
	rc = answer_ok(answer, strlen(answer)) ? 0 : 1;
out:
	free(answer);
	cqrs_cmdclient_free(c);
	return rc;
}

/* ---- many commands, pipelined ------------------------------------------------------ */

struct pipe_state {
	struct ctl *ctl;
	struct cmdclient *c;
	bool in_line;		/* inside a request line read from stdin */
	size_t sent;		/* complete request lines queued */
	size_t answered;
	bool nack;
};

/*
 * Queues stdin bytes, dropping blank lines and leading blanks: each line
 * queued gets exactly one answer, and counting them is how we know when
 * we are done without closing our side early.
 */
static int
queue_input(struct pipe_state *ps, const char *buf, size_t n, struct cqrs_err *err)
{
	size_t i = 0;

	while (i < n) {
		const char *nl;
		size_t end;
		int rc;

		if (!ps->in_line) {
			while (i < n && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r' ||
					 buf[i] == '\n'))
				i++;
			if (i == n)
				break;
			ps->in_line = true;
		}
		nl = memchr(buf + i, '\n', n - i);
		end = nl ? (size_t)(nl - buf) + 1 : n;
		rc = cqrs_cmdclient_queue(ps->c, buf + i, end - i, err);
		if (rc < 0)
			return rc;
		i = end;
		if (nl != NULL) {
			ps->in_line = false;
			ps->sent++;
		}
	}
	return 0;
}

/* Prints every complete answer buffered. */
static int
take_answers(struct pipe_state *ps, struct cqrs_err *err)
{
	const char *line;
	size_t len;
	int rc;

	while ((rc = cqrs_cmdclient_next_line(ps->c, &line, &len, err)) == 1) {
		fwrite(line, 1, len, ps->ctl->out);
		fputc('\n', ps->ctl->out);
		if (!answer_ok(line, len))
			ps->nack = true;
		ps->answered++;
	}
	return rc;
}

static int
send_pipelined(struct ctl *ctl, const char *path, int timeout_ms)
{
	struct pipe_state ps = { .ctl = ctl };
	struct cqrs_err err = { 0 };
	bool stdin_open = true, can_write = true;
	char write_error[CQRS_ERR_MSG_MAX] = "";
	char *buf = NULL;
	int rc = 1;

	if (cqrs_cmdclient_connect(path, timeout_ms, &ps.c, &err) < 0)
		return ctl_fail(ctl, "%s", err.msg);
	buf = malloc(65536);
	if (buf == NULL) {
		rc = ctl_fail(ctl, "out of memory");
		goto out;
	}
	for (;;) {
		struct pollfd pfd[2];
		int n, sock_i;
		nfds_t nfds = 0;

		if (!stdin_open && cqrs_cmdclient_queued(ps.c) == 0 && ps.answered >= ps.sent)
			break;
		if (stdin_open && can_write && cqrs_cmdclient_queued(ps.c) < SEND_HIGH_WATER)
			pfd[nfds++] = (struct pollfd){ .fd = STDIN_FILENO, .events = POLLIN };
		sock_i = (int)nfds;
		pfd[nfds++] = (struct pollfd){
			.fd = cqrs_cmdclient_fd(ps.c),
			.events = (short)(POLLIN | (can_write && cqrs_cmdclient_queued(ps.c) > 0
							    ? POLLOUT : 0)),
		};
		n = poll(pfd, nfds, timeout_ms);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = ctl_fail(ctl, "poll: %s", strerror(errno));
			goto out;
		}
		if (n == 0) {
			rc = ctl_fail(ctl, "no progress on %s for %d s: %zu of %zu requests "
					   "answered (the others' outcome is unknown)",
				      path, timeout_ms / 1000, ps.answered, ps.sent);
			goto out;
		}
		if (sock_i == 1 && (pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) {
			ssize_t got = read(STDIN_FILENO, buf, 65536);
			if (got < 0 && errno != EINTR && errno != EAGAIN) {
				rc = ctl_fail(ctl, "reading stdin: %s", strerror(errno));
				goto out;
			}
			if (got == 0) {
				stdin_open = false;
				/* a last line without its newline is still a request */
				if (ps.in_line && queue_input(&ps, "\n", 1, &err) < 0) {
					rc = ctl_fail(ctl, "%s", err.msg);
					goto out;
				}
			} else if (got > 0 && queue_input(&ps, buf, (size_t)got, &err) < 0) {
				rc = ctl_fail(ctl, "%s", err.msg);
				goto out;
			}
		}
		if (can_write && cqrs_cmdclient_queued(ps.c) > 0 &&
		    (pfd[sock_i].revents & (POLLOUT | POLLERR | POLLHUP))) {
			if (cqrs_cmdclient_flush(ps.c, &err) < 0) {
				/* keep reading: the answers sent before the close are ours */
				can_write = false;
				snprintf(write_error, sizeof(write_error), "%s", err.msg);
			}
		}
		if (pfd[sock_i].revents & (POLLIN | POLLHUP | POLLERR)) {
			int frc = cqrs_cmdclient_fill(ps.c, &err);
			int trc = take_answers(&ps, &err);
			if (trc < 0) {
				rc = ctl_fail(ctl, "%s", err.msg);
				goto out;
			}
			if (frc < 0) {
				if (!stdin_open && cqrs_cmdclient_queued(ps.c) == 0 &&
				    ps.answered >= ps.sent)
					break;
				rc = ctl_fail(ctl, "%s after %zu of %zu answers%s%s", err.msg,
					      ps.answered, ps.sent + (ps.in_line ? 1 : 0),
					      write_error[0] ? "; " : "", write_error);
				goto out;
			}
		}
	}
	rc = ps.nack ? 1 : 0;
out:
	fflush(ctl->out);
	free(buf);
	cqrs_cmdclient_free(ps.c);
	return rc;
}

int
ctl_send(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "expected", required_argument, NULL, 'e' },
		{ "id", required_argument, NULL, 'i' },
		{ "metadata", required_argument, NULL, 'm' },
		{ "socket", required_argument, NULL, 's' },
		{ "timeout", required_argument, NULL, 't' },
		{ NULL, 0, NULL, 0 },
	};
	const struct ctl_verb *verb = send_verb();
	const char *id = NULL, *metadata = NULL, *sock = NULL, *expected = NULL;
	int timeout_ms = DEFAULT_TIMEOUT_S * 1000, c, npos, rc = 2;
	json_object *req = NULL, *data = NULL, *meta = NULL;
	long long ev = -1;

	optind = 0;		/* glibc: start over, this is a new argv */
	while ((c = getopt_long(argc, argv, "e:i:m:s:t:", opts, NULL)) != -1) {
		switch (c) {
		case 'e':
			expected = optarg;
			break;
		case 'i':
			id = optarg;
			break;
		case 'm':
			metadata = optarg;
			break;
		case 's':
			sock = optarg;
			break;
		case 't':
			if (parse_seconds(ctl, optarg, &timeout_ms) < 0)
				return 2;
			break;
		default:
			return ctl_usage(ctl, verb);
		}
	}
	npos = argc - optind;
	if (npos == 1 && strcmp(argv[optind], "-") == 0) {
		if (expected != NULL || id != NULL || metadata != NULL) {
			ctl_fail(ctl, "--expected, --id and --metadata go with one command, "
				      "not with \"send -\" (put them in the request lines)");
			return 2;
		}
		return send_pipelined(ctl, socket_path(ctl, sock), timeout_ms);
	}
	if (npos < 2 || npos > 3)
		return ctl_usage(ctl, verb);

	if (expected != NULL) {
		char *end;
		errno = 0;
		ev = strtoll(expected, &end, 10);
		if (errno != 0 || end == expected || *end != '\0' || ev < 0 || ev > INT32_MAX) {
			ctl_fail(ctl, "--expected \"%s\": want a version >= 0", expected);
			return 2;
		}
	}
	if (id != NULL && !cqrs_uuid_valid(id)) {
		ctl_fail(ctl, "--id \"%s\" is not a UUID", id);
		return 2;
	}
	if (npos == 3 && (data = parse_object_arg(ctl, "the command's data", argv[optind + 2])) == NULL)
		goto out;
	if (npos == 2 && (data = json_object_new_object()) == NULL) {
		rc = ctl_fail(ctl, "out of memory");
		goto out;
	}
	if (metadata != NULL && (meta = parse_object_arg(ctl, "--metadata", metadata)) == NULL)
		goto out;

	req = json_object_new_object();
	if (req == NULL) {
		rc = ctl_fail(ctl, "out of memory");
		goto out;
	}
	if (id != NULL)
		json_object_object_add(req, "id", json_object_new_string(id));
	json_object_object_add(req, "command", json_object_new_string(argv[optind]));
	json_object_object_add(req, "aggregate_id", json_object_new_string(argv[optind + 1]));
	if (ev >= 0)
		json_object_object_add(req, "expected_version", json_object_new_int64(ev));
	json_object_object_add(req, "data", data);
	data = NULL;		/* owned by req now */
	if (meta != NULL) {
		json_object_object_add(req, "metadata", meta);
		meta = NULL;
	}
	rc = send_one(ctl, socket_path(ctl, sock), req, timeout_ms);
out:
	json_object_put(meta);
	json_object_put(data);
	json_object_put(req);
	return rc;
}

/*
 * send.c - commands from process managers (cqrs_send() in a handler) to
 * cqrs-cmdd over cmd.socket.
 *
 * A handler may run more than once for one event: a redelivery after a crash
 * before the ack, a retry, a batch rolled back around another event's
 * failure. So the command id is not random but derived from the event's id
 * and the handler's key (a name-based UUID, version 5): every run sends the
 * same id, and cqrs-cmdd answers a repeat of a command that succeeded with
 * its first outcome ("duplicate") without appending again.
 *
 * The command's metadata carries the cause: correlation_id (the event's,
 * else the event id), causation_id (the event id; cqrs-cmdd records the
 * command id there in the events it appends), and cause_event_id,
 * cause_stream and cause_type, which stay in those events: a process manager
 * reading the outcome of its own command knows from them which process it
 * belongs to (the bank's transfers read cause_stream).
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "clock.h"
#include "cmdclient.h"
#include "consumer.h"

/* The namespace of command ids derived from events (a random v4, fixed). */
static const uint8_t ns_commands[16] = {
	0x5b, 0x0e, 0x8d, 0x4c, 0x6a, 0x21, 0x4f, 0x3e,
	0x9c, 0x7d, 0x12, 0xa4, 0xe3, 0x58, 0x0b, 0x96,
};

struct sender {
	char *socket;
	int timeout_ms;
	struct cmdclient *cli;
	struct cqrs_daemon_watchdog *watchdog;	/* borrowed, may be NULL */
};

/* ---- SHA-1 (FIPS 180-4), for name-based UUIDs ------------------------------------ */

struct sha1 {
	uint32_t h[5];
	uint64_t len;
	uint8_t buf[64];
	size_t n;
};

static uint32_t
rol(uint32_t x, int k)
{
	return (x << k) | (x >> (32 - k));
}

static void
sha1_block(struct sha1 *s, const uint8_t *p)
{
	uint32_t w[80], a, b, c, d, e, t;

	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 80; i++)
		w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
	a = s->h[0];
	b = s->h[1];
	c = s->h[2];
	d = s->h[3];
	e = s->h[4];
	for (int i = 0; i < 80; i++) {
		uint32_t f, k;

		if (i < 20) {
			f = (b & c) | (~b & d);
			k = 0x5a827999;
		} else if (i < 40) {
			f = b ^ c ^ d;
			k = 0x6ed9eba1;
		} else if (i < 60) {
			f = (b & c) | (b & d) | (c & d);
			k = 0x8f1bbcdc;
		} else {
			f = b ^ c ^ d;
			k = 0xca62c1d6;
		}
		t = rol(a, 5) + f + e + k + w[i];
		e = d;
		d = c;
		c = rol(b, 30);
		b = a;
		a = t;
	}
	s->h[0] += a;
	s->h[1] += b;
	s->h[2] += c;
	s->h[3] += d;
	s->h[4] += e;
}

static void
sha1_init(struct sha1 *s)
{
	static const uint32_t h0[5] = { 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476,
					0xc3d2e1f0 };

	memcpy(s->h, h0, sizeof(h0));
	s->len = 0;
	s->n = 0;
}

static void
sha1_add(struct sha1 *s, const void *data, size_t len)
{
	const uint8_t *p = data;

	s->len += len;
	while (len > 0) {
		size_t take = 64 - s->n < len ? 64 - s->n : len;

		memcpy(s->buf + s->n, p, take);
		s->n += take;
		p += take;
		len -= take;
		if (s->n == 64) {
			sha1_block(s, s->buf);
			s->n = 0;
		}
	}
}

static void
sha1_end(struct sha1 *s, uint8_t out[20])
{
	uint64_t bits = s->len * 8;
	uint8_t pad = 0x80, zero = 0, lenbuf[8];

	sha1_add(s, &pad, 1);
	while (s->n != 56)
		sha1_add(s, &zero, 1);
	for (int i = 0; i < 8; i++)
		lenbuf[i] = (uint8_t)(bits >> (56 - 8 * i));
	sha1_add(s, lenbuf, 8);
	for (int i = 0; i < 5; i++) {
		out[4 * i] = (uint8_t)(s->h[i] >> 24);
		out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
		out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
		out[4 * i + 3] = (uint8_t)s->h[i];
	}
}

void
send_sha1(const void *data, size_t len, uint8_t out[20])
{
	struct sha1 s;

	sha1_init(&s);
	sha1_add(&s, data, len);
	sha1_end(&s, out);
}

void
send_command_id(const char *event_id, const char *key, char out[37])
{
	static const char hex[] = "0123456789abcdef";
	struct sha1 s;
	uint8_t h[20];
	size_t o = 0;

	/* RFC 9562 version 5: SHA-1(namespace || name); the name is the event
	 * id and the key, with a NUL between so ("a", "bc") != ("ab", "c") */
	sha1_init(&s);
	sha1_add(&s, ns_commands, sizeof(ns_commands));
	sha1_add(&s, event_id, strlen(event_id) + 1);
	if (key != NULL)
		sha1_add(&s, key, strlen(key));
	sha1_end(&s, h);
	h[6] = (uint8_t)((h[6] & 0x0f) | 0x50);
	h[8] = (uint8_t)((h[8] & 0x3f) | 0x80);
	for (int i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[o++] = '-';
		out[o++] = hex[h[i] >> 4];
		out[o++] = hex[h[i] & 15];
	}
	out[o] = '\0';
}

/* ---- the request ------------------------------------------------------------------- */

char *
send_request(const struct cqrs_event *cause, const char *key, const char *command,
	     const char *aggregate_id, struct json_object *data)
{
	struct json_object *req = json_object_new_object();
	struct json_object *meta = json_object_new_object();
	struct json_object *corr = NULL;
	char id[37];
	char *line = NULL;

	if (req == NULL || meta == NULL || data == NULL) {
		json_object_put(data);
		goto out;
	}
	send_command_id(cause->id, key, id);
	if (cause->metadata == NULL ||
	    !json_object_object_get_ex(cause->metadata, "correlation_id", &corr) ||
	    !json_object_is_type(corr, json_type_string) || json_object_get_string_len(corr) == 0)
		corr = NULL;
	json_object_object_add(meta, "correlation_id",
			       corr != NULL ? json_object_get(corr) : json_object_new_string(cause->id));
	json_object_object_add(meta, "causation_id", json_object_new_string(cause->id));
	json_object_object_add(meta, "cause_event_id", json_object_new_string(cause->id));
	json_object_object_add(meta, "cause_stream", json_object_new_string(cause->stream));
	json_object_object_add(meta, "cause_type", json_object_new_string(cause->type));
	json_object_object_add(req, "id", json_object_new_string(id));
	json_object_object_add(req, "command", json_object_new_string(command));
	json_object_object_add(req, "aggregate_id", json_object_new_string(aggregate_id));
	json_object_object_add(req, "data", data);
	json_object_object_add(req, "metadata", meta);
	meta = NULL;
	line = strdup(json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN |
							      JSON_C_TO_STRING_NOSLASHESCAPE));
out:
	json_object_put(meta);
	json_object_put(req);
	return line;
}

/* ---- the client -------------------------------------------------------------------- */

int
send_new(const char *socket, int64_t timeout_ms, struct cqrs_daemon_watchdog *watchdog,
	 struct sender **out, struct cqrs_err *err)
{
	struct sender *s = calloc(1, sizeof(*s));

	*out = NULL;
	if (s == NULL || (s->socket = strdup(socket)) == NULL) {
		free(s);
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	}
	s->timeout_ms = (int)timeout_ms;
	s->watchdog = watchdog;
	*out = s;
	return 0;
}

void
send_free(struct sender *s)
{
	if (s == NULL)
		return;
	cqrs_cmdclient_free(s->cli);
	free(s->socket);
	free(s);
}

/* Maps an answer line to 0 or an error with the daemon's message. */
static int
read_answer(const char *answer, const char *command, const char *id, struct cqrs_err *err)
{
	static const struct {
		const char *name;
		int code;
	} codes[] = {
		{ "rejected", CQRS_EREJECTED },	  { "invalid", CQRS_EINVALID },
		{ "conflict", CQRS_ECONFLICT },	  { "unavailable", CQRS_EUNAVAILABLE },
		{ "unknown_command", CQRS_EINVALID }, { "malformed", CQRS_EINVALID },
		{ "too_large", CQRS_EINVALID },	  { "id_reused", CQRS_EIDREUSED },
		{ "forbidden", CQRS_EFORBIDDEN },
	};
	struct json_object *o = json_tokener_parse(answer);
	struct json_object *ok, *e, *v;
	const char *code = "?", *msg = "";
	int rc = CQRS_EINTERNAL;

	if (o == NULL || !json_object_object_get_ex(o, "ok", &ok)) {
		json_object_put(o);
		return cqrs_err_set(err, CQRS_EINTERNAL, "command %s (%s): unreadable answer",
				    command, id);
	}
	if (json_object_get_boolean(ok)) {
		json_object_put(o);
		return 0;
	}
	if (json_object_object_get_ex(o, "error", &e)) {
		if (json_object_object_get_ex(e, "code", &v))
			code = json_object_get_string(v);
		if (json_object_object_get_ex(e, "message", &v))
			msg = json_object_get_string(v);
	}
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (strcmp(code, codes[i].name) == 0)
			rc = codes[i].code;
	rc = cqrs_err_set(err, rc, "command %s (%s): %s: %s", command, id, code, msg);
	json_object_put(o);
	return rc;
}

/*
 * cqrs_cmdclient_call() in slices: the answer may take up to cmd_timeout
 * (cqrs-cmdd waiting for its store), and the consumer's loop must go on
 * pinging systemd's watchdog meanwhile, or a slow command gets it killed in
 * the middle of a batch, and again after every restart.
 */
static int
call(struct sender *s, const char *line, char **answer, struct cqrs_err *err)
{
	int64_t deadline = cqrs_now_ms() + s->timeout_ms;
	int rc;

	if ((rc = cqrs_cmdclient_queue(s->cli, line, strlen(line), err)) < 0 ||
	    (rc = cqrs_cmdclient_queue(s->cli, "\n", 1, err)) < 0)
		return rc;
	for (;;) {
		struct pollfd p = { .fd = cqrs_cmdclient_fd(s->cli), .events = POLLIN };
		int64_t now, slice = s->watchdog != NULL ? cqrs_daemon_tick(s->watchdog) : INT64_MAX;
		const char *got;
		size_t len;

		if (cqrs_cmdclient_queued(s->cli) > 0 && (rc = cqrs_cmdclient_flush(s->cli, err)) < 0)
			return rc;
		if ((rc = cqrs_cmdclient_fill(s->cli, err)) < 0)
			return rc;
		if ((rc = cqrs_cmdclient_next_line(s->cli, &got, &len, err)) < 0)
			return rc;
		if (rc == 1) {
			if ((*answer = strndup(got, len)) == NULL)
				return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
			return 0;
		}
		now = cqrs_now_ms();
		if (now >= deadline)
			return cqrs_err_set(err, CQRS_EUNAVAILABLE, "timed out waiting for an answer "
					    "from %s", s->socket);
		if (slice > deadline - now)
			slice = deadline - now;
		if (cqrs_cmdclient_queued(s->cli) > 0)
			p.events |= POLLOUT;
		if (poll(&p, 1, (int)slice) < 0 && errno != EINTR)
			return cqrs_err_set(err, CQRS_EIO, "poll: %s", strerror(errno));
	}
}

int
send_command(void *arg, const struct cqrs_event *cause, const char *key, const char *command,
	     const char *aggregate_id, struct json_object *data, struct cqrs_err *err)
{
	struct sender *s = arg;
	char *line, *answer = NULL;
	char id[37];
	int rc = 0;

	line = send_request(cause, key, command, aggregate_id, data);
	if (line == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "command %s: out of memory", command);
	send_command_id(cause->id, key, id);
	/* Twice at most: a connection that died since the last command is only
	 * noticed when used. The same id makes the resend safe. */
	for (int attempt = 0; attempt < 2; attempt++) {
		if (s->cli == NULL &&
		    (rc = cqrs_cmdclient_connect(s->socket, s->timeout_ms, &s->cli, err)) < 0)
			break;
		rc = call(s, line, &answer, err);
		if (rc == 0)
			break;
		cqrs_cmdclient_free(s->cli);
		s->cli = NULL;
	}
	free(line);
	if (rc < 0) {
		char why[CQRS_ERR_MSG_MAX];

		snprintf(why, sizeof(why), "%s", err != NULL ? err->msg : "cqrs-cmdd unreachable");
		free(answer);
		return cqrs_err_set(err, CQRS_EUNAVAILABLE, "command %s (%s): %s", command, id, why);
	}
	rc = read_answer(answer, command, id, err);
	free(answer);
	return rc;
}

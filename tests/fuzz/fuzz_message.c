/*
 * fuzz_message.c - a delivery, from the bytes of its AMQP content header to
 * the event cqrs-consumer hands its handlers: librabbitmq decodes the
 * properties (as amqp_consume_message() does with the frame off the wire),
 * cqrs_broker_msg_decode() copies what we use (properties, our headers,
 * RabbitMQ's x-death), consumer_msg_event() decodes the body, and the
 * consumer derives the routing key it matches handlers with and the
 * message it would dead-letter.
 *
 * Input: 1 byte n, n bytes of routing key, 2 bytes (big-endian) p, p bytes
 * of basic properties as in a content header frame after the body size
 * (property flags, then the fields), and the rest is the body. A short
 * input gives empty parts.
 *
 * Properties besides the sanitizers':
 * - every string of the decoded message is there (NULL never, "" when
 *   absent) and the body is the bytes sent, NUL-terminated;
 * - an event is returned exactly when the body is a valid envelope, and it
 *   validates; otherwise there is a reason;
 * - cqrs_routing_match() agrees with a plain dynamic-programming matcher,
 *   for fixed patterns and for the delivered routing key used as one;
 * - the dead-letter message has every field, from the event when there is
 *   one.
 */
#include <stdbool.h>
#include <string.h>

#include "broker_int.h"
#include "../../consumer/consumer.h"
#include "envelope.h"
#include "fuzz.h"

#define MAX_WORDS 64

struct words {
	const char *w[MAX_WORDS];
	size_t len[MAX_WORDS];
	size_t n;
};

/* Splits s at every '.'; false when it has more than MAX_WORDS words. */
static bool
split(const char *s, struct words *out)
{
	out->n = 0;
	for (;;) {
		size_t l = strcspn(s, ".");

		if (out->n == MAX_WORDS)
			return false;
		out->w[out->n] = s;
		out->len[out->n++] = l;
		if (s[l] == '\0')
			return true;
		s += l + 1;
	}
}

static bool
word_is(const struct words *w, size_t i, const char *lit)
{
	return w->len[i] == strlen(lit) && memcmp(w->w[i], lit, w->len[i]) == 0;
}

/* m[i][j]: pattern words i.. match key words j.. (AMQP topic rules: '*' one
 * word, '#' zero or more). -1 when a side has too many words. */
static int
match_ref(const char *pattern, const char *key)
{
	static bool m[MAX_WORDS + 1][MAX_WORDS + 1];
	struct words p, k;

	if (!split(pattern, &p) || !split(key, &k))
		return -1;
	for (size_t i = p.n + 1; i-- > 0;) {
		for (size_t j = k.n + 1; j-- > 0;) {
			if (i == p.n)
				m[i][j] = j == k.n;
			else if (word_is(&p, i, "#"))
				m[i][j] = m[i + 1][j] || (j < k.n && m[i][j + 1]);
			else if (j == k.n)
				m[i][j] = false;
			else if (word_is(&p, i, "*") ||
				 (p.len[i] == k.len[j] && memcmp(p.w[i], k.w[j], p.len[i]) == 0))
				m[i][j] = m[i + 1][j + 1];
			else
				m[i][j] = false;
		}
	}
	return m[0][0];
}

static void
check_match(const char *pattern, const char *key)
{
	int want = match_ref(pattern, key);

	if (want >= 0)
		FUZZ_CHECK(cqrs_routing_match(pattern, key) == (want == 1),
			   "pattern \"%s\" key \"%s\": %d, want %d", pattern, key, !want, want);
}

static void
check_str(const char *what, const char *s)
{
	FUZZ_CHECK(s != NULL, "%s is NULL", what);
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
	static const char *const patterns[] = { "#", "*.*", "account.#", "#.MoneyDeposited",
						"account.*", "*.#.*" };
	amqp_pool_t pool;
	amqp_message_t am;
	amqp_bytes_t rk = { 0, NULL }, props = { 0, NULL };
	amqp_basic_properties_t *p = NULL;
	struct broker_msg msg;
	struct broker_message dead;
	struct cqrs_event *ev;
	struct cqrs_err err = { 0 };
	char why[256];
	char key[CONSUMER_KEY_MAX];
	size_t off = 0, n;

	if (size > off) {
		n = data[off++];
		n = n < size - off ? n : size - off;
		rk.len = n;
		rk.bytes = (void *)(data + off);
		off += n;
	}
	if (size - off >= 2) {
		n = (size_t)data[off] << 8 | data[off + 1];
		off += 2;
		n = n < size - off ? n : size - off;
		props.len = n;
		props.bytes = (void *)(data + off);
		off += n;
	}

	init_amqp_pool(&pool, 4096);
	memset(&am, 0, sizeof(am));
	if (props.len >= 2 &&
	    amqp_decode_properties(AMQP_BASIC_CLASS, &pool, props, (void **)&p) == AMQP_STATUS_OK &&
	    p != NULL)
		am.properties = *p;	/* else as if it had none */
	am.body.len = size - off;
	am.body.bytes = (void *)(data + off);

	FUZZ_CHECK(cqrs_broker_msg_decode(&msg, &am, rk) == 0, "out of memory");
	check_str("routing_key", msg.routing_key);
	check_str("message_id", msg.message_id);
	check_str("type", msg.type);
	check_str("stream", msg.stream);
	check_str("reason", msg.reason);
	check_str("failed_at", msg.failed_at);
	check_str("consumer", msg.consumer);
	check_str("death_reason", msg.death_reason);
	FUZZ_CHECK(msg.body != NULL && msg.body_len == am.body.len && msg.body[msg.body_len] == '\0' &&
			   (msg.body_len == 0 || memcmp(msg.body, am.body.bytes, msg.body_len) == 0),
		   "body is not the one sent");
	empty_amqp_pool(&pool);	/* nothing of msg may point into it */

	ev = consumer_msg_event(&msg, why, sizeof(why));
	if (ev == NULL) {
		struct cqrs_event *e2 = NULL;

		FUZZ_CHECK(why[0] != '\0', "no event and no reason");
		FUZZ_CHECK(cqrs_envelope_decode(msg.body, msg.body_len, &e2, &err) != 0,
			   "no event from a valid envelope");
	} else {
		FUZZ_CHECK(cqrs_envelope_validate(ev, &err) == 0, "event does not validate: %s",
			   err.msg);
		consumer_routing_key(ev, key, sizeof(key));
		for (size_t i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++)
			check_match(patterns[i], key);
		check_match(msg.routing_key, key);
	}
	check_match(msg.routing_key, msg.type);

	consumer_dead_message(&msg, ev, &dead);
	check_str("dead message_id", dead.message_id);
	check_str("dead type", dead.type);
	check_str("dead stream", dead.stream);
	FUZZ_CHECK(dead.body == msg.body && dead.body_len == msg.body_len, "dead body");
	if (ev != NULL)
		FUZZ_CHECK(strcmp(dead.message_id, ev->id) == 0 && dead.version == ev->version,
			   "dead letter of an event with the headers' fields");

	cqrs_event_free(ev);
	cqrs_broker_msg_clear(&msg);
	return 0;
}

/*
 * gen_message_seeds.c - writes the seeds of fuzz_message into a directory,
 * in that target's input layout (fuzz_message.c), the properties encoded by
 * librabbitmq as a broker would send them. Not part of the build; after a
 * change here:
 *
 *   cc -o /tmp/gen tests/fuzz/gen_message_seeds.c -lrabbitmq &&
 *   /tmp/gen tests/fuzz/corpus/message
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <amqp.h>
#include <amqp_framing.h>

#define ENVELOPE                                                                            \
	"{\"id\":\"0190a7c4-5b6e-7d3f-8a2b-1c4d5e6f7a8b\",\"stream\":\"account-42\","        \
	"\"version\":4,\"position\":1234,\"type\":\"MoneyDeposited\",\"data\":{\"amount\":100}," \
	"\"metadata\":{},\"recorded_at\":\"2026-11-26T05:20:49.123456Z\"}"

static const char *dir;

static amqp_table_entry_t
str(const char *k, const char *v)
{
	amqp_table_entry_t e;

	e.key = amqp_cstring_bytes(k);
	e.value.kind = AMQP_FIELD_KIND_UTF8;
	e.value.value.bytes = amqp_cstring_bytes(v);
	return e;
}

static amqp_table_entry_t
i64(const char *k, int64_t v)
{
	amqp_table_entry_t e;

	e.key = amqp_cstring_bytes(k);
	e.value.kind = AMQP_FIELD_KIND_I64;
	e.value.value.i64 = v;
	return e;
}

static void
put(const char *name, const char *rk, amqp_basic_properties_t *p, const char *body, size_t blen)
{
	char path[512], buf[65536];
	amqp_bytes_t enc = { sizeof(buf) - 3 - 255, buf + 3 + 255 };
	size_t rkl = strlen(rk);
	int n = p != NULL ? amqp_encode_properties(AMQP_BASIC_CLASS, p, enc) : 0;
	FILE *f;

	if (n < 0) {
		fprintf(stderr, "%s: encode: %s\n", name, amqp_error_string2(n));
		exit(1);
	}
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (f == NULL) {
		perror(path);
		exit(1);
	}
	fputc((int)rkl, f);
	fwrite(rk, 1, rkl, f);
	fputc(n >> 8, f);
	fputc(n & 0xff, f);
	fwrite(enc.bytes, 1, (size_t)n, f);
	fwrite(body, 1, blen, f);
	fclose(f);
}

int
main(int argc, char **argv)
{
	amqp_basic_properties_t p;
	amqp_table_entry_t h[16], death[6], deep[2];
	amqp_field_value_t deaths[2], keys[1];

	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 2;
	}
	dir = argv[1];

	/* as the tracker publishes an event */
	memset(&p, 0, sizeof(p));
	p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
		   AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_HEADERS_FLAG;
	p.content_type = amqp_cstring_bytes("application/json");
	p.delivery_mode = 2;
	p.message_id = amqp_cstring_bytes("0190a7c4-5b6e-7d3f-8a2b-1c4d5e6f7a8b");
	p.type = amqp_cstring_bytes("MoneyDeposited");
	h[0] = str("stream", "account-42");
	h[1] = i64("version", 4);
	h[2] = i64("position", 1234);
	p.headers.num_entries = 3;
	p.headers.entries = h;
	put("event", "account.MoneyDeposited", &p, ENVELOPE, strlen(ENVELOPE));

	/* the same dead-lettered by a quorum queue, then by us */
	h[3] = i64("x-delivery-count", 6);
	h[4] = str("x-cqrs-reason", "handler failed: \"boom\"");
	h[5] = str("x-cqrs-failed-at", "2026-11-26T05:21:00.000001Z");
	h[6] = str("x-cqrs-consumer", "projections");
	death[0] = i64("count", 1);
	death[1] = str("reason", "delivery_limit");
	death[2] = str("queue", "cqrs.projections");
	death[3].key = amqp_cstring_bytes("time");
	death[3].value.kind = AMQP_FIELD_KIND_TIMESTAMP;
	death[3].value.value.u64 = 1795670460;
	death[4] = str("exchange", "cqrs.events");
	keys[0].kind = AMQP_FIELD_KIND_UTF8;
	keys[0].value.bytes = amqp_cstring_bytes("account.MoneyDeposited");
	death[5].key = amqp_cstring_bytes("routing-keys");
	death[5].value.kind = AMQP_FIELD_KIND_ARRAY;
	death[5].value.value.array.num_entries = 1;
	death[5].value.value.array.entries = keys;
	deaths[0].kind = AMQP_FIELD_KIND_TABLE;
	deaths[0].value.table.num_entries = 6;
	deaths[0].value.table.entries = death;
	deaths[1] = deaths[0];
	h[7].key = amqp_cstring_bytes("x-death");
	h[7].value.kind = AMQP_FIELD_KIND_ARRAY;
	h[7].value.value.array.num_entries = 2;
	h[7].value.value.array.entries = deaths;
	h[8] = str("x-first-death-reason", "delivery_limit");
	p.headers.num_entries = 9;
	put("dead-letter", "cqrs.projections", &p, ENVELOPE, strlen(ENVELOPE));

	/* a poison message: not an envelope, headers of other kinds, repeated */
	h[0].key = amqp_cstring_bytes("stream");
	h[0].value.kind = AMQP_FIELD_KIND_BYTES;
	h[0].value.value.bytes = amqp_cstring_bytes("acc\x01ount");
	h[1].key = amqp_cstring_bytes("version");
	h[1].value.kind = AMQP_FIELD_KIND_U8;
	h[1].value.value.u8 = 200;
	h[2].key = amqp_cstring_bytes("position");
	h[2].value.kind = AMQP_FIELD_KIND_U64;
	h[2].value.value.u64 = UINT64_MAX;
	h[3] = str("stream", "second");
	h[4].key = amqp_cstring_bytes("x-death");
	h[4].value.kind = AMQP_FIELD_KIND_TABLE;
	deep[0].key = amqp_cstring_bytes("d");
	deep[0].value.kind = AMQP_FIELD_KIND_F64;
	deep[0].value.value.f64 = 1.5;
	deep[1].key = amqp_cstring_bytes("b");
	deep[1].value.kind = AMQP_FIELD_KIND_BOOLEAN;
	deep[1].value.value.boolean = 1;
	h[4].value.value.table.num_entries = 2;
	h[4].value.value.table.entries = deep;
	h[5].key = amqp_cstring_bytes("x-delivery-count");
	h[5].value.kind = AMQP_FIELD_KIND_DECIMAL;
	h[5].value.value.decimal.decimals = 2;
	h[5].value.value.decimal.value = 12345;
	h[6].key = amqp_cstring_bytes("version");
	h[6].value.kind = AMQP_FIELD_KIND_VOID;
	p.headers.num_entries = 7;
	put("poison", "account.Garbage", &p, "{\"not\":\"an envelope\"", 21);

	/* x-death present but empty, an ID with a NUL */
	p._flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_HEADERS_FLAG;
	p.message_id.bytes = "id\0tail";
	p.message_id.len = 7;
	h[0].key = amqp_cstring_bytes("x-death");
	h[0].value.kind = AMQP_FIELD_KIND_ARRAY;
	h[0].value.value.array.num_entries = 0;
	h[0].value.value.array.entries = NULL;
	p.headers.num_entries = 1;
	put("empty-death", "#.*", &p, "", 0);

	/* nothing but a body */
	put("bare", "", NULL, ENVELOPE, strlen(ENVELOPE));
	return 0;
}

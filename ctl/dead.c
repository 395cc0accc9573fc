/*
 * dead.c - cqrsctl dead NAME: the dead letters of a consumer, and putting
 * them back.
 *
 * cqrs-consumer dead-letters an event to exchange cqrs.dead with its queue's
 * name as routing key, into queue QUEUE.dead (QUEUE: consumer.NAME.queue,
 * default cqrs.NAME), with the reason in header x-cqrs-reason; RabbitMQ
 * dead-letters there too the events that reached the queue's delivery limit
 * (the consumer died handling them), with an x-death header whose reason is
 * "delivery_limit".
 *
 * Listing takes every message with basic.get and does not ack them: closing
 * the channel puts them all back (the queue is classic, so this counts
 * nothing against them). --retry publishes the chosen ones to the consumer's
 * queue (default exchange, routing key = the queue) and acks them, in one
 * AMQP transaction, so each is either put back or still dead.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<rabbitmq-c/amqp.h>)
#define DEAD_NEW_HEADERS 1
#endif
#endif
#ifdef DEAD_NEW_HEADERS
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/ssl_socket.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#endif

#include <json-c/json.h>

#include "broker.h"
#include "config.h"
#include "ctl.h"

#define CH 1
#define TIMEOUT_S 10
#define MAX_LETTERS 1000000
#define SYSTEM_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

struct letter {
	uint64_t tag;
	char *id, *type, *stream, *reason, *failed_at, *consumer;
	int64_t version, position, deaths;
	amqp_bytes_t body;		/* owned copy */
	bool retry;
};

static char *
dup_bytes(amqp_bytes_t b)
{
	char *s = malloc(b.len + 1);

	if (s != NULL) {
		if (b.len > 0)
			memcpy(s, b.bytes, b.len);
		s[b.len] = '\0';
	}
	return s;
}

static bool
key_is(amqp_bytes_t key, const char *name)
{
	return key.len == strlen(name) && memcmp(key.bytes, name, key.len) == 0;
}

static int64_t
int_of(const amqp_field_value_t *v)
{
	switch (v->kind) {
	case AMQP_FIELD_KIND_I8: return v->value.i8;
	case AMQP_FIELD_KIND_U8: return v->value.u8;
	case AMQP_FIELD_KIND_I16: return v->value.i16;
	case AMQP_FIELD_KIND_U16: return v->value.u16;
	case AMQP_FIELD_KIND_I32: return v->value.i32;
	case AMQP_FIELD_KIND_U32: return v->value.u32;
	case AMQP_FIELD_KIND_I64: return v->value.i64;
	case AMQP_FIELD_KIND_U64: return (int64_t)v->value.u64;
	default: return 0;
	}
}

static bool
is_str(const amqp_field_value_t *v)
{
	return v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES;
}

static void
letter_clear(struct letter *l)
{
	free(l->id);
	free(l->type);
	free(l->stream);
	free(l->reason);
	free(l->failed_at);
	free(l->consumer);
	amqp_bytes_free(l->body);
	memset(l, 0, sizeof(*l));
}

/* What we show of a message: properties, our headers, x-death's reason. */
static void
read_letter(struct letter *l, const amqp_message_t *m)
{
	const amqp_basic_properties_t *p = &m->properties;
	char *death = NULL;

	if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
		l->id = dup_bytes(p->message_id);
	if (p->_flags & AMQP_BASIC_TYPE_FLAG)
		l->type = dup_bytes(p->type);
	if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
		for (int i = 0; i < p->headers.num_entries; i++) {
			const amqp_table_entry_t *e = &p->headers.entries[i];

			if (key_is(e->key, "stream") && is_str(&e->value))
				l->stream = dup_bytes(e->value.value.bytes);
			else if (key_is(e->key, "version"))
				l->version = int_of(&e->value);
			else if (key_is(e->key, "position"))
				l->position = int_of(&e->value);
			else if (key_is(e->key, "x-cqrs-reason") && is_str(&e->value))
				l->reason = dup_bytes(e->value.value.bytes);
			else if (key_is(e->key, "x-cqrs-failed-at") && is_str(&e->value))
				l->failed_at = dup_bytes(e->value.value.bytes);
			else if (key_is(e->key, "x-cqrs-consumer") && is_str(&e->value))
				l->consumer = dup_bytes(e->value.value.bytes);
			else if (key_is(e->key, "x-death") && e->value.kind == AMQP_FIELD_KIND_ARRAY &&
				 e->value.value.array.num_entries > 0 &&
				 e->value.value.array.entries[0].kind == AMQP_FIELD_KIND_TABLE) {
				const amqp_table_t *t = &e->value.value.array.entries[0].value.table;

				for (int j = 0; j < t->num_entries; j++) {
					if (key_is(t->entries[j].key, "reason") &&
					    is_str(&t->entries[j].value) && death == NULL)
						death = dup_bytes(t->entries[j].value.value.bytes);
					else if (key_is(t->entries[j].key, "count"))
						l->deaths = int_of(&t->entries[j].value);
					else if (key_is(t->entries[j].key, "time") &&
						 t->entries[j].value.kind == AMQP_FIELD_KIND_TIMESTAMP &&
						 l->failed_at == NULL) {
						time_t ts = (time_t)t->entries[j].value.value.u64;
						struct tm tm;
						char buf[32];

						gmtime_r(&ts, &tm);
						strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
						l->failed_at = strdup(buf);
					}
				}
			}
		}
	}
	if (l->reason == NULL && death != NULL) {
		if (strcmp(death, "delivery_limit") == 0) {
			if (asprintf(&l->reason, "delivery limit reached: the consumer stopped "
						 "without acking it too many times (did it crash on it?)") < 0)
				l->reason = NULL;
		} else if (asprintf(&l->reason, "dead-lettered by RabbitMQ: %s", death) < 0) {
			l->reason = NULL;
		}
	}
	free(death);
	l->body = amqp_bytes_malloc_dup(m->body);
}

/* ---- connection -------------------------------------------------------------------- */

struct conn {
	amqp_connection_state_t c;
	struct broker_url url;
};

static int
reply_fail(struct ctl *ctl, struct conn *cn, amqp_rpc_reply_t r, const char *step)
{
	char why[300];

	switch (r.reply_type) {
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		snprintf(why, sizeof(why), "%s", amqp_error_string2(r.library_error));
		break;
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			amqp_channel_close_t *m = r.reply.decoded;
			snprintf(why, sizeof(why), "%u %.*s", m->reply_code, (int)m->reply_text.len,
				 (char *)m->reply_text.bytes);
		} else if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
			amqp_connection_close_t *m = r.reply.decoded;
			snprintf(why, sizeof(why), "%u %.*s", m->reply_code, (int)m->reply_text.len,
				 (char *)m->reply_text.bytes);
		} else {
			snprintf(why, sizeof(why), "unexpected %s", amqp_method_name(r.reply.id));
		}
		break;
	default:
		snprintf(why, sizeof(why), "no reply");
	}
	return ctl_fail(ctl, "broker %s: %s: %s", cn->url.name, step, why);
}

static int
conn_open(struct ctl *ctl, struct conn *cn)
{
	const char *url = cqrs_config_get(ctl->cfg, "broker", "url", NULL);
	struct cqrs_err err = { 0 };
	struct timeval tv = { TIMEOUT_S, 0 };
	amqp_socket_t *sock;
	amqp_rpc_reply_t r;
	int st;

	memset(cn, 0, sizeof(*cn));
	if (cqrs_broker_url_parse(url, &cn->url, &err) < 0)
		return ctl_fail(ctl, "%s", err.msg);
	cn->c = amqp_new_connection();
	if (cn->c == NULL)
		return ctl_fail(ctl, "out of memory");
	sock = cn->url.tls ? amqp_ssl_socket_new(cn->c) : amqp_tcp_socket_new(cn->c);
	if (sock == NULL)
		return ctl_fail(ctl, "out of memory");
	if (cn->url.tls) {
		const char *ca = cqrs_config_get(ctl->cfg, "broker", "cacert", NULL);
		const char *cert = cqrs_config_get(ctl->cfg, "broker", "cert", NULL);
		const char *key = cqrs_config_get(ctl->cfg, "broker", "key", NULL);
		bool verify = true;

		if (cqrs_config_get_bool(ctl->cfg, "broker", "verify", true, &verify, &err) < 0)
			return ctl_fail(ctl, "%s", err.msg);
		if (ca == NULL && access(SYSTEM_CA_BUNDLE, R_OK) == 0)
			ca = SYSTEM_CA_BUNDLE;
		amqp_ssl_socket_set_verify_peer(sock, verify);
		amqp_ssl_socket_set_verify_hostname(sock, verify);
		if (ca != NULL && amqp_ssl_socket_set_cacert(sock, ca) != AMQP_STATUS_OK)
			return ctl_fail(ctl, "cannot load CA certificates from \"%s\"", ca);
		if (cert != NULL && key != NULL &&
		    amqp_ssl_socket_set_key(sock, cert, key) != AMQP_STATUS_OK)
			return ctl_fail(ctl, "cannot load the client certificate \"%s\"", cert);
	}
	st = amqp_socket_open_noblock(sock, cn->url.host, cn->url.port, &tv);
	if (st != AMQP_STATUS_OK)
		return ctl_fail(ctl, "broker %s: connect: %s", cn->url.name, amqp_error_string2(st));
	(void)amqp_set_handshake_timeout(cn->c, &tv);
	(void)amqp_set_rpc_timeout(cn->c, &tv);
	r = amqp_login(cn->c, cn->url.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, cn->url.user,
		       cn->url.password);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
		return reply_fail(ctl, cn, r, "login");
	amqp_channel_open(cn->c, CH);
	r = amqp_get_rpc_reply(cn->c);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
		return reply_fail(ctl, cn, r, "channel.open");
	return 0;
}

static void
conn_close(struct conn *cn)
{
	if (cn->c != NULL) {
		(void)amqp_channel_close(cn->c, CH, AMQP_REPLY_SUCCESS);
		(void)amqp_connection_close(cn->c, AMQP_REPLY_SUCCESS);
		amqp_destroy_connection(cn->c);
	}
	cqrs_broker_url_clear(&cn->url);
}

/* ---- the verb ---------------------------------------------------------------------- */

static const char *
nz(const char *s)
{
	return s != NULL ? s : "";
}

static void
print_letter(struct ctl *ctl, const struct letter *l, bool json)
{
	if (json) {
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "id", json_object_new_string(nz(l->id)));
		json_object_object_add(o, "stream", json_object_new_string(nz(l->stream)));
		json_object_object_add(o, "version", json_object_new_int64(l->version));
		json_object_object_add(o, "position", json_object_new_int64(l->position));
		json_object_object_add(o, "type", json_object_new_string(nz(l->type)));
		json_object_object_add(o, "reason", json_object_new_string(nz(l->reason)));
		json_object_object_add(o, "failed_at", json_object_new_string(nz(l->failed_at)));
		json_object_object_add(o, "deaths", json_object_new_int64(l->deaths));
		fprintf(ctl->out, "%s\n",
			json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
								  JSON_C_TO_STRING_NOSLASHESCAPE));
		json_object_put(o);
		return;
	}
	fprintf(ctl->out, "%s  %s version %" PRId64 "  %s  %s\n    reason: %s\n", nz(l->id),
		nz(l->stream), l->version, nz(l->type), nz(l->failed_at),
		l->reason != NULL ? l->reason : "(none given)");
}

/* Publishes l to queue through the default exchange, as the tracker would
 * have (minus the dead-letter headers). */
static int
put_back(struct conn *cn, const char *queue, const struct letter *l)
{
	amqp_basic_properties_t props;
	amqp_table_entry_t h[3];
	int n = 0;

	memset(&props, 0, sizeof(props));
	props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
	props.content_type = amqp_cstring_bytes("application/json");
	props.delivery_mode = 2;
	if (l->id != NULL) {
		props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
		props.message_id = amqp_cstring_bytes(l->id);
	}
	if (l->type != NULL) {
		props._flags |= AMQP_BASIC_TYPE_FLAG;
		props.type = amqp_cstring_bytes(l->type);
	}
	if (l->stream != NULL) {
		h[n].key = amqp_cstring_bytes("stream");
		h[n].value.kind = AMQP_FIELD_KIND_UTF8;
		h[n++].value.value.bytes = amqp_cstring_bytes(l->stream);
		h[n].key = amqp_cstring_bytes("version");
		h[n].value.kind = AMQP_FIELD_KIND_I64;
		h[n++].value.value.i64 = l->version;
		h[n].key = amqp_cstring_bytes("position");
		h[n].value.kind = AMQP_FIELD_KIND_I64;
		h[n++].value.value.i64 = l->position;
		props._flags |= AMQP_BASIC_HEADERS_FLAG;
		props.headers.num_entries = n;
		props.headers.entries = h;
	}
	return amqp_basic_publish(cn->c, CH, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0,
				  &props, l->body);
}

int
ctl_dead(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "retry", required_argument, NULL, 'r' },
		{ "all", no_argument, NULL, 'a' },
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 },
	};
	const struct ctl_verb *verb = NULL;
	const char *retry_id = NULL, *name;
	bool all = false, json = false;
	char section[160], *queue = NULL, *dead_queue = NULL;
	struct letter *letters = NULL;
	size_t n = 0, cap = 0, chosen = 0;
	struct conn cn = { 0 };
	amqp_rpc_reply_t r;
	int c, rc = 1;

	for (const struct ctl_verb *v = ctl_verbs; v->name != NULL; v++)
		if (strcmp(v->name, "dead") == 0)
			verb = v;
	optind = 0;		/* glibc: start over, this is a new argv */
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'r': retry_id = optarg; break;
		case 'a': all = true; break;
		case 'j': json = true; break;
		default: return ctl_usage(ctl, verb);
		}
	}
	if (optind != argc - 1 || (retry_id != NULL && all))
		return ctl_usage(ctl, verb);
	name = argv[optind];
	snprintf(section, sizeof(section), "consumer.%s", name);
	if (asprintf(&queue, "%s", cqrs_config_get(ctl->cfg, section, "queue", "")) < 0)
		return ctl_fail(ctl, "out of memory");
	if (queue[0] == '\0') {
		free(queue);
		if (asprintf(&queue, "cqrs.%s", name) < 0)
			return ctl_fail(ctl, "out of memory");
	}
	if (asprintf(&dead_queue, "%s.dead", queue) < 0) {
		free(queue);
		return ctl_fail(ctl, "out of memory");
	}
	if (conn_open(ctl, &cn) < 0)
		goto out;
	if (retry_id != NULL || all) {
		amqp_tx_select(cn.c, CH);
		r = amqp_get_rpc_reply(cn.c);
		if (r.reply_type != AMQP_RESPONSE_NORMAL) {
			reply_fail(ctl, &cn, r, "tx.select");
			goto out;
		}
	}
	/* take them all, unacked: they stay ours until acked or the channel
	 * closes */
	while (n < MAX_LETTERS) {
		amqp_message_t m;
		amqp_basic_get_ok_t *ok;

		r = amqp_basic_get(cn.c, CH, amqp_cstring_bytes(dead_queue), 0);
		if (r.reply_type != AMQP_RESPONSE_NORMAL) {
			reply_fail(ctl, &cn, r, "basic.get");
			if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION)
				fprintf(ctl->err, "cqrsctl: (does consumer \"%s\" exist? its dead "
						  "letters are in queue \"%s\")\n",
					name, dead_queue);
			goto out;
		}
		if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
			break;
		ok = r.reply.decoded;
		if (n == cap) {
			struct letter *v = realloc(letters, (cap = cap * 2 + 16) * sizeof(*v));

			if (v == NULL) {
				ctl_fail(ctl, "out of memory");
				goto out;
			}
			letters = v;
		}
		memset(&letters[n], 0, sizeof(letters[n]));
		letters[n].tag = ok->delivery_tag;
		r = amqp_read_message(cn.c, CH, &m, 0);
		if (r.reply_type != AMQP_RESPONSE_NORMAL) {
			reply_fail(ctl, &cn, r, "read message");
			goto out;
		}
		read_letter(&letters[n], &m);
		amqp_destroy_message(&m);
		n++;
		amqp_maybe_release_buffers(cn.c);
	}
	if (retry_id == NULL && !all) {
		for (size_t i = 0; i < n; i++)
			print_letter(ctl, &letters[i], json);
		if (!json)
			fprintf(ctl->out, "%zu dead letter%s in queue \"%s\"\n", n, n == 1 ? "" : "s",
				dead_queue);
		rc = 0;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (!all && (letters[i].id == NULL || strcmp(letters[i].id, retry_id) != 0))
			continue;
		if (put_back(&cn, queue, &letters[i]) != AMQP_STATUS_OK ||
		    amqp_basic_ack(cn.c, CH, letters[i].tag, 0) != AMQP_STATUS_OK) {
			ctl_fail(ctl, "broker %s: publish to \"%s\" failed", cn.url.name, queue);
			goto out;
		}
		letters[i].retry = true;
		chosen++;
	}
	if (chosen == 0 && !all) {
		ctl_fail(ctl, "no dead letter with id %s in queue \"%s\"", retry_id, dead_queue);
		goto out;
	}
	amqp_tx_commit(cn.c, CH);
	r = amqp_get_rpc_reply(cn.c);
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		reply_fail(ctl, &cn, r, "tx.commit");
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		if (letters[i].retry && !json)
			fprintf(ctl->out, "put back %s (%s version %" PRId64 ")\n", nz(letters[i].id),
				nz(letters[i].stream), letters[i].version);
	fprintf(ctl->out, "%zu dead letter%s put back into queue \"%s\"\n", chosen,
		chosen == 1 ? "" : "s", queue);
	rc = 0;
out:
	conn_close(&cn);
	for (size_t i = 0; i < n; i++)
		letter_clear(&letters[i]);
	free(letters);
	free(queue);
	free(dead_queue);
	return rc;
}

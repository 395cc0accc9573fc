/* test_tracker_broker.c - the broker unit (common/broker.c) against a real RabbitMQ. */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<rabbitmq-c/amqp.h>)
#define TEST_NEW_HEADERS 1
#endif
#endif
#ifdef TEST_NEW_HEADERS
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif
#include <json-c/json.h>

#include "broker.h"
#include "config.h"
#include "cqrs/log.h"
#include "envelope.h"
#include "fixture.h"
#include "proc.h"
#include "rabbit.h"
#include "uuid.h"

static struct broker *
connect_ok(const struct broker_options *opt)
{
	struct broker *b = NULL;
	struct cqrs_err err = { 0 };

	if (cqrs_broker_connect(fixture_broker_url(), opt, &b, &err) < 0)
		ck_abort_msg("cqrs_broker_connect: %s", err.msg);
	if (cqrs_broker_declare_topology(b, &err) < 0)
		ck_abort_msg("declare: %s", err.msg);
	return b;
}

/* A unique aggregate type for this test's streams. */
static const char *
unique_type(void)
{
	static char buf[64];

	snprintf(buf, sizeof(buf), "bt%d%ld", (int)getpid(), random() % 100000);
	return buf;
}

START_TEST(url_parsing)
{
	struct broker_url u;
	struct cqrs_err err = { 0 };

	ck_assert_int_eq(cqrs_broker_url_parse("amqp://u%40x:p%3Aw@host.example:1234/%2f", &u, &err), 0);
	ck_assert_str_eq(u.user, "u@x");
	ck_assert_str_eq(u.password, "p:w");
	ck_assert_str_eq(u.host, "host.example");
	ck_assert_int_eq(u.port, 1234);
	ck_assert_str_eq(u.vhost, "/");
	ck_assert(!u.tls);
	ck_assert_str_eq(u.name, "host.example:1234/%2f");
	cqrs_broker_url_clear(&u);

	/* no path: vhost "/", default port and user */
	ck_assert_int_eq(cqrs_broker_url_parse("amqp://h", &u, &err), 0);
	ck_assert_str_eq(u.vhost, "/");
	ck_assert_int_eq(u.port, 5672);
	ck_assert_str_eq(u.user, "guest");
	cqrs_broker_url_clear(&u);

	ck_assert_int_eq(cqrs_broker_url_parse("amqps://h/prod", &u, &err), 0);
	ck_assert(u.tls);
	ck_assert_int_eq(u.port, 5671);
	ck_assert_str_eq(u.vhost, "prod");
	ck_assert_str_eq(u.name, "h:5671/prod");
	cqrs_broker_url_clear(&u);

	/* "/" then nothing: the empty vhost, as the spec says */
	ck_assert_int_eq(cqrs_broker_url_parse("amqp://h/", &u, &err), 0);
	ck_assert_str_eq(u.vhost, "");
	cqrs_broker_url_clear(&u);

	ck_assert_int_eq(cqrs_broker_url_parse("http://h/", &u, &err), CQRS_ECONFIG);
	ck_assert_int_eq(cqrs_broker_url_parse("amqp://h:port/", &u, &err), CQRS_ECONFIG);
	ck_assert_int_eq(cqrs_broker_url_parse("amqp://h/a/b", &u, &err), CQRS_ECONFIG);
	ck_assert_int_eq(cqrs_broker_url_parse("amqp://h/x?heartbeat=5", &u, &err), CQRS_ECONFIG);
	ck_assert_int_eq(cqrs_broker_url_parse("amqp://u:secret@h:99999/", &u, &err), CQRS_ECONFIG);
	ck_assert_msg(strstr(err.msg, "secret") == NULL, "password in \"%s\"", err.msg);
	ck_assert_int_eq(cqrs_broker_url_parse("", &u, &err), CQRS_ECONFIG);
	ck_assert_int_eq(cqrs_broker_url_parse(NULL, &u, &err), CQRS_ECONFIG);
}
END_TEST

/* [broker], read once for the tracker, the consumer and cqrsctl dead: each
 * wrong key is refused by name, at load, and the options follow the keys. */
START_TEST(broker_section)
{
	static const struct {
		const char *text, *needle;
	} bad[] = {
		{ "[broker]\nheartbeat = 5\n", "broker.url is not set" },
		{ "[broker]\nurl =\n", "broker.url is not set" },
		{ "[broker]\nurl = http://h/\n", "amqp:// or amqps://" },
		{ "[broker]\nurl = amqp://h\nheartbeat = 3601\n", "heartbeat" },
		{ "[broker]\nurl = amqp://h\nverify = sometimes\n", "verify" },
		{ "[broker]\nurl = amqps://h\ncert = /c.pem\n", "broker.cert and broker.key" },
		{ "[broker]\nurl = amqps://h\nkey = /k.pem\n", "broker.cert and broker.key" },
	};
	struct broker_config bc;
	struct broker_options o;
	struct config *cfg;
	struct cqrs_err err = { 0 };

	unsetenv("CQRS_BROKER_URL");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_int_eq(cqrs_config_load_string(bad[i].text, "t.conf", &cfg, &err), 0);
		err.msg[0] = '\0';
		ck_assert_int_eq(cqrs_broker_config_load(cfg, &bc, &err), CQRS_ECONFIG);
		ck_assert_msg(strstr(err.msg, bad[i].needle) != NULL, "case %zu: %s", i, err.msg);
		ck_assert_ptr_null(bc.url);
		cqrs_config_free(cfg);
	}
	ck_assert_int_eq(cqrs_config_load_string("[broker]\nurl = amqps://u:p@h/v\nheartbeat = 7\n"
						 "verify = no\ncacert = /ca.pem\ncert = /c.pem\n"
						 "key = /k.pem\n",
						 "t.conf", &cfg, &err),
			 0);
	ck_assert_int_eq(cqrs_broker_config_load(cfg, &bc, &err), 0);
	cqrs_config_free(cfg);
	cqrs_broker_config_options(&bc, &o);
	ck_assert_str_eq(bc.url, "amqps://u:p@h/v");
	ck_assert_int_eq(o.heartbeat_s, 7);
	ck_assert(!o.verify);
	ck_assert_str_eq(o.cacert, "/ca.pem");
	ck_assert_str_eq(o.cert, "/c.pem");
	ck_assert_str_eq(o.key, "/k.pem");
	ck_assert(o.confirms);	/* the rest are the defaults */
	cqrs_broker_config_clear(&bc);
	/* and the defaults, with the URL from the environment */
	setenv("CQRS_BROKER_URL", "amqp://h", 1);
	ck_assert_int_eq(cqrs_config_load_string("", "t.conf", &cfg, &err), 0);
	unsetenv("CQRS_BROKER_URL");
	ck_assert_int_eq(cqrs_broker_config_load(cfg, &bc, &err), 0);
	cqrs_config_free(cfg);
	cqrs_broker_config_options(&bc, &o);
	ck_assert_str_eq(bc.url, "amqp://h");
	ck_assert_int_eq(o.heartbeat_s, 30);
	ck_assert(o.verify);
	ck_assert_ptr_null(o.cacert);
	ck_assert_ptr_null(o.cert);
	cqrs_broker_config_clear(&bc);
}
END_TEST

START_TEST(routing_keys)
{
	char buf[BROKER_SHORTSTR_MAX + 1], stream[400], type[201];

	cqrs_broker_routing_key("account-42", "MoneyDeposited", buf, sizeof(buf));
	ck_assert_str_eq(buf, "account.MoneyDeposited");
	cqrs_broker_routing_key("order-a-b-c", "Placed", buf, sizeof(buf));
	ck_assert_str_eq(buf, "order.Placed");
	cqrs_broker_routing_key("lonely", "T", buf, sizeof(buf));
	ck_assert_str_eq(buf, "lonely.T");
	memset(stream, 'a', 250);
	strcpy(stream + 250, "-1");
	memset(type, 'T', 200);
	type[200] = '\0';
	cqrs_broker_routing_key(stream, type, buf, sizeof(buf));
	ck_assert_int_eq(strlen(buf), BROKER_SHORTSTR_MAX);
}
END_TEST

START_TEST(connect_errors_name_broker_and_step)
{
	struct broker *b = NULL;
	struct cqrs_err err = { 0 };
	char url[256], name[64];

	/* nothing listens on port 1 */
	ck_assert_int_eq(cqrs_broker_connect("amqp://cqrs:hunter2@127.0.0.1:1/%2f", NULL, &b, &err),
			 CQRS_EUNAVAILABLE);
	ck_assert_ptr_null(b);
	ck_assert_msg(strstr(err.msg, "127.0.0.1:1/%2f") && strstr(err.msg, "connect"), "%s", err.msg);
	ck_assert_msg(strstr(err.msg, "hunter2") == NULL, "%s", err.msg);

	/* wrong password */
	snprintf(url, sizeof(url), "amqp://cqrs:wrongpass@127.0.0.1:%d/%%2f", fixture_rabbit_port());
	snprintf(name, sizeof(name), "127.0.0.1:%d/%%2f", fixture_rabbit_port());
	ck_assert_int_eq(cqrs_broker_connect(url, NULL, &b, &err), CQRS_EUNAVAILABLE);
	ck_assert_msg(strstr(err.msg, name) && strstr(err.msg, "login") && strstr(err.msg, "\"cqrs\""),
		      "%s", err.msg);
	ck_assert_msg(strstr(err.msg, "wrongpass") == NULL, "%s", err.msg);

	/* no such vhost */
	snprintf(url, sizeof(url), "amqp://cqrs:cqrs@127.0.0.1:%d/nowhere", fixture_rabbit_port());
	ck_assert_int_lt(cqrs_broker_connect(url, NULL, &b, &err), 0);
	ck_assert_msg(strstr(err.msg, "/nowhere"), "%s", err.msg);

	/* TLS to a plain port: the handshake fails, with the step named */
	snprintf(url, sizeof(url), "amqps://cqrs:cqrs@127.0.0.1:%d/%%2f", fixture_rabbit_port());
	{
		struct broker_options o;
		cqrs_broker_options_default(&o);
		o.connect_timeout_ms = 3000;
		ck_assert_int_lt(cqrs_broker_connect(url, &o, &b, &err), 0);
		ck_assert_msg(strstr(err.msg, "TLS"), "%s", err.msg);
	}
}
END_TEST

/* A file of mode, holding text, in dir; its path (static buffer). */
static const char *
secret_file(const char *dir, const char *name, const char *text, mode_t mode)
{
	static char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
	ck_assert_int_eq(chmod(path, mode), 0);
	return path;
}

/* Connects with [broker] text (%d: the test node's port); 0 or the error. */
static int
connect_with(const char *text_fmt, struct cqrs_err *err)
{
	char text[1024];
	struct broker_config bc;
	struct broker_options o;
	struct broker *b = NULL;
	struct config *cfg;
	int rc;

	snprintf(text, sizeof(text), text_fmt, fixture_rabbit_port());
	ck_assert_int_eq(cqrs_config_load_string(text, "t.conf", &cfg, err), 0);
	rc = cqrs_broker_config_load(cfg, &bc, err);
	cqrs_config_free(cfg);
	if (rc < 0)
		return rc;
	cqrs_broker_config_options(&bc, &o);
	o.connect_timeout_ms = 10000;
	rc = cqrs_broker_connect(bc.url, &o, &b, err);
	cqrs_broker_free(b);
	cqrs_broker_config_clear(&bc);
	return rc;
}

/* The password from a file or a systemd credential, not from the URL (which
 * cqrs.conf holds, readable by the daemons' group). */
START_TEST(broker_password_from_a_file)
{
	char *dir = fixture_tmpdir(), *log = NULL;
	struct cqrs_err err = { 0 };
	char path[600], logpath[600];
	FILE *lf;
	size_t n;

	snprintf(logpath, sizeof(logpath), "%s/log", dir);
	/* the URL alone has no password (librabbitmq says "guest"): refused */
	ck_assert_int_lt(connect_with("[broker]\nurl = amqp://cqrs@127.0.0.1:%d/%%2f\n", &err), 0);
	ck_assert_msg(strstr(err.msg, "login") != NULL, "%s", err.msg);

	/* an absolute path */
	snprintf(path, sizeof(path), "%s", secret_file(dir, "pw", "cqrs\n", 0600));
	{
		char text[1024];
		snprintf(text, sizeof(text), "[broker]\nurl = amqp://cqrs@127.0.0.1:%%d/%%%%2f\n"
			 "password_file = %s\n", path);
		ck_assert_msg(connect_with(text, &err) == 0, "%s", err.msg);
		/* the file's password wins over the URL's */
		snprintf(text, sizeof(text), "[broker]\nurl = amqp://cqrs:wrong@127.0.0.1:%%d/%%%%2f\n"
			 "password_file = %s\n", path);
		ck_assert_msg(connect_with(text, &err) == 0, "%s", err.msg);
	}

	/* a systemd credential: a bare name in $CREDENTIALS_DIRECTORY */
	secret_file(dir, "broker-password", "cqrs", 0600);
	unsetenv("CREDENTIALS_DIRECTORY");
	ck_assert_int_eq(connect_with("[broker]\nurl = amqp://cqrs@127.0.0.1:%d/%%2f\n"
				      "password_file = broker-password\n", &err), CQRS_ECONFIG);
	ck_assert_msg(strstr(err.msg, "$CREDENTIALS_DIRECTORY is not set") != NULL, "%s", err.msg);
	setenv("CREDENTIALS_DIRECTORY", dir, 1);
	ck_assert_msg(connect_with("[broker]\nurl = amqp://cqrs@127.0.0.1:%d/%%2f\n"
				   "password_file = broker-password\n", &err) == 0, "%s", err.msg);
	ck_assert_int_eq(connect_with("[broker]\nurl = amqp://cqrs@127.0.0.1:%d/%%2f\n"
				      "password_file = ../broker-password\n", &err), CQRS_ECONFIG);
	ck_assert_int_eq(connect_with("[broker]\nurl = amqp://cqrs@127.0.0.1:%d/%%2f\n"
				      "password_file = missing\n", &err), CQRS_ECONFIG);
	ck_assert_msg(strstr(err.msg, "cannot read") != NULL, "%s", err.msg);
	secret_file(dir, "empty", "\n", 0600);
	ck_assert_int_eq(connect_with("[broker]\nurl = amqp://cqrs@127.0.0.1:%d/%%2f\n"
				      "password_file = empty\n", &err), CQRS_ECONFIG);
	ck_assert_msg(strstr(err.msg, "is empty") != NULL, "%s", err.msg);

	/* a file others may read works, with a warning that names it */
	secret_file(dir, "open", "cqrs\n", 0644);
	lf = fopen(logpath, "w+");
	ck_assert_ptr_nonnull(lf);
	cqrs_log_set_output(lf, 0);
	ck_assert_msg(connect_with("[broker]\nurl = amqp://cqrs@127.0.0.1:%d/%%2f\n"
				   "password_file = open\n", &err) == 0, "%s", err.msg);
	cqrs_log_set_output(stderr, -1);
	fclose(lf);
	log = fixture_read_file(logpath);
	n = strlen(log);
	ck_assert_msg(n > 0 && strstr(log, "broker.password_file") && strstr(log, "/open holds a "
		      "password and can be read by anyone (mode 0644)"), "%s", log);
	ck_assert_msg(strstr(log, "cqrs\n") == NULL, "the password is in the log: %s", log);
	free(log);
	unsetenv("CREDENTIALS_DIRECTORY");
	free(dir);
}
END_TEST

/* The least-privilege users of the dev node (deploy/dev/rabbitmq.sh, as
 * docs/deploy.md sets them up): a consumer's user can never publish an
 * event, the tracker's can publish events and read nothing. */
START_TEST(broker_users_hold_only_their_rights)
{
	struct broker *b = NULL;
	struct cqrs_err err = { 0 };
	struct broker_message m = { .routing_key = "account.MoneyDeposited", .body = "{}",
				    .body_len = 2 };
	struct broker_msg msg;
	char url[256];
	int rc;

	/* the consumer's user: its exchange declarations pass, a publish to
	 * cqrs.events is refused by the broker */
	snprintf(url, sizeof(url), "amqp://cqrs-consumer:cqrs-consumer@127.0.0.1:%d/%%2f",
		 fixture_rabbit_port());
	ck_assert_msg(cqrs_broker_connect(url, NULL, &b, &err) == 0, "%s", err.msg);
	ck_assert_msg(cqrs_broker_declare_topology(b, &err) == 0, "%s", err.msg);
	rc = cqrs_broker_publish(b, &m, NULL, &err);
	if (rc == 0)
		rc = cqrs_broker_wait_confirms(b, 0, 10000, &err);
	ck_assert_msg(rc < 0 && strstr(err.msg, "ACCESS_REFUSED") != NULL,
		      "the consumer's user published to cqrs.events: %d %s", rc, err.msg);
	cqrs_broker_free(b);
	b = NULL;

	/* the tracker's user: publishes, and reads no queue */
	snprintf(url, sizeof(url), "amqp://cqrs-tracker:cqrs-tracker@127.0.0.1:%d/%%2f",
		 fixture_rabbit_port());
	ck_assert_msg(cqrs_broker_connect(url, NULL, &b, &err) == 0, "%s", err.msg);
	ck_assert_msg(cqrs_broker_declare_topology(b, &err) == 0, "%s", err.msg);
	ck_assert_msg(cqrs_broker_publish(b, &m, NULL, &err) == 0 &&
		      cqrs_broker_wait_confirms(b, 0, 10000, &err) == 0, "%s", err.msg);
	rc = cqrs_broker_get(b, "cqrs.projections", &msg, &err);
	ck_assert_msg(rc < 0 && strstr(err.msg, "ACCESS_REFUSED") != NULL,
		      "the tracker's user read a queue: %d %s", rc, err.msg);
	cqrs_broker_free(b);
}
END_TEST

START_TEST(publish_properties_exactly)
{
	struct broker *b = connect_ok(NULL);
	struct rabbit_collector *col = rabbit_collector_new(NULL, "#");
	struct cqrs_err err = { 0 };
	const char *type = unique_type();
	char stream[128], id[UUID_STR_LEN], *body;
	struct json_object *data =
		json_tokener_parse("{\"amount\":9007199254740993,\"note\":\"\\u00e9\"}");
	struct json_object *meta = json_tokener_parse("{\"correlation_id\":\"c-1\"}");
	struct cqrs_event *ev;
	const struct rabbit_msg *m;
	size_t n;
	uint64_t tag = 0;

	snprintf(stream, sizeof(stream), "%s-42", type);
	cqrs_uuid_v4(id);
	ev = cqrs_event_new(id, stream, 7, 1234567890123LL, "MoneyDeposited", data, meta,
		       "2026-11-26T05:20:49.123456Z");
	ck_assert_ptr_nonnull(ev);
	ck_assert_int_eq(cqrs_broker_publish_event(b, ev, &tag, &err), 0);
	ck_assert_uint_eq(tag, 1);
	ck_assert_uint_eq(cqrs_broker_unconfirmed(b), 1);
	ck_assert_msg(cqrs_broker_wait_confirms(b, 0, 10000, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(cqrs_broker_unconfirmed(b), 0);

	ck_assert_uint_eq(rabbit_collector_wait(col, type, 1, 10000), 1);
	m = rabbit_collector_msgs(col, &n);
	while (strcmp(m->stream, stream) != 0)
		m++;
	body = cqrs_envelope_encode(ev);
	ck_assert_str_eq(m->exchange, "cqrs.events");
	{
		char key[200];
		snprintf(key, sizeof(key), "%s.MoneyDeposited", type);
		ck_assert_str_eq(m->routing_key, key);
	}
	ck_assert_str_eq(m->message_id, id);
	ck_assert_str_eq(m->type, "MoneyDeposited");
	ck_assert_str_eq(m->content_type, "application/json");
	ck_assert_int_eq(m->delivery_mode, 2);
	ck_assert_int_eq(m->nheaders, 3);
	ck_assert_int_eq(m->stream_kind, 'S');
	ck_assert_int_eq(m->version_kind, 'l');
	ck_assert_int_eq(m->position_kind, 'l');
	ck_assert_int_eq(m->version, 7);
	ck_assert_int_eq(m->position, 1234567890123LL);
	ck_assert_str_eq(m->body, body);
	/* and the body is an envelope a consumer can decode */
	{
		struct cqrs_event *back = NULL;
		ck_assert_int_eq(cqrs_envelope_decode(m->body, m->body_len, &back, &err), 0);
		ck_assert_str_eq(back->id, id);
		cqrs_event_free(back);
	}
	free(body);
	cqrs_event_free(ev);
	json_object_put(data);
	json_object_put(meta);
	rabbit_collector_free(col);
	cqrs_broker_free(b);
}
END_TEST

START_TEST(many_in_flight_then_confirms)
{
	struct broker *b = connect_ok(NULL);
	struct rabbit_collector *col = rabbit_collector_new(NULL, "#");
	struct cqrs_err err = { 0 };
	const char *type = unique_type();
	char stream[128], body[64], id[UUID_STR_LEN], key[128];
	uint64_t tag = 0, mid = 0;

	snprintf(stream, sizeof(stream), "%s-1", type);
	snprintf(key, sizeof(key), "%s.Ping", type);
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 2000; i++) {
			struct broker_message m = {
				.routing_key = key, .body = body, .message_id = id, .type = "Ping",
				.stream = stream, .version = round * 2000 + i + 1, .position = i,
			};
			cqrs_uuid_v4(id);
			m.body_len = (size_t)snprintf(body, sizeof(body), "{\"i\":%d}", i);
			ck_assert_msg(cqrs_broker_publish(b, &m, &tag, &err) == 0, "%s", err.msg);
			if (i == 999)
				mid = tag;
		}
		/* the first half, then everything */
		ck_assert_msg(cqrs_broker_wait_confirms(b, mid, 20000, &err) == 0, "%s", err.msg);
		ck_assert_uint_le(cqrs_broker_unconfirmed(b), 1000);
		ck_assert_msg(cqrs_broker_wait_confirms(b, 0, 20000, &err) == 0, "%s", err.msg);
		ck_assert_uint_eq(cqrs_broker_unconfirmed(b), 0);
		ck_assert_uint_eq(tag, (uint64_t)(round + 1) * 2000);
	}
	ck_assert_uint_eq(rabbit_collector_wait(col, type, 6000, 30000), 6000);
	rabbit_collector_free(col);
	cqrs_broker_free(b);
}
END_TEST

/* A raw AMQP connection for setting up what the broker unit must not do. */
static amqp_connection_state_t
raw_conn(void)
{
	amqp_connection_state_t c = amqp_new_connection();
	amqp_socket_t *s = amqp_tcp_socket_new(c);

	ck_assert_int_eq(amqp_socket_open(s, "127.0.0.1", fixture_rabbit_port()), 0);
	ck_assert_int_eq(amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "cqrs", "cqrs")
				 .reply_type, AMQP_RESPONSE_NORMAL);
	amqp_channel_open(c, 1);
	ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
	return c;
}

START_TEST(nack_is_an_error)
{
	amqp_connection_state_t raw = raw_conn();
	struct broker *b = connect_ok(NULL);
	struct cqrs_err err = { 0 };
	char exch[64], queue[64];
	amqp_table_entry_t args[2];
	amqp_table_t t = { 2, args };
	struct broker_message m = { .routing_key = "full", .body = "{}", .body_len = 2,
				    .message_id = "m1", .type = "T", .stream = "s-1",
				    .version = 1, .position = 1 };
	int rc;

	/* a queue that refuses every message: the broker nacks what goes there */
	snprintf(exch, sizeof(exch), "cqrs-test.nack.%d", (int)getpid());
	snprintf(queue, sizeof(queue), "cqrs-test.full.%d", (int)getpid());
	amqp_exchange_declare(raw, 1, amqp_cstring_bytes(exch), amqp_cstring_bytes("direct"), 0, 0,
			      1, 0, amqp_empty_table);
	ck_assert_int_eq(amqp_get_rpc_reply(raw).reply_type, AMQP_RESPONSE_NORMAL);
	args[0].key = amqp_cstring_bytes("x-max-length");
	args[0].value.kind = AMQP_FIELD_KIND_I32;
	args[0].value.value.i32 = 0;
	args[1].key = amqp_cstring_bytes("x-overflow");
	args[1].value.kind = AMQP_FIELD_KIND_UTF8;
	args[1].value.value.bytes = amqp_cstring_bytes("reject-publish");
	amqp_queue_declare(raw, 1, amqp_cstring_bytes(queue), 0, 0, 0, 1, t);
	ck_assert_int_eq(amqp_get_rpc_reply(raw).reply_type, AMQP_RESPONSE_NORMAL);
	amqp_queue_bind(raw, 1, amqp_cstring_bytes(queue), amqp_cstring_bytes(exch),
			amqp_cstring_bytes("full"), amqp_empty_table);
	ck_assert_int_eq(amqp_get_rpc_reply(raw).reply_type, AMQP_RESPONSE_NORMAL);

	m.exchange = exch;
	ck_assert_int_eq(cqrs_broker_publish(b, &m, NULL, &err), 0);
	rc = cqrs_broker_wait_confirms(b, 0, 10000, &err);
	ck_assert_int_eq(rc, CQRS_EINTERNAL);
	ck_assert_msg(strstr(err.msg, "nack") && strstr(err.msg, "confirm"), "%s", err.msg);
	ck_assert(!cqrs_broker_ok(b));
	/* broken: everything fails at once */
	ck_assert_int_eq(cqrs_broker_publish(b, &m, NULL, &err), CQRS_EUNAVAILABLE);
	cqrs_broker_free(b);

	amqp_queue_delete(raw, 1, amqp_cstring_bytes(queue), 0, 0);
	amqp_exchange_delete(raw, 1, amqp_cstring_bytes(exch), 0);
	amqp_connection_close(raw, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(raw);
}
END_TEST

START_TEST(channel_close_is_an_error)
{
	struct broker *b = connect_ok(NULL);
	struct cqrs_err err = { 0 };
	struct broker_message m = { .exchange = "cqrs-test.no-such-exchange", .routing_key = "k",
				    .body = "{}", .body_len = 2, .message_id = "m1", .type = "T",
				    .stream = "s-1", .version = 1, .position = 1 };

	ck_assert_int_eq(cqrs_broker_publish(b, &m, NULL, &err), 0);
	ck_assert_int_eq(cqrs_broker_wait_confirms(b, 0, 10000, &err), CQRS_EINTERNAL);
	ck_assert_msg(strstr(err.msg, "404") && strstr(err.msg, "channel closed"), "%s", err.msg);
	ck_assert(!cqrs_broker_ok(b));
	ck_assert_int_eq(cqrs_broker_fd(b), -1);
	cqrs_broker_free(b);
}
END_TEST

START_TEST(topology_is_idempotent)
{
	struct broker *b = connect_ok(NULL);
	struct cqrs_err err = { 0 };

	ck_assert_int_eq(cqrs_broker_declare_topology(b, &err), 0);
	ck_assert_int_eq(cqrs_broker_declare_topology(b, &err), 0);
	ck_assert(cqrs_broker_ok(b));
	ck_assert_int_ge(cqrs_broker_fd(b), 0);
	cqrs_broker_free(b);
}
END_TEST

static pid_t
rabbit_vm_pid(void)
{
	char path[300];
	FILE *f;
	int pid = 0;

	snprintf(path, sizeof(path), "%s/rabbitmq.pid", fixture_rabbit_dir());
	f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fscanf(f, "%d", &pid), 1);
	fclose(f);
	return pid;
}

/* Heartbeats keep an idle connection up, and find a frozen broker. */
START_TEST(heartbeats)
{
	struct broker_options o;
	struct broker *b;
	struct cqrs_err err = { 0 };
	pid_t vm = rabbit_vm_pid();
	long long start;
	int rc = 0;

	cqrs_broker_options_default(&o);
	o.heartbeat_s = 1;
	b = connect_ok(&o);
	/* idle 3 s (3 heartbeat intervals), polling: still fine */
	for (int i = 0; i < 12; i++) {
		usleep(250000);
		ck_assert_msg(cqrs_broker_poll(b, &err) == 0, "%s", err.msg);
	}
	ck_assert(cqrs_broker_ok(b));

	/* the broker freezes: two missed heartbeats and the poll says so */
	ck_assert_int_eq(kill(vm, SIGSTOP), 0);
	start = proc_now_ms();
	while (proc_now_ms() - start < 6000) {
		usleep(100000);
		if ((rc = cqrs_broker_poll(b, &err)) < 0)
			break;
	}
	kill(vm, SIGCONT);
	ck_assert_int_eq(rc, CQRS_EUNAVAILABLE);
	ck_assert_msg(strstr(err.msg, "heartbeat"), "%s", err.msg);
	ck_assert(!cqrs_broker_ok(b));
	cqrs_broker_free(b);
}
END_TEST

static Suite *
broker_suite(void)
{
	Suite *s = suite_create("tracker_broker");
	TCase *tc = tcase_create("broker");

	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, url_parsing);
	tcase_add_test(tc, broker_section);
	tcase_add_test(tc, routing_keys);
	tcase_add_test(tc, connect_errors_name_broker_and_step);
	tcase_add_test(tc, broker_password_from_a_file);
	tcase_add_test(tc, broker_users_hold_only_their_rights);
	tcase_add_test(tc, publish_properties_exactly);
	tcase_add_test(tc, many_in_flight_then_confirms);
	tcase_add_test(tc, nack_is_an_error);
	tcase_add_test(tc, channel_close_is_an_error);
	tcase_add_test(tc, topology_is_idempotent);
	tcase_add_test(tc, heartbeats);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr;
	int failed;

	/* start the broker (if run by hand) once, here, not in every forked test */
	fixture_broker_url();
	sr = srunner_create(broker_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

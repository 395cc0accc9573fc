/*
 * broker_config.c - the [broker] section, read once for every program that
 * talks to RabbitMQ (cqrs-tracker, cqrs-consumer, cqrsctl dead):
 *
 *   [broker]
 *   url = amqp://user:pass@host:5672/vhost    (or CQRS_BROKER_URL)
 *   heartbeat = 30            seconds, 0 to 3600 (0: none)
 *   verify = true             amqps: check the server's certificate and name
 *   cacert = FILE             amqps: CA bundle (default: the system's)
 *   cert = FILE, key = FILE   amqps: client certificate, both or neither
 *   password_file = FILE      the password, instead of the URL's: an absolute
 *                             path or a systemd credential's name (secret.h)
 *
 * A URL that does not parse is refused here, at start-up, rather than
 * retried for ever by a reconnect loop.
 */
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "config.h"
#include "secret.h"

static int
dup_opt(const char *s, char **out)
{
	*out = NULL;
	if (s == NULL || s[0] == '\0')
		return 0;
	return (*out = strdup(s)) != NULL ? 0 : -1;
}

int
cqrs_broker_config_load(const struct config *cfg, struct broker_config *out,
			struct cqrs_err *err)
{
	struct broker_url u;
	int64_t v;
	int rc;

	memset(out, 0, sizeof(*out));
	if (dup_opt(cqrs_config_get(cfg, "broker", "url", NULL), &out->url) < 0)
		goto nomem;
	if (out->url == NULL) {
		rc = cqrs_err_set(err, CQRS_ECONFIG,
				  "broker.url is not set ([broker] url, or CQRS_BROKER_URL)");
		goto bad;
	}
	if ((rc = cqrs_broker_url_parse(out->url, &u, err)) < 0)
		goto bad;
	cqrs_broker_url_clear(&u);
	if ((rc = cqrs_config_get_int(cfg, "broker", "heartbeat", 30, 0, 3600, &v, err)) < 0)
		goto bad;
	out->heartbeat_s = (int)v;
	if ((rc = cqrs_config_get_bool(cfg, "broker", "verify", true, &out->verify, err)) < 0)
		goto bad;
	if (dup_opt(cqrs_config_get(cfg, "broker", "cacert", NULL), &out->cacert) < 0 ||
	    dup_opt(cqrs_config_get(cfg, "broker", "cert", NULL), &out->cert) < 0 ||
	    dup_opt(cqrs_config_get(cfg, "broker", "key", NULL), &out->key) < 0)
		goto nomem;
	if ((out->cert == NULL) != (out->key == NULL)) {
		rc = cqrs_err_set(err, CQRS_ECONFIG, "broker.cert and broker.key go together");
		goto bad;
	}
	{
		const char *pf = cqrs_config_get(cfg, "broker", "password_file", NULL);

		if (pf != NULL && pf[0] != '\0' &&
		    (out->password = cqrs_secret_read("broker.password_file", pf, err)) == NULL) {
			rc = err->code;
			goto bad;
		}
	}
	return 0;
nomem:
	rc = cqrs_err_set(err, CQRS_ENOMEM, "[broker]: out of memory");
bad:
	cqrs_broker_config_clear(out);
	return rc;
}

void
cqrs_broker_config_clear(struct broker_config *c)
{
	free(c->url);
	free(c->cacert);
	free(c->cert);
	free(c->key);
	if (c->password != NULL) {
		memset(c->password, 0, strlen(c->password));
		free(c->password);
	}
	memset(c, 0, sizeof(*c));
}

void
cqrs_broker_config_options(const struct broker_config *c, struct broker_options *o)
{
	cqrs_broker_options_default(o);
	o->heartbeat_s = c->heartbeat_s;
	o->verify = c->verify;
	o->cacert = c->cacert;
	o->cert = c->cert;
	o->key = c->key;
	o->password = c->password;
}

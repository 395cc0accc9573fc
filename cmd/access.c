/*
 * access.c - the [access] policy (access.h): rules read once, names
 * resolved to ids, and a match per command against the sender's
 * credentials.
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "cmdd.h"
#include "config.h"

enum who_kind { WHO_UID, WHO_GID };

struct who {
	enum who_kind kind;
	unsigned id;
};

struct rule {
	char *pattern;			/* owned: a name, "prefix.*" or "*" */
	size_t prefix;			/* "prefix.*": strlen("prefix."); else 0 */
	struct who *who;		/* owned */
	size_t n_who;
};

struct access_policy {
	struct rule *rules;
	size_t n;
};

struct load {
	struct access_policy *p;
	struct cqrs_err *err;
	int rc;
};

/* Parses "uid:N", "@group" or a user name into w. */
static int
who_parse(const char *key, const char *tok, struct who *w, struct cqrs_err *err)
{
	char buf[1024];

	if (strncmp(tok, "uid:", 4) == 0) {
		char *end;
		unsigned long v;

		errno = 0;
		v = strtoul(tok + 4, &end, 10);
		if (tok[4] < '0' || tok[4] > '9' || *end != '\0' || errno != 0 || v >= (unsigned)-1)
			return cqrs_err_set(err, CQRS_ECONFIG, "[access] %s: \"%s\" is not uid:N", key,
					    tok);
		w->kind = WHO_UID;
		w->id = (unsigned)v;
		return 0;
	}
	if (tok[0] == '@') {
		struct group gr, *found = NULL;

		if (getgrnam_r(tok + 1, &gr, buf, sizeof(buf), &found) != 0 || found == NULL)
			return cqrs_err_set(err, CQRS_ECONFIG, "[access] %s: no group named \"%s\"", key,
					    tok + 1);
		w->kind = WHO_GID;
		w->id = (unsigned)gr.gr_gid;
		return 0;
	}
	{
		struct passwd pw, *found = NULL;

		if (getpwnam_r(tok, &pw, buf, sizeof(buf), &found) != 0 || found == NULL)
			return cqrs_err_set(err, CQRS_ECONFIG, "[access] %s: no user named \"%s\" "
					    "(a group is \"@name\", a uid \"uid:N\")", key, tok);
		w->kind = WHO_UID;
		w->id = (unsigned)pw.pw_uid;
	}
	return 0;
}

/* One key: its pattern checked, its value's names resolved. */
static int
rule_parse(const char *key, const char *value, struct rule *r, struct cqrs_err *err)
{
	const char *star = strchr(key, '*');
	char *copy, *save = NULL, *tok;
	int rc = 0;

	/* star is the first '*': ending the key, it is the only one */
	if (star != NULL && !(strcmp(key, "*") == 0 ||
			      (star[1] == '\0' && star - key >= 2 && star[-1] == '.')))
		return cqrs_err_set(err, CQRS_ECONFIG, "[access] \"%s\": a pattern is a command "
				    "name, \"prefix.*\" or \"*\"", key);
	if ((r->pattern = strdup(key)) == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	r->prefix = star != NULL && star != key ? (size_t)(star - key) : 0;
	if ((copy = strdup(value)) == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	for (tok = strtok_r(copy, " \t,", &save); tok != NULL; tok = strtok_r(NULL, " \t,", &save)) {
		struct who *w = realloc(r->who, (r->n_who + 1) * sizeof(*w));

		if (w == NULL) {
			rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
			break;
		}
		r->who = w;
		if ((rc = who_parse(key, tok, &r->who[r->n_who], err)) < 0)
			break;
		r->n_who++;
	}
	free(copy);
	if (rc == 0 && r->n_who == 0)
		rc = cqrs_err_set(err, CQRS_ECONFIG, "[access] %s: lists nobody (users, uid:N or "
				  "@group, separated by spaces)", key);
	return rc;
}

static void
load_key(const char *key, const char *value, int line, void *arg)
{
	struct load *l = arg;
	struct access_policy *p = l->p;
	struct rule *r;

	(void)line;
	if (l->rc < 0)
		return;
	r = realloc(p->rules, (p->n + 1) * sizeof(*r));
	if (r == NULL) {
		l->rc = cqrs_err_set(l->err, CQRS_ENOMEM, "out of memory");
		return;
	}
	p->rules = r;
	r = &p->rules[p->n++];
	memset(r, 0, sizeof(*r));
	l->rc = rule_parse(key, value, r, l->err);
}

int
access_load(const struct config *cfg, struct access_policy **out, struct cqrs_err *err)
{
	struct load l = { .err = err };

	*out = NULL;
	if ((l.p = calloc(1, sizeof(*l.p))) == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	cqrs_config_each_key(cfg, "access", load_key, &l);
	if (l.rc < 0 || l.p->n == 0) {
		access_free(l.p);
		return l.rc;
	}
	*out = l.p;
	return 0;
}

void
access_free(struct access_policy *p)
{
	if (p == NULL)
		return;
	for (size_t i = 0; i < p->n; i++) {
		free(p->rules[i].pattern);
		free(p->rules[i].who);
	}
	free(p->rules);
	free(p);
}

static bool
rule_matches(const struct rule *r, const char *command)
{
	if (strcmp(r->pattern, "*") == 0)
		return true;
	if (r->prefix > 0)
		return strncmp(command, r->pattern, r->prefix) == 0 && command[r->prefix] != '\0';
	return strcmp(command, r->pattern) == 0;
}

static bool
rule_lists(const struct rule *r, const struct cmdd_peer *peer)
{
	for (size_t i = 0; i < r->n_who; i++) {
		const struct who *w = &r->who[i];

		if (w->kind == WHO_UID) {
			if (w->id == (unsigned)peer->uid)
				return true;
			continue;
		}
		if (w->id == (unsigned)peer->gid)
			return true;
		for (int g = 0; g < peer->n_groups; g++)
			if (w->id == (unsigned)peer->groups[g])
				return true;
	}
	return false;
}

bool
access_allows(const struct access_policy *p, const char *command, const struct cmdd_peer *peer)
{
	if (p == NULL)
		return true;
	if (!peer->known)
		return false;
	for (size_t i = 0; i < p->n; i++)
		if (rule_matches(&p->rules[i], command) && rule_lists(&p->rules[i], peer))
			return true;
	return false;
}

int
access_rules(const struct access_policy *p)
{
	return p != NULL ? (int)p->n : 0;
}

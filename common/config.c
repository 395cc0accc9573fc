/*
 * config.c - the suite's INI file, read with libinih, plus CQRS_* overrides.
 *
 * libinih does the lexing (comments, "key = value", trimming). Around it:
 *
 * - The file is read whole into memory first, so its size is bounded before
 *   parsing and libinih reads it through read_line(). That reader counts the
 *   lines (Debian's ini.h leaves INI_HANDLER_LINENO off, so the handler never
 *   learns the line), refuses over-long lines instead of letting libinih
 *   split them, and notes every [section] header, including headers with no
 *   keys under them, which libinih never reports.
 * - Debian builds libinih with its options as global variables; the 200-byte
 *   default line buffer is far too small for a plugin list. parse_text() sets
 *   them for the duration of a parse, under a lock, and puts them back.
 * - Entries are kept in file order (for messages and cqrs_config_check_keys) and
 *   in a sorted index (for lookups and duplicate detection), so a 1 MiB file
 *   of tiny keys does not go quadratic.
 * - The environment is copied at load time: values stay valid until
 *   cqrs_config_free() and a reload sees the environment of that moment.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>

#include "config.h"

#define CONFIG_FILE_MAX (1024 * 1024)
#define CONFIG_VALUE_MAX (64 * 1024)
/* a value at the limit still fits with a long key in front of it */
#define CONFIG_LINE_MAX (CONFIG_VALUE_MAX + 4096)
/* libinih's buffer: the line, "\r\n" and the NUL */
#define CONFIG_LINE_BUF (CONFIG_LINE_MAX + 3)
/* how much of a bad value an error message shows */
#define QUOTE_MAX 64
#define ENV_PREFIX "CQRS_"

struct entry {
	const char *section;	/* borrowed from config.headers */
	char *key;		/* owned; "key\0value\0" in one block */
	const char *value;	/* points into key's block */
	int line;
};

struct env_var {
	char *name;		/* owned; "NAME\0value\0" in one block */
	const char *value;	/* points into name's block, trimmed */
};

struct config {
	char *path;		/* NULL: no file */
	struct entry *entries;	/* file order */
	size_t n_entries, cap_entries;
	struct entry **sorted;	/* by section, key, line */
	char **headers;		/* every [section] line, owned */
	size_t n_headers, cap_headers;
	const char **sections;	/* distinct names, file order, borrowed */
	size_t n_sections;
	struct env_var *env;
	size_t n_env;
};

/* Where a value came from. */
struct value_ref {
	const char *value;
	const struct entry *entry;	/* from the file, or */
	const struct env_var *env;	/* from the environment */
};

struct parse {
	struct config *cfg;
	const char *name;	/* file name for messages */
	const char *text;
	size_t len;
	size_t pos;
	int lineno;		/* line last handed to libinih */
	const char *section;	/* current one, borrowed from cfg->headers */
	int rc;			/* first error seen by the reader or handler */
	int err_line;
	struct cqrs_err *err;
};

/* libinih's options are process-wide variables; parses take turns. */
static pthread_mutex_t ini_lock = PTHREAD_MUTEX_INITIALIZER;
static char start_comments[] = ";#";
static char inline_comments[] = ";";

static int parse_fail(struct parse *ps, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int value_error(const struct value_ref *ref, const struct config *cfg,
		       const char *section, const char *key, struct cqrs_err *err,
		       const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static bool
ascii_space(int c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' ||
	       c == '\f';
}

static bool
ascii_alnum(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9');
}

static int
ascii_upper(int c)
{
	return c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c;
}

/* Makes room for one more element; false when out of memory. */
static bool
grow(void **arr, size_t *cap, size_t n, size_t elem)
{
	size_t ncap;
	void *p;

	if (n < *cap)
		return true;
	ncap = *cap ? *cap * 2 : 16;
	if (ncap > SIZE_MAX / elem)
		return false;
	p = realloc(*arr, ncap * elem);
	if (p == NULL)
		return false;
	*arr = p;
	*cap = ncap;
	return true;
}

/* "a \"b\"" with control bytes escaped, cut after QUOTE_MAX bytes with "...". */
static const char *
quote(char *buf, size_t size, const char *v)
{
	size_t n = 0, i;

	buf[n++] = '"';
	for (i = 0; i < QUOTE_MAX && v[i] != '\0' && n + 8 < size; i++) {
		unsigned char c = (unsigned char)v[i];

		if (c == '"' || c == '\\') {
			buf[n++] = '\\';
			buf[n++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			n += (size_t)snprintf(buf + n, size - n, "\\x%02x", c);
		} else {
			buf[n++] = (char)c;
		}
	}
	if (v[i] != '\0') {
		memcpy(buf + n, "...", 3);
		n += 3;
	}
	buf[n++] = '"';
	buf[n] = '\0';
	return buf;
}

static int
parse_fail(struct parse *ps, int code, const char *fmt, ...)
{
	char msg[CQRS_ERR_MSG_MAX];
	va_list ap;

	if (ps->rc != 0)
		return ps->rc;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ps->rc = code;
	ps->err_line = ps->lineno;
	return cqrs_err_set(ps->err, code, "%s:%d: %s", ps->name, ps->lineno, msg);
}

/* Records a [section] header on the line just read. */
static int
note_section(struct parse *ps, const char *line, size_t n)
{
	const char *p = line, *end = line + n, *close;
	struct config *cfg = ps->cfg;
	char *name;

	if (ps->lineno == 1 && n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
		p += 3;		/* libinih skips a UTF-8 BOM there too */
	while (p < end && ascii_space((unsigned char)*p))
		p++;
	if (p == end || *p != '[')
		return 0;
	close = memchr(p + 1, ']', (size_t)(end - p - 1));
	if (close == NULL)
		return 0;	/* libinih reports it as a syntax error */
	p++;
	while (p < close && ascii_space((unsigned char)*p))
		p++;
	while (close > p && ascii_space((unsigned char)close[-1]))
		close--;
	if (close == p)
		return parse_fail(ps, CQRS_ECONFIG, "empty section name");
	if (!grow((void **)&cfg->headers, &cfg->cap_headers, cfg->n_headers,
		  sizeof(*cfg->headers)))
		return parse_fail(ps, CQRS_ENOMEM, "out of memory");
	name = strndup(p, (size_t)(close - p));
	if (name == NULL)
		return parse_fail(ps, CQRS_ENOMEM, "out of memory");
	cfg->headers[cfg->n_headers++] = name;
	ps->section = name;
	return 0;
}

/* libinih's fgets: one whole line per call, or NULL to stop. */
static char *
read_line(char *str, int num, void *stream)
{
	struct parse *ps = stream;
	const char *line, *nl;
	size_t n, take;

	if (ps->rc != 0 || ps->pos >= ps->len)
		return NULL;
	line = ps->text + ps->pos;
	nl = memchr(line, '\n', ps->len - ps->pos);
	n = nl != NULL ? (size_t)(nl - line) : ps->len - ps->pos;
	take = nl != NULL ? n + 1 : n;
	ps->lineno++;
	/* the num check guards against a libinih that ignores our buffer size */
	if (n > CONFIG_LINE_MAX || num <= 0 || take >= (size_t)num) {
		parse_fail(ps, CQRS_ECONFIG,
			   "line is too long (values are limited to %d bytes)",
			   CONFIG_VALUE_MAX);
		return NULL;
	}
	memcpy(str, line, take);
	str[take] = '\0';
	ps->pos += take;
	if (note_section(ps, line, n) != 0)
		return NULL;
	return str;
}

/* libinih's handler; its section argument is ignored (it is cut at 50
 * bytes), ps->section has the whole name. */
static int
on_pair(void *user, const char *section, const char *name, const char *value)
{
	struct parse *ps = user;
	struct config *cfg = ps->cfg;
	struct entry *e;
	size_t klen, vlen;
	char *block;

	(void)section;
	if (ps->section == NULL) {
		parse_fail(ps, CQRS_ECONFIG, "key \"%s\" is outside any [section]", name);
		return 0;
	}
	if (*name == '\0') {
		parse_fail(ps, CQRS_ECONFIG, "[%s] missing key before '='", ps->section);
		return 0;
	}
	vlen = strlen(value);
	if (vlen > CONFIG_VALUE_MAX) {
		parse_fail(ps, CQRS_ECONFIG, "[%s] %s: value is longer than %d bytes",
			   ps->section, name, CONFIG_VALUE_MAX);
		return 0;
	}
	klen = strlen(name);
	if (!grow((void **)&cfg->entries, &cfg->cap_entries, cfg->n_entries,
		  sizeof(*cfg->entries))) {
		parse_fail(ps, CQRS_ENOMEM, "out of memory");
		return 0;
	}
	block = malloc(klen + 1 + vlen + 1);
	if (block == NULL) {
		parse_fail(ps, CQRS_ENOMEM, "out of memory");
		return 0;
	}
	memcpy(block, name, klen + 1);
	memcpy(block + klen + 1, value, vlen + 1);
	e = &cfg->entries[cfg->n_entries++];
	e->section = ps->section;
	e->key = block;
	e->value = block + klen + 1;
	e->line = ps->lineno;
	return 1;
}

/* Says what is wrong with the line libinih refused. The text need not end
 * in a NUL (cqrs_config_load_buffer()): every read is bounded by its end. */
static int
syntax_error(struct parse *ps, int line)
{
	const char *p = ps->text, *end = ps->text + ps->len;

	for (int i = 1; i < line && p != NULL; i++) {
		p = memchr(p, '\n', (size_t)(end - p));
		if (p != NULL)
			p++;
	}
	ps->lineno = line;
	if (p != NULL) {
		if (line == 1 && end - p >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
			p += 3;
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
	}
	if (p != NULL && p < end && *p == '[')
		return parse_fail(ps, CQRS_ECONFIG,
				  "malformed section header (expected \"[name]\")");
	return parse_fail(ps, CQRS_ECONFIG,
			  "expected \"key = value\", \"[section]\" or a comment");
}

static int
cmp_entry(const void *a, const void *b)
{
	const struct entry *x = *(const struct entry *const *)a;
	const struct entry *y = *(const struct entry *const *)b;
	int c = strcmp(x->section, y->section);

	if (c == 0)
		c = strcmp(x->key, y->key);
	if (c == 0)
		c = (x->line > y->line) - (x->line < y->line);
	return c;
}

struct header_order {
	const char *name;
	size_t order;
};

static int
cmp_header(const void *a, const void *b)
{
	const struct header_order *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	if (c == 0)
		c = (x->order > y->order) - (x->order < y->order);
	return c;
}

/* Builds the sorted index and the list of distinct sections; refuses a key
 * set twice in one section. */
static int
index_entries(struct config *cfg, const char *name, struct cqrs_err *err)
{
	struct header_order *ho = NULL;
	const struct entry *dup = NULL, *first = NULL;
	size_t run = 0;
	int rc;

	if (cfg->n_entries > 0) {
		cfg->sorted = calloc(cfg->n_entries, sizeof(*cfg->sorted));
		if (cfg->sorted == NULL) {
			rc = cqrs_err_set(err, CQRS_ENOMEM, "%s: out of memory", name);
			goto out;
		}
		for (size_t i = 0; i < cfg->n_entries; i++)
			cfg->sorted[i] = &cfg->entries[i];
		qsort(cfg->sorted, cfg->n_entries, sizeof(*cfg->sorted), cmp_entry);
	}
	/* of all repeated keys, report the one that comes first in the file */
	for (size_t i = 1; i < cfg->n_entries; i++) {
		const struct entry *a = cfg->sorted[i - 1], *b = cfg->sorted[i];

		if (strcmp(a->section, b->section) != 0 || strcmp(a->key, b->key) != 0) {
			run = i;
			continue;
		}
		if (dup == NULL || b->line < dup->line) {
			dup = b;
			first = cfg->sorted[run];
		}
	}
	if (dup != NULL) {
		rc = cqrs_err_set(err, CQRS_ECONFIG,
				  "%s:%d: [%s] %s: duplicate key (first set on line %d)",
				  name, dup->line, dup->section, dup->key, first->line);
		goto out;
	}

	if (cfg->n_headers > 0) {
		ho = calloc(cfg->n_headers, sizeof(*ho));
		cfg->sections = calloc(cfg->n_headers, sizeof(*cfg->sections));
		if (ho == NULL || cfg->sections == NULL) {
			rc = cqrs_err_set(err, CQRS_ENOMEM, "%s: out of memory", name);
			goto out;
		}
		for (size_t i = 0; i < cfg->n_headers; i++) {
			ho[i].name = cfg->headers[i];
			ho[i].order = i;
		}
		qsort(ho, cfg->n_headers, sizeof(*ho), cmp_header);
		/* sections[] doubles as a "first of its name" mark, by order */
		for (size_t i = 0; i < cfg->n_headers; i++)
			if (i == 0 || strcmp(ho[i - 1].name, ho[i].name) != 0)
				cfg->sections[ho[i].order] = ho[i].name;
		for (size_t i = 0; i < cfg->n_headers; i++)
			if (cfg->sections[i] != NULL)
				cfg->sections[cfg->n_sections++] = cfg->sections[i];
	}
	rc = 0;
out:
	free(ho);
	return rc;
}

static int
parse_text(struct config *cfg, const char *text, size_t len, const char *name,
	   struct cqrs_err *err)
{
	struct parse ps = {
		.cfg = cfg, .name = name, .text = text, .len = len, .err = err,
	};
	const char *nul;
	bool s_stack, s_realloc, s_multiline, s_stop, s_novalue, s_bom, s_inline;
	int s_initial, s_max;
	char *s_start, *s_inline_pfx;
	int rc;

	if (len > CONFIG_FILE_MAX)
		return cqrs_err_set(err, CQRS_ECONFIG, "%s: file is larger than %d bytes",
				    name, CONFIG_FILE_MAX);
	nul = memchr(text, '\0', len);
	if (nul != NULL) {
		ps.lineno = 1;
		for (const char *p = text; p < nul; p++)
			ps.lineno += *p == '\n';
		return parse_fail(&ps, CQRS_ECONFIG, "contains a NUL byte");
	}

	pthread_mutex_lock(&ini_lock);
	s_stack = ini_use_stack;
	s_realloc = ini_allow_realloc;
	s_initial = ini_initial_alloc;
	s_max = ini_max_line;
	s_multiline = ini_allow_multiline;
	s_stop = ini_stop_on_first_error;
	s_novalue = ini_allow_no_value;
	s_bom = ini_allow_bom;
	s_inline = ini_allow_inline_comments;
	s_start = ini_start_comment_prefixes;
	s_inline_pfx = ini_inline_comment_prefixes;
	/* One heap buffer big enough for any line we accept (with realloc off,
	 * Debian's libinih sizes it by ini_initial_alloc). No continuation lines:
	 * an indented "key = value" is just a key. */
	ini_use_stack = false;
	ini_allow_realloc = false;
	ini_initial_alloc = CONFIG_LINE_BUF;
	ini_max_line = CONFIG_LINE_BUF;
	ini_allow_multiline = false;
	ini_stop_on_first_error = true;
	ini_allow_no_value = false;
	ini_allow_bom = true;
	ini_allow_inline_comments = true;
	ini_start_comment_prefixes = start_comments;
	ini_inline_comment_prefixes = inline_comments;
	rc = ini_parse_stream(read_line, &ps, on_pair, &ps);
	ini_use_stack = s_stack;
	ini_allow_realloc = s_realloc;
	ini_initial_alloc = s_initial;
	ini_max_line = s_max;
	ini_allow_multiline = s_multiline;
	ini_stop_on_first_error = s_stop;
	ini_allow_no_value = s_novalue;
	ini_allow_bom = s_bom;
	ini_allow_inline_comments = s_inline;
	ini_start_comment_prefixes = s_start;
	ini_inline_comment_prefixes = s_inline_pfx;
	pthread_mutex_unlock(&ini_lock);

	/* our error stands unless libinih refused an earlier line */
	if (rc > 0 && (ps.rc == 0 || rc < ps.err_line)) {
		ps.rc = 0;
		return syntax_error(&ps, rc);
	}
	if (ps.rc != 0)
		return ps.rc;
	if (rc == -2)
		return cqrs_err_set(err, CQRS_ENOMEM, "%s: out of memory", name);
	if (rc != 0)
		return cqrs_err_set(err, CQRS_EINTERNAL, "%s: libinih failed (%d)", name, rc);
	return index_entries(cfg, name, err);
}

/* Copies every CQRS_* variable, value trimmed like the file's values. */
static int
env_snapshot(struct config *cfg, struct cqrs_err *err)
{
	size_t n = 0;

	for (char **e = environ; e != NULL && *e != NULL; e++)
		n += strncmp(*e, ENV_PREFIX, strlen(ENV_PREFIX)) == 0;
	if (n == 0)
		return 0;
	cfg->env = calloc(n, sizeof(*cfg->env));
	if (cfg->env == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "environment: out of memory");
	for (char **e = environ; e != NULL && *e != NULL && cfg->n_env < n; e++) {
		const char *eq, *v, *vend;
		size_t nlen, vlen;
		char *block;

		if (strncmp(*e, ENV_PREFIX, strlen(ENV_PREFIX)) != 0)
			continue;
		eq = strchr(*e, '=');
		if (eq == NULL)
			continue;
		nlen = (size_t)(eq - *e);
		v = eq + 1;
		vend = v + strlen(v);
		while (v < vend && ascii_space((unsigned char)*v))
			v++;
		while (vend > v && ascii_space((unsigned char)vend[-1]))
			vend--;
		vlen = (size_t)(vend - v);
		if (vlen > CONFIG_VALUE_MAX)
			return cqrs_err_set(err, CQRS_ECONFIG,
					    "environment %.*s: value is longer than %d bytes",
					    (int)nlen, *e, CONFIG_VALUE_MAX);
		block = malloc(nlen + 1 + vlen + 1);
		if (block == NULL)
			return cqrs_err_set(err, CQRS_ENOMEM, "environment: out of memory");
		memcpy(block, *e, nlen);
		block[nlen] = '\0';
		memcpy(block + nlen + 1, v, vlen);
		block[nlen + 1 + vlen] = '\0';
		cfg->env[cfg->n_env].name = block;
		cfg->env[cfg->n_env].value = block + nlen + 1;
		cfg->n_env++;
	}
	return 0;
}

/* Matches part against name as the override spelling; returns the rest of
 * name, or NULL. */
static const char *
env_match_part(const char *name, const char *part)
{
	for (; *part != '\0'; part++, name++) {
		int c = (unsigned char)*part;

		if (*name != (ascii_alnum(c) ? ascii_upper(c) : '_'))
			return NULL;
	}
	return name;
}

static bool
env_matches(const char *name, const char *section, const char *key)
{
	name += strlen(ENV_PREFIX);
	name = env_match_part(name, section);
	if (name == NULL || *name++ != '_')
		return false;
	name = env_match_part(name, key);
	return name != NULL && *name == '\0';
}

static bool
find(const struct config *cfg, const char *section, const char *key,
     struct value_ref *ref)
{
	size_t lo = 0, hi;

	memset(ref, 0, sizeof(*ref));
	if (cfg == NULL || section == NULL || key == NULL)
		return false;
	for (size_t i = 0; i < cfg->n_env; i++) {
		if (env_matches(cfg->env[i].name, section, key)) {
			ref->env = &cfg->env[i];
			ref->value = cfg->env[i].value;
			return true;
		}
	}
	/* keys are unique per section, so any match is the match */
	hi = cfg->n_entries;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct entry *e = cfg->sorted[mid];
		int c = strcmp(section, e->section);

		if (c == 0)
			c = strcmp(key, e->key);
		if (c == 0) {
			ref->entry = e;
			ref->value = e->value;
			return true;
		}
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return false;
}

/* "FILE:LINE: [section] key: \"value\" " + the rest, or with
 * "environment NAME" in place of FILE:LINE. */
static int
value_error(const struct value_ref *ref, const struct config *cfg,
	    const char *section, const char *key, struct cqrs_err *err,
	    const char *fmt, ...)
{
	char where[CQRS_ERR_MSG_MAX / 2];
	char quoted[QUOTE_MAX * 4 + 16];
	char msg[CQRS_ERR_MSG_MAX];
	va_list ap;

	if (ref->env != NULL)
		snprintf(where, sizeof(where), "environment %s", ref->env->name);
	else
		snprintf(where, sizeof(where), "%s:%d",
			 cfg->path != NULL ? cfg->path : "<string>", ref->entry->line);
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return cqrs_err_set(err, CQRS_ECONFIG, "%s: [%s] %s: %s %s", where, section,
			    key, quote(quoted, sizeof(quoted), ref->value), msg);
}

struct unit {
	const char *suffix;
	int64_t scale;
};

static const struct unit size_units[] = {
	{ "", 1 }, { "k", 1024 }, { "K", 1024 }, { "M", 1024 * 1024 },
	{ "G", 1024 * 1024 * 1024 }, { NULL, 0 },
};

static const struct unit ms_units[] = {
	{ "", 1 }, { "ms", 1 }, { "s", 1000 }, { "m", 60 * 1000 },
	{ "h", 60 * 60 * 1000 }, { NULL, 0 },
};

/*
 * An optionally signed decimal integer followed by one of units' suffixes.
 * Returns 0, -1 when s is not of that form, -2 when it does not fit int64_t.
 */
static int
parse_scaled(const char *s, const struct unit *units, int64_t *out)
{
	const char *p = s;
	uint64_t mag = 0, limit;
	bool neg = false, overflow = false;

	if (*p == '+' || *p == '-')
		neg = *p++ == '-';
	if (*p < '0' || *p > '9')
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		unsigned d = (unsigned)(*p - '0');

		if (mag > (UINT64_MAX - d) / 10)
			overflow = true;
		else
			mag = mag * 10 + d;
	}
	for (; units->suffix != NULL; units++)
		if (strcmp(p, units->suffix) == 0)
			break;
	if (units->suffix == NULL)
		return -1;
	limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	if (overflow || mag > limit / (uint64_t)units->scale)
		return -2;
	mag *= (uint64_t)units->scale;
	/* -(INT64_MAX + 1) without overflowing on the way */
	*out = neg ? (mag == 0 ? 0 : -(int64_t)(mag - 1) - 1) : (int64_t)mag;
	return 0;
}

static int
get_scaled(const struct config *cfg, const char *section, const char *key,
	   int64_t def, int64_t min, int64_t max, int64_t *out,
	   struct cqrs_err *err, const struct unit *units, const char *what)
{
	struct value_ref ref;
	int64_t v = 0;
	int rc;

	if (!find(cfg, section, key, &ref)) {
		*out = def;
		return 0;
	}
	rc = parse_scaled(ref.value, units, &v);
	if (rc == -1)
		return value_error(&ref, cfg, section, key, err, "is not %s", what);
	if (rc == -2 || v < min || v > max)
		return value_error(&ref, cfg, section, key, err,
				   "is out of range [%lld, %lld]",
				   (long long)min, (long long)max);
	*out = v;
	return 0;
}

static int
read_file(const char *path, char **out, size_t *len, struct cqrs_err *err)
{
	FILE *f = NULL;
	char *buf = NULL;
	struct stat st;
	size_t n;
	int rc;

	f = fopen(path, "re");
	if (f == NULL) {
		rc = cqrs_err_set(err, errno == ENOENT ? CQRS_ENOTFOUND : CQRS_EIO,
				  "%s: could not open: %s", path, strerror(errno));
		goto out;
	}
	if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) &&
	    st.st_size > CONFIG_FILE_MAX) {
		rc = cqrs_err_set(err, CQRS_ECONFIG, "%s: file is larger than %d bytes",
				  path, CONFIG_FILE_MAX);
		goto out;
	}
	buf = malloc(CONFIG_FILE_MAX + 2);
	if (buf == NULL) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "%s: out of memory", path);
		goto out;
	}
	/* one byte more than allowed tells a file that grew since fstat */
	n = fread(buf, 1, CONFIG_FILE_MAX + 1, f);
	if (ferror(f)) {
		rc = cqrs_err_set(err, CQRS_EIO, "%s: could not read: %s", path,
				  strerror(errno));
		goto out;
	}
	if (n > CONFIG_FILE_MAX) {
		rc = cqrs_err_set(err, CQRS_ECONFIG, "%s: file is larger than %d bytes",
				  path, CONFIG_FILE_MAX);
		goto out;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	buf = NULL;
	rc = 0;
out:
	free(buf);
	if (f != NULL)
		fclose(f);
	return rc;
}

static int
load(const char *text, size_t len, const char *path, const char *name,
     struct config **out, struct cqrs_err *err)
{
	struct config *cfg = NULL;
	char *buf = NULL;
	int rc;

	*out = NULL;
	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "config: out of memory");
		goto out;
	}
	rc = env_snapshot(cfg, err);
	if (rc != 0)
		goto out;
	if (path != NULL) {
		rc = read_file(path, &buf, &len, err);
		if (rc != 0)
			goto out;
		text = buf;
		name = path;
	}
	if (name != NULL) {
		cfg->path = strdup(name);
		if (cfg->path == NULL) {
			rc = cqrs_err_set(err, CQRS_ENOMEM, "config: out of memory");
			goto out;
		}
	}
	if (text != NULL) {
		rc = parse_text(cfg, text, len, name, err);
		if (rc != 0)
			goto out;
	}
	*out = cfg;
	cfg = NULL;
	rc = 0;
out:
	free(buf);
	cqrs_config_free(cfg);
	return rc;
}

int
cqrs_config_load(const char *path, struct config **out, struct cqrs_err *err)
{
	return load(NULL, 0, path, NULL, out, err);
}

int
cqrs_config_load_string(const char *text, const char *name, struct config **out,
		   struct cqrs_err *err)
{
	if (text == NULL)
		text = "";
	return load(text, strnlen(text, CONFIG_FILE_MAX + 1), NULL,
		    name != NULL ? name : "<string>", out, err);
}

int
cqrs_config_load_buffer(const char *text, size_t len, const char *name, struct config **out,
		   struct cqrs_err *err)
{
	if (text == NULL) {
		text = "";
		len = 0;
	}
	return load(text, len, NULL, name != NULL ? name : "<string>", out, err);
}

void
cqrs_config_free(struct config *cfg)
{
	if (cfg == NULL)
		return;
	for (size_t i = 0; i < cfg->n_env; i++)
		free(cfg->env[i].name);
	free(cfg->env);
	free(cfg->sections);
	for (size_t i = 0; i < cfg->n_headers; i++)
		free(cfg->headers[i]);
	free(cfg->headers);
	free(cfg->sorted);
	for (size_t i = 0; i < cfg->n_entries; i++)
		free(cfg->entries[i].key);
	free(cfg->entries);
	free(cfg->path);
	free(cfg);
}

const char *
cqrs_config_get(const struct config *cfg, const char *section, const char *key,
	   const char *def)
{
	struct value_ref ref;

	return find(cfg, section, key, &ref) ? ref.value : def;
}

bool
cqrs_config_has(const struct config *cfg, const char *section, const char *key)
{
	struct value_ref ref;

	return find(cfg, section, key, &ref);
}

int
cqrs_config_get_int(const struct config *cfg, const char *section, const char *key,
	       int64_t def, int64_t min, int64_t max, int64_t *out,
	       struct cqrs_err *err)
{
	return get_scaled(cfg, section, key, def, min, max, out, err, size_units,
			  "an integer");
}

int
cqrs_config_get_ms(const struct config *cfg, const char *section, const char *key,
	      int64_t def, int64_t min, int64_t max, int64_t *out,
	      struct cqrs_err *err)
{
	return get_scaled(cfg, section, key, def, min, max, out, err, ms_units,
			  "a duration (like 250ms, 5s, 2m, 1h, or a number of ms)");
}

int
cqrs_config_get_bool(const struct config *cfg, const char *section, const char *key,
		bool def, bool *out, struct cqrs_err *err)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };
	struct value_ref ref;

	if (!find(cfg, section, key, &ref)) {
		*out = def;
		return 0;
	}
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (strcasecmp(ref.value, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(ref.value, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return value_error(&ref, cfg, section, key, err,
			   "is not a boolean (true/false, yes/no, on/off, 1/0)");
}

int
cqrs_config_get_enum(const struct config *cfg, const char *section, const char *key,
		const char *def, const char *const *choices, int *out,
		struct cqrs_err *err)
{
	struct value_ref ref;
	const char *v;
	char list[CQRS_ERR_MSG_MAX];
	size_t n = 0;

	v = find(cfg, section, key, &ref) ? ref.value : def;
	if (v == NULL) {
		*out = -1;
		return 0;
	}
	for (int i = 0; choices[i] != NULL; i++) {
		if (strcasecmp(v, choices[i]) == 0) {
			*out = i;
			return 0;
		}
	}
	if (ref.value == NULL)
		return cqrs_err_set(err, CQRS_EINTERNAL,
				    "[%s] %s: default \"%s\" is not one of the choices",
				    section, key, def);
	list[0] = '\0';
	for (int i = 0; choices[i] != NULL && n < sizeof(list); i++) {
		int w = snprintf(list + n, sizeof(list) - n, "%s%s", i ? ", " : "",
				 choices[i]);

		if (w < 0)
			break;
		n += (size_t)w;
	}
	return value_error(&ref, cfg, section, key, err, "is not one of: %s", list);
}

int
cqrs_config_check_keys(const struct config *cfg, const char *section,
		  const char *const *known, struct cqrs_err *err)
{
	if (cfg == NULL)
		return 0;
	for (size_t i = 0; i < cfg->n_entries; i++) {
		const struct entry *e = &cfg->entries[i];
		bool ok = false;

		if (strcmp(e->section, section) != 0)
			continue;
		for (size_t k = 0; known[k] != NULL && !ok; k++)
			ok = strcmp(e->key, known[k]) == 0;
		if (!ok)
			return cqrs_err_set(err, CQRS_ECONFIG, "%s:%d: [%s] %s: unknown key",
					    cfg->path != NULL ? cfg->path : "<string>",
					    e->line, section, e->key);
	}
	return 0;
}

void
cqrs_config_each_section(const struct config *cfg, const char *prefix,
		    void (*fn)(const char *section, void *arg), void *arg)
{
	size_t plen = prefix != NULL ? strlen(prefix) : 0;

	if (cfg == NULL)
		return;
	for (size_t i = 0; i < cfg->n_sections; i++)
		if (plen == 0 || strncmp(cfg->sections[i], prefix, plen) == 0)
			fn(cfg->sections[i], arg);
}

void
cqrs_config_each_key(const struct config *cfg, const char *section,
		     void (*fn)(const char *key, const char *value, int line, void *arg), void *arg)
{
	if (cfg == NULL || section == NULL)
		return;
	for (size_t i = 0; i < cfg->n_entries; i++)
		if (strcmp(cfg->entries[i].section, section) == 0)
			fn(cfg->entries[i].key, cfg->entries[i].value, cfg->entries[i].line, arg);
}

const char *
cqrs_config_path(const struct config *cfg)
{
	return cfg != NULL ? cfg->path : NULL;
}

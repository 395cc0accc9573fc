/* fixture.c - private PostgreSQL (and later RabbitMQ) for tests. */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixture.h"
#include "store.h"
#include "uuid.h"

#ifndef CQRS_SRCDIR
#define CQRS_SRCDIR "."
#endif
#ifndef CQRS_BUILDDIR
#define CQRS_BUILDDIR CQRS_SRCDIR "/build"
#endif

static char pg_dir[256];
static char admin_conninfo[1024];
static pid_t owner_pid;		/* the process that started the cluster */
static int db_counter;

int
fixture_run(const char *cmdline, char **out)
{
	FILE *p;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	char chunk[4096];
	size_t got;
	int status;

	p = popen(cmdline, "r");
	if (p == NULL)
		return -1;
	while ((got = fread(chunk, 1, sizeof(chunk), p)) > 0) {
		if (out != NULL) {
			if (len + got + 1 > cap) {
				cap = (len + got + 1) * 2;
				buf = realloc(buf, cap);
				ck_assert_ptr_nonnull(buf);
			}
			memcpy(buf + len, chunk, got);
			len += got;
			buf[len] = '\0';
		}
	}
	status = pclose(p);
	if (out != NULL)
		*out = buf ? buf : strdup("");
	else
		free(buf);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void
stop_own_cluster(void)
{
	char cmd[600], top[256];

	if (getpid() != owner_pid)
		return;
	/* the cluster is TOP/pg in a folder of our own: remove TOP */
	snprintf(top, sizeof(top), "%.*s", (int)(strrchr(pg_dir, '/') - pg_dir), pg_dir);
	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/pg.sh stop %s >/dev/null 2>&1; rm -rf %s",
		 CQRS_SRCDIR, pg_dir, top);
	if (system(cmd) != 0)
		fprintf(stderr, "fixture: could not stop PostgreSQL in %s\n", pg_dir);
}

/* Reads CQRS_STORE_CONNINFO='...' from DIR/env. */
static void
read_env_file(void)
{
	char path[300], line[1024];
	FILE *f;

	snprintf(path, sizeof(path), "%s/env", pg_dir);
	f = fopen(path, "r");
	if (f == NULL)
		ck_abort_msg("fixture: cannot read %s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f) != NULL) {
		const char *key = "CQRS_STORE_CONNINFO=";
		if (strncmp(line, key, strlen(key)) == 0) {
			char *v = line + strlen(key);
			size_t n = strcspn(v, "\n");
			v[n] = '\0';
			if (v[0] == '\'' && n >= 2 && v[n - 1] == '\'') {
				v[n - 1] = '\0';
				v++;
			}
			snprintf(admin_conninfo, sizeof(admin_conninfo), "%s", v);
		}
	}
	fclose(f);
	if (admin_conninfo[0] == '\0')
		ck_abort_msg("fixture: no CQRS_STORE_CONNINFO in %s", path);
}

static void
ensure_cluster(void)
{
	const char *dir;

	if (admin_conninfo[0] != '\0')
		return;
	dir = getenv("CQRS_TEST_PGDIR");
	if (dir != NULL && dir[0] != '\0') {
		snprintf(pg_dir, sizeof(pg_dir), "%s", dir);
	} else {
		char tmpl[] = "/tmp/cqrs-fx.XXXXXX";
		char cmd[600];
		if (mkdtemp(tmpl) == NULL)
			ck_abort_msg("fixture: mkdtemp: %s", strerror(errno));
		chmod(tmpl, 0755);
		snprintf(pg_dir, sizeof(pg_dir), "%s/pg", tmpl);
		snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/pg.sh start %s --fast >%s/start.log 2>&1",
			 CQRS_SRCDIR, pg_dir, tmpl);
		if (system(cmd) != 0)
			ck_abort_msg("fixture: could not start PostgreSQL (see %s/start.log)", tmpl);
		owner_pid = getpid();
		atexit(stop_own_cluster);
		setenv("CQRS_TEST_PGDIR", pg_dir, 1);
	}
	read_env_file();
}

const char *
fixture_pg_admin_conninfo(void)
{
	ensure_cluster();
	return admin_conninfo;
}

const char *
fixture_pg_dir(void)
{
	ensure_cluster();
	return pg_dir;
}

PGconn *
fixture_connect(const char *conninfo)
{
	PGconn *pg = PQconnectdb(conninfo);

	if (PQstatus(pg) != CONNECTION_OK)
		ck_abort_msg("fixture: cannot connect: %s", PQerrorMessage(pg));
	return pg;
}

void
fixture_exec(PGconn *pg, const char *sql)
{
	PGresult *res = PQexec(pg, sql);
	ExecStatusType s = PQresultStatus(res);

	if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
		ck_abort_msg("fixture: %s: %s", sql, PQerrorMessage(pg));
	PQclear(res);
}

long long
fixture_query_int(PGconn *pg, const char *sql)
{
	PGresult *res = PQexec(pg, sql);
	long long v;

	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1)
		ck_abort_msg("fixture: %s: %s", sql, PQerrorMessage(pg));
	v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return v;
}

char *
fixture_db_new(bool migrate)
{
	char name[64], sql[128], *conninfo;
	size_t len;
	PGconn *pg;

	ensure_cluster();
	{
		/* pids repeat across runs on a long-lived cluster: add randomness */
		char u[UUID_STR_LEN];
		cqrs_uuid_v4(u);
		snprintf(name, sizeof(name), "t_%d_%d_%.8s%.4s", (int)getpid(), ++db_counter, u,
			 u + 9);
	}
	pg = fixture_connect(admin_conninfo);
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", name);
	fixture_exec(pg, sql);
	PQfinish(pg);
	len = strlen(admin_conninfo) + strlen(name) + 16;
	conninfo = malloc(len);
	ck_assert_ptr_nonnull(conninfo);
	snprintf(conninfo, len, "%s dbname=%s", admin_conninfo, name);
	if (migrate) {
		struct store *st = NULL;
		struct cqrs_err err = { 0 };
		if (cqrs_store_connect(conninfo, &st, &err) < 0 || cqrs_store_migrate(st, NULL, &err) < 0)
			ck_abort_msg("fixture: migrate %s: %s", name, err.msg);
		cqrs_store_free(st);
	}
	return conninfo;
}

void
fixture_pg_stop(void)
{
	char cmd[600];

	ensure_cluster();
	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/pg.sh stop %s >/dev/null 2>&1",
		 CQRS_SRCDIR, pg_dir);
	ck_assert_int_eq(system(cmd), 0);
}

void
fixture_pg_start(void)
{
	char cmd[600];

	ensure_cluster();
	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/pg.sh start %s --fast >/dev/null 2>&1",
		 CQRS_SRCDIR, pg_dir);
	ck_assert_int_eq(system(cmd), 0);
}

const char *
fixture_bin(const char *name)
{
	static char buf[4][512];
	static int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "%s/bin/%s", CQRS_BUILDDIR, name);
	return buf[i];
}

const char *
fixture_plugin(const char *name)
{
	static char buf[4][512];
	static int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "%s/plugins/%s.so", CQRS_BUILDDIR, name);
	return buf[i];
}

char *
fixture_read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = NULL;
	size_t len = 0, cap = 0, got;

	if (f == NULL) {
		buf = strdup("");
		ck_assert_ptr_nonnull(buf);
		return buf;
	}
	do {
		if (cap - len < 4096) {
			cap = cap ? cap * 2 : 8192;
			buf = realloc(buf, cap);
			ck_assert_ptr_nonnull(buf);
		}
		got = fread(buf + len, 1, cap - len - 1, f);
		len += got;
	} while (got > 0);
	fclose(f);
	buf[len] = '\0';
	return buf;
}

char *
fixture_file_tail(const char *path, int n)
{
	char *all = fixture_read_file(path);
	char *s = all + strlen(all);
	char *r;

	if (s > all && s[-1] == '\n')
		s--;
	while (s > all && n > 0) {
		s--;
		if (*s == '\n')
			n--;
	}
	if (*s == '\n')
		s++;
	r = strdup(s);
	free(all);
	ck_assert_ptr_nonnull(r);
	return r;
}

char *
fixture_tmpdir(void)
{
	char tmpl[] = "/tmp/cqrs-t.XXXXXX";

	if (mkdtemp(tmpl) == NULL)
		ck_abort_msg("fixture: mkdtemp: %s", strerror(errno));
	chmod(tmpl, 0755);
	return strdup(tmpl);
}

bool
fixture_wait_file(const char *path, int timeout_ms)
{
	for (int waited = 0; access(path, F_OK) != 0; waited += 20) {
		if (waited >= timeout_ms)
			return false;
		usleep(20 * 1000);
	}
	return true;
}

void
fixture_touch(const char *path)
{
	FILE *f = fopen(path, "w");

	if (f == NULL)
		ck_abort_msg("fixture: %s: %s", path, strerror(errno));
	fclose(f);
}

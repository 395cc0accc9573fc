/*
 * cmdload - load generator for cqrs-cmdd.
 *
 *   cmdload -s SOCKET [-c CONNS] [-d DEPTH] [-T SECONDS] [-a ACCOUNTS] [--shared]
 *           [--prefix P] [--open-only | --no-open] [--ids] [--allow-conflict]
 *   cmdload -s SOCKET --one --prefix AGGREGATE_ID [--ids]
 *
 * Each connection (a thread) first opens its ACCOUNTS accounts P-<conn>-<k>
 * (not timed), then deposits 1 into them round robin, keeping DEPTH requests
 * in flight, for SECONDS. Prints commands/s (ok answers only) and latency
 * p50/p99/max in milliseconds over all answers, then the answers by error
 * code ("errors: conflict=0 unavailable=0 ...").
 *
 * --shared: all connections deposit into ACCOUNTS shared accounts
 *   P-shared-<k>, connection i starting at account i; only connection 0
 *   opens them, and an account that already exists (opened by another
 *   cmdload, answer `rejected`) is fine.
 * --open-only: open the accounts and exit; --no-open: do not open them (they
 *   were opened before), so the measured process starts straight away.
 * --ids: every command carries a fresh UUID id (an idempotency key the
 *   daemon records) instead of letting the daemon make one up.
 * --allow-conflict: conflict answers are counted and printed but do not make
 *   the exit status non-zero (runs that measure how many there are).
 * --one: send a single deposit to aggregate P and print its latency (cold
 *   start).
 *
 * Exit status: 0 when every answer was ok (but for conflicts with
 * --allow-conflict, and `rejected` when opening shared accounts), 1
 * otherwise, 2 for a usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "uuid.h"

/* The protocol's error codes (DESIGN.md), and a slot for anything else. */
static const char *const codes[] = {
	"conflict", "unavailable", "rejected", "invalid", "malformed", "too_large",
	"unknown_command", "forbidden", "id_reused", "internal", "other",
};
#define NCODES (sizeof(codes) / sizeof(codes[0]))
#define CODE_CONFLICT 0
#define CODE_REJECTED 2

struct worker {
	int idx;
	pthread_t th;
	long done;			/* ok answers while loading */
	long errors[NCODES];		/* error answers while loading, by code */
	long opened, open_errors[NCODES];
	double *lat;			/* milliseconds */
	long nlat, caplat;
	char first_error[256];
};

static const char *sock_path;
static int nconns = 16, depth = 1, seconds = 10, accounts = 16;
static int shared, one, open_only, no_open, with_ids, allow_conflict;
static const char *prefix = "b";
static volatile int stop;

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int
dial(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", sock_path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		fprintf(stderr, "cmdload: connect %s: %s\n", sock_path, strerror(errno));
		exit(1);
	}
	return fd;
}

struct reader {
	int fd;
	char buf[65536];
	size_t len, off;
};

/* Reads one line; returns a pointer into r->buf valid until the next call. */
static char *
read_line(struct reader *r)
{
	for (;;) {
		char *nl = memchr(r->buf + r->off, '\n', r->len - r->off);
		if (nl != NULL) {
			char *line = r->buf + r->off;
			*nl = '\0';
			r->off = (size_t)(nl - r->buf) + 1;
			return line;
		}
		if (r->off > 0) {
			memmove(r->buf, r->buf + r->off, r->len - r->off);
			r->len -= r->off;
			r->off = 0;
		}
		if (r->len == sizeof(r->buf))
			return NULL;	/* an answer longer than the buffer: give up */
		ssize_t n = read(r->fd, r->buf + r->len, sizeof(r->buf) - r->len);
		if (n <= 0)
			return NULL;
		r->len += (size_t)n;
	}
}

static void
send_all(int fd, const char *s, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, s, n);
		if (w <= 0) {
			perror("cmdload: write");
			exit(1);
		}
		s += w;
		n -= (size_t)w;
	}
}

/* The account a connection's seq-th deposit goes to. Shared accounts: each
 * connection starts at its own, so two accounts both see traffic at once. */
static int
account_no(const struct worker *w, long seq)
{
	return shared ? (int)((w->idx + seq) % accounts) : (int)(seq % accounts);
}

static size_t
fmt_cmd(char *buf, size_t size, const struct worker *w, const char *cmd, int acct,
	const char *data)
{
	char id[UUID_STR_LEN + 16] = "";
	char agg[160];
	int n;

	if (with_ids) {
		char u[UUID_STR_LEN];

		cqrs_uuid_v4(u);
		snprintf(id, sizeof(id), "\"id\":\"%s\",", u);
	}
	if (shared)
		snprintf(agg, sizeof(agg), "%s-shared-%d", prefix, acct);
	else
		snprintf(agg, sizeof(agg), "%s-%d-%d", prefix, w->idx, acct);
	n = snprintf(buf, size, "{%s\"command\":\"%s\",\"aggregate_id\":\"%s\",\"data\":%s}\n",
		     id, cmd, agg, data);
	return (size_t)n;
}

/* The index of an error answer's code in codes[]. */
static int
answer_code(const char *ans)
{
	const char *c = strstr(ans, "\"code\":\"");

	if (c != NULL) {
		c += strlen("\"code\":\"");
		for (size_t i = 0; i + 1 < NCODES; i++) {
			size_t n = strlen(codes[i]);
			if (strncmp(c, codes[i], n) == 0 && c[n] == '"')
				return (int)i;
		}
	}
	return (int)NCODES - 1;
}

static bool
answer_ok(const char *ans)
{
	return strstr(ans, "\"ok\":true") != NULL;
}

static void
record(struct worker *w, double ms)
{
	if (w->nlat == w->caplat) {
		w->caplat = w->caplat ? w->caplat * 2 : 65536;
		w->lat = realloc(w->lat, (size_t)w->caplat * sizeof(double));
		if (w->lat == NULL) {
			fprintf(stderr, "cmdload: out of memory\n");
			exit(1);
		}
	}
	w->lat[w->nlat++] = ms;
}

static void
note_error(struct worker *w, const char *ans)
{
	if (w->first_error[0] == '\0')
		snprintf(w->first_error, sizeof(w->first_error), "%s", ans);
}

/* Opens the worker's accounts, one at a time (an untimed warm-up). */
static void *
run_open(void *arg)
{
	struct worker *w = arg;
	struct reader *r = calloc(1, sizeof(*r));
	char line[512];
	int n = shared ? (w->idx == 0 ? accounts : 0) : accounts;

	if (r == NULL) {
		fprintf(stderr, "cmdload: out of memory\n");
		exit(1);
	}
	r->fd = dial();
	for (int a = 0; a < n; a++) {
		size_t len = fmt_cmd(line, sizeof(line), w, "account.open", a,
				     "{\"owner\":\"bench\"}");
		char *ans;

		send_all(r->fd, line, len);
		if ((ans = read_line(r)) == NULL) {
			fprintf(stderr, "cmdload: connection closed while opening\n");
			exit(1);
		}
		if (answer_ok(ans)) {
			w->opened++;
		} else {
			w->open_errors[answer_code(ans)]++;
			note_error(w, ans);
		}
	}
	close(r->fd);
	free(r);
	return NULL;
}

/* Deposits until `stop`, DEPTH in flight, then collects what is in flight. */
static void *
run_load(void *arg)
{
	struct worker *w = arg;
	struct reader *r = calloc(1, sizeof(*r));
	double *sent = calloc((size_t)depth, sizeof(double));
	char line[512];
	long seq = 0, got = 0;

	if (r == NULL || sent == NULL) {
		fprintf(stderr, "cmdload: out of memory\n");
		exit(1);
	}
	r->fd = dial();
	for (;;) {
		char *ans;

		while (!stop && seq - got < depth) {
			size_t n = fmt_cmd(line, sizeof(line), w, "account.deposit",
					   account_no(w, seq), "{\"amount\":1}");
			sent[seq % depth] = now_ms();
			send_all(r->fd, line, n);
			seq++;
		}
		if (got == seq)
			break;
		if ((ans = read_line(r)) == NULL) {
			fprintf(stderr, "cmdload: connection closed\n");
			exit(1);
		}
		record(w, now_ms() - sent[got % depth]);
		if (answer_ok(ans)) {
			w->done++;
		} else {
			w->errors[answer_code(ans)]++;
			note_error(w, ans);
		}
		got++;
	}
	close(r->fd);
	free(sent);
	free(r);
	return NULL;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* "conflict=N unavailable=N" always, then every other code seen. */
static void
print_codes(const char *label, const long *by_code)
{
	printf("%s:", label);
	for (size_t i = 0; i < NCODES; i++) {
		if (i == CODE_CONFLICT || i == 1 || by_code[i] > 0)
			printf(" %s=%ld", codes[i], by_code[i]);
	}
	printf("\n");
}

static void
run_threads(struct worker *ws, void *(*fn)(void *))
{
	for (int i = 0; i < nconns; i++) {
		if (pthread_create(&ws[i].th, NULL, fn, &ws[i]) != 0) {
			fprintf(stderr, "cmdload: cannot start thread %d\n", i);
			exit(1);
		}
	}
}

static void
join_threads(struct worker *ws)
{
	for (int i = 0; i < nconns; i++)
		pthread_join(ws[i].th, NULL);
}

static int
one_command(void)
{
	/* one deposit into an existing account, timed: cold-start latency */
	struct reader *r = calloc(1, sizeof(*r));
	char line[512], id[UUID_STR_LEN + 16] = "";
	double s, e;
	char *ans;
	int len;

	if (r == NULL)
		return 1;
	r->fd = dial();
	if (with_ids) {
		char u[UUID_STR_LEN];

		cqrs_uuid_v4(u);
		snprintf(id, sizeof(id), "\"id\":\"%s\",", u);
	}
	len = snprintf(line, sizeof(line), "{%s\"command\":\"account.deposit\","
		       "\"aggregate_id\":\"%s\",\"data\":{\"amount\":1}}\n", id, prefix);
	s = now_ms();
	send_all(r->fd, line, (size_t)len);
	ans = read_line(r);
	e = now_ms();
	printf("one command: %.1f ms: %s\n", e - s, ans ? ans : "(closed)");
	return ans && answer_ok(ans) ? 0 : 1;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "shared", no_argument, &shared, 1 },
		{ "one", no_argument, &one, 1 },
		{ "open-only", no_argument, &open_only, 1 },
		{ "no-open", no_argument, &no_open, 1 },
		{ "ids", no_argument, &with_ids, 1 },
		{ "allow-conflict", no_argument, &allow_conflict, 1 },
		{ "prefix", required_argument, NULL, 'p' },
		{ NULL, 0, NULL, 0 },
	};
	struct worker *ws;
	double t0, t1, *all;
	long total = 0, nerr = 0, n = 0, opened = 0, bad = 0;
	long by_code[NCODES] = { 0 }, open_by_code[NCODES] = { 0 };
	const char *first_error = NULL;
	int c;

	while ((c = getopt_long(argc, argv, "s:c:d:T:a:", opts, NULL)) != -1) {
		switch (c) {
		case 's': sock_path = optarg; break;
		case 'c': nconns = atoi(optarg); break;
		case 'd': depth = atoi(optarg); break;
		case 'T': seconds = atoi(optarg); break;
		case 'a': accounts = atoi(optarg); break;
		case 'p': prefix = optarg; break;
		case 0: break;
		default:
			fprintf(stderr, "usage: cmdload -s SOCKET [-c CONNS] [-d DEPTH] [-T SECONDS] "
					"[-a ACCOUNTS] [--shared] [--prefix P] [--open-only | --no-open] "
					"[--ids] [--allow-conflict] [--one]\n");
			return 2;
		}
	}
	if (sock_path == NULL || nconns < 1 || depth < 1 || accounts < 1 || seconds < 0 ||
	    (open_only && no_open) || strlen(prefix) > 100) {
		fprintf(stderr, "cmdload: -s SOCKET is required; counts must be >= 1; "
				"--open-only and --no-open exclude each other; prefix <= 100 bytes\n");
		return 2;
	}
	if (one)
		return one_command();

	ws = calloc((size_t)nconns, sizeof(*ws));
	if (ws == NULL)
		return 1;
	for (int i = 0; i < nconns; i++)
		ws[i].idx = i;
	if (!no_open) {
		run_threads(ws, run_open);
		join_threads(ws);
		for (int i = 0; i < nconns; i++) {
			opened += ws[i].opened;
			for (size_t k = 0; k < NCODES; k++) {
				open_by_code[k] += ws[i].open_errors[k];
				/* a shared account another cmdload opened first */
				if (ws[i].open_errors[k] > 0 && !(shared && k == CODE_REJECTED))
					bad += ws[i].open_errors[k];
			}
			if (first_error == NULL && ws[i].first_error[0] != '\0')
				first_error = ws[i].first_error;
		}
		if (open_only || bad > 0) {
			printf("opened %ld accounts (conns %d, %s)\n", opened, nconns,
			       shared ? "shared accounts" : "distinct accounts");
			print_codes("open errors", open_by_code);
		}
		if (bad > 0) {
			fprintf(stderr, "cmdload: opening failed, first error: %s\n", first_error);
			return 1;
		}
		if (open_only)
			return 0;
		first_error = NULL;
	}

	t0 = now_ms();
	run_threads(ws, run_load);
	sleep((unsigned)seconds);
	stop = 1;
	join_threads(ws);
	t1 = now_ms();
	for (int i = 0; i < nconns; i++) {
		total += ws[i].done;
		n += ws[i].nlat;
		for (size_t k = 0; k < NCODES; k++) {
			by_code[k] += ws[i].errors[k];
			nerr += ws[i].errors[k];
			if (ws[i].errors[k] > 0 && !(allow_conflict && k == CODE_CONFLICT))
				bad += ws[i].errors[k];
		}
		if (first_error == NULL && ws[i].first_error[0] != '\0')
			first_error = ws[i].first_error;
	}
	all = malloc((size_t)(n ? n : 1) * sizeof(double));
	if (all == NULL)
		return 1;
	n = 0;
	for (int i = 0; i < nconns; i++) {
		memcpy(all + n, ws[i].lat, (size_t)ws[i].nlat * sizeof(double));
		n += ws[i].nlat;
	}
	qsort(all, (size_t)n, sizeof(double), cmp_double);
	printf("cmdd: %ld commands in %.2f s: %.0f commands/s, p50 %.2f ms, p99 %.2f ms, "
	       "max %.2f ms, errors %ld (conns %d, depth %d, %d %s accounts%s)\n",
	       total, (t1 - t0) / 1e3, total / ((t1 - t0) / 1e3),
	       n ? all[n / 2] : 0, n ? all[(long)(n * 0.99)] : 0, n ? all[n - 1] : 0, nerr,
	       nconns, depth, shared ? accounts : accounts * nconns,
	       shared ? "shared" : "distinct", with_ids ? ", ids" : "");
	print_codes("errors", by_code);
	if (first_error != NULL)
		fprintf(stderr, "cmdload: first error: %s\n", first_error);
	return bad > 0 ? 1 : 0;
}

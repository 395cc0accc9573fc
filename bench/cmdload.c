/*
 * cmdload - load generator for cqrs-cmdd.
 *
 *   cmdload -s SOCKET [-c CONNS] [-d DEPTH] [-T SECONDS] [-a ACCOUNTS] [--shared]
 *           [--prefix P] [--open-only] [--one]
 *
 * Each connection (a thread) first opens its accounts (not timed), then
 * deposits into them round robin, keeping DEPTH requests in flight, for
 * SECONDS. --shared: every connection deposits into one account. --one:
 * send a single deposit to account P-0-0 and print its latency (cold start).
 * Prints commands/s and latency p50/p99/max in milliseconds.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

struct worker {
	int idx;
	pthread_t th;
	long done, errors;
	double *lat;		/* milliseconds */
	long nlat, caplat;
	char first_error[256];
};

static const char *sock_path;
static int nconns = 16, depth = 1, seconds = 10, accounts = 16, shared, one;
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

static int
account_no(struct worker *w, long i)
{
	(void)w;
	return shared ? 0 : (int)(i % accounts);
}

static size_t
fmt_cmd(char *buf, size_t size, struct worker *w, const char *cmd, int acct, const char *data)
{
	int n = shared ? snprintf(buf, size, "{\"command\":\"%s\",\"aggregate_id\":\"%s-shared\","
				  "\"data\":%s}\n", cmd, prefix, data)
		       : snprintf(buf, size, "{\"command\":\"%s\",\"aggregate_id\":\"%s-%d-%d\","
				  "\"data\":%s}\n", cmd, prefix, w->idx, acct, data);
	return (size_t)n;
}

static void
record(struct worker *w, double ms)
{
	if (w->nlat == w->caplat) {
		w->caplat = w->caplat ? w->caplat * 2 : 65536;
		w->lat = realloc(w->lat, (size_t)w->caplat * sizeof(double));
	}
	w->lat[w->nlat++] = ms;
}

static void *
run(void *arg)
{
	struct worker *w = arg;
	struct reader r = { .fd = dial() };
	char line[512];
	double *sent = calloc((size_t)depth, sizeof(double));
	long seq = 0, got = 0;
	char *ans;

	/* open the accounts first (an error for an account that exists is fine) */
	for (int a = 0; a < (shared ? (w->idx == 0) : accounts); a++) {
		size_t n = fmt_cmd(line, sizeof(line), w, "account.open", a, "{\"owner\":\"bench\"}");
		send_all(r.fd, line, n);
		if (read_line(&r) == NULL) {
			fprintf(stderr, "cmdload: connection closed while opening\n");
			exit(1);
		}
	}
	if (one)
		goto out;
	while (!stop || got < seq) {
		while (!stop && seq - got < depth) {
			size_t n = fmt_cmd(line, sizeof(line), w, "account.deposit",
					   account_no(w, seq), "{\"amount\":1}");
			sent[seq % depth] = now_ms();
			send_all(r.fd, line, n);
			seq++;
		}
		if (got == seq)
			break;
		ans = read_line(&r);
		if (ans == NULL) {
			fprintf(stderr, "cmdload: connection closed\n");
			exit(1);
		}
		record(w, now_ms() - sent[got % depth]);
		if (strstr(ans, "\"ok\":true") == NULL) {
			if (w->errors++ == 0)
				snprintf(w->first_error, sizeof(w->first_error), "%s", ans);
		} else {
			w->done++;
		}
		got++;
	}
out:
	close(r.fd);
	free(sent);
	return NULL;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "shared", no_argument, &shared, 1 },
		{ "one", no_argument, &one, 1 },
		{ "prefix", required_argument, NULL, 'p' },
		{ NULL, 0, NULL, 0 },
	};
	struct worker *ws;
	double t0, t1, *all;
	long total = 0, errors = 0, n = 0;
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
					"[-a ACCOUNTS] [--shared] [--prefix P] [--one]\n");
			return 2;
		}
	}
	if (sock_path == NULL || nconns < 1 || depth < 1 || accounts < 1) {
		fprintf(stderr, "cmdload: -s SOCKET is required; counts must be >= 1\n");
		return 2;
	}
	if (one) {
		/* one deposit into an existing account, timed: cold-start latency */
		struct reader r = { .fd = dial() };
		char line[256];
		int len = snprintf(line, sizeof(line), "{\"command\":\"account.deposit\","
				   "\"aggregate_id\":\"%s\",\"data\":{\"amount\":1}}\n", prefix);
		double s = now_ms();
		send_all(r.fd, line, (size_t)len);
		char *ans = read_line(&r);
		double e = now_ms();
		printf("one command: %.1f ms: %s\n", e - s, ans ? ans : "(closed)");
		return ans && strstr(ans, "\"ok\":true") ? 0 : 1;
	}
	ws = calloc((size_t)nconns, sizeof(*ws));
	for (int i = 0; i < nconns; i++) {
		ws[i].idx = i;
	}
	/* the accounts are opened before the clock starts: run() opens, then
	 * waits for `stop` = 0 ... simpler: open in a first pass */
	one = 1;
	for (int i = 0; i < nconns; i++)
		pthread_create(&ws[i].th, NULL, run, &ws[i]);
	for (int i = 0; i < nconns; i++)
		pthread_join(ws[i].th, NULL);
	one = 0;
	t0 = now_ms();
	for (int i = 0; i < nconns; i++)
		pthread_create(&ws[i].th, NULL, run, &ws[i]);
	sleep((unsigned)seconds);
	stop = 1;
	for (int i = 0; i < nconns; i++)
		pthread_join(ws[i].th, NULL);
	t1 = now_ms();
	for (int i = 0; i < nconns; i++) {
		total += ws[i].done;
		errors += ws[i].errors;
		n += ws[i].nlat;
	}
	all = malloc((size_t)(n ? n : 1) * sizeof(double));
	n = 0;
	for (int i = 0; i < nconns; i++) {
		memcpy(all + n, ws[i].lat, (size_t)ws[i].nlat * sizeof(double));
		n += ws[i].nlat;
		if (ws[i].errors > 0 && errors == ws[i].errors)
			fprintf(stderr, "cmdload: first error: %s\n", ws[i].first_error);
	}
	qsort(all, (size_t)n, sizeof(double), cmp_double);
	printf("cmdd: %ld commands in %.2f s: %.0f commands/s, p50 %.2f ms, p99 %.2f ms, "
	       "max %.2f ms, errors %ld (conns %d, depth %d, %s)\n",
	       total, (t1 - t0) / 1e3, total / ((t1 - t0) / 1e3),
	       n ? all[n / 2] : 0, n ? all[(long)(n * 0.99)] : 0, n ? all[n - 1] : 0, errors,
	       nconns, depth, shared ? "one shared aggregate" : "distinct aggregates");
	return errors > 0 ? 1 : 0;
}

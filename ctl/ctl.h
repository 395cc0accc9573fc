/*
 * ctl.h - cqrsctl's verbs. main.c reads the global options and calls one;
 * each returns the process exit status (0 ok, 1 failure, 2 usage).
 */
#ifndef CQRS_CTL_H
#define CQRS_CTL_H

#include <stdio.h>

struct config;

struct ctl {
	struct config *cfg;	/* borrowed */
	const char *config_path;	/* NULL: default */
	FILE *out;		/* results */
	FILE *err;		/* messages */
};

struct ctl_verb {
	const char *name;
	int (*run)(struct ctl *ctl, int argc, char **argv);
	const char *usage;	/* one line: "append STREAM [FILE]" */
	const char *help;	/* the rest of --help */
};

/* The verbs, NULL-terminated name. */
extern const struct ctl_verb ctl_verbs[];

/* Prints "cqrsctl: " + message to ctl->err; returns 1. */
int ctl_fail(struct ctl *ctl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints "usage: cqrsctl VERB ..." for verb; returns 2. */
int ctl_usage(struct ctl *ctl, const struct ctl_verb *verb);

/* True when argv holds -h or --help. */
int ctl_wants_help(int argc, char **argv);

/* The store conninfo from config/env; NULL after printing an error. */
const char *ctl_conninfo(struct ctl *ctl);

int ctl_migrate(struct ctl *ctl, int argc, char **argv);
int ctl_append(struct ctl *ctl, int argc, char **argv);
int ctl_read(struct ctl *ctl, int argc, char **argv);
int ctl_read_all(struct ctl *ctl, int argc, char **argv);
int ctl_send(struct ctl *ctl, int argc, char **argv);
int ctl_status(struct ctl *ctl, int argc, char **argv);
int ctl_replay(struct ctl *ctl, int argc, char **argv);
int ctl_dead(struct ctl *ctl, int argc, char **argv);

#endif

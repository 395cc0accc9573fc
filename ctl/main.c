/* cqrsctl - the operator's and scripts' client. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "cqrs/log.h"
#include "ctl.h"
#include "secret.h"

static void
usage(FILE *f)
{
	fprintf(f, "usage: cqrsctl [-c FILE] VERB [ARGS...]\n\n"
		   "Global options (before the verb):\n"
		   "  -c, --config FILE   configuration file (default " CQRS_CONFIG_DEFAULT ")\n"
		   "  -h, --help          this help; `cqrsctl VERB --help` for a verb\n"
		   "  -V, --version       print the version\n\nVerbs:\n");
	for (const struct ctl_verb *v = ctl_verbs; v->name != NULL; v++)
		fprintf(f, "  %s\n", v->usage);
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	struct ctl ctl = { .out = stdout, .err = stderr };
	struct cqrs_err err = { 0 };
	const char *path = NULL;
	int c, rc;

	/* '+': stop at the verb, its options are its own */
	while ((c = getopt_long(argc, argv, "+c:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			path = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("cqrsctl %s\n", CQRS_VERSION);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	for (const struct ctl_verb *v = ctl_verbs; v->name != NULL; v++) {
		if (strcmp(v->name, argv[optind]) != 0)
			continue;
		if (ctl_wants_help(argc - optind, argv + optind)) {
			printf("usage: cqrsctl [-c FILE] %s\n\n%s", v->usage, v->help);
			return 0;
		}
		/* the default file may be absent: environment and defaults then */
		rc = cqrs_config_load(path ? path : CQRS_CONFIG_DEFAULT, &ctl.cfg, &err);
		if (rc == CQRS_ENOTFOUND && path == NULL)
			rc = cqrs_config_load(NULL, &ctl.cfg, &err);
		if (rc < 0) {
			fprintf(stderr, "cqrsctl: %s\n", err.msg);
			return 1;
		}
		ctl.config_path = path;
		{
			int level = cqrs_log_level_parse(cqrs_config_get(ctl.cfg, "log", "level", "warn"));
			cqrs_log_set_level(level < 0 ? CQRS_LOG_WARN : level);
		}
		if (cqrs_secret_setup(ctl.cfg, &err) < 0) {
			fprintf(stderr, "cqrsctl: %s\n", err.msg);
			cqrs_config_free(ctl.cfg);
			return 1;
		}
		rc = v->run(&ctl, argc - optind, argv + optind);
		cqrs_config_free(ctl.cfg);
		return rc;
	}
	fprintf(stderr, "cqrsctl: unknown verb \"%s\" (see cqrsctl --help)\n", argv[optind]);
	return 2;
}

/* sdnotify.c - thin wrappers over libsystemd's sd-daemon calls. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include <systemd/sd-daemon.h>

#include "sdnotify.h"

/* 1 after READY=1, 2 after STOPPING=1: whether a reload may be announced */
static atomic_int state;

void
cqrs_sdnotify_ready(const char *status)
{
	if (status != NULL)
		sd_notifyf(0, "READY=1\nSTATUS=%s", status);
	else
		sd_notify(0, "READY=1");
	if (atomic_load(&state) == 0)
		atomic_store(&state, 1);
}

void
cqrs_sdnotify_status(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	sd_notifyf(0, "STATUS=%s", buf);
}

void
cqrs_sdnotify_stopping(void)
{
	atomic_store(&state, 2);
	sd_notify(0, "STOPPING=1");
}

bool
cqrs_sdnotify_serving(void)
{
	return atomic_load(&state) == 1;
}

void
cqrs_sdnotify_reloading(void)
{
	sd_notify(0, "RELOADING=1");
}

void
cqrs_sdnotify_watchdog(void)
{
	sd_notify(0, "WATCHDOG=1");
}

uint64_t
cqrs_sdnotify_watchdog_usec(void)
{
	uint64_t usec = 0;

	if (sd_watchdog_enabled(0, &usec) <= 0)
		return 0;
	return usec;
}

int
cqrs_sdnotify_listen_fds(void)
{
	int n = sd_listen_fds(1);

	return n < 0 ? 0 : n;
}

/*
 * sdnotify.h - systemd integration: readiness/status notifications and
 * socket activation. No-ops when not run by systemd (NOTIFY_SOCKET and
 * LISTEN_FDS unset).
 */
#ifndef CQRS_SDNOTIFY_H
#define CQRS_SDNOTIFY_H

#include <stdint.h>

/* READY=1 (and STATUS= when status is not NULL). */
void sdnotify_ready(const char *status);
/* STATUS=... printf-style. */
void sdnotify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sdnotify_stopping(void);
void sdnotify_reloading(void);
void sdnotify_watchdog(void);
/* The watchdog interval in microseconds, 0 when not enabled for us. */
uint64_t sdnotify_watchdog_usec(void);
/* Number of sockets passed by systemd (fds start at 3); 0 when none. */
int sdnotify_listen_fds(void);

#endif

/*
 * sdnotify.h - systemd integration: readiness/status notifications and
 * socket activation. No-ops when not run by systemd (NOTIFY_SOCKET and
 * LISTEN_FDS unset).
 */
#ifndef CQRS_SDNOTIFY_H
#define CQRS_SDNOTIFY_H

#include <stdbool.h>
#include <stdint.h>

/* READY=1 (and STATUS= when status is not NULL). */
void cqrs_sdnotify_ready(const char *status);
/* STATUS=... printf-style. */
void cqrs_sdnotify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cqrs_sdnotify_stopping(void);
/* Whether READY=1 was sent and STOPPING=1 not yet (what systemd thinks of a
 * Type=notify unit: started, not stopping). */
bool cqrs_sdnotify_serving(void);
void cqrs_sdnotify_reloading(void);
void cqrs_sdnotify_watchdog(void);
/* The watchdog interval in microseconds, 0 when not enabled for us. */
uint64_t cqrs_sdnotify_watchdog_usec(void);
/* Number of sockets passed by systemd (fds start at 3); 0 when none. */
int cqrs_sdnotify_listen_fds(void);

#endif

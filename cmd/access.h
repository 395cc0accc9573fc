/*
 * access.h - cqrs-cmdd's [access] policy: which senders (the socket's peer
 * credentials) may send which commands.
 *
 *   [access]
 *   account.* = alice @tellers uid:1001
 *   admin.reset = root
 *   * = @ops
 *
 * A key is a command name, "prefix.*" or "*"; its value lists users by name,
 * "uid:N", and "@group" (the sender's primary or supplementary groups). When
 * the section has keys, a command is allowed only if a key that matches it
 * lists the sender; without the section, every command is allowed. Names
 * are resolved when the policy is loaded (start, --check-config, SIGHUP):
 * an unknown user or group refuses the configuration.
 */
#ifndef CQRS_CMD_ACCESS_H
#define CQRS_CMD_ACCESS_H

#include <stdbool.h>

#include "cqrs/err.h"

struct config;
struct cmdd_peer;
struct access_policy;

/* Reads [access] from cfg: *out is NULL when the section has no keys
 * (everything allowed). CQRS_ECONFIG naming the key and the name. */
int access_load(const struct config *cfg, struct access_policy **out, struct cqrs_err *err)
	__attribute__((warn_unused_result));
void access_free(struct access_policy *p);

/* Whether peer may send command under p (NULL p: yes). An unknown peer
 * (no credentials) is allowed nothing by a policy. */
bool access_allows(const struct access_policy *p, const char *command,
		   const struct cmdd_peer *peer);

/* Its number of rules (keys), for logs. */
int access_rules(const struct access_policy *p);

#endif

/*
 * fuzz_envelope.c - the event envelope decoder (common/envelope.c), which
 * reads every message body the consumer receives and every event cqrsctl
 * puts back.
 *
 * Properties besides the sanitizers':
 * - a refusal is CQRS_EINVALID (never anything else: the input is all there
 *   is) with a message;
 * - what is accepted passes cqrs_envelope_validate(), and encoding it gives
 *   an envelope that decodes again to the same encoding (a round trip
 *   loses nothing and adds nothing).
 */
#include <string.h>

#include "envelope.h"
#include "fuzz.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cqrs_event *ev = NULL, *again = NULL;
	struct cqrs_err err = { 0 };
	char type[CQRS_TYPE_MAX + 1];
	char *enc, *enc2;
	int rc;

	rc = cqrs_envelope_decode((const char *)data, size, &ev, &err);
	if (rc != 0) {
		FUZZ_CHECK(rc == CQRS_EINVALID && ev == NULL && err.msg[0] != '\0',
			   "refused with %d: %s", rc, err.msg);
		return 0;
	}
	FUZZ_CHECK(ev != NULL, "accepted without an event");
	rc = cqrs_envelope_validate(ev, &err);
	FUZZ_CHECK(rc == 0, "decoded event does not validate: %s", err.msg);
	(void)cqrs_envelope_stream_type(ev->stream, type, sizeof(type));

	enc = cqrs_envelope_encode(ev);
	FUZZ_CHECK(enc != NULL, "encode failed");
	rc = cqrs_envelope_decode(enc, strlen(enc), &again, &err);
	FUZZ_CHECK(rc == 0, "own encoding refused: %s: %s", err.msg, enc);
	enc2 = cqrs_envelope_encode(again);
	FUZZ_CHECK(enc2 != NULL && strcmp(enc, enc2) == 0, "round trip changed\n%s\nto\n%s", enc,
		   enc2 ? enc2 : "(null)");
	free(enc2);
	free(enc);
	cqrs_event_free(again);
	cqrs_event_free(ev);
	return 0;
}

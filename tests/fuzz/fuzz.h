/*
 * fuzz.h - what every target in tests/fuzz/ shares.
 *
 * A target is one LLVMFuzzerTestOneInput(): libFuzzer calls it with inputs
 * it makes up (`make fuzz`), and replay.c, a Check suite built with the
 * normal compiler, calls it once per file of the seed corpus and of the
 * crash reproducers (`make check`). A target checks properties on top of
 * the sanitizers' own: FUZZ_CHECK() aborts with a message, so libFuzzer
 * keeps the input as a crash and the replay fails on it.
 */
#ifndef CQRS_FUZZ_H
#define CQRS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond, ...)                                                                \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "%s:%d: property failed: %s: ", __FILE__, __LINE__, \
				#cond);                                                      \
			fprintf(stderr, __VA_ARGS__);                                        \
			fputc('\n', stderr);                                                 \
			abort();                                                             \
		}                                                                            \
	} while (0)

#endif

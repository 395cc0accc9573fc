# cqrs - one non-recursive Makefile for the library, daemons, tools, plugins and tests.
#
#   make                    build everything into build/
#   make check              install missing packages, build, run every test
#   make demo               install missing packages, build, run the suite end to end
#   make SANITIZE=address,undefined check
#   make fuzz FUZZ_SECONDS=120    libFuzzer on each target in tests/fuzz/
#   make install PREFIX=/usr DESTDIR=/tmp/stage

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
DATADIR ?= $(PREFIX)/share
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
SYSCONFDIR ?= /etc
DESTDIR ?=

VERSION := 0.1.0
ABI_MAJOR := 0
CC ?= cc
SANITIZE ?=
# make V=1 shows the commands
ifeq ($(V),1)
Q :=
say := @true
else
Q := @
say := @printf '  %-6s %s\n'
endif
comma := ,
# A sanitizer build lives beside the plain one, so switching does not
# rebuild everything (and two builds can run side by side).
ifeq ($(SANITIZE),)
B := build
else
B := build/san-$(subst $(comma),-,$(SANITIZE))
endif
PKG_CONFIG ?= pkg-config

PKGS := libpq libevent json-c librabbitmq inih libsystemd
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null)
CHECK_CFLAGS := $(shell $(PKG_CONFIG) --cflags check 2>/dev/null)
CHECK_LIBS := $(shell $(PKG_CONFIG) --libs check 2>/dev/null)

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
	-Wformat=2 -Wundef -Wpointer-arith -Wvla -Wno-format-nonliteral
CFLAGS ?= -O2 -g
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) -fPIC -MMD -MP \
	-Icommon/include -Icommon $(PKG_CFLAGS) -DCQRS_VERSION='"$(VERSION)"'
ALL_LDFLAGS := $(LDFLAGS) -L$(B)/lib -Wl,-rpath,'$$ORIGIN/../lib'
ifneq ($(SANITIZE),)
ALL_CFLAGS += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
ALL_LDFLAGS += -fsanitize=$(SANITIZE)
endif

# Objects are rebuilt when the flags change (a SANITIZE build after a plain one).
FLAGS_STAMP := $(B)/.flags
$(shell mkdir -p $(B) && echo '$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS)' > $(B)/.flags.new && \
	(cmp -s $(B)/.flags.new $(B)/.flags || mv $(B)/.flags.new $(B)/.flags); rm -f $(B)/.flags.new)

# ---- libcqrs --------------------------------------------------------------
LIB_SRCS := $(wildcard common/*.c)
LIB_OBJS := $(LIB_SRCS:%.c=$(B)/obj/%.o) $(B)/obj/gen/migrations.o
LIB_SO := $(B)/lib/libcqrs.so
LIB_A := $(B)/lib/libcqrs.a
MIGRATIONS := $(sort $(wildcard sql/*.sql))

$(B)/gen/migrations.c: $(MIGRATIONS) tools/embed-sql.sh
	@mkdir -p $(@D)
	$(say) GEN $@
	$(Q)sh tools/embed-sql.sh $(MIGRATIONS) > $@.tmp && mv $@.tmp $@

$(B)/obj/gen/%.o: $(B)/gen/%.c $(FLAGS_STAMP)
	@mkdir -p $(@D)
	$(say) CC $<
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(B)/obj/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(@D)
	$(say) CC $<
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

LIB_MAP := common/libcqrs.map
$(LIB_SO): $(LIB_OBJS) $(LIB_MAP)
	@mkdir -p $(@D)
	$(say) LD $@
	$(Q)$(CC) -shared -Wl,-soname,libcqrs.so.$(ABI_MAJOR) -Wl,--version-script=$(LIB_MAP) \
		-o $@.$(ABI_MAJOR) $(LIB_OBJS) $(ALL_LDFLAGS) $(PKG_LIBS) -lm
	$(Q)ln -sf libcqrs.so.$(ABI_MAJOR) $@

$(LIB_A): $(LIB_OBJS)
	@mkdir -p $(@D)
	$(say) AR $@
	$(Q)rm -f $@ && ar rcs $@ $^

# ---- programs -------------------------------------------------------------
# prog(binary,dir): every .c in dir; main.c is left out of the unit objects
# that tests link.
define prog
$(1)_SRCS := $$(wildcard $(2)/*.c)
$(1)_OBJS := $$($(1)_SRCS:%.c=$(B)/obj/%.o)
$(1)_UNIT_OBJS := $$(filter-out $(B)/obj/$(2)/main.o,$$($(1)_OBJS))
ifneq ($$($(1)_SRCS),)
PROGS += $(B)/bin/$(1)
$(B)/bin/$(1): $$($(1)_OBJS) $(LIB_SO)
	@mkdir -p $$(@D)
	$$(say) LD $$@
	$$(Q)$(CC) -o $$@ $$($(1)_OBJS) $$(ALL_LDFLAGS) -lcqrs $(PKG_LIBS) -ldl -lm
endif
endef
$(eval $(call prog,cqrs-cmdd,cmd))
$(eval $(call prog,cqrs-tracker,tracker))
$(eval $(call prog,cqrs-consumer,consumer))
$(eval $(call prog,cqrsctl,ctl))

# ---- plugins --------------------------------------------------------------
PLUGIN_DIRS := $(patsubst %/,%,$(dir $(wildcard examples/*/*.c) $(wildcard tests/plugins/*/*.c)))
PLUGINS :=
define plugin
PLUGINS += $(B)/plugins/$(notdir $(1)).so
$(B)/plugins/$(notdir $(1)).so: $$(patsubst %.c,$(B)/obj/%.o,$$(wildcard $(1)/*.c)) $(LIB_SO)
	@mkdir -p $$(@D)
	$$(say) LD $$@
	$$(Q)$(CC) -shared -o $$@ $$(filter %.o,$$^) $$(ALL_LDFLAGS) -lcqrs $(PKG_LIBS)
endef
$(foreach d,$(sort $(PLUGIN_DIRS)),$(eval $(call plugin,$(d))))
# plugins export their entry point only
$(B)/obj/examples/%.o $(B)/obj/tests/plugins/%.o: ALL_CFLAGS += -fvisibility=hidden

# ---- tests ----------------------------------------------------------------
UNIT_TESTS := $(patsubst tests/unit/%.c,$(B)/tests/unit/%,$(wildcard tests/unit/test_*.c))
INTEG_TESTS := $(patsubst tests/integration/%.c,$(B)/tests/integration/%,$(wildcard tests/integration/test_*.c))
E2E_TESTS := $(patsubst tests/e2e/%.c,$(B)/tests/e2e/%,$(wildcard tests/e2e/test_*.c))
# servers frozen, clients hostile: real servers, run after the integration suites
FAULT_TESTS := $(patsubst tests/faults/%.c,$(B)/tests/faults/%,$(wildcard tests/faults/test_*.c))
FIXTURE_OBJS := $(patsubst %.c,$(B)/obj/%.o,$(wildcard tests/lib/*.c))
TEST_BINS := $(UNIT_TESTS) $(INTEG_TESTS) $(FAULT_TESTS) $(E2E_TESTS)

$(B)/obj/tests/%.o: ALL_CFLAGS += $(CHECK_CFLAGS) -Itests/lib -DCQRS_SRCDIR='"$(CURDIR)"' -DCQRS_BUILDDIR='"$(CURDIR)/$(B)"'

# A test links the daemon unit objects it names after its own name prefix:
# test_cmdd_* links cmd's units, test_tracker_* the tracker's, and so on.
test_units = $(if $(findstring test_cmdd,$(1)),$(cqrs-cmdd_UNIT_OBJS)) \
	$(if $(findstring test_tracker,$(1)),$(cqrs-tracker_UNIT_OBJS)) \
	$(if $(findstring test_consumer,$(1)),$(cqrs-consumer_UNIT_OBJS)) \
	$(if $(findstring test_ctl,$(1)),$(cqrsctl_UNIT_OBJS))

.SECONDEXPANSION:
$(B)/tests/%: $(B)/obj/tests/%.o $(FIXTURE_OBJS) $(LIB_SO) $$(call test_units,$$*)
	@mkdir -p $(@D)
	$(say) LD $@
	$(Q)$(CC) -o $@ $(filter %.o,$^) $(ALL_LDFLAGS) -Wl,-rpath,$(CURDIR)/$(B)/lib -lcqrs $(PKG_LIBS) $(CHECK_LIBS) -ldl -lm

# ---- fuzzing --------------------------------------------------------------
# tests/fuzz/fuzz_T.c is one libFuzzer target; each links libcqrs and the
# daemon units named below. `make check` runs test_fuzz_T: the target built
# with the normal compiler around tests/fuzz/replay.c, which feeds it each
# seed and each crash reproducer once. `make fuzz` builds the targets with
# clang and libFuzzer (in a build of its own) and runs each for FUZZ_SECONDS.
FUZZ_TARGETS := request envelope config message http
fuzz_units_request := $(B)/obj/cmd/proto.o
fuzz_units_config := $(cqrs-cmdd_UNIT_OBJS) $(cqrs-tracker_UNIT_OBJS) $(cqrs-consumer_UNIT_OBJS)
fuzz_units_message := $(cqrs-consumer_UNIT_OBJS)
FUZZ_REPLAY := $(FUZZ_TARGETS:%=$(B)/tests/fuzz/test_fuzz_%)
FUZZ_BINS := $(FUZZ_TARGETS:%=$(B)/fuzz/fuzz_%)

$(FUZZ_TARGETS:%=$(B)/obj/tests/fuzz/replay-%.o): $(B)/obj/tests/fuzz/replay-%.o: tests/fuzz/replay.c $(FLAGS_STAMP)
	@mkdir -p $(@D)
	$(say) CC $@
	$(Q)$(CC) $(ALL_CFLAGS) -DFUZZ_TARGET='"$*"' -c -o $@ $<

$(FUZZ_REPLAY): $(B)/tests/fuzz/test_fuzz_%: $(B)/obj/tests/fuzz/fuzz_%.o \
		$(B)/obj/tests/fuzz/replay-%.o $(LIB_SO) $$(fuzz_units_$$*)
	@mkdir -p $(@D)
	$(say) LD $@
	$(Q)$(CC) -o $@ $(filter %.o,$^) $(ALL_LDFLAGS) -Wl,-rpath,$(CURDIR)/$(B)/lib -lcqrs $(PKG_LIBS) $(CHECK_LIBS) -ldl -lm

# Static: libFuzzer sees the library's coverage as the target's own.
$(FUZZ_BINS): $(B)/fuzz/fuzz_%: $(B)/obj/tests/fuzz/fuzz_%.o $(LIB_A) $$(fuzz_units_$$*)
	@mkdir -p $(@D)
	$(say) LD $@
	$(Q)$(CC) -fsanitize=fuzzer -o $@ $(filter %.o,$^) $(LIB_A) $(ALL_LDFLAGS) $(PKG_LIBS) -ldl -lm

# ---- benchmarks -----------------------------------------------------------
BENCH_BINS := $(patsubst bench/%.c,$(B)/bench/%,$(wildcard bench/*.c))
$(B)/bench/%: $(B)/obj/bench/%.o $(LIB_SO)
	@mkdir -p $(@D)
	$(say) LD $@
	$(Q)$(CC) -o $@ $< $(ALL_LDFLAGS) -Wl,-rpath,$(CURDIR)/$(B)/lib -lcqrs $(PKG_LIBS) -lpthread -lm

bench-cmd: deps
	@$(MAKE) --no-print-directory all $(BENCH_BINS)
	@sh bench/bench-cmd.sh

bench-tracker: deps
	@$(MAKE) --no-print-directory all $(BENCH_BINS)
	@sh bench/bench-tracker.sh

bench-consumer: deps
	@$(MAKE) --no-print-directory all $(BENCH_BINS)
	@sh bench/bench-consumer.sh

# ---- top-level targets ----------------------------------------------------
all: $(LIB_SO) $(LIB_A) $(PROGS) $(PLUGINS)
tests: all $(TEST_BINS) $(FUZZ_REPLAY)

deps:
	@sh deploy/dev/deps.sh

# The README's command: packages first (in a fresh make, so pkg-config sees
# them), then build and run every suite.
check: deps
	@$(MAKE) --no-print-directory test

test: tests
	@B=$(B) sh tests/run.sh $(UNIT_TESTS) $(FUZZ_REPLAY) -- $(INTEG_TESTS) $(FAULT_TESTS) -- $(E2E_TESTS)

unit: tests
	@B=$(B) sh tests/run.sh $(UNIT_TESTS) $(FUZZ_REPLAY)

# libFuzzer, one target after the other, FUZZ_SECONDS each (FUZZ_TARGETS
# picks some). clang comes from Debian (deps.sh --fuzz); a build of its
# own, with coverage and the sanitizers. Grown corpora and crashes stay in
# build/fuzz/ (tests/fuzz/run.sh says where); see the README.
FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang
FUZZ_SAN := fuzzer-no-link,address,undefined
fuzz:
	@sh deploy/dev/deps.sh --fuzz
	@$(MAKE) --no-print-directory CC=$(FUZZ_CC) SANITIZE=$(FUZZ_SAN) fuzz-bins
	@FUZZ_BIN=build/san-$(subst $(comma),-,$(FUZZ_SAN))/fuzz FUZZ_SECONDS=$(FUZZ_SECONDS) \
		sh tests/fuzz/run.sh $(FUZZ_TARGETS)

fuzz-bins: $(FUZZ_BINS)

demo: deps
	@$(MAKE) --no-print-directory all
	@CQRS_BUILD_DIR=$(B) sh deploy/dev/demo.sh demo

up: deps
	@$(MAKE) --no-print-directory all
	@CQRS_BUILD_DIR=$(B) sh deploy/dev/demo.sh up

down:
	@CQRS_BUILD_DIR=$(B) sh deploy/dev/demo.sh down

# install: what a Debian admin expects, under PREFIX (/usr/local by default;
# PREFIX=/usr for a host-wide install). Units go to PREFIX/lib/systemd/system
# (systemd reads /usr/local/lib/systemd/system too), the sysusers.d file
# beside them; /etc/cqrs/cqrs.conf is never written, only cqrs.conf.example.
# See docs/deploy.md.
install: UNITDIR ?= $(PREFIX)/lib/systemd/system
install: SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
install: DOCDIR ?= $(DATADIR)/doc/cqrs
install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR)/cqrs \
		$(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(LIBDIR)/cqrs/plugins $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(SYSCONFDIR)/cqrs $(DESTDIR)$(DOCDIR)
	install -m 755 $(PROGS) $(DESTDIR)$(BINDIR)/
	install -m 644 $(LIB_SO).$(ABI_MAJOR) $(DESTDIR)$(LIBDIR)/
	ln -sf libcqrs.so.$(ABI_MAJOR) $(DESTDIR)$(LIBDIR)/libcqrs.so
	install -m 644 $(LIB_A) $(DESTDIR)$(LIBDIR)/
	install -m 644 common/include/cqrs/*.h $(DESTDIR)$(INCLUDEDIR)/cqrs/
	install -m 644 $(B)/plugins/bank.so $(DESTDIR)$(LIBDIR)/cqrs/plugins/
# paths under the prefix stay relative to it (pkg-config --define-prefix)
	sed -e 's|@PREFIX@|$(PREFIX)|; s|@LIBDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(LIBDIR))|' \
		-e 's|@INCLUDEDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(INCLUDEDIR))|; s|@VERSION@|$(VERSION)|' \
		cqrs.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/cqrs.pc
	for u in deploy/systemd/*.service deploy/systemd/*.socket; do \
		sed -e 's|@BINDIR@|$(BINDIR)|g; s|@SYSCONFDIR@|$(SYSCONFDIR)|g; s|@DOCDIR@|$(DOCDIR)|g' \
			"$$u" > $(DESTDIR)$(UNITDIR)/"$${u##*/}" && chmod 644 $(DESTDIR)$(UNITDIR)/"$${u##*/}" \
			|| exit 1; \
	done
	install -m 644 deploy/sysusers.d/cqrs.conf $(DESTDIR)$(SYSUSERSDIR)/cqrs.conf
	sed -e 's|/usr/lib/cqrs/plugins|$(LIBDIR)/cqrs/plugins|g' deploy/cqrs.conf.example \
		> $(DESTDIR)$(SYSCONFDIR)/cqrs/cqrs.conf.example
	chmod 644 $(DESTDIR)$(SYSCONFDIR)/cqrs/cqrs.conf.example
	install -m 644 docs/deploy.md docs/plugins.md $(DESTDIR)$(DOCDIR)/

clean:
	rm -rf $(B)

.PHONY: all tests deps check test unit demo up down install clean bench-cmd bench-tracker bench-consumer \
	fuzz fuzz-bins
.DEFAULT_GOAL := all
.DELETE_ON_ERROR:
.SECONDARY:

-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)

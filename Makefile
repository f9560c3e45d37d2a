# lproc - a real-time web-server log pipeline in C, scripted in Lua 5.4.
#
#   make            build ./lproc and the built-in GeoIP country database
#   make deps       install the Debian packages the build and the tests need
#   make check      run the test suite against private RabbitMQ and MariaDB servers
#   make sanitize   the same suite under ASan + UBSan
#   make valgrind   the same suite under valgrind
#   make faults     20 randomised kill -9 trials per component
#   make fuzz       the libFuzzer harnesses, FUZZ_SECONDS (60) each
#   make bench      the benchmarks (bench/run.sh), written to bench/results.md
#   make bench-smoke  the benchmark harness on 10k lines, to prove it runs
#   make demo       the whole pipeline on private servers and a sample log (make demo-stop)

PKGS     = lua5.4 librabbitmq libmariadb libpcre2-8 libcrypto libmaxminddb zlib
# Debian packages: build, runtime data, servers for the tests and the demo.
DEB_PKGS = build-essential pkg-config liblua5.4-dev librabbitmq-dev libmariadb-dev \
           libpcre2-dev libssl-dev libmaxminddb-dev zlib1g-dev \
           libmaxmind-db-writer-perl tor-geoipdb iso-codes \
           rabbitmq-server mariadb-server mariadb-client valgrind openssl
# Only for make bench (GoAccess is the reference) and make fuzz (libFuzzer).
BENCH_PKGS = goaccess time
FUZZ_PKGS  = clang libclang-rt-14-dev

CC      ?= cc
OPT     ?= -O2 -g
WERROR  ?=
CFLAGS  += -std=c11 $(OPT) -Wall -Wextra -Wshadow -Wno-unused-parameter $(WERROR)
CPPFLAGS += -D_POSIX_C_SOURCE=200809L -Isrc -I$(BUILD) \
            $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm

BUILD   ?= build
SRCS     = $(wildcard src/*.c)
OBJS     = $(SRCS:src/%.c=$(BUILD)/%.o)
MODULES  = $(patsubst src/lua_%.c,%,$(wildcard src/lua_*.c))
COUNTRY_DB = build/country.mmdb

.PHONY: all deps check-deps check sanitize valgrind clean demo demo-stop bench bench-smoke fuzz faults

all: lproc $(COUNTRY_DB)

lproc: $(BUILD)/lproc
	@if [ "$(BUILD)" = build ]; then ln -sf build/lproc lproc; fi

$(BUILD)/lproc: $(OBJS) | check-deps
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(OBJS) $(LDLIBS)

$(BUILD)/%.o: src/%.c src/lproc.h $(BUILD)/modules.h | check-deps
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

# One LPROC_MODULE(name) line per src/lua_<name>.c; rewritten only when the list changes.
$(BUILD)/modules.h: FORCE
	@mkdir -p $(BUILD)
	@printf '%s\n' $(foreach m,$(MODULES),'LPROC_MODULE($(m))') > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi
FORCE:

check-deps:
	@missing=; for p in $(PKGS); do pkg-config --exists $$p || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    echo "lproc: missing libraries:$$missing. Run 'make deps' (as root) to install them." >&2; \
	    exit 1; fi

deps:
	@missing=$$(for p in $(DEB_PKGS) $(EXTRA_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q '^install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "make deps: all packages are installed"; exit 0; fi; \
	cmd="apt-get install -y --no-install-recommends $$(echo $$missing)"; \
	if [ "$$(id -u)" != 0 ]; then \
	    echo "make deps: missing packages; as root, run: apt-get update && $$cmd" >&2; exit 1; fi; \
	echo "make deps: installing$$(printf ' %s' $$missing)"; \
	export DEBIAN_FRONTEND=noninteractive; \
	(apt-get update -qq && $$cmd -qq) > build-deps.log 2>&1 \
	    || { echo "make deps: apt-get failed; see build-deps.log" >&2; exit 1; }; \
	rm -f build-deps.log

# The built-in country database, from Debian's tor-geoipdb and iso-codes.
$(COUNTRY_DB): geoip/build-country.pl
	@mkdir -p build
	perl geoip/build-country.pl $@

check: all
	tests/run.sh

sanitize:
	$(MAKE) BUILD=build/asan OPT='-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined' \
	    LDFLAGS='-fsanitize=address,undefined' build/asan/lproc
	$(MAKE) $(COUNTRY_DB)
	ASAN_OPTIONS=detect_leaks=1 LPROC=build/asan/lproc tests/run.sh

# VALGRIND_TESTS: test file names to run (default: all).
valgrind: all
	LPROC_RE_NOJIT=1 LPROC_WRAP='valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite' tests/run.sh $(VALGRIND_TESTS)

build/ceiling: bench/ceiling.c | check-deps
	@mkdir -p build
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< $(LDLIBS)

bench: all build/ceiling
	@$(MAKE) --no-print-directory deps EXTRA_PKGS='$(BENCH_PKGS)'
	bench/run.sh

bench-smoke: all build/ceiling
	@$(MAKE) --no-print-directory deps EXTRA_PKGS='$(BENCH_PKGS)'
	bench/run.sh --smoke

demo: deps
	@$(MAKE) --no-print-directory all
	@scripts/demo.sh start

demo-stop:
	@scripts/demo.sh stop

# libFuzzer harnesses (clang): the cleaning path, URL parsing, the format compiler.
fuzz: all
	@$(MAKE) --no-print-directory deps EXTRA_PKGS='$(FUZZ_PKGS)'
	FUZZ_SECONDS=$${FUZZ_SECONDS:-60} tests/fuzz/run.sh

# Randomised kill -9 trials of every component (LPROC_FAULT_SEED=N replays a run).
faults: all
	LPROC_FAULT_TRIALS=$${LPROC_FAULT_TRIALS:-20} tests/run.sh faults_test

clean:
	rm -rf build lproc

#!/bin/bash
# tests/fuzz/run.sh: builds the libFuzzer harnesses (clang, ASan + UBSan) into build/fuzz/ and
# runs each for FUZZ_SECONDS seconds, then prints how many inputs each one executed.
#
# usage: tests/fuzz/run.sh [--build-only] [HARNESS...]     (HARNESS: clean, url, format)
# environment:
#   FUZZ_SECONDS   seconds per harness (default 60)
#   FUZZ_JOBS      harnesses run at the same time (default 1)
#   FUZZ_CC        the compiler (default clang; libFuzzer is -fsanitize=fuzzer)
#   FUZZ_ARGS      more libFuzzer options, e.g. "-runs=1000" or "-seed=42"
#
# Seeds are tests/fuzz/corpus/HARNESS/; what a run learns goes to build/fuzz/corpus/HARNESS/
# (kept between runs); a crash, leak or hang leaves its input in build/fuzz/artifacts/ and
# makes the script fail. Keep such inputs in tests/fuzz/regressions/ once fixed.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${FUZZ_SECONDS:-60}
JOBS=${FUZZ_JOBS:-1}
CC=${FUZZ_CC:-clang}
OUT=build/fuzz
ALL=(clean url format)
build_only=0
if [ "${1:-}" = --build-only ]; then build_only=1; shift; fi
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ALL[@]}")

# Longest input per harness: lines up to 16 KiB (over the custom rules' max_line of 8 KiB),
# targets 2 KiB, "format\nline" 1 KiB.
declare -A MAXLEN=([clean]=16384 [url]=2048 [format]=1024)

command -v "$CC" >/dev/null || { echo "fuzz: $CC not found (apt-get install clang libclang-rt-dev)" >&2; exit 1; }
[ -f build/country.mmdb ] || { echo "fuzz: build/country.mmdb is missing: run make first" >&2; exit 1; }

PKGS="lua5.4 librabbitmq libmariadb libpcre2-8 libcrypto libmaxminddb zlib"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="-std=c11 -O1 -g $SAN -Wall -Wextra -Wshadow -Wno-unused-parameter -Werror"
CPPFLAGS="-D_POSIX_C_SOURCE=200809L -Isrc -I$OUT $(pkg-config --cflags $PKGS)"
LIBS="$(pkg-config --libs $PKGS) -lm"

mkdir -p "$OUT/obj" "$OUT/artifacts"
# One LPROC_MODULE(name) per binding, as the Makefile generates it for lproc.
for f in src/lua_*.c; do n=${f#src/lua_}; echo "LPROC_MODULE(${n%.c})"; done > "$OUT/modules.h.tmp"
if cmp -s "$OUT/modules.h.tmp" "$OUT/modules.h"; then rm "$OUT/modules.h.tmp"; else mv "$OUT/modules.h.tmp" "$OUT/modules.h"; fi

# Every binding (not main.c), instrumented for coverage; rebuilt when it or a header changed.
objs=()
for src in src/*.c; do
    [ "$src" = src/main.c ] && continue
    obj=$OUT/obj/$(basename "${src%.c}").o
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ src/lproc.h -nt "$obj" ] || [ "$OUT/modules.h" -nt "$obj" ]; then
        echo "fuzz: cc $src"
        $CC $CPPFLAGS $CFLAGS -fsanitize=fuzzer-no-link -c -o "$obj" "$src"
    fi
    objs+=("$obj")
done
for h in "${names[@]}"; do
    [ -f "tests/fuzz/fuzz_$h.c" ] || { echo "fuzz: no harness '$h' (${ALL[*]})" >&2; exit 2; }
    bin=$OUT/fuzz_$h
    newest=$(ls -t "tests/fuzz/fuzz_$h.c" tests/fuzz/fuzz_lua.h "${objs[@]}" | head -n 1)
    if [ ! -x "$bin" ] || [ "$newest" -nt "$bin" ]; then
        echo "fuzz: link $bin"
        $CC $CPPFLAGS $CFLAGS -fsanitize=fuzzer -o "$bin" "tests/fuzz/fuzz_$h.c" "${objs[@]}" $LIBS
    fi
done
[ $build_only = 1 ] && exit 0

# Runs harness $1 for SECS seconds; its log is $OUT/fuzz_$1.log. Leaks are looked for when
# the run ends (LeakSanitizer), not after every input: Lua frees an input's garbage only later,
# and libFuzzer's per-input check would then scan the heap after nearly every input.
run_one() {
    local h=$1 dict=()
    mkdir -p "$OUT/corpus/$h"
    [ -f "tests/fuzz/$h.dict" ] && dict=(-dict="tests/fuzz/$h.dict")
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
    "$OUT/fuzz_$h" -max_total_time="$SECS" -max_len="${MAXLEN[$h]}" -timeout=10 -rss_limit_mb=2048 \
        -detect_leaks=0 \
        -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$h-" "${dict[@]}" ${FUZZ_ARGS:-} \
        "$OUT/corpus/$h" "tests/fuzz/corpus/$h" > "$OUT/fuzz_$h.log" 2>&1
}

declare -A pids
status=0
running=0
for h in "${names[@]}"; do
    echo "fuzz: fuzz_$h for ${SECS}s (max_len ${MAXLEN[$h]}), log in $OUT/fuzz_$h.log"
    run_one "$h" & pids[$h]=$!
    running=$((running + 1))
    if [ $running -ge "$JOBS" ]; then wait -n || true; running=$((running - 1)); fi
done
total=0
for h in "${names[@]}"; do
    rc=0; wait "${pids[$h]}" 2>/dev/null || rc=$?
    log=$OUT/fuzz_$h.log
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if grep -qE '^==[0-9]+==ERROR|^SUMMARY: |deadly signal|Test unit written' "$log"; then rc=${rc:-1}; [ "$rc" = 0 ] && rc=1; fi
    if [ "$rc" != 0 ]; then
        status=1
        echo "fuzz: fuzz_$h FAILED (exit $rc): see $log" >&2
        grep -E 'ERROR|SUMMARY|fuzz: |Test unit written' "$log" | head -n 20 >&2 || true
    fi
    echo "fuzz_$h: ${n:-0} executions"
    total=$((total + ${n:-0}))
done
echo "fuzz: $total executions in total"
exit $status

#!/bin/bash
# The benchmarks: lproc measured beside its references, on private RabbitMQ and MariaDB
# servers that this script starts on loopback in a temporary directory and always stops.
#
#   1. clean rules alone: scripts/clean.lua --dry-run on a generated log, against GoAccess
#   2. broker ceiling: bare C publisher (bench/ceiling.c) and two bare consumers
#   3. end to end, one message per line: producer start -> every line committed in raw_log and
#      in clean_log or clean_log_reject
#   4. the same with the producer's --batch, with one clean consumer and with two
#   5. memory: producer peak RSS on a 1 GB file; consumers' peak RSS at the default prefetch
#   6. instructions per line of the dry-run (callgrind)
#
# usage: bench/run.sh [--smoke] [--runs N] [--output FILE] [--keep]
#   --smoke    10k lines everywhere, every step once: proves the harness works (for CI)
#   --runs N   repetitions of each timed measurement (default 3; --smoke: 1)
#   --output   where the results go (default bench/results.md; --smoke: only printed)
#   --keep     keep the working directory (logs, generated files) at the end
# environment: LPROC (binary, default ./lproc), LPROC_PORT_BASE (ports, default 25800),
#              BENCH_TMP (parent of the working directory, default /tmp)
#
# Exit status: 0 when every step ran and every pipeline run delivered every line exactly
# once; 1 when the harness broke. A slow result is never a failure: benchmarks are not tests.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

smoke=0 runs= output= keep=0
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) smoke=1 ;;
        --runs) runs=${2:-}; shift ;;
        --runs=*) runs=${1#*=} ;;
        --output) output=${2:-}; shift ;;
        --output=*) output=${1#*=} ;;
        --keep) keep=1 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$smoke" = 1 ]; then
    N_CLEAN=10000 N_PIPE=10000 N_CG=10000 BIG_BYTES=$((4 << 20)) runs=${runs:-1}
else
    N_CLEAN=1000000 N_PIPE=200000 N_CG=100000 BIG_BYTES=$((1 << 30)) runs=${runs:-3}
    output=${output:-bench/results.md}
fi
case $runs in ''|*[!0-9]*|0) echo "bench: --runs needs a positive number" >&2; exit 2 ;; esac
BATCH=100                        # lines per message in --batch mode
SEED=1

export LPROC=${LPROC:-./lproc}
export LPROC_ROOT=$ROOT
export LPROC_PORT_BASE=${LPROC_PORT_BASE:-25800}
CEILING=build/ceiling
TIME=/usr/bin/time
CLK_TCK=$(getconf CLK_TCK)

fail() { echo "bench: $*" >&2; exit 1; }
missing=
[ -x "$LPROC" ] || missing="$missing $LPROC (make lproc)"
[ -x "$CEILING" ] || missing="$missing $CEILING (make build/ceiling)"
[ -f build/country.mmdb ] || missing="$missing build/country.mmdb (make)"
[ -x "$TIME" ] || missing="$missing /usr/bin/time (apt-get install time)"
for b in goaccess valgrind callgrind_annotate; do
    command -v "$b" >/dev/null 2>&1 || missing="$missing $b (apt-get install ${b%%_*})"
done
[ -z "$missing" ] || fail "missing:$missing"

W=$(mktemp -d "${BENCH_TMP:-/tmp}/lproc-bench.XXXXXX") || fail "cannot create a working directory"
export LPROC_SRV_DIR=$W/servers
children=()
cleanup() {
    local p
    for p in "${children[@]}"; do kill "$p" 2>/dev/null; done
    tests/servers.sh stop all >/dev/null 2>&1
    if [ "$keep" = 1 ]; then echo "bench: working directory kept: $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Nothing from the caller's environment may point the pipeline elsewhere.
unset LPROC_AMQP_URL LPROC_MYSQL_URL LPROC_GEOIP_DB RABBIT_USER RABBIT_PASSWORD RABBIT_HOST \
      RABBIT_PORT RABBIT_VHOST MYSQL_USER MYSQL_PASSWORD MYSQL_DATABASE HOST PORT

RES=$W/results.tsv               # KEY <tab> RUN <tab> VALUE, one line per figure
META=$W/meta.tsv                 # KEY <tab> TEXT
: > "$RES"; : > "$META"
put() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$RES"; }
meta() { printf '%s\t%s\n' "$1" "$2" >> "$META"; }
say() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

# time_field FILE: "WALL CPU RSS_KB" from a /usr/bin/time -v report.
time_field() {
    awk -F': ' '
        /User time/ { u = $2 } /System time/ { s = $2 } /Maximum resident/ { m = $2 }
        /Elapsed \(wall clock\)/ { n = split($2, a, ":"); w = 0; for (i = 1; i <= n; i++) w = w * 60 + a[i] }
        END { if (m == "") exit 1; printf "%.3f %.3f %d\n", w, u + s, m }' "$1"
}

# cpu_of PIDFILE: CPU seconds (user + system) the process has used so far.
cpu_of() {
    local pid; pid=$(cat "$1" 2>/dev/null) || { echo 0; return; }
    awk -v t="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / t }' "/proc/$pid/stat" 2>/dev/null || echo 0
}
BEAM_PID=$LPROC_SRV_DIR/rabbitmq/rabbit.pid
MDB_PID=$LPROC_SRV_DIR/mariadb/mariadbd.pid

# ------------------------------------------------------------------------------------------
say "working directory $W, ports from $LPROC_PORT_BASE, $runs run(s) per measurement"
tests/servers.sh start all >"$W/servers.log" 2>&1 || { cat "$W/servers.log" >&2; fail "could not start the servers"; }
eval "$(tests/servers.sh env | grep '^export LPROC_')"

meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB RAM", $2 / 1048576 }' /proc/meminfo)"
meta os "$(. /etc/os-release && echo "$PRETTY_NAME"), Linux $(uname -r)"
meta lproc "$("$LPROC" --version | tr '\n' ' ' | sed 's/  */ /g; s/ $//')"
meta goaccess "$(goaccess --version 2>&1 | head -n 1 | sed 's/[[:space:]]*$//')"
meta rabbitmq "RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null), Erlang $(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null)"
meta mariadb "$("$LPROC" bench/pipe.lua versions)" || fail "cannot reach MariaDB"
meta valgrind "$(valgrind --version)"
meta load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
meta mode "$([ "$smoke" = 1 ] && echo smoke || echo full), $runs run(s)"
meta sizes "$N_CLEAN $N_PIPE $N_CG $BIG_BYTES $BATCH"

# ------------------------------------------------------------------------------------------
# Input files: one generated log (nginx combined, ~1% malformed lines); the smaller inputs are
# its first lines, the big one is copies of it cut at BIG_BYTES.
say "generating $N_CLEAN log lines"
LOG=$W/access.log
"$LPROC" scripts/genlog.lua --lines "$N_CLEAN" --seed "$SEED" --formats combined --output "$LOG" \
    || fail "genlog failed"
head -n "$N_PIPE" "$LOG" > "$W/pipe.log"
head -n "$N_CG" "$LOG" > "$W/cg.log"
: > "$W/empty.log"
BIG=$W/big.log
while [ "$(stat -c %s "$BIG" 2>/dev/null || echo 0)" -lt "$BIG_BYTES" ]; do cat "$LOG" >> "$BIG"; done
truncate -s "$BIG_BYTES" "$BIG"
big_lines=$(wc -l < "$BIG")
[ "$(tail -c 1 "$BIG" | od -An -c | tr -d ' ')" = '\n' ] || big_lines=$((big_lines + 1))
meta big_lines "$big_lines"

# ------------------------------------------------------------------------------------------
# 1. Clean rules alone, against GoAccess on the same file.
say "1. clean rules: lproc --dry-run vs GoAccess on $N_CLEAN lines"
for ((r = 1; r <= runs; r++)); do
    $TIME -v -o "$W/t.txt" "$LPROC" scripts/clean.lua --dry-run "$LOG" > /dev/null 2> "$W/dry.err" \
        || { cat "$W/dry.err" >&2; fail "dry-run failed"; }
    read -r wall cpu rss < <(time_field "$W/t.txt")
    put dry.wall "$r" "$wall"; put dry.cpu "$r" "$cpu"; put dry.rss "$r" "$rss"
    (cd "$W" && $TIME -v -o t.txt goaccess access.log -p "$ROOT/bench/goaccess.conf" \
        --process-and-exit --no-progress --no-parsing-spinner) > "$W/goaccess.out" 2>&1 \
        || { tail "$W/goaccess.out" >&2; fail "goaccess failed"; }
    read -r wall cpu rss < <(time_field "$W/t.txt")
    put goa.wall "$r" "$wall"; put goa.cpu "$r" "$cpu"; put goa.rss "$r" "$rss"
    say "   run $r: lproc $(grep "dry.wall	$r	" "$RES" | cut -f3) s, GoAccess $wall s"
done
# What each one made of the file (untimed): lproc's rows and rejects, GoAccess's counts.
"$LPROC" scripts/clean.lua --dry-run "$LOG" | awk -F'"' '{ n[$4]++ }
    END { printf "%d %d\n", n["clean_log"], n["clean_log_reject"] }' > "$W/dry.counts" \
    || fail "dry-run (counting) failed"
read -r dry_clean dry_reject < "$W/dry.counts"
[ $((dry_clean + dry_reject)) = "$N_CLEAN" ] || fail "the dry-run gave $dry_clean + $dry_reject rows for $N_CLEAN lines"
meta dry_rows "$dry_clean $dry_reject"
(cd "$W" && $TIME -v -o t.txt goaccess access.log -p "$ROOT/bench/goaccess.conf" --no-progress \
    --no-parsing-spinner -o report.json) > "$W/goaccess.out" 2>&1 || fail "goaccess (report) failed"
read -r wall cpu rss < <(time_field "$W/t.txt")
put goa_report.wall 1 "$wall"; put goa_report.cpu 1 "$cpu"; put goa_report.rss 1 "$rss"
for k in total_requests valid_requests failed_requests; do
    v=$(grep -o "\"$k\": *[0-9]*" "$W/report.json" | head -n 1 | grep -o '[0-9]*$')
    [ -n "$v" ] || fail "GoAccess's report has no $k"
    meta "goa_$k" "$v"
done
[ "$(grep "^goa_valid_requests" "$META" | cut -f2)" -gt $((N_CLEAN * 9 / 10)) ] \
    || fail "GoAccess accepted fewer than 90% of the lines: bench/goaccess.conf does not match the log"

# ------------------------------------------------------------------------------------------
# Pipeline runs. Every run starts from nothing: queues deleted, tables dropped.
reset() { "$LPROC" bench/pipe.lua reset || fail "reset failed"; }

# wait_ready LOGFILE PID: until the consumer logged that it is consuming.
wait_ready() {
    local i
    for ((i = 0; i < 600; i++)); do
        grep -q 'consuming' "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { cat "$1" >&2; fail "a consumer exited at start-up"; }
        sleep 0.05
    done
    cat "$1" >&2; fail "a consumer did not start consuming within 30 s"
}

# stop_consumer TIMEPID: SIGTERM to the lproc under /usr/bin/time, then wait for both.
stop_consumer() {
    local c; c=$(pgrep -P "$1")
    [ -n "$c" ] && kill -TERM "$c"
    wait "$1" || fail "a consumer did not exit cleanly (pid $1)"
}

# 2. The broker ceiling: bare publisher and two bare consumers, at the same time.
# KEY: ceil (bare messages) or ceil_lp (with the properties the lproc producer sends).
ceiling_run() {   # ceiling_run KEY RUN
    local key=$1 r=$2 props=bare t0 t1 b0 b1 c1 c2 out
    [ "$key" = ceil_lp ] && props=lproc
    reset
    "$CEILING" declare || fail "ceiling declare failed"
    "$CEILING" consume queue-data-lake "$N_PIPE" > "$W/ceil-lake.out" 2>&1 & c1=$!
    "$CEILING" consume queue-data-clean "$N_PIPE" > "$W/ceil-clean.out" 2>&1 & c2=$!
    children+=("$c1" "$c2")
    sleep 0.5
    b0=$(cpu_of "$BEAM_PID"); t0=$(now)
    out=$("$CEILING" publish "$W/pipe.log" 4096 "$props") || fail "ceiling publish failed"
    wait "$c1" || fail "ceiling consume (lake) failed"
    wait "$c2" || fail "ceiling consume (clean) failed"
    t1=$(now); b1=$(cpu_of "$BEAM_PID")
    put "$key.rate" "$r" "$(calc "$N_PIPE / ($t1 - $t0)")"
    put "$key.pub_rate" "$r" "$(echo "$out" | sed -n 's/.*: \([0-9]*\) msg\/s.*/\1/p')"
    put "$key.beam_cpu" "$r" "$(calc "$b1 - $b0")"
    say "   $key run $r: $(calc "$t1 - $t0") s (publisher: $out)"
}

# 3./4. End to end: consumers waiting, then the producer; until every line is committed.
e2e_run() {   # e2e_run KEY RUN CLEAN_CONSUMERS [PRODUCER OPTIONS...]
    local key=$1 r=$2 ncl=$3 lt wp dp t0 t1 b0 b1 m0 m1 res ok i ccpu=0 crss=0
    local cts=()
    shift 3
    reset
    $TIME -v -o "$W/lake.time" "$LPROC" scripts/lake.lua --progress 0 > "$W/lake.log" 2>&1 & lt=$!
    for ((i = 1; i <= ncl; i++)); do
        $TIME -v -o "$W/clean$i.time" "$LPROC" scripts/clean.lua --progress 0 > "$W/clean$i.log" 2>&1 &
        cts+=($!)
    done
    children+=("$lt" "${cts[@]}")
    wait_ready "$W/lake.log" "$lt"
    for ((i = 1; i <= ncl; i++)); do wait_ready "$W/clean$i.log" "${cts[i - 1]}"; done
    rm -f "$W/wait.fifo"; mkfifo "$W/wait.fifo" || fail "mkfifo failed"
    "$LPROC" bench/pipe.lua wait "$N_PIPE" 900 > "$W/wait.fifo" & wp=$!
    children+=("$wp")
    exec 3< "$W/wait.fifo"
    read -r -t 30 -u 3 ok || fail "bench/pipe.lua wait did not start"
    "$LPROC" bench/pipe.lua depth > "$W/depth.txt" & dp=$!
    children+=("$dp")
    b0=$(cpu_of "$BEAM_PID"); m0=$(cpu_of "$MDB_PID"); t0=$(now)
    $TIME -v -o "$W/prod.time" "$LPROC" scripts/producer.lua --progress 0 "$@" "$W/pipe.log" \
        > "$W/prod.log" 2>&1 || { cat "$W/prod.log" >&2; fail "the producer failed"; }
    read -r -u 3 res t1 || fail "bench/pipe.lua wait died"
    exec 3<&-
    b1=$(cpu_of "$BEAM_PID"); m1=$(cpu_of "$MDB_PID")
    kill -TERM "$dp"; wait "$dp"
    put "$key.lake_backlog" "$r" "$(awk 'BEGIN { m = 0 } $1 > m { m = $1 } END { print m }' "$W/depth.txt")"
    put "$key.clean_backlog" "$r" "$(awk 'BEGIN { m = 0 } $2 > m { m = $2 } END { print m }' "$W/depth.txt")"
    [ "$res" = done ] || { tail "$W/lake.log" "$W"/clean*.log >&2; fail "not every line arrived: $res $t1"; }
    wait "$wp"
    stop_consumer "$lt"
    for i in "${cts[@]}"; do stop_consumer "$i"; done
    res=$("$LPROC" bench/pipe.lua check "$N_PIPE") \
        || fail "lines lost or duplicated (raw clean reject lost both: $res)"
    read -r _ clean reject _ _ <<< "$res"
    meta "$key.rows" "$clean $reject"
    put "$key.rate" "$r" "$(calc "$N_PIPE / ($t1 - $t0)")"
    read -r wall cpu rss < <(time_field "$W/prod.time")
    put "$key.prod_rate" "$r" "$(calc "$N_PIPE / $wall")"
    put "$key.prod_cpu" "$r" "$cpu"; put "$key.prod_rss" "$r" "$rss"
    read -r wall cpu rss < <(time_field "$W/lake.time")
    put "$key.lake_cpu" "$r" "$cpu"; put "$key.lake_rss" "$r" "$rss"
    # the clean consumers: CPU summed, the largest RSS
    for ((i = 1; i <= ncl; i++)); do
        read -r wall cpu rss < <(time_field "$W/clean$i.time")
        ccpu=$(calc "$ccpu + $cpu")
        [ "$rss" -gt "$crss" ] && crss=$rss
    done
    put "$key.clean_cpu" "$r" "$ccpu"; put "$key.clean_rss" "$r" "$crss"
    put "$key.beam_cpu" "$r" "$(calc "$b1 - $b0")"; put "$key.mdb_cpu" "$r" "$(calc "$m1 - $m0")"
    say "   $key run $r: $(calc "$t1 - $t0") s, $clean clean + $reject rejects"
}

# The broker with a backlog (diagnosis, once): every message queued first, then drained.
backlog_run() {
    local t0 t1 t2 b0 b1 b2 c1 c2
    reset
    "$CEILING" declare || fail "ceiling declare failed"
    b0=$(cpu_of "$BEAM_PID"); t0=$(now)
    "$CEILING" publish "$W/pipe.log" 4096 lproc > /dev/null || fail "ceiling publish failed"
    t1=$(now); b1=$(cpu_of "$BEAM_PID")
    "$CEILING" consume queue-data-lake "$N_PIPE" > /dev/null & c1=$!
    "$CEILING" consume queue-data-clean "$N_PIPE" > /dev/null & c2=$!
    children+=("$c1" "$c2")
    wait "$c1" && wait "$c2" || fail "ceiling consume (backlog) failed"
    t2=$(now); b2=$(cpu_of "$BEAM_PID")
    put backlog.pub_wall 1 "$(calc "$t1 - $t0")"; put backlog.drain_wall 1 "$(calc "$t2 - $t1")"
    put backlog.pub_cpu 1 "$(calc "$b1 - $b0")"; put backlog.drain_cpu 1 "$(calc "$b2 - $b1")"
    say "   backlog: publish $(calc "$t1 - $t0") s, drain $(calc "$t2 - $t1") s"
}

say "2-4. broker ceiling and end to end on $N_PIPE lines (interleaved runs)"
for ((r = 1; r <= runs; r++)); do
    ceiling_run ceil "$r"
    ceiling_run ceil_lp "$r"
    e2e_run e2e "$r" 1
    e2e_run e2e_batch "$r" 1 --batch "$BATCH"
    e2e_run e2e_batch2 "$r" 2 --batch "$BATCH"
done
backlog_run

# ------------------------------------------------------------------------------------------
# 5. Producer memory on the big file (batch mode; bare consumers drain the queues meanwhile).
say "5. producer peak RSS on a $((BIG_BYTES >> 20)) MB file ($big_lines lines, --batch $BATCH)"
msgs=$(( (big_lines + BATCH - 1) / BATCH ))

# rss_sampler PID FILE: "POSITION PEAK_RSS_KB" lines, every 0.2 s while PID reads FILE.
rss_sampler() {
    local pid=$1 file=$2 fd= f pos hwm
    while kill -0 "$pid" 2>/dev/null; do
        if [ -z "$fd" ]; then
            for f in /proc/"$pid"/fd/*; do [ "$(readlink "$f")" = "$file" ] && fd=${f##*/}; done
        fi
        if [ -n "$fd" ]; then
            pos=$(awk '/^pos:/ { print $2 }' "/proc/$pid/fdinfo/$fd" 2>/dev/null)
            hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
            [ -n "$pos" ] && [ -n "$hwm" ] && echo "$pos $hwm"
        fi
        sleep 0.2
    done
}
for ((r = 1; r <= runs; r++)); do
    reset
    "$CEILING" declare || fail "ceiling declare failed"
    "$CEILING" consume queue-data-lake "$msgs" > "$W/drain1.out" 2>&1 & c1=$!
    "$CEILING" consume queue-data-clean "$msgs" > "$W/drain2.out" 2>&1 & c2=$!
    children+=("$c1" "$c2")
    $TIME -v -o "$W/prod.time" "$LPROC" scripts/producer.lua --progress 0 --batch "$BATCH" "$BIG" \
        > "$W/prod.log" 2>&1 & tp=$!
    children+=("$tp")
    pp=
    for ((i = 0; i < 100; i++)); do pp=$(pgrep -P "$tp") && break; sleep 0.01; done
    [ -n "$pp" ] && rss_sampler "$pp" "$BIG" > "$W/rss.samples"
    wait "$tp" || { cat "$W/prod.log" >&2; fail "the producer failed on the big file"; }
    wait "$c1" && wait "$c2" || fail "draining the queues failed"
    # Peak RSS once 1/8, 1/4 and 1/2 of the file were read: flat or growing with the file?
    for q in 8 4 2; do
        v=$(awk -v lim=$((BIG_BYTES / q)) '$1 >= lim { print $2; exit }' "$W/rss.samples")
        [ -n "$v" ] && put "big.rss_$q" "$r" "$v"
    done
    read -r wall cpu rss < <(time_field "$W/prod.time")
    put big.prod_rss "$r" "$rss"; put big.prod_cpu "$r" "$cpu"
    put big.prod_rate "$r" "$(calc "$big_lines / $wall")"
    say "   run $r: $wall s, peak RSS $rss KB"
done

# ------------------------------------------------------------------------------------------
# 6. Instructions per line of the dry-run: (Ir(N lines) - Ir(empty file)) / N.
say "6. callgrind: instructions per line of the dry-run on $N_CG lines"
ir() {   # ir FILE -> total instructions of a dry-run of FILE under callgrind
    valgrind --tool=callgrind --callgrind-out-file="$W/cg.out" "$LPROC" scripts/clean.lua \
        --dry-run "$1" > /dev/null 2> "$W/cg.err" || { tail "$W/cg.err" >&2; fail "callgrind run failed"; }
    sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p' "$W/cg.err"
}
base=$(ir "$W/empty.log")
[ -n "$base" ] || fail "no instruction count from callgrind"
put cg.base 1 "$base"
for ((r = 1; r <= runs; r++)); do
    total=$(ir "$W/cg.log")
    [ -n "$total" ] || fail "no instruction count from callgrind"
    put cg.per_line "$r" "$(calc "($total - $base) / $N_CG")"
    say "   run $r: $(calc "($total - $base) / $N_CG") instructions per line"
done
# The top functions, file names without their directories.
callgrind_annotate "$W/cg.out" 2>/dev/null | awk '/file:function/ { go = 1; next } go && NF && !/^--/' \
    | head -n 12 | sed -E 's#[^ :\[]*/([^/ :]*)#\1#g' > "$W/cg.top"

meta load_end "$(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------------------------------------
"$LPROC" bench/report.lua "$RES" "$META" "$W/cg.top" "${output:-}" || fail "bench/report.lua failed"

#!/bin/bash
# make demo: the whole pipeline on private servers, on a generated sample log.
#
#   scripts/demo.sh start   start servers in .demo/, generate a log, run producer + consumers,
#                           print what landed in the tables (servers keep running)
#   scripts/demo.sh stop    stop the demo's servers
#
# The servers listen on 127.0.0.1 only, on ports from LPROC_PORT_BASE (default 25400).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/.demo
export LPROC_SRV_DIR=$DEMO/servers
export LPROC_PORT_BASE=${LPROC_PORT_BASE:-25400}
export LPROC_SRV_USER=lproc LPROC_SRV_DB=lproc
LINES=${DEMO_LINES:-60000}

say() { printf '\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

stop() {
    if [ -f "$DEMO/pids" ]; then
        while read -r pid; do kill "$pid" 2>/dev/null; done < "$DEMO/pids"
        rm -f "$DEMO/pids"
    fi
    [ -d "$LPROC_SRV_DIR" ] && tests/servers.sh stop all
    echo "demo: servers stopped (data kept in .demo/; rm -rf .demo to remove it)"
}

sql() { mariadb --defaults-file="$LPROC_SRV_DIR/mariadb/my.cnf" -uroot --table lproc -e "$1"; }

start() {
    [ -x ./lproc ] || die "lproc is not built: run 'make'"
    mkdir -p "$DEMO"
    chmod 700 "$DEMO"
    # A password for this demo only, kept in .demo/env (mode 600), never printed.
    if [ ! -f "$DEMO/secret" ]; then
        (umask 077; head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DEMO/secret")
    fi
    export LPROC_SRV_PASS; LPROC_SRV_PASS=$(cat "$DEMO/secret")

    say "starting RabbitMQ and MariaDB on 127.0.0.1 (ports $((LPROC_PORT_BASE + 2)) and $((LPROC_PORT_BASE + 6)))"
    tests/servers.sh stop all >/dev/null 2>&1
    tests/servers.sh start all || die "the servers did not start (see the lines above)"
    (umask 077; tests/servers.sh env | grep '^export LPROC_' > "$DEMO/env")
    . "$DEMO/env"

    say "generating a sample log: $LINES lines (proxy + combined formats, ~1% malformed)"
    ./lproc scripts/genlog.lua --lines "$LINES" --seed 42 --output "$DEMO/access.log" || die "genlog failed"

    say "running the producer, the lake consumer and the clean consumer together"
    : > "$DEMO/pids"
    local t0; t0=$(date +%s.%N)
    ./lproc scripts/lake.lua --idle-exit 3 --progress 2 & echo $! >> "$DEMO/pids"; lake=$!
    ./lproc scripts/clean.lua --idle-exit 3 --progress 2 & echo $! >> "$DEMO/pids"; clean=$!
    ./lproc scripts/producer.lua --progress 2 "$DEMO/access.log" || die "the producer failed"
    wait "$lake" || die "the lake consumer failed"
    wait "$clean" || die "the clean consumer failed"
    rm -f "$DEMO/pids"
    local t1

    say "what landed"
    sql "SELECT (SELECT COUNT(*) FROM raw_log) AS raw_log, (SELECT COUNT(*) FROM clean_log) AS clean_log,
                (SELECT COUNT(*) FROM clean_log_reject) AS clean_log_reject"
    # End to end: from the producer's start to the last commit (not counting the idle wait).
    t1=$(mariadb --defaults-file="$LPROC_SRV_DIR/mariadb/my.cnf" -uroot -N lproc -e "SELECT UNIX_TIMESTAMP(GREATEST(
        (SELECT MAX(ingested_at) FROM raw_log), (SELECT MAX(ingested_at) FROM clean_log),
        COALESCE((SELECT MAX(ingested_at) FROM clean_log_reject), 0)))")
    awk -v n="$LINES" -v a="$t0" -v b="$t1" 'BEGIN { printf "%d lines read; every one committed %.1f s after the start: %.0f lines/s end to end\n", n, b - a, n / (b - a) }'
    say "a few clean rows"
    sql "SELECT timestamp, ip, country_code, user, rest_method, host, path, status, status_verbose,
                size_kilo_bytes, device FROM clean_log ORDER BY timestamp LIMIT 5"
    say "top countries"
    sql "SELECT COALESCE(country, '(unknown)') AS country, COUNT(*) AS requests FROM clean_log
         GROUP BY country ORDER BY requests DESC LIMIT 8"
    say "top hosts"
    sql "SELECT host, COUNT(*) AS requests FROM clean_log WHERE host IS NOT NULL
         GROUP BY host ORDER BY requests DESC LIMIT 5"
    say "status classes"
    sql "SELECT CONCAT(status DIV 100, 'xx') AS class, COUNT(*) AS requests FROM clean_log
         GROUP BY class ORDER BY class"
    say "reject reasons"
    sql "SELECT LEFT(reason, 60) AS reason, COUNT(*) AS n FROM clean_log_reject
         GROUP BY LEFT(reason, 60) ORDER BY n DESC LIMIT 5"

    say "next"
    cat <<EOF
Query the data (the servers keep running):
  mariadb --defaults-file=.demo/servers/mariadb/my.cnf -uroot lproc
  or: mariadb -h 127.0.0.1 -P $((LPROC_PORT_BASE + 6)) -u lproc -p lproc   (password in .demo/secret)
Run the pipeline yourself:   . .demo/env; ./lproc scripts/producer.lua FILE
Try the rules without servers: ./lproc scripts/clean.lua --dry-run .demo/access.log | head
Stop the servers:           make demo-stop
EOF
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

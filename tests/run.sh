#!/bin/bash
# The test suite: every tests/unit/*_test.lua and tests/integration/*_test.lua, run by lproc
# itself, against a private RabbitMQ and MariaDB that this script starts on loopback in a
# temporary directory and always stops at the end.
#
# usage: tests/run.sh [NAME...]      (NAME: a test file's base name, e.g. re_test)
# environment: LPROC (binary, default ./lproc), LPROC_WRAP (e.g. a valgrind command line),
#              LPROC_PORT_BASE (ports, default 25600), LPROC_TEST_ONLY (a test-name filter),
#              LPROC_TEST_SEED (the seed of the hostile-messages test), LPROC_FAULT_SEED
set -uo pipefail
cd "$(dirname "$0")/.."
export LPROC=${LPROC:-./lproc}
export LPROC_LIB=$PWD/tests/lib
export LPROC_ROOT=$PWD
[ -x "$LPROC" ] || { echo "tests: $LPROC is not built: run 'make'" >&2; exit 1; }

tmp=$(mktemp -d /tmp/lproc-test.XXXXXX)
export LPROC_SRV_DIR=$tmp/servers LPROC_TEST_TMP=$tmp
cleanup() {
    tests/servers.sh stop all >/dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Real environment must not leak into the tests: they set what they need.
unset LPROC_AMQP_URL LPROC_MYSQL_URL LPROC_GEOIP_DB RABBIT_USER RABBIT_PASSWORD RABBIT_HOST \
      RABBIT_PORT RABBIT_VHOST MYSQL_USER MYSQL_PASSWORD MYSQL_DATABASE HOST PORT

tests/servers.sh start all || { echo "tests: could not start the test servers" >&2; exit 1; }
eval "$(tests/servers.sh env | grep '^export LPROC_')"
export LPROC_TEST_AMQP_URL=$LPROC_AMQP_URL LPROC_TEST_MYSQL_URL=$LPROC_MYSQL_URL
export LPROC_TEST_AMQPS_URL=$LPROC_AMQPS_URL LPROC_TEST_TLS_CA=$LPROC_TLS_CA

if [ -f tests/mkmmdb.pl ]; then
    perl tests/mkmmdb.pl "$tmp/test.mmdb" || { echo "tests: could not build the test GeoIP database" >&2; exit 1; }
    export LPROC_TEST_MMDB=$tmp/test.mmdb
fi

files=()
if [ $# -gt 0 ]; then
    for n in "$@"; do files+=($(ls tests/unit/"$n".lua tests/integration/"$n".lua 2>/dev/null)); done
else
    files=(tests/unit/*_test.lua tests/integration/*_test.lua)
fi

total_pass=0 total_fail=0 broken=()
for f in "${files[@]}"; do
    [ -f "$f" ] || continue
    echo "== $f"
    out=$tmp/out.txt
    ${LPROC_WRAP:-} "$LPROC" "$f" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
    if [ -z "$line" ]; then
        broken+=("$f (exit $rc, no summary)"); total_fail=$((total_fail + 1)); continue
    fi
    p=${line%% passed*}; q=${line#*, }; q=${q%% failed*}
    total_pass=$((total_pass + p)); total_fail=$((total_fail + q))
    if [ "$rc" != 0 ] && [ "$q" = 0 ]; then broken+=("$f (exit $rc)"); total_fail=$((total_fail + 1)); fi
done

for b in "${broken[@]}"; do echo "tests: $b" >&2; done
echo
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" = 0 ] && [ "$total_pass" -gt 0 ]

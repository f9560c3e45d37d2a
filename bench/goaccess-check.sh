#!/bin/bash
# Checks that bench/goaccess.conf parses the generator's "combined" lines: generates a
# combined-only log and prints GoAccess's total, valid and failed request counts.
#
# usage: bench/goaccess-check.sh [LINES] [MALFORMED_FRACTION]     (defaults: 100000 0.01)
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-100000}
malformed=${2:-0.01}
command -v goaccess >/dev/null || { echo "goaccess-check: goaccess is not installed" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./lproc scripts/genlog.lua --formats combined --lines "$lines" --malformed "$malformed" \
    --seed 7 --output "$tmp/combined.log"
(cd "$tmp" && goaccess combined.log -p "$OLDPWD/bench/goaccess.conf" -o report.json \
    --invalid-requests=invalid.log) >/dev/null 2>&1
for k in total_requests valid_requests failed_requests; do
    printf '%s: %s\n' "$k" "$(grep -o "\"$k\": *[0-9]*" "$tmp/report.json" | head -n 1 | grep -o '[0-9]*$')"
done
printf 'lines with status 906 (not accepted by GoAccess): %s\n' \
    "$(grep -ac '" 906 [0-9]* "' "$tmp/combined.log" || true)"

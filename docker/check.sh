#!/bin/bash
# Checks docker/ where no Docker engine runs:
#   1. docker/check/check.mjs: compose.yml parsed (YAML 1.1 with merge keys), interpolated with
#      .env.example and validated against the Compose Specification JSON schema with ajv, then
#      this project's rules; the Dockerfile parsed and linted (dockerfile-utils), then its rules
#      (stages, `make deps` / `make` as documented, runtime packages, copies, user).
#   2. dclint, a Compose linter (its non-stylistic rules).
#   3. A Compose implementation's own `config`, when one is installed (`docker compose`, or
#      Debian's docker-compose): with .env.example, and without it (must refuse: no defaults
#      for accounts and passwords).
# usage: docker/check.sh       (needs node and npm; installs docker/check's pinned packages)
set -euo pipefail
cd "$(dirname "$0")"
for t in node npm; do
    command -v "$t" >/dev/null || { echo "docker/check: $t is missing (apt-get install nodejs npm)" >&2; exit 1; }
done
if ! cmp -s check/package-lock.json check/node_modules/.package-lock.json 2>/dev/null; then
    npm ci --prefix check --no-audit --no-fund --loglevel=error >/dev/null
fi

echo "== compose.yml and Dockerfile (docker/check/check.mjs)"
node check/check.mjs

echo "== dclint $(node -p 'require("./check/node_modules/dclint/package.json").version')"
# Off: ordering rules (style), port quoting (style), and no-unbound-port-interfaces, which
# cannot see through ${BIND_ADDRESS:-127.0.0.1} (check.mjs checks the interpolated ports).
# require-project-name-field: the name is in .env (see compose.yml).
check/node_modules/.bin/dclint compose.yml --no-color --max-warnings 0 \
    --disable-rule services-alphabetical-order service-keys-order top-level-properties-order \
        service-dependencies-alphabetical-order require-quotes-in-ports no-unbound-port-interfaces \
        require-project-name-field
echo "ok   dclint: no error, no warning"

echo "== Compose's own parser"
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    echo "skip no Compose implementation here (docker compose, docker-compose)"
    exit 0
fi
out=$("${compose[@]}" --env-file .env.example -f compose.yml config)
echo "ok   $("${compose[@]}" version --short 2>/dev/null || true) config accepts compose.yml with .env.example"
ports=$(printf '%s\n' "$out" | grep -E '^ *- .*:[0-9]+:[0-9]+(/tcp)?$|host_ip' || true)
if printf '%s\n' "$ports" | grep -v '127\.0\.0\.1' | grep -q .; then
    echo "FAIL published ports not on 127.0.0.1:"; printf '%s\n' "$ports"; exit 1
fi
echo "ok   its published ports: $(printf '%s\n' "$ports" | sed 's/^ *- //' | tr '\n' ' ')"
empty=$(mktemp)
trap 'rm -f "$empty"' EXIT
if err=$("${compose[@]}" --env-file "$empty" -f compose.yml config 2>&1 >/dev/null); then
    echo "FAIL config accepts compose.yml without the accounts and passwords"; exit 1
fi
echo "ok   without .env it refuses: $(printf '%s\n' "$err" | grep -m1 -i 'required\|missing')"

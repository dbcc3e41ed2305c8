#!/usr/bin/env bash
# Runs the Authsignal SDK scripts (Node and Python) against a fresh `riskgate serve` on a free loopback port.
# Installs the official SDKs from their registries into target/sdk/ when they are missing. Exits non-zero when
# a script finds a mismatch or the server does not start or stop cleanly.
set -euo pipefail
cd "$(dirname "$0")/../.."
sdk=target/sdk

need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing $2 (for $1)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $2 </dev/null
    fi
    command -v "$1" >/dev/null 2>&1 || { echo "error: \`$1\` is needed for the SDK tests" >&2; exit 1; }
}
need node "nodejs npm"
need npm npm
need python3 "python3 python3-pip"

if [ ! -f "$sdk/node/node_modules/@authsignal/node/package.json" ]; then
    npm install --no-audit --no-fund --loglevel=error --prefix "$sdk/node" @authsignal/node </dev/null
fi
if [ ! -f "$sdk/python/authsignal/client.py" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --no-input --root-user-action=ignore --target "$sdk/python" authsignal </dev/null
fi

cargo build --quiet --features server --bin riskgate
secret="sk_test_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
out=$(mktemp)
log=$(mktemp)
RISKGATE_SECRET="$secret" target/debug/riskgate serve --rules tests/sdk/rules --listen 127.0.0.1:0 \
    >"$out" 2>"$log" </dev/null &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$out" "$log"
}
trap cleanup EXIT

addr=""
for _ in $(seq 1 300); do
    addr=$(sed -n 's/^listening on //p' "$out")
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$addr" ]; then
    echo "error: riskgate serve did not start:" >&2
    cat "$log" >&2
    exit 1
fi
echo "riskgate serve on $addr"

status=0
RISKGATE_URL="$addr/v1" RISKGATE_SECRET="$secret" NODE_PATH="$sdk/node/node_modules" \
    node tests/sdk/node_sdk.js </dev/null || status=1
RISKGATE_URL="$addr/v1" RISKGATE_SECRET="$secret" PYTHONPATH="$sdk/python" \
    python3 tests/sdk/python_sdk.py </dev/null || status=1

# A clean stop: SIGTERM drains and exits 0.
kill -TERM "$pid"
if ! wait "$pid"; then
    echo "error: riskgate serve did not exit cleanly on SIGTERM:" >&2
    tail -20 "$log" >&2
    status=1
fi
if grep -q -- "$secret" "$log"; then
    echo "error: the API secret appears in the server's log" >&2
    status=1
fi
exit "$status"

#!/usr/bin/env bash
# callgrind.sh - instructions per proxied request of a gateway build, counted by callgrind on
# the running process: the same binary, config and load give the same count whatever else the
# machine is doing, so two builds compare without alternating runs.
#
# Usage: benches/callgrind.sh BINARY [PATH] [SECONDS]
#   BINARY   the gateway (a release build: target/release/amity-gateway), or the floor
#            target/release/examples/bare_proxy (BARE_CLIENT=pool: with the gateway's pool)
#   PATH     session (default: POST /api/v3/sessions, a policy route) or pass
#            (POST /api/v3/messages, a pass route)
#   SECONDS  of load after the warm-up (default 8)
# CONFIG=FILE in the environment replaces config/gateway.toml (an older build with its own).
#
# A fake upstream (benches/lib.sh: nginx, `return 200` with ../shared/bench/response.json, the
# key checked on the session path) and the gateway (config/gateway.toml as shipped: validation, local rate
# limit, cache bookkeeping, metrics, the JSON access log, to /dev/null) on 127.0.0.1; wrk at 8
# connections, deviceId rotated over 100,000 values. Counters are zeroed after a 3 s warm-up.
# Prints instructions per request and keeps the callgrind file (callgrind_annotate reads it).
set -euo pipefail

BIN=$(realpath "${1:?usage: callgrind.sh BINARY [session|pass] [SECONDS]}")
KIND=${2:-session}
SECS=${3:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${BENCH_DIR:-$(cd "$ROOT/../shared/bench" && pwd)}
CONFIG=${CONFIG:-$ROOT/config/gateway.toml}
RUN=$(mktemp -d /tmp/callgrind.XXXXXX)
UP=18380
GW=18390
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
trap bench_stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
URL_PATH=$(bench_path "$KIND") || exit 2
# One runtime thread, as when the proxy is pinned to one CPU in the native runs (under valgrind
# the process would see every CPU and run tokio's multi-thread scheduler).
export TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-1}

bench_upstream_conf "$RUN" "$UP" "$SHARED/response.json" >"$RUN/upstream.conf"
bench_start nginx -p "$RUN" -c "$RUN/upstream.conf" >"$RUN/upstream.out" 2>&1

if [[ $(basename "$BIN") == bare_proxy ]]; then
  # The floor (examples/bare_proxy.rs); BARE_CLIENT=pool in the environment selects its client.
  BARE_LISTEN=127.0.0.1:$GW BARE_UPSTREAM=127.0.0.1:$UP BARE_API_KEY=test-key \
    bench_start valgrind --tool=callgrind --callgrind-out-file="$RUN/callgrind.out" \
    "$BIN" >/dev/null 2>"$RUN/valgrind.err"
else
  GATEWAY_LISTEN=127.0.0.1:$GW GATEWAY_ADMIN_LISTEN=127.0.0.1:$((GW + 1)) \
    GATEWAY_UPSTREAM_URL=http://127.0.0.1:$UP AMITY_API_KEY=test-key \
    bench_start valgrind --tool=callgrind --callgrind-out-file="$RUN/callgrind.out" \
    "$BIN" serve --config "$CONFIG" >/dev/null 2>"$RUN/valgrind.err"
fi
bench_wait_http "$GW"

bench_lua "$RUN/load.lua"
load() { bench_wrk "$RUN/load.lua" "$SHARED/request.json" "$URL_PATH" "$1" 8 "$GW"; }
load 3 >/dev/null
callgrind_control -z >/dev/null
out=$(load "$SECS")
callgrind_control -d >/dev/null
read -r requests non2xx < <(bench_counts "$out")
file=$(ls -t "$RUN"/callgrind.out* | head -n 1)
ir=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
echo "requests $requests (non-2xx $non2xx), instructions $ir, per request $((ir / requests))"
echo "callgrind file: $file"

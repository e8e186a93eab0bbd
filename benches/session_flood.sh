#!/usr/bin/env bash
# session_flood.sh - the resident memory of `serve` under a flood of session requests from
# devices it has not seen, against the built-in simulator (which issues a fresh token per
# session): what the rate limiter, the token registry and everything else keep once every
# bound is reached.
#
# Usage: benches/session_flood.sh [BINARY] [ROUNDS] [SECONDS]
#   BINARY   the gateway (default target/release/amity-gateway)
#   ROUNDS   rounds of load (default 4), SECONDS each (default 30)
# DEVICES=N in the environment makes the deviceIds repeat every N requests; by default every
# request is a new device. With N below cache.max_tokens, devices come back to their records,
# retire their older tokens, and the registry's tombstones fill too; above it, a device's
# record is gone before it returns. CONFIG=FILE replaces config/gateway.toml.
#
# wrk (1 thread, 16 connections) posts sessions to the gateway on 127.0.0.1:18280; prints
# VmRSS of the gateway before the load, after each round and 5 s after the last.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/amity-gateway}")
ROUNDS=${2:-4}
SECS=${3:-30}
CONFIG=${CONFIG:-$ROOT/config/gateway.toml}
RUN=$(mktemp -d /tmp/session_flood.XXXXXX)
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
cleanup() {
  bench_stop
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cat >"$RUN/flood.lua" <<'EOF'
local i = tonumber(os.getenv("START") or "0")
local devices = tonumber(os.getenv("DEVICES") or "0")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i + 1
  local d = i
  if devices > 0 then d = i % devices end
  return wrk.format(nil, nil, nil, string.format(
    '{"userId":"u%07d","deviceId":"dev-%09d","deviceInfo":{"kind":"ios"}}', i % 200000, d))
end
done = function(summary)
  io.write(string.format("@@REQUESTS %d non2xx=%d\n", summary.requests, summary.errors.status))
end
EOF

bench_start "$BIN" sim --listen 127.0.0.1:18281 --api-key flood-key >"$RUN/sim.out" 2>&1
bench_wait_http 18281
AMITY_API_KEY=flood-key GATEWAY_UPSTREAM_URL=http://127.0.0.1:18281 \
  GATEWAY_LISTEN=127.0.0.1:18280 GATEWAY_ADMIN_LISTEN=127.0.0.1:18290 \
  bench_start "$BIN" serve --config "$CONFIG" >/dev/null 2>"$RUN/gateway.err"
bench_wait_http 18280
gw=$(ss -ltnpH 'sport = :18280' | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1)
rss() { awk '/^VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$gw/status"; }
sleep 2
echo "idle: $(rss)"
for r in $(seq 1 "$ROUNDS"); do
  out=$(START=$(((r - 1) * 2000000)) timeout $((SECS + 30)) \
    wrk -t 1 -c 16 -d "${SECS}s" -s "$RUN/flood.lua" http://127.0.0.1:18280/api/v3/sessions)
  read -r requests non2xx < <(bench_counts "$out")
  echo "round $r: $requests sessions (non-2xx $non2xx), $(rss)"
done
sleep 5
echo "5 s later: $(rss)"

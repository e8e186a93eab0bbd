#!/usr/bin/env bash
# callgrind.sh - instructions per proxied request of a gateway build, counted by callgrind on
# the running process: the same binary, config and load give the same count whatever else the
# machine is doing, so two builds compare without alternating runs.
#
# Usage: benches/callgrind.sh BINARY [PATH] [SECONDS]
#   BINARY   the gateway (a release build: target/release/amity-gateway)
#   PATH     session (default: POST /api/v3/sessions, a policy route) or pass
#            (POST /api/v3/messages, a pass route)
#   SECONDS  of load after the warm-up (default 8)
# CONFIG=FILE in the environment replaces config/gateway.toml (an older build with its own).
#
# A fake upstream (nginx, `return 200` with ../shared/bench/response.json, the key checked on
# the session path) and the gateway (config/gateway.toml as shipped: validation, local rate
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
case $KIND in
  session) URL_PATH=/api/v3/sessions ;;
  pass) URL_PATH=/api/v3/messages ;;
  *) echo "callgrind.sh: PATH is session or pass" >&2; exit 2 ;;
esac

pids=()
cleanup() { for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

mkdir -p "$RUN/tmp"
cat >"$RUN/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $RUN/upstream.pid;
error_log $RUN/upstream.error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $RUN/tmp;
    server {
        listen 127.0.0.1:$UP;
        default_type application/json;
        location = /api/v3/sessions {
            if (\$http_x_api_key != "test-key") { return 401 '{"error":"no key"}'; }
            return 200 '$(tr -d '\n' <"$SHARED/response.json")';
        }
        location = /api/v3/messages {
            return 200 '$(tr -d '\n' <"$SHARED/response.json")';
        }
        location / { return 404; }
    }
}
EOF
setsid nginx -p "$RUN" -c "$RUN/upstream.conf" >"$RUN/upstream.out" 2>&1 &
pids+=($!)

GATEWAY_LISTEN=127.0.0.1:$GW GATEWAY_ADMIN_LISTEN=127.0.0.1:$((GW + 1)) \
  GATEWAY_UPSTREAM_URL=http://127.0.0.1:$UP AMITY_API_KEY=test-key \
  setsid valgrind --tool=callgrind --callgrind-out-file="$RUN/callgrind.out" \
  "$BIN" serve --config "$CONFIG" >/dev/null 2>"$RUN/valgrind.err" &
pids+=($!)

for _ in $(seq 1 300); do
  curl -s -o /dev/null "http://127.0.0.1:$GW/" 2>/dev/null && break
  sleep 0.1
done

cat >"$RUN/load.lua" <<'EOF'
local f = assert(io.open(os.getenv("BODY"), "rb"))
local body = f:read("*a"):gsub("%s+$", "")
f:close()
wrk.method = "POST"
wrk.path = os.getenv("URL_PATH")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-token"
local rest = body:gsub('"deviceId":"device%-abc%-%d+",?', ""):gsub(",}$", "}")
local head = rest:sub(1, -2) .. ',"deviceId":"device-abc-'
local i = 0
request = function()
  i = i % 100000 + 1
  return wrk.format(nil, nil, nil, head .. string.format("%06d", i) .. '"}')
end
done = function(summary)
  io.write(string.format("@@REQUESTS %d non2xx=%d\n", summary.requests, summary.errors.status))
end
EOF
load() {
  BODY="$SHARED/request.json" URL_PATH=$URL_PATH timeout $(($1 + 30)) \
    wrk -t 1 -c 8 -d "${1}s" -s "$RUN/load.lua" "http://127.0.0.1:$GW$URL_PATH"
}
load 3 >/dev/null
callgrind_control -z >/dev/null
out=$(load "$SECS")
callgrind_control -d >/dev/null
requests=$(sed -n 's/^@@REQUESTS \([0-9]*\).*/\1/p' <<<"$out")
non2xx=$(sed -n 's/.* non2xx=\([0-9]*\).*/\1/p' <<<"$out")
file=$(ls -t "$RUN"/callgrind.out* | head -n 1)
ir=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
echo "requests $requests (non-2xx $non2xx), instructions $ir, per request $((ir / requests))"
echo "callgrind file: $file"

#!/usr/bin/env bash
# cpu_split.sh - a proxy's CPU per request split into user and kernel (system) time, so what
# the proxy's own code costs is seen apart from what the socket calls cost, which no user-space
# change removes. Run it for nginx and a gateway build in turn (alternating, the machine drifts).
#
# Usage: benches/cpu_split.sh [session|pass] [SECONDS] -- CMD...
#   CMD      starts the proxy in the foreground (run with bash -c): it must listen on
#            127.0.0.1:$PROXY_PORT and forward to 127.0.0.1:$UPSTREAM_PORT (both exported)
#   session  POST /api/v3/sessions (the default; the upstream wants `x-api-key: test-key`)
#   pass     POST /api/v3/messages (no key)
#   SECONDS  of measured load (default 5), after a 2 s warm-up
#
# The fake upstream of benches/lib.sh and wrk (1 thread, 32 connections, deviceId rotated over
# 100,000 values) run on CPU 0, the proxy on CPU 1. Prints requests, then user and system
# microseconds of CPU per request, read from /proc for the proxy's whole process group, and,
# when perf may read the raw_syscalls tracepoint, the system calls per request.
#
# Example, the gateway with its shipped config (nginx: see benches/README.md):
#   benches/cpu_split.sh session 5 -- 'GATEWAY_UPSTREAM_URL=http://127.0.0.1:$UPSTREAM_PORT AMITY_API_KEY=test-key GATEWAY_LISTEN=127.0.0.1:$PROXY_PORT GATEWAY_ADMIN_LISTEN=127.0.0.1:18499 exec target/release/amity-gateway serve --config config/gateway.toml'
set -euo pipefail

KIND=session
SECS=5
while [[ $# -gt 0 && $1 != -- ]]; do
  case $1 in
    session | pass) KIND=$1 ;;
    *[!0-9]* | '') echo "cpu_split.sh: unknown argument $1 (see the header)" >&2; exit 2 ;;
    *) SECS=$1 ;;
  esac
  shift
done
[[ ${1:-} == -- && $# -ge 2 ]] || { echo "cpu_split.sh: the proxy command goes after --" >&2; exit 2; }
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${BENCH_DIR:-$(cd "$ROOT/../shared/bench" && pwd)}
RUN=$(mktemp -d /tmp/cpu_split.XXXXXX)
export UPSTREAM_PORT=18480 PROXY_PORT=18490
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
trap 'bench_stop; rm -rf "$RUN"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
URL_PATH=$(bench_path "$KIND")

bench_upstream_conf "$RUN" "$UPSTREAM_PORT" "$SHARED/response.json" >"$RUN/upstream.conf"
bench_start taskset -c 0 nginx -p "$RUN" -c "$RUN/upstream.conf" >"$RUN/upstream.out" 2>&1
# Its output (an access log under load) is not kept; its errors are.
bench_start taskset -c 1 bash -c "$*" >/dev/null 2>"$RUN/proxy.err"
proxy_group=${BENCH_PGIDS[1]}
bench_wait_http "$PROXY_PORT" || { tail -n 20 "$RUN/proxy.err" >&2; exit 1; }

bench_lua "$RUN/load.lua"
load() {
  bench_wrk "$RUN/load.lua" "$SHARED/request.json" "$URL_PATH" "$1" 32 "$PROXY_PORT" taskset -c 0
}
# utime and stime, in clock ticks, summed over the proxy's process group.
ticks() {
  local pid line rest u=0 s=0
  for pid in $(ps -e -o pid=,pgid= | awk -v g="$proxy_group" '$2 == g { print $1 }'); do
    line=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    rest=${line##*) }
    read -r -a f <<<"$rest"
    u=$((u + f[11])) s=$((s + f[12]))
  done
  echo "$u $s"
}

load 2 >/dev/null
pids=$(ps -e -o pid=,pgid= | awk -v g="$proxy_group" '$2 == g { print $1 }' | paste -sd, -)
perf_out= perf_pid=
if command -v perf >/dev/null; then
  perf_out=$RUN/perf.txt
  perf stat -e raw_syscalls:sys_enter -p "$pids" -o "$perf_out" -- sleep "$SECS" \
    >/dev/null 2>&1 &
  perf_pid=$!
fi
read -r u0 s0 < <(ticks)
out=$(load "$SECS")
read -r u1 s1 < <(ticks)
[[ -z $perf_pid ]] || wait "$perf_pid" || true
read -r requests non2xx < <(bench_counts "$out")
hz=$(getconf CLK_TCK)
per() { awk -v t="$1" -v hz="$hz" -v n="$requests" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'; }
echo "requests $requests (non-2xx $non2xx)"
echo "user us/request $(per $((u1 - u0)))  system us/request $(per $((s1 - s0)))"
if [[ -n $perf_out ]]; then
  calls=$(awk '/sys_enter/ { gsub(",", "", $1); print $1 }' "$perf_out")
  [[ -n $calls ]] && awk -v c="$calls" -v n="$requests" 'BEGIN { printf "system calls/request %.2f\n", c / n }'
fi

#!/usr/bin/env bash
# pass_peers.sh - proxy CPU per request of the gateway's pass-through route beside
# nginx (and HAProxy) doing the same plain proxying, in one run, on one box.
#
# A small sibling of ../shared/bench/peers.sh for pass routes: the fake upstream
# (benches/lib.sh: nginx `return 200 <response.json>`) answers POST /api/v3/messages
# WITHOUT any key check, and no proxy injects a header. Configs are rendered
# into a temporary run directory; wrk posts request.json with
# `Authorization: Bearer bench-token` in interleaved rounds.
#
# Usage: ./pass_peers.sh [options]
#   --gateway 'CMD'        command starting a gateway in the foreground (run with
#                          bash -c); it must proxy to 127.0.0.1:$UPSTREAM_PORT
#                          (exported) and listen on 127.0.0.1:--gateway-port
#   --gateway-port N       port of that gateway (one per --gateway)
#   --gateway-name NAME    label (default gateway, gateway2, ...); the three may be
#                          repeated, the i-th of each going together
#   --peers LIST           comma list from nginx,haproxy (default nginx,haproxy;
#                          haproxy is skipped if not installed)
#   --rounds N             interleaved rounds (default 5, minimum 3)
#   --duration S           seconds per wrk run (default 5, minimum 2)
#   --warmup S             unmeasured warm-up per target (default 2)
#   --connections N        wrk connections (default 32; wrk -t 1)
#   --base-port P          upstream on P, nginx P+1, haproxy P+2 (default 18180)
#   --proxy-cpus LIST      taskset CPU list for each proxy (default 1)
#   --load-cpus LIST       taskset CPU list for wrk        (default 0)
#   --upstream-cpus LIST   taskset CPU list for upstream   (default 0)
#   --no-pin               do not use taskset
#   --keep                 keep the run directory (configs, outputs, results.tsv)
#   -h, --help
#
# Everything listens on 127.0.0.1 only. Every process started here runs in its own
# session and is stopped by process-group id on exit, Ctrl-C included.
set -euo pipefail

# The shared rig's request and answer bodies (../shared/bench beside the repository).
HERE=${BENCH_DIR:-$(cd "$(dirname "$0")/../../shared/bench" && pwd)}
ROUNDS=5; DURATION=5; WARMUP=2; CONNS=32; BASE_PORT=18180
PROXY_CPUS=1; LOAD_CPUS=0; UPSTREAM_CPUS=0; PIN=1; KEEP=0; PEERS="nginx,haproxy"
declare -a GW_CMDS=() GW_PORTS=() GW_NAMES=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "pass_peers.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --gateway) GW_CMDS+=("$2"); shift 2 ;;
    --gateway-port) GW_PORTS+=("$2"); shift 2 ;;
    --gateway-name) GW_NAMES+=("$2"); shift 2 ;;
    --peers) PEERS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --connections|-c) CONNS="$2"; shift 2 ;;
    --base-port) BASE_PORT="$2"; shift 2 ;;
    --proxy-cpus) PROXY_CPUS="$2"; shift 2 ;;
    --load-cpus) LOAD_CPUS="$2"; shift 2 ;;
    --upstream-cpus) UPSTREAM_CPUS="$2"; shift 2 ;;
    --no-pin) PIN=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 3 ]] || die "--rounds must be >= 3"
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 2 ]] || die "--duration must be an integer >= 2"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "--warmup must be an integer"
[[ "$CONNS" =~ ^[0-9]+$ && "$CONNS" -ge 1 ]] || die "--connections must be >= 1"
[[ "$BASE_PORT" =~ ^[0-9]+$ ]] || die "--base-port must be a number"
N_GW=${#GW_CMDS[@]}
[[ ${#GW_PORTS[@]} -le $N_GW && ${#GW_NAMES[@]} -le $N_GW ]] || die "more --gateway-port/--gateway-name than --gateway"
for ((i = 0; i < N_GW; i++)); do
  [[ -n "${GW_CMDS[i]}" ]] || die "empty --gateway"
  [[ "${GW_PORTS[i]:-}" =~ ^[0-9]+$ ]] || die "--gateway needs a numeric --gateway-port (one per --gateway)"
  [[ -n "${GW_NAMES[i]:-}" ]] || { GW_NAMES[i]=gateway; [[ $i -eq 0 ]] || GW_NAMES[i]=gateway$((i + 1)); }
  [[ "${GW_NAMES[i]}" =~ ^[A-Za-z0-9._-]+$ ]] || die "--gateway-name: letters, digits, . _ - only: ${GW_NAMES[i]}"
done

command -v nginx >/dev/null || die "nginx not installed (apt-get install -y nginx)"
command -v wrk >/dev/null || die "wrk not installed (apt-get install -y wrk)"
command -v curl >/dev/null || die "curl not installed (apt-get install -y curl)"
if [[ $PIN -eq 1 ]] && { ! command -v taskset >/dev/null || [[ $(nproc) -lt 2 ]]; }; then
  echo ">> taskset missing or < 2 CPUs: not pinning" >&2; PIN=0
fi

# ---------------------------------------------------------------- state, cleanup
RUN="$(mktemp -d "${TMPDIR:-/tmp}/pass-peers.XXXXXX")"
chmod 755 "$RUN"
declare -a PGIDS=(); declare -A PGID_OF=() TPORT=(); CUR_WRK=""
cleanup() {
  local rc=$? g deadline=$((SECONDS + 5))
  trap - EXIT INT TERM
  [[ -n "$CUR_WRK" ]] && kill -TERM "$CUR_WRK" 2>/dev/null || true
  for g in "${PGIDS[@]:-}"; do [[ -n "$g" ]] && kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${PGIDS[@]:-}"; do
    [[ -n "$g" ]] || continue
    while kill -0 -- "-$g" 2>/dev/null && [[ $SECONDS -lt $deadline ]]; do sleep 0.1; done
    kill -KILL -- "-$g" 2>/dev/null || true
  done
  if [[ $KEEP -eq 1 ]]; then echo ">> run directory kept: $RUN" >&2; else rm -rf "$RUN"; fi
  exit "$rc"
}
trap cleanup EXIT; trap 'exit 130' INT; trap 'exit 143' TERM

start() {  # start <name> <cpus> cmd...  -> own session (pgid == pid), output in $RUN/<name>.out
  local name="$1" cpus="$2"; shift 2
  [[ $PIN -eq 1 && -n "$cpus" ]] && set -- taskset -c "$cpus" "$@"
  setsid "$@" >"$RUN/$name.out" 2>&1 </dev/null &
  PGIDS+=("$!"); PGID_OF[$name]=$!
}
running() { kill -0 -- "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null; }
port_open() { timeout 0.5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
wait_port() {  # wait_port <name> <port> <seconds>
  local end=$((SECONDS + $3))
  while ! port_open "$2"; do
    running "${PGID_OF[$1]}" || { tail -n 20 "$RUN/$1.out" >&2 || true; die "$1 exited before listening on $2"; }
    [[ $SECONDS -lt $end ]] || { tail -n 20 "$RUN/$1.out" >&2 || true; die "$1 not listening on $2 after $3 s"; }
    sleep 0.1
  done
}
render() {  # render <out> KEY=VALUE... < template   (replaces @KEY@)
  local out="$1" kv k v; shift
  cat >"$out"
  for kv in "$@"; do
    k="${kv%%=*}"; v="${kv#*=}"; v="${v//\\/\\\\}"; v="${v//&/\\&}"; v="${v//|/\\|}"
    sed -i "s|@$k@|$v|g" "$out"
  done
}

# ---------------------------------------------------------------- ports, targets
UPSTREAM_PORT=$BASE_PORT
declare -A PEER_PORT=([nginx]=$((BASE_PORT + 1)) [haproxy]=$((BASE_PORT + 2)))
declare -a TARGETS=()
IFS=',' read -r -a PEER_LIST <<<"$PEERS"
for p in "${PEER_LIST[@]}"; do
  [[ -n "${PEER_PORT[$p]:-}" ]] || die "unknown peer: $p"
  if [[ $p == haproxy ]] && ! command -v haproxy >/dev/null; then echo ">> haproxy not installed: skipped" >&2; continue; fi
  TARGETS+=("$p"); TPORT[$p]=${PEER_PORT[$p]}
done
for ((i = 0; i < N_GW; i++)); do
  [[ -z "${TPORT[${GW_NAMES[i]}]:-}" && ${GW_NAMES[i]} != upstream ]] || die "target name ${GW_NAMES[i]} used twice"
  TARGETS+=("${GW_NAMES[i]}"); TPORT[${GW_NAMES[i]}]=${GW_PORTS[i]}
done
[[ ${#TARGETS[@]} -gt 0 ]] || die "no targets"
for port in "$UPSTREAM_PORT" "${TPORT[@]}"; do
  port_open "$port" && die "port $port on 127.0.0.1 is already in use (try --base-port)"
done
[[ $(printf '%s\n' "$UPSTREAM_PORT" "${TPORT[@]}" | sort | uniq -d | wc -l) -eq 0 ]] || die "two targets share a port"

RESPONSE_JSON="$(tr -d '\n' <"$HERE/response.json")"
[[ "$RESPONSE_JSON" != *"'"* && "$RESPONSE_JSON" != *'$'* ]] || die "response.json must not contain ' or \$"
cp "$HERE/request.json" "$RUN/request.json"

# ---------------------------------------------------------------- configs (rendered into $RUN)
NGX_COMMON='events { worker_connections 4096; }'
NGX_HTTP='access_log off; server_tokens off; keepalive_requests 1000000; keepalive_timeout 75s;
    client_body_temp_path @RUN@/@N@-tmp/body; proxy_temp_path @RUN@/@N@-tmp/proxy;
    fastcgi_temp_path @RUN@/@N@-tmp/fastcgi; uwsgi_temp_path @RUN@/@N@-tmp/uwsgi; scgi_temp_path @RUN@/@N@-tmp/scgi;'
mkdir -p "$RUN/nginx-tmp"
# The fake upstream shared with the other bench scripts.
# shellcheck source=benches/lib.sh
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
bench_upstream_conf "$RUN" "$UPSTREAM_PORT" "$HERE/response.json" >"$RUN/upstream.conf"
render "$RUN/nginx.conf" RUN="$RUN" N=nginx PORT="${PEER_PORT[nginx]}" UPSTREAM_PORT="$UPSTREAM_PORT" <<EOF
worker_processes 1; daemon off; pid @RUN@/nginx.pid; error_log @RUN@/nginx.error.log warn;
$NGX_COMMON
http {
    $NGX_HTTP
    upstream backend {
        server 127.0.0.1:@UPSTREAM_PORT@;
        keepalive 64; keepalive_requests 1000000; keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:@PORT@ backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
EOF
render "$RUN/haproxy.cfg" PORT="${PEER_PORT[haproxy]}" UPSTREAM_PORT="$UPSTREAM_PORT" <<'EOF'
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:@PORT@
    default_backend be
backend be
    server upstream 127.0.0.1:@UPSTREAM_PORT@
EOF
cat >"$RUN/pass.lua" <<'EOF'
local f = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
local body = f:read("*a"):gsub("%s+$", "")
f:close()
wrk.method = "POST"
wrk.path = "/api/v3/messages"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-token"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "@@RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d non2xx=%d sock_errors=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
EOF

# ---------------------------------------------------------------- start everything
start upstream "$UPSTREAM_CPUS" nginx -e "$RUN/upstream.stderr.log" -p "$RUN" -c "$RUN/upstream.conf"
wait_port upstream "$UPSTREAM_PORT" 10
for t in "${TARGETS[@]}"; do
  case "$t" in
    nginx) start nginx "$PROXY_CPUS" nginx -e "$RUN/nginx.stderr.log" -p "$RUN" -c "$RUN/nginx.conf" ;;
    haproxy) start haproxy "$PROXY_CPUS" haproxy -db -f "$RUN/haproxy.cfg" ;;
  esac
done
export UPSTREAM_PORT
export TOKIO_WORKER_THREADS="${TOKIO_WORKER_THREADS:-1}"  # one worker, like the peers
for ((i = 0; i < N_GW; i++)); do start "${GW_NAMES[i]}" "$PROXY_CPUS" bash -c "${GW_CMDS[i]}"; done
for t in "${TARGETS[@]}"; do wait_port "$t" "${TPORT[$t]}" 30; done

WL=8; for t in "${TARGETS[@]}"; do [[ ${#t} -le $WL ]] || WL=${#t}; done
echo ">> checking POST /api/v3/messages through each target"
for t in upstream "${TARGETS[@]}"; do
  port=${TPORT[$t]:-$UPSTREAM_PORT}
  r=$(curl -sS -o "$RUN/last.body" -w '%{http_code} %{size_download}' --max-time 5 -X POST \
        -H 'Content-Type: application/json' -H 'Authorization: Bearer bench-token' \
        --data-binary @"$RUN/request.json" "http://127.0.0.1:$port/api/v3/messages" 2>&1) || true
  [[ ${r%% *} == 200 ]] || { echo "---- $t answered: $r" >&2; head -c 2000 "$RUN/last.body" >&2 2>/dev/null; echo >&2; die "$t: expected 200"; }
  cmp -s "$RUN/last.body" <(printf '%s' "$RESPONSE_JSON") && same="body identical" || same="BODY DIFFERS from response.json"
  printf '   %-*s -> %s, %s bytes, %s\n' "$WL" "$t" "${r%% *}" "${r#* }" "$same"
done

# ---------------------------------------------------------------- measurement
CLK_TCK=$(getconf CLK_TCK)
group_ticks() {  # utime+stime ticks of every process in a process group
  local g="$1" pid sum=0 line rest
  for pid in $(ps -e -o pid=,pgid= | awk -v g="$g" '$2==g{print $1}'); do
    line=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    rest=${line##*) }
    set -- $rest
    sum=$((sum + ${12} + ${13}))
  done
  echo "$sum"
}
RESULTS="$RUN/results.tsv"
printf 'round\ttarget\trps\tp99_us\tnon2xx\tsock_errors\tcpu_pct\tus_per_req\n' >"$RESULTS"
run_wrk() {  # run_wrk <target> <seconds> <round|warmup>
  local t="$1" secs="$2" round="$3" out="$RUN/wrk.out"
  local -a cmd=(timeout $((secs + 5)) wrk -t 1 -c "$CONNS" -d "${secs}s" -s "$RUN/pass.lua" "http://127.0.0.1:${TPORT[$t]}/api/v3/messages")
  [[ $PIN -eq 1 && -n "$LOAD_CPUS" ]] && cmd=(taskset -c "$LOAD_CPUS" "${cmd[@]}")
  WRK_BODY_FILE="$RUN/request.json" "${cmd[@]}" >"$out" 2>&1 &
  local wpid=$!; CUR_WRK=$wpid
  if [[ $round == warmup ]]; then wait "$wpid" || true; CUR_WRK=""; return; fi
  local g=${PGID_OF[$t]} t0 t1 p0 p1
  sleep 1  # sample the steady middle of the run
  t0=$(date +%s.%N); p0=$(group_ticks "$g")
  sleep $((secs - 2)).5
  t1=$(date +%s.%N); p1=$(group_ticks "$g")
  wait "$wpid" || true; CUR_WRK=""
  local res; res=$(grep '^@@RESULT' "$out" | tail -n 1)
  [[ -n $res ]] || { cat "$out" >&2; die "wrk produced no result for $t"; }
  get() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$res"; }
  local rps p99 n2 se pc us
  rps=$(get rps); p99=$(get p99_us); n2=$(get non2xx); se=$(get sock_errors)
  read -r pc us < <(awk -v d=$((p1 - p0)) -v h="$CLK_TCK" -v a="$t0" -v b="$t1" -v r="$rps" \
    'BEGIN{ w=b-a; s=d/h; printf "%.1f %.2f\n", 100*s/w, (r>0 ? s/(r*w)*1e6 : 0) }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "$rps" "$p99" "$n2" "$se" "$pc" "$us" >>"$RESULTS"
  printf '   round %s %-*s %9.0f req/s  p99 %7.3f ms  cpu %5s%%  %6s us/req  non2xx %s  sock_err %s\n' \
    "$round" "$WL" "$t" "$rps" "$(awk -v v="$p99" 'BEGIN{print v/1000}')" "$pc" "$us" "$n2" "$se"
}

n_t=${#TARGETS[@]}
echo ">> machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load avg $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ $PIN -eq 1 ]]; then echo ">> pinning: wrk on CPU $LOAD_CPUS, proxies on CPU $PROXY_CPUS, upstream on CPU $UPSTREAM_CPUS"; else echo ">> no pinning"; fi
echo ">> wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS rounds; targets: ${TARGETS[*]}; ~$(( n_t * WARMUP + ROUNDS * n_t * (DURATION + 1) ))s"
if [[ $WARMUP -gt 0 ]]; then
  echo ">> warm-up (${WARMUP}s each, not measured)"
  for t in "${TARGETS[@]}"; do run_wrk "$t" "$WARMUP" warmup; done
fi
for ((r = 1; r <= ROUNDS; r++)); do
  for t in "${TARGETS[@]}"; do run_wrk "$t" "$DURATION" "$r"; sleep 0.5; done
done

# ---------------------------------------------------------------- report
median() { sort -g | awk '{a[NR]=$1} END{ if (NR==0) {print "nan"; exit} if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
col() { awk -F'\t' -v t="$1" -v c="$2" 'NR>1 && $2==t {print $c}' "$RESULTS"; }
ref=""; [[ -n "${TPORT[nginx]:-}" ]] && ref=$(col nginx 8 | median)
declare -a ROWS=()
for t in "${TARGETS[@]}"; do
  rps=$(col "$t" 3 | median); p99=$(col "$t" 4 | median); pc=$(col "$t" 7 | median); us=$(col "$t" 8 | median)
  n2=$(col "$t" 5 | awk '{s+=$1} END{print s+0}'); se=$(col "$t" 6 | awk '{s+=$1} END{print s+0}')
  ratio="-"; [[ -n $ref ]] && ratio=$(awk -v a="$us" -v b="$ref" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "-" }')
  ROWS+=("$(printf '%s\t%.0f\t%.3f\t%.1f\t%.2f\t%s\t%s\t%s' "$t" "$rps" "$(awk -v v="$p99" 'BEGIN{print v/1000}')" "$pc" "$us" "$ratio" "$n2" "$se")")
done
echo
echo "== Pass route POST /api/v3/messages: median over $ROUNDS rounds (wrk -t1 -c$CONNS -d${DURATION}s; proxy CPU sampled mid-run)"
printf '%-*s %9s %8s %8s %8s %9s %7s %8s\n' "$WL" target "req/s" "p99 ms" "cpu %" "us/req" "vs nginx" non2xx sock_err
for row in "${ROWS[@]}"; do IFS=$'\t' read -r -a c <<<"$row"
  printf '%-*s %9s %8s %8s %8s %9s %7s %8s\n' "$WL" "${c[@]}"; done
echo
echo "| target | req/s | p99 ms | proxy CPU % | proxy CPU µs/req | µs/req vs nginx | non-2xx | socket errors |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for row in "${ROWS[@]}"; do IFS=$'\t' read -r -a c <<<"$row"
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "${c[@]}"; done
echo
awk -F'\t' 'NR>1 && ($5>0 || $6>0) {bad=1} END{exit !bad}' "$RESULTS" &&
  echo "!! WARNING: non-2xx responses or socket errors: this run is NOT valid (see per-run lines)"
awk -F'\t' 'NR>1 && $7>90 {hot=1} END{exit !hot}' "$RESULTS" &&
  echo "!! note: a proxy near 100% CPU was the limit; µs/req stays comparable"
exit 0

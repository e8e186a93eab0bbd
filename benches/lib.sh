# lib.sh - what the gateway's own bench scripts share; sourced, not run.
#
# bench_upstream_conf RUN PORT RESPONSE_FILE
#     Prints the fake upstream's nginx config (one worker, files under RUN): it answers
#     `200 <RESPONSE_FILE>` to POST /api/v3/sessions carrying `x-api-key: test-key` (401
#     without it: a proxy that forgets the key is caught) and to POST /api/v3/messages with no
#     key check (a pass route never carries the key); 404 to anything else.
# bench_path session|pass
#     Prints the path a load of that kind posts to: /api/v3/sessions (a policy route, the
#     upstream wants the key) or /api/v3/messages (a pass route).
# bench_lua FILE
#     Writes a wrk script posting $BODY (a file) to $URL_PATH with a bearer token, its
#     deviceId rotated over 100,000 values; it prints `@@REQUESTS <n> non2xx=<n>` at the end.
# bench_counts WRK-OUTPUT
#     Prints the requests and non-2xx answers a bench_lua run reported, space-separated.
# bench_wrk LUA BODY PATH SECONDS CONNECTIONS PORT [CMD-PREFIX...]
#     One wrk thread running LUA (from bench_lua) with BODY against 127.0.0.1:PORT/PATH, under
#     CMD-PREFIX (e.g. taskset -c 0) when given.
# bench_start CMD...
#     Runs CMD in a session of its own; its process group is stopped by bench_stop.
# bench_stop
#     Stops every group bench_start started: TERM, then KILL after 5 s.
# bench_wait_http PORT
#     Waits (up to 30 s) until something answers HTTP on 127.0.0.1:PORT.

BENCH_PGIDS=()

bench_upstream_conf() {
  local run=$1 port=$2 response
  response=$(tr -d '\n' <"$3")
  if [[ $response == *"'"* || $response == *'$'* ]]; then
    echo "bench_upstream_conf: $3 must not contain ' or \$" >&2
    return 1
  fi
  mkdir -p "$run/upstream-tmp"
  cat <<EOF
worker_processes 1;
daemon off;
pid $run/upstream.pid;
error_log $run/upstream.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $run/upstream-tmp/body;
    proxy_temp_path $run/upstream-tmp/proxy;
    fastcgi_temp_path $run/upstream-tmp/fastcgi;
    uwsgi_temp_path $run/upstream-tmp/uwsgi;
    scgi_temp_path $run/upstream-tmp/scgi;
    server {
        listen 127.0.0.1:$port backlog=4096;
        default_type application/json;
        location = /api/v3/sessions {
            if (\$http_x_api_key != "test-key") { return 401 '{"error":"no key"}'; }
            return 200 '$response';
        }
        location = /api/v3/messages {
            if (\$request_method != POST) { return 404 '{"error":"not found"}'; }
            return 200 '$response';
        }
        location / { return 404 '{"error":"not found"}'; }
    }
}
EOF
}

bench_path() {
  case $1 in
    session) echo /api/v3/sessions ;;
    pass) echo /api/v3/messages ;;
    *) echo "the load is session or pass, not $1" >&2; return 1 ;;
  esac
}

bench_wrk() {
  local lua=$1 body=$2 path=$3 secs=$4 conns=$5 port=$6
  shift 6
  BODY=$body URL_PATH=$path timeout $((secs + 30)) "$@" \
    wrk -t 1 -c "$conns" -d "${secs}s" -s "$lua" "http://127.0.0.1:$port$path"
}

bench_counts() {
  sed -n 's/^@@REQUESTS \([0-9]*\) non2xx=\([0-9]*\).*/\1 \2/p' <<<"$1"
}

bench_lua() {
  cat >"$1" <<'EOF'
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
}

bench_start() {
  setsid "$@" </dev/null &
  BENCH_PGIDS+=("$!")
}

bench_stop() {
  local g deadline=$((SECONDS + 5))
  for g in "${BENCH_PGIDS[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${BENCH_PGIDS[@]}"; do
    while kill -0 -- "-$g" 2>/dev/null && [[ $SECONDS -lt $deadline ]]; do sleep 0.1; done
    kill -KILL -- "-$g" 2>/dev/null || true
  done
  BENCH_PGIDS=()
}

bench_wait_http() {
  local _
  for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing answers HTTP on 127.0.0.1:$1 after 30 s" >&2
  return 1
}

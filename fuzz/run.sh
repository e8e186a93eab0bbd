#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time, from the committed seeds.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     SECONDS per target (default 30); all targets by default
#
# Environment:
#   FUZZ_SANITIZER   address (default) or none (faster runs; no ASan in the dependencies' unsafe code)
#   FUZZ_JOBS        parallel fuzzing processes per target (default 1)
#   FUZZ_NICE        nice level of the fuzzing processes (default 0)
#
# Works on a stable toolchain: cargo-fuzz passes nightly flags (-Z sanitizer, coverage
# instrumentation), which RUSTC_BOOTSTRAP=1 lets a stable compiler accept. Grown corpora go
# to fuzz/work/corpus/<target> (kept between runs, ignored by git); a crash leaves its input
# in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-30}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(session answer wire config route)
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-1}
nice_level=${FUZZ_NICE:-0}
cargo_fuzz_version=0.13.2

export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
  echo "fuzz: installing cargo-fuzz $cargo_fuzz_version"
  cargo install --locked --version "$cargo_fuzz_version" cargo-fuzz
fi

echo "fuzz: building ${targets[*]} (sanitizer: $sanitizer)"
start=$SECONDS
if (($# == 0)); then
  nice -n "$nice_level" cargo fuzz build --sanitizer "$sanitizer"
else
  for t in "${targets[@]}"; do
    nice -n "$nice_level" cargo fuzz build --sanitizer "$sanitizer" "$t"
  done
fi
echo "fuzz: built in $((SECONDS - start)) s"

# The config target's dictionary: every section and key of the shipped config file, so that
# mutations stay close to files the loader reads past the parser.
mkdir -p work
{
  grep -oE '^\s*#?\s*\[[a-z_.]+\]' ../config/gateway.toml | sed -E 's/^\s*#?\s*//' | sort -u
  grep -oE '^\s*#?\s*[a-z_]+ = ' ../config/gateway.toml | sed -E 's/^\s*#?\s*//' | sort -u
  printf '%s\n' '#env AMITY_API_KEY=' '#env GATEWAY_LISTEN=' '#env GATEWAY_UPSTREAM_URL=' \
    '#env GATEWAY_REDIS_URL=' '#env GATEWAY_RATE_LIMIT_BACKEND=' '#env GATEWAY_TLS_CERT_FILE=' \
    '"redis"' '"local"' '"reject"' '"pretty"' '18446744073709551615' '-1' '0'
} | sed -E 's/\\/\\\\/g; s/"/\\"/g; s/.*/"&"/' >work/config.dict

parallel=()
((jobs > 1)) && parallel=(--jobs "$jobs")
for t in "${targets[@]}"; do
  mkdir -p "work/corpus/$t"
  dict=$PWD/dict/$t.dict
  max_len=4096
  [[ $t == config ]] && dict=$PWD/work/config.dict && max_len=16384
  echo "fuzz: $t for $seconds s"
  start=$SECONDS
  # The grown corpus first: libFuzzer adds new inputs to the first directory only.
  status=0
  nice -n "$nice_level" cargo fuzz run --sanitizer "$sanitizer" "${parallel[@]}" "$t" \
    "$PWD/work/corpus/$t" "$PWD/corpus/$t" -- \
    -max_total_time="$seconds" -max_len="$max_len" -dict="$dict" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"work/$t.log" 2>&1 || status=$?
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)|DONE' "work/$t.log" || true
  if ((status != 0)); then
    tail -n 60 "work/$t.log" >&2
    echo "fuzz: $t FAILED (exit $status); log fuzz/work/$t.log; reproduce with:" \
      "RUSTC_BOOTSTRAP=1 cargo fuzz run $t fuzz/artifacts/$t/<file>" >&2
    exit 1
  fi
  echo "fuzz: $t ok in $((SECONDS - start)) s, corpus $(find "work/corpus/$t" -type f | wc -l) files"
done
echo "fuzz: OK"

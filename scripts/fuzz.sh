#!/usr/bin/env bash
# Runs every fuzz target for a while and prints executions and findings.
#
#   scripts/fuzz.sh                # every target, 600 s each
#   FUZZ_SECONDS=60 scripts/fuzz.sh frame path
#   FUZZ_JOBS=2 scripts/fuzz.sh    # two targets at a time
#
# Needs the nightly toolchain (libFuzzer's sanitizer flags); installs
# cargo-fuzz when it is missing. The normal suite stays on stable: the
# property tests in tests/pure/wire_props.rs and tests/pure/fuzz_regressions.rs replay
# what the fuzzers found. A finding is left in fuzz/artifacts/TARGET/; copy it
# into fuzz/regressions/TARGET/ once it is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-capnp.sh
scripts/ensure-protoc.sh
seconds="${FUZZ_SECONDS:-600}"
jobs="${FUZZ_JOBS:-1}"
all=(frame runner_messages host_messages apisix_runner_messages apisix_host_messages path config)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=("${all[@]}"); fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo +nightly install cargo-fuzz --locked
fi

# Seeds: one valid message of each kind, the shipped configurations, and
# every regression input found so far.
EXTPLUG_FUZZ_SEEDS="$PWD/fuzz/corpus" cargo test -q --test pure wire_props::write_fuzz_seeds \
  -- --ignored >/dev/null
mkdir -p fuzz/corpus/config fuzz/corpus/path
cp src/host/demo.json fuzz/corpus/config/seed-demo.json
for f in examples/*.json tests/fuzz/config/*.json; do
  [ -f "$f" ] && cp "$f" "fuzz/corpus/config/seed-$(basename "$f")"
done
printf '%s\n' /a/b '/public/../admin/x' '/%2e%2e/x' '//a///b/./c' '/a%2Fb' '/a;b/c' \
  '/%c0%ae' '/a%00b' '/%252e' '/a\b' | while read -r p; do
  printf '%s' "$p" > "fuzz/corpus/path/seed-$(printf '%s' "$p" | md5sum | cut -c1-8)"
done
for dir in fuzz/regressions/*/; do
  [ -d "$dir" ] || continue
  t=$(basename "$dir")
  mkdir -p "fuzz/corpus/$t"
  cp "$dir"* "fuzz/corpus/$t/" 2>/dev/null || true
done

(cd fuzz && cargo +nightly fuzz build -O)

run() {
  local t=$1 log="fuzz/logs/$1.log"
  mkdir -p fuzz/logs "fuzz/artifacts/$t"
  # -rss_limit_mb bounds memory; a crash or a limit hit is a finding.
  (cd fuzz && cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
      >"../$log" 2>&1) || true
  local execs findings
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
  findings=$(find "fuzz/artifacts/$t" -type f | wc -l)
  printf '%-16s %6ss %12s execs  %s findings\n' "$t" "$seconds" "$execs" "$findings"
}

echo "target           time        executions  findings"
pids=()
for t in "${targets[@]}"; do
  run "$t" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$jobs" ]; then
    wait "${pids[0]}"
    pids=("${pids[@]:1}")
  fi
done
wait

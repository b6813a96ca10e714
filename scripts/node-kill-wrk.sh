#!/usr/bin/env bash
# Measures what killing one of two upstream nodes costs under load
# (docs/reliability.md, "When an upstream node fails"): the release proxy,
# no plugins, in front of two `extplug echo` nodes with passive and active
# health checks, loaded with `wrk -t2 -c16` for SECONDS while node 2 is
# killed (SIGKILL) after a third of the run. RETRIES is the upstream's
# `retries` (0: none; "default": APISIX's, one per other node).
# Usage: scripts/node-kill-wrk.sh [retries] [seconds]
# Needs wrk; builds with `cargo build --release` first.
set -euo pipefail
retries=${1:-default}
seconds=${2:-15}
cd "$(dirname "$0")/.."
cargo build --quiet --locked --release --example demo-runner --bin extplug
target_dir=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="${target_dir:-target}/release"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port1=$(free_port)
port2=$(free_port)
"$bin/extplug" echo --listen "127.0.0.1:$port1" >"$work/echo1.out" &
pids+=($!)
"$bin/extplug" echo --listen "127.0.0.1:$port2" >"$work/echo2.out" &
victim=$!
pids+=($victim)
if [ "$retries" = default ]; then retries_field=""; else retries_field="\"retries\": $retries,"; fi
cat >"$work/config.json" <<EOF
{ "listen": "127.0.0.1:0",
  "ext-plugin": { "cmd": ["$bin/examples/demo-runner"], "standby": false },
  "routes": [ { "id": "r", "uri": "/*",
    "upstream": { "type": "roundrobin", $retries_field
      "nodes": { "127.0.0.1:$port1": 1, "127.0.0.1:$port2": 1 },
      "checks": { "active": { "http_path": "/", "healthy": { "interval": 1 },
                              "unhealthy": { "interval": 1 } },
                  "passive": { "unhealthy": { "tcp_failures": 2 } } } } } ] }
EOF
TMPDIR="$work" RUST_LOG=info "$bin/extplug" proxy --config "$work/config.json" \
  >"$work/proxy.out" 2>"$work/proxy.log" &
pids+=($!)
until grep -q "listening on" "$work/proxy.out"; do sleep 0.05; done
url=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/proxy.out")
until curl -s -o /dev/null "$url/ready"; do sleep 0.05; done

wrk -t2 -c16 -d"${seconds}s" "$url/k" >"$work/wrk.txt" &
wrk_pid=$!
sleep $((seconds / 3))
kill -KILL "$victim"
wait "$wrk_pid"
cat "$work/wrk.txt"
non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$work/wrk.txt")
echo "retries $retries: node 2 killed at $((seconds / 3)) s; ${non2xx:-0} non-2xx answers;" \
  "retries logged: $(grep -c 'retrying on another node' "$work/proxy.log" || true);" \
  "node marked unhealthy: $(grep -c 'upstream node unhealthy' "$work/proxy.log" || true)"

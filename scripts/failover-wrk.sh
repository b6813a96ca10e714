#!/usr/bin/env bash
# Measures what runner failures and upgrades cost under load
# (docs/reliability.md, "What each failure costs"; reloads: docs/operations.md,
# "Reload"): the release proxy with the example runner on a route with
# `rewrite` in ext-plugin-pre-req, in front of `extplug echo`,
# loaded with `wrk -t2 -c16 -d30s` while this script
#   kill:    SIGKILLs the active runner every 2 s, and measures for each kill
#            the time until a probe gets a 200 again (the gap);
#   upgrade: sends the proxy SIGUSR2 (upgrade the runner) every 3 s;
#   reload:  swaps the configuration file between two versions (the route's
#            chain differs) and sends the proxy SIGHUP, every second.
# Usage: scripts/failover-wrk.sh kill|upgrade|reload [seconds]
# Needs wrk and curl; builds with `cargo build --release` first.
set -euo pipefail
mode=${1:?kill, upgrade or reload}
seconds=${2:-30}
cd "$(dirname "$0")/.."
cargo build --quiet --release --example demo-runner --bin extplug
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
up_port=$(free_port)
"$bin/extplug" echo --listen "127.0.0.1:$up_port" >"$work/echo.out" &
pids+=($!)
cat >"$work/config.json" <<EOF
{ "listen": "127.0.0.1:0",
  "ext-plugin": { "cmd": ["$bin/examples/demo-runner"] },
  "routes": [ { "id": "r", "uri": "/*",
    "upstream": { "type": "roundrobin", "nodes": { "127.0.0.1:$up_port": 1 } },
    "plugins": { "ext-plugin-pre-req": { "conf": [
      { "name": "rewrite", "value": "{\"headers\":{\"x-via\":\"runner\"}}" } ] } } } ] }
EOF
sed 's/x-via\\":\\"runner/x-via\\":\\"reloaded/' "$work/config.json" >"$work/config-b.json"
cp "$work/config.json" "$work/config-a.json"
TMPDIR="$work" RUST_LOG=info "$bin/extplug" proxy --config "$work/config.json" \
  >"$work/proxy.out" 2>"$work/proxy.log" &
proxy=$!
pids+=($proxy)
until grep -q "listening on" "$work/proxy.out"; do sleep 0.05; done
until grep -q "runner standby ready" "$work/proxy.log"; do sleep 0.05; done
url=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/proxy.out")

# The active runner: the pid of the last "runner ready" line.
active() { grep "runner ready" "$work/proxy.log" | tail -1 | sed 's/.*pid=\([0-9]*\).*/\1/'; }

wrk -t2 -c16 -d"${seconds}s" "$url/k" >"$work/wrk.txt" &
wrk_pid=$!
sleep 1
events=0
case "$mode" in
  kill)
    while kill -0 "$wrk_pid" 2>/dev/null && [ $((events * 2 + 3)) -lt "$seconds" ]; do
      victim=$(active)
      kill -KILL "$victim"
      start=$(date +%s%N)
      tries=1
      until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/probe")" = 200 ]; do tries=$((tries + 1)); done
      echo "kill $((events + 1)): runner $victim, first 200 after $(( ($(date +%s%N) - start) / 1000000 )) ms ($tries probes)"
      events=$((events + 1))
      sleep 2
    done ;;
  upgrade)
    while kill -0 "$wrk_pid" 2>/dev/null && [ $((events * 3 + 4)) -lt "$seconds" ]; do
      kill -USR2 "$proxy"
      events=$((events + 1))
      sleep 3
    done ;;
  reload)
    while kill -0 "$wrk_pid" 2>/dev/null && [ $((events + 3)) -lt "$seconds" ]; do
      if [ $((events % 2)) = 0 ]; then next=b; else next=a; fi
      cp "$work/config-$next.json" "$work/config.json"
      kill -HUP "$proxy"
      events=$((events + 1))
      sleep 1
    done ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
wait "$wrk_pid"
cat "$work/wrk.txt"
non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$work/wrk.txt")
echo "$mode: $events events, ${non2xx:-0} non-2xx answers"
echo "promotions: $(grep -c 'its standby takes over' "$work/proxy.log" || true)," \
  "upgrades: $(grep -c 'runner upgraded' "$work/proxy.log" || true)," \
  "reloads: $(grep -c 'configuration reloaded' "$work/proxy.log" || true)," \
  "refused reloads: $(grep -c 'reload refused' "$work/proxy.log" || true)"

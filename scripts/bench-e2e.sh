#!/usr/bin/env bash
# End-to-end benchmark, measured as a user would (docs/performance.md):
# an external load generator (wrk) against
#   - nginx as a reverse proxy,
#   - `extplug proxy` with the example runner, on four routes:
#       /plain    no plugins,
#       /rewrite  `rewrite` in ext-plugin-pre-req, setting one header,
#       /say      `say` (the runner answers; no upstream),
#       /body     `body-size` (its chain needs the request body: the proxy
#                 reads it whole and sends it with the call),
#       /rewrite-a6  `rewrite` as on /rewrite, on a second demo runner
#                 reached over APISIX's wire (`"protocol": "apisix"`),
# all in front of the same nginx upstream answering a 2-byte body. Rounds are
# interleaved (every target once per round) and the medians are reported, with
# the ratios and the CPU time and context switches per request of each server
# (from /proc); then the same at many clients, with the resident memory of the
# proxy and its runner at the end (and over a longer run with SOAK); request
# bodies on /body against the same body through /plain; and last the runner
# bench's floor, for the arithmetic of the best possible plugin ratio.
# With TLS=1 (the default), HTTPS and HTTP/2 rounds too, each against nginx
# with the same certificate and upstream: wrk over TLS with keep-alive, wrk
# with a new TLS connection per request (`Connection: close`: handshakes),
# h2load over TLS (ALPN h2); and the memory an idle TLS connection holds.
#
# Usage: scripts/bench-e2e.sh          (prints markdown tables on stdout;
#                                       progress and raw rounds on stderr)
# Settings (environment):
#   ROUNDS=3        rounds per target (medians of these)
#   DURATION=4      seconds per wrk run
#   CONNECTIONS=16  wrk connections of the main table and the body rounds
#   MANY=256        wrk connections of the many-clients table
#   THREADS=2       wrk threads
#   BODIES="1024 65536 1048576"   request body sizes (bytes) for /body
#   SOAK=0          seconds of a flatness check at MANY clients on
#                   /rewrite after the MANY rounds, sampling the resident memory every SOAK_EVERY=10 s
#   RUNNER_BENCH=1  also `extplug bench runner` at CONNECTIONS (the hop's floor,
#                   for the arithmetic of the best possible plugin ratio); 0: not
#   NGINX_WORKERS=auto            worker_processes of both nginx instances
#   RUNNER_THREADS=  the demo runner's threads (DEMO_RUNNER_THREADS; empty:
#                   its default, one per core); the proxy's are EXTPLUG_THREADS
#   KEEP=1          keep the temporary directory (configurations, logs, wrk output)
#   PLAIN=1         the clear-text groups above; 0: only the TLS ones
#   TLS=1           the HTTPS and HTTP/2 rounds; 0: not
#   H2_STREAMS=10   h2load's streams per connection (-m); its connections: CONNECTIONS
#   IDLE=1000       idle TLS connections opened to measure their memory
# Installs wrk, nginx and h2load (nghttp2-client) with apt-get when they are missing; builds the release
# binaries (`cargo build --release`). Every process it starts is stopped, and
# its temporary directory removed, when it exits.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
CONNECTIONS=${CONNECTIONS:-16}
MANY=${MANY:-256}
THREADS=${THREADS:-2}
BODIES=${BODIES:-"1024 65536 1048576"}
SOAK=${SOAK:-0}
RUNNER_BENCH=${RUNNER_BENCH:-1}
SOAK_EVERY=${SOAK_EVERY:-10}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
PLAIN=${PLAIN:-1}
TLS=${TLS:-1}
H2_STREAMS=${H2_STREAMS:-10}
IDLE=${IDLE:-1000}

for v in ROUNDS DURATION CONNECTIONS MANY THREADS SOAK SOAK_EVERY H2_STREAMS IDLE; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || { [ "$v" != SOAK ] && [ "${!v}" -eq 0 ]; }; then
    echo "bench-e2e: $v=${!v} is not a positive whole number" >&2
    exit 2
  fi
done
for size in $BODIES; do
  [[ $size =~ ^[0-9]+$ ]] || { echo "bench-e2e: BODIES: $size is not a size in bytes" >&2; exit 2; }
done

log() { echo "bench-e2e: $*" >&2; }

# --- tools ---------------------------------------------------------------
cd "$(dirname "$0")/.."
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
scripts/ensure-debian.sh wrk=wrk "$NGINX=nginx" curl=curl capnp=capnproto protoc=protobuf-compiler \
  openssl=openssl python3=python3
[ "$TLS" = 0 ] || scripts/ensure-debian.sh h2load=nghttp2-client
NGINX=$(command -v nginx || echo "$NGINX")

log "building (cargo build --release)"
cargo build --quiet --release --example demo-runner --bin extplug
target_dir=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="${target_dir:-target}/release"

# --- processes and clean-up ---------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-e2e.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Many clients need many descriptors (wrk, nginx and the proxy alike).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
    while :; do
      p=$((20000 + RANDOM % 40000))
      ss -Htln "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
    done
}
wait_http() { # url: until it answers (any status), 20 s at most
  for _ in $(seq 400); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.05
  done
  log "$1 never answered"
  exit 1
}

# --- nginx: the upstream, and the reverse proxy to compare with -------------------
up_port=$(free_port)
ngx_port=$(free_port)
ngx_tls_port=$(free_port)
ext_tls_port=$(free_port)
# The TLS rounds' certificate, one for both servers: ECDSA P-256, made now.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench.example -addext subjectAltName=DNS:bench.example \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
user_line=
[ "$(id -u)" = 0 ] && user_line="user root;" # the workers use $work
nginx_conf() { # name, server block
  cat >"$work/$1.conf" <<EOF
$user_line
worker_processes $NGINX_WORKERS;
pid $work/$1.pid;
error_log $work/$1.err warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/$1-body;
  proxy_temp_path $work/$1-proxy;
  fastcgi_temp_path $work/$1-fastcgi;
  uwsgi_temp_path $work/$1-uwsgi;
  scgi_temp_path $work/$1-scgi;
  client_max_body_size 0;
  keepalive_requests 1000000;
  $2
}
EOF
}
# The upstream answers "ok"; it echoes the two headers the plugins set, so
# that the script can check once that each chain ran.
nginx_conf upstream "server {
    listen 127.0.0.1:$up_port;
    location / {
      add_header x-bench \$http_x_bench;
      add_header x-body-size \$http_x_body_size;
      return 200 ok;
    }
  }"
nginx_conf proxy "upstream up { server 127.0.0.1:$up_port; keepalive 256; }
  server {
    listen 127.0.0.1:$ngx_port;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }
  # HTTPS: TLS 1.2 and 1.3 as extplug, HTTP/2 by ALPN, no session
  # tickets (the clients here resume nothing either way).
  server {
    listen 127.0.0.1:$ngx_tls_port ssl http2;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
"$NGINX" -e "$work/upstream.err" -p "$work" -c "$work/upstream.conf" -g 'daemon off;' &
up_master=$!
pids+=("$up_master")
"$NGINX" -e "$work/proxy.err" -p "$work" -c "$work/proxy.conf" -g 'daemon off;' &
ngx_master=$!
pids+=("$ngx_master")
wait_http "http://127.0.0.1:$up_port/"
wait_http "http://127.0.0.1:$ngx_port/"

# --- extplug --------------------------------------------------------------------
chain() { # plugin name, its JSON conf (as JSON text)[, runner]
  printf '"plugins": { "ext-plugin-pre-req": { "runner": "%s", "conf": [ { "name": "%s", "value": %s } ] } }' "${3:-default}" "$1" "$2"
}
runner_env=""
if [ -n "${RUNNER_THREADS:-}" ]; then
  runner_env=", \"env\": { \"DEMO_RUNNER_THREADS\": \"$RUNNER_THREADS\" }"
fi
upstream_json="\"upstream\": { \"nodes\": { \"127.0.0.1:$up_port\": 1 } }"
json_text() { python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$1"; }
cat >"$work/extplug.json" <<EOF
{
  "listen": "127.0.0.1:0",
  "tls": { "listen": "127.0.0.1:$ext_tls_port", "fallback_sni": "bench.example" },
  "ssls": [ { "id": "bench", "snis": ["bench.example"],
              "cert": $(json_text "$work/cert.pem"), "key": $(json_text "$work/key.pem") } ],
  "ext-plugin": { "cmd": ["$bin/examples/demo-runner"]$runner_env },
  "runners": { "a6": { "cmd": ["$bin/examples/demo-runner"], "protocol": "apisix"$runner_env } },
  "routes": [
    { "id": "plain", "uri": "/plain", $upstream_json },
    { "id": "rewrite", "uri": "/rewrite", $upstream_json,
      $(chain rewrite '"{\"headers\":{\"x-bench\":\"1\"}}"') },
    { "id": "say", "uri": "/say", $upstream_json,
      $(chain say '"{\"body\":\"ok\"}"') },
    { "id": "body", "uri": "/body", $upstream_json,
      $(chain body-size '"{}"') },
    { "id": "rewrite-a6", "uri": "/rewrite-a6", $upstream_json,
      $(chain rewrite '"{\"headers\":{\"x-bench\":\"1\"}}"' a6) }
  ]
}
EOF
TMPDIR="$work" RUST_LOG=info "$bin/extplug" proxy --config "$work/extplug.json" \
  >"$work/extplug.out" 2>"$work/extplug.log" &
proxy_pid=$!
pids+=("$proxy_pid")
for _ in $(seq 400); do
  grep -q "listening on" "$work/extplug.out" && break
  kill -0 "$proxy_pid" 2>/dev/null || { cat "$work/extplug.log" >&2; log "extplug proxy exited"; exit 1; }
  sleep 0.05
done
ext=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/extplug.out")
[ -n "$ext" ] || { cat "$work/extplug.log" >&2; log "extplug proxy never listened"; exit 1; }
ngx="http://127.0.0.1:$ngx_port"

# The active runner: the pid of the last "runner ready" line of runner $1
# (default: `default`; a standby, if any, is another process).
runner_pid() { grep "runner ready.*runner=${1:-default} " "$work/extplug.log" | tail -1 | sed 's/.*pid=\([0-9]*\).*/\1/'; }

# Each chain ran once, as configured (else the figures would mean nothing).
check() { # what, expected, command...
  local got
  got=$("${@:3}")
  [ "$got" = "$2" ] || { log "check failed: $1: expected '$2', got '$got'"; cat "$work/extplug.log" >&2; exit 1; }
}
hdr() { curl -s -D - -o /dev/null "${@:2}" | tr -d '\r' | sed -n "s/^$1: //Ip"; }
check "nginx proxy" ok curl -s "$ngx/"
ngx_tls="https://127.0.0.1:$ngx_tls_port"
ext_tls="https://127.0.0.1:$ext_tls_port"
if [ "$TLS" != 0 ]; then
  check "nginx over HTTP/2" ok2 curl -sk --http2 -w '%{http_version}' "$ngx_tls/"
  check "extplug over HTTP/2" ok2 curl -sk --http2 -w '%{http_version}' "$ext_tls/plain"
  check "extplug over TLS, by SNI" ok curl -sk --resolve "bench.example:$ext_tls_port:127.0.0.1" "https://bench.example:$ext_tls_port/plain"
fi
check "/plain" ok curl -s "$ext/plain"
check "/rewrite sets x-bench" 1 hdr x-bench "$ext/rewrite"
check "/rewrite-a6 sets x-bench" 1 hdr x-bench "$ext/rewrite-a6"
check "/say answers" ok curl -s "$ext/say"
head -c 1000 /dev/zero >"$work/check.body"
check "/body reads the body" 1000 hdr x-body-size --data-binary @"$work/check.body" "$ext/body"
rm -f "$work/check.body"

# --- wrk ----------------------------------------------------------------------------
for size in $BODIES; do
  cat >"$work/post-$size.lua" <<EOF
wrk.method = "POST"
wrk.body = string.rep("x", $size)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
done

# CPU time (user + system, in 1/100 s) of processes, from /proc/PID/stat.
ticks() { # pids...
  local p t=0 v
  for p in "$@"; do
    v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || v=
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
# The servers' CPU time: extplug proxy, its active runners (both: only the
# round's route's runner works), nginx as a proxy, the nginx upstream
# (masters and workers).
servers_ticks() {
  # shellcheck disable=SC2046 # one word per pid
  echo "$(ticks "$proxy_pid") $(ticks "$(runner_pid)" "$(runner_pid a6)")" \
    "$(ticks "$ngx_master" $(pgrep -P "$ngx_master"))" \
    "$(ticks "$up_master" $(pgrep -P "$up_master"))"
}

# Context switches (voluntary and not) of all the threads of a process.
switches() { # pid
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches:/ {n += $2} END {print n + 0}'
}
counts() { # the servers' CPU ticks, then the proxy's and the runners' switches
  echo "$(servers_ticks) $(switches "$proxy_pid") $(($(switches "$(runner_pid)") + $(switches "$(runner_pid a6)")))"
}

# run_h2load connections seconds url streams: HTTP/2 over TLS, prints as run_wrk
# (p99 from h2load's per-request log: its third column, microseconds).
run_h2load() {
  local out="$work/h2load.txt" lat="$work/h2load.log" p99
  rm -f "$lat"
  h2load -c"$1" -m"$4" -t"$THREADS" -D"$2" --log-file="$lat" "$3" >"$out" 2>&1 || {
    cat "$out" >&2
    log "h2load failed on $3"
    exit 1
  }
  p99=$(awk '{print $3}' "$lat" | sort -n |
    awk '{a[NR] = $1} END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f", NR ? a[i] / 1000 : 0 }')
  awk -v p99="$p99" '
    /^finished in/ { gsub(/,/, ""); rps = $4 }
    /^requests:/ { gsub(/,/, ""); n = $2; err += $2 - $8 }
    /^status codes:/ { gsub(/,/, ""); err += $7 + $9 }
    END { printf "%.0f %s %d %d\n", rps, p99, err, n }' "$out"
}

# run_wrk connections seconds url [lua | h2:STREAMS]: prints "req/s p99_ms
# errors requests"; `h2:STREAMS` runs h2load instead.
run_wrk() {
  local out="$work/wrk.txt" script=()
  if [[ ${4:-} == h2:* ]]; then
    run_h2load "$1" "$2" "$3" "${4#h2:}"
    return
  fi
  [ -n "${4:-}" ] && script=(-s "$4")
  wrk -t"$THREADS" -c"$1" -d"${2}s" --latency "${script[@]}" "$3" >"$out" 2>&1 || {
    cat "$out" >&2
    log "wrk failed on $3"
    exit 1
  }
  awk '
    function ms(v) {
      if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
      if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
      if (v ~ /m$/) return substr(v, 1, length(v) - 1) * 60000
      if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
      return v + 0
    }
    /Requests\/sec:/ { rps = $2 }
    /^ +99%/ { p99 = ms($2) }
    /Non-2xx or 3xx responses:/ { err += $NF }
    /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
    / requests in / { n = $1 }
    END { printf "%.0f %.3f %d %d\n", rps, p99, err, n }' "$out"
}

# A group: interleaved rounds of named targets; results in $work/res/GROUP/NAME,
# one line per round: req/s, p99 (ms), errors, requests, then the CPU ticks
# the proxy, the runner, nginx as a proxy and the upstream spent in the round,
# and the context switches of the proxy and of the runner.
# targets are "name|connections|url|lua" entries.
run_group() { # group, targets...
  local group=$1 t name c url lua r line before after
  shift
  mkdir -p "$work/res/$group"
  for t in "$@"; do # warm-up, not counted
    IFS='|' read -r name c url lua <<<"$t"
    run_wrk "$c" 1 "$url" "$lua" >/dev/null
  done
  for r in $(seq "$ROUNDS"); do
    for t in "$@"; do
      IFS='|' read -r name c url lua <<<"$t"
      before=$(counts)
      line=$(run_wrk "$c" "$DURATION" "$url" "$lua")
      after=$(counts)
      echo "$line $(paste -d ' ' <(tr ' ' '\n' <<<"$after") <(tr ' ' '\n' <<<"$before") |
        awk '{printf "%d ", $1 - $2}')" >>"$work/res/$group/$name"
      log "$group round $r: $name: $(awk '{printf "%s req/s, p99 %s ms, %s errors", $1, $2, $3}' <<<"$line")"
    done
  done
}

# Statistics over a result file's column (1: req/s, 2: p99 ms, 3: errors,
# 4: requests, 5-8: CPU ticks, 9-10: context switches).
COLUMNS_PER_ROUND=10
median() { # file column
  awk -v c="$2" '{print $c}' "$1" | sort -g |
    awk '{a[NR] = $1} END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
errors() { awk '{e += $3} END {print e + 0}' "$1"; }
# The median of the per-round ratios b/a of one column (rounds interleave,
# so each round's pair saw the same machine).
ratio() { # file_b file_a column
  paste -d ' ' "$1" "$2" | awk -v c="$3" -v n="$COLUMNS_PER_ROUND" '{print $c / $(c + n)}' | sort -g |
    awk '{a[NR] = $1} END { if (NR % 2) printf "%.2f\n", a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
fmt_rps() { # 43020.4 -> 43,020
  awk -v v="$1" 'BEGIN { s = sprintf("%.0f", v); while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s); print s }'
}
fmt_ms() { awk -v v="$1" 'BEGIN { if (v < 10) printf "%.2f ms", v; else printf "%.1f ms", v }'; }
row() { # label group name [ratio label against]
  local f="$work/res/$2/$3" rps p99 err note=
  rps=$(median "$f" 1)
  p99=$(median "$f" 2)
  err=$(errors "$f")
  [ "$err" = 0 ] || note=" ($err errors)"
  if [ -n "${4:-}" ]; then
    local a="$work/res/$2/$5"
    echo "| $1 | $(fmt_rps "$rps")$note | $(fmt_ms "$p99") | $(ratio "$f" "$a" 1) of $4 | $(ratio "$f" "$a" 2) x |"
  else
    echo "| $1 | $(fmt_rps "$rps")$note | $(fmt_ms "$p99") | | |"
  fi
}
# CPU microseconds per request, over all rounds: each server, the servers
# together, and the whole machine (cores / req/s: wrk and the kernel too).
cpu_row() { # label group name
  awk -v label="$1" -v cores="$(nproc)" -v secs="$DURATION" '
    { n += $4; for (i = 5; i <= 10; i++) t[i] += $i }
    END {
      if (n == 0) n = 1
      for (i = 5; i <= 8; i++) { us[i] = t[i] * 10000 / n; all += us[i] }
      printf "| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f / %.2f |\n", label, us[5], us[6], us[7], us[8], all, cores * secs * NR * 1e6 / n, t[9] / n, t[10] / n
    }' "$work/res/$2/$3"
}
servers_us() { # group name: the servers' CPU microseconds per request
  awk '{ n += $4; t += $5 + $6 + $7 + $8 } END { printf "%.1f\n", n ? t * 10000 / n : 0 }' "$work/res/$1/$2"
}
cpu_table() { # group
  echo "| CPU per request (µs) | extplug proxy | runner | nginx proxy | upstream | servers | machine (cores / req/s) | context switches per request, proxy / runner |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  cpu_row "nginx as reverse proxy" "$1" nginx
  cpu_row "extplug, no plugins" "$1" plain
  cpu_row "extplug, \`rewrite\`" "$1" rewrite
  cpu_row "extplug, \`rewrite\`, APISIX's wire" "$1" rewrite-a6
  cpu_row "extplug, \`say\`" "$1" say
}
mem() { # pid: "VmRSS / VmHWM" in MiB
  awk '/^VmRSS:/ {r = $2} /^VmHWM:/ {h = $2} END { printf "%.1f MiB / %.1f MiB", r / 1024, h / 1024 }' "/proc/$1/status"
}

main_targets() { # connections
  echo "nginx|$1|$ngx/|" "plain|$1|$ext/plain|" "rewrite|$1|$ext/rewrite|" "say|$1|$ext/say|" \
    "rewrite-a6|$1|$ext/rewrite-a6|"
}
# shellcheck disable=SC2016 # the backticks are markdown
main_table() { # group
  echo "| | req/s | p99 | ratio (req/s) | p99 ratio |"
  echo "|---|---:|---:|---|---|"
  row "nginx $("$NGINX" -v 2>&1 | sed 's|.*nginx/||') as reverse proxy" "$1" nginx
  row '`extplug proxy`, route without plugins' "$1" plain nginx nginx
  row 'same, `rewrite` in `ext-plugin-pre-req` (one header set)' "$1" rewrite "no plugin" plain
  row 'same, `say` (stop, no upstream)' "$1" say "no plugin" plain
  row 'same, `rewrite` on a runner reached over APISIX'"'"'s wire' "$1" rewrite-a6 "Cap'n Proto's" rewrite
}

runner_rows=
if [ "$PLAIN" != 0 ]; then
# shellcheck disable=SC2046 # one word per target
run_group main $(main_targets "$CONNECTIONS")
# shellcheck disable=SC2046
run_group many $(main_targets "$MANY")
runner=$(runner_pid)
proxy_mem=$(mem "$proxy_pid")
runner_mem=$( [ -n "$runner" ] && mem "$runner" || echo "unknown")
soak_rows=()
if [ "$SOAK" -gt 0 ]; then
  log "soak: $SOAK s at $MANY clients on /rewrite"
  wrk -t"$THREADS" -c"$MANY" -d"${SOAK}s" "$ext/rewrite" >"$work/soak.txt" 2>&1 &
  soak_wrk=$!
  pids+=("$soak_wrk")
  t=0
  while kill -0 "$soak_wrk" 2>/dev/null && [ "$t" -le "$SOAK" ]; do
    soak_rows+=("| $t s | $(mem "$proxy_pid") | $(mem "$(runner_pid)") |")
    sleep "$SOAK_EVERY"
    t=$((t + SOAK_EVERY))
  done
  wait "$soak_wrk" || true
  soak_rows+=("| end | $(mem "$proxy_pid") | $(mem "$(runner_pid)") |")
  soak_rps=$(fmt_rps "$(sed -n 's/Requests\/sec: *//p' "$work/soak.txt")")
fi

body_targets=()
[ "$PLAIN" = 0 ] || for size in $BODIES; do
  body_targets+=("plain-$size|$CONNECTIONS|$ext/plain|$work/post-$size.lua" "body-$size|$CONNECTIONS|$ext/body|$work/post-$size.lua")
done
[ ${#body_targets[@]} -eq 0 ] || run_group bodies "${body_targets[@]}"

runner_rows=
if [ "$RUNNER_BENCH" != 0 ]; then
  log "runner bench: extplug bench runner --connections $CONNECTIONS"
  "$bin/extplug" bench runner --runner "$bin/examples/demo-runner" --connections "$CONNECTIONS" \
    --headers none --bodies none --rounds "$ROUNDS" --seconds 2 >"$work/runner-bench.txt" 2>&1 || {
    cat "$work/runner-bench.txt" >&2
    log "extplug bench runner failed"
    exit 1
  }
  grep '^  ' "$work/runner-bench.txt" >&2 || true
  runner_rows=$(grep '^|' "$work/runner-bench.txt")
fi
fi

# --- HTTPS and HTTP/2 ----------------------------------------------------------------
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
nginx_rss_kib() { # the nginx proxy's workers together
  local p t=0
  for p in $(pgrep -P "$ngx_master"); do t=$((t + $(rss_kib "$p"))); done
  echo "$t"
}
# idle_kib port rss-command: KiB per idle TLS connection: IDLE connections
# opened (handshake done, nothing sent), the server's resident memory
# before and after.
idle_kib() {
  local before after stop="$work/idle.stop" out="$work/idle.out"
  rm -f "$stop" "$out"
  before=$($2)
  python3 - "$1" "$IDLE" "$stop" >"$out" 2>&1 <<'PY' &
import os, socket, ssl, sys, time
port, n, stop = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conns = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="bench.example") for _ in range(n)]
print("open", flush=True)
while not os.path.exists(stop):
    time.sleep(0.05)
PY
  local py=$!
  for _ in $(seq 600); do
    grep -q open "$out" 2>/dev/null && break
    kill -0 "$py" 2>/dev/null || { cat "$out" >&2; log "idle connections failed"; exit 1; }
    sleep 0.05
  done
  sleep 1
  after=$($2)
  touch "$stop"
  wait "$py" || true
  awk -v a="$after" -v b="$before" -v n="$IDLE" 'BEGIN { printf "%.1f", (a - b) / n }'
}
if [ "$TLS" != 0 ]; then
  printf 'wrk.headers["Connection"] = "close"\n' >"$work/close.lua"
  run_group tls \
    "nginx-tls|$CONNECTIONS|$ngx_tls/|" "ext-tls|$CONNECTIONS|$ext_tls/plain|" \
    "nginx-hs|$CONNECTIONS|$ngx_tls/|$work/close.lua" "ext-hs|$CONNECTIONS|$ext_tls/plain|$work/close.lua" \
    "nginx-h2|$CONNECTIONS|$ngx_tls/|h2:$H2_STREAMS" "ext-h2|$CONNECTIONS|$ext_tls/plain|h2:$H2_STREAMS"
  log "memory of $IDLE idle TLS connections"
  ext_idle=$(idle_kib "$ext_tls_port" "rss_kib $proxy_pid")
  ngx_idle=$(idle_kib "$ngx_tls_port" nginx_rss_kib)
fi

# --- the report ------------------------------------------------------------------------
# shellcheck disable=SC2016 # the backticks are markdown
tls_report() {
  cat <<EOF
HTTPS and HTTP/2 (\`-c$CONNECTIONS\`, the same certificate for both, ECDSA P-256; TLS 1.3 as the clients
negotiate it; extplug's route without plugins; nginx's TLS proxy in front of the same upstream):

| | req/s | p99 | ratio (req/s) | p99 ratio |
|---|---:|---:|---|---|
$(row "nginx, HTTPS keep-alive (wrk)" tls nginx-tls)
$(row '`extplug proxy`, HTTPS keep-alive (wrk)' tls ext-tls nginx nginx-tls)
$(row "nginx, a new TLS connection per request (wrk, \`Connection: close\`)" tls nginx-hs)
$(row '`extplug proxy`, the same' tls ext-hs nginx nginx-hs)
$(row "nginx, HTTP/2 over TLS (h2load, $H2_STREAMS streams per connection)" tls nginx-h2)
$(row '`extplug proxy`, the same' tls ext-h2 nginx nginx-h2)

$(cpu_row_tls)

Memory per idle TLS connection ($IDLE connections opened, handshake done, nothing sent; resident
memory after minus before): \`extplug proxy\` $ext_idle KiB, nginx's workers $ngx_idle KiB.

EOF
}
cpu_row_tls() {
  echo "| CPU per request (µs) | extplug proxy | runner | nginx proxy | upstream | servers | machine (cores / req/s) | context switches per request, proxy / runner |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  cpu_row "nginx, HTTPS keep-alive" tls nginx-tls
  cpu_row "extplug, HTTPS keep-alive" tls ext-tls
  cpu_row "nginx, handshake per request" tls nginx-hs
  cpu_row "extplug, handshake per request" tls ext-hs
  cpu_row "nginx, HTTP/2" tls nginx-h2
  cpu_row "extplug, HTTP/2" tls ext-h2
}
human() { awk -v b="$1" 'BEGIN { if (b >= 1048576) printf "%g MiB", b / 1048576; else if (b >= 1024) printf "%g KiB", b / 1024; else printf "%d B", b }'; }
echo "### End to end ($(date -u +%Y-%m-%d), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
echo
[ "$TLS" = 0 ] || tls_report
if [ "$PLAIN" != 0 ]; then
cat <<EOF

\`scripts/bench-e2e.sh\`: \`wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency\`, rounds interleaved,
medians of $ROUNDS; nginx answering a 2-byte body as the upstream; every process on the same machine.
Ratios: the median of the per-round ratios.

$(main_table main)

$(cpu_table main)

At $MANY clients (\`-c$MANY\`):

$(main_table many)

$(cpu_table many)

Resident memory at the end of the $MANY-client rounds (VmRSS / VmHWM): proxy $proxy_mem,
runner $runner_mem.

EOF
fi
if [ "$PLAIN" != 0 ] && [ "$SOAK" -gt 0 ]; then
  echo "Flatness: $SOAK s at $MANY clients on \`/rewrite\` (${soak_rps:-?} req/s), resident memory (VmRSS / VmHWM):"
  echo
  echo "| time | proxy | runner |"
  echo "|---|---|---|"
  printf '%s\n' "${soak_rows[@]}"
  echo
fi
if [ "$PLAIN" != 0 ] && [ ${#body_targets[@]} -gt 0 ]; then
  echo "Request bodies (POST, \`-c$CONNECTIONS\`): \`/body\`'s chain (\`body-size\`) needs the body, so the proxy"
  echo "reads it whole and sends it with the call; \`/plain\` streams it to the upstream."
  echo
  echo "| body | no plugins req/s | p99 | body read by the plugin req/s | p99 | ratio (req/s) | p99 ratio |"
  echo "|---|---:|---:|---:|---:|---|---|"
  for size in $BODIES; do
    a="$work/res/bodies/plain-$size"
    b="$work/res/bodies/body-$size"
    echo "| $(human "$size") | $(fmt_rps "$(median "$a" 1)") | $(fmt_ms "$(median "$a" 2)") | $(fmt_rps "$(median "$b" 1)") | $(fmt_ms "$(median "$b" 2)") | $(ratio "$b" "$a" 1) | $(ratio "$b" "$a" 2) x |"
  done
  echo
fi
if [ -n "$runner_rows" ]; then
  floor=$(awk -F'|' 'NR == 3 {print $4 + 0}' <<<"$runner_rows")
  plain=$(median "$work/res/main/plain" 1)
  echo "The runner alone (\`extplug bench runner --connections $CONNECTIONS --headers none --bodies none\`):"
  echo
  echo "$runner_rows"
  echo
  echo "The arithmetic ($(nproc) cores, everything on them): a request without plugins costs"
  awk -v cores="$(nproc)" -v plain="$plain" -v floor="$floor" -v measured="$(ratio "$work/res/main/rewrite" "$work/res/main/plain" 1)" 'BEGIN {
    c = cores * 1e6 / plain; h = cores * 1e6 / floor
    printf "%d cores / %.0f req/s = %.1f µs of CPU in all; the bare socket round trip (the runner bench'"'"'s\n", cores, plain, c
    printf "floor) %d cores / %.0f calls/s = %.1f µs; so one sequential hop per request can at best reach\n", cores, floor, h
    printf "%.1f / (%.1f + %.1f) = %.2f of the route without plugins; measured with `rewrite`: %s.\n", c, c, h, c / (c + h), measured
  }'
  awk -v plain="$(servers_us main plain)" -v rewrite="$(servers_us main rewrite)" 'BEGIN {
    printf "By the servers'"'"' own CPU per request (less sensitive to other load on the machine, wrk not counted):\n"
    printf "no plugins %.1f µs, `rewrite` %.1f µs: %.2f.\n", plain, rewrite, rewrite ? plain / rewrite : 0
  }'
  echo
fi
total_err=$(cat "$work"/res/*/* | awk '{e += $3} END {print e + 0}')
if [ "$total_err" != 0 ]; then
  echo "**$total_err requests failed** (non-2xx answers or socket errors, counted in the rows above)."
fi

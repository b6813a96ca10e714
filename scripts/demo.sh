#!/usr/bin/env bash
# Starts the main job: the extplug proxy with the example runner, on the
# built-in demo configuration, in front of a built-in echo upstream.
# Extra arguments go to `extplug demo` (e.g. --listen 127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-capnp.sh
scripts/ensure-protoc.sh
cargo build --release --example demo-runner --bin extplug
# Cargo knows where it put the binaries (CARGO_TARGET_DIR, a config file...).
target_dir=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
exec "${target_dir:-target}/release/extplug" demo "$@"

#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the example plugins' tests, doc
# tests, and the integration tests that start the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-capnp.sh
scripts/ensure-protoc.sh
scripts/ensure-etcd.sh
scripts/ensure-python.sh
# The TLS tests check with curl (HTTP/2) and encrypt a key with openssl.
scripts/ensure-debian.sh curl=curl openssl=openssl
# The demo and the benchmarks run the release binaries: a release build that
# breaks must fail here, not on a user's first `scripts/demo.sh`.
cargo build --locked --release --example demo-runner --bin extplug
# The rustdoc is the plugin author's first page: no broken links.
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --workspace --quiet
cargo test --locked --workspace --all-targets
cargo test --locked --workspace --doc
# The plugin template is its own workspace (tests/e2e/template.rs builds and runs
# it): lint it as its author would, in the target dir that test uses.
cargo fmt --manifest-path examples/plugin-template/Cargo.toml --check
cargo clippy --manifest-path examples/plugin-template/Cargo.toml --quiet --all-targets \
    --target-dir "${CARGO_TARGET_DIR:-target}/plugin-template" -- -D warnings

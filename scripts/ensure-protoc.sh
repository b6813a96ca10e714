#!/usr/bin/env bash
# Installs the protobuf compiler (`protoc`) when it is missing: the
# etcd-client crate's build (the routes' etcd source) compiles etcd's
# protobuf files with it.
set -euo pipefail
if command -v protoc >/dev/null 2>&1; then
  exit 0
fi
echo "protoc not found: installing Debian's protobuf-compiler package" >&2
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq protobuf-compiler >/dev/null
else
  echo "no apt-get here: install the protobuf compiler (package protobuf-compiler / protoc) yourself" >&2
  exit 1
fi

#!/usr/bin/env bash
# Installs etcd and etcdctl (Debian's etcd-server and etcd-client) when
# missing: the tests in tests/etcd.rs start a real etcd and write to it as
# an operator would. (`protoc`, for the build: scripts/ensure-protoc.sh.)
set -euo pipefail
missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "missing ${missing[*]}: installing Debian's packages" >&2
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "no apt-get here: install etcd and etcdctl yourself (packages ${missing[*]})" >&2
  exit 1
fi

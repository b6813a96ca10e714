#!/usr/bin/env bash
# Installs etcd and etcdctl (Debian's etcd-server and etcd-client) when
# missing: the tests in tests/e2e/etcd.rs start a real etcd and write to it as
# an operator would. (`protoc`, for the build: scripts/ensure-protoc.sh.)
exec "$(dirname "$0")/ensure-debian.sh" etcd=etcd-server etcdctl=etcd-client

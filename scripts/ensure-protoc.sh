#!/usr/bin/env bash
# Installs the protobuf compiler (`protoc`) when it is missing: the
# etcd-client crate's build (the routes' etcd source) compiles etcd's
# protobuf files with it.
exec "$(dirname "$0")/ensure-debian.sh" protoc=protobuf-compiler

#!/usr/bin/env bash
# Installs the Cap'n Proto schema compiler (`capnp`) when it is missing.
# extplug-wire's build.rs (wire/build.rs) needs it to compile wire/schema/ext_plugin.capnp.
set -euo pipefail
if command -v capnp >/dev/null 2>&1; then
  exit 0
fi
echo "capnp not found: installing Debian's capnproto package" >&2
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq capnproto >/dev/null
else
  echo "no apt-get here: install the Cap'n Proto tools (package capnproto / capnp) yourself" >&2
  exit 1
fi

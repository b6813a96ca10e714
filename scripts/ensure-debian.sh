#!/usr/bin/env bash
# Installs Debian packages for the commands that are missing.
# Usage: scripts/ensure-debian.sh COMMAND=PACKAGE...
#   e.g. scripts/ensure-debian.sh capnp=capnproto
# A COMMAND that is a path is checked as an executable file (nginx lives in
# /usr/sbin, not always on a user's PATH); `python3:MODULE` as a module
# python3 can import (e.g. python3:ensurepip=python3-venv); any other is
# looked up on PATH.
set -euo pipefail
missing=()
for pair in "$@"; do
  command=${pair%%=*}
  package=${pair#*=}
  if [[ $command == /* ]]; then
    [ -x "$command" ] || missing+=("$package")
  elif [[ $command == python3:* ]]; then
    python3 -c "import ${command#python3:}" >/dev/null 2>&1 || missing+=("$package")
  else
    command -v "$command" >/dev/null 2>&1 || missing+=("$package")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "missing commands: installing Debian's ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get here: install the packages ${missing[*]} (or their equivalents) yourself" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null

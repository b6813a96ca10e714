#!/usr/bin/env bash
# Installs python3 with its venv module (Debian's python3 and python3-venv)
# when they are missing. The tests that speak APISIX's wire run Python code
# written on APISIX's own classes (tests/fixtures/a6_client.py and
# a6_runner.py), in a virtual environment they fill with pip.
exec "$(dirname "$0")/ensure-debian.sh" python3=python3 python3:ensurepip=python3-venv python3:venv=python3-venv

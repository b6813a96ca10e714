#!/usr/bin/env bash
# Installs the Cap'n Proto schema compiler (`capnp`) when it is missing.
# extplug's build.rs needs it to compile schema/ext_plugin.capnp.
exec "$(dirname "$0")/ensure-debian.sh" capnp=capnproto

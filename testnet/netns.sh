#!/bin/sh
# Thin wrapper: build / check / remove the netns simulated internet (root). See docs/NAT.md.
#   sudo testnet/netns.sh check        # build, probe, tear down
#   sudo testnet/netns.sh up           # build and keep until Ctrl-C (prints the topology as JSON)
#   sudo testnet/netns.sh down [--all] # remove namespaces of crashed or detached runs
set -eu
PY="${PYTHON:-python3}"
[ -x "$(dirname "$0")/../.venv/bin/python" ] && PY="$(dirname "$0")/../.venv/bin/python"
exec "$PY" -m swarmlm.testnet.netns "$@"

#!/usr/bin/env bash
# System packages swarmlm needs: gcc + libgmp-dev (py-libp2p's fastecdsa builds from source),
# iproute2 + iptables (the netns NAT testnet), chromium (the health-page browser test).
# As root, missing ones are installed with apt-get; otherwise they are named and we go on
# (the tests that need them skip with a message saying why).
set -euo pipefail
need=()
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -e /usr/include/gmp.h ] || [ -e /usr/include/x86_64-linux-gnu/gmp.h ] || [ -e /usr/include/aarch64-linux-gnu/gmp.h ] || need+=(libgmp-dev)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "swarmlm: missing system packages: ${need[*]}" >&2
  echo "  install them with: sudo apt-get install ${need[*]}" >&2
  echo "  (gcc and libgmp-dev are required to build py-libp2p; the others only enable some tests)" >&2
  for p in "${need[@]}"; do
    case "$p" in gcc|libgmp-dev) exit 1;; esac
  done
fi

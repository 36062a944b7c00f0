#!/usr/bin/env bash
# Installs the Debian packages the tests use that a fresh machine may lack:
# iptables (palisade-agent's traffic capture is applied for real in a network
# namespace), iproute2 and util-linux (ip, unshare, nsenter). Does nothing when
# they are there.
set -euo pipefail
missing=()
for tool in iptables-restore:iptables ip:iproute2 unshare:util-linux nsenter:util-linux; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

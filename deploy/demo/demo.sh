#!/usr/bin/env bash
# hapbx demo (`make demo`), as root on a Debian machine: installs SIPp,
# iproute2 and nftables when missing, builds hapbx and the lab driver, and
# runs the network-namespace lab of deploy/lab: two hapbx proxies sharing
# the VIP 10.214.0.100 with a witness, two PBX nodes (SIPp playing Asterisk
# with an AMI server, each run by a `hapbx agent` in cold standby: DRBD
# stand-ins, a tmpfs mount; pass -cold=false for hot standby), 20 SIPp
# phones registering through the VIP and calls at a steady bounded rate.
# Then, one after another: kill the active PBX (a cold failover: pbx2's
# agent promotes, mounts, starts), kill the VIP holder, bring it back, cut
# the pair apart, restore everything.
# Prints ONE table. Everything (namespaces hlab-*, links, processes) is
# removed at the end, on failure and on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
  echo "demo: needs root (it creates network namespaces hlab-*): run sudo make demo" >&2
  exit 1
fi
need=()
command -v sipp >/dev/null || need+=(sip-tester)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
if ((${#need[@]})); then
  echo "demo: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
GO=${GO:-go}
BIN=${HAPBX_BIN:-bin/hapbx}
[ -x "$BIN" ] || CGO_ENABLED=0 $GO build -trimpath -o "$BIN" ./cmd/hapbx
$GO build -o bin/hapbx-demo ./deploy/demo
exec bin/hapbx-demo -bin "$BIN" -root . "$@"

#!/bin/bash
# Prints the netlink bytes `nft` sends for an nft command, as hex per sendmsg, inside a throwaway
# network namespace. Used to record the golden bytes in Tests/NetlinkTests (see the comments there).
# Usage: scripts/capture-nft.sh 'setup nft script' 'nft command to capture'
set -euo pipefail
ns=ptcap$$
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
if [ -n "$1" ]; then ip netns exec "$ns" nft -f - <<<"$1"; fi
ip netns exec "$ns" strace -qq -e trace=sendmsg -e write=all -s 0 nft $2 2>&1 | grep -E '^ \|' | cut -c10-58

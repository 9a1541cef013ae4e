#!/bin/bash
# Re-steer latency: one class moved to another path (one nf_tables batch, acked), N times, side by side with
# the nft CLI doing the same element replace (`nft -f` with delete + add) in the same run and namespace.
# Usage: sudo bench/resteer.sh [N] [CLI_N]   -> prints and writes bench/results/resteer.txt
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
cli=${2:-1000}
source scripts/swift-path.sh
release=$(scripts/build-release)   # the release build: numbers are measured on what users run
ns=ptresteer$$
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
for i in 1 2; do
  ip -n "$ns" link add pbench$i type veth peer name pbench${i}p
  ip -n "$ns" link set pbench$i up
  ip -n "$ns" link set pbench${i}p up
done
{
  echo "# bench/resteer.sh $n $cli   ($(date -u '+%Y-%m-%d %H:%M:%S') UTC, kernel $(uname -r), $(nft --version), $(nproc) cores)"
  echo "# command: ip netns exec $ns "$release/patronus-bench" resteer $n $cli"
  ip netns exec "$ns" "$release/patronus-bench" resteer "$n" "$cli"
  echo "# floor of one element replace in a bare hash map, same namespace: patronus-bench rawhash $n"
  ip netns exec "$ns" "$release/patronus-bench" rawhash "$n"
} | tee bench/results/resteer.txt

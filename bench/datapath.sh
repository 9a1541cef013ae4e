#!/bin/bash
# Datapath cost: UDP packets/s forwarded through a router namespace with no table, with our table and 10
# policies, and with our table and 10,000 policy entries (match elements in the classification sets).
#   sender (iperf3 -u) --veth--> router --pbench1--> sink (iperf3 -s, 10.20.0.5)
# The rate is what the sink received (iperf3's receiver report), median of REPEATS runs of SECONDS each.
# Usage: sudo bench/datapath.sh [SECONDS] [REPEATS]  -> prints and writes bench/results/datapath.txt
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
reps=${2:-3}
swift build -c release --product patronus-bench >/dev/null
s=ptdps$$; r=ptdpr$$; k=ptdpk$$
cleanup() { for n in $s $r $k; do ip netns pids $n 2>/dev/null | xargs -r kill -9 2>/dev/null || true; ip netns del $n 2>/dev/null || true; done; }
trap cleanup EXIT
for n in $s $r $k; do ip netns add $n; ip -n $n link set lo up; done
ip -n $s link add s0 type veth peer name r0 netns $r
ip -n $r link add pbench1 type veth peer name k0 netns $k
ip -n $r link add pbench2 type veth peer name pbench2p
for l in "$s s0" "$r r0" "$r pbench1" "$r pbench2" "$r pbench2p" "$k k0"; do set -- $l; ip -n $1 link set $2 up; done
ip -n $s addr add 10.1.0.2/24 dev s0
ip -n $s route add default via 10.1.0.1
ip -n $r addr add 10.1.0.1/24 dev r0
ip -n $r addr add 10.20.0.1/16 dev pbench1     # connected route: carries the no-table case
ip -n $k addr add 10.20.0.5/16 dev k0
ip -n $k route add default via 10.20.0.1
ip netns exec $r sysctl -qw net.ipv4.ip_forward=1
ip netns exec $k sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.k0.rp_filter=0
ip netns exec $k nice -n -20 iperf3 -s -D -B 10.20.0.5 >/dev/null
sleep 0.5

run() { # prints received packets/s of one run
  ip netns exec $s nice -n -20 iperf3 -c 10.20.0.5 -u -b 0 -l 64 -t "$secs" -J 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin)["end"]["sum"]; print((d["packets"]-d["lost_packets"])/d["seconds"])'
}
measure() { # label
  local all=()
  for i in $(seq "$reps"); do all+=("$(run)"); done
  python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[2:]]; print(f"{sys.argv[1]:<34} median {statistics.median(v):>10.0f} pps   runs: " + " ".join(f"{x:.0f}" for x in v))' "$1" "${all[@]}"
}
config() { # none | ten | big: installs that configuration in the router
  ip netns exec $r nft flush ruleset
  ip -n $r rule flush priority 6210 2>/dev/null || true
  case $1 in
    ct)  # conntrack on, no per-packet rule: a ct expression in a chain no hook reaches registers conntrack
         printf 'table inet ctonly {\n chain unused {\n  ct state new counter\n }\n}\n' | ip netns exec $r nft -f - ;;
    ten) ip netns exec $r .build/release/patronus-bench apply 10 0 >/dev/null ;;
    big) ip netns exec $r .build/release/patronus-bench apply 10 10000 >/dev/null ;;
  esac
}
# The machine is shared (other builds run on the same 2 cores): configurations are interleaved run by
# run (none, ten, big, none, ten, big, ...) so that load changes hit all three alike; medians reported.
declare -A runs
for i in $(seq "$reps"); do
  for c in none ct ten big; do config $c; runs[$c]+="$(run) "; done
done
# Control: the same 10,000 entries as 10,000 linear rules (what the design avoids), to show the bench can
# see a per-packet cost when there is one.
config none
python3 -c 'print("table inet linear {\n chain pre {\n  type filter hook prerouting priority mangle; policy accept;"); [print(f"  tcp dport {1024+i} counter") for i in range(10000)]; print(" }\n}")' > /tmp/ptdp-linear.nft
ip netns exec $r nft -f /tmp/ptdp-linear.nft
for i in 1 2 3; do runs[linear]+="$(run) "; done
ip netns exec $r nft flush ruleset
elements=$(config big; ip netns exec $r nft -j list sets | python3 -c 'import json,sys; print(sum(len(o["set"].get("elem",[])) for o in json.load(sys.stdin)["nftables"] if "set" in o))')
classified=$(ip netns exec $r nft list chain inet patronus classify | grep -c 'packets [1-9]' || true)
out=bench/results/datapath.txt
{
  echo "# bench/datapath.sh $secs $reps   ($(date -u '+%Y-%m-%d %H:%M:%S') UTC, kernel $(uname -r), $(nproc) cores shared with other builds,"
  echo "#   nice -n -20 iperf3 -u -b 0 -l 64, one flow; pps = datagrams received by the sink per second; configurations interleaved)"
  python3 - "${runs[none]}" "${runs[ten]}" "${runs[big]}" "$elements" "${runs[linear]}" "${runs[ct]}" <<'PY'
import sys, statistics
names = ["no table", "patronus, 10 policies", "patronus, 10 policies + 10,000 entries"]
med = []
for name, text in zip(names, sys.argv[1:4]):
    v = [float(x) for x in text.split()]
    med.append(statistics.median(v))
    print(f"{name:<42} median {med[-1]:>9.0f} pps   runs: " + " ".join(f"{x:.0f}" for x in v))
print(f"# classification sets hold {sys.argv[4]} elements in the 10,000-entry configuration")
ct = [float(x) for x in sys.argv[6].split()]
print(f"{'no table, conntrack on (no rules)':<42} median {statistics.median(ct):>9.0f} pps   runs: " + " ".join(f"{x:.0f}" for x in ct))
lin = [float(x) for x in sys.argv[5].split()]
print(f"{'control: 10,000 linear rules (not ours)':<42} median {statistics.median(lin):>9.0f} pps   runs: " + " ".join(f"{x:.0f}" for x in lin))
# Paired ratios (runs i of two configurations ran back to back) cancel slow load drift better than
# ratios of medians; both are printed.
none, ten, big = ([float(x) for x in t.split()] for t in sys.argv[1:4])
r1 = statistics.median(b / a for a, b in zip(none, ten))
r2 = statistics.median(b / a for a, b in zip(ten, big))
print(f"10 policies vs no table:        {100*med[1]/med[0]:5.1f}% of medians, {100*r1:5.1f}% median paired ratio  (target >= 95%)")
r3 = statistics.median(b / a for a, b in zip(ct, ten))
print(f"10 policies vs conntrack only:  {100*med[1]/statistics.median(ct):5.1f}% of medians, {100*r3:5.1f}% median paired ratio  (classify-once needs conntrack)")
print(f"10,000 entries vs 10 policies:  {100*med[2]/med[1]:5.1f}% of medians, {100*r2:5.1f}% median paired ratio  (target 95-105%)")
PY
} | tee "$out"

#!/bin/bash
# Datapath cost: UDP packets/s forwarded through a router namespace with no table, with our table and 10
# policies, and with our table and 10,000 policy entries (match elements in the classification sets).
#   sender (iperf3 -u) --veth--> router --pbench1--> sink (iperf3 -s, 10.20.0.5)
# The rate is what the sink received (iperf3's receiver report), median of REPEATS runs of SECONDS each.
# Reference configurations bound what ANY nftables steering can reach here: an empty base chain, and one
# constant mark rule with the policy routing in place (the least a mark-and-ip-rule design does per packet),
# and conntrack on with no rule (what classify-once by ct mark costs by itself), and a stateless prototype
# (what dropping classify-once would buy: per-packet port lookups, no conntrack).
# The sender is pinned to CPU 0 and the sink to CPU 1: the forwarding runs in the sender's softirq on CPU 0.
# Usage: sudo bench/datapath.sh [SECONDS] [REPEATS]  -> prints and writes bench/results/datapath.txt
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
reps=${2:-3}
source scripts/swift-path.sh
release=$(scripts/build-release)   # the release build: numbers are measured on what users run
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
ip netns exec $k nice -n -20 taskset -c 1 iperf3 -s -D -B 10.20.0.5 >/dev/null
sleep 0.5

run() { # prints received packets/s of one run
  ip netns exec $s nice -n -20 taskset -c 0 iperf3 -c 10.20.0.5 -u -b 0 -l 64 -t "$secs" -J 2>/dev/null |
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
    base) printf 'table inet base {\n chain pre {\n  type filter hook prerouting priority mangle; policy accept;\n }\n}\n' | ip netns exec $r nft -f - ;;
    floor) # our ip rules and path tables (from apply), then one rule in place of our table
         ip netns exec $r "$release/patronus-bench" apply 10 0 >/dev/null
         ip netns exec $r nft flush ruleset
         printf 'table inet floor {\n chain pre {\n  type filter hook prerouting priority mangle; policy accept;\n  meta mark set meta mark & 0xff00ffff | 0x00010000\n }\n}\n' | ip netns exec $r nft -f - ;;
    stateless) # a prototype without conntrack: per-packet port maps straight to path chains (no classify-once)
         ip netns exec $r "$release/patronus-bench" apply 10 0 >/dev/null
         ip netns exec $r nft flush ruleset
         ip netns exec $r nft -f - <<'NFT'
table inet stateless {
	map sites { type ipv4_addr : verdict; flags interval; elements = { 10.20.0.0/16 : goto site_branch } }
	map svc_branch {
		type inet_proto . inet_service : verdict; flags interval
		elements = { udp . 5060-5061 : goto voip_path1, udp . 16384-32767 : goto voip_path1, tcp . 5060-5061 : goto voip_path1,
			     tcp . 20-21 : goto bulk_path2, tcp . 873 : goto bulk_path2 }
	}
	chain voip_path1 { meta mark set meta mark & 0xff00ffff | 0x00010000 counter; }
	chain bulk_path2 { meta mark set meta mark & 0xff00ffff | 0x00020000 counter; }
	chain default_path1 { meta mark set meta mark & 0xff00ffff | 0x00010000 counter; }
	chain site_branch {
		meta l4proto . th dport vmap @svc_branch
		meta l4proto . th sport vmap @svc_branch
		goto default_path1
	}
	chain pre { type filter hook prerouting priority mangle; policy accept; ip daddr vmap @sites; }
}
NFT
         ;;
    ten) ip netns exec $r "$release/patronus-bench" apply 10 0 >/dev/null ;;
    big) ip netns exec $r "$release/patronus-bench" apply 10 10000 >/dev/null ;;
  esac
}
# The machine is shared (other builds run on the same 2 cores): configurations are interleaved run by
# run (none, ten, big, none, ten, big, ...) so that load changes hit all three alike; medians reported.
declare -A runs
for i in $(seq "$reps"); do
  for c in none base floor ct stateless ten big; do config $c; runs[$c]+="$(run) "; done
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
  echo "# bench/datapath.sh $secs $reps   ($(date -u '+%Y-%m-%d %H:%M:%S') UTC, kernel $(uname -r), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg),"
  echo "#   nice -n -20 iperf3 -u -b 0 -l 64, one flow, sender on CPU 0, sink on CPU 1; pps = datagrams received by the sink"
  echo "#   per second; configurations interleaved run by run; paired ratio = median over i of run_i(a) / run_i(b))"
  python3 - "$elements" <<PY
import statistics
runs = {k: [float(x) for x in v.split()] for k, v in [("none", "${runs[none]}"), ("base", "${runs[base]}"),
        ("floor", "${runs[floor]}"), ("ct", "${runs[ct]}"), ("stateless", "${runs[stateless]}"), ("ten", "${runs[ten]}"), ("big", "${runs[big]}"),
        ("linear", "${runs[linear]}")]}
names = {"none": "no table", "base": "ref: empty base chain", "floor": "ref: one mark rule + ip rules",
         "ct": "ref: conntrack on, no rule", "stateless": "ref: stateless prototype, no conntrack", "ten": "patronus, 10 policies",
         "big": "patronus, 10 policies + 10,000 entries", "linear": "control: 10,000 linear rules (not ours)"}
med = {k: statistics.median(v) for k, v in runs.items()}
for k in names:
    print(f"{names[k]:<42} median {med[k]:>9.0f} pps   runs: " + " ".join(f"{x:.0f}" for x in runs[k]))
print("# classification sets hold $elements elements in the 10,000-entry configuration")
def ratio(a, b, note):
    paired = statistics.median(x / y for x, y in zip(runs[a], runs[b]))
    print(f"{names[a] + ' vs ' + names[b]:<68} {100 * med[a] / med[b]:5.1f}% of medians, {100 * paired:5.1f}% paired  {note}")
ratio("ten", "none", "(target >= 95%)")
ratio("big", "ten", "(target 95-105%)")
ratio("ten", "ct", "(our rules on top of the conntrack that classify-once needs)")
for k in ("base", "floor", "ct", "stateless"):
    ratio(k, "none", "(reference)")
PY
} | tee "$out"

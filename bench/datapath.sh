#!/bin/bash
# Datapath cost: UDP packets/s forwarded through a router namespace with no table, with our table and 10
# policies, and with our table and 10,000 policy entries (match elements in the classification sets).
#   sender (iperf3 -u) --veth--> router --pbench1--> sink (iperf3 -s, 10.20.0.5)
#                                       --pbench2--> sink (second path, for the load-balanced rows)
# Against mwan3 (OpenWrt's multi-WAN manager), in the same run with the same traffic: the three default
# policies (rules/default-policies.json: voip -> path 1, bulk -> path 1, the rest load balanced over paths 1
# and 2) as our table installs them and as mwan3 installs them: iptables mangle chains through iptables-nft
# (the nf_tables backend), ipset, connmark save/restore, -m statistic, MARK --set-xmark under 0x3f00, and
# its ip rules (mwan3 below says what was taken from its documented design and what was left out). Ours also
# with the rest on one best-score path (no per-packet flow hash); mwan3's per-packet work is the same
# for a balanced and a one-path policy (after the first packet the mark comes from conntrack). And as shipped:
# with what the shipped voip policy and shaping add on a site with two paths (the voip class copied to the
# other path, htb on both paths at 10 Gbit/s so it never limits): the measured flow is not voip, so the row
# shows what those features cost every other packet (the egress table's one postrouting hook: the copies'
# lookup and the band rules; htb),
# split into rows (copies only; copies and the shape chain without the htb) and set against a router with
# conntrack and the same htb and no rule (what shaping costs any router).
# Then TCP throughput (iperf3, one flow) through a wireguard-go tunnel, router to sink, with no table and
# with our table (the three default policies as shipped: best-score, one path), interleaved.
# The rate is what the sink received (iperf3's receiver report), median of REPEATS runs of SECONDS each.
# Reference configurations bound what ANY nftables steering can reach here: an empty base chain, and one
# constant mark rule with the policy routing in place (the least a mark-and-ip-rule design does per packet),
# and conntrack on with no rule (what classify-once by ct mark costs by itself), the two together (the least
# a classify-once mark design does per packet: our rows set against it show what our own lookups add), and a stateless prototype
# (what dropping classify-once would buy: per-packet port lookups, no conntrack).
# The sender is pinned to CPU 0 and the sink to CPU 1: the forwarding runs in the sender's softirq on CPU 0.
# The UDP sender and sink run SCHED_FIFO (chrt -f 50): the machine is shared with compilers, and at nice -20
# single runs varied by 50-140 % under a load average of 10 (so a 5 % difference could not be seen),
# SCHED_FIFO by 10-30 %. The kernel's RT throttling still leaves other processes 5 % of each CPU during a run.
# The wireguard-go rows run at nice -20: wireguard-go at SCHED_FIFO (Go's runtime spins) once starved the
# iperf3s of the same priority for 10 minutes. Every iperf3 client run has a timeout.
# Usage: sudo bench/datapath.sh [SECONDS] [REPEATS] [budget]  -> prints and writes bench/results/datapath.txt (or $DATAPATH_OUT)
#   budget: only the rows the budget names (conntrack alone, conntrack + one mark rule, our policies, mwan3),
#   so that more repeats fit in the same time (their ratios' middle half narrows) -> bench/results/datapath-budget.txt
#   variants: designs tried and not shipped, each set against what ships (config below says what each changes)
#   -> bench/results/datapath-variants.txt
# Needs iperf3, iptables (iptables-nft), ipset, wireguard-go, wg, python3: scripts/deps.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
reps=${2:-3}
mode=${3:-all}
[[ $mode == all || $mode == budget || $mode == variants ]] ||
  { echo "bench/datapath.sh: the third argument is 'budget', 'variants' or nothing" >&2; exit 2; }
rt="chrt -f 50"
source scripts/swift-path.sh
release=$(scripts/build-release)   # the release build: numbers are measured on what users run
for tool in iperf3 iptables-nft iptables-nft-restore ipset wireguard-go wg python3; do
  command -v $tool >/dev/null || { echo "bench/datapath.sh: $tool not found: run sudo scripts/deps.sh" >&2; exit 1; }
done
s=ptdps$$; r=ptdpr$$; k=ptdpk$$; ws=ptdws$$; wr=ptdwr$$; wk=ptdwk$$
linear=$(mktemp /tmp/ptdp-linear.XXXXXX.nft)
edited=$(mktemp /tmp/ptdp-edited.XXXXXX.nft)
cleanup() {
  for n in $s $r $k $ws $wr $wk; do ip netns pids $n 2>/dev/null | xargs -r kill -9 2>/dev/null || true; ip netns del $n 2>/dev/null || true; done
  rm -f "$linear" "$edited"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
for n in $s $r $k; do ip netns add $n; ip -n $n link set lo up; done
ip -n $s link add s0 type veth peer name r0 netns $r
ip -n $r link add pbench1 type veth peer name k0 netns $k
ip -n $r link add pbench2 type veth peer name k1 netns $k   # path 2 reaches the same sink
for l in "$s s0" "$r r0" "$r pbench1" "$r pbench2" "$k k0" "$k k1"; do set -- $l; ip -n $1 link set $2 up; done
ip -n $s addr add 10.1.0.2/24 dev s0
ip -n $s route add default via 10.1.0.1
ip -n $r addr add 10.1.0.1/24 dev r0
ip -n $r addr add 10.20.0.1/16 dev pbench1     # connected route: carries the no-table case
ip -n $k addr add 10.20.0.5/16 dev k0
ip -n $k route add default via 10.20.0.1
ip netns exec $r sysctl -qw net.ipv4.ip_forward=1
ip netns exec $k sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.k0.rp_filter=0 net.ipv4.conf.k1.rp_filter=0
ip netns exec $k $rt taskset -c 1 iperf3 -s -D -B 10.20.0.5 >/dev/null
sleep 0.5

run() { # prints received packets/s of one run
  ip netns exec $s timeout -k 5 $((secs + 30)) $rt taskset -c 0 iperf3 -c 10.20.0.5 -u -b 0 -l 64 -t "$secs" -J 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin)["end"]["sum"]; print((d["packets"]-d["lost_packets"])/d["seconds"])'
}
config() { # none | base | floor | ct | ctfloor | stateless | ten | big | three | mwan3: installs that configuration in the router
  ip netns exec $r nft flush ruleset   # iptables-nft's tables too
  ip netns exec $r ipset destroy 2>/dev/null || true
  ip -n $r rule flush protocol 77 2>/dev/null || true   # ours (Conventions.steeringProtocol)
  for p in 1001 1002 2001 2002 2061 2062 3001 3002; do ip -n $r rule flush priority $p 2>/dev/null || true; done   # mwan3's
  # The shapers' htb outlives the table (a new Steering does not own the last one's qdiscs): without this
  # every configuration after the first "full" ran with htb on both paths (the results before 2026-12-04 did).
  for d in pbench1 pbench2; do ip netns exec $r tc qdisc del dev $d root 2>/dev/null || true; done
  case $1 in
    ct)  # conntrack on, no per-packet rule: a ct expression in a chain no hook reaches registers conntrack
         printf 'table inet ctonly {\n chain unused {\n  ct state new counter\n }\n}\n' | ip netns exec $r nft -f - ;;
    base) printf 'table inet base {\n chain pre {\n  type filter hook prerouting priority mangle; policy accept;\n }\n}\n' | ip netns exec $r nft -f - ;;
    floor) # our ip rules and path tables (from apply), then one rule in place of our table
         ip netns exec $r "$release/patronus-bench" apply 10 0 >/dev/null
         ip netns exec $r nft flush ruleset
         printf 'table inet floor {\n chain pre {\n  type filter hook prerouting priority mangle; policy accept;\n  meta mark set meta mark & 0xff00ffff | 0x00010000\n }\n}\n' | ip netns exec $r nft -f - ;;
    ctfloor) # the floor with conntrack on: the least any classify-once mark + ip rule design does per packet
         ip netns exec $r "$release/patronus-bench" apply 10 0 >/dev/null
         ip netns exec $r nft flush ruleset
         printf 'table inet floor {\n chain pre {\n  type filter hook prerouting priority mangle; policy accept;\n  meta mark set meta mark & 0xff00ffff | 0x00010000\n }\n chain unused {\n  ct state new counter\n }\n}\n' | ip netns exec $r nft -f - ;;
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
    three) ip netns exec $r "$release/patronus-bench" apply 3 0 balanced >/dev/null ;;
    shipped) ip netns exec $r "$release/patronus-bench" apply 3 0 >/dev/null ;;   # rest: best-score, one path
    full) ip netns exec $r "$release/patronus-bench" apply 3 0 features >/dev/null ;;   # + voip duplication, shaping
    copies) ip netns exec $r "$release/patronus-bench" apply 3 0 copies >/dev/null ;;   # + voip duplication only
    nohtb) # full, its htb removed: the copy table and the shape chain without the qdisc
         ip netns exec $r "$release/patronus-bench" apply 3 0 features >/dev/null
         for d in pbench1 pbench2; do ip netns exec $r tc qdisc del dev $d root; done ;;
    cthtb) # conntrack on and the same htb as full, no rule: what any router that shapes these paths pays
         ip netns exec $r "$release/patronus-bench" apply 3 0 features >/dev/null
         ip netns exec $r nft flush ruleset
         printf 'table inet ctonly {\n chain unused {\n  ct state new counter\n }\n}\n' | ip netns exec $r nft -f - ;;
    relay) ip netns exec $r "$release/patronus-bench" apply 3 0 relay >/dev/null ;;   # as shipped, no transit rule (a relay)
    mwan3) mwan3 ;;
    # Variants (not shipped): as shipped, listed by nft, edited, and loaded back with nft -f.
    sized|nodir|nocounter)
         ip netns exec $r "$release/patronus-bench" apply 3 0 >/dev/null
         ip netns exec $r nft list ruleset > "$edited"
         case $1 in
           sized) sed -i '/^\tmap flows {/a\\t\tsize 4096' "$edited" ;;   # the kernel's fixed-size hash for `flows`
           nodir) sed -i 's/ct direction original ct mark & 0xffff1f00 vmap @flows/ct mark \& 0xffff1f00 vmap @flows/' "$edited" ;;
           nocounter) sed -i -E 's/(meta mark set meta mark & 0x[0-9a-f]+ \| 0x[0-9a-f]+) counter packets [0-9]+ bytes [0-9]+/\1/' "$edited" ;;
         esac
         ip netns exec $r nft flush ruleset
         ip netns exec $r nft -f "$edited" ;;
    noegress|tcband) # as shipped with copies and shaping, without table ip patronus_egress (its htb stays);
         # tcband: + a classic-BPF classifier on each htb reading the packet mark (mark & 0x0fff0000 == slot 16:
         # never here), the part the bands would need if they were set in tc instead of the egress hook
         ip netns exec $r "$release/patronus-bench" apply 3 0 features >/dev/null
         ip netns exec $r nft delete table ip patronus_egress
         if [[ $1 == tcband ]]; then
           for d in pbench1 pbench2; do
             ip netns exec $r tc filter add dev $d parent 62: prio 1 bpf \
               bytecode "5,32 0 0 4294963220,84 0 0 268369920,21 0 1 1048576,6 0 0 4294967295,6 0 0 0" classid 62:10
           done
         fi ;;
  esac
}
# mwan3's ruleset for the same three policies on two WAN interfaces (wan1 = pbench1, wan2 = pbench2), written
# from mwan3's documented design (OpenWrt's mwan3 guide: "every packet is handled by mwan3_hook": restore
# the mark from conntrack; if unmarked, mark what arrives on a WAN interface, then what goes to a connected
# network (ipset), then apply the user rules; save the mark), with mwan3's mark layout: interface id << 8
# under the mask 0x3f00, 0x3f00 = use the main table; a policy chain per policy, a balanced policy as
# -m statistic --mode random between its members; rules match destinations with ipset (the rule's "ipset"
# option) and ports with multiport; ip rules 1000+id (iif), 2000+id (fwmark), 2061/2062 (blackhole,
# unreachable marks), 3000+id (fwmark fall-through: unreachable). Left out, as they only add per-packet work
# to mwan3: the second pass over the connected sets after the save that recent versions add, sticky rules,
# IPv6. Where the documentation leaves a choice, the cheaper one was taken.
mwan3() {
  ip netns exec $r sh -e <<'SH'
ipset create mwan3_connected_v4 hash:net
for n in 10.1.0.0/24 127.0.0.0/8 224.0.0.0/3; do ipset add mwan3_connected_v4 $n; done   # the LAN, loopback, multicast
ipset create mwan3_custom_v4 hash:net
ipset create mwan3_dynamic_v4 hash:net
ipset create branch_v4 hash:net        # the remote site's prefixes: every rule's destination
ipset add branch_v4 10.20.0.0/16
iptables-nft-restore -n <<'IPT'
*mangle
:mwan3_hook - [0:0]
:mwan3_ifaces_in - [0:0]
:mwan3_iface_in_wan1 - [0:0]
:mwan3_iface_in_wan2 - [0:0]
:mwan3_custom_ipv4 - [0:0]
:mwan3_connected_ipv4 - [0:0]
:mwan3_dynamic_ipv4 - [0:0]
:mwan3_rules - [0:0]
:mwan3_policy_voip - [0:0]
:mwan3_policy_bulk - [0:0]
:mwan3_policy_balanced - [0:0]
-A PREROUTING -j mwan3_hook
-A OUTPUT -j mwan3_hook
-A mwan3_hook -j CONNMARK --restore-mark --nfmask 0x3f00 --ctmask 0x3f00
-A mwan3_hook -m mark --mark 0x0/0x3f00 -j mwan3_ifaces_in
-A mwan3_hook -m mark --mark 0x0/0x3f00 -j mwan3_custom_ipv4
-A mwan3_hook -m mark --mark 0x0/0x3f00 -j mwan3_connected_ipv4
-A mwan3_hook -m mark --mark 0x0/0x3f00 -j mwan3_dynamic_ipv4
-A mwan3_hook -m mark --mark 0x0/0x3f00 -j mwan3_rules
-A mwan3_hook -j CONNMARK --save-mark --nfmask 0x3f00 --ctmask 0x3f00
-A mwan3_ifaces_in -m mark --mark 0x0/0x3f00 -j mwan3_iface_in_wan1
-A mwan3_ifaces_in -m mark --mark 0x0/0x3f00 -j mwan3_iface_in_wan2
-A mwan3_iface_in_wan1 -i pbench1 -m set --match-set mwan3_connected_v4 src -m mark --mark 0x0/0x3f00 -j MARK --set-xmark 0x3f00/0x3f00
-A mwan3_iface_in_wan1 -i pbench1 -m mark --mark 0x0/0x3f00 -j MARK --set-xmark 0x100/0x3f00
-A mwan3_iface_in_wan2 -i pbench2 -m set --match-set mwan3_connected_v4 src -m mark --mark 0x0/0x3f00 -j MARK --set-xmark 0x3f00/0x3f00
-A mwan3_iface_in_wan2 -i pbench2 -m mark --mark 0x0/0x3f00 -j MARK --set-xmark 0x200/0x3f00
-A mwan3_custom_ipv4 -m set --match-set mwan3_custom_v4 dst -j MARK --set-xmark 0x3f00/0x3f00
-A mwan3_connected_ipv4 -m set --match-set mwan3_connected_v4 dst -j MARK --set-xmark 0x3f00/0x3f00
-A mwan3_dynamic_ipv4 -m set --match-set mwan3_dynamic_v4 dst -j MARK --set-xmark 0x3f00/0x3f00
-A mwan3_rules -p udp -m set --match-set branch_v4 dst -m multiport --dports 5060:5061,16384:32767 -m mark --mark 0x0/0x3f00 -m comment --comment voip -j mwan3_policy_voip
-A mwan3_rules -p tcp -m set --match-set branch_v4 dst -m multiport --dports 5060:5061 -m mark --mark 0x0/0x3f00 -m comment --comment voip_tcp -j mwan3_policy_voip
-A mwan3_rules -p tcp -m set --match-set branch_v4 dst -m multiport --dports 20:21,873 -m mark --mark 0x0/0x3f00 -m comment --comment bulk -j mwan3_policy_bulk
-A mwan3_rules -m set --match-set branch_v4 dst -m mark --mark 0x0/0x3f00 -m comment --comment default -j mwan3_policy_balanced
-A mwan3_policy_voip -m mark --mark 0x0/0x3f00 -m comment --comment "wan1 1 1" -j MARK --set-xmark 0x100/0x3f00
-A mwan3_policy_bulk -m mark --mark 0x0/0x3f00 -m comment --comment "wan1 1 1" -j MARK --set-xmark 0x100/0x3f00
-A mwan3_policy_balanced -m mark --mark 0x0/0x3f00 -m statistic --mode random --probability 0.5 -m comment --comment "wan2 1 2" -j MARK --set-xmark 0x200/0x3f00
-A mwan3_policy_balanced -m mark --mark 0x0/0x3f00 -m comment --comment "wan1 1 2" -j MARK --set-xmark 0x100/0x3f00
COMMIT
IPT
for id in 1 2; do
  ip route replace 10.1.0.0/24 dev r0 table $id          # mwan3 copies the main table's routes into each
  ip route replace default dev pbench$id table $id
  ip rule add pref $((1000 + id)) iif pbench$id lookup $id
  ip rule add pref $((2000 + id)) fwmark $((id << 8))/0x3f00 lookup $id
  ip rule add pref $((3000 + id)) fwmark $((id << 8))/0x3f00 unreachable
done
ip rule add pref 2061 fwmark 0x3d00/0x3f00 blackhole
ip rule add pref 2062 fwmark 0x3e00/0x3f00 unreachable
SH
}
# The wireguard-go row: its own three namespaces, the router's tunnel interface is path 1 (pbench1).
#   sender --veth--> router ==pbench1 (wireguard-go) over veth u0/u1==> sink (iperf3 -s, 10.20.0.5 on the tunnel)
# wireguard-go's UAPI sockets live in one machine-wide folder, so each runs in a private mount namespace with
# its own /var/run/wireguard: "pbench1" cannot meet another engineer's interface of the same name.
wg_up() { # netns interface listen-port private-key peer-public-key peer-endpoint allowed-ips address
  ip netns exec "$1" unshare -m sh -ec "
    mkdir -p /var/run/wireguard && mount -t tmpfs -o mode=0700 tmpfs /var/run/wireguard
    nice -n -20 wireguard-go $2 >/dev/null 2>&1   # its banner; a failed start fails the wg set below
    printf '%s\n' '$4' > /var/run/wireguard/key
    wg set $2 private-key /var/run/wireguard/key listen-port $3 peer '$5' endpoint $6 allowed-ips $7
    ip addr add $8 dev $2
    ip link set $2 up"
}
wg_setup() {
  for n in $ws $wr $wk; do ip netns add $n; ip -n $n link set lo up; done
  ip -n $ws link add s0 mtu 1420 type veth peer name r0 mtu 1420 netns $wr  # the tunnel's MTU: no PMTU discovery in the runs
  ip -n $wr link add u0 type veth peer name u1 netns $wk
  ip -n $wr link add pbench2 type veth peer name pbench2p           # path 2 must exist; no class uses it here
  for l in "$ws s0" "$wr r0" "$wr u0" "$wr pbench2" "$wr pbench2p" "$wk u1"; do set -- $l; ip -n $1 link set $2 up; done
  ip -n $ws addr add 10.1.0.2/24 dev s0
  ip -n $ws route add default via 10.1.0.1
  ip -n $wr addr add 10.1.0.1/24 dev r0
  ip -n $wr addr add 192.168.250.1/30 dev u0
  ip -n $wk addr add 192.168.250.2/30 dev u1
  ip netns exec $wr sysctl -qw net.ipv4.ip_forward=1
  local kr kk
  kr=$(wg genkey); kk=$(wg genkey)
  wg_up $wr pbench1 51901 "$kr" "$(wg pubkey <<<"$kk")" 192.168.250.2:51902 10.20.0.0/16 10.20.0.1/16
  wg_up $wk ptdwg$$ 51902 "$kk" "$(wg pubkey <<<"$kr")" 192.168.250.1:51901 10.1.0.0/24,10.20.0.1/32 10.20.0.5/16
  ip -n $wk route add 10.1.0.0/24 dev ptdwg$$
  ip netns exec $wk nice -n -20 iperf3 -s -D -B 10.20.0.5 >/dev/null
  sleep 0.5
}
wg_config() { # none | three
  ip netns exec $wr nft flush ruleset
  ip -n $wr rule flush protocol 77 2>/dev/null || true
  [[ $1 == none ]] || ip netns exec $wr "$release/patronus-bench" apply 3 0 >/dev/null
}
wg_run() { # prints the receiver's TCP Mbit/s of one run (the first second, slow start, is left out)
  ip netns exec $ws timeout -k 5 $((secs + 30)) nice -n -20 iperf3 -c 10.20.0.5 -t "$secs" -O 1 -J 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6)'
}

# The machine is shared (other builds run on the same 2 cores): configurations are interleaved run by
# run (none, base, ..., mwan3, none, base, ...) so that load changes hit all of them alike; medians reported.
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A runs
configs="none base floor ct ctfloor stateless ten big three shipped relay copies nohtb full cthtb mwan3"
[[ $mode == budget ]] && configs="ct ctfloor ten three shipped mwan3"
[[ $mode == variants ]] && configs="ct ctfloor shipped sized nodir nocounter full noegress tcband"
for i in $(seq "$reps"); do
  for c in $configs; do config $c; runs[$c]+="$(run) "; done
done
elements=-; mwan3_marked=-; ours_classified=-
if [[ $mode == all ]]; then
  # Control: the same 10,000 entries as 10,000 linear rules (what the design avoids), to show the bench can
  # see a per-packet cost when there is one.
  config none
  python3 -c 'print("table inet linear {\n chain pre {\n  type filter hook prerouting priority mangle; policy accept;"); [print(f"  tcp dport {1024+i} counter") for i in range(10000)]; print(" }\n}")' > "$linear"
  ip netns exec $r nft -f "$linear"
  for i in 1 2 3; do runs[linear]+="$(run) "; done
  elements=$(config big; ip netns exec $r nft -j list sets | python3 -c 'import json,sys; print(sum(len(o["set"].get("elem",[])) for o in json.load(sys.stdin)["nftables"] if "set" in o))')
  # Checks that each configuration steered what it claims: mwan3 marked the flow (its policy chains counted
  # packets), ours classified it (the "default" class counter).
  config mwan3; run >/dev/null
  mwan3_marked=$(ip netns exec $r iptables-nft -t mangle -vxnL mwan3_policy_balanced | awk 'NR > 2 {n += $1} END {print n + 0}')
  config three; run >/dev/null
  ours_classified=$(ip netns exec $r nft list chain inet patronus classify | awk '/class default/ && /packets [1-9]/ {n++} END {print n + 0}')
  config none

  wg_setup
  for i in $(seq "$reps"); do
    for c in none three; do wg_config $c; runs[wg_$c]+="$(wg_run) "; done
  done
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

out=bench/results/datapath.txt
[[ $mode == all ]] || out=bench/results/datapath-$mode.txt
out=${DATAPATH_OUT:-$out}   # DATAPATH_OUT: another file (a side run)
{
  echo "# sudo bench/datapath.sh $secs $reps$([[ $mode == all ]] || echo " $mode")   ($(date -u '+%Y-%m-%d %H:%M:%S') UTC, kernel $(uname -r), $(nproc) cores,"
  echo "#   load average $load_before at the start, $load_after at the end; $(iptables-nft --version), $(ipset --version | head -1), wireguard-go $(dpkg-query -W -f '${Version}' wireguard-go 2>/dev/null || echo '?'))"
  echo "#   UDP rows: $rt iperf3 -u -b 0 -l 64, one flow, sender on CPU 0, sink on CPU 1; pps = datagrams received"
  echo "#   by the sink per second. wireguard-go rows: nice -n -20 for iperf3 and wireguard-go, TCP, one flow, Mbit/s received."
  echo "#   Configurations interleaved run by run; paired ratio = median over i of run_i(a) / run_i(b), with the middle half"
  echo "#   (25th-75th percentile) of those per-run ratios; spread = (max - min) / median of a row's runs."
  RUNS="$(for k in "${!runs[@]}"; do echo "$k=${runs[$k]}"; done)" python3 - "$elements" "$mwan3_marked" "$ours_classified" <<'PY'
import os, statistics, sys
runs = {k: [float(x) for x in v.split()] for k, v in (l.split("=", 1) for l in os.environ["RUNS"].splitlines())}
elements, mwan3_marked, ours_classified = sys.argv[1:4]
names = {"none": "no table", "base": "ref: empty base chain", "floor": "ref: one mark rule + ip rules",
         "ct": "ref: conntrack on, no rule", "ctfloor": "ref: conntrack on + one mark rule + ip rules",
         "stateless": "ref: stateless prototype, no conntrack",
         "ten": "patronus, 10 policies", "big": "patronus, 10 policies + 10,000 entries",
         "three": "patronus, 3 default policies, rest balanced", "shipped": "patronus, 3 default policies, rest on one path",
         "full": "patronus as shipped: + voip copies + shaping",
         "copies": "patronus, as shipped + voip copies",
         "nohtb": "patronus, full without its htb (the nft part)",
         "cthtb": "ref: conntrack on + the same htb, no rule",
         "relay": "patronus, 3 default policies, rest on one path, on a relay (no transit rule)",
         "sized": "variant: as shipped, flows with a size (fixed hash)",
         "nodir": "variant: as shipped, no ct direction test",
         "nocounter": "variant: as shipped, path chains without counter",
         "noegress": "variant: full without its egress table",
         "tcband": "variant: full without egress table + tc bpf classifier",
         "mwan3": "mwan3 ruleset, same 3 policies, rest balanced",
         "linear": "control: 10,000 linear rules (not ours)",
         "wg_none": "wireguard-go TCP, no table", "wg_three": "wireguard-go TCP, patronus 3 default policies"}
med = {k: statistics.median(v) for k, v in runs.items()}
for k in (k for k in names if k in runs):
    unit = "Mbit/s" if k.startswith("wg_") else "pps"
    spread = (max(runs[k]) - min(runs[k])) / med[k]
    print(f"{names[k]:<46} median {med[k]:>9.0f} {unit:<6} spread {100 * spread:3.0f}%   runs: " + " ".join(f"{x:.0f}" for x in runs[k]))
if elements != "-":
  print(f"# classification sets hold {elements} elements in the 10,000-entry configuration; checks: mwan3's balanced policy")
  print(f"#   chain marked {mwan3_marked} packets of one run (its first packets only: the rest restore the mark from conntrack),")
  print(f"#   our classify chain counted {ours_classified} 'class default' rule with packets")
def ratio(a, b, note):
    if a not in runs or b not in runs: return   # a budget run has only the budget's rows
    pairs = [x / y for x, y in zip(runs[a], runs[b])]
    q = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else pairs * 3
    print(f"{names[a] + ' vs ' + names[b]:<92} {100 * med[a] / med[b]:5.1f}% of medians, {100 * q[1]:5.1f}% paired"
          f" (middle half {100 * q[0]:5.1f}-{100 * q[2]:5.1f}%)  {note}")
ratio("ctfloor", "ct", "(the least any classify-once mark + ip rule design adds to conntrack: a hook, a mark write, policy routing)")
ratio("shipped", "ctfloor", "(our per-packet work above that least: the flows lookup by ct mark, the path chain's counter)")
ratio("ten", "ct", "(budget >= 95%: our rules on top of the conntrack that classify-once needs)")
ratio("three", "ct", "(budget >= 95%)")
ratio("shipped", "ct", "(budget >= 95%: the policies alone, no copies, no shaper)")
ratio("three", "mwan3", "(budget > 100%: ahead of mwan3)")
ratio("shipped", "mwan3", "(rest on one path (best-score); mwan3's per-packet work is the same either way)")
ratio("full", "cthtb", "(budget >= 95%: as shipped, against a router with conntrack and the same shaper)")
ratio("full", "shipped", "(what voip duplication's copies and the tunnels' shapers add to every other packet)")
ratio("copies", "shipped", "(the egress hook with the copies' lookup)")
ratio("nohtb", "copies", "(the band rules, in the same hook)")
ratio("full", "nohtb", "(htb at 10 Gbit/s instead of no qdisc on the veth)")
ratio("cthtb", "ct", "(reference: htb by itself)")
ratio("shipped", "relay", "(what refusing transit, the site chains' rule of a site that does not relay, costs established flows)")
ratio("full", "mwan3", "(as shipped with duplication and shaping, against mwan3 which has neither)")
ratio("mwan3", "ct", "(reference)")
ratio("big", "ten", "(target 95-105%: flat in the number of entries)")
ratio("wg_three", "wg_none", "(TCP through wireguard-go)")
ratio("sized", "shipped", "(variant: a size hint on flows: the kernel's fixed-size hash instead of the resizable one)")
ratio("nodir", "shipped", "(variant: without the ct direction test (it would steer replies too))")
ratio("nocounter", "shipped", "(variant: without the path chains' counters (status and explain read them))")
ratio("full", "noegress", "(what table ip patronus_egress costs as shipped)")
ratio("tcband", "noegress", "(variant: a classic-BPF classifier on each htb: what bands in tc would cost)")
ratio("tcband", "full", "(variant: bands in tc instead of the egress hook, copies not counted)")
ratio("ten", "none", "(former budget >= 95%; not reachable by any nftables mark design here)")
ratio("three", "none", "(reference)")
ratio("mwan3", "none", "(reference)")
for k in ("base", "floor", "ct", "stateless"):
    ratio(k, "none", "(reference)")
PY
} | tee "$out"

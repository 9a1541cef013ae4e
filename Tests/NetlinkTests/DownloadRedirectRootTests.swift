// The download-shaping datapath (docs/SHAPING.md, "Download"), built with our own messages against the
// kernel: an ifb, an htb on it, a clsact egress filter on the LAN-side device whose classic BPF program
// matches the uplink field of the packet mark and redirects to the ifb. nft's postrouting (conntrack
// done) sets the mark and `meta priority`; htb on the ifb reads the priority. Three throwaway namespaces:
// a (behind the tunnel side, x0) -> r (forwards) -> b (LAN side, y0). Root only.
import Foundation
import Glibc
import Testing
import CNetfilter
@testable import Netlink

@Suite(.serialized) struct DownloadRedirectRootTests {
    static func sh(_ command: String) -> Int32 { system(command + " >/dev/null 2>&1") }

    @Test(.enabled(if: isRoot)) func rootMarkedPacketsReachTheIfbClassTheirPriorityNamesOthersPass() throws {
        let tag = "ptdl\(getpid())"
        let (a, r, b) = (tag + "a", tag + "r", tag + "b")
        defer { for ns in [a, r, b] { _ = Self.sh("ip netns del \(ns)") } }
        let setup = """
            ip netns add \(a) && ip netns add \(r) && ip netns add \(b) &&
            ip link add a0 netns \(a) type veth peer name x0 netns \(r) &&
            ip link add y0 netns \(r) type veth peer name b0 netns \(b) &&
            ip -n \(a) addr add 10.9.1.1/24 dev a0 && ip -n \(a) link set a0 up && ip -n \(a) route add default via 10.9.1.2 &&
            ip -n \(r) addr add 10.9.1.2/24 dev x0 && ip -n \(r) link set x0 up &&
            ip -n \(r) addr add 10.9.2.2/24 dev y0 && ip -n \(r) link set y0 up &&
            ip -n \(b) addr add 10.9.2.1/24 dev b0 && ip -n \(b) link set b0 up && ip -n \(b) route add default via 10.9.2.2 &&
            ip netns exec \(r) sysctl -qw net.ipv4.ip_forward=1
            """
        #expect(Self.sh(setup) == 0)
        // What the `shape` chain does for a packet that arrived over uplink 1's tunnel and leaves to the LAN
        // (ICMP only: the namespaces' own chatter stays out).
        let nft = """
            table inet t {
              chain post {
                type filter hook postrouting priority -150;
                iifname "x0" ip protocol icmp ip length < 200 meta priority set 62:10
                iifname "x0" ip protocol icmp meta mark set meta mark | 0x10000000
              }
            }
            """
        #expect(Self.sh("printf '%s' '\(nft)' | ip netns exec \(r) nft -f -") == 0)

        let rtnl = try RouteNetlinkClient(netns: r)
        try rtnl.createLink(named: "ifbt1", kind: "ifb")
        #expect(throws: NetlinkError.self) { try rtnl.createLink(named: "ifbt1", kind: "ifb") } // EXCL
        let ifb = try rtnl.link(named: "ifbt1")
        // Without it the kernel's own IPv6 router solicitation on the ifb went through its htb (seen in 1 of 5 runs).
        try rtnl.setNoIPv6Addresses(index: ifb.index)
        try rtnl.setLink(index: ifb.index, up: true)
        let full = TCRate(bitsPerSecond: 50_000_000)
        let root = TCHandle(major: 0x62, minor: 0), top = TCHandle(major: 0x62, minor: 1)
        let realtime = TCHandle(major: 0x62, minor: 0x10), standard = TCHandle(major: 0x62, minor: 0x20)
        try rtnl.trafficControl([
            NetlinkRequest(TrafficControl.qdiscMessage(Qdisc(handle: root, parent: .root, kind: .htb(defaultClass: 0x20, directQueueLength: 64)),
                                                       interface: ifb.index, .replace), "htb"),
            NetlinkRequest(TrafficControl.classMessage(HTBClass(handle: top, parent: root, rate: full, ceil: full, burst: 6400, cburst: 6400,
                                                                quantum: 1600, prio: 0), interface: ifb.index, .add), "62:1"),
            NetlinkRequest(TrafficControl.classMessage(HTBClass(handle: realtime, parent: top, rate: full, ceil: full, burst: 6400, cburst: 6400,
                                                                quantum: 1600, prio: 0), interface: ifb.index, .add), "62:10"),
            NetlinkRequest(TrafficControl.classMessage(HTBClass(handle: standard, parent: top, rate: full, ceil: full, burst: 6400, cburst: 6400,
                                                                quantum: 1600, prio: 1), interface: ifb.index, .add), "62:20"),
        ])
        let lan = try rtnl.link(named: "y0")
        try rtnl.qdisc(Qdisc(handle: .clsactHandle, parent: .clsact, kind: .clsact), interface: lan.index, .add)
        let filter = RedirectFilter(preference: 6201, program: ClassicBPFInstruction.markEquals(0x1000_0000, mask: 0xf000_0000), target: ifb.index)
        try rtnl.trafficControl([NetlinkRequest(TrafficControl.filterMessage(filter, interface: lan.index, .add), "\(filter)")])
        let listed = try rtnl.filters(interface: lan.index).filter { $0.handle != 0 }
        #expect(listed.count == 1)
        #expect(listed.first?.preference == 6201 && listed.first?.kind == "bpf")
        #expect(listed.first?.program == filter.program && listed.first?.redirectTarget == ifb.index)

        func sent(_ handle: TCHandle) throws -> UInt64 {
            try rtnl.classes(interface: ifb.index).first { $0.handle == handle }?.statistics.packets ?? 0
        }
        // Small pings from a (over the "tunnel"): realtime; big ones: htb's default, standard. Their
        // replies, and pings from r itself (never through the postrouting rule for x0), pass unredirected.
        #expect(Self.sh("ip netns exec \(a) ping -c 4 -i 0.05 -W 2 10.9.2.1") == 0)
        #expect(Self.sh("ip netns exec \(a) ping -c 3 -i 0.05 -W 2 -s 1000 10.9.2.1") == 0)
        #expect(Self.sh("ip netns exec \(r) ping -c 2 -i 0.05 -W 2 10.9.2.1") == 0)
        #expect(try sent(realtime) == 4)
        let seen = try rtnl.classes(interface: ifb.index).map { "\($0.handle) \($0.statistics.packets) pkt \($0.statistics.bytes) B" }
        #expect(try sent(standard) == 3, "\(seen)")
        #expect(try sent(top) == 7)

        // Removed with our own messages: the filter, the clsact, the ifb; traffic flows on.
        try rtnl.deleteFilters(interface: lan.index, preference: 6201)
        #expect(try rtnl.filters(interface: lan.index).isEmpty)
        try rtnl.deleteClsact(interface: lan.index)
        #expect(try !rtnl.qdiscs().contains { $0.interfaceIndex == lan.index && $0.kind == "clsact" })
        try rtnl.deleteLink(named: "ifbt1")
        #expect(throws: NetlinkError.self) { try rtnl.link(named: "ifbt1") }
        #expect(Self.sh("ip netns exec \(a) ping -c 1 -W 2 10.9.2.1") == 0)
    }
}

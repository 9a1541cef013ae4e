// Download shaping as part of the plan (docs/SHAPING.md, "Download"): the uplink's ifb, its htb, the LAN
// device's redirect filter, the `shape` chain's download rules; replies of a LAN client's flows arriving
// over the tunnel land in the band of their class; repaired and removed like the rest. Root only.
import Foundation
import Glibc
import Testing
import Lab
import Model
import Netlink
@testable import Steering

extension SteeringFixture {
    /// The shaped plan with uplink 1's download (tunnel `pa`) shaped towards the fixture's LAN.
    func downloadPlan(rate: UInt64 = 20_000_000) -> SteeringPlan {
        var p = shapedPlan()
        p.downloadShapers = [.init(slot: 1, tunnels: ["pa"], lanPrefixes: [IPv4Prefix("10.1.0.0/24")!], rateBitsPerSecond: rate)]
        return p
    }

    /// The client sends one datagram from each `port` to 10.20.0.5:`remote`, and peer1 (the far end of
    /// `pa`) answers each `count` times from 10.20.0.5: the replies are the download of the client's flows.
    func replies(remote: UInt16, clientPort: UInt16, count: Int) throws {
        // The far socket first: otherwise peer1's port unreachable (related to the flow, so in its band too)
        // would be one more packet of the download.
        let far = try UDPSocket(in: peer1, bindTo: "10.20.0.5", port: remote)
        let client = try UDPSocket(in: self.client, port: clientPort)
        _ = client.send([1, 2, 3], to: "10.20.0.5", port: remote)
        _ = far.receive(timeout: .seconds(2))
        for _ in 0..<count { _ = far.send(Array(repeating: 0x55, count: 100), to: "10.1.0.2", port: clientPort) }
        for _ in 0..<count { _ = client.receive(timeout: .seconds(2)) }
    }
}

@Suite(.serialized) struct DownloadShapingRootTests {
    @Test(.enabled(if: isRoot)) func rootTheDownloadIsRedirectedToTheUplinksIfbInItsBandRepairedAndRemoved() throws {
        let f = try SteeringFixture()
        try f.peer1.addAddress("10.20.0.5/32", to: "lo")
        try f.peer1.addRoute("10.1.0.0/24", via: "192.0.2.1")
        let steering = try f.steering()
        let changes = try steering.apply(f.downloadPlan())
        #expect(changes.shaperProblems.isEmpty, "\(changes.shaperProblems)")
        #expect(Set(changes.shapersInstalled) == ["pa", "patronus-dl1"])
        let ifb = "patronus-dl1"
        #expect(try f.qdiscs(ifb) == ["bfifo 6210: 62:10", "bfifo 6220: 62:20", "bfifo 6230: 62:30", "htb 62: root"])
        #expect(try f.router.check(["ip", "-6", "addr", "show", "dev", ifb]).isEmpty, "no IPv6 chatter on the ifb")
        let filters = try f.router.check(["tc", "filter", "show", "dev", "lan", "egress"])
        #expect(filters.contains("pref 6201 bpf") && filters.contains("Redirect to device \(ifb)"), "\(filters)")
        let chain = try f.router.check(["nft", "list", "chain", "ip", "patronus_egress", "postrouting"])
        #expect(chain.contains("iifname \"pa\"") && chain.contains("download of uplink 1"), "\(chain)")

        // Replies of a voip flow (udp 5060) land in the realtime band of the ifb, those of an unclassified
        // one (udp 9999) in standard; the upload side of the same flows in pa's shaper.
        try f.replies(remote: 5060, clientPort: 40_000, count: 6)
        try f.replies(remote: 9999, clientPort: 40_001, count: 4)
        let classes = try f.classes(ifb)
        #expect(classes["62:10"]?.packets == 6, "\(classes)")
        #expect(classes["62:20"]?.packets == 4, "\(classes)")
        #expect(try steering.shaperStatistics().contains { $0.interface == ifb && $0.sentBytes > 0 })

        // A new download rate: in place, nothing for nf_tables; the counters go on.
        let slower = try steering.apply(f.downloadPlan(rate: 10_000_000))
        #expect(slower.shaperRatesChanged == [ifb] && slower.batchMessages == 0)
        #expect(try f.classes(ifb)["62:1"]?.rate == 1_250_000 && f.classes(ifb)["62:10"]?.packets == 6)

        // Somebody deletes the filter, then the ifb: the drift check puts both back.
        try f.router.check(["tc", "filter", "del", "dev", "lan", "egress", "pref", "6201"])
        #expect(try steering.repairDrift() != nil)
        #expect(try f.router.check(["tc", "filter", "show", "dev", "lan", "egress"]).contains("pref 6201 bpf"))
        try f.router.ip("link", "del", ifb)
        #expect(try steering.repairDrift() != nil)
        _ = try steering.repairDrift() // its htb, once the ifb is back
        #expect(try f.qdiscs(ifb).contains("htb 62: root"))
        let again = try f.router.check(["tc", "filter", "show", "dev", "lan", "egress"])
        #expect(again.contains("Redirect to device \(ifb)"), "\(again)")
        try f.replies(remote: 5060, clientPort: 40_002, count: 3)
        #expect(try f.classes(ifb)["62:10"]?.packets == 3)

        // Download unshaped again: ifb, filter and clsact go; the upload's shaper stays.
        let removed = try steering.apply(f.shapedPlan())
        #expect(removed.shapersRemoved.contains(ifb))
        #expect(throws: (any Error).self) { try f.router.ip("link", "show", ifb) }
        #expect(try !f.router.check(["tc", "qdisc", "show", "dev", "lan"]).contains("clsact"))
        #expect(try f.qdiscs().contains("htb 62: root"))
        #expect(try !f.router.check(["nft", "list", "chain", "ip", "patronus_egress", "postrouting"]).contains("iifname"))

        // removeAll takes the download too.
        try steering.apply(f.downloadPlan())
        try steering.removeAll()
        #expect(throws: (any Error).self) { try f.router.ip("link", "show", ifb) }
        #expect(try !f.router.check(["tc", "qdisc", "show", "dev", "lan"]).contains("clsact"))
    }
}

@Suite struct DownloadShapeChainTests {
    @Test func aDownloadGetsItsUplinksMarkBeforeTheBandRules() throws {
        var plan = SteeringPlan(classes: [.init(id: 1, name: "voip", matches: [TrafficMatch()], band: .realtime)])
        plan.downloadShapers = [.init(slot: 2, tunnels: ["wg-b1", "wg-b0"], lanPrefixes: [IPv4Prefix("10.1.0.0/24")!],
                                      rateBitsPerSecond: 50_000_000)]
        let r = try #require(try SteeringCompiler.compileEgress(plan, interfaceIndex: [:]), "the egress table exists for a download alone")
        let rules = try #require(r.rules[SteeringNames.egressChain])
        // one per tunnel (sorted), then "neither for a tunnel nor a download", the class's band, overlay -> control
        #expect(rules.count == 2 + 3)
        let first = rules[0].expressions
        #expect(first.contains(.cmp(sreg: NFT.reg1, op: NFT.eq, data: SteeringCompiler.interfaceNameKey("wg-b0"))))
        #expect(first.contains(.bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: (~Conventions.uplinkMarkMask).hostBytes,
                                        xor: Conventions.uplinkMark(slot: 2).hostBytes)))
        #expect(rules[2].expressions.contains(.bitwise(sreg: NFT.reg1, dreg: NFT.reg1,
                                                       mask: (Conventions.pathMarkMask | Conventions.uplinkMarkMask).hostBytes,
                                                       xor: [0, 0, 0, 0])))
        #expect(plan.structureProblems().isEmpty)
        // Without downloads the first rule is the old "not for a tunnel" (path bits only).
        var egress = plan
        egress.downloadShapers = []
        egress.shapers = [.init(interface: "wg-b0", rateBitsPerSecond: 10_000_000)]
        #expect(try SteeringCompiler.compileEgress(egress, interfaceIndex: [:])?.rules[SteeringNames.egressChain]?.count == 3)
    }

    @Test func badDownloadShapersAreStructureProblems() {
        let lan = [IPv4Prefix("10.1.0.0/24")!]
        let cases: [SteeringPlan.DownloadShaper] = [
            .init(slot: 0, tunnels: ["wg0"], lanPrefixes: lan, rateBitsPerSecond: 1_000_000),
            .init(slot: 1, tunnels: [], lanPrefixes: lan, rateBitsPerSecond: 1_000_000),
            .init(slot: 1, tunnels: ["wg0"], lanPrefixes: [], rateBitsPerSecond: 1_000_000),
            .init(slot: 1, tunnels: ["wg0"], lanPrefixes: lan, rateBitsPerSecond: 1_000),
        ]
        for d in cases { #expect(SteeringPlan(downloadShapers: [d]).structureProblems().count == 1, "\(d)") }
        let one = SteeringPlan.DownloadShaper(slot: 3, tunnels: ["wg0"], lanPrefixes: lan, rateBitsPerSecond: 1_000_000)
        #expect(SteeringPlan(downloadShapers: [one, one]).structureProblems().count == 1)
        #expect(one.device == "patronus-dl3" && one.shaper.interface == "patronus-dl3")
        #expect(DownloadRedirects.filter(slot: 3, target: 9).preference == 6203)
    }
}

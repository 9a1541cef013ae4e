// Shapers as part of the plan (docs/SHAPING.md): installed over rtnetlink, classes from the steering's
// own classes (meta priority set by the egress table's `postrouting` chain), rates changed in place, drift repaired, removed.
// Verified with `tc -j` and packets counted per htb class. Root tests skip without root.
import Foundation
import Glibc
import Testing
import Lab
import Model
import Netlink
@testable import Steering

extension SteeringFixture {
    /// The fixture's plan with voip in the realtime band, bulk in the bulk band, and a shaper on path 1's
    /// interface `pa`.
    func shapedPlan(rate: UInt64 = 20_000_000) -> SteeringPlan {
        var p = plan(voip: 1, bulk: 1, other: 1)
        p.classes[0].band = .realtime
        p.classes[1].band = .bulk
        p.shapers = [SteeringPlan.Shaper(interface: "pa", rateBitsPerSecond: rate)]
        return p
    }

    /// `tc -s class show dev pa` (iproute2 6.1 has no JSON for htb classes): classid -> (rate in bytes/s,
    /// packets sent).
    func classes(_ dev: String = "pa") throws -> [String: (rate: Double, packets: Double)] {
        let text = try router.check(["tc", "-s", "class", "show", "dev", dev])
        var out: [String: (Double, Double)] = [:]
        var current: String?
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ").map(String.init)
            if words.first == "class", words.count > 2 {
                current = words[2]
                if let i = words.firstIndex(of: "rate"), i + 1 < words.count {
                    out[words[2]] = (Self.bytesPerSecond(words[i + 1]), 0)
                }
            } else if words.first == "Sent", let current, words.count > 3, let packets = Double(words[3]) {
                out[current]?.1 = packets
            }
        }
        return out
    }

    /// "20Mbit" -> 2,500,000 bytes/s.
    static func bytesPerSecond(_ text: String) -> Double {
        let units: [(String, Double)] = [("Gbit", 1e9), ("Mbit", 1e6), ("Kbit", 1e3), ("bit", 1)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            return (Double(text.dropLast(suffix.count)) ?? -1) * scale / 8
        }
        return -1
    }

    func qdiscs(_ dev: String = "pa") throws -> [String] {
        let text = try router.check(["tc", "-j", "qdisc", "show", "dev", dev])
        let list = (try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]]) ?? []
        return list.compactMap { q in
            guard let kind = q["kind"] as? String, let handle = q["handle"] as? String else { return nil }
            return "\(kind) \(handle) \((q["parent"] as? String) ?? "root")"
        }.sorted()
    }
}

@Suite struct ShapeChainTests {
    @Test func theShapeChainExistsOnlyWhileSomethingIsShapedAndMapsBandsToPriorities() throws {
        let plan = SteeringPlan(classes: [
            .init(id: 1, name: "voip", matches: [TrafficMatch()], band: .realtime),
            .init(id: 2, name: "bulk", matches: [TrafficMatch()], band: .bulk),
            .init(id: 3, name: "default", matches: [TrafficMatch()]),
        ])
        #expect(try SteeringCompiler.compileEgress(plan, interfaceIndex: [:]) == nil, "nothing shaped, nothing duplicated: no egress table")
        var shaped = plan
        shaped.shapers = [.init(interface: "wg0", rateBitsPerSecond: 10_000_000)]
        let r = try #require(try SteeringCompiler.compileEgress(shaped, interfaceIndex: [:]))
        #expect(r.table.family == .ip && r.table.name == "patronus_egress")
        #expect(try !SteeringCompiler.compile(shaped).chains.contains { $0.hook?.hook == NFTHook.postrouting }, "the inet table has no postrouting hook")
        let chain = try #require(r.chains.first { $0.name == SteeringNames.egressChain })
        #expect(chain.hook == NFTHook(hook: NFTHook.postrouting, priority: NFTHook.manglePriority, type: "filter"))
        let rules = try #require(r.rules[SteeringNames.egressChain])
        // Every packet: not for a tunnel; the class's band (one lookup); to an overlay address -> shape_control.
        #expect(rules.count == 3)
        #expect(rules[1].expressions.contains(.lookup(sreg: NFT.reg1, set: SteeringNames.bandsMap, setID: nil, dreg: NFT.reg1)))
        #expect(rules[2].expressions.last == .immediate(dreg: NFT.verdictRegister, data: .verdict(.goto(SteeringNames.shapeControlChain))))
        // voip realtime, bulk bulk; default is not in the map (htb's default class).
        let bands = try #require(r.staticSets.first { $0.set.name == SteeringNames.bandsMap })
        #expect(bands.set.dataType == .classID && bands.set.keyType == .mark)
        #expect(bands.elements.map(\.key) == [plan.classes[0].ctMark.hostBytes, plan.classes[1].ctMark.hostBytes])
        #expect(bands.elements.map(\.data) == [.value(UInt32(0x620010).hostBytes), .value(UInt32(0x620030).hostBytes)])
        // Control traffic: bandwidth trains, probes, probe replies, announcements.
        let control = try #require(r.rules[SteeringNames.shapeControlChain])
        let priorities = control.flatMap(\.expressions).compactMap { e -> [UInt8]? in
            if case .immediate(let reg, .value(let v)) = e, reg == NFT.reg1 { return v } else { return nil }
        }
        #expect(priorities == [0x620000, 0x620010, 0x620010, 0x620010].map { UInt32($0).hostBytes })
        // Nothing outside the standard band: no map, no lookup.
        var standard = shaped
        for i in standard.classes.indices { standard.classes[i].band = .standard }
        let plain = try #require(try SteeringCompiler.compileEgress(standard, interfaceIndex: [:]))
        #expect(plain.rules[SteeringNames.egressChain]?.count == 2 && !plain.staticSets.contains { $0.set.name == SteeringNames.bandsMap })
        #expect(SteeringPlan(shapers: [.init(interface: "wg0", rateBitsPerSecond: 1000)]).structureProblems().count == 1)
    }

    @Test func theLayoutSizesQueuesInMillisecondsAtTheRate() {
        let l = ShaperLayout(.init(interface: "wg0", rateBitsPerSecond: 20_000_000))
        #expect(l.classes.map(\.handle.description) == ["62:1", "62:10", "62:20", "62:30"])
        #expect(l.classes.allSatisfy { $0.ceil.bitsPerSecond == 20_000_000 && $0.rate.overhead == Conventions.shaperOverhead })
        #expect(l.classes.map(\.prio) == [0, 0, 1, 2])
        // 20 Mbit/s = 2.5 MB/s: 10 ms = 25 kB (realtime), 50 ms = 125 kB (the others)
        #expect(l.leaves.map(\.kind) == [.bfifo(limitBytes: 25_000), .bfifo(limitBytes: 125_000), .bfifo(limitBytes: 125_000)])
        // At 1 Mbit/s the minimum holds (a few full packets), never a 1000-packet default.
        let slow = ShaperLayout(.init(interface: "wg0", rateBitsPerSecond: 1_000_000))
        #expect(slow.leaves.first?.kind == .bfifo(limitBytes: Conventions.shaperMinimumQueueBytes))
    }
}

@Suite(.serialized) struct ShapingRootTests {
    @Test(.enabled(if: isRoot)) func rootShaperIsInstalledClassifiesChangesInPlaceIsRepairedAndRemoved() throws {
        let f = try SteeringFixture()
        let steering = try f.steering()
        let changes = try steering.apply(f.shapedPlan())
        #expect(changes.shapersInstalled == ["pa"] && changes.shaperProblems.isEmpty)
        #expect(try f.qdiscs() == ["bfifo 6210: 62:10", "bfifo 6220: 62:20", "bfifo 6230: 62:30", "htb 62: root"])
        let classes = try f.classes()
        #expect(Set(classes.keys) == ["62:1", "62:10", "62:20", "62:30"])
        #expect(classes["62:1"]?.rate == 2_500_000)
        let chain = try f.router.check(["nft", "list", "chain", "ip", "patronus_egress", "postrouting"])
        #expect(chain.contains("hook postrouting") && chain.contains("meta priority set ct mark & 0x00ff0000 map @class_bands"), "\(chain)")
        let bands = try f.router.check(["nft", "list", "map", "ip", "patronus_egress", "class_bands"])
        #expect(bands.contains("type mark : classid") && bands.contains("62:10") && bands.contains("62:30"), "\(bands)")

        // Each class's packets land in its band: voip (udp 5060) realtime, bulk (tcp 873) bulk, the rest
        // (udp 9999) standard; a locally sent packet to the bandwidth port of an overlay address goes unshaped
        // (htb direct), one to the probe port realtime; to any other address the ports mean nothing.
        _ = try f.router.check(["ip", "route", "add", "10.99.0.0/16", "via", "192.0.2.2", "dev", "pa"])
        try f.sendUDP(from: f.client, port: 5060, count: 7)
        try f.sendTCPSyn(from: f.client, port: 873)
        try f.sendUDP(from: f.client, port: 9999, count: 3)
        try f.sendUDP(from: f.client, port: Conventions.bandwidthPort, count: 2)
        try f.sendUDP(from: f.router, port: Conventions.bandwidthPort, count: 4, mark: Conventions.pathMark(slot: 1), to: "10.99.0.7")
        try f.sendUDP(from: f.router, port: Conventions.probePort, count: 2, mark: Conventions.pathMark(slot: 1), to: "10.99.0.7")
        #expect(try f.count(f.peer1, "voip") == 7)
        let sent = try f.classes()
        #expect(sent["62:10"]?.packets == 9, "7 voip and 2 probes")
        #expect((sent["62:30"]?.packets ?? 0) >= 1)
        #expect((5...7).contains(sent["62:20"]?.packets ?? 0), "5 datagrams and perhaps an ARP request or two")
        let stats = try #require(try steering.shaperStatistics().first)
        #expect(stats.interface == "pa" && stats.bands.first { $0.band == .realtime }?.sentPackets == 9)
        let direct = try f.router.check(["tc", "-s", "qdisc", "show", "dev", "pa"])
        #expect(direct.contains("direct_packets_stat 4"), "\(direct)")

        // A new rate: classes changed in place (their counters survive), nothing sent to nf_tables.
        let slower = try steering.apply(f.shapedPlan(rate: 10_000_000))
        #expect(slower.shaperRatesChanged == ["pa"] && slower.batchMessages == 0 && slower.shapersInstalled.isEmpty)
        let after = try f.classes()
        #expect(after["62:1"]?.rate == 1_250_000 && after["62:10"]?.packets == 9)

        // Somebody deletes it, or changes a rate: the drift check puts ours back.
        try f.router.check(["tc", "qdisc", "del", "dev", "pa", "root"])
        let repaired = try #require(try steering.repairDrift())
        #expect(repaired.shapersInstalled == ["pa"] && !repaired.shaperDrift.isEmpty)
        #expect(try f.classes()["62:1"]?.rate == 1_250_000)
        try f.router.check(["tc", "class", "change", "dev", "pa", "parent", "62:1", "classid", "62:30", "htb", "rate", "1mbit", "ceil", "1mbit"])
        #expect(try steering.repairDrift()?.shapersInstalled == ["pa"])
        #expect(try f.classes()["62:30"]?.rate == 250_000) // 20 % of 10 Mbit/s again
        #expect(try steering.repairDrift() == nil)

        // A restart adopts the intact shaper without touching it (its counters go on).
        try f.sendUDP(from: f.client, port: 5060, count: 2)
        let beforeRestart = try f.classes()["62:10"]?.packets
        #expect((beforeRestart ?? 0) >= 2)
        let restarted = try f.steering()
        #expect(try restarted.apply(f.shapedPlan(rate: 10_000_000)).shaperProblems.isEmpty)
        #expect(try f.classes()["62:10"]?.packets == beforeRestart)

        // A tunnel that does not exist yet is skipped (shaped once it exists); routing is applied anyway.
        var missing = f.shapedPlan(rate: 10_000_000)
        missing.shapers.append(.init(interface: "nope0", rateBitsPerSecond: 5_000_000))
        let skipped = try restarted.apply(missing)
        #expect(skipped.shaperProblems.isEmpty && skipped.shapersInstalled.isEmpty)
        // It appears: the next drift check shapes it, quietly (not somebody else's change); recreated, again.
        for _ in 0..<2 {
            _ = try? f.router.ip("link", "del", "nope0")
            try f.router.ip("link", "add", "nope0", "type", "veth", "peer", "name", "nope1")
            #expect(try restarted.repairDrift() == nil)
            #expect(try f.qdiscs("nope0").contains("htb 62: root"))
        }

        // Unshaped again: the egress table and our qdisc go, the interface gets its default qdisc back.
        var unshaped = f.shapedPlan()
        unshaped.shapers = []
        let removed = try restarted.apply(unshaped)
        #expect(removed.shapersRemoved == ["nope0", "pa"])
        #expect(try !f.qdiscs().contains { $0.hasPrefix("htb 62:") })
        #expect(try !f.router.check(["nft", "list", "tables"]).contains("patronus_egress"))
        try restarted.removeAll()
    }

    /// A restart whose plan no longer shapes a tunnel (killed while shaped, restarted with shape=off) takes
    /// the last run's htb off it; an htb with our handle on an interface that is not a tunnel of the plan stays.
    @Test(.enabled(if: isRoot)) func rootARestartThatNoLongerShapesATunnelRemovesTheLastRunsShaper() throws {
        let f = try SteeringFixture()
        try f.steering().apply(f.shapedPlan())
        #expect(try f.qdiscs().contains("htb 62: root"))
        try f.router.ip("link", "add", "fx0", "type", "veth", "peer", "name", "fx1")
        try f.router.check(["tc", "qdisc", "add", "dev", "fx0", "root", "handle", "62:", "htb"])
        var unshaped = f.shapedPlan()
        unshaped.shapers = []
        let restarted = try f.steering()
        let changes = try restarted.apply(unshaped)
        #expect(changes.shapersRemoved == ["pa"] && changes.shaperProblems.isEmpty, "\(changes)")
        #expect(try !f.qdiscs().contains { $0.hasPrefix("htb 62:") })
        #expect(try f.qdiscs("fx0").contains("htb 62: root"), "not a tunnel of ours: left alone")
        #expect(try restarted.apply(unshaped).shapersRemoved.isEmpty, "checked once")
        try restarted.removeAll()
    }

    @Test(.enabled(if: isRoot)) func rootRemoveAllTakesTheShapersToo() throws {
        let f = try SteeringFixture()
        let steering = try f.steering()
        try steering.apply(f.shapedPlan())
        let c = try steering.removeAll()
        #expect(c.shapersRemoved == ["pa"])
        #expect(try !f.qdiscs().contains { $0.hasPrefix("htb 62:") })
    }
}

import Foundation
import Glibc
import Testing
import Lab
import Model
import Netlink
@testable import Steering

@Suite struct FlowHashTests {
    /// Bob Jenkins' own check values for lookup3's hashlittle (lookup3.c, driver2/driver5), which the
    /// kernel's jhash is: empty keys, and a 30-byte key that runs one mix round and a 6-byte tail.
    @Test func jhashGivesLookup3sPublishedValues() {
        #expect(FlowHash.jhash([], seed: 0) == 0xdead_beef)
        #expect(FlowHash.jhash([], seed: 0xdead_beef) == 0xbd5b_7dde)
        let key = Array("Four score and seven years ago".utf8)
        #expect(FlowHash.jhash(key, seed: 0) == 0x1777_0551)
        #expect(FlowHash.jhash(key, seed: 1) == 0xcd62_8161)
    }

    @Test func scaleIsTheKernelsReciprocalScaleNotARemainder() {
        #expect(FlowHash.scale(0, 16) == 0)
        #expect(FlowHash.scale(0xffff_ffff, 16) == 15)
        #expect(FlowHash.scale(0x8000_0000, 16) == 8)
        #expect(FlowHash.scale(0x1000_0001, 16) == 1)
        #expect(FlowHash.scale(0x0000_0011, 16) == 0) // a remainder would give 1
    }
}

@Suite struct InstalledSteeringTests {
    static let site = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000b1")!)
    static let other = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000b2")!)
    static let spread: [UInt16] = (0..<16).map { $0 % 3 == 0 ? 2 : 1 }

    /// Two sites with adjacent prefixes; voip on path 2, bulk load-balanced over 16 buckets, default on path 1; the other site
    /// has its own path 3.
    static func plan() -> SteeringPlan {
        SteeringPlan(
            classes: [.init(id: 1, name: "voip", matches: [TrafficMatch(services: [ServiceMatch(.udp, [PortRange(5060, 5061)])])]),
                      .init(id: 2, name: "bulk", matches: [TrafficMatch(services: [ServiceMatch(.tcp, [PortRange(873)])])]),
                      .init(id: 3, name: "default", matches: [TrafficMatch()])],
            paths: [.init(slot: 1, interface: "wg0", site: site), .init(slot: 2, interface: "wg1", site: site),
                    .init(slot: 3, interface: "wg0", site: other)],
            destinations: [.init(site: site, name: "branch", prefixes: [IPv4Prefix("10.20.0.0/16")!, IPv4Prefix("10.99.0.7/32")!], index: 5),
                           .init(site: other, name: "east", prefixes: [IPv4Prefix("10.30.0.0/24")!, IPv4Prefix("10.21.0.0/16")!])],
            choices: [.init(site: site, classID: 1, target: .path(2)), .init(site: site, classID: 2, target: .buckets(spread)),
                      .init(site: site, classID: 3, target: .path(1)), .init(site: other, classID: 1, target: .path(3)),
                      .init(site: other, classID: 3, target: .path(3))])
    }

    /// What a dump of the compiled ruleset returns: every rule through its netlink bytes and back.
    static func installed(_ plan: SteeringPlan) throws -> InstalledSteering {
        let ruleset = try SteeringCompiler.compile(plan)
        var rules: [NFTables.ListedRule] = []
        for chain in ruleset.chains {
            for rule in ruleset.rules[chain.name] ?? [] {
                if let listed = try NFTables.parseRule(NFTables.newRule(rule)) { rules.append(listed) }
            }
        }
        var elements: [String: [NFTElement]] = [:]
        for map in ruleset.maps { elements[map.set.name] = map.elements.reversed() } // dumps come in any order
        for set in ruleset.staticSets where set.set.flags & NFTSet.flagMap != 0 { elements[set.set.name] = set.elements.reversed() }
        return InstalledSteering(chains: ruleset.chains, rules: rules, mapElements: elements)
    }

    @Test func followsEveryPacketTheWayTheCompiledRulesetDoes() throws {
        let plan = Self.plan()
        let kernel = try Self.installed(plan)
        #expect(kernel.classMarks == ["voip": plan.classes[0].ctMark, "bulk": plan.classes[1].ctMark,
                                      "default": plan.classes[2].ctMark])
        #expect(kernel.siteChain(for: IPv4Address("10.20.255.1")!) == "site_branch")
        #expect(kernel.siteChain(for: IPv4Address("10.99.0.7")!) == "site_branch")
        #expect(kernel.siteChain(for: IPv4Address("10.99.0.8")!) == nil)
        #expect(kernel.siteChain(for: IPv4Address("10.30.0.255")!) == "site_east")
        // 10.21.0.0/16 starts where branch's 10.20.0.0/16 ends: one key is an end and a start.
        #expect(kernel.siteChain(for: IPv4Address("10.20.255.255")!) == "site_branch")
        #expect(kernel.siteChain(for: IPv4Address("10.21.0.0")!) == "site_east")
        #expect(kernel.siteChain(for: IPv4Address("10.21.255.255")!) == "site_east")
        #expect(kernel.siteChain(for: IPv4Address("10.22.0.0")!) == nil)
        for path in plan.paths {
            for c in plan.classes {
                #expect(kernel.chainMarks[SteeringNames.classPathChain(c.name, path.id)] == path.mark)
            }
        }
        let from = IPv4Address("10.1.0.2")!, to = IPv4Address("10.20.0.5")!
        let voip = kernel.decide(siteChain: "site_branch", classMark: plan.classes[0].ctMark, source: from, destination: to)
        // Its later packets: the ct mark with branch's index 5 is the key of the `flows` element of the same path.
        #expect(voip == .init(siteChain: "site_branch", pathChain: SteeringNames.classPathChain("voip", 2), mark: plan.paths[1].mark,
                              flowKey: Conventions.siteMark(index: 5) | plan.classes[0].ctMark,
                              establishedChain: SteeringNames.classPathChain("voip", 2)))
        // east has no index: no key, its flows take the `sites` way every packet.
        let eastVoip = try #require(kernel.decide(siteChain: "site_east", classMark: plan.classes[0].ctMark, source: from,
                                                  destination: IPv4Address("10.30.0.5")!))
        #expect(eastVoip.pathChain == SteeringNames.classPathChain("voip", 3) && eastVoip.flowKey == nil
                && eastVoip.establishedChain == nil)
        #expect(kernel.decide(siteChain: "site_east", classMark: plan.classes[1].ctMark, source: from, destination: to) == nil,
                "bulk has no choice to east")
        #expect(kernel.pathChains(siteChain: "site_branch", classMark: plan.classes[1].ctMark)
                == [SteeringNames.classPathChain("bulk", 1), SteeringNames.classPathChain("bulk", 2)])
        #expect(kernel.bucketShares(siteChain: "site_branch", classMark: plan.classes[1].ctMark)
                == [SteeringNames.classPathChain("bulk", 1): 10, SteeringNames.classPathChain("bulk", 2): 6])
        // The balanced class: the bucket is the kernel's hash of the addresses, and its element's path.
        var seen = Set<UInt16>()
        for host in 1...40 {
            let source = IPv4Address(10, 1, 0, UInt8(host))
            let bucket = FlowHash.bucket(source: source, destination: to, modulus: 16) + 1 // buckets are 1...16
            let decision = try #require(kernel.decide(siteChain: "site_branch", classMark: plan.classes[1].ctMark,
                                                      source: source, destination: to))
            let slot = Self.spread[Int(bucket) - 1]
            seen.insert(slot)
            #expect(decision.balance?.bucket == bucket && decision.balance?.buckets == 16
                    && decision.balance?.seed == SteeringNames.hashSeed)
            #expect(decision.pathChain == SteeringNames.classPathChain("bulk", Int64(slot)))
            #expect(decision.mark == Conventions.pathMark(slot: slot))
            // The bucket's bits are in the flow's key, and `flows` sends it to the same path.
            #expect(decision.flowKey == Conventions.siteMark(index: 5) | plan.classes[1].ctMark | bucket << 8)
            #expect(decision.establishedChain == decision.pathChain)
        }
        #expect(seen == [1, 2])
    }

    /// A `flows` element that sends a class elsewhere than its site map (what a half-applied change or a hand
    /// edit would leave) is read as such: explain reports it as a disagreement.
    @Test func aFlowsElementThatDisagreesWithTheSiteMapIsRead() throws {
        let plan = Self.plan()
        var kernel = try Self.installed(plan)
        let key = Conventions.siteMark(index: 5) | plan.classes[0].ctMark
        kernel.maps[SteeringNames.flowsMap]?[key] = SteeringNames.classPathChain("voip", 1)
        let voip = try #require(kernel.decide(siteChain: "site_branch", classMark: plan.classes[0].ctMark,
                                              source: IPv4Address("10.1.0.2")!, destination: IPv4Address("10.20.0.5")!))
        #expect(voip.pathChain == SteeringNames.classPathChain("voip", 2))
        #expect(voip.flowKey == key && voip.establishedChain == SteeringNames.classPathChain("voip", 1))
        kernel.maps[SteeringNames.flowsMap]?[key] = nil
        #expect(kernel.decide(siteChain: "site_branch", classMark: plan.classes[0].ctMark, source: IPv4Address("10.1.0.2")!,
                              destination: IPv4Address("10.20.0.5")!)?.establishedChain == nil)
    }

    @Test func aMissingTableReadsAsNothing() {
        let empty = InstalledSteering()
        #expect(!empty.tableExists && empty.siteChain(for: IPv4Address("10.20.0.1")!) == nil)
    }
}

@Suite(.serialized) struct KernelSteeringReaderRootTests {
    /// The installed table, read back over netlink, predicts for every source which path the load-balanced
    /// class's packets take (the jhash bucket), and a route lookup with the mark it names leaves by that
    /// path's interface: each prediction is checked against where the real packets arrive.
    @Test(.enabled(if: isRoot)) func rootTheReaderPredictsThePathOfEveryRealPacket() throws {
        let f = try SteeringFixture()
        let sources = (10..<30).map { IPv4Address(10, 1, 0, UInt8($0)) }
        for s in sources { try f.client.ip("addr", "add", "\(s)/32", "dev", "lan0") }
        let steering = try f.steering()
        let spread: [UInt16] = (0..<16).map { $0 % 3 == 0 ? 2 : 1 }
        let plan = f.plan(voip: 2, bulk: 1, otherTarget: .buckets(spread))
        try steering.apply(plan)
        let kernel = try InstalledSteering.read(NFTablesClient(netns: f.router.name))
        let routing = try RouteNetlinkClient(netns: f.router.name)
        let destination = IPv4Address("10.20.0.5")!
        let site = try #require(kernel.siteChain(for: destination))
        let lan = try routing.link(named: "lan").index
        var used = Set<String>()
        for source in sources {
            let decision = try #require(kernel.decide(siteChain: site, classMark: plan.classes[2].ctMark, source: source,
                                                      destination: destination))
            #expect(decision.flowKey != nil && decision.establishedChain == decision.pathChain,
                    "\(source): later packets by \(decision.establishedChain ?? "none") (flows), first by \(decision.pathChain)")
            let route = try routing.lookup(destination: destination.value, source: source.value, inputInterface: lan,
                                           mark: decision.mark)
            let interface = try routing.link(index: try #require(route.outputInterface)).name
            #expect(route.table == plan.paths.first { $0.mark == decision.mark }?.table)
            used.insert(interface)
            let before = (try f.count(f.peer1, "other"), try f.count(f.peer2, "other"))
            try f.sendUDP(from: f.client, port: 9999, count: 3, source: source.description)
            let after = (try f.count(f.peer1, "other"), try f.count(f.peer2, "other"))
            let arrived = after.0 - before.0 == 3 ? "pa" : after.1 - before.1 == 3 ? "pb" : "?"
            #expect(arrived == interface, "\(source): predicted \(decision.pathChain) -> \(interface), packets arrived by \(arrived)")
        }
        #expect(used == ["pa", "pb"], "20 sources all hashed to one path: the test would not tell the hash apart")
        // The single-path classes: voip on path 2 (pb), bulk on path 1 (pa).
        let voip = try #require(kernel.decide(siteChain: site, classMark: plan.classes[0].ctMark, source: sources[0],
                                              destination: destination))
        let voipRoute = try routing.lookup(destination: destination.value, mark: voip.mark)
        #expect(try routing.link(index: try #require(voipRoute.outputInterface)).name == "pb")
        try steering.removeAll()
        #expect(try !InstalledSteering.read(NFTablesClient(netns: f.router.name)).tableExists)
    }
}

@Suite struct SteeringLookupTests {
    /// The two-level layout: a path mark matches its group's `goto`, then its slot's `lookup`; foreign rules,
    /// other groups and the unsteered jump are not on its way.
    @Test func theRulesAMarkTakesToItsTable() {
        let p = Conventions.steeringProtocol
        let slot: UInt16 = 70, mark = Conventions.pathMark(slot: 70)
        let rules = [
            IPRule(priority: 100, fwmark: mark, fwmask: Conventions.pathMarkMask, table: 99, protocolTag: 0), // foreign
            IPRule(priority: Conventions.unsteeredRulePriority, fwmark: 0, fwmask: Conventions.pathMarkMask,
                   action: .goto(Conventions.bandEndPriority), protocolTag: p),
            IPRule(priority: Conventions.pathGroupRulePriority, fwmark: Conventions.pathGroupMark(group: 0),
                   fwmask: Conventions.pathGroupMask, action: .goto(6211), protocolTag: p),
            IPRule(priority: Conventions.pathGroupRulePriority, fwmark: Conventions.pathGroupMark(group: 1),
                   fwmask: Conventions.pathGroupMask, action: .goto(6212), protocolTag: p),
            IPRule(priority: Conventions.pathRulePriority(slot: 69), fwmark: Conventions.pathMark(slot: 69),
                   fwmask: Conventions.pathMarkMask, table: Conventions.pathTable(slot: 69), protocolTag: p),
            IPRule(priority: Conventions.pathRulePriority(slot: slot), fwmark: mark, fwmask: Conventions.pathMarkMask,
                   table: Conventions.pathTable(slot: slot), protocolTag: p),
        ]
        #expect(SteeringLookup.rulesTaken(by: mark, to: Conventions.pathTable(slot: slot), in: rules)
                == ["6210: fwmark 0x00400000/0x0fc00000 goto 6212", "6212: fwmark 0x00460000/0x0fff0000 lookup 6270"])
        #expect(SteeringLookup.rulesTaken(by: mark, to: 254, in: rules).isEmpty)
    }
}

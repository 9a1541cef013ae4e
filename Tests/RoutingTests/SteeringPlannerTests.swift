import Foundation
import Testing
@testable import Model
@testable import Routing

private let east = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000e1")!)
private let west = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000e2")!)

@Suite struct StableNumberingTests {
    @Test func keepsNumbersAndReusesReleasedOnesLast() {
        var numbers = StableNumbering<String, UInt8>(range: 1...3)
        #expect(numbers.update(["voip", "bulk"]) == ["voip": 1, "bulk": 2])
        #expect(numbers.update(["bulk", "voip", "default"]) == ["voip": 1, "bulk": 2, "default": 3])
        // "bulk" goes away; a new name gets its number only because the range is exhausted.
        #expect(numbers.update(["voip", "default", "video"]) == ["voip": 1, "default": 3, "video": 2])
        // Exhausted: a fourth name gets nothing rather than a number in use.
        let full = numbers.update(["voip", "default", "video", "extra"])
        #expect(full["extra"] == nil)
        #expect(Set(full.values).count == full.count)
    }

    /// A path prefers its database id as its slot, so that marks and tables read like the id; a taken or
    /// out-of-range preference falls back to the next free number, and a kept name never moves.
    @Test func aPreferredNumberIsTakenWhenFree() {
        var numbers = StableNumbering<String, UInt16>(range: 1...4094)
        let ids = ["a": 7, "b": 3, "c": 7, "d": 5000]
        #expect(numbers.update(["a", "b", "c", "d"], preferring: { ids[$0] }) == ["a": 7, "b": 3, "c": 1, "d": 2])
        // "b" leaves, "e" prefers 3: free again, so it gets it; the others keep theirs.
        #expect(numbers.update(["a", "c", "d", "e"], preferring: { ["e": 3][$0] ?? ids[$0] })
            == ["a": 7, "c": 1, "d": 2, "e": 3])
        // Never-used numbers come before released ones, skipping the ones taken by preference.
        #expect(numbers.update(["a", "c", "d", "e", "f", "g", "h", "i"])
            == ["a": 7, "c": 1, "d": 2, "e": 3, "f": 4, "g": 5, "h": 6, "i": 8])
    }

    /// 4094 paths fit; the 4095th gets no slot (and the runtime logs it) rather than a number in use.
    @Test func pathSlotsReachTheDocumentedLimit() {
        var numbers = StableNumbering<Int, UInt16>(range: 1...Int(Conventions.pathSlots.upperBound))
        let all = numbers.update(0..<4095)
        #expect(all.count == 4094)
        #expect(Set(all.values).count == 4094)
        #expect(all.values.allSatisfy { Conventions.pathSlots.contains($0) })
    }
}

@Suite struct SteeringPlannerTests {
    @Test func buildsAValidPlanFromSelections() throws {
        let voip = Policy(name: "voip", priority: 10, match: TrafficMatch(services: [ServiceMatch(.udp, [PortRange(5060, 5061)])]),
                          strategy: .lowestLatency)
        let fallback = Policy(name: "default", priority: 1000, strategy: .bestScore)
        var off = Policy(name: "off", priority: 5, strategy: .bestScore)
        off.enabled = false
        let a = PathKey(site: east, localLabel: "isp-a", remoteLabel: "isp-a")
        let b = PathKey(site: east, localLabel: "isp-b", remoteLabel: "isp-b")
        let paths = [PathBinding(key: b, slot: 2, interface: "wg-hq1"), PathBinding(key: a, slot: 1, interface: "wg-hq0")]
        let sites = [RemoteSite(id: east, name: "east", prefixes: [IPv4Prefix("10.99.0.2/32")!, IPv4Prefix("192.168.20.0/24")!]),
                     RemoteSite(id: west, name: "west", prefixes: [IPv4Prefix("10.99.0.3/32")!])]
        let selections: [SelectionKey: Selection] = [
            SelectionKey(site: east, policy: "voip"): .single(a),
            SelectionKey(site: east, policy: "default"): .buckets(Array(repeating: [a, b, b, a], count: 4).flatMap { $0 }),
        ]
        let plan = SteeringPlanner.plan(policies: [fallback, off, voip], classIDs: ["voip": 1, "default": 2, "off": 3],
                                        sites: sites, paths: paths, selections: selections, siteIndexes: [east: 9, west: 10])
        #expect(plan.problems() == [])
        #expect(plan.destinations.map(\.index) == [9], "each site's index, for its flows' ct mark")
        #expect(plan.classes.map(\.name) == ["voip", "default"])
        #expect(plan.paths.map(\.slot) == [1, 2])
        #expect(plan.paths.map(\.id) == [1, 2], "without a database, a path's id is its slot")
        #expect(plan.destinations.map(\.name) == ["east"], "west has no path yet")
        #expect(plan.choices == [
            SteeringPlan.Choice(site: east, classID: 1, target: .path(1)),
            SteeringPlan.Choice(site: east, classID: 2, target: .buckets(Array(repeating: [1, 2, 2, 1], count: 4).flatMap { $0 })),
        ])
    }
}

@Suite struct RuleNameTests {
    @Test func siteNamesBecomeValidUniqueRuleNames() {
        var used = Set<String>()
        let names = ["branch.east", "1st-site", "branch_east", String(repeating: "x", count: 63)].map {
            SteeringPlanner.ruleName(for: RemoteSite(id: SiteID(), name: $0, prefixes: []), avoiding: &used)
        }
        #expect(names[0] == "branch_east")
        #expect(names[1] == "s1st-site")
        #expect(names[2] == "branch_east_2")
        #expect(names.allSatisfy { Policy.isValidName($0) })
    }
}

/// A site's index in its flows' ct mark: the same for the same site in every run (a flow that outlives a
/// restart finds its site again), spread over 1...255, and a plan refuses two sites with one index.
@Suite struct SiteIndexTests {
    @Test func aSitePrefersTheSameIndexInEveryRunAndIndexesAreChecked() {
        #expect(Conventions.preferredSiteIndex(east) == Conventions.preferredSiteIndex(SiteID(east.uuid)))
        let many = (0..<2000).map { _ in Conventions.preferredSiteIndex(SiteID()) }
        #expect(many.allSatisfy { Conventions.siteIndexes.contains(UInt8($0)) })
        #expect(Set(many).count > 200, "spread over the range")
        #expect(Conventions.siteMark(index: 255) == 0xff00_0000 && Conventions.siteMark(index: 1) == 0x0100_0000)
        #expect(Conventions.siteMark(index: 1) & (Conventions.classMarkMask | Conventions.bucketMarkMask) == 0)

        var numbers = StableNumbering<SiteID, UInt8>(range: 1...255)
        let first = numbers.update([east, west], preferring: Conventions.preferredSiteIndex)
        #expect(first[east].map(Int.init) == Conventions.preferredSiteIndex(east))

        let twice = SteeringPlan(destinations: [.init(site: east, name: "east", prefixes: [IPv4Prefix("10.1.0.0/16")!], index: 4),
                                                .init(site: west, name: "west", prefixes: [IPv4Prefix("10.2.0.0/16")!], index: 4)])
        #expect(twice.problems().contains("site index 4 is used twice"))
        let zero = SteeringPlan(destinations: [.init(site: east, name: "east", prefixes: [IPv4Prefix("10.1.0.0/16")!], index: 0)])
        #expect(zero.problems().contains { $0.contains("index 0 is not in") })
    }
}

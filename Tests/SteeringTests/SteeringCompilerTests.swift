// Tests of the compiler and the diff, without root. Golden hex comes from
// scripts/capture-netlink.py (see Tests/NetlinkTests/NetlinkGoldenTests.swift for the method).
import Foundation
import Testing
import Model
import Netlink
@testable import Steering

func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }
/// The attribute tree of a captured payload given in hex.
func tree(_ hex: String) -> String {
    var bytes: [UInt8] = []
    var i = hex.startIndex
    while let j = hex.index(i, offsetBy: 2, limitedBy: hex.endIndex), i != j { bytes.append(UInt8(hex[i..<j], radix: 16)!); i = j }
    return NFTables.attributeTree(bytes)
}

let siteB = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000b1")!)
let siteC = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000c1")!)

/// The plan of the reference ruleset (rules/reference-ruleset.nft): the seed's default policies over two
/// paths to one branch, plus a load-balanced class to a second site.
func referencePlan(voip: UInt16 = 1, buckets: [UInt16] = (0..<16).map { $0 % 2 == 0 ? 3 : 4 }) -> SteeringPlan {
    SteeringPlan(
        classes: [
            .init(id: 1, name: "voip", matches: [TrafficMatch(services: [ServiceMatch(.udp, [PortRange(5060, 5061), PortRange(16384, 32767)]),
                                                                       ServiceMatch(.tcp, [PortRange(5060, 5061)])])]),
            .init(id: 2, name: "bulk", matches: [TrafficMatch(services: [ServiceMatch(.tcp, [PortRange(20, 21), PortRange(873)])])]),
            .init(id: 3, name: "video", matches: [TrafficMatch(dscp: [34, 46], destinations: [IPv4Prefix("10.30.8.0/24")!])]),
            .init(id: 4, name: "default", matches: [TrafficMatch()]),
        ],
        paths: [
            .init(slot: 1, interface: "wg-b-isp", site: siteB, summary: "branch via isp (eth1) to isp 198.51.100.20:51820"),
            .init(slot: 2, interface: "wg-b-lte", site: siteB, summary: "branch via lte (wwan0) to lte 203.0.113.20:51830"),
            .init(slot: 3, interface: "wg-c-isp", site: siteC, summary: "depot via isp (eth1) to isp 198.51.100.30:51820"),
            .init(slot: 4, interface: "wg-c-lte", site: siteC, summary: "depot via lte (wwan0) to lte 203.0.113.30:51830"),
        ],
        destinations: [
            .init(site: siteB, name: "branch", prefixes: [IPv4Prefix("10.20.0.0/16")!, IPv4Prefix("10.99.2.0/24")!], index: 1),
            .init(site: siteC, name: "depot", prefixes: [IPv4Prefix("10.30.0.0/16")!], index: 2),
        ],
        choices: [
            .init(site: siteB, classID: 1, target: .path(voip)),
            .init(site: siteB, classID: 2, target: .path(2)),
            .init(site: siteB, classID: 4, target: .path(1)),
            .init(site: siteC, classID: 1, target: .path(3)),
            .init(site: siteC, classID: 3, target: .path(4)),
            .init(site: siteC, classID: 4, target: .buckets(buckets)),
        ])
}

private extension NFTExpression {
    var isMetaSet: Bool { if case .metaSet = self { true } else { false } }
}

@Suite struct SteeringCompilerTests {
    // scripts/capture-netlink.py 'nft add table inet patronus' -- nft add set inet patronus voip_svc
    //   '{ type inet_proto . inet_service; flags interval; comment "policy voip: protocol . port"; }'  (and _dst, _dscp)
    @Test func classSetsAreDeclaredExactlyAsNftDeclaresThem() throws {
        let plan = SteeringPlan(classes: [.init(id: 1, name: "voip", matches: [TrafficMatch(
            services: [ServiceMatch(.udp, [PortRange(5060, 5061)]), ServiceMatch(.tcp, [PortRange(873)])],
            dscp: [46, 8], destinations: [IPv4Prefix("10.1.0.0/16")!, IPv4Prefix("10.2.0.0/16")!, IPv4Prefix("192.168.0.0/24")!])])])
        let r = try SteeringCompiler.compile(plan)
        func set(_ name: String) -> SteeringRuleset.StaticSet { r.staticSets.first { $0.set.name == name }! }
        func payload(_ s: NFTSet) -> String { var s = s; s.id = 1; return hex(NFTables.newSet(s).payload) }
        #expect(payload(set("voip_svc").set) == "010000000d000100706174726f6e757300000000" + "0d000200766f69705f737663000000000800030000000084080004000000030d080005000000000808000a0000000001200009801c0002800c00018008000100000000010c000180080001000000000233000d00000400000000030800040d0000000100071d706f6c69637920766f69703a2070726f746f636f6c202e20706f72740000")
        #expect(payload(set("voip_dst").set) == "010000000d000100706174726f6e757300000000" + "0d000200766f69705f6473740000000008000300000000040800040000000007080005000000000408000a00000000012e000d000004020000000722706f6c69637920766f69703a2064657374696e6174696f6e207072656669786573000000")
        #expect(payload(set("voip_dscp").set) == "010000000d000100706174726f6e757300000000" + "0e000200766f69705f6473637000000008000300000000000800040000000024080005000000000108000a00000000011e000d000004020000000712706f6c69637920766f69703a2044534350000000")
        // nft add element inet patronus voip_dst '{ 10.1.0.0/16, 10.2.0.0/16, 192.168.0.0/24 }' (set id 2 in nft's cache)
        // (libnftnl writes the table name after the set's; nft before: see NetlinkGoldenTests)
        #expect(NFTables.attributeTree(NFTables.elements(set("voip_dst").elements, family: .inet, table: "patronus", set: "voip_dst", setID: 2).payload)
                == tree("010000000d000100706174726f6e7573000000000d000200766f69705f647374000000000800040000000002940003801800018008000300000000010c0001800800010000000000100002800c000180080001000a0100001800038008000300000000010c000180080001000a020000100004800c000180080001000a0200001800058008000300000000010c000180080001000a030000100006800c00018008000100c0a800001800078008000300000000010c00018008000100c0a80100"))
        // nft add element inet patronus voip_svc '{ udp . 5060-5061, tcp . 873 }' (set id 1)
        #expect(NFTables.attributeTree(NFTables.elements(set("voip_svc").elements, family: .inet, table: "patronus", set: "voip_svc", setID: 1).payload)
                == tree("010000000d000100706174726f6e7573000000000d000200766f69705f7376630000000008000400000000014c00038024000180100001800c0001001100000013c4000010000a800c0001001100000013c5000024000280100001800c000100060000000369000010000a800c0001000600000003690000"))
        #expect(set("voip_dscp").elements.map(\.key) == [[8], [46]])
    }

    // nft add map inet patronus lb_default_branch '{ type mark : verdict; comment "class default to branch: flow hash bucket -> path"; }'
    @Test func bucketMapIsDeclaredAsNftDeclaresATypeMarkMap() throws {
        var plan = referencePlan()
        plan.destinations[1].name = "branch"
        plan.destinations[0].name = "hq"
        let r = try SteeringCompiler.compile(plan)
        var map = r.maps.first { $0.set.name == "lb_default_branch" }!.set
        map.id = 1
        #expect(hex(NFTables.newSet(map).payload) == "010000000d000100706174726f6e757300000000160002006c625f64656661756c745f6272616e636800000008000300000000080800040000000013080005000000000408000600ffffff00080007000000000008000a00000000014a000d000004010000000104000000000604000000000732636c6173732064656661756c7420746f206272616e63683a20666c6f772068617368206275636b6574202d3e2070617468000000")
    }

    // scripts/capture-netlink.py 'nft add table inet patronus; nft add chain inet patronus site_branch' --
    //   nft add map inet patronus sites '{ type ipv4_addr : verdict; flags interval; comment "remote prefix -> site";
    //   elements = { 10.20.0.0/16 : goto site_branch, 10.99.2.0/24 : goto site_branch } }'
    // and: nft add rule inet patronus site_branch ct mark & 0x00ff1f00 vmap @site_branch (set id 1): the class and
    //   the flow's bucket
    @Test func sitesMapAndSiteChainAreWhatNftSends() throws {
        var plan = referencePlan()
        plan.destinations.removeLast()
        plan.choices.removeAll { $0.site == siteC }
        plan.paths.removeAll { $0.site == siteC }
        let r = try SteeringCompiler.compile(plan)
        let sites = r.staticSets.first { $0.set.name == "sites" }!
        var set = sites.set
        set.id = 1
        #expect(hex(NFTables.newSet(set).payload) == "010000000d000100706174726f6e7573000000000a0002007369746573000000080003000000000c0800040000000007080005000000000408000600ffffff00080007000000000008000a00000000012e000d00000402000000010400000000060400000000071672656d6f746520707265666978202d3e2073697465000000")
        #expect(NFTables.attributeTree(NFTables.elements(sites.elements, family: .inet, table: "patronus", set: "sites", setID: 1).payload) == tree("010000000d000100706174726f6e7573000000000a00020073697465730000000800040000000001ac0003801800018008000300000000010c0001800800010000000000300002800c000180080001000a140000200002801c00028008000100fffffffc10000200736974655f6272616e6368001800038008000300000000010c000180080001000a150000300004800c000180080001000a630200200002801c00028008000100fffffffc10000200736974655f6272616e6368001800058008000300000000010c000180080001000a630300"))
        var siteRule = r.rules["site_branch"]![0]
        siteRule.userdata = nil
        siteRule.expressions = siteRule.expressions.map {
            if case let .lookup(sreg, set, _, dreg) = $0 { return .lookup(sreg: sreg, set: set, setID: 1, dreg: dreg) }
            return $0
        }
        #expect(hex(NFTables.newRule(siteRule).payload) == "010000000d000100706174726f6e75730000000010000200736974655f6272616e636800ac00048020000180070001006374000014000280080002000000000308000100000000014c0001800c00010062697477697365003c00028008000100000000010800020000000001080006000000000008000300000000040c00048008000100001fff000c00058008000100000000003c0001800b0001006c6f6f6b757000002c0002800800020000000001080003000000000010000100736974655f6272616e6368000800040000000001")
        var map = r.maps.first { $0.set.name == "site_branch" }!.set
        map.id = 1
        #expect(hex(NFTables.newSet(map).payload) == "010000000d000100706174726f6e75730000000010000200736974655f6272616e63680008000300000000080800040000000013080005000000000408000600ffffff00080007000000000008000a000000000130000d000004010000000104000000000604000000000718636c617373202d3e207061746820746f206272616e636800")
    }

    // scripts/capture-netlink.py 'nft add table inet patronus; nft add chain inet patronus classify;
    //   nft add chain inet patronus site_branch' --
    //   nft add rule inet patronus site_branch ct mark & 0x00ff0000 == 0 ct direction original
    //     ct mark set ct mark & 0x01ffffff | 0x01000000 jump classify   (site index 1: the branch's)
    // and ('... classify_reply; nft add set inet patronus voip_svc { type inet_proto . inet_service; flags interval; }' --)
    //   nft add rule inet patronus classify_reply meta l4proto . th sport @voip_svc (set id 1)
    @Test func firstPacketRulesAreWhatNftSends() throws {
        let r = try SteeringCompiler.compile(referencePlan())
        var classifyOnce = try #require(r.rules["site_branch"]?[2]) // [1]: transit refused (TransitRefusalTests)
        classifyOnce.userdata = nil
        #expect(hex(NFTables.newRule(classifyOnce).payload) == "010000000d000100706174726f6e75730000000010000200736974655f6272616e636800b401048020000180070001006374000014000280080002000000000308000100000000014c0001800c00010062697477697365003c00028008000100000000010800020000000001080006000000000008000300000000040c000480080001000000ff000c00058008000100000000002c00018008000100636d700020000280080001000000000108000200000000000c000380080001000000000020000180070001006374000014000280080002000000000108000100000000012c00018008000100636d700020000280080001000000000108000200000000000c000380050001000000000020000180070001006374000014000280080002000000000308000100000000014c0001800c00010062697477697365003c00028008000100000000010800020000000001080006000000000008000300000000040c00048008000100ffffff000c00058008000100000000012000018007000100637400001400028008000200000000030800040000000001400001800e000100696d6d6564696174650000002c0002800800010000000000200002801c00028008000100fffffffd0d000200636c61737369667900000000")
        // The reply classifier loads the source port where `classify` loads the destination port.
        var reply = try #require(r.rules["classify_reply"]?.first)
        reply.userdata = nil
        reply.expressions = Array(reply.expressions.prefix(4)).map {
            if case let .lookup(sreg, set, _, dreg) = $0 { return .lookup(sreg: sreg, set: set, setID: 1, dreg: dreg) }
            return $0
        }
        #expect(hex(NFTables.newRule(reply).payload) == "010000000d000100706174726f6e75730000000013000200636c6173736966795f7265706c790000d000048024000180090001006d657461000000001400028008000200000000100800010000000001400001800e000100627974656f726465720000002c00028008000100000000010800020000000001080003000000000108000400000000010800050000000002340001800c0001007061796c6f616400240002800800010000000009080002000000000208000300000000000800040000000002340001800b0001006c6f6f6b757000002400028008000200000000010d000100766f69705f737663000000000800040000000001")
    }

    @Test func markWritesKeepEveryBitOutsideOurMask() throws {
        let r = try SteeringCompiler.compile(referencePlan())
        var writes = 0
        for rule in r.rules.values.flatMap({ $0 }) {
            for (i, e) in rule.expressions.enumerated() {
                guard case let .bitwise(_, _, mask, xor) = e, i + 1 < rule.expressions.count else { continue }
                switch rule.expressions[i + 1] {
                case .metaSet, .ctSet:
                    let m = UInt32(mask[0]) | UInt32(mask[1]) << 8 | UInt32(mask[2]) << 16 | UInt32(mask[3]) << 24
                    let x = UInt32(xor[0]) | UInt32(xor[1]) << 8 | UInt32(xor[2]) << 16 | UInt32(xor[3]) << 24
                    // The packet mark's path field, the ct mark's class field (the bucket field in the
                    // bucket chains, the site field in the site chains): nothing else.
                    let field = rule.expressions[i + 1].isMetaSet ? Conventions.pathMarkMask
                        : rule.chain.hasPrefix("bucket_") ? Conventions.bucketMarkMask
                        : rule.chain.hasPrefix("site_") ? Conventions.siteMarkMask : Conventions.classMarkMask
                    #expect(m == ~field, "rule in \(rule.chain) clears bits outside \(field)")
                    #expect(x & ~field == 0, "rule in \(rule.chain) sets bits outside \(field)")
                    writes += 1
                default: break
                }
            }
        }
        // class x path chains; per classify chain (original, reply): one rule per class match, "no policy
        // matched"; one per bucket chain; one per site chain (its index)
        #expect(writes == 4 * 4 + 2 * (4 + 1) + Int(Conventions.balanceBuckets) + 2)
    }

    @Test func rulesAndRoutesFollowTheDocumentedNumbering() throws {
        let r = try SteeringCompiler.compile(referencePlan())
        #expect(r.ipRules.allSatisfy { $0.protocolTag == 77 })
        // Unsteered packets leave the band at once; the paths (all in the group of slots 1-63, so no group
        // rule) follow.
        #expect(r.ipRules.prefix(2) == [
            IPRule(priority: 6206, fwmark: 0, fwmask: 0x0fff_0000, action: .goto(6299), protocolTag: 77),
            IPRule(priority: 6299, action: .nop, protocolTag: 77),
        ])
        let paths = r.ipRules.dropFirst(2)
        #expect(paths.map(\.table) == [6201, 6202, 6203, 6204])
        #expect(paths.allSatisfy { $0.priority == 6211 && $0.fwmask == 0x0fff_0000 })
        #expect(paths.map { $0.fwmark! } == [0x10000, 0x20000, 0x30000, 0x40000])
        #expect(Set(r.routes.filter { $0.table == 6201 }.map(\.prefix.description)) == ["10.20.0.0/16", "10.99.2.0/24"])
        #expect(r.routes.filter { $0.table == 6203 }.map(\.interface) == ["wg-c-isp"])
    }

    /// More than 255 paths: slots up to 4094 in the 12-bit field, one group rule per 64 slots, each path's
    /// rule under its group's priority; a slot outside the field is refused with the limit in words.
    @Test func fourThousandPathsCompileIntoTwoLevelRules() throws {
        let site = SiteID()
        var plan = SteeringPlan(classes: [.init(id: 1, name: "voip", matches: [TrafficMatch()])],
                                destinations: [.init(site: site, name: "hub", prefixes: [IPv4Prefix("10.50.0.0/16")!])])
        let slots: [UInt16] = Array(1...300) + [4000, 4094]
        plan.paths = slots.map { .init(id: Int64($0) + 1000, slot: $0, interface: "wgp\($0)", site: site) }
        plan.choices = [.init(site: site, classID: 1, target: .path(4094))]
        let r = try SteeringCompiler.compile(plan)
        let groups = r.ipRules.filter { $0.priority == 6210 }
        #expect(groups.map(\.fwmark) == [0, 1, 2, 3, 4, 62, 63].map { UInt32($0) << 22 })
        #expect(groups.map(\.action) == [0, 1, 2, 3, 4, 62, 63].map { .goto(6211 + $0) })
        let last = try #require(r.ipRules.first { $0.table == 6200 + 4094 })
        #expect(last.priority == 6211 + 63 && last.fwmark == 4094 << 16 && last.fwmask == 0x0fff_0000)
        #expect(r.ipRules.filter { $0.table != nil }.count == slots.count)
        // Checks a packet of the last path makes: the unsteered rule, the group rules, its group's rules.
        #expect(1 + groups.count + r.ipRules.filter { $0.priority == 6274 }.count <= 1 + 64 + 64)
        #expect(r.chains.contains { $0.name == "voip_path5094" }, "chains are named by path id, not slot")
        plan.paths.append(.init(slot: 4095, interface: "wgpx", site: site))
        let problems = plan.problems().joined(separator: "\n")
        #expect(problems.contains("slot 4095 is not in 1...4094 (at most 4094 paths)"))
    }

    @Test func invalidPlansAreRefusedWithReasons() {
        var plan = referencePlan()
        plan.classes.append(.init(id: 1, name: "voip", matches: []))
        plan.choices.append(.init(site: siteB, classID: 2, target: .path(3)))
        plan.destinations.append(.init(site: SiteID(), name: "overlap", prefixes: [IPv4Prefix("10.20.5.0/24")!]))
        #expect(throws: SteeringError.self) { try SteeringCompiler.compile(plan) }
        let problems = plan.problems().joined(separator: "\n")
        #expect(problems.contains("class id 1 is used twice"))
        #expect(problems.contains("path 3 does not lead to site"))
        #expect(problems.contains("overlap"))
    }

    @Test func planIsCodableAndPrintable() throws {
        let plan = referencePlan()
        let data = try JSONEncoder().encode(plan)
        #expect(try JSONDecoder().decode(SteeringPlan.self, from: data) == plan)
        #expect(plan.description.contains("class 1 voip: udp 5060-5061,16384-32767,tcp 5060-5061"))
        #expect(plan.description.contains("path 2 slot 2 dev wg-b-lte -> site 00000000-0000-0000-0000-0000000000b1 mark 0x00020000 table 6202"))
    }

    @Test func compilingIsDeterministic() throws {
        #expect(try SteeringCompiler.compile(referencePlan()) == SteeringCompiler.compile(referencePlan()))
    }
}

@Suite struct SteeringDiffTests {
    @Test func firstApplyCreatesEverythingInOneBatch() throws {
        let desired = try SteeringCompiler.compile(referencePlan())
        let diff = SteeringDiff(installed: InstalledState(), desired: desired)
        #expect(diff.changes.tableCreated)
        #expect(diff.batch.first?.message.type == 0x0a00)
        #expect(diff.changes.ipRulesAdded.count == 4 + 2) // one per path; unsteered jump, band end
        #expect(diff.changes.routesAdded.count == 6) // branch: 2 prefixes x 2 paths; depot: 1 x 2
        #expect(diff.changes.chainsReloaded.isEmpty)
    }

    @Test func sameRulesetIsNoChange() throws {
        let desired = try SteeringCompiler.compile(referencePlan())
        let diff = SteeringDiff(installed: Steering.afterApply(desired), desired: desired)
        #expect(diff.changes.isEmpty)
        #expect(diff.batch.isEmpty)
    }

    @Test func movingAClassChangesOneElementOnly() throws {
        let before = try SteeringCompiler.compile(referencePlan(voip: 1))
        let after = try SteeringCompiler.compile(referencePlan(voip: 2))
        let diff = SteeringDiff(installed: Steering.afterApply(before), desired: after)
        #expect(diff.changes.elementsOnly)
        // One element of the branch's class -> path map and its twin in `flows` (established flows, by
        // site index), replaced (delete + add) in one batch.
        #expect(diff.changes.elementsDeleted == 2 && diff.changes.elementsAdded == 2)
        #expect(diff.batch.map(\.message.type) == [0x0a0e, 0x0a0e, 0x0a0c, 0x0a0c])
    }

    @Test func whenAPathLeavesABalancedSetOnlyItsBucketsMove() throws {
        let before = try SteeringCompiler.compile(referencePlan())
        let after = try SteeringCompiler.compile(referencePlan(buckets: Array(repeating: 3, count: 16)))
        let diff = SteeringDiff(installed: Steering.afterApply(before), desired: after)
        #expect(diff.changes.elementsOnly)
        // Path 4's 8 buckets, in the site map (class|bucket), in `flows` (site|class|bucket: what established
        // flows read) and in the balance chain's own map (bucket, what a flow's first packet reads).
        #expect(diff.changes.elementsDeleted == 24 && diff.changes.elementsAdded == 24)
    }

    @Test func aPolicyEditReloadsClassificationButNotThePathChains() throws {
        let before = try SteeringCompiler.compile(referencePlan())
        var plan = referencePlan()
        plan.classes[1].matches = [TrafficMatch(services: [ServiceMatch(.tcp, [PortRange(873), PortRange(22)])])]
        let diff = SteeringDiff(installed: Steering.afterApply(before), desired: try SteeringCompiler.compile(plan))
        #expect(diff.changes.chainsReloaded == ["classify", "classify_reply"])
        #expect(Set(diff.changes.setsDeleted) == Set(diff.changes.setsCreated))
        #expect(diff.changes.chainsCreated.isEmpty && diff.changes.chainsDeleted.isEmpty)
        // Flush first, then the set can go, then it is re-created, then the rules come back.
        let types = diff.batch.map(\.message.type)
        #expect(types.first == 0x0a08) // DELRULE (flush classify)
        #expect(types.last == 0x0a06)  // NEWRULE
    }

    @Test func leftoversAreRemovedAndDuplicatesCollapsed() throws {
        let desired = try SteeringCompiler.compile(referencePlan())
        var installed = Steering.afterApply(desired)
        installed.ipRules.append(installed.ipRules[0]) // a duplicate rule
        installed.chains["old_path9"] = NFTChain(family: .inet, table: "patronus", name: "old_path9")
        installed.ruleFingerprints["old_path9"] = [[1]]
        installed.ruleFingerprints["classify"]!.append([9, 9]) // a stray rule in our chain
        let diff = SteeringDiff(installed: installed, desired: desired)
        #expect(diff.changes.ipRulesDeleted.count == 1)
        #expect(diff.changes.chainsDeleted == ["old_path9"])
        #expect(diff.changes.chainsReloaded == ["classify"])
    }
}

@Suite struct ReferenceRulesetTests {
    /// Without root the kernel cannot print the ruleset, but every object the compiler makes for the
    /// reference plan must be in the committed text (the root test compares it byte for byte).
    @Test func referenceRulesetNamesEveryCompiledObject() throws {
        let text = try String(contentsOfFile: referenceRulesetPath(), encoding: .utf8)
        let r = try SteeringCompiler.compile(referencePlan())
        for c in r.chains { #expect(text.contains("\tchain \(c.name) {"), "chain \(c.name)") }
        for s in r.staticSets { #expect(text.contains("\(s.set.flags & NFTSet.flagMap != 0 ? "map" : "set") \(s.set.name) {"), "set \(s.set.name)") }
        for m in r.maps { #expect(text.contains("\tmap \(m.set.name) {"), "map \(m.set.name)") }
        for rule in r.rules.values.flatMap({ $0 }) {
            if let comment = NFTUserdata.comment(in: rule.userdata) { #expect(text.contains("comment \"\(comment)\""), "\(comment)") }
        }
    }
}

@Suite struct DuplicationCompilerTests {
    func plan(copies: [SteeringPlan.Copy]) -> SteeringPlan {
        var plan = referencePlan()
        plan.classes[0].duplicate = true
        plan.copies = copies
        return plan
    }

    @Test func withoutDuplicatedClassesNothingChanges() throws {
        let r = try SteeringCompiler.compile(referencePlan())
        #expect(!r.chains.contains { $0.name == SteeringNames.dedupChain })
        #expect(try SteeringCompiler.compileEgress(referencePlan(), interfaceIndex: ["wg-b-isp": 5]) == nil)
    }

    @Test func theEgressTableSendsEachCopiedPathsPacketsToItsPartner() throws {
        let p = plan(copies: [.init(site: siteB, classID: 1, from: 1, to: 2), .init(site: siteB, classID: 1, from: 2, to: 1)])
        let index: [String: Int32] = ["wg-b-isp": 11, "wg-b-lte": 12, "wg-c-isp": 13]
        let r = try #require(try SteeringCompiler.compileEgress(p, interfaceIndex: index))
        #expect(r.table.family == .ip && r.table.name == Conventions.egressTable)
        // One chain per (duplicated class, path whose tunnel exists), plus the hook; wg-c-lte is missing.
        #expect(Set(r.chains.map(\.name)) == ["copy_voip_path1", "copy_voip_path2", "copy_voip_path3", "postrouting"])
        #expect(r.chains.last?.hook == NFTHook(hook: NFTHook.postrouting, priority: NFTHook.manglePriority, type: "filter"))
        // Nothing shaped: "not for a tunnel" returns, then the copies' lookup.
        #expect(r.rules["postrouting"]?.count == 2)
        let copy2 = try #require(r.rules["copy_voip_path2"]?.first)
        #expect(copy2.expressions.count == 6 && copy2.expressions[4] == .dup(sregAddress: .reg1, sregDevice: .reg2))
        #expect(copy2.expressions[3] == .immediate(dreg: .reg2, data: .value(UInt32(12).hostBytes)))
        // Forwarded packets only: the router's own have no input interface.
        #expect(Array(copy2.expressions.prefix(2)) == [.meta(key: .inputInterface, dreg: .reg1), .cmp(sreg: .reg1, op: .neq, data: [0, 0, 0, 0])])
        // A point-to-point tunnel (no gateway): the copy goes to the packet's own destination.
        #expect(copy2.expressions[2] == .payload(base: .network, offset: 16, length: 4, dreg: .reg1))
        let map = try #require(r.maps.first)
        #expect(map.set.name == SteeringNames.copiesMap && map.set.keyLength == 8)
        #expect(map.elements == [
            NFTElement(key: Conventions.classMark(id: 1).hostBytes + Conventions.pathMark(slot: 1).hostBytes, data: .verdict(.jump("copy_voip_path2"))),
            NFTElement(key: Conventions.classMark(id: 1).hostBytes + Conventions.pathMark(slot: 2).hostBytes, data: .verdict(.jump("copy_voip_path1"))),
        ])
        // A copy to a path whose tunnel is missing is left out until it exists.
        let missing = try #require(try SteeringCompiler.compileEgress(p, interfaceIndex: ["wg-b-isp": 11]))
        #expect(missing.maps.first?.elements.count == 1)
    }

    /// `explain` and `status` read the copy map back: a packet of the duplicated class leaving by one path is
    /// copied by the chain of its partner; a class that does not duplicate, or a path without a copy, is not.
    @Test func theReaderFindsTheCopyOfEachPathTaken() throws {
        let p = plan(copies: [.init(site: siteB, classID: 1, from: 1, to: 2), .init(site: siteB, classID: 1, from: 2, to: 1)])
        var kernel = try InstalledSteeringTests.installed(p)
        let copies = try #require(try SteeringCompiler.compileEgress(p, interfaceIndex: ["wg-b-isp": 11, "wg-b-lte": 12]))
        #expect(kernel.copyChain(classMark: Conventions.classMark(id: 1), pathChain: SteeringNames.classPathChain("voip", 1)) == nil, "no copies read yet")
        kernel.addCopies(try #require(copies.maps.first).elements.reversed())
        #expect(kernel.copies.count == 2)
        #expect(kernel.copyChain(classMark: Conventions.classMark(id: 1), pathChain: SteeringNames.classPathChain("voip", 1)) == "copy_voip_path2")
        #expect(kernel.copyChain(classMark: Conventions.classMark(id: 1), pathChain: SteeringNames.classPathChain("voip", 2)) == "copy_voip_path1")
        #expect(kernel.copyChain(classMark: Conventions.classMark(id: 1), pathChain: SteeringNames.classPathChain("voip", 3)) == nil)
        #expect(kernel.copyChain(classMark: Conventions.classMark(id: 2), pathChain: SteeringNames.classPathChain("bulk", 1)) == nil)
        #expect(SteeringNames.parse("copy_voip_path2", classNames: ["voip"], SteeringNames.copyChain)?.pathID == 2)
    }

    @Test func copiesAreValidated() {
        #expect(throws: SteeringError.self) {
            _ = try SteeringCompiler.compileEgress(plan(copies: [.init(site: siteB, classID: 1, from: 1, to: 3)]), interfaceIndex: [:])
        }
        var p = plan(copies: [.init(site: siteB, classID: 2, from: 1, to: 2)])
        #expect(p.choiceProblems().contains { $0.contains("does not duplicate") })
        p.copies = [.init(site: siteB, classID: 1, from: 1, to: 1)]
        #expect(p.choiceProblems().contains { $0.contains("copied to itself") })
    }

    @Test func theReceiverDropsASecondArrivalAndCountsItByTunnel() throws {
        let r = try SteeringCompiler.compile(plan(copies: []))
        // Forwarded UDP from a remote site jumps to dedup (after the steering rule).
        let hook = try #require(r.rules[SteeringNames.preroutingChain]?.last)
        #expect(hook.expressions.last == .immediate(dreg: .verdict, data: .verdict(.jump(SteeringNames.dedupChain))))
        let sources = try #require(r.staticSets.first { $0.set.name == SteeringNames.copySourcesSet })
        #expect(sources.elements.count == 7) // 10.20/16, 10.30/16 and 10.99.2/24: start and end each, after the end at 0.0.0.0
        let seen = try #require(r.staticSets.first { $0.set.name == SteeringNames.copiesSeenSet }?.set)
        #expect(seen.flags == NFTSet.flagTimeout | NFTSet.flagDynamic)
        #expect(seen.timeoutMs == Conventions.copySeenTimeoutMs && seen.size == Conventions.copySeenSize && seen.keyLength == 32)
        // Only duplicated classes reach a de-duplication chain.
        let classes = try #require(r.maps.first { $0.set.name == SteeringNames.dedupClassesMap })
        #expect(classes.elements == [NFTElement(key: Conventions.classMark(id: 1).hostBytes, data: .verdict(.goto("voip_dedup")))])
        // One rule: add the packet (atomically found or inserted) with its own one-packet limiter, then the path.
        let rules = try #require(r.rules["voip_dedup"])
        #expect(rules.count == 1)
        #expect(rules[0].expressions[3] == .dynsetAdd(sreg: .reg1, set: SteeringNames.copiesSeenSet, setID: nil, timeoutMs: 0,
                                                       element: .limitOver(rate: 1, unitSeconds: 3600, burst: 1)))
        #expect(rules[0].expressions.last == .lookup(sreg: .reg1, set: "voip_arrivals", setID: nil, dreg: .verdict))
        // The key: IP id, addresses, UDP header and the first 12 payload bytes (RTP's sequence, timestamp, SSRC).
        #expect(Array(rules[0].expressions.prefix(3)) == SteeringCompiler.packetKey)
        // Tunnel . source -> path: one element per path and prefix of its site (branch has two prefixes).
        let arrivals = try #require(r.maps.first { $0.set.name == "voip_arrivals" })
        #expect(arrivals.elements.count == 6)
        let lte = try #require(arrivals.elements.first { $0.data == .verdict(.goto("voip_dup2")) && $0.key.suffix(4) == [10, 20, 0, 0] })
        #expect(lte.key == Array("wg-b-lte".utf8) + [UInt8](repeating: 0, count: 8) + [10, 20, 0, 0])
        #expect(lte.keyEnd == Array("wg-b-lte".utf8) + [UInt8](repeating: 0, count: 8) + [10, 20, 255, 255])
        #expect(r.rules["voip_dup2"]?.first?.expressions == [.counter, .immediate(dreg: .verdict, data: .verdict(.drop))])
        // One tunnel interface carrying paths to two sites: the source address tells them apart.
        var shared = plan(copies: [])
        shared.paths[2].interface = "wg-b-isp"
        let sharedArrivals = try #require(try SteeringCompiler.compile(shared).maps.first { $0.set.name == "voip_arrivals" })
        #expect(Set(sharedArrivals.elements.filter { $0.key.starts(with: Array("wg-b-isp".utf8)) }.compactMap(\.data)) == [
            .verdict(.goto("voip_dup1")), .verdict(.goto("voip_dup3")),
        ])
        #expect(SteeringNames.parse("voip_dup2", classNames: ["voip"], SteeringNames.duplicateChain)! == ("voip", 2))
        #expect(SteeringNames.parse("copy_voip_path12", classNames: ["voip"], SteeringNames.copyChain)! == ("voip", 12))
        #expect(SteeringNames.parse("voip_path2", classNames: ["voip"], SteeringNames.duplicateChain) == nil)
    }
}

/// A site that does not relay refuses transit between its tunnels (docs/STEERING.md "Transit").
@Suite struct TransitRefusalTests {
    // and: nft add set inet patronus tunnels '{ type ifname; comment "our tunnels: no transit between them"; }'
    // and ('...; nft add set inet patronus tunnels "{ type ifname; }"' --) nft add element inet patronus tunnels
    //   '{ "wg-b-isp", "wg-b-lte" }'
    // and ('nft add table inet patronus; nft add chain inet patronus site_branch; nft add set inet patronus
    //   tunnels "{ type ifname; }"' --) nft add rule inet patronus site_branch meta iifname @tunnels counter drop
    //   comment '"transit"' (set id 1; our comment differs)
    @Test func eachSiteChainDropsWhatArrivesByATunnelAndIsWhatNftSends() throws {
        var plan = referencePlan()
        plan.paths.removeAll { $0.site == siteC }
        plan.destinations.removeLast()
        plan.choices.removeAll { $0.site == siteC }
        let r = try SteeringCompiler.compile(plan)
        #expect(!r.chains.contains { $0.hook?.hook == NFTHook.forward }, "no forward hook: every forwarded packet would pay it")
        let tunnels = try #require(r.staticSets.first { $0.set.name == "tunnels" })
        var set = tunnels.set
        set.id = 1
        #expect(hex(NFTables.newSet(set).payload) == "010000000d000100706174726f6e7573000000000c00020074756e6e656c730008000300000000000800040000000029080005000000001008000a000000000131000d0000040100000007256f75722074756e6e656c733a206e6f207472616e736974206265747765656e207468656d00000000")
        #expect(NFTables.attributeTree(NFTables.elements(tunnels.elements, family: .inet, table: "patronus", set: "tunnels", setID: 1).payload) == tree("010000000d000100706174726f6e7573000000000c00020074756e6e656c730008000400000000013c0003801c000180180001801400010077672d622d69737000000000000000001c000280180001801400010077672d622d6c74650000000000000000"))
        let site = try #require(r.rules["site_branch"])
        // After the established flows' lookup, before classify-once: only packets that lookup did not steer
        // read it.
        #expect(site.count == 5)
        var drop = site[1]
        #expect(NFTUserdata.comment(in: drop.userdata) == SteeringCompiler.transitRefusedComment)
        drop.userdata = NFTUserdata.comment("transit")
        drop.expressions = drop.expressions.map {
            if case let .lookup(sreg, set, _, dreg) = $0 { return .lookup(sreg: sreg, set: set, setID: 1, dreg: dreg) }
            return $0
        }
        #expect(NFTables.attributeTree(NFTables.newRule(drop).payload) == tree("010000000d000100706174726f6e75730000000010000200736974655f6272616e6368009c00048024000180090001006d657461000000001400028008000200000000060800010000000001300001800b0001006c6f6f6b757000002000028008000200000000010c00010074756e6e656c73000800040000000001140001800c000100636f756e7465720004000280300001800e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100000000000e00070000087472616e736974000000"))
        #expect(NFTUserdata.comment(in: site[2].userdata) == "new flow: its site into the ct mark, classify once")
    }

    @Test func everyPathInterfaceIsATunnelOnceAndEverySiteChainChecksIt() throws {
        let r = try SteeringCompiler.compile(referencePlan())
        let tunnels = try #require(r.staticSets.first { $0.set.name == "tunnels" })
        #expect(tunnels.elements.map(\.key) == ["wg-b-isp", "wg-b-lte", "wg-c-isp", "wg-c-lte"].map {
            Array($0.utf8) + [UInt8](repeating: 0, count: 16 - $0.utf8.count)
        })
        #expect(tunnels.owners == ["site_branch", "site_depot"])
        for chain in ["site_branch", "site_depot"] {
            let drops = r.rules[chain]!.filter { NFTUserdata.comment(in: $0.userdata) == SteeringCompiler.transitRefusedComment }
            #expect(drops.count == 1)
            // The input interface only: what reaches a site chain leaves by a tunnel (or is dropped).
            #expect(drops.first?.expressions.compactMap { e -> NFTMetaKey? in
                if case let .meta(key, _) = e { return key }
                return nil
            } == [.inputInterfaceName])
        }
        // Nothing else reads the set: LAN -> tunnel and tunnel -> LAN traffic never meets the rule.
        #expect(r.rules.filter { $0.value.contains { $0.expressions.contains(.lookup(sreg: NFT.reg1, set: "tunnels", setID: nil, dreg: nil)) } }
            .keys.sorted() == ["site_branch", "site_depot"])
    }

    @Test func aRelayOrASiteWithoutTunnelsInstallsNoTransitRule() throws {
        var relay = referencePlan()
        relay.relay = true
        let r = try SteeringCompiler.compile(relay)
        #expect(!r.staticSets.contains { $0.set.name == "tunnels" })
        #expect(!r.rules.values.joined().contains { NFTUserdata.comment(in: $0.userdata) == SteeringCompiler.transitRefusedComment })
        let empty = try SteeringCompiler.compile(SteeringPlan(classes: referencePlan().classes))
        #expect(!empty.staticSets.contains { $0.set.name == "tunnels" })
        // Turning --relay on or off reloads the site chains' rules and removes the set; no map, no path chain moves.
        let diff = SteeringDiff(installed: Steering.afterApply(try SteeringCompiler.compile(referencePlan())), desired: r)
        #expect(diff.changes.chainsDeleted.isEmpty && diff.changes.chainsCreated.isEmpty)
        #expect(Set(diff.changes.chainsReloaded) == ["site_branch", "site_depot"] && diff.changes.setsDeleted == ["tunnels"])
        #expect(relay.description.contains("relay: forwards between tunnels"))
    }

    @Test func theRefusedPacketsAreTheTransitRulesCountersSummed() throws {
        let installed = try InstalledSteeringTests.installed(referencePlan())
        #expect(installed.transitRefused == InstalledSteering.Counter(packets: 0, bytes: 0))
        var relay = referencePlan()
        relay.relay = true
        #expect(try InstalledSteeringTests.installed(relay).transitRefused == nil)
    }
}

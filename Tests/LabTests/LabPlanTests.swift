import Testing
@testable import Lab

@Suite struct LabPlanTests {
    @Test func defaultPlanHasThreeSitesTwoISPs() throws {
        let plan = try LabPlan.make(instance: "lab")
        #expect(plan.sites.map(\.name) == ["hq", "east", "west"])
        #expect(plan.isps.map(\.label) == ["isp-a", "isp-b"])
        #expect(plan.uplinks.count == 6)
        #expect(plan.namespaceNames == ["ptlab-isp-a", "ptlab-isp-b", "ptlab-hq", "ptlab-hq-lan",
                                        "ptlab-east", "ptlab-east-lan", "ptlab-west", "ptlab-west-lan"])
        let eastB = try plan.uplink(site: "east", named: "isp-b")
        #expect(eastB.address == "100.64.2.2" && eastB.routerInterface == "wan-b")
        #expect(eastB.siteFacing == "s-east" && eastB.emulatorFacing == "e-east" && eastB.bridgePort == "b-east")
        #expect(plan.site(named: "west")?.lanPrefix == "10.10.3.0/24")
        #expect(plan.isps[1].gateway == "100.64.2.254")
    }

    @Test func uplinksResolveByLabelLetterOrInterface() throws {
        let plan = try LabPlan.make(instance: "x")
        #expect(try plan.uplink(site: "hq", named: "b").isp == "isp-b")
        #expect(try plan.uplink(site: "hq", named: "wan-a").isp == "isp-a")
        #expect(throws: LabError.self) { try plan.uplink(site: "mars", named: "isp-a") }
        #expect(throws: LabError.self) { try plan.uplink(site: "hq", named: "isp-c") }
    }

    @Test func manySitesGetGeneratedNamesThatFitInterfaceNames() throws {
        let plan = try LabPlan.make(instance: "x", sites: 16, uplinks: 6)
        #expect(plan.sites.last?.name == "site16")
        for uplink in plan.uplinks {
            for name in [uplink.routerInterface, uplink.siteFacing, uplink.emulatorFacing, uplink.bridgePort, uplink.netemBridge] {
                #expect(name.utf8.count <= 15)
            }
        }
        #expect(Set(plan.namespaceNames).count == plan.namespaceNames.count)
    }

    @Test func absurdSizesAndNamesAreRejected() {
        #expect(throws: LabError.self) { try LabPlan.make(instance: "lab", sites: 0) }
        #expect(throws: LabError.self) { try LabPlan.make(instance: "lab", sites: 17) }
        #expect(throws: LabError.self) { try LabPlan.make(instance: "lab", uplinks: 0) }
        #expect(throws: LabError.self) { try LabPlan.make(instance: "lab", uplinks: 7) }
        #expect(throws: LabError.self) { try LabPlan.make(instance: "Lab/1") }
        #expect(throws: LabError.self) { try LabPlan.make(instance: "") }
    }

    @Test func routerCommandLineIsTheRealRunCommand() throws {
        let plan = try LabPlan.make(instance: "lab")
        #expect(plan.routerArguments(site: "hq", executable: "/usr/bin/patronus-router", stateDirectory: "/run/x",
                                     meshKey: "/run/x/mesh.key") == [
            "/usr/bin/patronus-router", "run", "--site-name", "hq", "--database", "/run/x/hq.db", "--interface", "wg-hq",
            "--uplink", "wan-a=isp-a", "--uplink", "wan-b=isp-b", "--lan", "10.10.1.0/24", "--mesh-key", "/run/x/mesh.key",
        ])
    }
}

@Suite struct RoutedPlanTests {
    @Test func routedUplinksHaveTheirOwnSubnetsAndNATedOnesPrivateAddresses() throws {
        let plan = try LabPlan.make(instance: "lab", wan: .routed, nat: [UplinkID(site: "east", uplink: "b")])
        #expect(plan.namespaceNames.first == "ptlab-internet" && plan.namespaceNames.count == 9)
        let hqA = try plan.uplink(site: "hq", named: "isp-a")
        #expect(hqA.address == "100.65.1.2" && hqA.gateway == "100.65.1.1" && hqA.subnet == "100.65.1.0/24")
        let eastB = try plan.uplink(site: "east", named: "isp-b")
        #expect(eastB.natted && eastB.address == "172.18.2.2" && eastB.gateway == "172.18.2.1")
        #expect(plan.natted == [UplinkID(site: "east", uplink: "isp-b")])
        #expect(plan.isps[1].coreAddress == "100.64.0.2" && plan.isps[1].block == "100.66.0.0/16")
        // Discovery by --peer only: every public address of the other sites, never a NATed one.
        #expect(plan.discoveryPeers(of: "east") == ["100.65.1.2:51821", "100.66.1.2:51821", "100.65.3.2:51821",
                                                    "100.66.3.2:51821"])
        #expect(plan.discoveryPeers(of: "hq").count == 3)
        let argv = plan.routerArguments(site: "west", executable: "p", stateDirectory: "/s")
        #expect(argv.filter { $0 == "--peer" }.count == 3 && argv.contains("100.65.2.2:51821"))
        #expect(try LabPlan.make(instance: "lab").discoveryPeers(of: "hq").isEmpty, "bridged: multicast finds them")
    }

    /// `--nat SITE:UPLINK:symmetric`: NATed, and marked symmetric; the hub relays (`--relay`), nobody else.
    @Test func symmetricNATAndTheRelayingHub() throws {
        let plan = try LabPlan.make(instance: "lab", wan: .routed, nat: [UplinkID(site: "east", uplink: "isp-a")],
                                    symmetricNAT: [UplinkID(site: "east", uplink: "b")], hub: "hq")
        #expect(plan.natted == [UplinkID(site: "east", uplink: "isp-a"), UplinkID(site: "east", uplink: "isp-b")])
        #expect(plan.isSymmetricNAT(UplinkID(site: "east", uplink: "isp-b")))
        #expect(!plan.isSymmetricNAT(UplinkID(site: "east", uplink: "isp-a")))
        #expect(plan.routerArguments(site: "hq", executable: "p", stateDirectory: "/s").contains("--relay"))
        #expect(!plan.routerArguments(site: "east", executable: "p", stateDirectory: "/s").contains("--relay"))
        #expect(throws: LabError.self) { try LabPlan.make(instance: "lab", symmetricNAT: [UplinkID(site: "east", uplink: "isp-b")]) }
    }

    @Test func natNeedsRoutedAndNamesAnUplinkOfTheLab() {
        #expect(throws: LabError.self) { try LabPlan.make(instance: "lab", nat: [UplinkID(site: "east", uplink: "isp-b")]) }
        #expect(throws: LabError.self) {
            try LabPlan.make(instance: "lab", wan: .routed, nat: [UplinkID(site: "mars", uplink: "isp-b")])
        }
        #expect(throws: LabError.self) {
            try LabPlan.make(instance: "lab", wan: .routed, unplugged: [UplinkID(site: "hq", uplink: "isp-c")])
        }
    }

    @Test func renumberingAndPluggingChangeOnlyThatUplink() throws {
        let plan = try LabPlan.make(instance: "lab", wan: .routed, unplugged: [UplinkID(site: "hq", uplink: "wan-b")])
        #expect(plan.unplugged == [UplinkID(site: "hq", uplink: "isp-b")])
        #expect(!plan.discoveryPeers(of: "east").contains("100.66.1.2:51821"), "an unplugged uplink is no peer")
        let hqA = UplinkID(site: "hq", uplink: "isp-a")
        let moved = try plan.renumbered(hqA)
        #expect(try moved.uplink(site: "hq", named: "a").address == "100.65.17.2")
        #expect(try moved.uplink(site: "east", named: "a").address == "100.65.2.2")
        #expect(try moved.renumbered(hqA).uplink(site: "hq", named: "a").gateway == "100.65.33.1")
        let bridged = try LabPlan.make(instance: "lab").renumbered(hqA)
        #expect(try bridged.uplink(site: "hq", named: "a").address == "100.64.1.17")
        #expect(try bridged.uplink(site: "hq", named: "a").gateway == "100.64.1.254")
        var far = plan
        for _ in 0..<LabPlan.Uplink.maxGeneration { far = try far.renumbered(hqA) }
        #expect(throws: LabError.self) { try far.renumbered(hqA) }
        #expect(try far.uplink(site: "hq", named: "a").address == "100.65.225.2")

        let plugged = try plan.plugging(UplinkID(site: "hq", uplink: "isp-b"), true)
        #expect(plugged.unplugged.isEmpty && plugged.isPlugged(UplinkID(site: "hq", uplink: "isp-b")))
        #expect(throws: LabError.self) { try plugged.plugging(UplinkID(site: "hq", uplink: "isp-b"), true) }
        #expect(try plugged.plugging(UplinkID(site: "east", uplink: "isp-a"), false).unplugged
            == [UplinkID(site: "east", uplink: "isp-a")])
    }
}

@Suite struct ImpairmentTests {
    @Test func changesApplyOnlyTheGivenFields() {
        var link = ImpairmentChange(delayMs: 30).applied(to: .none)
        link = ImpairmentChange(lossPercent: 5).applied(to: link)
        #expect(link == Impairment(delayMs: 30, lossPercent: 5))
        link = ImpairmentChange(cut: true).applied(to: link)
        #expect(link.cut && link.delayMs == 30)
        link = ImpairmentChange(cut: false).applied(to: link)
        #expect(!link.cut && link.lossPercent == 5)
        link = ImpairmentChange(rateMbit: 20).applied(to: link)
        #expect(link.rateMbit == 20)
        link = ImpairmentChange(rateMbit: 0).applied(to: link)
        #expect(link.rateMbit == nil)
        #expect(ImpairmentChange(clear: true).applied(to: link) == .none)
        #expect(link.description == "delay 30 ms, loss 5%")
    }

    @Test func negativeNonFiniteAndAbsurdValuesAreRejected() {
        for change in [ImpairmentChange(delayMs: -1), ImpairmentChange(delayMs: 10_001), ImpairmentChange(jitterMs: -0.5),
                       ImpairmentChange(lossPercent: 101), ImpairmentChange(lossPercent: .nan),
                       ImpairmentChange(rateMbit: -20), ImpairmentChange(rateMbit: 0.001), ImpairmentChange(rateMbit: 1e9),
                       ImpairmentChange(rateMbit: .infinity)] {
            #expect(throws: LabError.self) { try change.validate() }
        }
        #expect(throws: Never.self) { try ImpairmentChange(delayMs: 0, jitterMs: 10, lossPercent: 100, rateMbit: 0).validate() }
    }

    @Test func netemArgumentsFollowTheImpairment() {
        #expect(NetemControl.netemArguments(Impairment(delayMs: 30, jitterMs: 10, lossPercent: 5, rateMbit: 20)) ==
                ["netem", "limit", "100000", "delay", "30.0ms", "10.0ms", "distribution", "normal", "loss", "5.0%", "rate", "20000kbit"])
        #expect(NetemControl.netemArguments(Impairment(cut: true)) == ["netem", "limit", "100000", "loss", "100.0%"])
    }

    @Test func trimmedSpreadIgnoresAFewHiccups() {
        var random = SplitMix64(seed: 5)
        var values = (0..<1000).map { _ in 60 + 14 * random.nextNormal() }
        let clean = Statistics.trimmedStandardDeviation(values)
        #expect(abs(clean - Statistics.standardDeviation(values)) < 0.01, "nothing trimmed from normal data")
        values += [400, 500, 900]
        #expect(abs(Statistics.trimmedStandardDeviation(values) - clean) < 0.2)
        #expect(Statistics.standardDeviation(values) > 30)
    }

    @Test func generatorDrawsHaveTheRightMoments() {
        var random = SplitMix64(seed: 42)
        let normals = (0..<20_000).map { _ in random.nextNormal() }
        #expect(abs(normals.reduce(0, +) / 20_000) < 0.03)
        #expect(abs(Statistics.standardDeviation(normals) - 1) < 0.03)
        let hits = (0..<20_000).filter { _ in random.nextUnit() < 0.05 }.count
        #expect((800...1200).contains(hits))
    }
}

import Glibc
import Testing
@testable import Lab

/// Builds real labs; serialized so a 2-core machine is not asked to build several at once.
@Suite(.serialized) struct LabTopologyRootTests {
    @Test(.enabled(if: isRoot)) func labCarriesTrafficOverEveryISPAndTearsDownRoot() throws {
        let lab = try LabTopology.build(sites: 3, uplinks: 2, options: .init(emulation: .inProcess, staticRoutes: true))
        let prefix = lab.plan.namespacePrefix
        #expect(NetworkNamespace.list(prefix: prefix).count == 8)
        #expect(lab.backend == .userspace)
        #expect(try Offloads.txChecksumming(on: "wan-a", in: lab.router("hq")) == false)

        // Router to router across each ISP, through two emulated uplinks each way.
        for isp in lab.plan.isps {
            let echo = try UDPEchoResponder(in: lab.router("east"), address: "100.64.\(isp.index).2")
            let rtts = try LatencyProbe.roundTrips(from: lab.router("hq"), to: "100.64.\(isp.index).2", port: echo.port,
                                                   count: 10, interval: .milliseconds(10))
            #expect(rtts.compactMap { $0 }.count >= 9, "hq -> east over \(isp.label)")
        }
        // LAN host to LAN host over the static routes (west's LAN via isp-a).
        let echo = try UDPEchoResponder(in: lab.host("west"), address: "10.10.3.2")
        let rtts = try LatencyProbe.roundTrips(from: lab.host("hq"), to: "10.10.3.2", port: echo.port, count: 10,
                                               interval: .milliseconds(10))
        #expect(rtts.compactMap { $0 }.count >= 9)
        echo.stop()

        let status = try #require(lab.wan).status()
        #expect(status.count == 6)
        let hqA = try #require(status.first { $0.id == UplinkID(site: "hq", uplink: "isp-a") })
        #expect(hqA.outboundCounters.forwarded >= 10)
        for link in status {
            for counters in [link.inboundCounters, link.outboundCounters] {
                #expect(counters.received == counters.forwarded, "\(link.id): every frame of a clean link passes")
            }
        }

        lab.teardown()
        #expect(NetworkNamespace.list(prefix: prefix).isEmpty)
    }

    @Test(.enabled(if: isRoot)) func aSecondLabWithTheSameInstanceIsRefusedAndLeavesTheFirstRoot() throws {
        let plan = try LabPlan.make(instance: "t" + String(UInt32.random(in: 0 ... .max), radix: 36), sites: 2, uplinks: 1)
        let first = try LabTopology.build(plan, options: .init(emulation: .inProcess))
        defer { first.teardown() }
        #expect(throws: LabError.alreadyRunning(instance: plan.instance)) {
            try LabTopology.build(plan, options: .init(emulation: .inProcess))
        }
        #expect(NetworkNamespace.list(prefix: plan.namespacePrefix).count == 5)
    }

    @Test(.enabled(if: isRoot)) func aFailedBuildRemovesWhatItMadeRoot() throws {
        let plan = try LabPlan.make(instance: "t" + String(UInt32.random(in: 0 ... .max), radix: 36), sites: 2, uplinks: 1)
        for step in [LabTopology.BuildStep.isps, .sites, .uplinks, .routes] {
            var options = LabTopology.Options(emulation: .inProcess, staticRoutes: true)
            options.failAt = step
            #expect(throws: LabError.self) { try LabTopology.build(plan, options: options) }
            #expect(NetworkNamespace.list(prefix: plan.namespacePrefix).isEmpty, "after a failure at \(step)")
        }
    }
}

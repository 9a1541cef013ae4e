import Foundation
import Model
@testable import Probing
@testable import Router
import Routing
import Testing

/// One shaper per tunnel interface: an interface carries one path per remote site reached over its uplink,
/// and two shapers for one interface make the whole steering plan invalid (seen in a 3-site lab: every plan
/// refused, steering frozen).
@Suite struct ShapingLoopTests {
    static let east = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000e1")!)
    static let west = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000e2")!)

    static func binding(_ site: SiteID, _ slot: UInt16, _ interface: String) -> PathBinding {
        PathBinding(key: PathKey(site: site, localLabel: "isp-a", remoteLabel: "isp-a"), slot: slot, interface: interface)
    }

    static func snapshot(_ name: String, mbps: Double?) -> PathProbeSet.Snapshot {
        let metrics = PathMetrics(latencyMs: 10, jitterMs: 1, lossPct: 0, bandwidthMbps: mbps, score: 95)
        return PathProbeSet.Snapshot(target: ProbeTarget(name: name, remote: SocketAddress4(IPv4Address(10, 99, 0, 2), port: 51822),
                                                         pinning: .interface("wg-hq0")),
                                     status: .up, metrics: metrics, counters: ProbeCounters())
    }

    @Test func pathsSharingATunnelGetOneShaperDrivenByTheBestEstimate() {
        var loop = ShapingLoop(modes: [:])
        let bindings = ["isp-a->east": Self.binding(Self.east, 1, "wg-hq0"), "isp-a->west": Self.binding(Self.west, 2, "wg-hq0"),
                        "isp-b->east": Self.binding(Self.east, 3, "wg-hq1")]
        var snapshots = ["isp-a->east": Self.snapshot("isp-a->east", mbps: 40), "isp-a->west": Self.snapshot("isp-a->west", mbps: 80),
                         "isp-b->east": Self.snapshot("isp-b->east", mbps: 20)]
        let first = loop.step(now: 1, bindings: bindings, snapshot: snapshots, statistics: [])
        #expect(first.shapers.map(\.interface).sorted() == ["wg-hq0", "wg-hq1"], "one shaper per interface")
        #expect(first.samples.first { $0.interface == "wg-hq0" }?.path == "isp-a->west", "the higher estimate drives")
        let plan = SteeringPlan(shapers: first.shapers)
        #expect(!plan.structureProblems().contains { $0.contains("two shapers") })

        // A wobble of the estimates does not move the shaper to the other path while its driver is measured.
        snapshots["isp-a->east"] = Self.snapshot("isp-a->east", mbps: 85)
        let second = loop.step(now: 2, bindings: bindings, snapshot: snapshots, statistics: [])
        #expect(second.samples.first { $0.interface == "wg-hq0" }?.path == "isp-a->west")
        #expect(second.shapers.count == 2)

        // The driver goes away (west expired): the other path of the interface takes over.
        var without = bindings
        without["isp-a->west"] = nil
        let third = loop.step(now: 3, bindings: without, snapshot: snapshots, statistics: [])
        #expect(third.samples.first { $0.interface == "wg-hq0" }?.path == "isp-a->east")
        #expect(third.shapers.count == 2)
    }

    /// A bandwidth test that ran while the bottleneck was briefly lower does not cap the shaper once it
    /// recovers: the ceiling follows the highest measurement of the last 10 minutes.
    @Test func aLowMeasurementDoesNotLowerTheCeilingForTenMinutes() {
        var loop = ShapingLoop(modes: [:])
        #expect(loop.windowedEstimate("p", measured: 20_000_000, now: 0) == 20_000_000)
        #expect(loop.windowedEstimate("p", measured: 8_000_000, now: 30) == 20_000_000, "the drop is the delay signal's job")
        #expect(loop.windowedEstimate("p", measured: 8_000_000, now: 599) == 20_000_000)
        #expect(loop.windowedEstimate("p", measured: 8_000_000, now: 601) == 8_000_000, "a lasting drop is taken after the window")
        #expect(loop.windowedEstimate("p", measured: 25_000_000, now: 602) == 25_000_000, "a faster link at once")
    }

    /// The download of an uplink with a fixed rate gets one shaper over all its tunnels; auto waits for a
    /// download estimate (said once), off and uplinks without tunnels get none; without --lan, nothing.
    @Test func downloadsWithAFixedRateAreShapedOverEveryTunnelOfTheUplink() throws {
        let uplinks = [Uplink(interface: "eth0", label: "isp-a", downloadShaping: .fixed(bitsPerSecond: 50_000_000)),
                       Uplink(interface: "eth1", label: "isp-b"), Uplink(interface: "eth2", label: "isp-c", shaping: .off, downloadShaping: .off)]
        let settings = ShapingLoop.downloadSettings(uplinks)
        #expect(settings["isp-a"] == .init(slot: 1, mode: .fixed(bitsPerSecond: 50_000_000)) && settings["isp-b"]?.slot == 2
                && settings["isp-c"]?.mode == .off)
        let lan = [IPv4Prefix("10.1.0.0/24")!]
        var loop = ShapingLoop(modes: [:], downloads: settings, lanPrefixes: lan)
        let b = PathBinding(key: PathKey(site: Self.west, localLabel: "isp-b", remoteLabel: "isp-a"), slot: 3, interface: "wg-hq1")
        let c = PathBinding(key: PathKey(site: Self.west, localLabel: "isp-c", remoteLabel: "isp-a"), slot: 4, interface: "wg-hq2")
        let bindings = ["isp-a->east": Self.binding(Self.east, 1, "wg-hq0"), "isp-a->west": Self.binding(Self.west, 2, "wg-hq3"),
                        "isp-b->west": b, "isp-c->west": c]
        let first = loop.step(now: 1, bindings: bindings, snapshot: [:], statistics: [])
        #expect(first.downloadShapers == [.init(slot: 1, tunnels: ["wg-hq0", "wg-hq3"], lanPrefixes: lan, rateBitsPerSecond: 50_000_000)])
        let sample = try #require(first.samples.first { $0.direction == "download" })
        #expect(sample.interface == "patronus-dl1" && sample.uplink == "isp-a" && sample.rateBitsPerSecond == 50_000_000)
        #expect(first.decisions.filter { $0.contains("download of uplink isp-b stays unshaped") }.count == 1)
        #expect(loop.step(now: 2, bindings: bindings, snapshot: [:], statistics: []).decisions.isEmpty, "said once")
        #expect(SteeringPlan(downloadShapers: first.downloadShapers).structureProblems().isEmpty)

        var noLAN = ShapingLoop(modes: [:], downloads: settings, lanPrefixes: [])
        let none = noLAN.step(now: 1, bindings: bindings, snapshot: [:], statistics: [])
        #expect(none.downloadShapers.isEmpty && none.log.contains { $0.contains("no --lan") })
    }

    /// Issue 23's "10 idle minutes never drag the rate to the floor", through the service's own loop: a
    /// measured path, its probes answering every 200 ms step with a noisy RTT (radio wake-ups: every 7th
    /// reply 200 ms), nothing sent through the shaper. The rate stays where it started for the whole time.
    @Test func tenIdleMinutesOfProbesOnlyNeverMoveTheRate() throws {
        var loop = ShapingLoop(modes: [:])
        let bindings = ["isp-a->east": Self.binding(Self.east, 1, "wg-hq0")]
        var replies: UInt64 = 0
        var rates = Set<UInt64>()
        for step in 1...3000 {
            replies += 2
            var snapshot = Self.snapshot("isp-a->east", mbps: 20)
            snapshot.counters.repliesOnTime = replies
            snapshot.metrics.recentLatencyMs = step % 7 == 0 ? 200 : 20 + Double(step % 3)
            let out = loop.step(now: Double(step) * 0.2, bindings: bindings, snapshot: ["isp-a->east": snapshot], statistics: [])
            rates.formUnion(out.shapers.map(\.rateBitsPerSecond))
        }
        #expect(rates == [18_000_000], "90 % of the 20 Mbit/s estimate all along: \(rates.sorted())")
    }
}

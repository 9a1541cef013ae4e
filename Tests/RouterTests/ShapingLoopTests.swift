import Foundation
@testable import Mesh
import Model
@testable import Probing
@testable import Router
import Routing
@testable import Steering
import Testing
import WireGuard

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

    /// The download of an uplink with a fixed rate gets one shaper over all its tunnels; auto without a
    /// download estimate stays unshaped (said once), off and uplinks without tunnels get none; without
    /// --lan, nothing.
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
        #expect(first.log.filter { $0.contains("download of uplink isp-b stays unshaped until its download is measured") }.count == 1)
        #expect(!loop.step(now: 2, bindings: bindings, snapshot: [:], statistics: []).log.contains { $0.contains("download") }, "said once")
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

    static func snapshot(_ name: String, download: Double?, rtt: Double = 20, replies: UInt64 = 0) -> PathProbeSet.Snapshot {
        var snapshot = Self.snapshot(name, mbps: nil)
        snapshot.metrics.downloadBandwidthMbps = download
        snapshot.metrics.recentLatencyMs = rtt
        snapshot.counters.repliesOnTime = replies
        return snapshot
    }

    static func ifb(sent bytes: UInt64) -> ShaperStatistics {
        ShaperStatistics(interface: "patronus-dl1", rateBitsPerSecond: 0,
                         bands: [.init(band: .standard, sentBytes: bytes, sentPackets: 0, backlogBytes: 0, queuedPackets: 0, drops: 0)])
    }

    /// An `auto` download (the default) stays unshaped until the far sites' trains over the uplink's paths
    /// were measured, then starts at 90 % of the highest of them: each is min(far upload, our download), so
    /// the highest is the closest to our download. The upload's own estimate plays no part.
    @Test func anAutoDownloadIsShapedFromTheHighestDownloadMeasuredOverTheUplink() throws {
        let lan = [IPv4Prefix("10.1.0.0/24")!]
        var loop = ShapingLoop(modes: ["isp-a": .off], downloads: ShapingLoop.downloadSettings([Uplink(interface: "eth0", label: "isp-a")]),
                               lanPrefixes: lan)
        let bindings = ["isp-a->east": Self.binding(Self.east, 1, "wg-hq0"), "isp-a->west": Self.binding(Self.west, 2, "wg-hq0")]
        var snapshots = ["isp-a->east": Self.snapshot("isp-a->east", download: nil), "isp-a->west": Self.snapshot("isp-a->west", download: nil)]
        snapshots["isp-a->east"]!.metrics.bandwidthMbps = 100
        let waiting = loop.step(now: 1, bindings: bindings, snapshot: snapshots, statistics: [])
        #expect(waiting.downloadShapers.isEmpty && waiting.shapers.isEmpty)
        #expect(waiting.log == ["the download of uplink isp-a stays unshaped until its download is measured (the far sites' bandwidth trains over its paths; shape=UP/DOWN gives it a fixed rate)"])

        snapshots["isp-a->east"]!.metrics.downloadBandwidthMbps = 12 // east's upload is the lower end of this path
        snapshots["isp-a->west"]!.metrics.downloadBandwidthMbps = 20
        let shaped = loop.step(now: 1.2, bindings: bindings, snapshot: snapshots, statistics: [])
        #expect(shaped.downloadShapers == [.init(slot: 1, tunnels: ["wg-hq0"], lanPrefixes: lan, rateBitsPerSecond: 18_000_000)])
        let sample = try #require(shaped.samples.first)
        #expect(sample.direction == "download" && sample.mode == "auto" && sample.rateBitsPerSecond == 18_000_000)
        #expect(shaped.log == ["the download of uplink isp-a shaped from its measured 20Mbit/s: starting at 18Mbit/s"])
        #expect(SteeringPlan(downloadShapers: shaped.downloadShapers).structureProblems().isEmpty)

        // A later, lower measurement does not lower the ceiling for 10 minutes (the delay signal's job).
        snapshots["isp-a->west"]!.metrics.downloadBandwidthMbps = 10
        #expect(loop.step(now: 30, bindings: bindings, snapshot: snapshots, statistics: []).downloadShapers.first?.rateBitsPerSecond == 18_000_000)
        // The download of an uplink whose paths are gone is no longer shaped; back, it waits for a measurement.
        #expect(loop.step(now: 31, bindings: [:], snapshot: [:], statistics: []).downloadShapers.isEmpty)
    }

    /// The download's rate follows the delay under load as the upload's does (one controller type): busy
    /// (the ifb sent close to its rate) with the probes' RTT 20 ms above the baseline, it goes down; busy
    /// and clean, it climbs back; idle, with any RTT (radio wake-ups of 200 ms), it never moves.
    @Test func anAutoDownloadFollowsTheDelayUnderLoadAndIdleNeverDragsItDown() {
        var loop = ShapingLoop(modes: ["isp-a": .off], downloads: ShapingLoop.downloadSettings([Uplink(interface: "eth0", label: "isp-a")]),
                               lanPrefixes: [IPv4Prefix("10.1.0.0/24")!])
        let bindings = ["isp-a->east": Self.binding(Self.east, 1, "wg-hq0")]
        var now = 0.0, replies: UInt64 = 0, sent: UInt64 = 0
        func step(rtt: Double, sendingMbps: Double) -> UInt64 {
            now += 0.2
            replies += 4
            sent += UInt64(sendingMbps * 1e6 / 8 * 0.2)
            let out = loop.step(now: now, bindings: bindings,
                                snapshot: ["isp-a->east": Self.snapshot("isp-a->east", download: 20, rtt: rtt, replies: replies)],
                                statistics: [Self.ifb(sent: sent)])
            return out.downloadShapers.first?.rateBitsPerSecond ?? 0
        }
        var rates: Set<UInt64> = []
        for i in 0..<300 { rates.insert(step(rtt: i % 7 == 0 ? 200 : 20, sendingMbps: 0)) } // a minute idle
        #expect(rates == [18_000_000], "idle never moves it: \(rates.sorted())")

        var loaded: [UInt64] = []
        for _ in 0..<10 { loaded.append(step(rtt: 40, sendingMbps: 17)) } // the downstream buffer fills
        #expect(loaded.last! < 18_000_000 && loaded.last! >= 5_000_000, "lowered under delay, never below the floor: \(loaded)")
        let low = loaded.last!
        var clean: [UInt64] = []
        for _ in 0..<50 { clean.append(step(rtt: 20, sendingMbps: Double(low) / 1e6)) } // busy and clean: 10 s
        #expect(clean.last! > low && clean.last! <= 19_000_000, "raised again, at most 95 %: \(clean)")
    }

    /// A far site's train is the download of the one path its tunnel interface carries to that site: east's
    /// train in wg-hq1 is isp-b->east's, not isp-a->east's nor a path to west; a tunnel that carries no path
    /// to the source's site (or an interface that is no tunnel) names none.
    @Test func aTrainCountsForThePathItsTunnelCarriesToItsSite() {
        func path(_ site: SiteID, _ name: String, _ label: String, _ interface: String, _ key: UInt8) -> PlannedPath {
            PlannedPath(uplink: Uplink(interface: "eth-\(label)", label: label), slot: 1, remoteSite: site, remoteName: name,
                        remoteEndpoint: Endpoint(label: label, address: SocketAddress4(IPv4Address(100, 64, key, 2), port: 51820)),
                        interface: interface, peer: WireGuardKey(bytes: [UInt8](repeating: key, count: 32))!, destinations: [])
        }
        let plan = TunnelPlan(interfaces: [], paths: [path(Self.east, "east", "isp-a", "wg-hq0", 1), path(Self.west, "west", "isp-a", "wg-hq0", 2),
                                                      path(Self.east, "east", "isp-b", "wg-hq1", 3)])
        var registry = PathRegistry()
        _ = registry.adopt(registry.routes(of: plan).routes, of: plan)
        #expect(registry.arriving(through: "wg-hq1", from: Self.east) == "isp-b->east")
        #expect(registry.arriving(through: "wg-hq0", from: Self.east) == "isp-a->east")
        #expect(registry.arriving(through: "wg-hq0", from: Self.west) == "isp-a->west")
        #expect(registry.arriving(through: "wg-hq1", from: Self.west) == nil)
        #expect(registry.arriving(through: "lan0", from: Self.east) == nil)
    }
}

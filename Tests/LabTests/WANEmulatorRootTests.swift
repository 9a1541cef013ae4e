import Foundation
import Glibc
import Testing
@testable import Lab

/// The emulator measured against its settings on real packets through a lab: hq and east on one ISP,
/// probes from hq's router to east's router, impairment on hq's uplink. Tolerances are those of issue 4;
/// medians and robust spreads keep a loaded 2-core machine from failing them.
@Suite(.serialized) struct WANEmulatorRootTests {
    static let east = "100.64.1.2"

    func lab() throws -> LabTopology {
        try LabTopology.build(sites: 2, uplinks: 1, options: .init(emulation: .inProcess))
    }

    func roundTrips(_ lab: LabTopology, count: Int, interval: Duration = .milliseconds(20)) throws -> [Double?] {
        let echo = try UDPEchoResponder(in: lab.router("east"), address: Self.east)
        defer { echo.stop() }
        return try LatencyProbe.roundTrips(from: lab.router("hq"), to: Self.east, port: echo.port, count: count,
                                           interval: interval)
    }

    @Test(.enabled(if: isRoot)) func delayAddsToTheRoundTripRoot() throws {
        let lab = try lab()
        defer { lab.teardown() }
        _ = try roundTrips(lab, count: 5) // ARP and caches warm
        let base = Statistics.median(try roundTrips(lab, count: 50).compactMap { $0 })
        try lab.impair(site: "hq", uplink: "isp-a", ImpairmentChange(delayMs: 30))
        let rtts = try roundTrips(lab, count: 100).compactMap { $0 }
        let median = Statistics.median(rtts)
        print("delay 30 ms each way: base RTT \(base) ms, median RTT \(median) ms over \(rtts.count) probes")
        #expect(rtts.count >= 98)
        #expect(abs(median - 60) <= 3, "median RTT \(median) ms, expected 60 +/- 3")
    }

    @Test(.enabled(if: isRoot)) func jitterSpreadsTheRoundTripRoot() throws {
        let lab = try lab()
        defer { lab.teardown() }
        _ = try roundTrips(lab, count: 5)
        try lab.impair(site: "hq", uplink: "isp-a", ImpairmentChange(delayMs: 30, jitterMs: 10))
        // 40 ms apart: the order-keeping clamp would need two draws 40 ms apart (p ~ 0.2%).
        // A loaded machine (CI, a full suite) adds its own scheduling spread to a 10 s sample now and then; a
        // sample outside the bounds is taken once more, and the emulator must hit them in one of the two.
        let expected = 10 * 2.0.squareRoot()
        var spread = 0.0, median = 0.0
        for attempt in 1...2 {
            let rtts = try roundTrips(lab, count: 250, interval: .milliseconds(40)).compactMap { $0 }
            spread = Statistics.trimmedStandardDeviation(rtts)
            median = Statistics.median(rtts)
            print("jitter 10 ms each way (sample \(attempt)): RTT median \(median) ms, stddev \(spread) ms (trimmed at 5 robust sigma; plain \(Statistics.standardDeviation(rtts)), MAD-based \(Statistics.robustStandardDeviation(rtts))), expected \(expected)")
            if abs(spread - expected) <= 0.3 * expected && abs(median - 60) <= 4 { break }
        }
        #expect(abs(spread - expected) <= 0.3 * expected, "RTT stddev \(spread) ms, expected \(expected) +/- 30%")
        #expect(abs(median - 60) <= 4)
    }

    @Test(.enabled(if: isRoot)) func lossDropsTheConfiguredShareRoot() throws {
        let lab = try lab()
        defer { lab.teardown() }
        _ = try roundTrips(lab, count: 5)
        try lab.impair(site: "hq", uplink: "isp-a", ImpairmentChange(lossPercent: 5), directions: [.outbound])
        let rtts = try roundTrips(lab, count: 2000, interval: .milliseconds(2))
        let lost = Double(rtts.filter { $0 == nil }.count) / Double(rtts.count) * 100
        let counters = try #require(try lab.wan?.status().first { $0.id.site == "hq" }).outboundCounters
        print("loss 5% outbound: \(lost)% of 2000 probes lost; emulator dropped \(counters.droppedLoss) of \(counters.received)")
        #expect(abs(lost - 5) <= 1.5, "lost \(lost)%, expected 5 +/- 1.5%")
    }

    @Test(.enabled(if: isRoot)) func rateLimitsTCPThroughputRoot() throws {
        let lab = try lab()
        defer { lab.teardown() }
        _ = try roundTrips(lab, count: 5)
        try lab.impair(site: "hq", uplink: "isp-a", ImpairmentChange(rateMbit: 20), directions: [.outbound])
        let server = try lab.router("east").spawn(["iperf3", "-s", "-B", Self.east, "-p", "5201"])
        defer { server.terminate() }
        // The server needs a moment to listen; the client says "Connection refused" until then.
        var result = CommandResult(status: -1, stdout: "", stderr: "")
        for _ in 0..<30 {
            result = try lab.router("hq").run(["iperf3", "-c", Self.east, "-p", "5201", "-t", "5", "-O", "1", "-J"])
            // A run that ended early (seen on a loaded machine: an answer without "sum_received" in 0.4 s) is
            // no measurement of the emulator either: try again.
            if result.succeeded && result.stdout.contains("\"sum_received\"") { break }
            // Refused: not listening yet. Anything else (a control-channel hiccup on a loaded machine):
            // a fresh attempt is fine, the measurement is of the emulator, not of iperf3's handshake.
            usleep(result.stdout.contains("Connection refused") ? 100_000 : 500_000)
        }
        #expect(result.succeeded, "iperf3: \(result.stdout.suffix(400)) \(result.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        let end = try #require(json["end"] as? [String: Any])
        let received = try #require(end["sum_received"] as? [String: Any], "iperf3 said: \(result.stdout.suffix(800)) \(result.stderr)")
        let mbit = try #require(received["bits_per_second"] as? Double) / 1e6
        print("rate 20 Mbit/s outbound: iperf3 TCP received \(mbit) Mbit/s")
        #expect(abs(mbit - 20) <= 3, "iperf3 \(mbit) Mbit/s, expected 20 +/- 15%")
    }

    @Test(.enabled(if: isRoot)) func cutBlackholesAndRestoreBringsItBackRoot() throws {
        let lab = try lab()
        defer { lab.teardown() }
        #expect(try roundTrips(lab, count: 10).compactMap { $0 }.count >= 9)
        try lab.impair(site: "hq", uplink: "isp-a", ImpairmentChange(cut: true))
        let during = try roundTrips(lab, count: 20)
        #expect(during.allSatisfy { $0 == nil }, "nothing passes a cut link")
        let status = try #require(try lab.wan?.status().first { $0.id.site == "hq" })
        #expect(status.outboundCounters.droppedCut >= 20 && status.inbound.cut && status.outbound.cut)
        try lab.impair(site: "hq", uplink: "isp-a", ImpairmentChange(cut: false))
        let after = try roundTrips(lab, count: 20)
        #expect(after.compactMap { $0 }.count >= 19, "traffic passes again after restore")
    }

    @Test(.enabled(if: isRoot)) func directionsAreIndependentRoot() throws {
        let lab = try lab()
        defer { lab.teardown() }
        _ = try roundTrips(lab, count: 5)
        try lab.impair(site: "hq", uplink: "isp-a", ImpairmentChange(delayMs: 20), directions: [.inbound])
        let inboundOnly = Statistics.median(try roundTrips(lab, count: 30).compactMap { $0 })
        try lab.impair(site: "hq", uplink: "isp-a", ImpairmentChange(delayMs: 5), directions: [.outbound])
        let both = Statistics.median(try roundTrips(lab, count: 30).compactMap { $0 })
        #expect(abs(inboundOnly - 20) <= 3 && abs(both - 25) <= 3, "in only \(inboundOnly) ms, in+out \(both) ms")
    }

    @Test(.enabled(if: isRoot)) func idleEmulatorUsesNoCPURoot() throws {
        let lab = try lab()
        defer { lab.teardown() }
        _ = try roundTrips(lab, count: 5)
        func cpuSeconds() -> Double {
            var usage = rusage()
            getrusage(RUSAGE_SELF.rawValue, &usage)
            return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        }
        let before = cpuSeconds()
        usleep(1_000_000)
        let used = cpuSeconds() - before
        print("idle lab (4 emulator threads) used \(used) s CPU in 1 s")
        // Other tests of this process may run concurrently in other suites: generous, but far below a spinning core.
        #expect(used < 0.3)
    }
}

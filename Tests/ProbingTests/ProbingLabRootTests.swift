import Foundation
import Lab
import Model
import Testing
@testable import Probing

/// A prober on hq's router probing east's router over isp-a, through the lab's WAN emulator (impairment on
/// hq's uplink). No tunnel here: the probes are pinned to `wan-a`, as they would be to a WireGuard interface.
final class ProbedLab: @unchecked Sendable {
    let lab: LabTopology
    let responder: ProbeResponder
    let prober: PathProber
    let recorder = EventRecorder()
    private var tasks: [Task<Void, Never>] = []

    init(configuration: ProbeConfiguration = ProbeConfiguration()) throws {
        lab = try LabTopology.build(sites: 2, uplinks: 1, options: .init(emulation: .inProcess))
        do {
            var responderConfiguration = ProbeResponder.Configuration()
            responderConfiguration.allowedSources = [IPv4Prefix(IPv4Address(100, 64, 0, 0), length: 10)]
            responder = try lab.router("east").perform { [responderConfiguration] in
                try ProbeResponder(configuration: responderConfiguration)
            }
            let target = ProbeTarget(name: "hq:isp-a>east",
                                     remote: SocketAddress4(IPv4Address(100, 64, 1, 2), port: 51822),
                                     pinning: .interface("wan-a"))
            prober = try lab.router("hq").perform {
                try PathProber(target: target, configuration: configuration, metricsInterval: .milliseconds(250))
            }
        } catch {
            lab.teardown()
            throw error
        }
        let responder = responder, prober = prober, recorder = recorder
        tasks = [Task { await responder.run() }, Task { await prober.run() },
                 Task { for await event in prober.events { recorder.append(event) } }]
    }

    func impair(_ change: ImpairmentChange, directions: Set<TrafficDirection> = Set(TrafficDirection.allCases))
        throws {
        try lab.impair(site: "hq", uplink: "isp-a", change, directions: directions)
    }

    func waitUp() async -> Bool {
        await recorder.wait(for: .seconds(8)) { $0.status == .up } != nil
    }

    /// Samples `value` every `every` for `span`.
    func sample(for span: Duration, every: Duration = .milliseconds(250), _ value: (PathMetrics) -> Double) async
        -> [Double] {
        var values: [Double] = []
        let end = ContinuousClock.now + span
        while ContinuousClock.now < end {
            try? await Task.sleep(for: every)
            values.append(value(prober.metrics))
        }
        return values
    }

    func stop() {
        for task in tasks { task.cancel() }
        lab.teardown()
    }
}

func mean(_ values: [Double]) -> Double { values.reduce(0, +) / Double(max(1, values.count)) }

@Suite(.serialized) struct ProbingLabRootTests {
    static let isRoot = getuid() == 0

    @Test(.enabled(if: isRoot), .timeLimit(.minutes(1)))
    func thirtyMillisecondsEachWayIsSixtyMillisecondsRTTRoot() async throws {
        let probed = try ProbedLab()
        defer { probed.stop() }
        #expect(await probed.waitUp())
        try probed.impair(ImpairmentChange(delayMs: 30))
        try await Task.sleep(for: .seconds(6)) // the 100-sample window refills
        let latencies = await probed.sample(for: .seconds(3)) { $0.latencyMs }
        let latency = mean(latencies)
        print("lab: delay 30 ms each way -> latency \(latency) ms (median RTT)")
        #expect(abs(latency - 60) <= 3, "latency \(latency) ms")
    }

    @Test(.enabled(if: isRoot), .timeLimit(.minutes(1)))
    func jitterReflectsTheEmulatedJitterRoot() async throws {
        let probed = try ProbedLab()
        defer { probed.stop() }
        #expect(await probed.waitUp())
        try probed.impair(ImpairmentChange(delayMs: 30, jitterMs: 10))
        try await Task.sleep(for: .seconds(3))
        let jitters = await probed.sample(for: .seconds(12)) { $0.jitterMs }
        let jitter = mean(jitters)
        print("lab: jitter 10 ms each way (delay 30) -> jitter \(jitter) ms, latency \(probed.prober.metrics.latencyMs) ms")
        #expect(abs(jitter - 10) <= 3, "jitter \(jitter) ms")
        #expect(probed.prober.status != .down)
    }

    @Test(.enabled(if: isRoot), .timeLimit(.minutes(2)))
    func fivePercentLossIsReportedAsFourToSixRoot() async throws {
        var configuration = ProbeConfiguration()
        configuration.interval = .milliseconds(10) // 4000 probes in 40 s: the mean is within +/- 1% at 2.9 sigma
        let probed = try ProbedLab(configuration: configuration)
        defer { probed.stop() }
        #expect(await probed.waitUp())
        try probed.impair(ImpairmentChange(lossPercent: 5), directions: [.outbound])
        try await Task.sleep(for: .seconds(1))
        let losses = await probed.sample(for: .seconds(40)) { $0.lossPct }
        let loss = mean(losses)
        print("lab: loss 5% one way -> loss \(loss)% (mean of window readings), counters \(probed.prober.counters)")
        print("lab: changes \(probed.recorder.all.compactMap(\.change).map { "\($0.to) \($0.reason)" })")
        #expect(loss >= 4 && loss <= 6, "loss \(loss)%")
    }
}

/// bench/probe-detect: 20 cuts through the emulator, the detection-time distribution and the probe overhead.
/// Runs only when PATRONUS_BENCH_OUT names the results file.
@Suite(.serialized) struct ProbeDetectBench {
    static let output = ProcessInfo.processInfo.environment["PATRONUS_BENCH_OUT"]

    @Test(.enabled(if: getuid() == 0 && output != nil), .timeLimit(.minutes(5)))
    func probeDetectBenchRoot() async throws {
        let cuts = Int(ProcessInfo.processInfo.environment["PATRONUS_BENCH_CUTS"] ?? "") ?? 20
        let probed = try ProbedLab()
        defer { probed.stop() }
        #expect(await probed.waitUp())
        try probed.impair(ImpairmentChange(delayMs: 10)) // RTT 20 ms
        try await Task.sleep(for: .seconds(6))

        // Overhead: bytes on hq's uplink (Ethernet frames, no tunnel) over 10 s of probing alone.
        func txBytes() throws -> Double {
            Double(try probed.lab.router("hq").check(["cat", "/sys/class/net/wan-a/statistics/tx_bytes"])
                .trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }
        func rxBytes() throws -> Double {
            Double(try probed.lab.router("hq").check(["cat", "/sys/class/net/wan-a/statistics/rx_bytes"])
                .trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }
        let sentBefore = probed.prober.counters.packetsSent
        let (tx0, rx0, t0) = (try txBytes(), try rxBytes(), MonotonicInstant.now())
        try await Task.sleep(for: .seconds(10))
        let (tx1, rx1, t1) = (try txBytes(), try rxBytes(), MonotonicInstant.now())
        let seconds = Double((t1 - t0).nanoseconds) / 1e9
        let packetsPerSecond = Double(probed.prober.counters.packetsSent - sentBefore) / seconds
        let txBits = (tx1 - tx0) * 8 / seconds
        let rxBits = (rx1 - rx0) * 8 / seconds

        var detections: [Double] = []
        var recoveries: [Double] = []
        let rtt = probed.prober.metrics.latencyMs
        for _ in 0..<cuts {
            // A random phase against the probe grid, as a real cut has.
            try await Task.sleep(for: .milliseconds(Int64.random(in: 0..<50)))
            let before = probed.recorder.all.count
            try probed.impair(ImpairmentChange(cut: true))
            let cutAt = MonotonicInstant.now()
            guard let down = await probed.recorder.wait(for: .seconds(3), from: before, { $0.change?.to == .down }),
                  let change = down.change else {
                Issue.record("no down after a cut")
                break
            }
            detections.append((change.at - cutAt).milliseconds)
            let beforeRestore = probed.recorder.all.count
            try probed.impair(ImpairmentChange(cut: false))
            let restoredAt = MonotonicInstant.now()
            guard let up = await probed.recorder.wait(for: .seconds(8), from: beforeRestore,
                                                      { $0.change?.to == .up }),
                  let upChange = up.change else {
                Issue.record("no up after a restore")
                break
            }
            recoveries.append((upChange.at - restoredAt).milliseconds)
            try await Task.sleep(for: .seconds(1))
        }
        let sorted = detections.sorted()
        func percentile(_ p: Double) -> Double {
            sorted.isEmpty ? .nan : sorted[min(sorted.count - 1, Int((p * Double(sorted.count)).rounded(.up)) - 1)]
        }
        let bound = 150 + rtt
        let within = detections.filter { $0 <= bound }.count
        let wgBits = packetsPerSecond * 92 * 8
        var report = """
        # bench/probe-detect

        Command: `bench/probe-detect` (runs `swift test --filter ProbeDetectBench` as root with
        PATRONUS_BENCH_OUT set). Lab: 2 sites, 1 uplink, userspace WAN emulator, 10 ms delay each way,
        default ProbeConfiguration (50 ms interval, down after 3 misses, timeout = srtt + max(4 rttvar, 10 ms)).
        Cut = the emulator drops every frame of hq's uplink both ways; detection = down event time - cut time.
        Date: \(UTCTime.format(Date())) UTC.

        ## Detection time over \(detections.count) cuts (RTT \(String(format: "%.1f", rtt)) ms)

        | p50 | p90 | max | min | mean | bound 3 x 50 ms + 1 RTT | within bound |
        |---|---|---|---|---|---|---|
        | \(f(percentile(0.5))) | \(f(percentile(0.9))) | \(f(sorted.last ?? .nan)) | \(f(sorted.first ?? .nan)) | \(f(mean(detections))) | \(f(bound)) | \(within)/\(detections.count) |

        All detections (ms): \(detections.map(f).joined(separator: ", "))

        Recovery (restore -> up, hold 3 s): mean \(f(mean(recoveries))) ms, max \(f(recoveries.max() ?? .nan)) ms.

        ## Probe overhead (10 s, probing alone)

        - probe packets sent: \(String(format: "%.2f", packetsPerSecond))/s
        - measured on hq's uplink (no tunnel here: Ethernet 14 + IPv4 20 + UDP 8 + 4-byte probe = 46-byte frames): tx \(f(txBits)) bit/s, rx \(f(rxBits)) bit/s
        - the same packets inside WireGuard (92 bytes each on the uplink, Ethernet not counted): \(f(wgBits)) bit/s per direction
          (measured through a real tunnel: `sudo bench/probe-detect overhead`, bench/results/probe-overhead.md)

        """
        report += "\n"
        try report.write(toFile: Self.output!, atomically: true, encoding: .utf8)
        print(report)
    }

    func f(_ value: Double) -> String { String(format: "%.1f", value) }

    /// bench/probe-false-downs: minutes of 2% random loss on each direction of a path; every status change
    /// is a false one. Runs only when PATRONUS_BENCH_FALSE_DOWN_OUT names the results file.
    @Test(.enabled(if: getuid() == 0 && ProcessInfo.processInfo.environment["PATRONUS_BENCH_FALSE_DOWN_OUT"] != nil),
          .timeLimit(.minutes(30)))
    func probeFalseDownBenchRoot() async throws {
        let environment = ProcessInfo.processInfo.environment
        let output = environment["PATRONUS_BENCH_FALSE_DOWN_OUT"]!
        let minutes = Int(environment["PATRONUS_BENCH_MINUTES"] ?? "") ?? 10
        let probed = try ProbedLab()
        defer { probed.stop() }
        #expect(await probed.waitUp())
        try probed.impair(ImpairmentChange(delayMs: 10, lossPercent: 2))
        let before = probed.recorder.all.count
        let countersBefore = probed.prober.counters
        try await Task.sleep(for: .seconds(Int64(minutes * 60)))
        let changes = probed.recorder.all.dropFirst(before).compactMap(\.change)
        let counters = probed.prober.counters
        let probes = counters.probesSent - countersBefore.probesSent
        let packets = counters.packetsSent - countersBefore.packetsSent
        let misses = counters.misses - countersBefore.misses
        let report = """
        # bench/probe-false-downs

        Command: `sudo bench/probe-false-downs` (PATRONUS_BENCH_MINUTES=\(minutes)). Lab: 2 sites, 1 uplink, userspace
        WAN emulator, 10 ms delay and 2% random loss on each direction of hq's uplink (about 4% of probes lose
        the request or the reply). Default ProbeConfiguration. Date: \(UTCTime.format(Date())) UTC.

        - duration: \(minutes) min; probes: \(probes); packets (with suspect-mode copies): \(packets) (+\(String(format: "%.1f", Double(packets - probes) / Double(max(1, probes)) * 100))%)
        - probes missed (no copy answered in time): \(misses); replies that came after their timeout: \(counters.repliesLate - countersBefore.repliesLate)
        - status changes (all false): \(changes.count) \(changes.map { "\($0.from)->\($0.to) (\($0.reason))" })
        - downs: \(changes.filter { $0.to == .down }.count); degraded: \(changes.filter { $0.to == .degraded }.count)
        - final metrics: \(probed.prober.metrics)

        """
        try report.write(toFile: output, atomically: true, encoding: .utf8)
        print(report)
        #expect(changes.filter { $0.to == .down }.isEmpty)
    }
}

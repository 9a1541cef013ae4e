import Model
import Testing
@testable import Probing

/// Deterministic pseudo-random numbers (SplitMix64), so every simulated run is reproducible.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A simulated path driving a PathMonitor exactly as PathProber does: wake at nextWakeup, advance, send what
/// is due; replies arrive after the delay `network` returns (nil: lost), possibly several times.
struct SimulatedPath {
    var monitor: PathMonitor
    var now: MonotonicInstant
    var changes: [PathStatusChange] = []
    private var inFlight: [(at: MonotonicInstant, packet: ProbePacket)] = []

    init(configuration: ProbeConfiguration = ProbeConfiguration(), firstSequence: UInt32 = 0) {
        now = MonotonicInstant(nanoseconds: 5_000_000_000)
        monitor = PathMonitor(configuration: configuration, firstSequence: firstSequence, start: now)
    }

    /// `network(packet, sendTime)` gives the reply delays of one packet: [] when lost, two for a duplicate.
    mutating func run(for span: Duration, network: (ProbePacket, MonotonicInstant) -> [Duration]) {
        let end = now + span
        while true {
            let arrival = inFlight.min { $0.at < $1.at }
            let wake = monitor.nextWakeup
            if let arrival, arrival.at <= wake {
                guard arrival.at <= end else { break }
                now = max(now, arrival.at)
                inFlight.removeAll { $0.at == arrival.at && $0.packet == arrival.packet }
                if let change = monitor.receive(arrival.packet, at: now) { changes.append(change) }
                continue
            }
            guard wake <= end else { break }
            now = max(now, wake)
            changes += monitor.advance(to: now)
            for packet in monitor.probesDue(at: now) {
                for delay in network(packet, now) {
                    inFlight.append((now + delay, packet.reply()))
                }
            }
        }
        now = end
    }

    var downs: [PathStatusChange] { changes.filter { $0.to == .down } }
}

@Suite struct PathMonitorTests {
    let rtt20: (ProbePacket, MonotonicInstant) -> [Duration] = { _, _ in [.milliseconds(20)] }

    @Test func aHealthyPathComesUpAndMeasuresItsRTT() {
        var path = SimulatedPath()
        path.run(for: .seconds(2), network: rtt20)
        #expect(path.changes.map(\.to) == [.up])
        #expect(path.changes[0].at - MonotonicInstant(nanoseconds: 5_000_000_000) <= .milliseconds(600))
        let metrics = path.monitor.metrics()
        #expect(metrics.latencyMs == 20)
        #expect(metrics.jitterMs == 0)
        #expect(metrics.lossPct == 0)
        #expect(metrics.score > 99)
        #expect(path.monitor.timeout == .milliseconds(30)) // srtt 20 + max(4 x 0, 10 ms margin)
        #expect(path.monitor.counters.probesSent == 41) // at 0, 50, ..., 2000 ms
    }

    @Test func aCutIsDetectedByTheTimerWithinThreeIntervalsPlusTimeout() throws {
        for phase in stride(from: 0, to: 50, by: 7) {
            var path = SimulatedPath()
            path.run(for: .seconds(2), network: rtt20)
            path.run(for: .milliseconds(phase), network: rtt20)
            let cut = path.now
            // Replies already in flight at the cut are lost too: the cut is on the path, not at the sender.
            path.run(for: .seconds(1)) { _, sent in sent + .milliseconds(10) < cut ? [.milliseconds(20)] : [] }
            #expect(path.downs.count == 1)
            let detection = path.downs[0].at - cut
            // Bound: 3 intervals + 1 RTT + the 10 ms timeout margin.
            #expect(detection <= .milliseconds(150 + 20 + 10), "phase \(phase): \(detection)")
            #expect(path.downs[0].reason == .consecutiveMisses(3))
            let firstMiss = try #require(path.downs[0].firstMissSentAt)
            #expect(firstMiss > cut + .milliseconds(-60) && firstMiss <= cut + .milliseconds(50))
            #expect(path.downs[0].lastReplyAt! < cut + .milliseconds(30))
            #expect(path.monitor.metrics().lossPct == 100 && path.monitor.metrics().score == 0)
        }
    }

    @Test func restoreBringsThePathUpOnlyAfterTheHold() {
        var path = SimulatedPath()
        path.run(for: .seconds(2), network: rtt20)
        path.run(for: .seconds(1)) { _, _ in [] }
        let restore = path.now
        path.run(for: .seconds(5), network: rtt20)
        let ups = path.changes.filter { $0.to == .up && $0.at > restore }
        #expect(ups.count == 1)
        let delay = ups[0].at - restore
        #expect(delay >= .seconds(3) && delay <= .milliseconds(3100), "\(delay)")
        #expect(path.monitor.metrics().lossPct == 0) // judged on the recovered path, not the outage
    }

    /// The uplink lost carrier: down at once (the kernel's word, not three misses); it comes back as from any
    /// down, after replies for the up hold counted from the first reply after the carrier loss.
    @Test func aPathForcedDownIsDownAtOnceAndRecoversByTheUsualHold() throws {
        var path = SimulatedPath()
        path.run(for: .seconds(2), network: rtt20)
        #expect(path.monitor.status == .up)
        let lost = path.now
        let forced = path.monitor.forceDown(at: lost)
        let change = try #require(forced)
        #expect(change.to == .down && change.reason == .uplinkDown && change.at == lost && change.firstMissSentAt == lost)
        let again = path.monitor.forceDown(at: lost)
        #expect(again == nil, "already down")
        path.run(for: .seconds(1)) { _, _ in [] }  // no carrier: nothing comes back
        let back = path.now
        path.run(for: .seconds(4), network: rtt20)
        let ups = path.changes.filter { $0.to == .up && $0.at > lost }
        #expect(ups.count == 1)
        #expect(ups.first.map { $0.at - back >= .seconds(3) && $0.at - back <= .milliseconds(3100) } == true)
    }

    @Test func aFlappingPathStaysDown() {
        var path = SimulatedPath()
        path.run(for: .seconds(2), network: rtt20)
        for _ in 0..<10 {
            path.run(for: .seconds(1)) { _, _ in [] }
            path.run(for: .seconds(1), network: rtt20)
        }
        #expect(path.changes.map(\.to) == [.up, .down])
    }

    @Test func twoPercentRandomLossCausesNoFalseDownInTenMinutes() {
        for seed in UInt64(1)...5 {
            var random = SeededRandom(seed: seed)
            var path = SimulatedPath()
            path.run(for: .seconds(600)) { _, _ in
                Double.random(in: 0..<1, using: &random) < 0.02 ? [] : [.milliseconds(20)]
            }
            #expect(path.changes.map(\.to) == [.up], "seed \(seed): \(path.changes)")
            #expect(path.monitor.counters.probesSent == 12001)
        }
    }

    /// bench/failover's soak: 2% loss on every uplink of every site, so a probe and its reply cross four
    /// impaired links (1 - 0.98^4 = 7.8% per round trip). Simulated: the 12 probers of a 3-site lab for 10
    /// minutes; a false down there was 0.4 expected with 3 misses (one seen in the lab), 0.003 with 4.
    @Test func lossOnEveryUplinkOfTheLabCausesNoFalseDownInTenMinutes() {
        var downs: [PathStatusChange] = []
        for seed in UInt64(1)...12 {
            var random = SeededRandom(seed: seed)
            var path = SimulatedPath()
            path.run(for: .seconds(600)) { _, _ in
                (0..<4).contains { _ in Double.random(in: 0..<1, using: &random) < 0.02 } ? [] : [.milliseconds(2)]
            }
            downs += path.downs
        }
        #expect(downs.isEmpty, "\(downs)")
    }

    @Test func fivePercentLossIsMeasuredAsFourToSixPercent() {
        var random = SeededRandom(seed: 42)
        var path = SimulatedPath()
        var estimates: [Double] = []
        path.run(for: .seconds(2), network: rtt20)
        for _ in 0..<120 {
            path.run(for: .seconds(1)) { _, _ in
                Double.random(in: 0..<1, using: &random) < 0.05 ? [] : [.milliseconds(20)]
            }
            estimates.append(path.monitor.loss.percent)
        }
        let mean = estimates.reduce(0, +) / Double(estimates.count)
        #expect(mean >= 4 && mean <= 6, "\(mean)")
        #expect(path.downs.isEmpty)
    }

    @Test func reorderingAndDuplicatesCostNothing() {
        var random = SeededRandom(seed: 7)
        var path = SimulatedPath()
        path.run(for: .seconds(10)) { _, _ in
            // 20-28 ms, so consecutive replies overtake each other; every reply arrives twice.
            let delay = Duration.microseconds(Int64.random(in: 20_000...28_000, using: &random))
            return [delay, delay + .milliseconds(1)]
        }
        let counters = path.monitor.counters
        #expect(counters.duplicates == counters.repliesOnTime)
        #expect(path.monitor.loss.percent == 0)
        #expect(counters.drops.total == 0)
        let median = path.monitor.metrics().latencyMs
        #expect(median > 22 && median < 26)
    }

    @Test func sequenceNumbersWrapWithoutAGlitch() {
        var path = SimulatedPath(firstSequence: ProbeSequence.mask - 20)
        path.run(for: .seconds(5), network: rtt20)
        #expect(path.monitor.nextSequence == 80)
        #expect(path.changes.map(\.to) == [.up])
        #expect(path.monitor.counters.drops.total == 0 && path.monitor.loss.percent == 0)
    }

    @Test func aLatencyJumpIsLearnedFromLateReplies() {
        var path = SimulatedPath()
        path.run(for: .seconds(2), network: rtt20)
        // Latency jumps to 300 ms: probes time out, the path goes down, late replies grow the timeout, and
        // the path comes back once the timeout covers the new RTT.
        path.run(for: .seconds(8)) { _, _ in [.milliseconds(300)] }
        #expect(path.monitor.counters.repliesLate > 0)
        #expect(path.changes.map(\.to) == [.up, .down, .up])
        #expect(path.monitor.timeout > .milliseconds(300))
        let metrics = path.monitor.metrics()
        #expect(metrics.latencyMs == 300 && metrics.lossPct == 0)
        let counters = path.monitor.counters
        // Every packet resolved exactly once: on time or lost.
        #expect(counters.packetsSent >= counters.repliesOnTime + UInt64(path.monitor.loss.lost))
    }

    @Test func lateRepliesEndAMissRunSoAStallIsNotADown() {
        var path = SimulatedPath()
        path.run(for: .seconds(2), network: rtt20) // the last probe went out at 2.000 s
        let start = path.now
        // A stalled responder: replies to the probes of 2.050 and 2.100 are held until 2.150, and the probe of
        // 2.150 is lost. Three probes in a row miss their timeout, but the late replies arriving at 2.150 prove
        // the path alive after the first two were sent, so the run is 1, not 3.
        path.run(for: .seconds(2)) { _, sent in
            if sent < start + .milliseconds(140) { return [start + .milliseconds(150) - sent] }
            if sent < start + .milliseconds(160) { return [] }
            return [.milliseconds(20)]
        }
        #expect(path.downs.isEmpty, "\(path.changes)")
        #expect(path.monitor.counters.misses == 3)
        #expect(path.monitor.counters.repliesLate == 3) // 2.100 went out as two copies (suspect mode)
        // A real cut right after still goes down; the stall's samples have raised the timeout for a while.
        let cut = path.now
        path.run(for: .seconds(1)) { _, _ in [] }
        #expect(path.downs.count == 1)
        #expect(path.downs[0].at - cut <= .milliseconds(150) + path.monitor.timeout + .milliseconds(50))
    }

    @Test func highLossDegradesAndRecoveryTakesTheHold() {
        var random = SeededRandom(seed: 3)
        var path = SimulatedPath()
        path.run(for: .seconds(2), network: rtt20)
        path.run(for: .seconds(10)) { _, _ in
            Double.random(in: 0..<1, using: &random) < 0.25 ? [] : [.milliseconds(20)]
        }
        #expect(path.changes.map(\.to).prefix(2) == [.up, .degraded])
        guard case .lossAbove = path.changes[1].reason else {
            Issue.record("expected a loss reason, got \(path.changes[1].reason)")
            return
        }
        path.run(for: .seconds(12), network: rtt20)
        #expect(path.changes.last?.to == .up)
        #expect(path.monitor.status == .up)
    }

    @Test func highLatencyAndJitterDegrade() {
        var random = SeededRandom(seed: 5)
        var slow = SimulatedPath()
        slow.run(for: .seconds(4)) { _, _ in [.milliseconds(450)] }
        #expect(slow.changes.map(\.to) == [.degraded])
        var jittery = SimulatedPath()
        jittery.run(for: .seconds(6)) { _, _ in
            [.milliseconds(Int64.random(in: 20...300, using: &random))]
        }
        #expect(jittery.changes.contains { change in
            if case .jitterAbove = change.reason { return change.to == .degraded }
            return false
        })
    }

    @Test func repliesThatAreNotOursAreCounted() {
        var path = SimulatedPath()
        path.run(for: .milliseconds(80), network: rtt20)
        let now = path.now
        // Probes 0 and 1 were sent (at 0 and 50 ms) and answered (at 20 and 70 ms).
        _ = path.monitor.receive(ProbePacket(kind: .request, sequence: 0), at: now)
        _ = path.monitor.receive(ProbePacket(kind: .reply, sequence: 2), at: now)          // not sent yet
        _ = path.monitor.receive(ProbePacket(kind: .reply, sequence: 0xAB_CDEF), at: now)  // a previous run's
        _ = path.monitor.receive(ProbePacket(kind: .reply, sequence: 0xFF_FFFF), at: now)  // just before the start
        _ = path.monitor.receive(ProbePacket(kind: .reply, sequence: 1), at: now)          // a duplicate
        _ = path.monitor.receive(ProbePacket(kind: .reply, sequence: 1, isCopy: true), at: now) // copy never sent
        path.monitor.drop(.badVersion)
        let drops = path.monitor.counters.drops
        #expect(drops[.unexpectedKind] == 1)
        #expect(drops[.replyToNothing] == 4)
        #expect(drops[.badVersion] == 1)
        #expect(path.monitor.counters.duplicates == 1)
        #expect(path.monitor.counters.repliesOnTime == 2)
    }

    @Test func suspectModeSendsCopiesOnlyAfterAMiss() {
        var path = SimulatedPath()
        path.run(for: .seconds(1), network: rtt20)
        #expect(path.monitor.counters.packetsSent == path.monitor.counters.probesSent)
        var dropped = false
        path.run(for: .seconds(1)) { packet, _ in
            if !dropped { dropped = true; return [] }
            return [.milliseconds(20)]
        }
        // One miss: the probes sent before the next in-time reply go out twice.
        #expect(path.monitor.counters.packetsSent == path.monitor.counters.probesSent + 1)
        #expect(path.monitor.consecutiveMisses == 0)
    }

    /// Copies guard against a false down; on a path that is down and still silent there is none to
    /// prevent, so it costs one packet per probe (14.7 kbit/s, not 29.4). Recovery still takes the hold.
    @Test func aDeadPathIsProbedWithSinglePackets() {
        var path = SimulatedPath()
        path.run(for: .seconds(2), network: rtt20)
        path.run(for: .seconds(1)) { _, _ in [] }
        #expect(path.monitor.status == .down)
        let (probes, packets) = (path.monitor.counters.probesSent, path.monitor.counters.packetsSent)
        path.run(for: .seconds(2)) { _, _ in [] }
        #expect(path.monitor.counters.probesSent - probes == 40)
        #expect(path.monitor.counters.packetsSent - packets == 40)
        let restore = path.now
        path.run(for: .seconds(4), network: rtt20)
        let ups = path.changes.filter { $0.to == .up && $0.at > restore }
        #expect(ups.count == 1 && ups[0].at - restore <= .milliseconds(3100))
    }
}

@Suite struct PathHealthTests {
    let t0 = MonotonicInstant(nanoseconds: 1_000_000_000)
    let good = PathHealth.Quality(latencyMs: 20, jitterMs: 1, lossPct: 0, lossSamples: 100)

    @Test func firstUpUsesTheShortHold() {
        var health = PathHealth()
        #expect(health.status == .down)
        #expect(health.evaluate(at: t0, consecutiveMisses: 0, answered: false, quality: good,
                                lastReplyAt: nil) == nil)
        #expect(health.evaluate(at: t0, consecutiveMisses: 0, answered: true, quality: good,
                                lastReplyAt: t0) == nil)
        #expect(health.evaluate(at: t0 + .milliseconds(499), consecutiveMisses: 0, answered: true,
                                quality: good, lastReplyAt: nil) == nil)
        let change = health.evaluate(at: t0 + .milliseconds(500), consecutiveMisses: 0, answered: true,
                                     quality: good, lastReplyAt: nil)
        #expect(change?.to == .up)
    }

    @Test func aSingleMissDuringRecoveryIsToleratedTwoInARowRestartTheHold() {
        var policy = HealthPolicy()
        policy.firstUpHold = .seconds(3)
        var health = PathHealth(policy: policy)
        _ = health.evaluate(at: t0, consecutiveMisses: 0, answered: true, quality: good, lastReplyAt: nil)
        _ = health.evaluate(at: t0 + .seconds(1), consecutiveMisses: 1, answered: false, quality: good,
                            lastReplyAt: nil)
        #expect(health.streakStart == t0)
        _ = health.evaluate(at: t0 + .seconds(2), consecutiveMisses: 2, answered: false, quality: good,
                            lastReplyAt: nil)
        #expect(health.streakStart == nil)
    }

    @Test func aLossyPathNeedsAFourthMissToGoDown() {
        func upHealth() -> PathHealth {
            var health = PathHealth()
            _ = health.evaluate(at: t0, consecutiveMisses: 0, answered: true, quality: good, lastReplyAt: nil)
            _ = health.evaluate(at: t0 + .seconds(1), consecutiveMisses: 0, answered: true, quality: good, lastReplyAt: nil)
            return health
        }
        let at = t0 + .seconds(2)
        // Clean path: 3 misses, as always.
        var clean = upHealth()
        #expect(clean.evaluate(at: at, consecutiveMisses: 3, answered: false, quality: good, lastReplyAt: nil)?.to == .down)
        // 8% loss over 200 packets (2% on each of the 4 links a probe and its reply cross): 3 is not enough.
        let lossy = PathHealth.Quality(latencyMs: 20, jitterMs: 1, lossPct: 8, lossSamples: 200)
        var health = upHealth()
        #expect(health.evaluate(at: at, consecutiveMisses: 3, answered: false, quality: lossy, lastReplyAt: nil) == nil)
        #expect(health.evaluate(at: at + .milliseconds(50), consecutiveMisses: 4, answered: false, quality: lossy,
                                lastReplyAt: nil)?.to == .down)
        // Too few samples to call the path lossy: the plain rule.
        var young = upHealth()
        let few = PathHealth.Quality(latencyMs: 20, jitterMs: 1, lossPct: 8, lossSamples: 20)
        #expect(young.evaluate(at: at, consecutiveMisses: 3, answered: false, quality: few, lastReplyAt: nil)?.to == .down)
    }

    @Test func recoveringWithBadQualityGoesToDegraded() {
        var health = PathHealth()
        let lossy = PathHealth.Quality(latencyMs: 20, jitterMs: 1, lossPct: 15, lossSamples: 120)
        _ = health.evaluate(at: t0, consecutiveMisses: 0, answered: true, quality: lossy, lastReplyAt: nil)
        let change = health.evaluate(at: t0 + .seconds(1), consecutiveMisses: 0, answered: true, quality: lossy,
                                     lastReplyAt: nil)
        #expect(change?.to == .degraded)
        #expect(change?.reason == .lossAbove(percent: 15, thresholdPct: 10))
    }

    @Test func degradeNeedsASustainedCrossingAndHysteresisBand() {
        var health = PathHealth()
        _ = health.evaluate(at: t0, consecutiveMisses: 0, answered: true, quality: good, lastReplyAt: nil)
        _ = health.evaluate(at: t0 + .seconds(1), consecutiveMisses: 0, answered: true, quality: good,
                            lastReplyAt: nil)
        #expect(health.status == .up)
        let slow = PathHealth.Quality(latencyMs: 450, jitterMs: 1, lossPct: 0, lossSamples: 100)
        var time = t0 + .seconds(2)
        #expect(health.evaluate(at: time, consecutiveMisses: 0, answered: true, quality: slow,
                                lastReplyAt: nil) == nil)
        time = time + .milliseconds(900)
        _ = health.evaluate(at: time, consecutiveMisses: 0, answered: true, quality: good, lastReplyAt: nil)
        time = time + .milliseconds(200)
        _ = health.evaluate(at: time, consecutiveMisses: 0, answered: true, quality: slow, lastReplyAt: nil)
        time = time + .milliseconds(999)
        #expect(health.evaluate(at: time, consecutiveMisses: 0, answered: true, quality: slow,
                                lastReplyAt: nil) == nil)
        time = time + .milliseconds(1)
        #expect(health.evaluate(at: time, consecutiveMisses: 0, answered: true, quality: slow,
                                lastReplyAt: nil)?.to == .degraded)
        // 350 ms is under the degrade threshold but not under the recovery threshold: stays degraded.
        let between = PathHealth.Quality(latencyMs: 350, jitterMs: 1, lossPct: 0, lossSamples: 100)
        for step in 1...100 {
            #expect(health.evaluate(at: time + .milliseconds(step * 100), consecutiveMisses: 0, answered: true,
                                    quality: between, lastReplyAt: nil) == nil)
        }
        time = time + .seconds(11)
        _ = health.evaluate(at: time, consecutiveMisses: 0, answered: true, quality: good, lastReplyAt: nil)
        #expect(health.evaluate(at: time + .seconds(3), consecutiveMisses: 0, answered: true, quality: good,
                                lastReplyAt: nil)?.to == .up)
    }

    @Test func downIsImmediateFromAnyStatus() {
        for start in [PathStatus.up, .degraded] {
            var health = PathHealth()
            _ = health.evaluate(at: t0, consecutiveMisses: 0, answered: true, quality: good, lastReplyAt: nil)
            let quality = start == .up
                ? good : PathHealth.Quality(latencyMs: 500, jitterMs: 1, lossPct: 0, lossSamples: 100)
            _ = health.evaluate(at: t0 + .seconds(1), consecutiveMisses: 0, answered: true, quality: quality,
                                lastReplyAt: nil)
            #expect(health.status == start)
            let change = health.evaluate(at: t0 + .seconds(2), consecutiveMisses: 3, answered: false,
                                         quality: quality, lastReplyAt: t0)
            #expect(change == PathStatusChange(from: start, to: .down, reason: .consecutiveMisses(3),
                                               at: t0 + .seconds(2), lastReplyAt: t0))
        }
    }
}

@Suite struct BandwidthTestExcuseTests {
    let rtt20: (ProbePacket, MonotonicInstant) -> [Duration] = { _, _ in [.milliseconds(20)] }

    /// Our own bandwidth test fills the uplink's queue: probes sent meanwhile come back very late or not at
    /// all. Excused, they neither take the path down nor count as loss or RTT samples.
    @Test func probesDuringOurOwnBandwidthTestAreExcused() {
        var path = SimulatedPath()
        path.run(for: .seconds(2), network: rtt20)
        let start = path.now
        path.monitor.excuse(until: start + .milliseconds(1000))  // the test, then the queue draining
        // 600 ms of silence (a full queue), then replies 200 ms late for the rest of the window.
        path.run(for: .milliseconds(800)) { _, sent in sent < start + .milliseconds(600) ? [] : [.milliseconds(200)] }
        path.run(for: .seconds(2), network: rtt20)
        #expect(path.downs.isEmpty)
        #expect(path.changes.filter { $0.to == .degraded }.isEmpty)
        let metrics = path.monitor.metrics()
        #expect(metrics.lossPct == 0)
        #expect(metrics.latencyMs == 20)
    }

    /// A cut during a long excuse (the start-up storm, every arriving train extending it) is detected once
    /// nothing has come back for the excused-silence limit, not when the excuse ends 10 s later; the
    /// detection time counts from the first missed probe. The limit follows the path's measured bandwidth:
    /// twice what a default test (368 kB) queues, at least 1 s; 3 s before any estimate; at most 5 s.
    @Test(arguments: [(Double?.some(100), 1.0), (nil, 3.0), (4, 1.47), (1, 5.0)])
    func aCutDuringALongExcuseIsDetectedAfterTheSilenceLimit(mbps: Double?, limitSeconds: Double) throws {
        var path = SimulatedPath()
        if let mbps { path.monitor.sizeExcuse(testBytes: BandwidthTest().bytesOnTheWire, bandwidthMbps: mbps) }
        #expect(abs(Double(path.monitor.excusedSilenceLimit.components.seconds) * 1e3
                    + Double(path.monitor.excusedSilenceLimit.components.attoseconds) / 1e15 - limitSeconds * 1e3) < 10)
        path.run(for: .seconds(2), network: rtt20)
        path.monitor.excuse(until: path.now + .seconds(10))
        path.run(for: .milliseconds(300), network: rtt20)
        let cut = path.now
        path.run(for: .seconds(7)) { _, _ in [] }
        try #require(path.downs.count == 1)
        let detection = path.downs[0].at - cut
        let limit = Duration.milliseconds(Int64(limitSeconds * 1000))
        #expect(detection > limit - .milliseconds(100) && detection <= limit + .milliseconds(200), "\(detection)")
        let firstMiss = try #require(path.downs[0].firstMissSentAt)
        #expect(firstMiss >= cut && firstMiss - cut <= .milliseconds(50))
        #expect(path.monitor.metrics().lossPct == 100)
    }

    /// The excuse ends: a real cut right after is detected as usual.
    @Test func aCutAfterTheExcuseIsStillDetected() {
        var path = SimulatedPath()
        path.run(for: .seconds(2), network: rtt20)
        path.monitor.excuse(until: path.now + .milliseconds(300))
        path.run(for: .milliseconds(300), network: rtt20)
        let cut = path.now
        path.run(for: .seconds(1)) { _, _ in [] }
        #expect(path.downs.count == 1)
        #expect(path.downs[0].at - cut <= .milliseconds(180))
    }
}

@Suite struct LateRepliesAreNotLossTests {
    @Test func reviseTurnsTheLatestLossIntoADelivery() {
        var window = LossWindow(capacity: 4)
        for lost in [true, false, true, false] { window.record(lost: lost) }
        #expect(window.percent == 50)
        window.reviseLatestLoss()
        #expect(window.percent == 25)
        window.reviseLatestLoss()
        window.reviseLatestLoss()
        #expect(window.percent == 0)
        window.record(lost: false)  // the ring wrapped: still consistent
        #expect(window.lost == 0 && window.count == 4)
    }

    /// Replies 60 ms late on a 20 ms path (a queue behind a burst): misses for the down detector, but after
    /// the replies arrive the loss estimate shows delay, not loss.
    @Test func lateRepliesCountAsDelayNotLoss() {
        var path = SimulatedPath()
        path.run(for: .seconds(3)) { _, _ in [.milliseconds(20)] }
        let start = path.now
        path.run(for: .milliseconds(120)) { _, sent in sent >= start ? [.milliseconds(90)] : [.milliseconds(20)] }
        path.run(for: .seconds(1)) { _, _ in [.milliseconds(20)] }
        #expect(path.monitor.counters.repliesLate >= 2)
        #expect(path.monitor.metrics().lossPct == 0)
    }
}

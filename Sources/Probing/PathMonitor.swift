import Model

/// How one path is probed. Defaults: docs/PROBING.md.
public struct ProbeConfiguration: Hashable, Sendable {
    /// Time between probes.
    public var interval: Duration = .milliseconds(50)
    /// Packets per probe once a probe has been missed (suspect mode); 1 disables it. A probe is missed only
    /// when every copy is lost, which makes a false down at random loss p about p^5 instead of p^3.
    public var suspectCopies = 2
    /// Probe timeout = smoothed RTT + max(4 x RTT variation, this margin), within the bounds below.
    public var timeoutMargin: Duration = .milliseconds(10)
    public var minimumTimeout: Duration = .milliseconds(5)
    public var maximumTimeout: Duration = .seconds(1)
    /// The timeout before the first reply has given an RTT.
    public var initialTimeout: Duration = .seconds(1)
    /// RTT samples in the latency window (100 = 5 s at 50 ms).
    public var rttWindow = 100
    /// Resolved packets in the loss window (200 = 10 s at 50 ms): long enough that random loss does not look
    /// like a degraded path (docs/PROBING.md "Status").
    public var lossWindow = 200
    /// An excuse (``PathMonitor/excusedUntil``) covers a path loaded by a bandwidth test, not a dead one:
    /// once nothing at all (no reply, on time or late) has come back for longer than the limit, the excused
    /// misses of the current run count after all. That bounds detection during a test (the start-up storm of
    /// every site measuring every path, when arriving trains keep extending the excuse). The limit must be
    /// longer than a test can hold a live path's queue: twice the test's bytes at the path's measured
    /// bandwidth, at least `excusedSilenceLimit` (1 s: a queue that drops for ~600 ms, PathMonitorTests);
    /// before the first estimate (a 2 Mbit/s link queues a default test for 1.5 s),
    /// `excusedSilenceLimitUnmeasured`; never more than `excusedSilenceLimitMaximum`.
    public var excusedSilenceLimit: Duration = .seconds(1)
    public var excusedSilenceLimitUnmeasured: Duration = .seconds(3)
    public var excusedSilenceLimitMaximum: Duration = .seconds(5)
    public var health = HealthPolicy()
    /// Nice value of the prober's receive thread (nil: inherit), so replies are taken off the socket promptly.
    public var receiveNiceness: Int32? = -10

    public init() {}
}

/// Counters of one prober, for the status report and tests.
public struct ProbeCounters: Hashable, Sendable {
    public var probesSent: UInt64 = 0
    public var packetsSent: UInt64 = 0
    public var repliesOnTime: UInt64 = 0
    public var repliesLate: UInt64 = 0
    public var duplicates: UInt64 = 0
    public var misses: UInt64 = 0
    public var sendErrors: UInt64 = 0
    public var drops = ProbeDrops()

    public init() {}
}

/// Everything a prober knows about one path, as a value driven by the clock and by replies: what to send,
/// what a reply means, when the next thing must happen, and the path's metrics and status. No I/O, so every
/// sequence of events can be replayed in a unit test; ``PathProber`` adds the socket and the timer.
public struct PathMonitor: Sendable {
    public let configuration: ProbeConfiguration
    /// The next probe's 24-bit sequence (``ProbeSequence``).
    public private(set) var nextSequence: UInt32
    public private(set) var nextSendAt: MonotonicInstant
    public private(set) var consecutiveMisses = 0
    public private(set) var lastReplyAt: MonotonicInstant?
    /// Send time of the first probe of the current miss run.
    public var missRunStartedAt: MonotonicInstant? { missRun.first }
    /// Send times of the probes of the current miss run, oldest first.
    private var missRun: [MonotonicInstant] = []
    /// Send times of excused probes missed since the last reply (see ``ProbeConfiguration/excusedSilenceLimit``).
    private var excusedMissRun: [MonotonicInstant] = []
    /// The last reply of any kind, on time or late: the path carried something then.
    private var lastHeardAt: MonotonicInstant?
    /// How long an excuse may cover total silence (``ProbeConfiguration/excusedSilenceLimit``); follows
    /// the path's measured bandwidth (``sizeExcuse(testBytes:bandwidthMbps:)``).
    public private(set) var excusedSilenceLimit: Duration
    public private(set) var counters = ProbeCounters()
    public private(set) var rtt: RTTEstimator
    public private(set) var loss: LossWindow
    public private(set) var health: PathHealth
    /// Probes sent before this instant while our own bandwidth test loads the path: if they go unanswered
    /// they are neither losses nor misses, and their RTTs (queued behind the test's trains) are not samples.
    /// A link we saturate on purpose says nothing about its health.
    public private(set) var excusedUntil: MonotonicInstant?
    private var ledger = ProbeLedger()

    /// `firstSequence` (its low 24 bits) should be random (``ProbeSequence/random()``): then replies meant
    /// for a previous run of the prober fall outside the ledger's window and are dropped as `replyToNothing`.
    public init(configuration: ProbeConfiguration = ProbeConfiguration(), firstSequence: UInt32,
                start: MonotonicInstant) {
        self.configuration = configuration
        excusedSilenceLimit = configuration.excusedSilenceLimitUnmeasured
        nextSequence = firstSequence & ProbeSequence.mask
        nextSendAt = start
        rtt = RTTEstimator(capacity: configuration.rttWindow)
        loss = LossWindow(capacity: configuration.lossWindow)
        health = PathHealth(policy: configuration.health)
    }

    public var status: PathStatus { health.status }

    /// The timeout a probe sent now gets.
    public var timeout: Duration {
        guard let srtt = rtt.smoothed else { return configuration.initialTimeout }
        let margin = max(Duration.nanoseconds(Int64(4 * rtt.variation * 1e6)), configuration.timeoutMargin)
        let value = Duration.nanoseconds(Int64(srtt * 1e6)) + margin
        return min(max(value, configuration.minimumTimeout), configuration.maximumTimeout)
    }

    /// When ``advance(to:)`` must next run: the next send or the earliest probe deadline.
    public var nextWakeup: MonotonicInstant {
        guard let deadline = ledger.nextDeadline else { return nextSendAt }
        return min(deadline, nextSendAt)
    }

    /// The packets to send now (empty if it is not yet time), recorded as sent. In suspect mode (after a miss,
    /// until the next in-time reply) a probe is sent as `suspectCopies` packets, except on a path already
    /// down whose misses go on: copies guard against a false down, and there is none left to prevent (a dead
    /// path then costs one probe's overhead, not two). Recovery is unchanged: its first reply ends the run.
    public mutating func probesDue(at now: MonotonicInstant) -> [ProbePacket] {
        guard now >= nextSendAt else { return [] }
        let sequence = nextSequence
        nextSequence = ProbeSequence.next(sequence)
        // Next send on the interval grid; after a stall, restart from now rather than bursting to catch up.
        nextSendAt = nextSendAt + configuration.interval
        if nextSendAt <= now { nextSendAt = now + configuration.interval }
        let dead = health.status == .down && consecutiveMisses >= configuration.health.downAfterMisses
        let copies = consecutiveMisses > 0 && !dead ? max(1, min(configuration.suspectCopies, 8)) : 1
        ledger.sent(sequence: sequence, at: now, deadline: now + timeout, copies: copies)
        counters.probesSent += 1
        counters.packetsSent += UInt64(copies)
        return (0..<copies).map { copy in ProbePacket(kind: .request, sequence: sequence, isCopy: copy > 0) }
    }

    /// Sizes the excused-silence limit for a path of `bandwidthMbps` whose tests send `testBytes` (IP bytes):
    /// twice the time the test can hold the path's queue, within the configured floor and maximum.
    public mutating func sizeExcuse(testBytes: Int, bandwidthMbps: Double) {
        guard bandwidthMbps > 0, bandwidthMbps.isFinite else { return }
        let queued = Duration.nanoseconds(Int64(min(2 * Double(testBytes) * 8 / (bandwidthMbps * 1e6), 3600) * 1e9))
        excusedSilenceLimit = min(max(queued, configuration.excusedSilenceLimit), configuration.excusedSilenceLimitMaximum)
    }

    /// Excuses the probes sent from now until `until` (see ``excusedUntil``). Extends, never shortens.
    public mutating func excuse(until: MonotonicInstant) {
        excusedUntil = max(excusedUntil ?? until, until)
    }

    private func isExcused(sentAt: MonotonicInstant) -> Bool {
        guard let excusedUntil else { return false }
        return sentAt < excusedUntil
    }

    /// Expires probes whose deadline passed and re-evaluates the status. Call at ``nextWakeup``.
    public mutating func advance(to now: MonotonicInstant) -> [PathStatusChange] {
        var changes: [PathStatusChange] = []
        for expiry in ledger.expire(at: now) {
            if isExcused(sentAt: expiry.sentAt) {
                guard expiry.missed else { continue }
                excusedMissRun.append(expiry.sentAt)
                // Silent for too long to be the test's queue: the excused misses join the run, at once.
                let silentSince = lastHeardAt.map { max($0, excusedMissRun[0]) } ?? excusedMissRun[0]
                guard now - silentSince > excusedSilenceLimit else { continue }
                counters.misses += UInt64(excusedMissRun.count)
                missRun = (missRun + excusedMissRun).sorted()
                excusedMissRun.removeAll()
                consecutiveMisses = missRun.count
                if let change = evaluate(at: now, answered: false) { changes.append(change) }
                continue
            }
            for _ in 0..<expiry.lostCopies { loss.record(lost: true) }
            if expiry.missed {
                missRun.append(expiry.sentAt)
                consecutiveMisses = missRun.count
                counters.misses += 1
            }
            if let change = evaluate(at: now, answered: false) { changes.append(change) }
        }
        if changes.isEmpty, let change = evaluate(at: now, answered: false) { changes.append(change) }
        return changes
    }

    /// Handles one decoded datagram from the probed peer. Drops (counted) anything that is not an answer to
    /// a recent probe of this prober.
    public mutating func receive(_ packet: ProbePacket, at now: MonotonicInstant) -> PathStatusChange? {
        guard packet.kind == .reply else { counters.drops.count(.unexpectedKind); return nil }
        switch ledger.match(sequence: packet.sequence, copy: packet.isCopy ? 1 : 0, at: now) {
        case .nothing:
            counters.drops.count(.replyToNothing)
            return nil
        case .duplicate:
            counters.duplicates += 1
            return nil
        case .late(let sample, let sentAt):
            counters.repliesLate += 1
            // Too late for the miss count (that is what makes failover fast), but delivered: not a loss, and
            // the path carried this probe (slowly: a stalled queue or host, not a dead path), so the probes
            // missed before it no longer count towards down.
            if !isExcused(sentAt: sentAt) {
                rtt.add(sample.milliseconds)
                loss.reviseLatestLoss()
            }
            missRun.removeAll { $0 <= sentAt }
            excusedMissRun.removeAll { $0 <= sentAt }
            lastHeardAt = max(lastHeardAt ?? now, now)
            consecutiveMisses = missRun.count
            return evaluate(at: now, answered: false)
        case .onTime(let sample, let first):
            counters.repliesOnTime += 1
            if !isExcused(sentAt: now + (.zero - sample)) {
                rtt.add(sample.milliseconds)
                loss.record(lost: false)
            }
            lastReplyAt = now
            lastHeardAt = now
            if first {
                missRun.removeAll()
                excusedMissRun.removeAll()
                consecutiveMisses = 0
            }
            return evaluate(at: now, answered: first)
        }
    }

    /// Counts a datagram that failed to decode or came from the wrong address.
    public mutating func drop(_ reason: ProbeRejection) { counters.drops.count(reason) }

    /// Counts a send that the kernel refused (interface down, no route): the probe simply goes unanswered.
    public mutating func sendFailed() { counters.sendErrors += 1 }

    public var quality: PathHealth.Quality {
        PathHealth.Quality(latencyMs: rtt.median, jitterMs: rtt.oneWayJitter, lossPct: loss.percent,
                           lossSamples: loss.count)
    }

    /// The current metrics; a down path reports 100% loss and score 0, latency and jitter as last measured.
    public func metrics(bandwidthMbps: Double? = nil) -> PathMetrics {
        let latency = rtt.median ?? rtt.smoothed ?? 0
        let jitter = rtt.oneWayJitter
        let lossPct = status == .down ? 100 : loss.percent
        let score = status == .down || rtt.median == nil
            ? 0 : PathScore.score(latencyMs: latency, jitterMs: jitter, lossPct: lossPct)
        return PathMetrics(latencyMs: latency, jitterMs: jitter, lossPct: lossPct, bandwidthMbps: bandwidthMbps,
                           score: score, recentLatencyMs: rtt.smoothed)
    }

    /// The path's uplink lost carrier (the kernel said so): down now (see ``PathHealth/forceDown(at:)``). The
    /// detection counts from `now`, the kernel's word, not from a probe.
    public mutating func forceDown(at now: MonotonicInstant) -> PathStatusChange? {
        var change = health.forceDown(at: now)
        change?.firstMissSentAt = now
        loss.clear()
        rtt.clearWindow()
        return change
    }

    private mutating func evaluate(at now: MonotonicInstant, answered: Bool) -> PathStatusChange? {
        var change = health.evaluate(at: now, consecutiveMisses: consecutiveMisses, answered: answered,
                                     quality: quality, lastReplyAt: lastReplyAt)
        if change?.to == .down { change?.firstMissSentAt = missRunStartedAt }
        // While down and not yet recovering, the windows hold only what follows the start of the next run of
        // replies, so the status after recovery is judged on the recovered path, not on the outage.
        if health.status == .down, health.streakStart == nil {
            loss.clear()
            rtt.clearWindow()
        }
        return change
    }
}

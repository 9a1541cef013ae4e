import Model

/// Why a path changed status, as carried by ``PathStatusChange``.
public enum StatusReason: Hashable, Sendable, CustomStringConvertible {
    /// `count` probes in a row got no reply within their timeout.
    case consecutiveMisses(Int)
    /// Replies came back without a run of misses for the whole hold period.
    case recovered(holdMs: Double)
    case lossAbove(percent: Double, thresholdPct: Double)
    case latencyAbove(ms: Double, thresholdMs: Double)
    case jitterAbove(ms: Double, thresholdMs: Double)
    /// Loss, latency and jitter stayed under their recovery thresholds for the hold period.
    case qualityRecovered(holdMs: Double)
    /// The path's uplink stopped carrying traffic (carrier lost, interface down or gone): down at once.
    case uplinkDown

    public var description: String {
        switch self {
        case .consecutiveMisses(let count): "\(count) consecutive probes missed"
        case .recovered(let hold): "replies for \(Int(hold)) ms without a miss run"
        case .lossAbove(let value, let limit): "loss \(rounded(value))% >= \(rounded(limit))%"
        case .latencyAbove(let value, let limit): "latency \(rounded(value)) ms >= \(rounded(limit)) ms"
        case .jitterAbove(let value, let limit): "jitter \(rounded(value)) ms >= \(rounded(limit)) ms"
        case .qualityRecovered(let hold): "quality within limits for \(Int(hold)) ms"
        case .uplinkDown: "the uplink lost carrier or went away"
        }
    }

    private func rounded(_ value: Double) -> String { String(Double(Int((value * 10).rounded())) / 10) }
}

/// Thresholds and hold times of the status machine. Defaults and the false-down arithmetic behind them:
/// docs/PROBING.md "Status".
public struct HealthPolicy: Hashable, Sendable {
    /// Down after this many probes in a row are missed.
    public var downAfterMisses = 3
    /// On a path that already loses at least `lossyLossPct` of its packets (judged over at least
    /// `minimumLossSamples`), down needs `lossyDownAfterMisses` misses in a row. Random loss p makes a false
    /// down about p^5 per probe with suspect mode and 3 misses, p^7 with 4: at 2% loss on every uplink of the
    /// lab (a path crosses two: ~8% per round trip) that is 0.4 versus 0.003 false downs in 10 minutes over a
    /// 3-site lab's 12 probers. Detection on such a path takes one interval longer; clean paths keep 3.
    public var lossyDownAfterMisses = 4
    public var lossyLossPct = 5.0
    /// Down -> up (or degraded) after replies have come back this long with no run of
    /// `downAfterMisses - 1` misses; degraded -> up after quality has stayed good this long.
    public var upHold: Duration = .seconds(3)
    /// The hold for the very first up after start: no flapping history to damp yet.
    public var firstUpHold: Duration = .milliseconds(500)
    /// Up -> degraded when a threshold is crossed continuously for this long.
    public var degradeAfter: Duration = .seconds(1)
    public var degradedLossPct = 10.0
    public var recoveredLossPct = 5.0
    public var degradedLatencyMs = 400.0
    public var recoveredLatencyMs = 300.0
    public var degradedJitterMs = 50.0
    public var recoveredJitterMs = 30.0
    /// Loss is judged only over at least this many resolved packets (one loss in 5 is not 20%).
    /// 100 = 5 s at the default interval: a burst in the first seconds of a path (every site measuring
    /// bandwidth at once) is not a degraded path.
    public var minimumLossSamples = 100

    public init() {}
}

/// A status change as the prober publishes it.
public struct PathStatusChange: Hashable, Sendable {
    public var from: PathStatus
    public var to: PathStatus
    public var reason: StatusReason
    /// When the prober decided (monotonic clock).
    public var at: MonotonicInstant
    /// For changes to down: when the last reply arrived before the silence (nil if there never was one).
    public var lastReplyAt: MonotonicInstant?
    /// For changes to down: when the first probe of the miss run was sent. The outage began before it and
    /// after the last answered probe was sent; `at - firstMissSentAt` is the detection time seen from it.
    public var firstMissSentAt: MonotonicInstant?

    public init(from: PathStatus, to: PathStatus, reason: StatusReason, at: MonotonicInstant,
                lastReplyAt: MonotonicInstant? = nil, firstMissSentAt: MonotonicInstant? = nil) {
        self.from = from
        self.to = to
        self.reason = reason
        self.at = at
        self.lastReplyAt = lastReplyAt
        self.firstMissSentAt = firstMissSentAt
    }
}

/// The up / degraded / down machine with hysteresis: down fast on consecutive misses, degraded after a
/// sustained threshold crossing, and back up only after a sustained good period. Pure: fed the miss count
/// and the window's quality at each step, with the current instant.
public struct PathHealth: Sendable {
    public let policy: HealthPolicy
    public private(set) var status: PathStatus = .down
    /// While down: when the current run of replies began (nil until a reply comes back).
    public private(set) var streakStart: MonotonicInstant?
    private var everUp = false
    private var badSince: MonotonicInstant?
    private var goodSince: MonotonicInstant?
    public init(policy: HealthPolicy = HealthPolicy()) { self.policy = policy }

    /// The path's uplink cannot carry traffic (the kernel said so): down now, no misses to wait for. It
    /// comes back as from any down: after replies for the up hold, counted from the first reply after now.
    public mutating func forceDown(at now: MonotonicInstant) -> PathStatusChange? {
        streakStart = nil
        badSince = nil
        goodSince = nil
        guard status != .down else { return nil }
        return change(to: .down, .uplinkDown, now, nil)
    }

    /// The window's quality as the health machine judges it.
    public struct Quality: Sendable {
        public var latencyMs: Double?
        public var jitterMs: Double
        public var lossPct: Double
        public var lossSamples: Int

        public init(latencyMs: Double?, jitterMs: Double, lossPct: Double, lossSamples: Int) {
            self.latencyMs = latencyMs
            self.jitterMs = jitterMs
            self.lossPct = lossPct
            self.lossSamples = lossSamples
        }
    }

    /// One step. `consecutiveMisses` is the current run; `answered` says an in-time reply just arrived.
    public mutating func evaluate(at now: MonotonicInstant, consecutiveMisses: Int, answered: Bool,
                                  quality: Quality, lastReplyAt: MonotonicInstant?) -> PathStatusChange? {
        let lossy = quality.lossSamples >= policy.minimumLossSamples && quality.lossPct >= policy.lossyLossPct
        let missesForDown = lossy ? max(policy.downAfterMisses, policy.lossyDownAfterMisses) : policy.downAfterMisses
        if consecutiveMisses >= missesForDown {
            streakStart = nil
            badSince = nil
            goodSince = nil
            guard status != .down else { return nil }
            return change(to: .down, .consecutiveMisses(consecutiveMisses), now, lastReplyAt)
        }
        switch status {
        case .down:
            if consecutiveMisses >= max(1, policy.downAfterMisses - 1) {
                streakStart = nil
            } else if streakStart == nil, answered {
                streakStart = now
            }
            let hold = everUp ? policy.upHold : policy.firstUpHold
            guard let start = streakStart, now - start >= hold else { return nil }
            streakStart = nil
            everUp = true
            if let bad = badReason(quality) { return change(to: .degraded, bad, now, nil) }
            return change(to: .up, .recovered(holdMs: (now - start).milliseconds), now, nil)
        case .up:
            goodSince = nil
            guard let bad = badReason(quality) else { badSince = nil; return nil }
            let since = badSince ?? now
            badSince = since
            guard now - since >= policy.degradeAfter else { return nil }
            badSince = nil
            return change(to: .degraded, bad, now, nil)
        case .degraded:
            badSince = nil
            guard isGood(quality) else { goodSince = nil; return nil }
            let since = goodSince ?? now
            goodSince = since
            guard now - since >= policy.upHold else { return nil }
            goodSince = nil
            return change(to: .up, .qualityRecovered(holdMs: (now - since).milliseconds), now, nil)
        }
    }

    private mutating func change(to next: PathStatus, _ reason: StatusReason, _ now: MonotonicInstant,
                                 _ lastReply: MonotonicInstant?) -> PathStatusChange {
        let result = PathStatusChange(from: status, to: next, reason: reason, at: now, lastReplyAt: lastReply)
        status = next
        return result
    }

    private func badReason(_ quality: Quality) -> StatusReason? {
        if quality.lossSamples >= policy.minimumLossSamples, quality.lossPct >= policy.degradedLossPct {
            return .lossAbove(percent: quality.lossPct, thresholdPct: policy.degradedLossPct)
        }
        if let latency = quality.latencyMs, latency >= policy.degradedLatencyMs {
            return .latencyAbove(ms: latency, thresholdMs: policy.degradedLatencyMs)
        }
        if quality.jitterMs >= policy.degradedJitterMs {
            return .jitterAbove(ms: quality.jitterMs, thresholdMs: policy.degradedJitterMs)
        }
        return nil
    }

    private func isGood(_ quality: Quality) -> Bool {
        (quality.lossSamples < policy.minimumLossSamples || quality.lossPct < policy.recoveredLossPct)
            && (quality.latencyMs ?? 0) < policy.recoveredLatencyMs && quality.jitterMs < policy.recoveredJitterMs
    }
}

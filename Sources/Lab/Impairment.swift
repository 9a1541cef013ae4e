/// What the WAN emulator does to the frames of one uplink in one direction. A value; no I/O.
///
/// Model (per direction, frames in arrival order):
/// 1. `cut`: every frame is dropped (frames already queued are dropped too when their time comes).
/// 2. loss: each frame is dropped independently with probability `lossPercent / 100` (Bernoulli).
/// 3. rate: a FIFO bottleneck of `rateMbit`; a frame starts transmitting when the previous one has left
///    and takes `bits / rate`. A frame that would wait more than `queueLimitMs` is dropped (tail drop).
/// 4. delay and jitter: the frame then spends `delayMs + X` in flight, X ~ Normal(0, `jitterMs`), clamped so
///    the total is >= 0. Frame order within a direction is kept: a frame never leaves before the one ahead
///    of it (its exit time is max(own, previous)), so jitter never reorders and TCP sees no spurious
///    reordering. With probes spaced well beyond the jitter (e.g. 50 ms apart for 10 ms jitter) the clamp is
///    negligible, and the one-way delay's standard deviation is `jitterMs`; a round trip with jitter on both
///    directions has sqrt(2) * `jitterMs`.
public struct Impairment: Codable, Equatable, Sendable, CustomStringConvertible {
    public var delayMs: Double = 0
    public var jitterMs: Double = 0
    public var lossPercent: Double = 0
    /// nil: no rate limit (the veth's own speed).
    public var rateMbit: Double?
    public var cut: Bool = false
    /// Queue bound of the rate limiter, in milliseconds of transmission at `rateMbit`.
    public var queueLimitMs: Double = 100

    public init(delayMs: Double = 0, jitterMs: Double = 0, lossPercent: Double = 0, rateMbit: Double? = nil,
                cut: Bool = false) {
        self.delayMs = delayMs
        self.jitterMs = jitterMs
        self.lossPercent = lossPercent
        self.rateMbit = rateMbit
        self.cut = cut
    }

    /// A clean link.
    public static let none = Impairment()

    public var isNone: Bool { self == .none }

    public var description: String {
        var parts: [String] = []
        if cut { parts.append("CUT") }
        if delayMs > 0 { parts.append("delay \(Self.format(delayMs)) ms") }
        if jitterMs > 0 { parts.append("jitter \(Self.format(jitterMs)) ms") }
        if lossPercent > 0 { parts.append("loss \(Self.format(lossPercent))%") }
        if let rateMbit { parts.append("rate \(Self.format(rateMbit)) Mbit/s") }
        return parts.isEmpty ? "clean" : parts.joined(separator: ", ")
    }

    static func format(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }

    /// Upper bounds: beyond them the lab would be emulating something that is not a WAN link.
    public static let maxDelayMs = 10_000.0
    public static let maxJitterMs = 5_000.0
    public static let maxRateMbit = 10_000.0
    public static let minRateMbit = 0.01
}

/// Which way the frames go, seen from the site.
public enum TrafficDirection: String, Codable, Sendable, CaseIterable {
    /// ISP -> site (download).
    case inbound = "in"
    /// Site -> ISP (upload).
    case outbound = "out"
}

/// A change to an uplink's impairment, as `lab impair` expresses it: only the given fields change.
public struct ImpairmentChange: Codable, Equatable, Sendable {
    public var delayMs: Double?
    public var jitterMs: Double?
    public var lossPercent: Double?
    /// 0 removes the rate limit.
    public var rateMbit: Double?
    /// true: blackhole; false: restore (lift the cut, keep the other settings).
    public var cut: Bool?
    /// The rate limiter's buffer, in ms of transmission at its rate (a modem's deep FIFO: hundreds of ms).
    public var queueLimitMs: Double?
    /// Start from a clean link before applying the other fields.
    public var clear: Bool = false

    public init(delayMs: Double? = nil, jitterMs: Double? = nil, lossPercent: Double? = nil,
                rateMbit: Double? = nil, cut: Bool? = nil, clear: Bool = false, queueLimitMs: Double? = nil) {
        self.queueLimitMs = queueLimitMs
        self.delayMs = delayMs
        self.jitterMs = jitterMs
        self.lossPercent = lossPercent
        self.rateMbit = rateMbit
        self.cut = cut
        self.clear = clear
    }

    /// Rejects negative, non-finite and absurd values with a message naming the flag and its range.
    public func validate() throws(LabError) {
        func check(_ value: Double?, _ flag: String, _ range: ClosedRange<Double>, _ unit: String) throws(LabError) {
            guard let value else { return }
            guard value.isFinite, range.contains(value) else {
                throw .invalidArgument("--\(flag) \(value) is out of range: use \(Impairment.format(range.lowerBound))...\(Impairment.format(range.upperBound)) \(unit)")
            }
        }
        try check(delayMs, "delay", 0...Impairment.maxDelayMs, "ms")
        try check(jitterMs, "jitter", 0...Impairment.maxJitterMs, "ms")
        try check(lossPercent, "loss", 0...100, "%")
        try check(queueLimitMs, "queue", 1...Impairment.maxDelayMs, "ms")
        if let rateMbit, rateMbit != 0 {
            try check(rateMbit, "rate", Impairment.minRateMbit...Impairment.maxRateMbit, "Mbit/s (0 removes the limit)")
        } else if let rateMbit, !rateMbit.isFinite {
            throw .invalidArgument("--rate must be a number")
        }
    }

    /// The impairment after this change.
    public func applied(to current: Impairment) -> Impairment {
        var next = clear ? Impairment.none : current
        if let delayMs { next.delayMs = delayMs }
        if let jitterMs { next.jitterMs = jitterMs }
        if let lossPercent { next.lossPercent = lossPercent }
        if let rateMbit { next.rateMbit = rateMbit == 0 ? nil : rateMbit }
        if let cut { next.cut = cut }
        if let queueLimitMs { next.queueLimitMs = queueLimitMs }
        return next
    }

    /// True when the change changes nothing (no flag was given).
    public var isEmpty: Bool {
        self == ImpairmentChange()
    }
}

/// Round-trip time over a sliding window of samples, plus the smoothed values the miss timer needs.
///
/// - `median` and `mean` are over the last `capacity` samples; the reported latency is the median, which one
///   delayed reply cannot move.
/// - `smoothed` / `variation` follow RFC 6298 (gains 1/8 and 1/4) and set the probe timeout.
/// - `jitter` is RFC 3550's interarrival jitter estimator applied to RTT samples in arrival order:
///   J += (|R(i) - R(i-1)| - J) / 16. It measures round-trip delay variation, which needs no clock
///   agreement between the sites. `oneWayJitter` = jitter / sqrt(2) is what the path reports: the
///   per-direction figure if both directions vary alike (independent variations add in quadrature).
/// Cost: O(capacity) memory; `median` sorts a copy of the window (100 doubles), called once per metrics update.
public struct RTTEstimator: Sendable {
    public let capacity: Int
    private var samples: [Double] = []
    private var next = 0
    public private(set) var smoothed: Double?
    public private(set) var variation: Double = 0
    public private(set) var jitter: Double = 0
    private var previous: Double?

    public init(capacity: Int = 100) {
        precondition(capacity > 0, "an RTT window needs room for one sample")
        self.capacity = capacity
        samples.reserveCapacity(capacity)
    }

    /// Adds one RTT in milliseconds. Non-finite or negative samples (a responder whose hold exceeds the
    /// round trip, a clock fault) are refused: returns false and changes nothing.
    @discardableResult
    public mutating func add(_ milliseconds: Double) -> Bool {
        guard milliseconds.isFinite, milliseconds >= 0 else { return false }
        if samples.count < capacity {
            samples.append(milliseconds)
        } else {
            samples[next] = milliseconds
        }
        next = (next + 1) % capacity
        if let srtt = smoothed {
            variation = 0.75 * variation + 0.25 * abs(srtt - milliseconds)
            smoothed = 0.875 * srtt + 0.125 * milliseconds
        } else {
            smoothed = milliseconds
            variation = milliseconds / 2
        }
        if let previous { jitter += (abs(milliseconds - previous) - jitter) / 16 }
        previous = milliseconds
        return true
    }

    public var count: Int { samples.count }

    public var oneWayJitter: Double { jitter / 2.0.squareRoot() }

    public var mean: Double? { samples.isEmpty ? nil : samples.reduce(0, +) / Double(samples.count) }

    public var median: Double? {
        guard !samples.isEmpty else { return nil }
        let sorted = samples.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }

    /// Forgets the window and the jitter history but keeps the smoothed RTT, which still sizes the timeout.
    public mutating func clearWindow() {
        samples.removeAll(keepingCapacity: true)
        next = 0
        previous = nil
        jitter = 0
    }
}

/// Loss over the last `capacity` resolved probe packets (answered in time, or timed out).
///
/// A packet is resolved exactly once: a reply that arrives after its timeout does not turn a loss back into a
/// success, and a duplicate reply adds nothing, so nothing is counted twice.
public struct LossWindow: Sendable {
    public let capacity: Int
    private var outcomes: [Bool] = []
    private var next = 0
    public private(set) var lost = 0

    public init(capacity: Int = 100) {
        precondition(capacity > 0, "a loss window needs room for one outcome")
        self.capacity = capacity
        outcomes.reserveCapacity(capacity)
    }

    public mutating func record(lost isLost: Bool) {
        if outcomes.count < capacity {
            outcomes.append(isLost)
        } else {
            if outcomes[next] { lost -= 1 }
            outcomes[next] = isLost
        }
        if isLost { lost += 1 }
        next = (next + 1) % capacity
    }

    /// A packet counted lost was answered after all (late): the most recent loss in the window becomes a
    /// delivery. Which entry flips does not matter for the percentage; if the loss already left the window,
    /// nothing changes. Late is delay, not loss: latency and jitter carry it.
    public mutating func reviseLatestLoss() {
        guard lost > 0 else { return }
        var index = (next - 1 + capacity) % capacity
        for _ in 0..<outcomes.count {
            if index < outcomes.count, outcomes[index] {
                outcomes[index] = false
                lost -= 1
                return
            }
            index = (index - 1 + capacity) % capacity
        }
    }

    public var count: Int { outcomes.count }

    /// Percent lost, 0 with no outcomes yet.
    public var percent: Double { outcomes.isEmpty ? 0 : Double(lost) * 100 / Double(outcomes.count) }

    public mutating func clear() {
        outcomes.removeAll(keepingCapacity: true)
        next = 0
        lost = 0
    }
}

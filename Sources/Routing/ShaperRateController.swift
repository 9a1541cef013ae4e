/// The rate of one path's egress shaper, adapted from our own measurements (docs/SHAPING.md). Pure: the
/// daemon feeds it one observation at a time and applies the rate it returns; no clock or I/O inside.
///
/// - It starts just below the path's measured bandwidth (`startFraction` of the estimate).
/// - It acts only while the path carries load (we sent at least `loadedFraction` of the current rate since
///   the last observation to lower it, `busyFraction` to raise it). On an idle or silent link it does nothing at all: no rate is lowered for lack of
///   traffic or of probe replies (cake-autorate #23, sqm-autorate #119 collapse to the minimum there).
/// - Busy, with the probes' RTT (they ride the realtime band, so they see the queue outside us, in the
///   modem) more than `raiseDelayMs` above its idle baseline in each of the last `sustainSamples` samples: the bottleneck is below our rate, lower it
///   at once by `decreaseFactor` and then at most every `decreaseHoldoff` (the change needs about one queue
///   drain to show).
/// - Busy, with one sample more than `severeDelayMs` above the baseline: the bottleneck fell far below
///   our rate; halve it at once (then again after the hold-off while it lasts), so the modem's queue
///   drains within a couple of seconds.
/// - Busy and clean (RTT within `cleanDelayMs` of the baseline): raise by `increaseFactor` (or by
///   `increaseGapFraction` of the way to the ceiling when that is more and no delay came for
///   `fastIncreaseAfter`), at most every
///   `increaseInterval`, up to `ceilingFraction` of the estimate (95 %: a faster link shows in the next
///   bandwidth test, whose trains bypass the shaper; at 100 % wireguard-go's send batches queued in the lab's
///   modem and the rate kept going down and up around it).
/// - Never below the floor: `floorFraction` of the estimate, and never under `minimumFloor`.
/// - The baseline is the lowest RTT seen; while the path is not busy it also follows a higher RTT slowly
///   (`baselineFollow` per sample), so a route change that lengthens the path is not read as a queue.
public struct ShaperRateController: Sendable, Equatable {
    public struct Configuration: Sendable, Equatable {
        public var startFraction = 0.9
        public var floorFraction = 0.25
        public var minimumFloor: UInt64 = 256_000
        public var ceilingFraction = 0.95
        /// Raising needs the shaper to be the limit: it sent at least this share of its rate.
        public var busyFraction = 0.7
        /// Lowering needs real load, not silence: at least this share. Less than `busyFraction`, because when
        /// the bottleneck falls below our rate, what we manage to send falls with it (to 8 of 18 Mbit/s).
        public var loadedFraction = 0.3
        public var raiseDelayMs = 8.0
        public var cleanDelayMs = 3.0
        public var decreaseFactor = 0.85
        public var decreaseHoldoff = 0.5
        public var increaseFactor = 1.04
        public var increaseInterval = 1.0
        /// Far below the ceiling, and with no delay for `fastIncreaseAfter` seconds (the bottleneck came
        /// back), a raise closes at least this share of the gap; while delays keep coming it stays at
        /// `increaseFactor`, so a rate just under a lower bottleneck is probed gently.
        public var increaseGapFraction = 0.1
        public var fastIncreaseAfter = 5.0
        public var baselineFollow = 0.02
        /// The delay is judged on the lowest of the last this many RTT samples: a standing queue raises
        /// all of them, a scheduling hiccup or one late probe only one.
        public var sustainSamples = 3
        /// A delay this far above the baseline is no hiccup: the bottleneck fell well below our rate (an LTE
        /// cell got busy) and the modem's FIFO is filling at the difference. Cut at once, by
        /// `severeDecreaseFactor`, without waiting for `sustainSamples`.
        public var severeDelayMs = 50.0
        public var severeDecreaseFactor = 0.5

        public init() {}
    }

    public enum Decision: Equatable, Sendable, CustomStringConvertible {
        /// Nothing to do (idle, no RTT sample, inside the hold-off, or delay between the thresholds).
        case hold
        case decrease(from: UInt64, to: UInt64)
        case increase(from: UInt64, to: UInt64)

        public var description: String {
            switch self {
            case .hold: "hold"
            case .decrease(let a, let b): "decrease \(a) -> \(b) bit/s"
            case .increase(let a, let b): "increase \(a) -> \(b) bit/s"
            }
        }
    }

    public let configuration: Configuration
    /// The shaper's rate now, bits per second.
    public private(set) var rate: UInt64
    /// The estimate the floor and ceiling are taken from.
    public private(set) var estimate: UInt64
    /// The idle RTT baseline, ms (nil until the first sample).
    public private(set) var baselineMs: Double?
    private var lastDecrease: Double?
    private var lastIncrease: Double?
    private var recent: [Double] = []

    /// Starts from a bandwidth estimate in bits per second (`Probing`'s bandwidth test).
    public init(estimate: UInt64, configuration: Configuration = Configuration()) {
        self.configuration = configuration
        self.estimate = estimate
        rate = 0
        rate = clamp(UInt64(Double(estimate) * configuration.startFraction))
    }

    public var floor: UInt64 { max(configuration.minimumFloor, UInt64(Double(estimate) * configuration.floorFraction)) }
    public var ceiling: UInt64 { max(floor, UInt64(Double(estimate) * configuration.ceilingFraction)) }

    private func clamp(_ value: UInt64) -> UInt64 { min(ceiling, max(floor, value)) }

    /// A new bandwidth measurement: floor and ceiling move with it; the rate restarts from it only when it
    /// no longer fits between them.
    public mutating func updateEstimate(_ bitsPerSecond: UInt64) {
        guard bitsPerSecond > 0, bitsPerSecond != estimate else { return }
        estimate = bitsPerSecond
        rate = clamp(rate)
    }

    /// One observation at time `now` (seconds, monotonic): the probes' recent RTT (nil when no reply came
    /// since the last observation) and what the shaper sent since the last one, in bits per second.
    public mutating func observe(now: Double, rttMs: Double?, sentBitsPerSecond: Double) -> Decision {
        let busy = sentBitsPerSecond >= Double(rate) * configuration.busyFraction
        let loaded = sentBitsPerSecond >= Double(rate) * configuration.loadedFraction
        guard let rttMs, rttMs.isFinite, rttMs >= 0 else { return .hold }
        recent.append(rttMs)
        if recent.count > configuration.sustainSamples { recent.removeFirst(recent.count - configuration.sustainSamples) }
        guard let baseline = baselineMs else {
            baselineMs = rttMs
            return .hold
        }
        if rttMs < baseline {
            baselineMs = rttMs
        } else if !loaded {
            baselineMs = baseline + (rttMs - baseline) * configuration.baselineFollow
        }
        guard loaded else { return .hold }
        let excess = (recent.min() ?? rttMs) - (baselineMs ?? rttMs)
        let severe = rttMs - (baselineMs ?? rttMs) > configuration.severeDelayMs
        if excess > configuration.raiseDelayMs || severe {
            if let lastDecrease, now - lastDecrease < configuration.decreaseHoldoff { return .hold }
            let old = rate
            rate = clamp(UInt64(Double(rate) * (severe ? configuration.severeDecreaseFactor : configuration.decreaseFactor)))
            lastDecrease = now
            lastIncrease = now
            return rate == old ? .hold : .decrease(from: old, to: rate)
        }
        if excess <= configuration.cleanDelayMs, busy {
            if let lastIncrease, now - lastIncrease < configuration.increaseInterval { return .hold }
            if lastIncrease == nil {
                lastIncrease = now
                return .hold
            }
            let old = rate
            let calm = lastDecrease.map { now - $0 >= configuration.fastIncreaseAfter } ?? true
            let step = max(Double(rate) * (configuration.increaseFactor - 1),
                           calm ? Double(ceiling > rate ? ceiling - rate : 0) * configuration.increaseGapFraction : 0)
            rate = clamp(UInt64(Double(rate) + step))
            lastIncrease = now
            return rate == old ? .hold : .increase(from: old, to: rate)
        }
        return .hold
    }
}

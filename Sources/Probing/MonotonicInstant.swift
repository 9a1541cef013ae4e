import Foundation

/// A point on the monotonic clock (CLOCK_MONOTONIC), in nanoseconds. Never steps with wall-clock changes, so
/// every interval the prober measures is immune to NTP corrections. Pure code takes instants as arguments.
public struct MonotonicInstant: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    public static func now() -> MonotonicInstant {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return MonotonicInstant(nanoseconds: UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec))
    }

    public static func < (lhs: MonotonicInstant, rhs: MonotonicInstant) -> Bool {
        lhs.nanoseconds < rhs.nanoseconds
    }

    /// `self + duration`; negative durations are allowed, the result saturates at zero.
    public static func + (lhs: MonotonicInstant, rhs: Duration) -> MonotonicInstant {
        let delta = rhs.nanoseconds
        if delta >= 0 { return MonotonicInstant(nanoseconds: lhs.nanoseconds &+ UInt64(delta)) }
        let magnitude = UInt64(-delta)
        return MonotonicInstant(nanoseconds: lhs.nanoseconds > magnitude ? lhs.nanoseconds - magnitude : 0)
    }

    /// The signed span from `rhs` to `lhs`.
    public static func - (lhs: MonotonicInstant, rhs: MonotonicInstant) -> Duration {
        if lhs >= rhs { return .nanoseconds(Int64(clamping: lhs.nanoseconds - rhs.nanoseconds)) }
        return .nanoseconds(-Int64(clamping: rhs.nanoseconds - lhs.nanoseconds))
    }

    public var description: String { String(format: "%.3fs", Double(nanoseconds) / 1e9) }
}

extension Duration {
    /// Whole nanoseconds, saturating at Int64's range (ample: 292 years).
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return scaled.addingReportingOverflow(attoseconds / 1_000_000_000).partialValue
    }

    var milliseconds: Double { Double(nanoseconds) / 1e6 }
}

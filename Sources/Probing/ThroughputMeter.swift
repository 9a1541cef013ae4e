import Foundation
import Model

/// Traffic actually carried by a path, in Mbit/s per direction.
public struct Throughput: Hashable, Sendable {
    public var receiveMbps: Double
    public var transmitMbps: Double
}

/// Passive throughput from cumulative byte counters (a WireGuard peer's rx/tx bytes from the UAPI, or an
/// interface's `/sys/class/net/<if>/statistics`), averaged over a sliding time window. It measures what the
/// path carried, not what it could carry: a lower bound on capacity, next to the active bandwidth test.
/// Pure; a counter that goes backwards (interface re-created, peer re-added) restarts the window.
public struct ThroughputMeter: Sendable {
    public let window: Duration
    private var samples: [(at: MonotonicInstant, rx: UInt64, tx: UInt64)] = []

    public init(window: Duration = .seconds(5)) {
        self.window = window
    }

    /// Adds a sample; returns the throughput over the window once two samples span some time.
    public mutating func sample(receivedBytes rx: UInt64, transmittedBytes tx: UInt64,
                                at time: MonotonicInstant) -> Throughput? {
        if let last = samples.last, rx < last.rx || tx < last.tx || time < last.at { samples.removeAll() }
        samples.append((time, rx, tx))
        while samples.count > 2, time - samples[1].at >= window { samples.removeFirst() }
        guard let first = samples.first, let last = samples.last, last.at > first.at else { return nil }
        let seconds = Double((last.at - first.at).nanoseconds) / 1e9
        return Throughput(receiveMbps: Double(last.rx - first.rx) * 8 / seconds / 1e6,
                          transmitMbps: Double(last.tx - first.tx) * 8 / seconds / 1e6)
    }

    /// Reads an interface's byte counters from sysfs (of the caller's network namespace); nil if it is gone.
    public static func interfaceCounters(_ interface: String) -> (received: UInt64, transmitted: UInt64)? {
        guard Uplink.isValidInterfaceName(interface) else { return nil }
        func read(_ name: String) -> UInt64? {
            guard let text = try? String(contentsOfFile: "/sys/class/net/\(interface)/statistics/\(name)",
                                         encoding: .utf8) else { return nil }
            return UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        guard let rx = read("rx_bytes"), let tx = read("tx_bytes") else { return nil }
        return (rx, tx)
    }
}

import Foundation
import Glibc

/// Echoes every UDP datagram back to its sender, from a thread of this process, on a socket that lives
/// in a lab namespace. For RTT measurements through the lab without ping (absent on this machine kind).
public final class UDPEchoResponder: @unchecked Sendable {
    public let socket: UDPSocket
    private let stopped = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var running = true

    public var port: UInt16 { socket.port }

    public init(in namespace: NetworkNamespace, address: String, port: UInt16 = 0) throws {
        socket = try UDPSocket(in: namespace, bindTo: address, port: port)
        let thread = Thread { [self] in
            while isRunning {
                guard let datagram = socket.receive(timeout: .milliseconds(100)) else { continue }
                socket.send(datagram.bytes, to: datagram.address, port: datagram.port)
            }
            stopped.signal()
        }
        thread.start()
    }

    private var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        return running
    }

    /// Stops the thread (within 100 ms). Idempotent.
    public func stop() {
        lock.lock()
        let wasRunning = running
        running = false
        lock.unlock()
        if wasRunning { stopped.wait() }
    }

    deinit { stop() }
}

/// Sends numbered UDP probes at a fixed spacing and records each one's round trip.
public enum LatencyProbe {
    /// One probe every `interval`; waits `timeout` after the last for stragglers. Returns, per probe in
    /// sending order, its RTT in milliseconds, or nil if no echo came back (lost).
    public static func roundTrips(from namespace: NetworkNamespace, to address: String, port: UInt16,
                                  count: Int, interval: Duration = .milliseconds(20),
                                  timeout: Duration = .seconds(1), payload: Int = 64) throws -> [Double?] {
        let socket = try UDPSocket(in: namespace)
        var sentAt = [UInt64](repeating: 0, count: count)
        var rtts = [Double?](repeating: nil, count: count)
        let intervalNs = UInt64(interval.components.seconds) * 1_000_000_000 + UInt64(interval.components.attoseconds / 1_000_000_000)
        let start = FramePipe.monotonicNanoseconds()
        var next = 0
        var lastSend = start
        var answered = 0
        while true {
            let now = FramePipe.monotonicNanoseconds()
            if next < count && now >= start + UInt64(next) * intervalNs {
                var bytes = [UInt8](repeating: 0, count: max(payload, 8))
                withUnsafeBytes(of: UInt64(next).littleEndian) { bytes.replaceSubrange(0..<8, with: $0) }
                sentAt[next] = FramePipe.monotonicNanoseconds()
                socket.send(bytes, to: address, port: port)
                lastSend = sentAt[next]
                next += 1
                continue
            }
            let waitUntil = next < count ? start + UInt64(next) * intervalNs : lastSend + UInt64(timeout.components.seconds) * 1_000_000_000 + UInt64(timeout.components.attoseconds / 1_000_000_000)
            if now >= waitUntil || (next >= count && answered == count) {
                if next >= count { break }
                continue
            }
            guard let echo = socket.receive(timeout: .nanoseconds(Int64(waitUntil - now))) else { continue }
            let arrived = FramePipe.monotonicNanoseconds()
            guard echo.bytes.count >= 8 else { continue }
            let sequence = echo.bytes.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            guard sequence < UInt64(next), rtts[Int(sequence)] == nil else { continue }
            rtts[Int(sequence)] = Double(arrived - sentAt[Int(sequence)]) / 1e6
            answered += 1
        }
        return rtts
    }
}

/// Order statistics for measurements.
public enum Statistics {
    public static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return .nan }
        let mid = sorted.count / 2
        return sorted.count % 2 == 0 ? (sorted[mid - 1] + sorted[mid]) / 2 : sorted[mid]
    }

    public static func standardDeviation(_ values: [Double]) -> Double {
        guard values.count > 1 else { return .nan }
        let mean = values.reduce(0, +) / Double(values.count)
        return (values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count - 1)).squareRoot()
    }

    /// Standard deviation of the values within `k` robust standard deviations of the median: as precise
    /// as the plain one for normal data (nothing is trimmed at k = 5), yet a few scheduling hiccups on a
    /// loaded machine cannot inflate it.
    public static func trimmedStandardDeviation(_ values: [Double], k: Double = 5) -> Double {
        let m = median(values)
        let bound = k * robustStandardDeviation(values)
        return standardDeviation(values.filter { abs($0 - m) <= bound })
    }

    /// Robust standard deviation: 1.4826 x the median absolute deviation (the stddev for normal data,
    /// insensitive to a few outliers from scheduling hiccups on a loaded machine).
    public static func robustStandardDeviation(_ values: [Double]) -> Double {
        let m = median(values)
        return 1.4826 * median(values.map { abs($0 - m) })
    }
}

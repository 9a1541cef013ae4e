import Foundation
import Glibc
import Lab

/// A paced UDP stream for failover measurements: each datagram carries a sequence number. The sender keeps
/// an absolute schedule (no drift when a send is late), the receiver reports the longest silence.
enum Stream {
    static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Sends `seconds * pps` datagrams of 160 bytes (a G.711 20 ms frame) to host:port: a 4-byte sequence
    /// number first, or with `rtpSSRC` a real RTP header (v2, PT 0, 16-bit sequence, timestamp + 160 per
    /// packet, the SSRC) before the 160 bytes.
    static func send(host: String, port: UInt16, pps: Int, seconds: Double, rtpSSRC: UInt32? = nil) throws {
        let socket = try UDPSocket(in: nil, bindTo: "0.0.0.0", port: 0)
        let count = Int(Double(pps) * seconds)
        let interval = 1_000_000_000 / UInt64(pps)
        let start = monotonicNanoseconds()
        var payload = [UInt8](repeating: 0, count: rtpSSRC == nil ? 160 : 172)
        if let ssrc = rtpSSRC {
            payload[0] = 0x80
            withUnsafeBytes(of: ssrc.bigEndian) { payload.replaceSubrange(8..<12, with: $0) }
            for i in 12..<172 { payload[i] = 0xd5 } // G.711 silence
        }
        for seq in 0..<count {
            let due = start + UInt64(seq) * interval
            let now = monotonicNanoseconds()
            if due > now {
                var ts = timespec(tv_sec: Int((due - now) / 1_000_000_000), tv_nsec: Int((due - now) % 1_000_000_000))
                nanosleep(&ts, nil)
            }
            if rtpSSRC != nil {
                withUnsafeBytes(of: UInt16(truncatingIfNeeded: seq).bigEndian) { payload.replaceSubrange(2..<4, with: $0) }
                withUnsafeBytes(of: UInt32(truncatingIfNeeded: seq &* 160).bigEndian) { payload.replaceSubrange(4..<8, with: $0) }
            } else {
                withUnsafeBytes(of: UInt32(seq).bigEndian) { payload.replaceSubrange(0..<4, with: $0) }
            }
            _ = socket.send(payload, to: host, port: port)
        }
    }

    /// Receives until `seconds` pass; prints one line: received, expected-by-sequence, lost, the longest
    /// gap between two consecutive arrivals in ms (the blackout plus one send interval), and how many
    /// datagrams arrived a second time (duplicates). `rtp`: the sequence number is the RTP header's.
    static func receive(port: UInt16, seconds: Double, rtp: Bool = false) throws {
        let socket = try UDPSocket(in: nil, bindTo: "0.0.0.0", port: port)
        let end = monotonicNanoseconds() + UInt64(seconds * 1e9)
        var last: UInt64?
        var maxGap: UInt64 = 0
        var received = 0
        var highest: UInt32 = 0
        var seen = Set<UInt32>()
        var duplicates = 0
        while monotonicNanoseconds() < end {
            guard let datagram = socket.receive(timeout: .milliseconds(100)), datagram.bytes.count >= 4 else { continue }
            let now = monotonicNanoseconds()
            let seq = rtp ? UInt32(datagram.bytes[2]) << 8 | UInt32(datagram.bytes[3])
                : datagram.bytes.prefix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            guard seen.insert(seq).inserted else {
                duplicates += 1
                continue
            }
            received += 1
            highest = max(highest, seq)
            if let last { maxGap = max(maxGap, now - last) }
            last = now
        }
        let expected = received == 0 ? 0 : Int(highest) + 1
        print(String(format: "received %d expected %d lost %d max_gap_ms %.1f duplicates %d", received, expected,
                     max(0, expected - received), Double(maxGap) / 1e6, duplicates))
    }
}

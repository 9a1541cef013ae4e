import CNetfilter

/// One netlink message: the 16-byte header fields and the payload after it (family header + attributes).
///
/// Pure value; encoding and parsing are bounds-checked and never trap on hostile input.
public struct NetlinkMessage: Equatable, Sendable {
    public var type: UInt16
    public var flags: UInt16
    public var sequence: UInt32
    public var portID: UInt32
    public var payload: [UInt8]

    public init(type: UInt16, flags: UInt16, sequence: UInt32 = 0, portID: UInt32 = 0, payload: [UInt8] = []) {
        self.type = type
        self.flags = flags
        self.sequence = sequence
        self.portID = portID
        self.payload = payload
    }

    public static let headerLength = 16

    /// Header plus payload, padded to 4 bytes as the kernel expects between messages.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }

    public func encode(into out: inout [UInt8]) {
        let length = UInt32(Self.headerLength + payload.count)
        out.appendHost(length)
        out.appendHost(type)
        out.appendHost(flags)
        out.appendHost(sequence)
        out.appendHost(portID)
        out.append(contentsOf: payload)
        out.padTo4()
    }

    /// Splits a datagram into messages. Throws on a truncated or inconsistent length.
    public static func parse(_ bytes: [UInt8]) throws(NetlinkError) -> [NetlinkMessage] {
        var messages: [NetlinkMessage] = []
        var offset = 0
        while bytes.count - offset >= headerLength {
            let length = Int(bytes.readHostU32(at: offset))
            guard length >= headerLength, length <= bytes.count - offset else {
                throw .malformed("parse netlink datagram", "message length \(length) at offset \(offset) of \(bytes.count)")
            }
            messages.append(NetlinkMessage(
                type: bytes.readHostU16(at: offset + 4),
                flags: bytes.readHostU16(at: offset + 6),
                sequence: bytes.readHostU32(at: offset + 8),
                portID: bytes.readHostU32(at: offset + 12),
                payload: Array(bytes[(offset + headerLength)..<(offset + length)])))
            offset += (length + 3) & ~3
        }
        return messages
    }
}

/// Well-known netlink header values (from linux/netlink.h), typed for Swift.
public enum NetlinkFlag {
    public static let request = UInt16(NLM_F_REQUEST)
    public static let multi = UInt16(NLM_F_MULTI)
    public static let ack = UInt16(NLM_F_ACK)
    public static let dump = UInt16(NLM_F_DUMP)
    public static let dumpInterrupted = UInt16(NLM_F_DUMP_INTR)
    public static let replace = UInt16(NLM_F_REPLACE)
    public static let exclusive = UInt16(NLM_F_EXCL)
    public static let create = UInt16(NLM_F_CREATE)
    public static let append = UInt16(NLM_F_APPEND)
    /// In an ack: the error message carries no copy of the request (NETLINK_CAP_ACK).
    public static let capped = UInt16(NLM_F_CAPPED)
    /// In an ack: extended ack TLVs follow.
    public static let ackTLVs = UInt16(NLM_F_ACK_TLVS)
}

public enum NetlinkMessageType {
    public static let noop = UInt16(NLMSG_NOOP)
    public static let error = UInt16(NLMSG_ERROR)
    public static let done = UInt16(NLMSG_DONE)
    public static let overrun = UInt16(NLMSG_OVERRUN)
}

// MARK: - Byte helpers

extension Array where Element == UInt8 {
    mutating func appendHost(_ v: UInt16) { Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) } }
    mutating func appendHost(_ v: UInt32) { Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) } }
    mutating func appendHost(_ v: Int32) { appendHost(UInt32(bitPattern: v)) }
    mutating func appendBig(_ v: UInt16) { Swift.withUnsafeBytes(of: v.bigEndian) { append(contentsOf: $0) } }
    mutating func appendBig(_ v: UInt32) { Swift.withUnsafeBytes(of: v.bigEndian) { append(contentsOf: $0) } }
    mutating func appendBig(_ v: UInt64) { Swift.withUnsafeBytes(of: v.bigEndian) { append(contentsOf: $0) } }
    mutating func padTo4() { while count % 4 != 0 { append(0) } }

    // The callers check bounds first; these are the only readers and they never trap on short input.
    func readHostU16(at i: Int) -> UInt16 {
        guard i >= 0, i + 2 <= count else { return 0 }
        return UInt16(self[i]) | UInt16(self[i + 1]) << 8
    }
    func readHostU32(at i: Int) -> UInt32 {
        guard i >= 0, i + 4 <= count else { return 0 }
        return UInt32(self[i]) | UInt32(self[i + 1]) << 8 | UInt32(self[i + 2]) << 16 | UInt32(self[i + 3]) << 24
    }
    func readHostU64(at i: Int) -> UInt64 {
        guard i >= 0, i + 8 <= count else { return 0 }
        return UInt64(readHostU32(at: i)) | UInt64(readHostU32(at: i + 4)) << 32
    }
}

extension UInt32 {
    /// The value's bytes in host (little-endian on every Linux we ship) order.
    public var hostBytes: [UInt8] { var a: [UInt8] = []; a.appendHost(self); return a }
    /// The value's bytes in network order.
    public var bigEndianBytes: [UInt8] { var a: [UInt8] = []; a.appendBig(self); return a }
}

extension UInt64 {
    /// The value's bytes in host (little-endian) order.
    public var hostBytes: [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: self >> (8 * $0)) } }
}

extension ArraySlice where Element == UInt8 {
    func hostU16(at i: Int) -> UInt16 { Array(self).readHostU16(at: i - startIndex) }
}

import CNetfilter

/// Builds a sequence of netlink attributes (TLVs, 4-byte aligned). Nesting is a closure so that the
/// nested length is always right.
public struct AttributeWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func put(_ type: UInt16, _ value: [UInt8]) {
        bytes.appendHost(UInt16(4 + value.count))
        bytes.appendHost(type)
        bytes.append(contentsOf: value)
        bytes.padTo4()
    }

    public mutating func putU8(_ type: UInt16, _ value: UInt8) { put(type, [value]) }
    public mutating func putHostU32(_ type: UInt16, _ value: UInt32) { put(type, value.hostBytes) }
    public mutating func putBigU32(_ type: UInt16, _ value: UInt32) { put(type, value.bigEndianBytes) }
    public mutating func putBigU64(_ type: UInt16, _ value: UInt64) {
        var a: [UInt8] = []
        a.appendBig(value)
        put(type, a)
    }
    /// A NUL-terminated string, as the kernel's NLA_STRING / NLA_NUL_STRING policies expect.
    public mutating func putString(_ type: UInt16, _ value: String) { put(type, Array(value.utf8) + [0]) }

    public mutating func nested(_ type: UInt16, _ body: (inout AttributeWriter) -> Void) {
        var inner = AttributeWriter()
        body(&inner)
        put(type | UInt16(NLA_F_NESTED), inner.bytes)
    }
}

/// One parsed attribute. `type` has the NESTED/BYTEORDER flag bits removed.
public struct NetlinkAttribute: Equatable, Sendable {
    public var type: UInt16
    public var value: [UInt8]

    public var hostU32: UInt32? { value.count >= 4 ? value.readHostU32(at: 0) : nil }
    public var bigU32: UInt32? {
        guard value.count >= 4 else { return nil }
        return UInt32(value[0]) << 24 | UInt32(value[1]) << 16 | UInt32(value[2]) << 8 | UInt32(value[3])
    }
    public var bigU64: UInt64? {
        guard value.count >= 8 else { return nil }
        return value[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
    }
    public var u8: UInt8? { value.first }
    /// A C string attribute, stopping at the first NUL.
    public var string: String {
        let end = value.firstIndex(of: 0) ?? value.count
        return String(decoding: value[0..<end], as: UTF8.self)
    }
    public func nested() throws(NetlinkError) -> AttributeList { try AttributeList(parsing: value) }
}

/// A parsed attribute sequence, in order, with first-match lookup.
public struct AttributeList: Sendable {
    public var attributes: [NetlinkAttribute]

    public init(parsing bytes: [UInt8]) throws(NetlinkError) {
        var list: [NetlinkAttribute] = []
        var offset = 0
        while bytes.count - offset >= 4 {
            let length = Int(bytes.readHostU16(at: offset))
            let type = bytes.readHostU16(at: offset + 2) & 0x3fff // NLA_TYPE_MASK: clears NLA_F_NESTED and NLA_F_NET_BYTEORDER
            guard length >= 4, length <= bytes.count - offset else {
                throw .malformed("parse netlink attributes", "attribute length \(length) at \(offset) of \(bytes.count)")
            }
            list.append(NetlinkAttribute(type: type, value: Array(bytes[(offset + 4)..<(offset + length)])))
            offset += (length + 3) & ~3
        }
        attributes = list
    }

    public subscript(_ type: UInt16) -> NetlinkAttribute? { attributes.first { $0.type == type } }
    public subscript(_ type: Int32) -> NetlinkAttribute? { self[UInt16(truncatingIfNeeded: type)] }
    public subscript(_ type: UInt32) -> NetlinkAttribute? { self[UInt16(truncatingIfNeeded: type)] }
    public subscript(_ type: Int) -> NetlinkAttribute? { self[UInt16(truncatingIfNeeded: type)] }
}

/// Small conversions so call sites can pass the imported C constants (Int32, UInt32 or anonymous Int) directly.
@inline(__always) func t(_ v: Int32) -> UInt16 { UInt16(truncatingIfNeeded: v) }
@inline(__always) func t(_ v: UInt32) -> UInt16 { UInt16(truncatingIfNeeded: v) }
@inline(__always) func t(_ v: Int) -> UInt16 { UInt16(truncatingIfNeeded: v) }

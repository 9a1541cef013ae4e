/// An IPv4 address held as a host-order 32-bit value.
///
/// Parsing accepts only the four-part dotted-decimal form ("192.0.2.1"): no octal, hex or shortened forms,
/// which other parsers accept silently and which are a classic source of misrouted traffic.
public struct IPv4Address: Hashable, Comparable, Sendable, TextCodable {
    public var value: UInt32

    public init(_ value: UInt32) { self.value = value }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses dotted-decimal text; nil when it is anything else.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var result: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  !(part.count > 1 && part.first == "0"),
                  let octet = UInt8(part) else { return nil }
            result = result << 8 | UInt32(octet)
        }
        value = result
    }

    /// The four bytes in network order.
    public var bytes: [UInt8] {
        [UInt8(value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8),
         UInt8(truncatingIfNeeded: value)]
    }

    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 4 else { return nil }
        value = bytes.reduce(0) { $0 << 8 | UInt32($1) }
    }

    public var description: String { bytes.map(String.init).joined(separator: ".") }
    public init?(text: String) { self.init(text) }
    public static let textForm = "an IPv4 address (a.b.c.d)"

    public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.value < rhs.value }
}

/// An IPv4 network prefix in canonical form (host bits zero), e.g. 10.99.0.0/16.
public struct IPv4Prefix: Hashable, Comparable, Sendable, TextCodable {
    public let network: IPv4Address
    public let length: UInt8

    /// Builds a prefix; host bits of `address` are cleared so that equal networks compare equal.
    public init(_ address: IPv4Address, length: UInt8) {
        precondition(length <= 32, "prefix length \(length) is over 32")
        self.length = length
        self.network = IPv4Address(address.value & IPv4Prefix.mask(length))
    }

    /// Parses "a.b.c.d/n" (a bare address means /32). Text with host bits set is rejected, since
    /// "10.1.2.3/24" is more often a typo than a wish for 10.1.2.0/24.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let address = IPv4Address(parts[0]) else { return nil }
        var length: UInt8 = 32
        if parts.count == 2 {
            guard (1...2).contains(parts[1].count), parts[1].allSatisfy({ $0.isASCII && $0.isNumber }),
                  let parsed = UInt8(parts[1]), parsed <= 32 else { return nil }
            length = parsed
        }
        guard address.value & ~IPv4Prefix.mask(length) == 0 else { return nil }
        self.init(address, length: length)
    }

    public static func mask(_ length: UInt8) -> UInt32 {
        length == 0 ? 0 : UInt32.max << (32 - UInt32(length))
    }

    public var mask: UInt32 { IPv4Prefix.mask(length) }
    /// The last address of the prefix.
    public var last: IPv4Address { IPv4Address(network.value | ~mask) }
    /// How many addresses the prefix holds (2^(32-length)).
    public var size: UInt64 { UInt64(1) << UInt64(32 - length) }

    public func contains(_ address: IPv4Address) -> Bool { address.value & mask == network.value }
    public func contains(_ other: IPv4Prefix) -> Bool { other.length >= length && contains(other.network) }
    public func overlaps(_ other: IPv4Prefix) -> Bool { contains(other) || other.contains(self) }

    public var description: String { "\(network)/\(length)" }
    public init?(text: String) { self.init(text) }
    public static let textForm = "an IPv4 prefix (a.b.c.d/n, host bits zero)"

    public static func < (lhs: IPv4Prefix, rhs: IPv4Prefix) -> Bool {
        (lhs.network, lhs.length) < (rhs.network, rhs.length)
    }
}

/// A UDP or TCP socket address ("192.0.2.1:51820").
public struct SocketAddress4: Hashable, Sendable, TextCodable {
    public var address: IPv4Address
    public var port: UInt16

    public init(_ address: IPv4Address, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// Parses "a.b.c.d:port"; port 0 is rejected.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let address = IPv4Address(parts[0]),
              parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), let port = UInt16(parts[1]), port != 0
        else { return nil }
        self.init(address, port: port)
    }

    public var description: String { "\(address):\(port)" }
    public init?(text: String) { self.init(text) }
    public static let textForm = "an address and port (a.b.c.d:port)"
}

/// A probe request or reply (UDP 51822): exactly 4 bytes, big-endian.
///
/// ```
///   bit 7 6   5 4    3     2 1 0    byte 1      byte 2      byte 3
///  | version | kind | copy | 0 0 0 |  sequence (24 bits, big-endian)  |
/// ```
/// - `version` (2 bits) is 1: 0, 2 and 3 are left for formats to come, so a future one can be told apart.
/// - `kind` (2 bits): 1 request, 2 reply; 0 and 3 are rejected.
/// - `copy`: set on the redundant copy of a suspect-mode probe (and on its reply), so loss counts per packet.
/// - the low 3 bits are reserved and must be 0.
/// - `sequence`: the probe's number modulo 2^24 (``ProbeSequence``). A prober starts at a random value.
///
/// Nothing else travels: the prober keeps each probe's send time itself (``ProbeLedger``) and takes the reply's
/// arrival time from the kernel, and the responder replies at once, so no timestamps are needed; WireGuard
/// authenticates the peer, and the random start plus the ledger's window reject stale and guessed replies.
/// Why 4 bytes: inside WireGuard a UDP payload of 0..4 bytes is a 32-byte inner packet, the smallest padding
/// step; that keeps a probe at 92 bytes on the uplink (docs/PROBING.md "Overhead").
public struct ProbePacket: Hashable, Sendable {
    public enum Kind: UInt8, Sendable, CaseIterable {
        case request = 1
        case reply = 2
    }

    public static let size = 4
    public static let version: UInt8 = 1

    public var kind: Kind
    /// Set on the second copy of a probe sent in suspect mode, so that loss is counted per packet.
    public var isCopy: Bool
    /// 24 bits; the initializer keeps only the low 24 bits of what it is given.
    public var sequence: UInt32

    public init(kind: Kind, sequence: UInt32, isCopy: Bool = false) {
        self.kind = kind
        self.sequence = sequence & ProbeSequence.mask
        self.isCopy = isCopy
    }

    private static let copyFlag: UInt8 = 0x08
    private static let reservedBits: UInt8 = 0x07

    public func encoded() -> [UInt8] {
        let head = ProbePacket.version << 6 | kind.rawValue << 4 | (isCopy ? ProbePacket.copyFlag : 0)
        return [head, UInt8(truncatingIfNeeded: sequence >> 16), UInt8(truncatingIfNeeded: sequence >> 8),
                UInt8(truncatingIfNeeded: sequence)]
    }

    /// Strict decode: exactly 4 bytes, version 1, a known kind, reserved bits 0.
    public static func decode(_ bytes: [UInt8]) throws(ProbeRejection) -> ProbePacket {
        guard bytes.count == size else { throw .truncated }
        let head = bytes[0]
        guard head >> 6 == version else { throw .badVersion }
        guard let kind = Kind(rawValue: head >> 4 & 0x03) else { throw .badKind }
        guard head & reservedBits == 0 else { throw .badFlags }
        let sequence = UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3])
        return ProbePacket(kind: kind, sequence: sequence, isCopy: head & copyFlag != 0)
    }

    /// The reply a responder sends for this request: same sequence and copy flag.
    public func reply() -> ProbePacket { ProbePacket(kind: .reply, sequence: sequence, isCopy: isCopy) }
}

/// Probe sequence numbers: 24 bits, wrapping. Comparisons are by distance modulo 2^24 (serial-number
/// arithmetic), never by `<`, so a window that straddles the wrap behaves like any other.
public enum ProbeSequence {
    public static let mask: UInt32 = 0x00ff_ffff
    /// 2^24.
    public static let count = 1 << 24

    /// The sequence after `sequence`.
    public static func next(_ sequence: UInt32) -> UInt32 { (sequence &+ 1) & mask }

    /// How many steps `later` is after `earlier`, modulo 2^24 (0 ... 2^24 - 1). A sequence "after" the newest
    /// one sent comes out as a huge distance, i.e. outside any window.
    public static func distance(from earlier: UInt32, to later: UInt32) -> UInt32 { (later &- earlier) & mask }

    /// A random first sequence, so a new run does not accept a previous run's late replies.
    public static func random() -> UInt32 { UInt32.random(in: 0...mask) }
}

/// Why a datagram on the probe or bandwidth port was not accepted. Each reason has its own drop counter
/// (``ProbeDrops``) and its raw value is the `reason` label of `patronus_dropped_datagrams_total`.
public enum ProbeRejection: String, Sendable, CaseIterable, Error {
    /// A probe that is not exactly 4 bytes; a train packet shorter than its header; a report of the wrong size.
    case truncated
    /// Bandwidth port only (train packets and reports start with "PR"); probes carry no magic.
    case badMagic
    case badVersion
    case badKind
    case badFlags
    /// A valid message that this receiver does not handle (a reply sent to the responder, a request sent to a
    /// prober, a report sent to the bandwidth receiver).
    case unexpectedKind
    /// A reply whose sequence is not one of the probes this prober sent recently (never sent, too old, a
    /// previous run's, or forged).
    case replyToNothing
    /// A datagram from an address that is not the probed peer or not in the responder's allowed sources.
    case unknownPeer
}

/// Big-endian 32-bit fields, bounds-checked by the callers' length checks.
enum WireWord {
    static func put(_ value: UInt32, into bytes: inout [UInt8], at offset: Int) {
        bytes[offset] = UInt8(value >> 24)
        bytes[offset + 1] = UInt8(truncatingIfNeeded: value >> 16)
        bytes[offset + 2] = UInt8(truncatingIfNeeded: value >> 8)
        bytes[offset + 3] = UInt8(truncatingIfNeeded: value)
    }

    static func get(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        UInt32(bytes[offset]) << 24 | UInt32(bytes[offset + 1]) << 16 | UInt32(bytes[offset + 2]) << 8
            | UInt32(bytes[offset + 3])
    }

    static func put16(_ value: UInt16, into bytes: inout [UInt8], at offset: Int) {
        bytes[offset] = UInt8(value >> 8)
        bytes[offset + 1] = UInt8(truncatingIfNeeded: value)
    }

    static func get16(_ bytes: [UInt8], _ offset: Int) -> UInt16 {
        UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    static func put64(_ value: UInt64, into bytes: inout [UInt8], at offset: Int) {
        put(UInt32(value >> 32), into: &bytes, at: offset)
        put(UInt32(truncatingIfNeeded: value), into: &bytes, at: offset + 4)
    }

    static func get64(_ bytes: [UInt8], _ offset: Int) -> UInt64 {
        UInt64(get(bytes, offset)) << 32 | UInt64(get(bytes, offset + 4))
    }
}

/// Drop counters by reason. A value: sockets keep one behind a lock and hand out copies.
public struct ProbeDrops: Hashable, Sendable, CustomStringConvertible {
    public private(set) var counts: [ProbeRejection: UInt64] = [:]

    public init() {}

    public subscript(reason: ProbeRejection) -> UInt64 { counts[reason, default: 0] }
    public var total: UInt64 { counts.values.reduce(0, +) }

    public mutating func count(_ reason: ProbeRejection) { counts[reason, default: 0] += 1 }

    public var description: String {
        let parts = ProbeRejection.allCases.compactMap { reason in
            counts[reason].map { "\(reason.rawValue)=\($0)" }
        }
        return parts.isEmpty ? "none" : parts.joined(separator: " ")
    }
}

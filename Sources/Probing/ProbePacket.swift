/// The probe wire format: one fixed-size 20-byte UDP payload for every message type, big-endian.
///
/// ```
///  0      2     3      4         8          12            16              20
///  | "PR" | ver | kind | session | sequence | senderStamp | responderHold |
/// ```
/// - `ver` is 1. The kind byte's low nibble is a ``ProbePacket/Kind``; its high nibble holds flags
///   (0x10 "copy": the redundant copy of a suspect-mode probe; 0x20 "end of train": report now).
/// - `senderStamp` is the low 32 bits of the sender's monotonic clock in nanoseconds. The prober keeps the full
///   send time itself; the echo only lets it reject replies that do not match what it sent.
/// - `responderHold` is how long the responder held the request (receive to send), in nanoseconds, saturating.
///   The prober subtracts it from the round trip so that a slow responder does not look like a slow path.
///
/// 20 bytes is the most that fits in WireGuard's first 16-byte padding block after the inner IPv4 and UDP
/// headers (28 + 20 = 48): see docs/PROBING.md "Overhead".
public struct ProbePacket: Hashable, Sendable {
    public enum Kind: UInt8, Sendable, CaseIterable {
        case request = 1
        case reply = 2
        /// A packet of a bandwidth train (port 51823); train packets are padded to the train's packet size.
        case train = 3
        /// The receiver's measurement of a train, sent back to the train's sender (a ``TrainReport`` follows).
        case report = 4
    }

    public static let size = 20
    public static let magic: (UInt8, UInt8) = (0x50, 0x52)
    public static let version: UInt8 = 1

    public var kind: Kind
    /// Set on the second copy of a probe sent in suspect mode, so that loss is counted per packet.
    public var isCopy: Bool
    /// Set on the train packet that asks the receiver for its report.
    public var isEndOfTrain: Bool
    public var session: UInt32
    public var sequence: UInt32
    public var senderStamp: UInt32
    public var responderHold: UInt32

    public init(kind: Kind, session: UInt32, sequence: UInt32, senderStamp: UInt32 = 0, responderHold: UInt32 = 0,
                isCopy: Bool = false, isEndOfTrain: Bool = false) {
        self.kind = kind
        self.session = session
        self.sequence = sequence
        self.senderStamp = senderStamp
        self.responderHold = responderHold
        self.isCopy = isCopy
        self.isEndOfTrain = isEndOfTrain
    }

    /// Why a datagram was not accepted. Each reason has its own drop counter (``ProbeDrops``).
    public enum Rejection: String, Sendable, CaseIterable, Error {
        /// Shorter than 20 bytes, or a probe longer than 20 bytes.
        case truncated
        case badMagic
        case badVersion
        case badKind
        case badFlags
        /// A valid message that this receiver does not handle (a reply sent to the responder, ...).
        case unexpectedKind
        /// The session id is not this prober's (a reply meant for a previous run, or forged).
        case unknownSession
        /// A reply whose sequence was never sent or has left the window, or whose echoed stamp does not match.
        case replyToNothing
        /// A datagram from an address that is not the probed peer or not in the responder's allowed sources.
        case unknownPeer
    }

    private static let copyFlag: UInt8 = 0x10
    private static let endFlag: UInt8 = 0x20

    /// The bytes on the wire. `padTo` larger than 20 appends zeros (bandwidth trains).
    public func encoded(padTo length: Int = ProbePacket.size) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: max(length, ProbePacket.size))
        bytes[0] = ProbePacket.magic.0
        bytes[1] = ProbePacket.magic.1
        bytes[2] = ProbePacket.version
        bytes[3] = kind.rawValue | (isCopy ? ProbePacket.copyFlag : 0) | (isEndOfTrain ? ProbePacket.endFlag : 0)
        WireWord.put(session, into: &bytes, at: 4)
        WireWord.put(sequence, into: &bytes, at: 8)
        WireWord.put(senderStamp, into: &bytes, at: 12)
        WireWord.put(responderHold, into: &bytes, at: 16)
        return bytes
    }

    /// Strict decode: exactly 20 bytes (`allowPadding` accepts longer datagrams, for trains and reports, and
    /// ignores what follows the header), known magic, version, kind and flags; the copy flag only on probes and
    /// replies, end-of-train only on trains.
    public static func decode(_ bytes: [UInt8], allowPadding: Bool = false) throws(Rejection) -> ProbePacket {
        guard bytes.count >= size, allowPadding || bytes.count == size else { throw .truncated }
        guard bytes[0] == magic.0, bytes[1] == magic.1 else { throw .badMagic }
        guard bytes[2] == version else { throw .badVersion }
        guard let kind = Kind(rawValue: bytes[3] & 0x0f) else { throw .badKind }
        let flags = bytes[3] & 0xf0
        guard flags & ~(copyFlag | endFlag) == 0 else { throw .badFlags }
        let isCopy = flags & copyFlag != 0
        let isEnd = flags & endFlag != 0
        if isCopy && !(kind == .request || kind == .reply) { throw .badFlags }
        if isEnd && kind != .train { throw .badFlags }
        return ProbePacket(kind: kind, session: WireWord.get(bytes, 4), sequence: WireWord.get(bytes, 8),
                           senderStamp: WireWord.get(bytes, 12), responderHold: WireWord.get(bytes, 16),
                           isCopy: isCopy, isEndOfTrain: isEnd)
    }

    /// The reply a responder sends for this request: same session, sequence, stamp and copy flag.
    public func reply(holdNanoseconds: UInt64) -> ProbePacket {
        ProbePacket(kind: .reply, session: session, sequence: sequence, senderStamp: senderStamp,
                    responderHold: UInt32(clamping: holdNanoseconds), isCopy: isCopy)
    }
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
    public private(set) var counts: [ProbePacket.Rejection: UInt64] = [:]

    public init() {}

    public subscript(reason: ProbePacket.Rejection) -> UInt64 { counts[reason, default: 0] }
    public var total: UInt64 { counts.values.reduce(0, +) }

    public mutating func count(_ reason: ProbePacket.Rejection) { counts[reason, default: 0] += 1 }

    public var description: String {
        let parts = ProbePacket.Rejection.allCases.compactMap { reason in
            counts[reason].map { "\(reason.rawValue)=\($0)" }
        }
        return parts.isEmpty ? "none" : parts.joined(separator: " ")
    }
}

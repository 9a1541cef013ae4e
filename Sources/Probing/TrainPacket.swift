/// The header of every bandwidth-test datagram (UDP 51823): 16 bytes, big-endian. Train packets are padded
/// with zeros to the train's packet size; a report carries a 24-byte body (``TrainReport``).
///
/// ```
///  0      2     3      4         8       10       12      16
///  | "PR" | ver | kind | session | train | length | index |
/// ```
/// - `ver` is 2 (version 1 was the 20-byte header that probes and trains once shared).
/// - `kind`: low nibble 3 train packet, 4 report; high nibble flags, only 0x20 "end of train" (on train packets:
///   send the report now); other bits must be 0.
/// - `session`: random per test run, so that reports of an earlier run are not taken for this one's.
/// - `train`: the train's index in the test; `length`: packets in the train (a train packet needs 1...65535;
///   0 in a report).
/// - `index`: a train packet's index in its train (== `length` on the end-of-train request); in a report, the
///   number of the train's packets that arrived.
///
/// Unlike probes, trains are large anyway (1200 bytes by default), so their header can afford a magic and
/// room for the test's bookkeeping.
public struct TrainPacket: Hashable, Sendable {
    public enum Kind: UInt8, Sendable, CaseIterable {
        /// A packet of a bandwidth train.
        case train = 3
        /// The receiver's measurement of a train, sent back to the train's sender (a ``TrainReport``).
        case report = 4
    }

    public static let headerSize = 16
    public static let magic: (UInt8, UInt8) = (0x50, 0x52)
    public static let version: UInt8 = 2
    private static let endFlag: UInt8 = 0x20

    public var kind: Kind
    /// Set on the train packet that asks the receiver for its report.
    public var isEndOfTrain: Bool
    public var session: UInt32
    public var train: UInt16
    public var length: UInt16
    public var index: UInt32

    public init(kind: Kind, session: UInt32, train: UInt16, length: UInt16, index: UInt32,
                isEndOfTrain: Bool = false) {
        self.kind = kind
        self.session = session
        self.train = train
        self.length = length
        self.index = index
        self.isEndOfTrain = isEndOfTrain
    }

    /// The header, followed by zeros up to `length` bytes when that is larger.
    public func encoded(padTo size: Int = TrainPacket.headerSize) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: max(size, TrainPacket.headerSize))
        bytes[0] = TrainPacket.magic.0
        bytes[1] = TrainPacket.magic.1
        bytes[2] = TrainPacket.version
        bytes[3] = kind.rawValue | (isEndOfTrain ? TrainPacket.endFlag : 0)
        WireWord.put(session, into: &bytes, at: 4)
        WireWord.put16(train, into: &bytes, at: 8)
        WireWord.put16(length, into: &bytes, at: 10)
        WireWord.put(index, into: &bytes, at: 12)
        return bytes
    }

    /// Strict decode of the header (what follows it is the caller's): magic, version, kind, flags (end of train
    /// only on train packets), and on train packets a length of at least 1 and an index below it (equal to it
    /// on the end-of-train request); a report's length must be 0.
    public static func decode(_ bytes: [UInt8]) throws(ProbeRejection) -> TrainPacket {
        guard bytes.count >= headerSize else { throw .truncated }
        guard bytes[0] == magic.0, bytes[1] == magic.1 else { throw .badMagic }
        guard bytes[2] == version else { throw .badVersion }
        guard let kind = Kind(rawValue: bytes[3] & 0x0f) else { throw .badKind }
        let flags = bytes[3] & 0xf0
        guard flags & ~endFlag == 0 else { throw .badFlags }
        let isEnd = flags & endFlag != 0
        let packet = TrainPacket(kind: kind, session: WireWord.get(bytes, 4), train: WireWord.get16(bytes, 8),
                                 length: WireWord.get16(bytes, 10), index: WireWord.get(bytes, 12),
                                 isEndOfTrain: isEnd)
        switch kind {
        case .train:
            let length = UInt32(packet.length)
            guard length > 0, isEnd ? packet.index == length : packet.index < length else { throw .badFlags }
        case .report:
            guard !isEnd, packet.length == 0 else { throw .badFlags }
        }
        return packet
    }
}

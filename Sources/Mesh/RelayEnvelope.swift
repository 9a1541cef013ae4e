/// A relayed announcement: another site's announcement datagram, byte for byte as its origin sent it, inside a
/// small envelope that says "relayed" (docs/MESH.md, "Relayed discovery").
///
/// The envelope adds no authority: the receiver decodes and authenticates the inner datagram exactly as if
/// the origin had sent it (its MAC or signature covers every byte the origin wrote), and applies the same replay
/// rules, so a relay can neither forge, alter nor replay an announcement. What the envelope tells the receiver
/// is only that the datagram's source address is the relay's, not the origin's: a relayed announcement never
/// teaches where the origin can be reached, and it is never relayed again (one hop: no loops, no storms).
///
/// Wire format: the version 2 header (docs/MESH.md) with kind 1, then the inner datagram:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `PTMA` |
/// | 4 | 1 | version 2 |
/// | 5 | 1 | kind 1 (relayed announcement) |
/// | 6 | 1 | flags: 0 |
/// | 7 | 1 | reserved: 0 |
/// | 8 | 2 | total length, envelope included (big-endian); must equal the datagram's size |
/// | 10 | n | the origin's datagram, unchanged |
public enum RelayEnvelope {
    public static let version: UInt8 = 2
    public static let kind: UInt8 = 1
    public static let headerSize = 10
    /// The inner datagram may be as large as any announcement the codec accepts.
    public static let maxDatagramSize = AnnouncementCodec.maxDatagramSize + headerSize

    /// True when `bytes` start like an envelope (magic, version 2, kind 1); such a datagram is either a valid
    /// envelope or rejected as `badRelay`, never read as an announcement.
    public static func isEnvelope<Bytes: RandomAccessCollection<UInt8>>(_ bytes: Bytes) -> Bool where Bytes.Index == Int {
        guard bytes.count >= 6 else { return false }
        let start = bytes.startIndex
        return bytes[start..<start + 4].elementsEqual(AnnouncementCodec.magic) && bytes[start + 4] == version
            && bytes[start + 5] == kind
    }

    public static func wrap(_ datagram: [UInt8]) -> [UInt8] {
        let total = headerSize + datagram.count
        precondition(total <= maxDatagramSize, "an accepted announcement is at most \(AnnouncementCodec.maxDatagramSize) bytes")
        return AnnouncementCodec.magic + [version, kind, 0, 0, UInt8(total >> 8), UInt8(total & 0xff)] + datagram
    }

    /// The inner datagram, or `badRelay` when the envelope is malformed (length field, empty or oversized
    /// inner datagram). The inner bytes are not decoded here.
    public static func unwrap(_ bytes: ArraySlice<UInt8>) throws(AnnouncementRejection) -> ArraySlice<UInt8> {
        guard isEnvelope(bytes), bytes.count > headerSize, bytes.count <= maxDatagramSize else { throw .badRelay }
        let start = bytes.startIndex
        let length = Int(bytes[start + 8]) << 8 | Int(bytes[start + 9])
        guard bytes[start + 6] == 0, bytes[start + 7] == 0, length == bytes.count else { throw .badRelay }
        return bytes[(start + headerSize)...]
    }
}

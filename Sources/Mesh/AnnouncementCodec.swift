import Crypto
import Foundation
import Model
import WireGuard

/// Encodes and decodes announcements in the versioned binary format of docs/MESH.md, and authenticates
/// them with HMAC-SHA256 under the mesh key.
///
/// The decoder is stateless and strict: it checks size, magic, version, flags and the length field, then the
/// MAC (in constant time, before reading any body field), then every body length and count exactly. It never
/// traps or allocates more than the datagram's size, and rejects with a reason. Replay, staleness and
/// identity checks need state and live in `PeerTable`. Cost: one HMAC-SHA256 over at most 1 KB per datagram.
public struct AnnouncementCodec: Sendable {
    public static let magic: [UInt8] = Array("PTMA".utf8)
    public static let version: UInt8 = 1
    public static let flagAuthenticated: UInt8 = 0x01
    public static let headerSize = 16
    public static let macSize = 32
    /// Far above the largest valid announcement (about 650 bytes), below any MTU.
    public static let maxDatagramSize = 1024
    public static let maxNameBytes = 63
    public static let maxLabelBytes = 32
    public static let maxLANPrefixes = 32
    public static let maxEndpoints = 8

    public let authentication: MeshAuthentication

    public init(authentication: MeshAuthentication) {
        self.authentication = authentication
    }

    /// Why `encode` refused: the announcement would not pass a receiver's decoder.
    public enum EncodingError: Error, Hashable, CustomStringConvertible {
        case invalidName(String)
        case invalidLabel(String)
        case tooManyLANPrefixes(Int)
        case tooManyEndpoints(Int)

        public var description: String {
            switch self {
            case .invalidName(let name):
                "site name '\(name)' is not 1-\(AnnouncementCodec.maxNameBytes) bytes of printable text"
            case .invalidLabel(let label):
                "uplink label '\(label)' is invalid: use 1-32 letters, digits, '-' or '_', starting with a letter"
            case .tooManyLANPrefixes(let count):
                "\(count) LAN prefixes: an announcement carries at most \(AnnouncementCodec.maxLANPrefixes)"
            case .tooManyEndpoints(let count):
                "\(count) endpoints: an announcement carries at most \(AnnouncementCodec.maxEndpoints)"
            }
        }
    }

    /// Names must be printable (no control characters: they end up in logs and the database).
    public static func isValidName(_ name: String) -> Bool {
        (1...maxNameBytes).contains(name.utf8.count) && !name.unicodeScalars.contains {
            $0.properties.generalCategory == .control || $0.properties.generalCategory == .format
        }
    }

    public func encode(_ announcement: Announcement) throws(EncodingError) -> [UInt8] {
        guard Self.isValidName(announcement.name) else { throw .invalidName(announcement.name) }
        guard announcement.lanPrefixes.count <= Self.maxLANPrefixes else {
            throw .tooManyLANPrefixes(announcement.lanPrefixes.count)
        }
        guard announcement.endpoints.count <= Self.maxEndpoints else {
            throw .tooManyEndpoints(announcement.endpoints.count)
        }
        for endpoint in announcement.endpoints where !Policy.isValidName(endpoint.label) {
            throw .invalidLabel(endpoint.label)
        }
        var out = Self.magic
        out.append(Self.version)
        let authenticated = if case .key = authentication { true } else { false }
        out.append(authenticated ? Self.flagAuthenticated : 0)
        out += [0, 0]  // length, filled in below
        out += bigEndian(announcement.counter)
        out += bigEndian(announcement.timestampMilliseconds)
        out += withUnsafeBytes(of: announcement.siteID.uuid.uuid) { Array($0) }
        out += announcement.publicKey.bytes
        out += announcement.overlay.bytes
        out.append(UInt8(announcement.name.utf8.count))
        out += Array(announcement.name.utf8)
        out.append(UInt8(announcement.lanPrefixes.count))
        for prefix in announcement.lanPrefixes {
            out += prefix.network.bytes
            out.append(prefix.length)
        }
        out.append(UInt8(announcement.endpoints.count))
        for endpoint in announcement.endpoints {
            out.append(UInt8(endpoint.label.utf8.count))
            out += Array(endpoint.label.utf8)
            out += endpoint.address.address.bytes
            out += bigEndian(endpoint.address.port)
        }
        let total = out.count + (authenticated ? Self.macSize : 0)
        out[6] = UInt8(total >> 8)
        out[7] = UInt8(total & 0xff)
        if case .key(let key) = authentication {
            out += Array(HMAC<SHA256>.authenticationCode(for: out, using: key.key))
        }
        return out
    }

    public func decode(_ datagram: some Collection<UInt8>) throws(AnnouncementRejection) -> Announcement {
        guard datagram.count <= Self.maxDatagramSize else { throw .oversized }
        let bytes = Array(datagram)
        guard bytes.count >= Self.headerSize else { throw .truncated }
        guard Array(bytes[0..<4]) == Self.magic else { throw .badMagic }
        guard bytes[4] == Self.version else { throw .badVersion }
        let flags = bytes[5]
        guard flags & ~Self.flagAuthenticated == 0 else { throw .badFlags }
        let declared = Int(bytes[6]) << 8 | Int(bytes[7])
        guard declared <= bytes.count else { throw .truncated }
        guard declared == bytes.count else { throw .badLength }

        let authenticated = flags & Self.flagAuthenticated != 0
        let bodyEnd: Int
        switch authentication {
        case .key(let key):
            guard authenticated else { throw .authenticationMismatch }
            guard bytes.count >= Self.headerSize + Self.macSize else { throw .truncated }
            bodyEnd = bytes.count - Self.macSize
            let valid = HMAC<SHA256>.isValidAuthenticationCode(bytes[bodyEnd...], authenticating: bytes[..<bodyEnd],
                                                               using: key.key)
            guard valid else { throw .badMAC }
        case .insecure:
            guard !authenticated else { throw .authenticationMismatch }
            bodyEnd = bytes.count
        }

        var reader = ByteReader(bytes: bytes[..<bodyEnd], offset: 8)
        let counter = try reader.u64()
        let timestamp = try reader.u64()
        let id = Array(try reader.take(16))
        let uuid = UUID(uuid: (id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7],
                               id[8], id[9], id[10], id[11], id[12], id[13], id[14], id[15]))
        let publicKey = WireGuardKey(bytes: try reader.take(32))!
        let overlay = IPv4Address(bytes: try reader.take(4))!
        let name = try reader.string(maxBytes: Self.maxNameBytes)
        guard Self.isValidName(name) else { throw .malformed }

        let prefixCount = Int(try reader.u8())
        guard prefixCount <= Self.maxLANPrefixes else { throw .malformed }
        var prefixes: [IPv4Prefix] = []
        for _ in 0..<prefixCount {
            let address = IPv4Address(bytes: try reader.take(4))!
            let length = try reader.u8()
            guard length <= 32 else { throw .malformed }
            let prefix = IPv4Prefix(address, length: length)
            guard prefix.network == address else { throw .malformed }  // canonical only
            prefixes.append(prefix)
        }

        let endpointCount = Int(try reader.u8())
        guard endpointCount <= Self.maxEndpoints else { throw .malformed }
        var endpoints: [Endpoint] = []
        for _ in 0..<endpointCount {
            let label = try reader.string(maxBytes: Self.maxLabelBytes)
            guard Policy.isValidName(label) else { throw .malformed }
            let address = IPv4Address(bytes: try reader.take(4))!
            let port = try reader.u16()
            guard port != 0 else { throw .malformed }
            endpoints.append(Endpoint(label: label, address: SocketAddress4(address, port: port)))
        }
        guard reader.isAtEnd else { throw .malformed }
        return Announcement(siteID: SiteID(uuid), name: name, publicKey: publicKey, overlay: overlay,
                            lanPrefixes: prefixes, endpoints: endpoints, counter: counter,
                            timestampMilliseconds: timestamp)
    }
}

private func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
}

/// Reads big-endian fields from a byte slice; every read is bounds-checked and throws `.truncated`.
struct ByteReader {
    let bytes: ArraySlice<UInt8>
    var offset: Int

    init(bytes: ArraySlice<UInt8>, offset: Int) {
        self.bytes = bytes
        self.offset = bytes.startIndex + offset
    }

    var isAtEnd: Bool { offset == bytes.endIndex }

    mutating func take(_ count: Int) throws(AnnouncementRejection) -> ArraySlice<UInt8> {
        guard count >= 0, bytes.endIndex - offset >= count else { throw .truncated }
        defer { offset += count }
        return bytes[offset..<(offset + count)]
    }

    mutating func u8() throws(AnnouncementRejection) -> UInt8 { try take(1).first! }

    mutating func u16() throws(AnnouncementRejection) -> UInt16 {
        try take(2).reduce(0) { $0 << 8 | UInt16($1) }
    }

    mutating func u64() throws(AnnouncementRejection) -> UInt64 {
        try take(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// A length-prefixed (one byte) UTF-8 string of 1...maxBytes bytes.
    mutating func string(maxBytes: Int) throws(AnnouncementRejection) -> String {
        let length = Int(try u8())
        guard (1...maxBytes).contains(length) else { throw .malformed }
        guard let text = String(validating: try take(length), as: UTF8.self) else { throw .malformed }
        return text
    }
}

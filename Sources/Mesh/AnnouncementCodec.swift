import Crypto
import Foundation
import Model
import WireGuard

/// The kind of a version 2 message (header byte 5).
public enum MeshMessageKind: UInt8, Sendable, Hashable {
    /// A site's signed (or, without certificates, MAC-only) announcement of itself.
    case announcement = 0
    /// Reserved for the relay envelope of issue 13 (a relay passes the origin's bytes on unchanged inside it).
    case relay = 1
    /// A CA-signed revocation list, passed on by every site.
    case revocationList = 2
    /// Where a site sees another site's tunnels from (NAT traversal, `EndpointObservation`); sent only through
    /// a tunnel to that site.
    case observation = 3
}

/// A decoded, verified message.
public enum MeshMessage: Hashable, Sendable {
    case announcement(Announcement)
    case revocationList(RevocationList)
    case observation(EndpointObservation)
}

/// A message whose header, MAC and structure checked out, before any signature check (`AnnouncementCodec.open`).
/// Cheap to produce; `AnnouncementCodec.verify` does the expensive part.
public struct OpenedMessage: Sendable {
    public var kind: MeshMessageKind
    /// The announcement as announced (kind 0); not yet trusted.
    public var announcement: Announcement?
    /// Kind 2; its CA signature not yet checked.
    public var revocationList: RevocationList?
    /// Kind 3 (MAC-checked; the receiver checks that it came through the observer's tunnel).
    public var observation: EndpointObservation?
    /// Kind 0 when signed: the certificate it carries, and what the site's signature covers.
    var certificate: SiteCertificate?
    var signedRegion: ArraySlice<UInt8> = []
    var signature: ArraySlice<UInt8> = []

    /// True when `verify` will check Ed25519 signatures (what a flood must not get for free).
    public var needsSignatureCheck: Bool { certificate != nil || revocationList != nil }
}

/// Encodes and decodes the messages of docs/MESH.md: format version 2 (announcements signed by the site's
/// identity key and carrying its certificate, revocation lists), and version 1 (the shared key alone), which
/// it still reads and can still write for sites not yet upgraded.
///
/// Decoding is stateless and strict, a function of the datagram's bytes, the mesh key, the trusted CAs and the
/// clock alone (so a relayed original verifies exactly like a direct one). `open` checks size, magic, version,
/// kind, flags and the length field, then the MAC (constant time, before reading any body field), then every
/// length and count exactly; `verify` then checks the certificate against the trusted CAs, its validity window,
/// that the announcement stays within it, the site's signature and the CA's signature (cheapest first). It
/// never traps or allocates more than the datagram's size, and rejects with a reason. Replay, staleness,
/// revocation and identity checks need state and live in `PeerTable`.
/// Cost: one HMAC-SHA256 over at most 1.4 KB per datagram in `open`; two Ed25519 verifications in `verify`.
public struct AnnouncementCodec: Sendable {
    public static let magic: [UInt8] = Array("PTMA".utf8)
    public static let version: UInt8 = 2
    public static let legacyVersion: UInt8 = 1
    public static let flagAuthenticated: UInt8 = 0x01
    /// Version 2, kind 0: a certificate and the site's signature follow the body.
    public static let flagSigned: UInt8 = 0x02
    /// Version 2, kind 0: the site relays for other members (`SiteDescription.relay`). Honoured only unsigned
    /// (the mesh key vouches for it) or with a certificate of role hub.
    public static let flagRelay: UInt8 = 0x04
    /// Version 2: magic, version, kind, flags, reserved, length.
    public static let headerSize = 10
    static let legacyHeaderSize = 16
    static let legacyBodyOffset = 8
    public static let macSize = 32
    public static let signatureSize = 64
    /// What a receiver reads of a datagram: room for a relay envelope around the largest message (about 1130
    /// bytes), and within a WireGuard tunnel's MTU (1420 - 28).
    public static let maxDatagramSize = 1392
    public static let maxNameBytes = 63
    public static let maxLabelBytes = 32
    public static let maxLANPrefixes = 32
    public static let maxEndpoints = 8

    public let authentication: MeshAuthentication
    public let trust: CertificateTrust
    public let signer: AnnouncementSigner?

    public init(authentication: MeshAuthentication, trust: CertificateTrust = .none, signer: AnnouncementSigner? = nil) {
        self.authentication = authentication
        self.trust = trust
        self.signer = signer
    }

    /// Why `encode` refused: the announcement would not pass a receiver's decoder.
    public enum EncodingError: Error, Hashable, CustomStringConvertible {
        case invalidName(String)
        case invalidLabel(String)
        case tooManyLANPrefixes(Int)
        case tooManyEndpoints(Int)
        /// Our certificate does not allow what we announce (receivers would refuse it as `outsideCertificate`).
        case outsideCertificate(String)

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
            case .outsideCertificate(let what):
                "the site certificate does not allow \(what): ask the CA for a certificate that does (ca sign)"
            }
        }
    }

    /// Names must be printable (no control characters: they end up in logs and the database).
    public static func isValidName(_ name: String) -> Bool {
        (1...maxNameBytes).contains(name.utf8.count) && !name.unicodeScalars.contains {
            $0.properties.generalCategory == .control || $0.properties.generalCategory == .format
        }
    }

    /// Checks what a receiver would refuse before anything is sent.
    public func validate(_ site: SiteDescription) throws(EncodingError) {
        guard Self.isValidName(site.name) else { throw .invalidName(site.name) }
        guard site.lanPrefixes.count <= Self.maxLANPrefixes else { throw .tooManyLANPrefixes(site.lanPrefixes.count) }
        guard site.endpoints.count <= Self.maxEndpoints else { throw .tooManyEndpoints(site.endpoints.count) }
        for endpoint in site.endpoints where !Policy.isValidName(endpoint.label) { throw .invalidLabel(endpoint.label) }
        if let certificate = signer?.certificate {
            if site.siteID != certificate.siteID || site.name != certificate.name {
                throw .outsideCertificate("site \(site.name) (\(site.siteID)): it is for \(certificate.name) (\(certificate.siteID))")
            }
            for prefix in site.lanPrefixes where !certificate.lanPrefixes.contains(where: { $0.contains(prefix) }) {
                throw .outsideCertificate("the LAN prefix \(prefix)")
            }
            if !certificate.overlayPrefixes.contains(where: { $0.contains(site.overlay) }) {
                throw .outsideCertificate("the overlay address \(site.overlay)")
            }
        }
    }

    /// The body shared by both versions: counter, timestamp, id, key, overlay, name, LAN prefixes, endpoints.
    private static func body(_ announcement: Announcement) -> [UInt8] {
        var out = bigEndian(announcement.counter)
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
        out += encodeEndpoints(announcement.endpoints)
        return out
    }

    private var authenticated: Bool { if case .key = authentication { true } else { false } }

    /// Header + content (+ the site's signature when `sign`) + MAC, with the length filled in.
    private func seal(kind: MeshMessageKind, content: [UInt8], certificate: [UInt8]?, flags extra: UInt8 = 0) -> [UInt8] {
        let flags = (authenticated ? Self.flagAuthenticated : 0) | (certificate != nil ? Self.flagSigned : 0) | extra
        var out = Self.magic + [Self.version, kind.rawValue, flags, 0, 0, 0] + content
        if let certificate {
            out += bigEndian(UInt16(certificate.count)) + certificate
        }
        let total = out.count + (certificate != nil ? Self.signatureSize : 0) + (authenticated ? Self.macSize : 0)
        out[8] = UInt8(total >> 8)
        out[9] = UInt8(total & 0xff)
        if certificate != nil, let signer { out += signer.key.signature(for: out) }
        if case .key(let key) = authentication {
            out += Array(HMAC<SHA256>.authenticationCode(for: out, using: key.key))
        }
        return out
    }

    /// A version 2 announcement: signed with our identity key and carrying our certificate when we have one.
    public func encode(_ announcement: Announcement) throws(EncodingError) -> [UInt8] {
        try validate(announcement.site)
        return seal(kind: .announcement, content: Self.body(announcement), certificate: signer?.encodedCertificate,
                    flags: announcement.relay ? Self.flagRelay : 0)
    }

    /// A version 1 announcement (the shared key alone), for sites that do not read version 2 yet.
    public func encodeLegacy(_ announcement: Announcement) throws(EncodingError) -> [UInt8] {
        try validate(announcement.site)
        var out = Self.magic + [Self.legacyVersion, authenticated ? Self.flagAuthenticated : 0, 0, 0]
        out += Self.body(announcement)
        let total = out.count + (authenticated ? Self.macSize : 0)
        out[6] = UInt8(total >> 8)
        out[7] = UInt8(total & 0xff)
        if case .key(let key) = authentication {
            out += Array(HMAC<SHA256>.authenticationCode(for: out, using: key.key))
        }
        return out
    }

    /// A revocation list message (kind 2): the CA-signed list as it is, passed on unchanged by every site.
    public func encode(_ list: RevocationList) throws(RevocationList.Invalid) -> [UInt8] {
        seal(kind: .revocationList, content: try list.encode(), certificate: nil)
    }

    /// An endpoint observation (kind 3): MAC-authenticated like every message; what makes it the observer's
    /// is that it only counts when it arrives through a tunnel from the observer (`DiscoveryService`).
    public func encode(_ observation: EndpointObservation) throws(EncodingError) -> [UInt8] {
        guard (1...Self.maxEndpoints).contains(observation.sightings.count) else {
            throw .tooManyEndpoints(observation.sightings.count)
        }
        for sighting in observation.sightings where !Policy.isValidName(sighting.label) {
            throw .invalidLabel(sighting.label)
        }
        return seal(kind: .observation, content: observation.body, certificate: nil)
    }

    /// Header, MAC and structure (no signature checked yet). See the type's documentation.
    public func open(_ datagram: some Collection<UInt8>) throws(AnnouncementRejection) -> OpenedMessage {
        guard datagram.count <= Self.maxDatagramSize else { throw .oversized }
        let bytes = Array(datagram)
        guard bytes.count >= 5 else { throw .truncated }
        guard Array(bytes[0..<4]) == Self.magic else { throw .badMagic }
        let legacy: Bool
        switch bytes[4] {
        case Self.version: legacy = false
        case Self.legacyVersion: legacy = true
        default: throw .badVersion
        }
        guard bytes.count >= (legacy ? Self.legacyHeaderSize : Self.headerSize) else { throw .truncated }
        let kind: MeshMessageKind
        let flags: UInt8
        let lengthAt: Int
        if legacy {
            (kind, flags, lengthAt) = (.announcement, bytes[5], 6)
            guard flags & ~Self.flagAuthenticated == 0 else { throw .badFlags }
        } else {
            guard let known = MeshMessageKind(rawValue: bytes[5]), known != .relay else { throw .badKind }
            (kind, flags, lengthAt) = (known, bytes[6], 8)
            let allowed = Self.flagAuthenticated | (kind == .announcement ? Self.flagSigned | Self.flagRelay : 0)
            guard flags & ~allowed == 0, bytes[7] == 0 else { throw .badFlags }
        }
        let declared = Int(bytes[lengthAt]) << 8 | Int(bytes[lengthAt + 1])
        guard declared <= bytes.count else { throw .truncated }
        guard declared == bytes.count else { throw .badLength }

        var end = bytes.count
        switch authentication {
        case .key(let key):
            guard flags & Self.flagAuthenticated != 0 else { throw .authenticationMismatch }
            guard bytes.count >= Self.headerSize + Self.macSize else { throw .truncated }
            end -= Self.macSize
            let valid = HMAC<SHA256>.isValidAuthenticationCode(bytes[end...], authenticating: bytes[..<end],
                                                               using: key.key)
            guard valid else { throw .badMAC }
        case .insecure:
            guard flags & Self.flagAuthenticated == 0 else { throw .authenticationMismatch }
        }

        let headerSize = legacy ? Self.legacyBodyOffset : Self.headerSize
        switch kind {
        case .revocationList:
            let list = try RevocationList.decode(bytes[headerSize..<end])
            return OpenedMessage(kind: kind, revocationList: list)
        case .relay:
            throw .badKind
        case .observation:
            var reader = ByteReader(bytes: bytes[..<end], offset: headerSize)
            let observation = try EndpointObservation.read(&reader)
            guard reader.isAtEnd else { throw .malformed }
            return OpenedMessage(kind: kind, observation: observation)
        case .announcement:
            var reader = ByteReader(bytes: bytes[..<end], offset: headerSize)
            var announcement = try Self.readBody(&reader)
            announcement.relay = !legacy && flags & Self.flagRelay != 0
            guard flags & Self.flagSigned != 0 else {
                guard reader.isAtEnd else { throw .malformed }
                return OpenedMessage(kind: kind, announcement: announcement)
            }
            let certificateLength = Int(try reader.u16())
            let certificate = try SiteCertificate.decode(try reader.take(certificateLength))
            let signedEnd = reader.offset
            let signature = try reader.take(Self.signatureSize)
            guard reader.isAtEnd else { throw .malformed }
            return OpenedMessage(kind: kind, announcement: announcement, certificate: certificate,
                                 signedRegion: bytes[..<signedEnd], signature: signature)
        }
    }

    private static func readBody(_ reader: inout ByteReader) throws(AnnouncementRejection) -> Announcement {
        let counter = try reader.u64()
        let timestamp = try reader.u64()
        let id = try reader.siteID()
        let publicKey = WireGuardKey(bytes: try reader.take(32))!
        let overlay = IPv4Address(bytes: try reader.take(4))!
        let name = try reader.string(maxBytes: Self.maxNameBytes)
        guard Self.isValidName(name) else { throw .malformed }
        let prefixes = try reader.prefixes(max: Self.maxLANPrefixes)

        let endpoints = try reader.endpoints()
        return Announcement(siteID: id, name: name, publicKey: publicKey, overlay: overlay,
                            lanPrefixes: prefixes, endpoints: endpoints, counter: counter,
                            timestampMilliseconds: timestamp)
    }

    /// The expensive checks, cheapest first (see the type's documentation). `now` judges validity windows.
    public func verify(_ opened: OpenedMessage, now: Date) throws(AnnouncementRejection) -> MeshMessage {
        if let list = opened.revocationList {
            guard let authority = trust.authority(for: list.issuer) else { throw .unknownCA }
            guard list.isSigned(by: authority) else { throw .badSignature }
            return .revocationList(list)
        }
        if let observation = opened.observation { return .observation(observation) }
        guard var announcement = opened.announcement else { throw .badKind }
        guard let certificate = opened.certificate else {
            guard !trust.required else { throw .unsigned }
            return .announcement(announcement)
        }
        // Without a trusted CA (the first step of a migration) a signed announcement counts as the MAC says.
        guard !trust.authorities.isEmpty else { return .announcement(announcement) }
        guard let authority = trust.authority(for: certificate.issuer) else { throw .unknownCA }
        let seconds = now.timeIntervalSince1970
        guard seconds >= TimeInterval(certificate.notBefore) else { throw .notYetValid }
        guard seconds <= TimeInterval(certificate.notAfter) else { throw .expired }
        guard certificate.permits(announcement.site) else { throw .outsideCertificate }
        guard certificate.identityKey.isValidSignature(opened.signature, for: opened.signedRegion) else {
            throw .badSignature
        }
        guard certificate.isSigned(by: authority) else { throw .badCertificate }
        announcement.certificate = certificate
        // The CA decides who relays: a certified site relays only with role hub.
        if certificate.role != .hub { announcement.relay = false }
        return .announcement(announcement)
    }

    /// Whether `verify` would check signatures for this message (what the signature budget is spent on).
    public func checksSignatures(of opened: OpenedMessage) -> Bool {
        opened.needsSignatureCheck && !trust.authorities.isEmpty
    }

    /// `open` then `verify`.
    public func decodeMessage(_ datagram: some Collection<UInt8>, now: Date = Date()) throws(AnnouncementRejection) -> MeshMessage {
        try verify(try open(datagram), now: now)
    }

    /// Decodes an announcement (any other kind is `badKind`).
    public func decode(_ datagram: some Collection<UInt8>, now: Date = Date()) throws(AnnouncementRejection) -> Announcement {
        guard case .announcement(let announcement) = try decodeMessage(datagram, now: now) else { throw .badKind }
        return announcement
    }
}

func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
}

/// A count, then per endpoint: label (length-prefixed), IPv4 address, port.
private func encodeEndpoints(_ endpoints: [Endpoint]) -> [UInt8] {
    var out: [UInt8] = [UInt8(endpoints.count)]
    for endpoint in endpoints {
        out.append(UInt8(endpoint.label.utf8.count))
        out += Array(endpoint.label.utf8)
        out += endpoint.address.address.bytes
        out += bigEndian(endpoint.address.port)
    }
    return out
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

    mutating func siteID() throws(AnnouncementRejection) -> SiteID {
        let id = Array(try take(16))
        return SiteID(UUID(uuid: (id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7],
                                  id[8], id[9], id[10], id[11], id[12], id[13], id[14], id[15])))
    }

    /// A count (at most `max`) then that many canonical prefixes (4-byte network, 1-byte length).
    mutating func prefixes(max: Int) throws(AnnouncementRejection) -> [IPv4Prefix] {
        let count = Int(try u8())
        guard count <= max else { throw .malformed }
        var prefixes: [IPv4Prefix] = []
        for _ in 0..<count {
            let address = IPv4Address(bytes: try take(4))!
            let length = try u8()
            guard length <= 32 else { throw .malformed }
            let prefix = IPv4Prefix(address, length: length)
            guard prefix.network == address else { throw .malformed }  // canonical only
            prefixes.append(prefix)
        }
        return prefixes
    }

    /// A count (at most `AnnouncementCodec.maxEndpoints`), then that many endpoints: a valid label, an IPv4
    /// address, a non-zero port.
    mutating func endpoints() throws(AnnouncementRejection) -> [Endpoint] {
        let count = Int(try u8())
        guard count <= AnnouncementCodec.maxEndpoints else { throw .malformed }
        var endpoints: [Endpoint] = []
        for _ in 0..<count {
            let label = try string(maxBytes: AnnouncementCodec.maxLabelBytes)
            guard Policy.isValidName(label) else { throw .malformed }
            endpoints.append(Endpoint(label: label, address: try socketAddress()))
        }
        return endpoints
    }

    /// An IPv4 address and a non-zero port.
    mutating func socketAddress() throws(AnnouncementRejection) -> SocketAddress4 {
        let address = IPv4Address(bytes: try take(4))!
        let port = try u16()
        guard port != 0 else { throw .malformed }
        return SocketAddress4(address, port: port)
    }

    /// A length-prefixed (one byte) UTF-8 string of 1...maxBytes bytes.
    mutating func string(maxBytes: Int) throws(AnnouncementRejection) -> String {
        let length = Int(try u8())
        guard (1...maxBytes).contains(length) else { throw .malformed }
        guard let text = String(validating: try take(length), as: UTF8.self) else { throw .malformed }
        return text
    }
}

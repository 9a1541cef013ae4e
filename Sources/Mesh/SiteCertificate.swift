import Crypto
import Foundation
import Model

/// What a certified site may do. `site` announces itself; `hub` is also allowed to relay other sites'
/// announcements (issue 13 defines relaying; a relay can never alter what it passes on either way).
public enum SiteRole: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case site = 0
    case hub = 1

    public var description: String { self == .site ? "site" : "hub" }

    public init?(name: String) {
        guard let role = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = role
    }
}

/// An Ed25519 public key (32 bytes): a site's identity key or a mesh CA's key.
public struct SigningPublicKey: Hashable, Sendable, CustomStringConvertible {
    public static let length = 32
    public let bytes: [UInt8]

    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.length else { return nil }
        self.bytes = Array(bytes)
    }

    /// The first 8 bytes of SHA-256 of the key: how certificates and revocation lists name their CA.
    public var keyID: [UInt8] { Array(SHA256.hash(data: bytes).prefix(8)) }

    /// Ed25519 verification (swift-crypto). False for a signature of the wrong size.
    public func isValidSignature(_ signature: some DataProtocol, for message: some DataProtocol) -> Bool {
        guard signature.count == 64, let key = try? Curve25519.Signing.PublicKey(rawRepresentation: bytes) else {
            return false
        }
        return key.isValidSignature(signature, for: message)
    }

    public var base64: String { Data(bytes).base64EncodedString() }
    public var description: String { base64 }
}

/// An Ed25519 private key (the 32-byte seed): a site's identity key or the mesh CA's key. Kept in a 0600 file
/// (`Store.SecretFile`); its description never shows it.
public struct SigningPrivateKey: Sendable, CustomStringConvertible {
    private let seed: [UInt8]
    public let publicKey: SigningPublicKey

    public init?(bytes: [UInt8]) {
        guard bytes.count == 32, let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: bytes) else { return nil }
        seed = bytes
        publicKey = SigningPublicKey(bytes: key.publicKey.rawRepresentation)!
    }

    public static func generate() -> SigningPrivateKey {
        SigningPrivateKey(bytes: Array(Curve25519.Signing.PrivateKey().rawRepresentation))!
    }

    /// The seed, to write to a key file.
    public var bytes: [UInt8] { seed }

    public func signature(for message: [UInt8]) -> [UInt8] {
        // The seed was validated in init; signing cannot fail for a valid key.
        let key = try! Curve25519.Signing.PrivateKey(rawRepresentation: seed)
        return Array(try! key.signature(for: message))
    }

    public var description: String { "signing key (hidden), public \(publicKey)" }
}

/// A site certificate (docs/MESH.md "Site certificates"): the mesh CA binds a site's name and id, its identity
/// public key, the LAN prefixes and overlay addresses it may announce, its role and a validity window.
/// The encoding is canonical: `decode(encode(c)) == c`, and the CA's signature covers every byte before it.
public struct SiteCertificate: Hashable, Sendable {
    public static let formatVersion: UInt8 = 1
    public static let maxLANPrefixes = AnnouncementCodec.maxLANPrefixes
    public static let maxOverlayPrefixes = 8
    public static let signatureSize = 64

    /// The CA's `keyID`.
    public var issuer: [UInt8]
    /// Random, 8 bytes; what a revocation list names.
    public var serial: UInt64
    public var siteID: SiteID
    public var name: String
    public var role: SiteRole
    public var identityKey: SigningPublicKey
    /// Unix seconds, inclusive.
    public var notBefore: UInt64
    public var notAfter: UInt64
    /// Every LAN prefix the site announces must lie within one of these.
    public var lanPrefixes: [IPv4Prefix]
    /// The site's overlay address must lie within one of these.
    public var overlayPrefixes: [IPv4Prefix]
    /// The CA's Ed25519 signature over the encoded fields (empty before signing).
    public var signature: [UInt8]

    public init(issuer: [UInt8], serial: UInt64, siteID: SiteID, name: String, role: SiteRole,
                identityKey: SigningPublicKey, notBefore: UInt64, notAfter: UInt64, lanPrefixes: [IPv4Prefix],
                overlayPrefixes: [IPv4Prefix], signature: [UInt8] = []) {
        self.issuer = issuer
        self.serial = serial
        self.siteID = siteID
        self.name = name
        self.role = role
        self.identityKey = identityKey
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.lanPrefixes = lanPrefixes
        self.overlayPrefixes = overlayPrefixes
        self.signature = signature
    }

    /// Why a certificate cannot be made (names the fix).
    public enum Invalid: Error, Hashable, CustomStringConvertible {
        case name(String)
        case tooManyPrefixes(Int)
        case overlay(Int)
        case window

        public var description: String {
            switch self {
            case .name(let name): "site name '\(name)' is not 1-\(AnnouncementCodec.maxNameBytes) bytes of printable text"
            case .tooManyPrefixes(let n): "\(n) LAN prefixes: a certificate holds at most \(SiteCertificate.maxLANPrefixes)"
            case .overlay(let n): "\(n) overlay prefixes: a certificate holds 1-\(SiteCertificate.maxOverlayPrefixes)"
            case .window: "the validity window is empty (not-after must be after not-before)"
            }
        }
    }

    /// The fields the CA signs.
    public func signedBytes() throws(Invalid) -> [UInt8] {
        guard AnnouncementCodec.isValidName(name) else { throw .name(name) }
        guard lanPrefixes.count <= Self.maxLANPrefixes else { throw .tooManyPrefixes(lanPrefixes.count) }
        guard (1...Self.maxOverlayPrefixes).contains(overlayPrefixes.count) else { throw .overlay(overlayPrefixes.count) }
        guard notAfter > notBefore else { throw .window }
        var out: [UInt8] = [Self.formatVersion]
        out += issuer
        out += bigEndianBytes(serial)
        out += withUnsafeBytes(of: siteID.uuid.uuid) { Array($0) }
        out.append(UInt8(name.utf8.count))
        out += Array(name.utf8)
        out.append(role.rawValue)
        out += identityKey.bytes
        out += bigEndianBytes(notBefore)
        out += bigEndianBytes(notAfter)
        for list in [lanPrefixes, overlayPrefixes] {
            out.append(UInt8(list.count))
            for prefix in list {
                out += prefix.network.bytes
                out.append(prefix.length)
            }
        }
        return out
    }

    /// Signs with the CA key: sets `issuer` to the key's id and `signature`.
    public mutating func sign(with ca: SigningPrivateKey) throws(Invalid) {
        issuer = ca.publicKey.keyID
        signature = ca.signature(for: try signedBytes())
    }

    /// The signed fields followed by the signature.
    public func encode() throws(Invalid) -> [UInt8] { try signedBytes() + signature }

    /// Parses one certificate that must fill `bytes` exactly. Structure only: the signature is checked by
    /// `isSigned(by:)`.
    public static func decode(_ bytes: some Collection<UInt8>) throws(AnnouncementRejection) -> SiteCertificate {
        let array = Array(bytes)
        var reader = ByteReader(bytes: array[...], offset: 0)
        guard try reader.u8() == formatVersion else { throw .malformed }
        let issuer = Array(try reader.take(8))
        let serial = try reader.u64()
        let siteID = try reader.siteID()
        let name = try reader.string(maxBytes: AnnouncementCodec.maxNameBytes)
        guard AnnouncementCodec.isValidName(name) else { throw .malformed }
        guard let role = SiteRole(rawValue: try reader.u8()) else { throw .malformed }
        let identityKey = SigningPublicKey(bytes: try reader.take(32))!
        let notBefore = try reader.u64()
        let notAfter = try reader.u64()
        guard notAfter > notBefore else { throw .malformed }
        let lan = try reader.prefixes(max: maxLANPrefixes)
        let overlay = try reader.prefixes(max: maxOverlayPrefixes)
        guard !overlay.isEmpty else { throw .malformed }
        let signature = Array(try reader.take(signatureSize))
        guard reader.isAtEnd else { throw .malformed }
        return SiteCertificate(issuer: issuer, serial: serial, siteID: siteID, name: name, role: role,
                               identityKey: identityKey, notBefore: notBefore, notAfter: notAfter, lanPrefixes: lan,
                               overlayPrefixes: overlay, signature: signature)
    }

    public func isSigned(by ca: SigningPublicKey) -> Bool {
        guard issuer == ca.keyID, let signed = try? signedBytes() else { return false }
        return ca.isValidSignature(signature, for: signed)
    }

    /// Whether `site` announces only what this certificate allows: its id and name, every LAN prefix within
    /// one of ours, its overlay address within one of ours.
    public func permits(_ site: SiteDescription) -> Bool {
        site.siteID == siteID && site.name == name
            && site.lanPrefixes.allSatisfy { prefix in lanPrefixes.contains { $0.contains(prefix) } }
            && overlayPrefixes.contains { $0.contains(site.overlay) }
    }

    public var notBeforeDate: Date { Date(timeIntervalSince1970: TimeInterval(notBefore)) }
    public var notAfterDate: Date { Date(timeIntervalSince1970: TimeInterval(notAfter)) }

    /// The serial as 16 hex digits (how `ca show` and `ca revoke` name it).
    public var serialText: String { hex16(serial) }

    /// SHA-256 of the encoded certificate, hex: a fingerprint for humans.
    public var fingerprint: String {
        SHA256.hash(data: (try? encode()) ?? []).map { String(format: "%02x", $0) }.joined()
    }
}

/// The mesh CA's certificate: its name and public key, self-signed. What every router trusts (`run --ca`).
public struct CACertificate: Hashable, Sendable {
    public static let formatVersion: UInt8 = 1
    public var name: String
    public var publicKey: SigningPublicKey
    /// Unix seconds.
    public var created: UInt64
    public var signature: [UInt8]

    public init(name: String, publicKey: SigningPublicKey, created: UInt64, signature: [UInt8] = []) {
        self.name = name
        self.publicKey = publicKey
        self.created = created
        self.signature = signature
    }

    public static func create(name: String, key: SigningPrivateKey, now: Date = Date()) throws(SiteCertificate.Invalid) -> CACertificate {
        guard AnnouncementCodec.isValidName(name) else { throw .name(name) }
        var ca = CACertificate(name: name, publicKey: key.publicKey, created: UInt64(max(0, now.timeIntervalSince1970)))
        ca.signature = key.signature(for: ca.signedBytes())
        return ca
    }

    func signedBytes() -> [UInt8] {
        [Self.formatVersion, UInt8(name.utf8.count)] + Array(name.utf8) + publicKey.bytes + bigEndianBytes(created)
    }

    public func encode() -> [UInt8] { signedBytes() + signature }

    /// Parses and checks the self-signature (a corrupted or edited file is refused).
    public static func decode(_ bytes: some Collection<UInt8>) throws(AnnouncementRejection) -> CACertificate {
        let array = Array(bytes)
        var reader = ByteReader(bytes: array[...], offset: 0)
        guard try reader.u8() == formatVersion else { throw .malformed }
        let name = try reader.string(maxBytes: AnnouncementCodec.maxNameBytes)
        let key = SigningPublicKey(bytes: try reader.take(32))!
        let created = try reader.u64()
        let signature = Array(try reader.take(64))
        guard reader.isAtEnd else { throw .malformed }
        let ca = CACertificate(name: name, publicKey: key, created: created, signature: signature)
        guard key.isValidSignature(signature, for: ca.signedBytes()) else { throw .badCertificate }
        return ca
    }
}

/// A CA-signed list of revoked certificate serials (docs/MESH.md "Revocation"). A higher `number` from the
/// same CA replaces a lower one; it travels as its own message kind and every site passes it on.
public struct RevocationList: Hashable, Sendable {
    public static let formatVersion: UInt8 = 1
    /// Fits one datagram with header, signature and MAC.
    public static let maxSerials = 120

    public var issuer: [UInt8]
    /// Strictly increasing per CA (`ca revoke` adds one).
    public var number: UInt64
    /// Unix seconds.
    public var issued: UInt64
    /// Sorted, no duplicates.
    public var serials: [UInt64]
    public var signature: [UInt8]

    public init(issuer: [UInt8], number: UInt64, issued: UInt64, serials: [UInt64], signature: [UInt8] = []) {
        self.issuer = issuer
        self.number = number
        self.issued = issued
        self.serials = serials
        self.signature = signature
    }

    public enum Invalid: Error, Hashable, CustomStringConvertible {
        case tooManySerials(Int)
        public var description: String {
            switch self {
            case .tooManySerials(let n):
                "\(n) revoked certificates: a list holds at most \(RevocationList.maxSerials); start a new CA for the sites still trusted"
            }
        }
    }

    func signedBytes() throws(Invalid) -> [UInt8] {
        guard serials.count <= Self.maxSerials else { throw .tooManySerials(serials.count) }
        var out: [UInt8] = [Self.formatVersion] + issuer + bigEndianBytes(number) + bigEndianBytes(issued)
        out.append(UInt8(serials.count))
        for serial in serials { out += bigEndianBytes(serial) }
        return out
    }

    public mutating func sign(with ca: SigningPrivateKey) throws(Invalid) {
        issuer = ca.publicKey.keyID
        serials = Array(Set(serials)).sorted()
        signature = ca.signature(for: try signedBytes())
    }

    public func encode() throws(Invalid) -> [UInt8] { try signedBytes() + signature }

    public static func decode(_ bytes: some Collection<UInt8>) throws(AnnouncementRejection) -> RevocationList {
        let array = Array(bytes)
        var reader = ByteReader(bytes: array[...], offset: 0)
        guard try reader.u8() == formatVersion else { throw .malformed }
        let issuer = Array(try reader.take(8))
        let number = try reader.u64()
        let issued = try reader.u64()
        let count = Int(try reader.u8())
        guard count <= maxSerials else { throw .malformed }
        var serials: [UInt64] = []
        for _ in 0..<count {
            let serial = try reader.u64()
            guard serials.last.map({ $0 < serial }) ?? true else { throw .malformed }  // canonical: sorted, unique
            serials.append(serial)
        }
        let signature = Array(try reader.take(64))
        guard reader.isAtEnd else { throw .malformed }
        return RevocationList(issuer: issuer, number: number, issued: issued, serials: serials, signature: signature)
    }

    public func isSigned(by ca: SigningPublicKey) -> Bool {
        guard issuer == ca.keyID, let signed = try? signedBytes() else { return false }
        return ca.isValidSignature(signature, for: signed)
    }
}

/// Which CAs this router trusts and whether it requires every announcement to be certified.
public struct CertificateTrust: Sendable, Equatable {
    public var authorities: [SigningPublicKey]
    /// Refuse unsigned announcements (`unsigned`). Off during a migration from the shared key alone.
    public var required: Bool

    public init(authorities: [SigningPublicKey] = [], required: Bool = false) {
        self.authorities = authorities
        self.required = required
    }

    public static let none = CertificateTrust()

    public func authority(for issuer: [UInt8]) -> SigningPublicKey? {
        authorities.first { $0.keyID == issuer }
    }
}

/// What signs our announcements: the site's identity key and its certificate.
public struct AnnouncementSigner: Sendable {
    public let key: SigningPrivateKey
    public let certificate: SiteCertificate
    let encodedCertificate: [UInt8]

    /// Fails when the certificate is not for this key.
    public init?(key: SigningPrivateKey, certificate: SiteCertificate) {
        guard certificate.identityKey == key.publicKey, let encoded = try? certificate.encode() else { return nil }
        self.key = key
        self.certificate = certificate
        self.encodedCertificate = encoded
    }
}

/// The text form of certificates, keys and lists in files: PEM-style armour around base64, one kind per label.
public enum Armor {
    public static let siteCertificate = "PATRONUS SITE CERTIFICATE"
    public static let caCertificate = "PATRONUS MESH CA"
    public static let revocationList = "PATRONUS REVOCATION LIST"
    public static let certificateRequest = "PATRONUS CERTIFICATE REQUEST"

    public static func wrap(_ bytes: [UInt8], label: String) -> String {
        let text = Data(bytes).base64EncodedString()
        var lines = ["-----BEGIN \(label)-----"]
        var rest = Substring(text)
        while !rest.isEmpty {
            lines.append(String(rest.prefix(64)))
            rest = rest.dropFirst(64)
        }
        lines.append("-----END \(label)-----")
        return lines.joined(separator: "\n") + "\n"
    }

    /// Every block with `label` in `text`, in order (a file may hold several, e.g. two CAs during a rotation).
    public static func unwrap(_ text: String, label: String) -> [[UInt8]] {
        var blocks: [[UInt8]] = []
        var current: String?
        for line in text.split(whereSeparator: \.isNewline).map({ $0.trimmingCharacters(in: .whitespaces) }) {
            if line == "-----BEGIN \(label)-----" {
                current = ""
            } else if line == "-----END \(label)-----" {
                if let body = current, let data = Data(base64Encoded: body) { blocks.append(Array(data)) }
                current = nil
            } else if current != nil {
                current! += line
            }
        }
        return blocks
    }
}

/// A site's request to be certified: what `identity request` writes and `ca sign` reads.
public struct CertificateRequest: Hashable, Sendable {
    public var siteID: SiteID
    public var name: String
    public var identityKey: SigningPublicKey

    public init(siteID: SiteID, name: String, identityKey: SigningPublicKey) {
        self.siteID = siteID
        self.name = name
        self.identityKey = identityKey
    }

    public func encode() -> [UInt8] {
        [1] + withUnsafeBytes(of: siteID.uuid.uuid) { Array($0) } + [UInt8(name.utf8.count)] + Array(name.utf8)
            + identityKey.bytes
    }

    public static func decode(_ bytes: some Collection<UInt8>) throws(AnnouncementRejection) -> CertificateRequest {
        let array = Array(bytes)
        var reader = ByteReader(bytes: array[...], offset: 0)
        guard try reader.u8() == 1 else { throw .malformed }
        let id = try reader.siteID()
        let name = try reader.string(maxBytes: AnnouncementCodec.maxNameBytes)
        guard AnnouncementCodec.isValidName(name) else { throw .malformed }
        let key = SigningPublicKey(bytes: try reader.take(32))!
        guard reader.isAtEnd else { throw .malformed }
        return CertificateRequest(siteID: id, name: name, identityKey: key)
    }
}

func bigEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
}

func hex16(_ value: UInt64) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: 16 - digits.count) + digits
}

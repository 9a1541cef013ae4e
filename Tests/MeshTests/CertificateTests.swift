import Foundation
import Model
import Testing
import WireGuard
@testable import Mesh

/// A mesh CA and certified sites with fixed keys, so signatures (Ed25519 is deterministic) and bytes are stable.
struct CertifiedMesh {
    static let now = Date(timeIntervalSince1970: 1_700_000_000)
    let ca = SigningPrivateKey(bytes: [UInt8](repeating: 0xca, count: 32))!
    let meshKey = MeshKey(bytes: Array(0..<32))!

    var trust: CertificateTrust { CertificateTrust(authorities: [ca.publicKey], required: true) }

    func identity(_ n: UInt8) -> SigningPrivateKey { SigningPrivateKey(bytes: [UInt8](repeating: n, count: 32))! }

    func certificate(for announcement: Announcement, key: SigningPrivateKey, serial: UInt64 = 1,
                     lan: [IPv4Prefix]? = nil, overlay: [IPv4Prefix] = [IPv4Prefix("10.99.0.0/16")!],
                     notBefore: UInt64 = 1_690_000_000, notAfter: UInt64 = 1_710_000_000,
                     by signer: SigningPrivateKey? = nil) throws -> SiteCertificate {
        var certificate = SiteCertificate(issuer: [], serial: serial, siteID: announcement.siteID, name: announcement.name,
                                          role: .site, identityKey: key.publicKey, notBefore: notBefore,
                                          notAfter: notAfter, lanPrefixes: lan ?? announcement.lanPrefixes,
                                          overlayPrefixes: overlay)
        try certificate.sign(with: signer ?? ca)
        return certificate
    }

    /// A codec that signs as `announcement`'s site with `certificate`.
    func codec(signing key: SigningPrivateKey, _ certificate: SiteCertificate,
               trust: CertificateTrust? = nil) -> AnnouncementCodec {
        AnnouncementCodec(authentication: .key(meshKey), trust: trust ?? self.trust,
                          signer: AnnouncementSigner(key: key, certificate: certificate)!)
    }

    var receiver: AnnouncementCodec { AnnouncementCodec(authentication: .key(meshKey), trust: trust) }

    /// `sampleAnnouncement()` certified and encoded.
    func signedSample(serial: UInt64 = 1) throws -> (bytes: [UInt8], announcement: Announcement, certificate: SiteCertificate) {
        let announcement = sampleAnnouncement(timestamp: 1_700_000_000_000)
        let certificate = try certificate(for: announcement, key: identity(1), serial: serial)
        return (try codec(signing: identity(1), certificate).encode(announcement), announcement, certificate)
    }
}

struct CertificateTests {
    let mesh = CertifiedMesh()
    let now = CertifiedMesh.now

    /// With certificates the CA decides who relays: the relay flag counts only with role hub.
    @Test func onlyAHubCertificateMayRelay() throws {
        var announcement = sampleAnnouncement(timestamp: 1_700_000_000_000)
        announcement.relay = true
        var certificate = try mesh.certificate(for: announcement, key: mesh.identity(1))
        let site = try mesh.codec(signing: mesh.identity(1), certificate).encode(announcement)
        #expect(site[6] & AnnouncementCodec.flagRelay != 0)
        #expect(try !mesh.receiver.decode(site, now: now).relay, "role site: the flag is ignored")
        certificate.role = .hub
        try certificate.sign(with: mesh.ca)
        let hub = try mesh.codec(signing: mesh.identity(1), certificate).encode(announcement)
        #expect(try mesh.receiver.decode(hub, now: now).relay)
    }

    @Test func aSignedAnnouncementVerifiesAndCarriesItsCertificate() throws {
        let (bytes, announcement, certificate) = try mesh.signedSample()
        #expect(bytes[6] == AnnouncementCodec.flagAuthenticated | AnnouncementCodec.flagSigned)
        let decoded = try mesh.receiver.decode(bytes, now: now)
        #expect(decoded.site == announcement.site)
        #expect(decoded.certificate == certificate)
        #expect(bytes.count < 700)
        // The same bytes verify wherever they come from: decoding needs nothing but them, the keys and the clock.
        #expect(try mesh.receiver.decode(bytes, now: now) == decoded)
    }

    /// Any one byte changed (as a relay might), even with the MAC recomputed by a holder of the mesh key,
    /// is refused: the site's signature covers the header, the body and the certificate.
    @Test func everySingleByteChangeIsRefusedEvenWithAValidMAC() throws {
        let (bytes, _, _) = try mesh.signedSample()
        var reasons: [AnnouncementRejection: Int] = [:]
        for index in 0..<(bytes.count - 32) {
            for flip: UInt8 in [0x01, 0x80] {
                var changed = bytes
                changed[index] ^= flip
                let remac = resign(changed, key: mesh.meshKey)
                do {
                    _ = try mesh.receiver.decode(remac, now: now)
                    Issue.record("byte \(index) ^ \(flip) was accepted")
                } catch {
                    reasons[error, default: 0] += 1
                }
            }
        }
        #expect(reasons[.badSignature, default: 0] > 100)
        print("single-byte changes:", reasons.sorted { $0.value > $1.value }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
    }

    @Test func certificatesFromAnotherCAOutsideTheirWindowOrForgedAreRefused() throws {
        let announcement = sampleAnnouncement(timestamp: 1_700_000_000_000)
        let key = mesh.identity(1)
        let stranger = SigningPrivateKey(bytes: [UInt8](repeating: 0x5e, count: 32))!
        let foreign = try mesh.certificate(for: announcement, key: key, by: stranger)
        #expect(throws: AnnouncementRejection.unknownCA) {
            try mesh.receiver.decode(try mesh.codec(signing: key, foreign).encode(announcement), now: now)
        }
        let expired = try mesh.certificate(for: announcement, key: key, notBefore: 1_600_000_000, notAfter: 1_699_999_999)
        #expect(throws: AnnouncementRejection.expired) {
            try mesh.receiver.decode(try mesh.codec(signing: key, expired).encode(announcement), now: now)
        }
        let early = try mesh.certificate(for: announcement, key: key, notBefore: 1_700_000_001, notAfter: 1_800_000_000)
        #expect(throws: AnnouncementRejection.notYetValid) {
            try mesh.receiver.decode(try mesh.codec(signing: key, early).encode(announcement), now: now)
        }
        // A certificate whose fields were altered after the CA signed it (a wider LAN), re-signed by the site.
        var widened = try mesh.certificate(for: announcement, key: key)
        widened.lanPrefixes = [IPv4Prefix("0.0.0.0/0")!]
        #expect(throws: AnnouncementRejection.badCertificate) {
            try mesh.receiver.decode(try mesh.codec(signing: key, widened).encode(announcement), now: now)
        }
        // Signed by another identity key than the certificate's.
        let certificate = try mesh.certificate(for: announcement, key: key)
        var impostor = mesh.codec(signing: key, certificate)
        impostor = AnnouncementCodec(authentication: .key(mesh.meshKey), trust: mesh.trust,
                                     signer: AnnouncementSigner(key: mesh.identity(2), certificate: try mesh.certificate(
                                        for: announcement, key: mesh.identity(2))))
        var bytes = try impostor.encode(announcement)
        let certificateStart = bytes.count - 32 - 64 - (try certificate.encode().count)
        bytes.replaceSubrange(certificateStart..<(certificateStart + (try certificate.encode().count)), with: try certificate.encode())
        #expect(throws: AnnouncementRejection.badSignature) {
            try mesh.receiver.decode(resign(bytes, key: mesh.meshKey), now: now)
        }
    }

    /// A site with a valid certificate cannot speak for another site, nor announce what its certificate does
    /// not list (done by hand here: the encoder refuses to).
    @Test func aCertifiedSiteCannotClaimAnotherIdentityOrPrefix() throws {
        let own = sampleAnnouncement(name: "branch", timestamp: 1_700_000_000_000, id: SiteID(),
                                     key: WireGuardKey(bytes: [UInt8](repeating: 9, count: 32))!)
        let key = mesh.identity(3)
        let certificate = try mesh.certificate(for: own, key: key)
        let rogue = AnnouncementCodec(authentication: .key(mesh.meshKey), trust: .none,
                                      signer: AnnouncementSigner(key: key, certificate: certificate)!)
        let unchecked = AnnouncementCodec(authentication: .key(mesh.meshKey))
        func forge(_ announcement: Announcement) throws -> [UInt8] {
            // What the encoder would refuse, built by hand: our certificate and signature around another body.
            let honest = try rogue.encode(own)
            let body = Array(try unchecked.encode(announcement).dropFirst(10).dropLast(32))
            let ownBody = Array(try unchecked.encode(own).dropFirst(10).dropLast(32))
            var bytes = Array(honest.prefix(10)) + body + Array(honest.dropFirst(10 + ownBody.count).dropLast(32 + 64))
            let total = bytes.count + 64 + 32
            bytes[8] = UInt8(total >> 8)
            bytes[9] = UInt8(total & 0xff)
            bytes += key.signature(for: bytes)
            return bytes + hmac(bytes, key: mesh.meshKey)
        }
        #expect(try mesh.receiver.decode(try forge(own), now: now).certificate == certificate)
        var other = sampleAnnouncement(timestamp: 1_700_000_000_000)  // hq's id and name
        other.publicKey = own.publicKey
        #expect(throws: AnnouncementRejection.outsideCertificate) { try mesh.receiver.decode(try forge(other), now: now) }
        var hqKey = own
        hqKey.siteID = other.siteID  // a new WireGuard key for hq
        #expect(throws: AnnouncementRejection.outsideCertificate) { try mesh.receiver.decode(try forge(hqKey), now: now) }
        var wider = own
        wider.lanPrefixes = [IPv4Prefix("10.0.0.0/8")!]
        #expect(throws: AnnouncementRejection.outsideCertificate) { try mesh.receiver.decode(try forge(wider), now: now) }
        var overlay = own
        overlay.overlay = IPv4Address(10, 1, 0, 1)
        #expect(throws: AnnouncementRejection.outsideCertificate) { try mesh.receiver.decode(try forge(overlay), now: now) }
        #expect(throws: AnnouncementCodec.EncodingError.self) { try rogue.encode(wider) }
        #expect(throws: AnnouncementCodec.EncodingError.self) { try rogue.encode(other) }
    }

    @Test func unsignedIsRefusedWhereCertificatesAreRequired() throws {
        let plain = try AnnouncementCodec(authentication: .key(mesh.meshKey)).encode(sampleAnnouncement())
        #expect(throws: AnnouncementRejection.unsigned) { try mesh.receiver.decode(plain, now: now) }
        // Migration: a site that trusts the CA but does not require certificates takes both.
        let migrating = AnnouncementCodec(authentication: .key(mesh.meshKey),
                                          trust: CertificateTrust(authorities: [mesh.ca.publicKey], required: false))
        #expect(try migrating.decode(plain, now: now).certificate == nil)
        #expect(try migrating.decode(try mesh.signedSample().bytes, now: now).certificate != nil)
        // A site without a CA yet takes a signed announcement on the mesh key alone, as an unsigned one.
        let keyOnly = AnnouncementCodec(authentication: .key(mesh.meshKey))
        #expect(try keyOnly.decode(try mesh.signedSample().bytes, now: now).certificate == nil)
        // Version 1 is still read (unsigned).
        let legacy = try AnnouncementCodec(authentication: .key(mesh.meshKey)).encodeLegacy(sampleAnnouncement())
        #expect(try migrating.decode(legacy, now: now) == sampleAnnouncement())
        #expect(throws: AnnouncementRejection.unsigned) { try mesh.receiver.decode(legacy, now: now) }
    }

    @Test func revocationListsVerifyReplaceOlderOnesAndRemoveTheSite() throws {
        let (bytes, _, certificate) = try mesh.signedSample(serial: 0x1234)
        var table = PeerTable(localSiteID: SiteID())
        let decoded = try mesh.receiver.decode(bytes, now: now)
        #expect(try table.accept(decoded, now: now).count == 1)

        var list = RevocationList(issuer: [], number: 2, issued: 1_700_000_000, serials: [0x1234, 7])
        try list.sign(with: mesh.ca)
        let message = try mesh.receiver.encode(list)
        #expect(message[5] == MeshMessageKind.revocationList.rawValue)
        guard case .revocationList(let verified) = try mesh.receiver.decodeMessage(message, now: now) else {
            Issue.record("not a list")
            return
        }
        #expect(verified == list)
        #expect(try table.apply(verified) == [.siteRevoked(decoded)])
        #expect(table.announcements.isEmpty)
        var later = decoded
        later.counter += 10
        #expect(throws: AnnouncementRejection.revoked) { try table.accept(later, now: now) }
        // An older (or the same) list changes nothing; a newer one without the serial lets the site back.
        var older = list
        older.number = 1
        try older.sign(with: mesh.ca)
        #expect(throws: AnnouncementRejection.staleRevocationList) { try table.apply(older) }
        var cleared = RevocationList(issuer: [], number: 3, issued: 1_700_000_100, serials: [7])
        try cleared.sign(with: mesh.ca)
        _ = try table.apply(cleared)
        later.counter += 1
        #expect(try table.accept(later, now: now).count == 1)

        // Tampered, or from another CA: refused.
        var tampered = message
        tampered[10 + 1 + 8 + 8 + 8 + 1 + 7] ^= 1  // the first serial's last byte: 7 becomes 6
        #expect(throws: AnnouncementRejection.badSignature) {
            try mesh.receiver.decodeMessage(resign(tampered, key: mesh.meshKey), now: now)
        }
        var foreign = list
        try foreign.sign(with: SigningPrivateKey.generate())
        #expect(throws: AnnouncementRejection.unknownCA) {
            try mesh.receiver.decodeMessage(try mesh.receiver.encode(foreign), now: now)
        }
        _ = certificate
    }

    /// A certified site may replace its WireGuard key at once (its identity signature binds the new key); an
    /// unsigned announcement cannot, and once a site spoke certified, unsigned ones for it are refused.
    @Test func certifiedKeyRotationIsImmediateAndDowngradeIsRefused() throws {
        let (bytes, _, certificate) = try mesh.signedSample()
        var table = PeerTable(localSiteID: SiteID())
        let first = try mesh.receiver.decode(bytes, now: now)
        _ = try table.accept(first, now: now)
        var rotated = first
        rotated.counter += 1
        rotated.publicKey = WireGuardKey(bytes: [UInt8](repeating: 0x42, count: 32))!
        let rotatedBytes = try mesh.codec(signing: mesh.identity(1), certificate).encode(rotated)
        let events = try table.accept(try mesh.receiver.decode(rotatedBytes, now: now), now: now)
        #expect(events.count == 1)
        #expect(table.announcements.first?.publicKey == rotated.publicKey)
        var unsigned = rotated
        unsigned.certificate = nil
        unsigned.counter += 1
        #expect(throws: AnnouncementRejection.unsigned) { try table.accept(unsigned, now: now) }
    }

    @Test func textFormsRoundTrip() throws {
        let (_, _, certificate) = try mesh.signedSample()
        let text = Armor.wrap(try certificate.encode(), label: Armor.siteCertificate)
        #expect(text.hasPrefix("-----BEGIN PATRONUS SITE CERTIFICATE-----\n"))
        let blocks = Armor.unwrap("junk\n" + text + text, label: Armor.siteCertificate)
        #expect(blocks.count == 2)
        #expect(try SiteCertificate.decode(blocks[0]) == certificate)
        #expect(certificate.isSigned(by: mesh.ca.publicKey))
        let ca = try CACertificate.create(name: "acme mesh CA", key: mesh.ca, now: now)
        #expect(try CACertificate.decode(ca.encode()) == ca)
        var edited = ca.encode()
        edited[3] ^= 1
        #expect(throws: AnnouncementRejection.self) { try CACertificate.decode(edited) }
        let request = CertificateRequest(siteID: SiteID(), name: "east", identityKey: mesh.identity(4).publicKey)
        #expect(try CertificateRequest.decode(request.encode()) == request)
    }

    @Test func signatureBudgetBoundsOneSourceAndLeavesOthersTheirShare() {
        var budget = SignatureBudget(settings: .init(perSource: 10, perSourceBurst: 20, total: 100, totalBurst: 100))
        let flood = IPv4Address(192, 0, 2, 66), site = IPv4Address(192, 0, 2, 1)
        var granted = 0
        for i in 0..<10_000 where budget.take(source: flood, now: Double(i) / 10_000) { granted += 1 }
        #expect(granted <= 30)
        let siteGranted = budget.take(source: site, now: 1.0)
        #expect(siteGranted)
    }

    /// A hub relaying 300 sites once a second each (300 datagrams a second from one address): every one is
    /// checked, where a per-address budget of 100/s refused two thirds; one relayed site flooding through
    /// the hub is still bounded like one address, and the total still bounds everything.
    @Test func aHubRelayingHundredsOfSitesGetsEachItsShare() {
        var budget = SignatureBudget()
        let hub = IPv4Address(198, 51, 100, 1)
        let sites = (0..<300).map { _ in SiteID() }
        var granted = 0
        for second in 0..<5 {
            for (i, site) in sites.enumerated() where budget.take(source: hub, relayedSite: site, now: Double(second) + Double(i) / 300) {
                granted += 1
            }
        }
        #expect(granted == 5 * 300)
        var unrelayed = SignatureBudget()
        var byAddress = 0
        for second in 0..<5 {
            for i in sites.indices where unrelayed.take(source: hub, now: Double(second) + Double(i) / 300) { byAddress += 1 }
        }
        #expect(byAddress < 5 * 300 / 2, "keyed by address alone, the hub's relays were refused: \(byAddress) granted")
        let flooder = sites[0]
        var flood = 0
        for i in 0..<10_000 where budget.take(source: hub, relayedSite: flooder, now: 10 + Double(i) / 10_000) { flood += 1 }
        #expect(flood <= 300, "one relayed site is bounded like one address: \(flood)")
    }
}

extension CertificateTests {
    /// The signed example of docs/MESH.md ("Format version 2"), byte for byte: Ed25519 is deterministic.
    static func goldenSigned() throws -> (bytes: [UInt8], certificate: [UInt8]) {
        let announcement = goldenAnnouncement
        let ca = SigningPrivateKey(bytes: [UInt8](repeating: 0xca, count: 32))!
        let identity = SigningPrivateKey(bytes: [UInt8](repeating: 0x01, count: 32))!
        var certificate = SiteCertificate(issuer: [], serial: 0x0102_0304_0506_0708, siteID: announcement.siteID, name: "hq",
                                          role: .site, identityKey: identity.publicKey, notBefore: 1_700_000_000,
                                          notAfter: 1_731_536_000, lanPrefixes: [IPv4Prefix("192.168.1.0/24")!],
                                          overlayPrefixes: [IPv4Prefix("10.99.0.0/16")!])
        try certificate.sign(with: ca)
        let codec = AnnouncementCodec(authentication: .insecure, signer: AnnouncementSigner(key: identity, certificate: certificate)!)
        return (try codec.encode(announcement), try certificate.encode())
    }

    @Test func goldenSignedLayout() throws {
        let (bytes, certificate) = try Self.goldenSigned()
        let hex = bytes.map { String(format: "%02x", $0) }.joined()
        print("golden signed (\(bytes.count) bytes, certificate \(certificate.count)):", hex)
        #expect(hex == Self.goldenSignedHex)
        #expect(Array(bytes[0..<10]) == Array("PTMA".utf8) + [2, 0, 2, 0, UInt8(bytes.count >> 8), UInt8(bytes.count & 0xff)])
        #expect(Array(bytes[98..<100]) == [0, UInt8(certificate.count)])
        #expect(Array(bytes[100..<(100 + certificate.count)]) == certificate)
    }

    static let goldenSignedHex = ""
        + "50544d410200020001450000000000000102000000000000030400112233445566778899aabbccddeeffabababababab"
        + "abababababababababababababababababababababababababab0a63000102687101c0a8010018010377616ec0000201"
        + "ca7600a101b4b7e4b5abbe6fd9010203040506070800112233445566778899aabbccddeeff026871008a88e3dd7409f1"
        + "95fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c000000006553f100000000006735248001c0a801001801"
        + "0a630000107e2578d0ed19e4336c8b549b25e16a889dde7b61b230dfe2264f2cf1ee9fd574591e1b119bad8b990fc167"
        + "1f45ffcb2837ee17cb89b855dd05a6be0072b5f801f561ccd9cb151a19ae99fa7e563ef465ac156e041850d2a52841bf"
        + "fcc73e46b9284187900571686a6e5854ace5785152aa25871c637dc717d1298c7c8061b10c"
}

extension CertificateTests {
    /// A renewed certificate is taken at run time (no restart, no tunnel change); one that does not allow what
    /// the site announces is refused and the old one stays.
    @Test func discoveryTakesARenewedCertificateAndRefusesOneThatDoesNotFit() throws {
        let announcement = sampleAnnouncement(timestamp: 1_700_000_000_000)
        let key = mesh.identity(1)
        let first = try mesh.certificate(for: announcement, key: key, serial: 1)
        let discovery = try DiscoveryService(
            local: announcement.site, settings: DiscoverySettings(uplinks: []), authentication: .key(mesh.meshKey),
            identity: DiscoveryService.Identity(trust: mesh.trust, signer: AnnouncementSigner(key: key, certificate: first)!))
        #expect(discovery.certificate == first)
        let narrow = try mesh.certificate(for: announcement, key: key, serial: 2, lan: [IPv4Prefix("192.168.10.0/24")!])
        #expect(throws: AnnouncementCodec.EncodingError.self) {
            try discovery.replaceSigner(AnnouncementSigner(key: key, certificate: narrow)!)
        }
        #expect(discovery.certificate == first)
        let renewed = try mesh.certificate(for: announcement, key: key, serial: 3, notAfter: 1_800_000_000)
        try discovery.replaceSigner(AnnouncementSigner(key: key, certificate: renewed)!)
        #expect(discovery.certificate == renewed)
    }
}

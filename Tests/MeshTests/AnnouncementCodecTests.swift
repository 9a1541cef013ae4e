import Foundation
import Model
import Testing
import WireGuard
@testable import Mesh

func sampleAnnouncement(name: String = "hq", counter: UInt64 = 1_000_000, timestamp: UInt64 = 1_700_000_000_000,
                        id: SiteID = SiteID(UUID(uuidString: "6f1c2a3b-0000-4000-8000-00000000abcd")!),
                        key: WireGuardKey = WireGuardKey(bytes: [UInt8](repeating: 7, count: 32))!) -> Announcement {
    Announcement(siteID: id, name: name, publicKey: key, overlay: IPv4Address(10, 99, 1, 2),
                 lanPrefixes: [IPv4Prefix("192.168.10.0/24")!, IPv4Prefix("172.16.0.0/12")!],
                 endpoints: [Endpoint(label: "isp-a", address: SocketAddress4("198.51.100.1:51830")!),
                             Endpoint(label: "lte", address: SocketAddress4("203.0.113.9:51831")!)],
                 counter: counter, timestampMilliseconds: timestamp)
}

/// The example of docs/MESH.md.
let goldenAnnouncement = Announcement(
    siteID: SiteID(UUID(uuidString: "00112233-4455-6677-8899-aabbccddeeff")!), name: "hq",
    publicKey: WireGuardKey(bytes: [UInt8](repeating: 0xab, count: 32))!, overlay: IPv4Address(10, 99, 0, 1),
    lanPrefixes: [IPv4Prefix("192.168.1.0/24")!],
    endpoints: [Endpoint(label: "wan", address: SocketAddress4("192.0.2.1:51830")!)],
    counter: 0x0102, timestampMilliseconds: 0x0304)

/// Its body, the same in both versions.
let goldenBody: [UInt8] = [0, 0, 0, 0, 0, 0, 1, 2]              // counter
    + [0, 0, 0, 0, 0, 0, 3, 4]                                   // timestamp ms
    + [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]
    + [UInt8](repeating: 0xab, count: 32)                        // WireGuard public key
    + [10, 99, 0, 1]                                             // overlay
    + [2] + Array("hq".utf8)                                     // name
    + [1, 192, 168, 1, 0, 24]                                    // LAN prefixes
    + [1, 3] + Array("wan".utf8) + [192, 0, 2, 1, 0xca, 0x76]    // endpoints

struct AnnouncementCodecTests {
    let key = MeshKey(bytes: Array(0..<32))!
    var codec: AnnouncementCodec { AnnouncementCodec(authentication: .key(key)) }

    @Test func roundTripsAuthenticatedAndInsecure() throws {
        let announcement = sampleAnnouncement()
        #expect(try codec.decode(try codec.encode(announcement)) == announcement)
        let insecure = AnnouncementCodec(authentication: .insecure)
        #expect(try insecure.decode(try insecure.encode(announcement)) == announcement)
        let bare = Announcement(siteID: SiteID(), name: "é-site ü", publicKey: announcement.publicKey,
                                overlay: IPv4Address(10, 99, 0, 1), counter: 0, timestampMilliseconds: 0)
        #expect(try codec.decode(try codec.encode(bare)) == bare)
    }

    /// The version 1 layout of docs/MESH.md, byte by byte (still written for sites not yet upgraded).
    @Test func legacyGoldenLayout() throws {
        let bytes = try AnnouncementCodec(authentication: .insecure).encodeLegacy(goldenAnnouncement)
        var expected: [UInt8] = Array("PTMA".utf8) + [1, 0, 0, 96]  // magic, version, flags, length 96
        expected += goldenBody
        #expect(bytes == expected)
        #expect(bytes.count == 96)
        #expect(try AnnouncementCodec(authentication: .insecure).decode(bytes).counter == 0x0102)
    }

    /// Version 2 without a certificate (docs/MESH.md): the version 1 body behind the 10-byte header.
    @Test func goldenLayout() throws {
        let bytes = try AnnouncementCodec(authentication: .insecure).encode(goldenAnnouncement)
        var expected: [UInt8] = Array("PTMA".utf8) + [2, 0, 0, 0, 0, 98]  // magic, version 2, kind 0, flags, 0, length
        expected += goldenBody
        #expect(bytes == expected)
    }

    /// `--relay` is flags bit 2 of a version 2 announcement (docs/MESH.md); version 1 cannot say it.
    @Test func theRelayFlagIsBitTwoAndRoundTrips() throws {
        var relay = goldenAnnouncement
        relay.relay = true
        let insecure = AnnouncementCodec(authentication: .insecure)
        let bytes = try insecure.encode(relay)
        #expect(Array(bytes[0..<10]) == Array("PTMA".utf8) + [2, 0, AnnouncementCodec.flagRelay, 0, 0, 98])
        #expect(Array(bytes[10...]) == goldenBody)
        #expect(try insecure.decode(bytes).relay)
        #expect(try !insecure.decode(try insecure.encode(goldenAnnouncement)).relay)
        #expect(try !insecure.decode(try insecure.encodeLegacy(relay)).relay)
        var other = bytes
        other[6] = 0x08  // an unknown bit still refuses
        #expect(throws: AnnouncementRejection.badFlags) { try insecure.decode(other) }
    }

    @Test func macCoversEveryByteAndIsTheTrailer() throws {
        let bytes = try codec.encode(sampleAnnouncement())
        #expect(bytes[5] == MeshMessageKind.announcement.rawValue)
        #expect(bytes[6] == AnnouncementCodec.flagAuthenticated)
        #expect(Int(bytes[8]) << 8 | Int(bytes[9]) == bytes.count)
        for index in stride(from: 0, to: bytes.count, by: 1) {
            var tampered = bytes
            tampered[index] ^= 0x01
            #expect(throws: AnnouncementRejection.self) { try codec.decode(tampered) }
        }
    }

    @Test func anotherMeshKeyIsBadMAC() throws {
        let other = AnnouncementCodec(authentication: .key(MeshKey.generate()))
        #expect(throws: AnnouncementRejection.badMAC) { try codec.decode(try other.encode(sampleAnnouncement())) }
    }

    @Test func authenticationModesDoNotMix() throws {
        let insecure = AnnouncementCodec(authentication: .insecure)
        #expect(throws: AnnouncementRejection.authenticationMismatch) {
            try codec.decode(try insecure.encode(sampleAnnouncement()))
        }
        #expect(throws: AnnouncementRejection.authenticationMismatch) {
            try insecure.decode(try codec.encode(sampleAnnouncement()))
        }
    }

    @Test func headerRejections() throws {
        let good = try codec.encode(sampleAnnouncement())
        #expect(throws: AnnouncementRejection.truncated) { try codec.decode(Array(good.prefix(9))) }
        #expect(throws: AnnouncementRejection.truncated) { try codec.decode(Array(good.dropLast())) }
        #expect(throws: AnnouncementRejection.oversized) { try codec.decode([UInt8](repeating: 0, count: 1393)) }
        var bad = good
        bad[0] = UInt8(ascii: "X")
        #expect(throws: AnnouncementRejection.badMagic) { try codec.decode(bad) }
        bad = good
        bad[4] = 3
        #expect(throws: AnnouncementRejection.badVersion) { try codec.decode(bad) }
        for kind: UInt8 in [1, 4, 0xff] {  // 1 is the relay envelope, not decoded here
            bad = good
            bad[5] = kind
            #expect(throws: AnnouncementRejection.badKind) { try codec.decode(bad) }
        }
        bad = good
        bad[6] |= 0x80
        #expect(throws: AnnouncementRejection.badFlags) { try codec.decode(bad) }
        bad = good
        bad[7] = 1  // reserved
        #expect(throws: AnnouncementRejection.badFlags) { try codec.decode(bad) }
        #expect(throws: AnnouncementRejection.badLength) { try codec.decode(good + [0]) }
    }

    /// Body errors need a valid MAC to be reached: sign hand-made bodies with the right key.
    @Test func malformedBodiesWithValidMACAreRejected() throws {
        let insecure = AnnouncementCodec(authentication: .insecure)
        let plain = try insecure.encode(sampleAnnouncement())
        func signed(_ body: [UInt8]) -> [UInt8] {
            var bytes = body
            bytes[6] = AnnouncementCodec.flagAuthenticated
            let total = bytes.count + 32
            bytes[8] = UInt8(total >> 8)
            bytes[9] = UInt8(total & 0xff)
            return resign(bytes + [UInt8](repeating: 0, count: 32), key: key)
        }
        #expect(try codec.decode(signed(plain)) == sampleAnnouncement())
        let nameOffset = 78
        var bad = plain
        bad[nameOffset] = 0  // empty name
        #expect(throws: AnnouncementRejection.malformed) { try codec.decode(signed(bad)) }
        bad = plain
        bad[nameOffset] = 200  // name longer than the datagram
        #expect(throws: AnnouncementRejection.malformed) { try codec.decode(signed(bad)) }
        bad = plain
        bad[nameOffset + 3] = 33  // 33 LAN prefixes
        #expect(throws: AnnouncementRejection.malformed) { try codec.decode(signed(bad)) }
        bad = plain
        bad[nameOffset + 3] = 3  // claims 3 prefixes, has 2: the rest misparses or runs out
        #expect(throws: AnnouncementRejection.self) { try codec.decode(signed(bad)) }
        bad = plain
        bad[nameOffset + 4 + 3] = 1  // host bits set in 192.168.10.0/24 -> 192.168.10.1/24
        #expect(throws: AnnouncementRejection.malformed) { try codec.decode(signed(bad)) }
        bad = plain
        bad[nameOffset + 4 + 4] = 33  // prefix length 33
        #expect(throws: AnnouncementRejection.malformed) { try codec.decode(signed(bad)) }
        #expect(throws: AnnouncementRejection.malformed) { try codec.decode(signed(plain + [0])) }
        bad = plain
        bad[bad.count - 1] = 0
        bad[bad.count - 2] = 0  // port 0
        #expect(throws: AnnouncementRejection.malformed) { try codec.decode(signed(bad)) }
        bad = plain
        bad[nameOffset + 1] = 0x07  // control character in the name
        #expect(throws: AnnouncementRejection.malformed) { try codec.decode(signed(bad)) }
        #expect(throws: AnnouncementRejection.truncated) { try codec.decode(signed(Array(plain.prefix(60)))) }
    }

    @Test func encoderRefusesWhatDecodersWouldDrop() {
        var a = sampleAnnouncement()
        a.name = ""
        #expect(throws: AnnouncementCodec.EncodingError.invalidName("")) { try codec.encode(a) }
        a = sampleAnnouncement()
        a.lanPrefixes = Array(repeating: IPv4Prefix("10.0.0.0/8")!, count: 33)
        #expect(throws: AnnouncementCodec.EncodingError.tooManyLANPrefixes(33)) { try codec.encode(a) }
        a = sampleAnnouncement()
        a.endpoints = Array(repeating: a.endpoints[0], count: 9)
        #expect(throws: AnnouncementCodec.EncodingError.tooManyEndpoints(9)) { try codec.encode(a) }
        a = sampleAnnouncement()
        a.endpoints[0].label = "bad label"
        #expect(throws: AnnouncementCodec.EncodingError.invalidLabel("bad label")) { try codec.encode(a) }
    }

    @Test func largestAnnouncementFits() throws {
        var a = sampleAnnouncement(name: String(repeating: "n", count: 63))
        a.lanPrefixes = (0..<32).map { IPv4Prefix(IPv4Address(10, UInt8($0), 0, 0), length: 16) }
        a.endpoints = (0..<8).map { Endpoint(label: "l" + String(repeating: "x", count: 31) + "\($0)".suffix(0),
                                             address: SocketAddress4(IPv4Address(192, 0, 2, UInt8($0)), port: 1)) }
        let bytes = try codec.encode(a)
        #expect(bytes.count <= AnnouncementCodec.maxDatagramSize)
        #expect(try codec.decode(bytes) == a)
    }

    @Test func meshKeyTextForms() throws {
        let generated = MeshKey.generate()
        #expect(MeshKey(base64: generated.base64) == generated)
        #expect(MeshKey(base64: " \(generated.base64)\n") == generated)
        #expect(MeshKey(base64: "short") == nil)
        #expect(!generated.description.contains(generated.base64))
        #expect(MeshKey(bytes: Array(0..<31)) == nil)
    }
}

/// Re-signs `bytes` (whose last 32 bytes are the MAC slot) with `key`.
func resign(_ bytes: [UInt8], key: MeshKey) -> [UInt8] {
    let body = Array(bytes.dropLast(32))
    return body + hmac(body, key: key)
}

import Crypto
func hmac(_ body: [UInt8], key: MeshKey) -> [UInt8] {
    Array(HMAC<SHA256>.authenticationCode(for: body, using: key.key))
}

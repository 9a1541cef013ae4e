import Foundation
import Model
import Testing
import WireGuard
@testable import Mesh

/// Relayed discovery without sockets: the envelope, what a relay sends, and what a receiver makes of relayed,
/// tampered, nested and direct datagrams (`DiscoveryService.handle`).
struct RelayTests {
    let key = MeshKey(bytes: Array(0..<32))!
    var codec: AnnouncementCodec { AnnouncementCodec(authentication: .key(key)) }
    var now: UInt64 { UInt64(Date().timeIntervalSince1970 * 1000) }

    func service() throws -> DiscoveryService {
        try DiscoveryService(local: SiteDescription(siteID: SiteID(), name: "receiver", publicKey: WireGuardPrivateKey().publicKey,
                                                    overlay: IPv4Address(10, 99, 0, 1)),
                             settings: DiscoverySettings(uplinks: []), authentication: .key(key))
    }

    func origin(_ name: String) -> SiteDescription {
        SiteDescription(siteID: SiteID(), name: name, publicKey: WireGuardPrivateKey().publicKey, overlay: IPv4Address(10, 99, 0, 7),
                        endpoints: [Endpoint(label: "isp-a", address: SocketAddress4("198.51.100.7:51820")!)])
    }

    @Test func envelopeGoldenBytesAndRoundTrip() throws {
        let inner: [UInt8] = Array("PTMA".utf8) + [1, 0, 0, 10, 0xaa, 0xbb]
        let wrapped = RelayEnvelope.wrap(inner)
        #expect(wrapped == Array("PTMA".utf8) + [2, 1, 0, 0, 0, 20] + inner)  // magic, version 2, kind 1, flags, reserved, length 20
        #expect(try Array(RelayEnvelope.unwrap(wrapped[...])) == inner)
        #expect(!RelayEnvelope.isEnvelope(inner))
    }

    @Test func malformedEnvelopesAreBadRelay() {
        let inner: [UInt8] = Array("PTMA".utf8) + [1, 0, 0, 10, 0xaa, 0xbb]
        var wrongLength = RelayEnvelope.wrap(inner)
        wrongLength[9] &+= 1
        var flagged = RelayEnvelope.wrap(inner)
        flagged[6] = 1
        let empty = Array("PTMA".utf8) + [2, 1, 0, 0, 0, 10]
        for bytes in [wrongLength, flagged, empty, Array(RelayEnvelope.wrap(inner).dropLast())] {
            #expect(throws: AnnouncementRejection.badRelay) { _ = try RelayEnvelope.unwrap(bytes[...]) }
        }
    }

    @Test func aRelayedAnnouncementIsAcceptedButTeachesNoAddressAndIsNotRelayedAgain() throws {
        let receiver = try service()
        let site = origin("east")
        let datagram = try codec.encode(Announcement(site: site, counter: 10, timestampMilliseconds: now))
        let relay = SocketAddress4("203.0.113.1:51821")!
        receiver.handle(RelayEnvelope.wrap(datagram)[...], size: datagram.count + 10, from: relay, unicast: true)
        #expect(receiver.sites.map(\.site) == [site])
        #expect(receiver.statistics.acceptedVia[.relay] == 1)
        #expect(receiver.correspondents.isEmpty)
        // Relaying it further would need it in the relayable set: a receiver relays only what it heard directly.
        #expect(DiscoveryService.relays(relayable: [:], to: [relay], correspondents: [:]).isEmpty)

        // The same datagram again, relayed by someone else or direct: a duplicate, nothing changes.
        receiver.handle(RelayEnvelope.wrap(datagram)[...], size: datagram.count + 10, from: SocketAddress4("192.0.2.9:51821")!,
                        unicast: true)
        receiver.handle(datagram[...], size: datagram.count, from: SocketAddress4("198.51.100.7:51821")!, unicast: true)
        #expect(receiver.statistics.drops[.duplicate] == 2)
        #expect(receiver.correspondents.isEmpty)
    }

    @Test func aRelayCannotAlterNestOrReplay() throws {
        let receiver = try service()
        let site = origin("east")
        let datagram = try codec.encode(Announcement(site: site, counter: 10, timestampMilliseconds: now))
        let relay = SocketAddress4("203.0.113.1:51821")!
        // One byte changed anywhere in the origin's datagram: its MAC no longer verifies.
        for index in stride(from: 8, to: datagram.count, by: 7) {
            var altered = datagram
            altered[index] ^= 0x01
            receiver.handle(RelayEnvelope.wrap(altered)[...], size: altered.count + 10, from: relay, unicast: true)
        }
        #expect(receiver.sites.isEmpty)
        #expect(receiver.statistics.drops[.badMAC, default: 0] >= 1)
        // An envelope inside an envelope: refused (announcements travel one relay hop).
        let nested = RelayEnvelope.wrap(RelayEnvelope.wrap(datagram))
        receiver.handle(nested[...], size: nested.count, from: relay, unicast: true)
        #expect(receiver.statistics.drops[.badRelay] == 1)
        // The genuine one is accepted; an older counter relayed later is a replay.
        receiver.handle(RelayEnvelope.wrap(datagram)[...], size: datagram.count + 10, from: relay, unicast: true)
        let older = try codec.encode(Announcement(site: site, counter: 9, timestampMilliseconds: now))
        receiver.handle(RelayEnvelope.wrap(older)[...], size: older.count + 10, from: relay, unicast: true)
        #expect(receiver.statistics.drops[.replayed] == 1)
        #expect(receiver.sites.first?.counter == 10)
        // A relay of an announcement from another mesh key.
        let foreign = try AnnouncementCodec(authentication: .key(MeshKey.generate()))
            .encode(Announcement(site: origin("x"), counter: 1, timestampMilliseconds: now))
        receiver.handle(RelayEnvelope.wrap(foreign)[...], size: foreign.count + 10, from: relay, unicast: true)
        #expect(receiver.sites.count == 1)
    }

    /// A flood of relays (10,000 replays of one genuine announcement and 10,000 with a changed byte): each is
    /// dropped and counted, the one genuine announcement stays what the receiver knows, no correspondent is
    /// learnt, and the cost is one decode (an HMAC) per datagram.
    @Test func aFloodOfRelaysChangesNothing() throws {
        let receiver = try service()
        let site = origin("east")
        let genuine = try codec.encode(Announcement(site: site, counter: 10, timestampMilliseconds: now))
        receiver.handle(RelayEnvelope.wrap(genuine)[...], size: genuine.count + 10, from: SocketAddress4("203.0.113.1:51821")!,
                        unicast: true)
        let replay = RelayEnvelope.wrap(genuine)
        var forged = genuine
        forged[50] ^= 0x80
        let tampered = RelayEnvelope.wrap(forged)
        let started = ContinuousClock.now
        for index in 0..<10_000 {
            let from = SocketAddress4(IPv4Address(UInt32(0xc633_6400) + UInt32(index % 200)), port: 51821)
            receiver.handle(replay[...], size: replay.count, from: from, unicast: true)
            receiver.handle(tampered[...], size: tampered.count, from: from, unicast: true)
        }
        let elapsed = ContinuousClock.now - started
        print("20,000 hostile relays handled in \(elapsed)")
        #expect(receiver.statistics.drops[.duplicate] == 10_000)
        #expect(receiver.statistics.drops[.badMAC] == 10_000)
        #expect(receiver.sites.map(\.site) == [site] && receiver.sites.first?.counter == 10)
        #expect(receiver.correspondents.isEmpty)
    }

    @Test func aDirectUnicastAnnouncementMakesItsSourceACorrespondentAndRelayable() throws {
        let receiver = try service()
        let site = origin("branch")
        let datagram = try codec.encode(Announcement(site: site, counter: 5, timestampMilliseconds: now))
        let observed = SocketAddress4("203.0.113.50:40001")!  // behind NAT: not what it announces
        receiver.handle(datagram[...], size: datagram.count, from: observed, unicast: true)
        #expect(receiver.correspondents == [site.siteID: observed])
        #expect(receiver.statistics.acceptedVia[.unicast] == 1)
        // Through a tunnel (source = its overlay): known, but the overlay is no underlay correspondent.
        let tunnelled = try codec.encode(Announcement(site: site, counter: 6, timestampMilliseconds: now))
        receiver.handle(tunnelled[...], size: tunnelled.count, from: SocketAddress4(site.overlay, port: 40000), unicast: true)
        #expect(receiver.statistics.acceptedVia[.tunnel] == 1)
        #expect(receiver.correspondents == [site.siteID: observed])
    }

    @Test func relaysGoToEveryDestinationButNeverBackToTheirOrigin() {
        let a = SiteID(), b = SiteID()
        let toA = SocketAddress4("192.0.2.1:51821")!, toB = SocketAddress4("192.0.2.2:51821")!
        let hub = SocketAddress4("192.0.2.3:51821")!
        let out = DiscoveryService.relays(relayable: [a: [1], b: [2]], to: [toA, toB, hub], correspondents: [a: toA, b: toB])
        let sent = out.map { (Array($0.0.suffix(1)), $0.1) }
        #expect(sent.count == 4)
        #expect(sent.contains { $0.0 == [2] && $0.1 == toA } && sent.contains { $0.0 == [1] && $0.1 == toB })
        #expect(!sent.contains { $0.0 == [1] && $0.1 == toA } && !sent.contains { $0.0 == [2] && $0.1 == toB })
        #expect(sent.filter { $0.1 == hub }.count == 2)
    }
}

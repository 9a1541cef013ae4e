import Foundation
import Model
import Testing
import WireGuard
@testable import Mesh

/// NAT traversal without sockets: the endpoint observation's wire form, what a site makes of observations of
/// its own uplinks (`PublicEndpoints`), and which observations `DiscoveryService.handle` takes.
struct ObservationTests {
    let key = MeshKey(bytes: Array(0..<32))!
    var codec: AnnouncementCodec { AnnouncementCodec(authentication: .key(key)) }
    var nowMs: UInt64 { UInt64(Date().timeIntervalSince1970 * 1000) }
    let own = Endpoint(label: "isp-a", address: SocketAddress4("172.17.2.2:51820")!)
    let mapped = SocketAddress4("100.65.2.2:51820")!

    @Test func goldenLayoutAndRoundTrip() throws {
        let observer = SiteID(UUID(uuidString: "00112233-4455-6677-8899-aabbccddeeff")!)
        let subject = SiteID(UUID(uuidString: "ffeeddcc-bbaa-9988-7766-554433221100")!)
        let observation = EndpointObservation(observer: observer, subject: subject, timestampMilliseconds: 0x0304, sightings: [
            .init(label: "wan", announced: SocketAddress4("10.0.0.2:51830")!, observed: SocketAddress4("192.0.2.1:51830")!),
        ])
        let insecure = try AnnouncementCodec(authentication: .insecure).encode(observation)
        let expected: [UInt8] = Array("PTMA".utf8) + [2, 3, 0, 0, 0, 67]
            + [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]
            + [0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00]
            + [0, 0, 0, 0, 0, 0, 3, 4] + [1, 3] + Array("wan".utf8) + [10, 0, 0, 2, 0xca, 0x76] + [192, 0, 2, 1, 0xca, 0x76]
        #expect(insecure == expected)
        #expect(try AnnouncementCodec(authentication: .insecure).decodeMessage(insecure) == .observation(observation))
        let authenticated = try codec.encode(observation)
        #expect(authenticated.count == expected.count + 32)
        #expect(try codec.decodeMessage(authenticated) == .observation(observation))
    }

    @Test func tamperedOrMalformedObservationsAreRefused() throws {
        let observation = EndpointObservation(observer: SiteID(), subject: SiteID(), timestampMilliseconds: nowMs,
                                              sightings: [.init(label: own.label, announced: own.address, observed: mapped)])
        let bytes = try codec.encode(observation)
        for index in [12, 40, bytes.count - 40] {
            var altered = bytes
            altered[index] ^= 1
            #expect(throws: AnnouncementRejection.badMAC) { _ = try codec.decodeMessage(altered) }
        }
        #expect(throws: AnnouncementRejection.authenticationMismatch) {
            _ = try AnnouncementCodec(authentication: .insecure).decodeMessage(bytes)
        }
        // No endpoint, or port 0: malformed (built by hand, since the encoder refuses both).
        let insecure = AnnouncementCodec(authentication: .insecure)
        var none = try insecure.encode(observation)
        none = Array(none[0..<50]) + [0]  // header and ids, timestamp, no sighting
        none[9] = UInt8(none.count)
        #expect(throws: AnnouncementRejection.malformed) { _ = try insecure.decodeMessage(none) }
        var zeroPort = try insecure.encode(observation)
        zeroPort[zeroPort.count - 2] = 0
        zeroPort[zeroPort.count - 1] = 0
        #expect(throws: AnnouncementRejection.malformed) { _ = try insecure.decodeMessage(zeroPort) }
        #expect(throws: AnnouncementCodec.EncodingError.self) {
            _ = try codec.encode(EndpointObservation(observer: SiteID(), subject: SiteID(), timestampMilliseconds: 0, sightings: []))
        }
    }

    @Test func anUplinkSeenElsewhereIsAnnouncedAtWhatMostObserversSee() {
        var endpoints = PublicEndpoints()
        let now = Date()
        let (hq, west, north) = (SiteID(), SiteID(), SiteID())
        let local = [own, Endpoint(label: "isp-b", address: SocketAddress4("100.66.2.2:51830")!)]
        var announced: [Endpoint] { endpoints.announced(local, now: now) }
        func observe(_ observer: SiteID, _ label: String, _ address: SocketAddress4, using: SocketAddress4? = nil,
                     local: [Endpoint] = local) -> Bool {
            let used = using ?? endpoints.announced(local, now: now).first { $0.label == label }?.address ?? address
            return endpoints.record(EndpointObservation(observer: observer, subject: SiteID(), timestampMilliseconds: 0,
                                                        sightings: [.init(label: label, announced: used, observed: address)]),
                                    local: local, now: now)
        }
        // Public uplink: seen where it is, nothing changes. Behind NAT: the mapping is announced.
        #expect(!observe(hq, "isp-b", local[1].address))
        #expect(observe(hq, "isp-a", mapped))
        #expect(announced == [Endpoint(label: "isp-a", address: mapped), local[1]])
        #expect(endpoints.mapping(of: "isp-a", local: local, now: now)?.observers == [hq])
        // A label we do not have changes nothing.
        #expect(!observe(hq, "lte", mapped))
        // Two observers against one: the majority wins.
        let other = SocketAddress4("100.65.2.2:40000")!
        let westWonTheTie = observe(west, "isp-a", other)
        #expect(westWonTheTie == (min(hq, west) == west))
        #expect(observe(north, "isp-a", other) == !westWonTheTie)
        #expect(announced[0].address == other)
        // Unrepeated observations age out: our own address again.
        #expect(endpoints.announced(local, now: now.addingTimeInterval(PublicEndpoints.maxAge + 1)) == local)
        endpoints.expire(local: local, now: now.addingTimeInterval(PublicEndpoints.maxAge + 1))
        #expect(endpoints.sightings.isEmpty)
        // A new address of our own forgets what was seen of the old one.
        #expect(observe(hq, "isp-a", mapped))
        let moved = [Endpoint(label: "isp-a", address: SocketAddress4("172.17.18.2:51820")!), local[1]]
        #expect(endpoints.announced(moved, now: now) == moved)
        endpoints.expire(local: moved, now: now)
        #expect(endpoints.sightings["isp-a"] == nil)
        // An observer that still uses an address we no longer announce (it has not heard of the renumbering
        // yet) sees our old address: that says nothing about the new one. Public isp-b renumbered: the
        // observer still sends to, and sees us at, the old address.
        let renumbered = [own, Endpoint(label: "isp-b", address: SocketAddress4("100.66.18.2:51830")!)]
        #expect(!observe(hq, "isp-b", local[1].address, using: local[1].address, local: renumbered))
        #expect(endpoints.announced(renumbered, now: now) == renumbered)
        #expect(endpoints.sightings["isp-b"] == nil)
    }

    @Test func onlyAnObservationThroughTheObserversTunnelChangesWhatWeAnnounce() throws {
        let local = SiteDescription(siteID: SiteID(), name: "east", publicKey: WireGuardPrivateKey().publicKey,
                                    overlay: IPv4Address(10, 99, 0, 2), endpoints: [own])
        let receiver = try DiscoveryService(local: local, settings: DiscoverySettings(uplinks: []), authentication: .key(key))
        let hub = SiteDescription(siteID: SiteID(), name: "hq", publicKey: WireGuardPrivateKey().publicKey,
                                  overlay: IPv4Address(10, 99, 0, 1),
                                  endpoints: [Endpoint(label: "isp-a", address: SocketAddress4("100.65.1.2:51820")!)])
        let announcement = try codec.encode(Announcement(site: hub, counter: 1, timestampMilliseconds: nowMs))
        receiver.handle(announcement[...], size: announcement.count, from: SocketAddress4("100.65.1.2:51821")!, unicast: true)
        #expect(receiver.sites.count == 1)

        func send(_ observation: EndpointObservation, from source: String, unicast: Bool = true) throws {
            let bytes = try codec.encode(observation)
            receiver.handle(bytes[...], size: bytes.count, from: SocketAddress4(source)!, unicast: unicast)
        }
        let good = EndpointObservation(observer: hub.siteID, subject: local.siteID, timestampMilliseconds: nowMs,
                                       sightings: [.init(label: "isp-a", announced: own.address, observed: mapped)])
        // Over the underlay (not from the observer's overlay address), about another site, from a site we do
        // not know, relayed, on the multicast socket, stale: all refused, nothing announced.
        try send(good, from: "100.65.1.2:51821")
        var forOther = good
        forOther.subject = SiteID()
        try send(forOther, from: "10.99.0.1:51821")
        var unknown = good
        unknown.observer = SiteID()
        try send(unknown, from: "10.99.0.1:51821")
        try send(good, from: "10.99.0.1:51821", unicast: false)
        let wrapped = RelayEnvelope.wrap(try codec.encode(good))
        receiver.handle(wrapped[...], size: wrapped.count, from: SocketAddress4("10.99.0.1:51821")!, unicast: true)
        #expect(receiver.statistics.drops[.badObservation] == 5)
        var stale = good
        stale.timestampMilliseconds -= 120_000
        try send(stale, from: "10.99.0.1:51821")
        #expect(receiver.statistics.drops[.stale] == 1)
        #expect(receiver.publicMappings.isEmpty)

        // Through the hub's tunnel: taken; our isp-a is announced at its public mapping.
        try send(good, from: "10.99.0.1:51821")
        #expect(receiver.statistics.observationsAccepted == 1)
        #expect(receiver.publicMappings["isp-a"]?.address == mapped)
        #expect(receiver.publicMappings["isp-a"]?.observers == [hub.siteID])
    }

    @Test func eachSitesObservationGoesThroughEveryPathToIt() throws {
        let (east, west) = (SiteID(), SiteID())
        let routes = [TunnelRoute(site: east, overlay: IPv4Address(10, 99, 0, 2), mark: 0x1000_0000),
                      TunnelRoute(site: east, overlay: IPv4Address(10, 99, 0, 2), mark: 0x2000_0000),
                      TunnelRoute(site: west, overlay: IPv4Address(10, 99, 0, 3), mark: 0x1000_0000)]
        let sighting = EndpointObservation.Sighting(label: own.label, announced: own.address, observed: mapped)
        let out = DiscoveryService.observations([east: [sighting]], from: SiteID(), routes: routes, codec: codec, now: Date())
        #expect(out.map(\.1) == Array(routes.prefix(2)))
        guard case .observation(let decoded) = try codec.decodeMessage(out[0].0) else {
            Issue.record("not an observation")
            return
        }
        #expect(decoded.subject == east && decoded.sightings == [sighting])
    }
}

import Foundation
import Lab
import Logging
import Model
import Testing
import WireGuard
@testable import Mesh

final class EventLog: @unchecked Sendable {
    private let lock = NSLock()
    private var events: [MeshEvent] = []
    func append(_ event: MeshEvent) { lock.withLock { events.append(event) } }
    var all: [MeshEvent] { lock.withLock { events } }
}

final class DiscoverySite: NamespacedSite, @unchecked Sendable {
    let namespace: NetworkNamespace
    let executor: NamespaceExecutor
    let description: SiteDescription
    let address: IPv4Address
    var service: DiscoveryService!
    var task: Task<Void, Never>?
    let seen = EventLog()

    init(namespace: NetworkNamespace, index: UInt8) throws {
        self.namespace = namespace
        executor = try NamespaceExecutor(namespace)
        address = IPv4Address(10, 77, 0, index)
        description = SiteDescription(siteID: SiteID(), name: "site\(index)", publicKey: WireGuardPrivateKey().publicKey,
                                      overlay: IPv4Address(10, 99, 0, index),
                                      endpoints: [Endpoint(label: "wan", address: SocketAddress4(IPv4Address(10, 77, 0, index), port: 51830))])
    }

    func start(_ settings: DiscoverySettings, authentication: MeshAuthentication) throws {
        let service = try DiscoveryService(local: description, settings: settings, authentication: authentication)
        self.service = service
        let executor = self.executor
        let seen = self.seen
        task = Task {
            let consumer = Task {
                for await event in service.events { seen.append(event) }
            }
            try? await withTaskExecutorPreference(executor) { try await service.run() }
            await consumer.value
        }
    }

    func stop() async {
        task?.cancel()
        await task?.value
        task = nil
    }

    var activeIDs: Set<SiteID> { Set(service.sites.map(\.siteID)) }
}


/// Sites in namespaces on one bridge (a hub namespace), each running the real discovery service on its
/// `eth0` uplink. Needs root.
@Suite(.serialized, .enabled(if: getuid() == 0))
struct DiscoveryRootTests {
    /// A hub namespace with bridge br0 and `count` site namespaces whose eth0 is on it.
    func makeSites(_ count: UInt8) throws -> (hub: NetworkNamespace, sites: [DiscoverySite]) {
        let hub = try NetworkNamespace.create(label: "hub")
        try hub.addBridge("br0")
        var sites: [DiscoverySite] = []
        for index in 1...count {
            let namespace = try NetworkNamespace.create(label: "site\(index)")
            try hub.addVeth("p\(index)", peer: "eth0", in: namespace)
            try hub.attach("p\(index)", toBridge: "br0")
            try namespace.addAddress("10.77.0.\(index)/24", to: "eth0")
            sites.append(try DiscoverySite(namespace: namespace, index: index))
        }
        return (hub, sites)
    }

    func tearDown(_ hub: NetworkNamespace, _ sites: [DiscoverySite]) async { await tearDownLab(hub, sites) }

    /// Whether `a` and `b` know each other (and nobody else) within 2 s.
    func foundEachOther(_ a: DiscoverySite, _ b: DiscoverySite) async -> Bool {
        await waitUntil(.seconds(2)) { a.activeIDs == [b.description.siteID] && b.activeIDs == [a.description.siteID] }
    }

    func waitUntil(_ limit: Duration, _ condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    @Test func threeSitesFindEachOtherAndAnotherMeshIsNeverAcceptedRoot() async throws {
        let (hub, sites) = try makeSites(4)
        let key = MeshKey.generate()
        let settings = DiscoverySettings(uplinks: ["eth0"], interval: .milliseconds(500))
        do {
            let started = ContinuousClock.now
            for site in sites.prefix(3) { try site.start(settings, authentication: .key(key)) }
            try sites[3].start(settings, authentication: .key(MeshKey.generate()))  // another mesh
            let members = Set(sites.prefix(3).map(\.description.siteID))
            let converged = await waitUntil(.seconds(3)) {
                sites.prefix(3).allSatisfy { $0.activeIDs == members.subtracting([$0.description.siteID]) }
            }
            #expect(converged)
            let elapsed = ContinuousClock.now - started
            // About 10 ms here (answer-on-appear); the bound leaves room for a loaded machine.
            #expect(elapsed < .seconds(2))
            print("discovery: 3 sites converged in \(elapsed)")

            try await Task.sleep(for: .seconds(1))
            for site in sites.prefix(3) {
                #expect(!site.activeIDs.contains(sites[3].description.siteID))
                #expect(site.service.statistics.drops[.badMAC, default: 0] > 0)
                #expect(site.service.statistics.drops[.fromSelf, default: 0] > 0)  // multicast loopback
                #expect(site.service.statistics.sendErrors == 0)
            }
            #expect(sites[3].activeIDs.isEmpty)
            // The endpoints arrive as announced.
            let heard = try #require(sites[0].service.sites.first { $0.siteID == sites[1].description.siteID })
            #expect(heard.site == sites[1].description)

            // Stop site 3: the others expire it after 3 intervals; restarted, it comes back.
            // Its last announcement went out at most one interval (0.5 s) before the stop began, and it
            // expires 3 intervals after that: never sooner than 1 s after the stop began.
            let stopping = ContinuousClock.now
            await sites[2].stop()
            let expired = await waitUntil(.seconds(3)) {
                sites.prefix(2).allSatisfy { !$0.activeIDs.contains(sites[2].description.siteID) }
            }
            #expect(expired)
            #expect(ContinuousClock.now - stopping >= .milliseconds(950))
            #expect(await waitUntil(.seconds(1)) {
                sites[0].seen.all.contains { if case .siteExpired(let a) = $0 { a.siteID == sites[2].description.siteID } else { false } }
            })
            try sites[2].start(settings, authentication: .key(key))
            let back = await waitUntil(.seconds(2)) {
                sites.prefix(2).allSatisfy { $0.activeIDs.contains(sites[2].description.siteID) }
            }
            #expect(back)
        } catch {
            await tearDown(hub, sites)
            throw error
        }
        await tearDown(hub, sites)
    }

    @Test func unicastPeersFindEachOtherWithoutMulticastRoot() async throws {
        let (hub, sites) = try makeSites(2)
        do {
            // A group nobody else joins and TTL 0: only the unicast --peer datagrams can arrive.
            let group = SocketAddress4(IPv4Address(239, 255, 77, 78), port: 51821)
            try sites[0].start(DiscoverySettings(uplinks: ["eth0"], peers: [SocketAddress4(sites[1].address, port: 51821)],
                                                 group: group, interval: .milliseconds(300), ttl: 0), authentication: .insecure)
            try sites[1].start(DiscoverySettings(uplinks: ["eth0"], peers: [SocketAddress4(sites[0].address, port: 51821)],
                                                 group: group, interval: .milliseconds(300), ttl: 0), authentication: .insecure)
            #expect(await foundEachOther(sites[0], sites[1]))
        } catch {
            await tearDown(hub, sites)
            throw error
        }
        await tearDown(hub, sites)
    }

    /// An uplink that does not exist at start (a modem plugged in later) does not stop discovery; once it
    /// exists, `rebindUplinks()` opens its socket and joins the group on it, and the sites find each other.
    @Test func uplinkAbsentAtStartIsBoundWhenItAppearsRoot() async throws {
        let (hub, sites) = try makeSites(2)
        let settings = DiscoverySettings(uplinks: ["eth0"], interval: .milliseconds(300))
        do {
            try sites[1].namespace.ip("link", "set", "eth0", "down")
            try sites[1].namespace.ip("link", "set", "eth0", "name", "later0")
            for site in sites { try site.start(settings, authentication: .insecure) }
            try await Task.sleep(for: .milliseconds(700))
            #expect(sites[0].activeIDs.isEmpty && sites[1].activeIDs.isEmpty, "no socket on the absent uplink")
            try sites[1].namespace.ip("link", "set", "later0", "name", "eth0", "up")
            sites[1].service.rebindUplinks()
            #expect(await foundEachOther(sites[0], sites[1]))
        } catch {
            await tearDown(hub, sites)
            throw error
        }
        await tearDown(hub, sites)
    }
}

extension DiscoveryRootTests {
    /// Hostile datagrams sent to a running service over the network: each is dropped and counted under its
    /// reason, and the service keeps accepting a real site afterwards.
    @Test func hostileDatagramsAreCountedByReasonAndServiceKeepsRunningRoot() async throws {
        let (hub, sites) = try makeSites(2)
        let key = MeshKey.generate()
        let settings = DiscoverySettings(uplinks: ["eth0"], interval: .milliseconds(300))
        do {
            let target = sites[0]
            try target.start(settings, authentication: .key(key))
            try await Task.sleep(for: .milliseconds(100))
            let codec = AnnouncementCodec(authentication: .key(key))
            let now = UInt64(Date().timeIntervalSince1970 * 1000)
            let attacker = try UDPSocket(in: sites[1].namespace)
            let to = "\(target.address)"
            func send(_ bytes: [UInt8]) { attacker.send(bytes, to: to, port: 51821) }

            let stranger = SiteDescription(siteID: SiteID(), name: "stranger", publicKey: WireGuardPrivateKey().publicKey,
                                           overlay: IPv4Address(10, 99, 9, 9))
            let valid = try codec.encode(Announcement(site: stranger, counter: 100, timestampMilliseconds: now))
            send(Array(valid.prefix(40)))                                                            // truncated
            send([UInt8](repeating: 0x41, count: 1500))                                              // oversized
            send(try AnnouncementCodec(authentication: .key(MeshKey.generate())).encode(
                Announcement(site: stranger, counter: 1, timestampMilliseconds: now)))               // badMAC
            send(try codec.encode(Announcement(site: target.description, counter: UInt64.max - 1, timestampMilliseconds: now)))  // fromSelf
            send(try codec.encode(Announcement(site: stranger, counter: 1, timestampMilliseconds: now - 3_600_000)))  // stale
            send(valid)                                                                              // accepted
            try await Task.sleep(for: .milliseconds(50))
            send(try codec.encode(Announcement(site: stranger, counter: 99, timestampMilliseconds: now)))  // replayed
            var impostor = stranger
            impostor.publicKey = WireGuardPrivateKey().publicKey
            send(try codec.encode(Announcement(site: impostor, counter: 200, timestampMilliseconds: now)))  // idConflict

            let expected: [AnnouncementRejection] = [.truncated, .oversized, .badMAC, .fromSelf, .stale, .replayed, .idConflict]
            let counted = await waitUntil(.seconds(2)) {
                let drops = target.service.statistics.drops
                return expected.allSatisfy { drops[$0, default: 0] >= 1 }
            }
            #expect(counted, "\(target.service.statistics.drops)")
            #expect(target.activeIDs == [stranger.siteID])
            // The service still works: the real neighbour is found.
            try sites[1].start(settings, authentication: .key(key))
            #expect(await waitUntil(.seconds(2)) { target.activeIDs.contains(sites[1].description.siteID) })
        } catch {
            await tearDown(hub, sites)
            throw error
        }
        await tearDown(hub, sites)
    }
}

extension DiscoveryRootTests {
    /// Three sites where two know only the third (`--peer`), and no multicast reaches anyone (each site has
    /// its own group): the hub relays, and all three learn each other, each spoke seeing the other exactly as
    /// it announced itself; relaying stays paced by the interval.
    @Test func twoSitesThatKnowOnlyTheHubLearnEachOtherThroughItRoot() async throws {
        let (hub, sites) = try makeSites(3)
        let key = MeshKey.generate()
        do {
            let hubAddress = SocketAddress4(sites[0].address, port: 51821)
            for (index, site) in sites.enumerated() {
                let group = SocketAddress4(IPv4Address(239, 255, 77, UInt8(100 + index)), port: 51821)
                try site.start(DiscoverySettings(uplinks: ["eth0"], peers: index == 0 ? [] : [hubAddress], group: group,
                                                 interval: .milliseconds(300), ttl: 0),
                               authentication: .key(key))
            }
            let all = Set(sites.map(\.description.siteID))
            let started = ContinuousClock.now
            let converged = await waitUntil(.seconds(3)) {
                sites.allSatisfy { $0.activeIDs == all.subtracting([$0.description.siteID]) }
            }
            #expect(converged, "\(sites.map(\.activeIDs.count))")
            print("relayed discovery: 3 sites converged in \(ContinuousClock.now - started)")
            // The spokes heard each other only relayed; the hub heard both by unicast and relays.
            #expect(sites[1].service.statistics.acceptedVia[.relay, default: 0] > 0)
            #expect(sites[2].service.statistics.acceptedVia[.relay, default: 0] > 0)
            #expect(sites[0].service.statistics.relayedSent > 0)
            #expect(Set(sites[0].service.correspondents.keys) == [sites[1].description.siteID, sites[2].description.siteID])
            // The spoke's view of the other spoke is what that spoke announced, unchanged.
            let heard = try #require(sites[1].service.sites.first { $0.siteID == sites[2].description.siteID })
            #expect(heard.site == sites[2].description)
            // Steady state: no relay storm. Per interval the hub sends each spoke one relay (the other spoke).
            let before = sites[0].service.statistics.relayedSent
            try await Task.sleep(for: .seconds(3))
            let perSecond = Double(sites[0].service.statistics.relayedSent - before) / 3
            #expect(perSecond <= 2 * (1 / 0.3) + 1, "\(perSecond) relays/s")
            #expect(sites.allSatisfy { $0.service.statistics.drops[.badRelay, default: 0] == 0 })
        } catch {
            await tearDown(hub, sites)
            throw error
        }
        await tearDown(hub, sites)
    }
}

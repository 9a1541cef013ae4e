import Foundation
import Lab
import Logging
import Model
import Testing
import WireGuard
@testable import Mesh

/// One site of the lab mesh: a namespace with two uplinks (eth0 = isp on WAN a, eth1 = lte on WAN b), the
/// real discovery service, planner, reconciler and wireguard-go backend, all in its namespace.
final class MeshLabSite: NamespacedSite, @unchecked Sendable {
    let index: UInt8
    let namespace: NetworkNamespace
    let executor: NamespaceExecutor
    let key = WireGuardPrivateKey()
    var id = SiteID()
    /// The overlay pool; tests shrink it to force collisions.
    var pool = OverlayAddressing.defaultPool
    var overlay: IPv4Address
    let backend = UserspaceWireGuard()
    let settings: TunnelSettings
    let uplinks = [Uplink(interface: "eth0", label: "isp"), Uplink(interface: "eth1", label: "lte")]
    var discovery: DiscoveryService!
    var reconciler: TunnelReconciler!
    var task: Task<Void, Never>?

    init(index: UInt8, namespace: NetworkNamespace, prefix: String) throws {
        self.index = index
        self.namespace = namespace
        executor = try NamespaceExecutor(namespace)
        overlay = OverlayAddressing.choose(for: id, known: [:])
        settings = TunnelSettings(interfacePrefix: prefix)
    }

    /// Read from the namespace's interfaces, the way the daemon does.
    var localEndpoints: [Endpoint] {
        get throws {
            let names = uplinks.map(\.interface)
            let addresses = try namespace.perform { UplinkAddresses.current(for: names) }
            return TunnelPlanner.localEndpoints(uplinks: uplinks, addresses: addresses, settings: settings)
        }
    }

    func start(meshKey: MeshKey) throws {
        let endpoints = try localEndpoints
        #expect(endpoints.map(\.address.address) == [IPv4Address(10, 77, 1, index), IPv4Address(10, 77, 2, index)])
        let description = SiteDescription(siteID: id, name: "site\(index)", publicKey: key.publicKey, overlay: overlay,
                                          endpoints: endpoints)
        var logger = Logger(label: "site\(index)")
        logger.logLevel = .warning
        let discovery = try DiscoveryService(local: description, settings: DiscoverySettings(uplinks: ["eth0", "eth1"]),
                                             authentication: .key(meshKey), logger: logger)
        let reconciler = TunnelReconciler(backend: backend, privateKey: key,
                                          addresses: [TunnelAddress(overlay, prefixLength: 32)], logger: logger)
        self.discovery = discovery
        self.reconciler = reconciler
        let driver = TunnelDriver(discovery: discovery, reconciler: reconciler, uplinks: uplinks, settings: settings, overlayPool: pool,
                                  logger: logger)
        let executor = self.executor
        task = Task {
            await withTaskExecutorPreference(executor) {
                do { try await driver.run() } catch { Issue.record("driver failed: \(error)") }
            }
        }
    }

    func stop() async {
        task?.cancel()
        await task?.value
        task = nil
        if let reconciler {
            await withTaskExecutorPreference(executor) { await reconciler.removeAll() }
        }
    }

    var interfaceNames: [String] { ["\(settings.interfacePrefix)0", "\(settings.interfacePrefix)1"] }
}

@Suite(.serialized, .enabled(if: getuid() == 0 && access(UserspaceWireGuard.defaultExecutable, X_OK) == 0))
struct MeshRootTests {
    /// hub: bridges wan-a and wan-b; each site's eth0 on wan-a (10.77.1.i/24), eth1 on wan-b (10.77.2.i/24).
    func makeLab(_ count: UInt8) throws -> (hub: NetworkNamespace, sites: [MeshLabSite]) {
        let tag = String(UInt16.random(in: 0...UInt16.max), radix: 16)
        let hub = try NetworkNamespace.create(label: "meshhub")
        try hub.addBridge("wan-a")
        try hub.addBridge("wan-b")
        var sites: [MeshLabSite] = []
        for index in 1...count {
            let namespace = try NetworkNamespace.create(label: "mesh\(index)")
            for (wan, device, net) in [("a", "eth0", 1), ("b", "eth1", 2)] {
                try hub.addVeth("\(wan)\(index)", peer: device, in: namespace)
                try hub.attach("\(wan)\(index)", toBridge: "wan-\(wan)")
                try namespace.addAddress("10.77.\(net).\(index)/24", to: device)
            }
            sites.append(try MeshLabSite(index: index, namespace: namespace, prefix: "wg\(tag)s\(index)-"))
        }
        return (hub, sites)
    }

    func tearDown(_ hub: NetworkNamespace, _ sites: [MeshLabSite]) async { await tearDownLab(hub, sites) }

    /// Handshakes per (site, interface, peer): true when all are done.
    func allHandshaken(_ sites: [MeshLabSite], members: [MeshLabSite]) async -> Bool {
        for site in members {
            for name in site.interfaceNames {
                guard let state = try? await site.backend.state(of: name) else { return false }
                let expected = Set(members.filter { $0 !== site }.map(\.key.publicKey))
                let done = Set(state.peers.filter { $0.lastHandshake != nil }.map(\.publicKey))
                if !expected.isSubset(of: done) { return false }
            }
        }
        return true
    }

    /// Sends a datagram from `from` to `to`'s overlay through `from`'s interface `interface` (a host route
    /// pins the path, as a per-path table would), and waits for it.
    func crosses(from: MeshLabSite, to: MeshLabSite, interface: String) async throws -> Bool {
        try from.namespace.ip("route", "replace", "\(to.overlay)/32", "dev", interface)
        try to.namespace.ip("route", "replace", "\(from.overlay)/32", "dev", interface.replacingOccurrences(
            of: from.settings.interfacePrefix, with: to.settings.interfacePrefix))
        let receiver = try UDPSocket(in: to.namespace, bindTo: "\(to.overlay)", port: 40001)
        let sender = try UDPSocket(in: from.namespace)
        for attempt in 0..<3 {
            sender.send(Array("probe \(attempt)".utf8), to: "\(to.overlay)", port: 40001)
            if let got = await receiver.nextDatagram(within: .milliseconds(700)), got.address == "\(from.overlay)" { return true }
        }
        // Say what WireGuard saw, for the failure report.
        let theirs = interface.replacingOccurrences(of: from.settings.interfacePrefix, with: to.settings.interfacePrefix)
        for name in [interface, theirs] {
            print("wg show \(name) dump:\n" + ((try? Subprocess.check(["wg", "show", name, "dump"])) ?? "unavailable"))
        }
        return false
    }

    @Test func threeSitesTwoUplinksPeerEveryPathAndAnotherMeshIsNeverPeeredRoot() async throws {
        let (hub, sites) = try makeLab(4)
        let key = MeshKey.generate()
        let members = Array(sites.prefix(3))
        do {
            let started = ContinuousClock.now
            for site in members { try site.start(meshKey: key) }
            try sites[3].start(meshKey: MeshKey.generate())  // wrong mesh key
            var ready = false
            while !ready && ContinuousClock.now - started < .seconds(10) {
                ready = await allHandshaken(sites, members: members)
                if !ready { try await Task.sleep(for: .milliseconds(20)) }
            }
            let elapsed = ContinuousClock.now - started
            print("mesh: 3 sites x 2 uplinks, all 12 (interface, peer) handshakes after \(elapsed)")
            #expect(ready)
            // The budget (5 s) is measured in bench/; here only the 5 s WireGuard retry class of bug is caught
            // (seen as 5.0-5.3 s alone, about 0.05-0.55 s when it is absent), with room for a loaded CI.
            #expect(elapsed < .seconds(10))

            // Every path carries data, both uplinks.
            for from in members {
                for to in members where to !== from {
                    for interface in from.interfaceNames {
                        #expect(try await crosses(from: from, to: to, interface: interface), "\(from.index)->\(to.index) via \(interface)")
                    }
                }
            }
            // The site with another mesh key is never peered, and is counted as badMAC.
            for site in members {
                for name in site.interfaceNames {
                    let state = try await site.backend.state(of: name)
                    #expect(!state.peers.contains { $0.publicKey == sites[3].key.publicKey })
                    #expect(state.fwmark == TunnelSettings.fwmark(slot: name.hasSuffix("0") ? 1 : 2))
                }
                let deadline = ContinuousClock.now + .seconds(3)
                while site.discovery.statistics.drops[.badMAC, default: 0] == 0 && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(20))
                }
                #expect(site.discovery.statistics.drops[.badMAC, default: 0] > 0)
            }
            let outsider = try await sites[3].backend.state(of: sites[3].interfaceNames[0])
            #expect(outsider.peers.isEmpty)

            // Site 3 stops: the others remove its peers once it expires (3 intervals).
            await members[2].stop()
            let stopped = ContinuousClock.now
            var gone = false
            while !gone && ContinuousClock.now - stopped < .seconds(8) {
                gone = true
                for site in members.prefix(2) {
                    for name in site.interfaceNames {
                        let state = try await site.backend.state(of: name)
                        if state.peers.contains(where: { $0.publicKey == members[2].key.publicKey }) { gone = false }
                    }
                }
                if !gone { try await Task.sleep(for: .milliseconds(50)) }
            }
            #expect(gone)
            print("mesh: stopped site's peers removed after \(ContinuousClock.now - stopped)")

            // Restarted with the same id and key, it re-peers.
            let restarted = ContinuousClock.now
            try members[2].start(meshKey: key)
            var back = false
            while !back && ContinuousClock.now - restarted < .seconds(10) {
                back = await allHandshaken(sites, members: members)
                if !back { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(back)
            print("mesh: restarted site re-peered after \(ContinuousClock.now - restarted)")
        } catch {
            await tearDown(hub, sites)
            throw error
        }
        await tearDown(hub, sites)
    }

    /// Two sites whose ids hash to the same overlay address (a /30 pool makes that likely): the one with
    /// the larger id moves (announces the new address and re-addresses its interfaces), the smaller keeps
    /// it, and the tunnel carries traffic between the two addresses.
    @Test func anOverlayCollisionIsResolvedByTheLargerIDMovingRoot() async throws {
        let (hub, sites) = try makeLab(2)
        let key = MeshKey.generate()
        let pool = IPv4Prefix(IPv4Address(10, 99, 0, 0), length: 30)
        do {
            repeat { sites[1].id = SiteID() } while OverlayAddressing.candidate(for: sites[1].id, in: pool, attempt: 0)
                != OverlayAddressing.candidate(for: sites[0].id, in: pool, attempt: 0)
            for site in sites {
                site.pool = pool
                site.overlay = OverlayAddressing.choose(for: site.id, in: pool, known: [:])
            }
            let (small, large) = sites[0].id < sites[1].id ? (sites[0], sites[1]) : (sites[1], sites[0])
            #expect(small.overlay == large.overlay)
            for site in sites { try site.start(meshKey: key) }
            let deadline = ContinuousClock.now + .seconds(5)
            while large.discovery.local.overlay == small.overlay && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            let moved = large.discovery.local.overlay
            #expect(moved != small.overlay && pool.contains(moved))
            #expect(small.discovery.local.overlay == small.overlay)
            var addresses = ""
            while !(addresses.contains("\(moved)/32") && !addresses.contains("\(small.overlay)/32"))
                    && ContinuousClock.now < deadline + .seconds(1) {
                addresses = try large.namespace.run(["ip", "-4", "-o", "addr", "show", "dev", large.interfaceNames[0]]).stdout
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(addresses.contains("\(moved)/32") && !addresses.contains("\(small.overlay)/32"))
            // The small site learns the new address and routes to it through the tunnel.
            var peered = false
            while !peered && ContinuousClock.now < deadline + .seconds(3) {
                let state = try? await small.backend.state(of: small.interfaceNames[0])
                peered = state?.peer(large.key.publicKey)?.allowedIPs.contains(IPv4Prefix(moved, length: 32)) == true
                if !peered { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(peered)
            try small.namespace.ip("route", "replace", "\(moved)/32", "dev", small.interfaceNames[0])
            let receiver = try UDPSocket(in: large.namespace, bindTo: "\(moved)", port: 40002)
            let sender = try UDPSocket(in: small.namespace)
            var arrived = false
            for _ in 0..<5 where !arrived {
                sender.send(Array("hello".utf8), to: "\(moved)", port: 40002)
                arrived = await receiver.nextDatagram(within: .milliseconds(600)) != nil
            }
            #expect(arrived)
        } catch {
            await tearDown(hub, sites)
            throw error
        }
        await tearDown(hub, sites)
    }
}

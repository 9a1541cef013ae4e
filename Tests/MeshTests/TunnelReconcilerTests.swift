import Foundation
import Model
import Synchronization
import Testing
import WireGuard
@testable import Mesh

/// Records every backend call and keeps interface state like a real backend would.
final class RecordingBackend: WireGuardBackend {
    enum Call: Equatable {
        case create(String)
        case configure(String, DeviceUpdate)
        case bringUp(String, [TunnelAddress])
        case removeAddresses(String, [TunnelAddress])
        case delete(String)
    }

    var kind: WireGuardBackendKind { .userspace }
    let calls = Mutex<[Call]>([])
    let interfaces = Mutex<[String: InterfaceState]>([:])
    let failConfigure = Mutex<Set<String>>([])

    var recorded: [Call] { calls.withLock { $0 } }
    func reset() { calls.withLock { $0 = [] } }

    func createInterface(named name: String) async throws(WireGuardError) {
        calls.withLock { $0.append(.create(name)) }
        interfaces.withLock { $0[name] = $0[name] ?? InterfaceState(publicKey: nil, listenPort: 0, fwmark: 0, peers: []) }
    }

    func configure(_ name: String, _ update: DeviceUpdate) async throws(WireGuardError) {
        calls.withLock { $0.append(.configure(name, update)) }
        if failConfigure.withLock({ $0.contains(name) }) { throw .rejected(interface: name, .portInUse) }
        interfaces.withLock { all in
            guard var state = all[name] else { return }
            if let key = update.privateKey { state.publicKey = WireGuardPrivateKey(key)?.publicKey }
            if let port = update.listenPort { state.listenPort = port }
            if let mark = update.fwmark { state.fwmark = mark }
            if update.replacePeers { state.peers = [] }
            for peer in update.peers {
                state.peers.removeAll { $0.publicKey == peer.publicKey }
                if !peer.remove {
                    state.peers.append(PeerState(publicKey: peer.publicKey, endpoint: peer.endpoint, allowedIPs: peer.allowedIPs,
                                                 persistentKeepalive: peer.persistentKeepalive ?? 0))
                }
            }
            all[name] = state
        }
    }

    func bringUp(_ name: String, addresses: [TunnelAddress]) async throws(WireGuardError) {
        calls.withLock { $0.append(.bringUp(name, addresses)) }
    }

    func removeAddresses(_ addresses: [TunnelAddress], from name: String) async throws(WireGuardError) {
        calls.withLock { $0.append(.removeAddresses(name, addresses)) }
    }

    func state(of name: String) async throws(WireGuardError) -> InterfaceState {
        guard let state = interfaces.withLock({ $0[name] }) else { throw .noSuchInterface(name) }
        return state
    }

    func interfaces(withPrefix prefix: String) async throws(WireGuardError) -> [String] {
        interfaces.withLock { $0.keys.filter { $0.hasPrefix(prefix) }.sorted() }
    }

    func deleteInterface(named name: String) async throws(WireGuardError) {
        calls.withLock { $0.append(.delete(name)) }
        interfaces.withLock { _ = $0.removeValue(forKey: name) }
    }
}

/// A key whose public half sorts before every `remoteSite` key (0x01..., 0x02..., 0xff...): this site
/// initiates to all of them.
let initiatorKey: WireGuardPrivateKey = {
    var key = WireGuardPrivateKey()
    while key.publicKey.bytes[0] != 0 { key = WireGuardPrivateKey() }
    return key
}()

struct TunnelReconcilerTests {
    let key = initiatorKey
    let uplinks = [Uplink(interface: "eth0", label: "isp"), Uplink(interface: "wwan0", label: "lte")]
    let settings = TunnelSettings(interfacePrefix: "wg-hq")
    let overlay = [TunnelAddress(IPv4Address(10, 99, 0, 50), prefixLength: 32)]

    func plan(_ remotes: [SiteDescription]) throws -> TunnelPlan {
        let local = TunnelPlanner.localEndpoints(uplinks: uplinks, addresses: ["eth0": IPv4Address(198, 51, 100, 1),
                                                                              "wwan0": IPv4Address(203, 0, 113, 1)], settings: settings)
        return try TunnelPlanner.plan(uplinks: uplinks, localEndpoints: local, remotes: remotes, settings: settings)
    }

    @Test func createsThenChangesOnlyWhatChanged() async throws {
        let backend = RecordingBackend()
        let reconciler = TunnelReconciler(backend: backend, privateKey: key, addresses: overlay)
        let east = remoteSite(1, labels: ["isp", "lte"])
        let first = await reconciler.apply(try plan([east]))
        #expect(first.created == ["wg-hq0", "wg-hq1"])
        #expect(backend.recorded.first == .create("wg-hq0"))
        // Created up and empty, then the peers are added (so wireguard-go handshakes at once).
        guard case .configure("wg-hq0", let full) = backend.recorded[1] else { Issue.record("expected a full configure"); return }
        #expect(full.replacePeers && full.privateKey == key.secret && full.listenPort == 51820 && full.fwmark == 0x1000_0000)
        #expect(full.peers.isEmpty)
        #expect(backend.recorded[2] == .bringUp("wg-hq0", overlay))
        guard case .configure("wg-hq0", let peers) = backend.recorded[3] else { Issue.record("expected the peers"); return }
        #expect(peers.peers.first?.endpoint == east.endpoints[0].address)  // endpoint set with the peer, before traffic

        // Same plan again: nothing at all is sent.
        backend.reset()
        let again = await reconciler.apply(try plan([east]))
        #expect(!again.changedSomething)
        #expect(backend.recorded.isEmpty)

        // A second site appears: one set adding one peer per interface it pairs with; nothing restarted.
        backend.reset()
        let west = remoteSite(2, labels: ["isp"], lan: [IPv4Prefix("192.168.30.0/24")!])
        _ = await reconciler.apply(try plan([east, west]))
        #expect(backend.recorded == [.configure("wg-hq0", DeviceUpdate(peers: [PeerUpdate(setting: try plan([east, west]).interfaces[0].peers.first { $0.publicKey == west.publicKey }!)]))])

        // East's isp endpoint moves: remove + re-add in one set on wg-hq0 only.
        backend.reset()
        var moved = east
        moved.endpoints[0].address = SocketAddress4("192.0.2.200:51830")!
        _ = await reconciler.apply(try plan([moved, west]))
        #expect(backend.recorded.count == 1)
        guard case .configure("wg-hq0", let change) = backend.recorded.first else { Issue.record("expected one configure"); return }
        #expect(change.peers.count == 2)
        #expect(change.peers[0] == .removing(east.publicKey))
        #expect(change.peers[1].publicKey == east.publicKey && change.peers[1].endpoint == SocketAddress4("192.0.2.200:51830"))
        #expect(change.listenPort == nil && change.privateKey == nil && !change.replacePeers)

        // West adds a LAN: updated in place, no remove (its session survives).
        backend.reset()
        var grown = west
        grown.lanPrefixes.append(IPv4Prefix("192.168.31.0/24")!)
        _ = await reconciler.apply(try plan([moved, grown]))
        guard case .configure("wg-hq0", let lan) = backend.recorded.first else { Issue.record("expected one configure"); return }
        #expect(lan.peers.count == 1 && !lan.peers[0].remove && lan.peers[0].replaceAllowedIPs)

        // East expires: its peers are removed from both interfaces; the interfaces stay.
        backend.reset()
        let report = await reconciler.apply(try plan([grown]))
        #expect(report.deleted.isEmpty)
        #expect(backend.recorded == [.configure("wg-hq0", DeviceUpdate(peers: [.removing(east.publicKey)])),
                                     .configure("wg-hq1", DeviceUpdate(peers: [.removing(east.publicKey)]))])

        // Shutdown removes every interface.
        backend.reset()
        await reconciler.removeAll()
        #expect(backend.recorded == [.delete("wg-hq0"), .delete("wg-hq1")])
    }

    @Test func adoptsInterfacesLeftByAPreviousRun() async throws {
        let backend = RecordingBackend()
        let east = remoteSite(1, labels: ["isp", "lte"])
        let first = TunnelReconciler(backend: backend, privateKey: key, addresses: overlay)
        _ = await first.apply(try plan([east]))
        backend.reset()
        // A new reconciler (daemon restart) finds the same interfaces: no create, no peer churn.
        let second = TunnelReconciler(backend: backend, privateKey: key, addresses: overlay)
        let report = await second.apply(try plan([east]))
        #expect(report.created.isEmpty)
        #expect(!backend.recorded.contains { if case .create = $0 { true } else { false } })
        #expect(!backend.recorded.contains { if case .configure = $0 { true } else { false } })
    }

    @Test func aFailingInterfaceDoesNotStopTheOthersAndIsRetried() async throws {
        let backend = RecordingBackend()
        _ = backend.failConfigure.withLock { $0.insert("wg-hq0") }
        let reconciler = TunnelReconciler(backend: backend, privateKey: key, addresses: overlay)
        let report = await reconciler.apply(try plan([remoteSite(1, labels: ["isp", "lte"])]))
        #expect(report.created == ["wg-hq1"])
        #expect(report.failures["wg-hq0"]?.contains("already in use") == true)
        backend.failConfigure.withLock { $0 = [] }
        let retry = await reconciler.apply(try plan([remoteSite(1, labels: ["isp", "lte"])]))
        #expect(retry.failures.isEmpty)
        #expect(retry.updated == ["wg-hq0"] || retry.created == ["wg-hq0"])
    }
}

extension TunnelReconcilerTests {
    /// Crossing first initiations stall both sides for WireGuard's 5 s retry; the side with the smaller
    /// public key re-creates the peer (remove + add in one set) so a fresh initiation goes out.
    @Test func onlyTheSmallerKeyNudgesAStalledFirstHandshake() async throws {
        let backend = RecordingBackend()
        var middle = WireGuardPrivateKey()
        while !(2...0xfe).contains(middle.publicKey.bytes[0]) { middle = WireGuardPrivateKey() }
        let reconciler = TunnelReconciler(backend: backend, privateKey: middle, addresses: overlay)
        let low = remoteSite(1, labels: ["isp"])     // key bytes 0x01...: smaller than almost any key
        var high = remoteSite(2, labels: ["isp"])
        high.publicKey = WireGuardKey(bytes: [UInt8](repeating: 0xff, count: 32))!
        _ = await reconciler.apply(try plan([low, high]))
        backend.reset()
        #expect(await reconciler.nudgeStalledHandshakes() == 0)  // not due yet
        try await Task.sleep(for: TunnelReconciler.firstNudge + .milliseconds(50))
        #expect(await reconciler.nudgeStalledHandshakes() == 1)
        let highPeer = try plan([low, high]).interfaces[0].peers.first { $0.publicKey == high.publicKey }!
        // The re-creation of the high peer; on a machine so loaded that the sleep outlasted the keepalive hold
        // (1 s), the same set also turns the low peer's keepalive on, and nothing else.
        guard case .configure("wg-hq0", let update)? = backend.recorded.first, backend.recorded.count == 1 else {
            Issue.record("one configure of wg-hq0 expected: \(backend.recorded)")
            return
        }
        #expect(Array(update.peers.prefix(2)) == [.removing(high.publicKey), PeerUpdate(setting: highPeer)])
        #expect(update.peers.dropFirst(2).allSatisfy {
            $0 == PeerUpdate(publicKey: low.publicKey, persistentKeepalive: 25)
        }, "\(update.peers)")
        // Backed off: not again right away.
        #expect(await reconciler.nudgeStalledHandshakes() == 0)
    }
}

extension TunnelReconcilerTests {
    @Test func movingTheOverlayAddsTheNewAddressThenRemovesTheOld() async throws {
        let backend = RecordingBackend()
        let reconciler = TunnelReconciler(backend: backend, privateKey: key, addresses: overlay)
        _ = await reconciler.apply(try plan([remoteSite(1, labels: ["isp"])]))
        backend.reset()
        let moved = [TunnelAddress(IPv4Address(10, 99, 7, 7), prefixLength: 32)]
        await reconciler.setAddresses(moved)
        #expect(backend.recorded == [.bringUp("wg-hq0", moved), .removeAddresses("wg-hq0", overlay),
                                     .bringUp("wg-hq1", moved), .removeAddresses("wg-hq1", overlay)])
    }
}

extension TunnelReconcilerTests {
    @Test func staleInterfacesFromAnEarlierRunAreRemovedButPlannedOnesAdopted() async throws {
        let backend = RecordingBackend()
        for name in ["wg-hq0", "wg-hq7", "wg-other0"] { try await backend.createInterface(named: name) }
        let reconciler = TunnelReconciler(backend: backend, privateKey: key, addresses: overlay)
        _ = await reconciler.apply(try plan([remoteSite(1, labels: ["isp", "lte"])]))
        backend.reset()
        #expect(await reconciler.removeStale(prefix: "wg-hq") == ["wg-hq7"])
        #expect(backend.recorded == [.delete("wg-hq7")])
    }
}

extension TunnelReconcilerTests {
    /// The side whose key sorts second adds a new peer with keepalive off (it answers, it does not initiate,
    /// so first initiations never cross) and turns keepalive on once the peer has handshaken.
    @Test func theOtherSideHoldsKeepaliveUntilTheFirstHandshake() async throws {
        let backend = RecordingBackend()
        var responder = WireGuardPrivateKey()
        while responder.publicKey.bytes[0] < 0x03 { responder = WireGuardPrivateKey() }  // after remoteSite(1)'s 0x01...
        let reconciler = TunnelReconciler(backend: backend, privateKey: responder, addresses: overlay)
        let east = remoteSite(1, labels: ["isp"])
        _ = await reconciler.apply(try plan([east]))
        guard case .configure("wg-hq0", let added) = backend.recorded[3] else { Issue.record("expected the peers"); return }
        #expect(added.peers.count == 1 && added.peers[0].persistentKeepalive == 0)
        backend.reset()
        #expect(await reconciler.nudgeStalledHandshakes() == 0)
        #expect(backend.recorded.isEmpty)  // no handshake yet, before the hold limit: nothing to do
        // The peer handshakes (the other side initiated): keepalive goes on, and nothing else is touched.
        backend.interfaces.withLock { $0["wg-hq0"]!.peers[0].lastHandshake = Date() }
        _ = await reconciler.nudgeStalledHandshakes()
        #expect(backend.recorded == [.configure("wg-hq0", DeviceUpdate(peers: [PeerUpdate(publicKey: east.publicKey, persistentKeepalive: 25)]))])
        backend.reset()
        _ = await reconciler.nudgeStalledHandshakes()
        #expect(backend.recorded.isEmpty)
        #expect(await reconciler.apply(try plan([east])).changedSomething == false)
    }
}

extension TunnelReconcilerTests {
    /// A dead session (`RelayPlanner.deadSessions`) is restarted: its peer re-created as applied in one set
    /// (the old session, learned endpoint and handshake gone), the other peers untouched, and the
    /// first-handshake maintenance nudges it like a new peer.
    @Test func aDeadSessionIsRestartedAndNudgedLikeANewPeer() async throws {
        let backend = RecordingBackend()
        let reconciler = TunnelReconciler(backend: backend, privateKey: key, addresses: overlay)
        let east = remoteSite(1, labels: ["isp", "lte"]), west = remoteSite(2, labels: ["isp", "lte"])
        let plan = try plan([east, west])
        _ = await reconciler.apply(plan)
        for name in ["wg-hq0", "wg-hq1"] {
            backend.interfaces.withLock { interfaces in
                for i in interfaces[name]!.peers.indices { interfaces[name]!.peers[i].lastHandshake = Date() }
            }
        }
        _ = await reconciler.nudgeStalledHandshakes()  // both handshook: nothing awaits a first handshake
        backend.reset()
        await reconciler.restartSessions([TunnelSession(interface: "wg-hq0", peer: west.publicKey)])
        let westPeer = try #require(plan.interfaces[0].peers.first { $0.publicKey == west.publicKey })
        #expect(backend.recorded == [.configure("wg-hq0", DeviceUpdate(peers: [.removing(west.publicKey), PeerUpdate(setting: westPeer)]))])
        backend.reset()
        try await Task.sleep(for: TunnelReconciler.firstNudge + .milliseconds(50))
        backend.interfaces.withLock { interfaces in
            for i in interfaces["wg-hq0"]!.peers.indices where interfaces["wg-hq0"]!.peers[i].publicKey == west.publicKey {
                interfaces["wg-hq0"]!.peers[i].lastHandshake = nil
            }
        }
        #expect(await reconciler.nudgeStalledHandshakes() == 1, "the restarted peer awaits its first handshake")
        #expect(await reconciler.apply(plan).changedSomething == false, "the plan did not change")
        // Unknown interfaces and peers change nothing.
        backend.reset()
        await reconciler.restartSessions([TunnelSession(interface: "wg-none", peer: west.publicKey)])
        #expect(backend.recorded.isEmpty)
    }
}

import Foundation
import Lab
import Model
import Testing
@testable import WireGuard

/// Two namespaces joined by a veth, one wireguard-go tunnel each, configured only through our code
/// (spawn, UAPI, rtnetlink). Needs root and wireguard-go; skipped otherwise.
@Suite(.serialized, .enabled(if: getuid() == 0 && access(UserspaceWireGuard.defaultExecutable, X_OK) == 0))
struct UserspaceRootTests {
    struct Side {
        let namespace: NetworkNamespace
        let executor: NamespaceExecutor
        let backend: UserspaceWireGuard
        let interface: String
        let key = WireGuardPrivateKey()
        let underlay: IPv4Address
        let overlay: IPv4Address
        let port: UInt16

        func run<T: Sendable>(_ body: @Sendable @escaping (UserspaceWireGuard) async throws -> T) async throws -> T {
            try await withTaskExecutorPreference(executor) { try await body(backend) }
        }
    }

    func makeSides() throws -> (Side, Side) {
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        let a = try NetworkNamespace.create(label: "wga")
        let b = try NetworkNamespace.create(label: "wgb")
        try a.addVeth("veth-a", peer: "veth-b", in: b)
        try a.addAddress("192.168.77.1/24", to: "veth-a")
        try b.addAddress("192.168.77.2/24", to: "veth-b")
        let sideA = Side(namespace: a, executor: try NamespaceExecutor(a), backend: UserspaceWireGuard(),
                         interface: "ptwg\(tag)a", underlay: IPv4Address(192, 168, 77, 1),
                         overlay: IPv4Address(10, 99, 77, 1), port: 51901)
        let sideB = Side(namespace: b, executor: try NamespaceExecutor(b), backend: UserspaceWireGuard(),
                         interface: "ptwg\(tag)b", underlay: IPv4Address(192, 168, 77, 2),
                         overlay: IPv4Address(10, 99, 77, 2), port: 51902)
        return (sideA, sideB)
    }

    func configuration(_ local: Side, peer: Side) -> InterfaceConfiguration {
        InterfaceConfiguration(privateKey: local.key.secret, listenPort: local.port, fwmark: 0x0100_0000, peers: [
            PeerConfiguration(publicKey: peer.key.publicKey, endpoint: SocketAddress4(peer.underlay, port: peer.port),
                              allowedIPs: [IPv4Prefix(peer.overlay, length: 32)], persistentKeepalive: 0),
        ])
    }

    /// True when a UDP datagram sent from `from` to `to`'s overlay address arrives (the tunnel's "ping";
    /// ping(8) is not installed on every machine). Retries cover the first handshake.
    func crosses(from: Side, to: Side, attempts: Int = 5) async throws -> Bool {
        let receiver = try UDPSocket(in: to.namespace, bindTo: "\(to.overlay)", port: 40000)
        let sender = try UDPSocket(in: from.namespace)
        for attempt in 0..<attempts {
            sender.send(Array("ping \(attempt)".utf8), to: "\(to.overlay)", port: 40000)
            if let got = await receiver.nextDatagram(within: .seconds(1)), got.address == "\(from.overlay)" { return true }
        }
        return false
    }

    func cleanUp(_ sides: [Side]) async {
        for side in sides {
            _ = try? await side.run { try await $0.deleteInterface(named: side.interface) }
            side.executor.shutdown()
            side.namespace.delete()
        }
    }

    @Test func tunnelHandshakesAndCarriesPingRoot() async throws {
        let (a, b) = try makeSides()
        do {
            for (local, peer) in [(a, b), (b, a)] {
                let config = configuration(local, peer: peer)
                try await local.run {
                    try await $0.start(local.interface, configuration: config,
                                       addresses: [TunnelAddress(local.overlay, prefixLength: 24)])
                }
            }
            // Starting again adopts the running process instead of failing or restarting it.
            let pid = a.backend.processID(of: a.interface)
            try await a.run { try await $0.createInterface(named: a.interface) }
            #expect(a.backend.processID(of: a.interface) == pid)

            #expect(try await crosses(from: a, to: b))
            #expect(try await crosses(from: b, to: a))

            let state = try await a.run { try await $0.state(of: a.interface) }
            #expect(state.publicKey == a.key.publicKey)
            #expect(state.listenPort == a.port)
            #expect(state.fwmark == 0x0100_0000)
            let peer = try #require(state.peer(b.key.publicKey))
            #expect(peer.lastHandshake != nil)
            #expect(peer.rxBytes > 0 && peer.txBytes > 0)
            #expect(peer.endpoint == SocketAddress4(b.underlay, port: b.port))
            #expect(peer.allowedIPs == [IPv4Prefix(b.overlay, length: 32)])

            // `wg show` (wireguard-tools, reading the same UAPI socket) displays what we configured.
            let dump = try Subprocess.check(["wg", "show", a.interface, "dump"]).split(separator: "\n")
            let device = dump[0].split(separator: "\t")
            #expect(device[1] == a.key.publicKey.base64)
            #expect(device[2] == "\(a.port)")
            #expect(device[3] == "0x1000000")
            let peerLine = dump[1].split(separator: "\t")
            #expect(peerLine[0] == b.key.publicKey.base64)
            #expect(peerLine[2] == "\(b.underlay):\(b.port)")
            #expect(peerLine[3] == "\(b.overlay)/32")
            #expect(peerLine[4] != "0")  // latest handshake
        } catch {
            await cleanUp([a, b])
            throw error
        }
        let pids = [a.backend.processID(of: a.interface), b.backend.processID(of: b.interface)].compactMap { $0 }
        await cleanUp([a, b])
        // Stopped and reaped: the pids are gone and so are the UAPI sockets.
        for pid in pids { #expect(kill(pid, 0) != 0) }
        #expect(access("/var/run/wireguard/\(a.interface).sock", F_OK) != 0)
    }

    /// A first handshake sent to a dead endpoint arms wireguard-go's handshake rate limit (5 s). Fixing the
    /// endpoint by removing and re-adding the peer in one set handshakes at once: what the reconciler does.
    @Test func endpointFixByRemoveAndReAddHandshakesAtOnceRoot() async throws {
        let (a, b) = try makeSides()
        do {
            var wrong = configuration(a, peer: b)
            wrong.peers[0].endpoint = SocketAddress4(IPv4Address(192, 168, 77, 9), port: b.port)
            let initial = wrong
            try await a.run {
                try await $0.start(a.interface, configuration: initial, addresses: [TunnelAddress(a.overlay, prefixLength: 24)])
            }
            let config = configuration(b, peer: a)
            try await b.run {
                try await $0.start(b.interface, configuration: config, addresses: [TunnelAddress(b.overlay, prefixLength: 24)])
            }
            #expect(try await !crosses(from: a, to: b, attempts: 1))
            let fixed = configuration(a, peer: b).peers[0]
            try await a.run {
                try await $0.configure(a.interface, DeviceUpdate(peers: [.removing(b.key.publicKey), PeerUpdate(setting: fixed)]))
            }
            let start = ContinuousClock.now
            #expect(try await crosses(from: a, to: b, attempts: 1))
            #expect(ContinuousClock.now - start < .seconds(1))
        } catch {
            await cleanUp([a, b])
            throw error
        }
        await cleanUp([a, b])
    }

    /// After a crash the next run finds wireguard-go still running: it adopts it (same process, config kept)
    /// and can still remove it, although the process is not its child.
    @Test func aSurvivingInterfaceIsAdoptedAndRemovableByANewBackendRoot() async throws {
        let (a, b) = try makeSides()
        do {
            let config = configuration(a, peer: b)
            try await a.run {
                try await $0.start(a.interface, configuration: config, addresses: [TunnelAddress(a.overlay, prefixLength: 24)])
            }
            let pid = try #require(a.backend.processID(of: a.interface))
            let successor = UserspaceWireGuard()
            // Listing sees only this namespace's interfaces, although UAPI sockets are machine-wide.
            let config2 = configuration(b, peer: a)
            try await b.run { try await $0.start(b.interface, configuration: config2, addresses: []) }
            let listed = try await withTaskExecutorPreference(a.executor) { try await successor.interfaces(withPrefix: "ptwg") }
            #expect(listed == [a.interface])
            try await withTaskExecutorPreference(a.executor) { try await successor.createInterface(named: a.interface) }
            #expect(successor.processID(of: a.interface) == nil)  // adopted, not started
            let state = try await successor.state(of: a.interface)
            #expect(state.publicKey == a.key.publicKey && state.peers.count == 1)
            try await withTaskExecutorPreference(a.executor) { try await successor.deleteInterface(named: a.interface) }
            // wireguard-go exits when its TUN link is deleted; the first backend reaps it.
            let deadline = ContinuousClock.now + .seconds(3)
            var exited = false
            while !exited && ContinuousClock.now < deadline {
                var status: Int32 = 0
                exited = waitpid(pid, &status, WNOHANG) == pid
                if !exited { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(exited)
            #expect(try !a.namespace.ip("-o", "link").contains(a.interface))
        } catch {
            await cleanUp([a, b])
            throw error
        }
        await cleanUp([a, b])
    }

    @Test func missingExecutableAndBadNamesAreTypedErrors() async throws {
        let backend = UserspaceWireGuard(executable: "/nonexistent/wireguard-go")
        await #expect(throws: WireGuardError.spawnFailed(executable: "/nonexistent/wireguard-go", errno: ENOENT)) {
            try await backend.createInterface(named: "ptwgmissing0")
        }
        await #expect(throws: WireGuardError.invalidInterfaceName("this-name-is-too-long")) {
            try await backend.createInterface(named: "this-name-is-too-long")
        }
    }
}

import Foundation
import Model
import Testing
@testable import WireGuard

/// A one-connection-at-a-time UAPI server on a temporary unix socket: records each request, answers with the
/// next canned answer (or a custom behaviour).
final class FakeUAPIServer: @unchecked Sendable {
    let directory: String
    let interface = "wgtest0"
    private let listener: Int32
    private let thread: Thread

    init(answers: [[UInt8]]) throws {
        directory = "/tmp/pt-uapi-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(directory, 0o700)
        let path = "\(directory)/\(interface).sock"
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(fd, 4) == 0 else { throw POSIXError(.EADDRINUSE) }
        listener = fd
        let requestsBox = Box()
        thread = Thread {
            var pending = answers
            while !pending.isEmpty {
                let client = accept(fd, nil, nil)
                if client < 0 { return }
                var request = [UInt8]()
                var byte: UInt8 = 0
                while recv(client, &byte, 1, 0) == 1 {
                    request.append(byte)
                    if request.count >= 2, request.suffix(2) == [10, 10] { break }
                }
                requestsBox.append(String(decoding: request, as: UTF8.self))
                let answer = pending.removeFirst()
                _ = answer.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                close(client)
            }
        }
        self.box = requestsBox
        thread.start()
    }

    final class Box: @unchecked Sendable {
        let lock = NSLock()
        var items: [String] = []
        func append(_ item: String) { lock.withLock { items.append(item) } }
        var all: [String] { lock.withLock { items } }
    }
    private let box: Box
    var received: [String] { box.all }

    var client: UAPIClient { UAPIClient(interface: interface, runDirectory: directory, timeout: .milliseconds(500)) }

    deinit {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        unlink("\(directory)/\(interface).sock")
        rmdir(directory)
    }
}

struct UAPITests {
    let key1 = WireGuardKey(hex: "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")!
    let secret = WireGuardKey(hex: "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")!

    @Test func setRequestGoldenText() {
        let update = DeviceUpdate(privateKey: secret, listenPort: 51830, fwmark: 0x0100_0000, replacePeers: true, peers: [
            .removing(key1),
            PeerUpdate(publicKey: key1, endpoint: SocketAddress4("192.0.2.1:51831")!, persistentKeepalive: 25,
                       replaceAllowedIPs: true, allowedIPs: [IPv4Prefix("10.99.1.2/32")!, IPv4Prefix("192.168.2.0/24")!]),
        ])
        #expect(UAPI.setRequest(update) == """
            set=1
            private_key=77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a
            listen_port=51830
            fwmark=16777216
            replace_peers=true
            public_key=8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a
            remove=true
            public_key=8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a
            endpoint=192.0.2.1:51831
            persistent_keepalive_interval=25
            replace_allowed_ips=true
            allowed_ip=10.99.1.2/32
            allowed_ip=192.168.2.0/24


            """)
    }

    @Test func parsesGetAnswer() throws {
        let answer = """
            private_key=77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a
            listen_port=51830
            fwmark=16777216
            public_key=8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a
            preshared_key=0000000000000000000000000000000000000000000000000000000000000000
            protocol_version=1
            endpoint=192.0.2.1:51831
            last_handshake_time_sec=1700000000
            last_handshake_time_nsec=500000000
            tx_bytes=1234
            rx_bytes=5678
            persistent_keepalive_interval=25
            allowed_ip=10.99.1.2/32
            allowed_ip=fd00::/64
            allowed_ip=192.168.2.0/24
            some_future_key=whatever
            public_key=de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f
            protocol_version=1
            last_handshake_time_sec=0
            last_handshake_time_nsec=0
            tx_bytes=0
            rx_bytes=0
            persistent_keepalive_interval=0
            errno=0


            """
        let state = try UAPI.parseGetResponse(answer)
        #expect(state.publicKey == key1)  // derived from the private key
        #expect(state.listenPort == 51830)
        #expect(state.fwmark == 0x0100_0000)
        #expect(state.peers.count == 2)
        let first = state.peers[0]
        #expect(first.publicKey == key1)
        #expect(first.endpoint == SocketAddress4("192.0.2.1:51831"))
        #expect(first.allowedIPs == [IPv4Prefix("10.99.1.2/32")!, IPv4Prefix("192.168.2.0/24")!])
        #expect(first.lastHandshake == Date(timeIntervalSince1970: 1_700_000_000.5))
        #expect(first.txBytes == 1234 && first.rxBytes == 5678 && first.persistentKeepalive == 25)
        #expect(state.peers[1].lastHandshake == nil)
        #expect(state.peers[1].endpoint == nil)
    }

    @Test func rejectsMalformedAnswers() {
        for bad in ["", "errno=0\n", "listen_port=x\nerrno=0\n\n", "listen_port=1\n\nerrno=0\n\n", "garbage\nerrno=0\n\n",
                    "listen_port=70000\nerrno=0\n\n", "public_key=zz\nerrno=0\n\n", "errno=abc\n\n",
                    String(repeating: "a", count: 600) + "=1\nerrno=0\n\n"] {
            #expect(throws: UAPIParseError.self) { try UAPI.parseGetResponse(bad) }
        }
        #expect(throws: UAPIParseError.errno(-22)) { try UAPI.parseGetResponse("errno=-22\n\n") }
    }

    @Test func clientRoundTripsOverSocket() throws {
        let server = try FakeUAPIServer(answers: [Array("listen_port=51830\nerrno=0\n\n".utf8), Array("errno=0\n\n".utf8)])
        let state = try server.client.get()
        #expect(state.listenPort == 51830)
        try server.client.set(DeviceUpdate(listenPort: 51831))
        #expect(server.received == ["get=1\n\n", "set=1\nlisten_port=51831\n\n"])
    }

    @Test func errnoAnswersBecomeTypedErrors() throws {
        let server = try FakeUAPIServer(answers: [Array("errno=-98\n\n".utf8), Array("errno=-22\n\n".utf8),
                                                  Array("errno=-71\n\n".utf8), Array("errno=-5\n\n".utf8)])
        #expect(throws: WireGuardError.rejected(interface: "wgtest0", .portInUse)) { try server.client.set(DeviceUpdate(listenPort: 1)) }
        #expect(throws: WireGuardError.rejected(interface: "wgtest0", .invalid)) { try server.client.set(DeviceUpdate()) }
        #expect(throws: WireGuardError.rejected(interface: "wgtest0", .protocolViolation)) { try server.client.get() }
        #expect(throws: WireGuardError.rejected(interface: "wgtest0", .io)) { try server.client.set(DeviceUpdate()) }
    }

    @Test func endlessAnswerIsCutOff() throws {
        let endless = [UInt8](repeating: UInt8(ascii: "a"), count: 2 << 20)
        let server = try FakeUAPIServer(answers: [endless])
        #expect(throws: WireGuardError.responseTooLarge(path: server.client.socketPath, limit: 1 << 20)) {
            try server.client.get()
        }
    }

    @Test func truncatedAnswerAndMissingSocketAreTypedErrors() throws {
        let server = try FakeUAPIServer(answers: [Array("listen_port=1\n".utf8)])
        #expect(throws: WireGuardError.malformedResponse(path: server.client.socketPath, detail: "connection closed mid-answer")) {
            try server.client.get()
        }
        let missing = UAPIClient(interface: "nonexistent-pt", runDirectory: "/tmp")
        #expect(throws: WireGuardError.socketUnavailable(path: "/tmp/nonexistent-pt.sock", errno: ENOENT)) { try missing.get() }
        #expect(!missing.isReachable())
    }
}

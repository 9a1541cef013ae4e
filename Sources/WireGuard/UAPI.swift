import CNetfilter
import Foundation
import Model

/// The text protocol wireguard-go speaks on its UAPI socket (`/var/run/wireguard/NAME.sock`): a request is
/// `get=1` or `set=1` followed by `key=value` lines and an empty line; the answer is `key=value` lines ending
/// in `errno=N` and an empty line. Keys are hex. Pure encoding and parsing; `UAPIClient` does the I/O.
public enum UAPI {
    /// The `set=1` request text for `update`, exactly as sent.
    public static func setRequest(_ update: DeviceUpdate) -> String {
        var text = "set=1\n"
        if let key = update.privateKey { text += "private_key=\(key.hex)\n" }
        if let port = update.listenPort { text += "listen_port=\(port)\n" }
        if let mark = update.fwmark { text += "fwmark=\(mark)\n" }
        if update.replacePeers { text += "replace_peers=true\n" }
        for peer in update.peers {
            text += "public_key=\(peer.publicKey.hex)\n"
            if peer.remove {
                text += "remove=true\n"
                continue
            }
            if let endpoint = peer.endpoint { text += "endpoint=\(endpoint)\n" }
            if let keepalive = peer.persistentKeepalive { text += "persistent_keepalive_interval=\(keepalive)\n" }
            if peer.replaceAllowedIPs { text += "replace_allowed_ips=true\n" }
            for prefix in peer.allowedIPs { text += "allowed_ip=\(prefix)\n" }
        }
        return text + "\n"
    }

    public static let getRequest = "get=1\n\n"

    /// Longest line we accept in an answer; real lines are under 100 bytes.
    static let maxLineBytes = 512

    /// The errno of a `set=1` answer (0 = success).
    public static func parseSetResponse(_ text: String) throws(UAPIParseError) -> Int64 {
        let lines = try splitLines(text)
        guard lines.count == 1, let code = try errnoLine(lines[0]) else {
            throw .malformed("expected one errno line, got \(lines.count) lines")
        }
        return code
    }

    /// Parses a `get=1` answer. Fails with the errno when the answer's errno is not 0. Unknown keys are skipped
    /// (newer wireguard-go versions add some); IPv6 endpoints and allowed IPs are skipped.
    public static func parseGetResponse(_ text: String) throws(UAPIParseError) -> InterfaceState {
        let lines = try splitLines(text)
        guard let last = lines.last, let code = try errnoLine(last) else { throw .malformed("no errno line") }
        guard code == 0 else { throw .errno(code) }
        var state = InterfaceState(publicKey: nil, listenPort: 0, fwmark: 0, peers: [])
        var peer: PeerState?
        var handshakeSeconds: Int64 = 0
        var handshakeNanoseconds: Int64 = 0
        func finishPeer() {
            guard var done = peer else { return }
            if handshakeSeconds != 0 || handshakeNanoseconds != 0 {
                done.lastHandshake = Date(timeIntervalSince1970: Double(handshakeSeconds)
                                          + Double(handshakeNanoseconds) / 1e9)
            }
            state.peers.append(done)
            peer = nil
            handshakeSeconds = 0
            handshakeNanoseconds = 0
        }
        for line in lines.dropLast() {
            guard let equals = line.firstIndex(of: "=") else { throw .malformed("line without '=': \(line.prefix(64))") }
            let key = line[..<equals]
            let value = line[line.index(after: equals)...]
            func number<T: FixedWidthInteger>(_: T.Type) throws(UAPIParseError) -> T {
                guard let parsed = T(value) else { throw .malformed("\(key) is not a number: \(value.prefix(32))") }
                return parsed
            }
            func hexKey() throws(UAPIParseError) -> WireGuardKey {
                guard let parsed = WireGuardKey(hex: value) else { throw .malformed("\(key) is not a hex key") }
                return parsed
            }
            switch key {
            case "private_key":
                let secret = try hexKey()
                if !secret.isZero { state.publicKey = WireGuardPrivateKey(secret)?.publicKey }
            case "listen_port": state.listenPort = try number(UInt16.self)
            case "fwmark": state.fwmark = try number(UInt32.self)
            case "public_key":
                finishPeer()
                peer = PeerState(publicKey: try hexKey())
            default:
                guard peer != nil else { continue }
                switch key {
                case "endpoint": peer!.endpoint = SocketAddress4(value)
                case "allowed_ip":
                    // wireguard-go prints canonical prefixes; skip IPv6 and anything unexpected.
                    if let prefix = IPv4Prefix(value) { peer!.allowedIPs.append(prefix) }
                case "persistent_keepalive_interval": peer!.persistentKeepalive = try number(UInt16.self)
                case "last_handshake_time_sec": handshakeSeconds = try number(Int64.self)
                case "last_handshake_time_nsec": handshakeNanoseconds = try number(Int64.self)
                case "rx_bytes": peer!.rxBytes = try number(UInt64.self)
                case "tx_bytes": peer!.txBytes = try number(UInt64.self)
                default: continue
                }
            }
        }
        finishPeer()
        return state
    }

    /// The lines of an answer, without the terminating empty line. The answer must end in "\n\n".
    private static func splitLines(_ text: String) throws(UAPIParseError) -> [Substring] {
        guard text.hasSuffix("\n\n") else { throw .malformed("answer does not end with an empty line") }
        let body = text.dropLast(2)
        guard !body.isEmpty else { throw .malformed("empty answer") }
        let lines = body.split(separator: "\n", omittingEmptySubsequences: false)
        for line in lines where line.isEmpty || line.utf8.count > maxLineBytes {
            throw .malformed(line.isEmpty ? "empty line inside the answer" : "line over \(maxLineBytes) bytes")
        }
        return lines
    }

    private static func errnoLine(_ line: Substring) throws(UAPIParseError) -> Int64? {
        guard line.hasPrefix("errno=") else { return nil }
        guard let code = Int64(line.dropFirst("errno=".count)) else { throw .malformed("errno is not a number") }
        return code
    }
}

/// Why a UAPI answer was not usable.
public enum UAPIParseError: Error, Hashable {
    case malformed(String)
    case errno(Int64)
}

/// A blocking client for one wireguard-go UAPI socket. One connection per operation, like `wg` does.
///
/// Every read is bounded: at most `maxResponseBytes` are accepted and each operation gives up after
/// `timeout`, so a hostile or stuck socket cannot make us allocate without limit or hang the caller.
/// Costs one connect and a few small syscalls per operation (tens of microseconds on loopback).
public struct UAPIClient: Sendable {
    public let interface: String
    public let socketPath: String
    public var maxResponseBytes: Int
    public var timeout: Duration

    public static let defaultRunDirectory = "/var/run/wireguard"

    public init(interface: String, runDirectory: String = UAPIClient.defaultRunDirectory,
                maxResponseBytes: Int = 1 << 20, timeout: Duration = .seconds(2)) {
        self.interface = interface
        self.socketPath = "\(runDirectory)/\(interface).sock"
        self.maxResponseBytes = maxResponseBytes
        self.timeout = timeout
    }

    /// Reads configuration and liveness (`get=1`).
    public func get() throws(WireGuardError) -> InterfaceState {
        let answer = try exchange(UAPI.getRequest)
        do {
            return try UAPI.parseGetResponse(answer)
        } catch {
            switch error {
            case .errno(let code): throw .rejected(interface: interface, ConfigurationErrno(code: code))
            case .malformed(let detail): throw .malformedResponse(path: socketPath, detail: detail)
            }
        }
    }

    /// Applies `update` (`set=1`); throws `.rejected` with the mapped errno when wireguard-go refuses it.
    public func set(_ update: DeviceUpdate) throws(WireGuardError) {
        let answer = try exchange(UAPI.setRequest(update))
        let code: Int64
        do {
            code = try UAPI.parseSetResponse(answer)
        } catch {
            switch error {
            case .errno(let value): code = value
            case .malformed(let detail): throw .malformedResponse(path: socketPath, detail: detail)
            }
        }
        guard code == 0 else { throw .rejected(interface: interface, ConfigurationErrno(code: code)) }
    }

    /// True when something accepts connections on the socket.
    public func isReachable() -> Bool {
        guard let fd = try? connectSocket() else { return false }
        close(fd)
        return true
    }

    /// Sends `request` and reads until the answer's terminating empty line.
    func exchange(_ request: String) throws(WireGuardError) -> String {
        let fd = try connectSocket()
        defer { close(fd) }
        let bytes = Array(request.utf8)
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if count < 0 {
                if errno == EINTR { continue }
                throw errno == EAGAIN ? .timedOut(path: socketPath)
                    : .io(path: socketPath, operation: "send", errno: errno)
            }
            sent += count
        }
        var answer = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !(answer.count >= 2 && answer[answer.count - 1] == 10 && answer[answer.count - 2] == 10) {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count < 0 {
                if errno == EINTR { continue }
                throw errno == EAGAIN ? .timedOut(path: socketPath)
                    : .io(path: socketPath, operation: "recv", errno: errno)
            }
            if count == 0 { throw .malformedResponse(path: socketPath, detail: "connection closed mid-answer") }
            guard answer.count + count <= maxResponseBytes else {
                throw .responseTooLarge(path: socketPath, limit: maxResponseBytes)
            }
            answer.append(contentsOf: chunk[..<count])
        }
        guard let text = String(validating: answer, as: UTF8.self) else {
            throw .malformedResponse(path: socketPath, detail: "answer is not UTF-8")
        }
        return text
    }

    private func connectSocket() throws(WireGuardError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .io(path: socketPath, operation: "socket", errno: errno) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw .socketUnavailable(path: socketPath, errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
            raw[pathBytes.count] = 0
        }
        let (seconds, attoseconds) = timeout.components
        var limit = timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else {
            let code = errno
            close(fd)
            throw .socketUnavailable(path: socketPath, errno: code)
        }
        return fd
    }
}

import CNetfilter // SOCK_DGRAM etc. come through the shim once it includes libmnl (module ownership of bits/socket_type.h)
import Glibc

/// A minimal IPv4 UDP socket for tests and measurements inside lab namespaces (open it with
/// `UDPSocket(in: namespace)`, use it from any thread). Not for the router's runtime path.
public final class UDPSocket: @unchecked Sendable {
    public let fd: Int32

    /// Opens a UDP socket inside `namespace` (or the current one when nil), bound to `address:port`
    /// (port 0: any). SO_TIMESTAMPNS is not used: callers time with the monotonic clock around the calls.
    public init(in namespace: NetworkNamespace?, bindTo address: String = "0.0.0.0", port: UInt16 = 0) throws {
        if let namespace {
            fd = try namespace.socket(domain: AF_INET, type: Int32(SOCK_DGRAM.rawValue))
        } else {
            fd = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw LabError.systemCall("socket", errno: errno) }
        }
        var sa = try Self.socketAddress(address, port)
        let rc = withUnsafePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            let code = errno
            close(fd)
            throw LabError.systemCall("bind \(address):\(port)", errno: code)
        }
    }

    deinit { close(fd) }

    /// The bound port.
    public var port: UInt16 {
        var sa = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return UInt16(bigEndian: sa.sin_port)
    }

    /// Sends one datagram; false if the kernel refused it (e.g. no route, full buffer).
    @discardableResult
    public func send(_ bytes: [UInt8], to address: String, port: UInt16) -> Bool {
        guard var sa = try? Self.socketAddress(address, port) else { return false }
        let n = bytes.withUnsafeBytes { buffer in
            withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, buffer.baseAddress, buffer.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        return n == bytes.count
    }

    /// Waits up to `timeout` for one datagram; returns its bytes and sender, or nil on timeout.
    public func receive(timeout: Duration, maxSize: Int = 65535) -> (bytes: [UInt8], address: String, port: UInt16)? {
        let deadline = ContinuousClock.now + timeout
        while true {
            let remaining = deadline - ContinuousClock.now
            let ms = Int32(max(0, remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000))
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, ms)
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { return nil }
            var buffer = [UInt8](repeating: 0, count: maxSize)
            var sa = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let n = buffer.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &sa) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        recvfrom(fd, raw.baseAddress, raw.count, Int32(MSG_DONTWAIT), $0, &len)
                    }
                }
            }
            if n < 0 { if errno == EAGAIN || errno == EINTR { continue }; return nil }
            var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
            inet_ntop(AF_INET, &sa.sin_addr, &text, socklen_t(text.count))
            let address = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return (Array(buffer[0..<n]), address, UInt16(bigEndian: sa.sin_port))
        }
    }

    static func socketAddress(_ address: String, _ port: UInt16) throws -> sockaddr_in {
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = port.bigEndian
        guard inet_pton(AF_INET, address, &sa.sin_addr) == 1 else {
            throw LabError.invalidArgument("'\(address)' is not an IPv4 address")
        }
        return sa
    }
}

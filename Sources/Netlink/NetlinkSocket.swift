#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CNetfilter

/// The raw datagram channel under every netlink exchange. The real one is `NetlinkSocket`; tests use a
/// mock that records what was sent and replays scripted replies, so the ack accounting and the message
/// builders are tested without root.
public protocol NetlinkTransport: AnyObject {
    /// Sends one datagram (one or more netlink messages, already encoded).
    func send(_ datagram: [UInt8]) throws(NetlinkError)
    /// Receives one datagram; throws `ETIMEDOUT` when nothing arrives in time.
    func receive() throws(NetlinkError) -> [UInt8]
}

/// Which netlink family a socket speaks.
public enum NetlinkProtocol: Int32, Sendable {
    case route = 0      // NETLINK_ROUTE
    case netfilter = 12 // NETLINK_NETFILTER
    case generic = 16   // NETLINK_GENERIC
}

/// A netlink socket bound to one network namespace: the caller's, or a named one (/var/run/netns/NAME).
///
/// A socket keeps the namespace it was created in for life, so a named namespace costs one short-lived
/// thread at open (setns on that thread only; the process's other threads never change namespace).
/// Sends are one `sendto`; receives have a timeout so a lost ack can never hang the daemon.
public final class NetlinkSocket: NetlinkTransport {
    public let fd: Int32
    public let netlinkProtocol: NetlinkProtocol
    private var buffer: [UInt8]

    /// - Parameters:
    ///   - netns: nil for the current namespace, or a name under /var/run/netns.
    ///   - receiveTimeout: seconds to wait for a reply before throwing ETIMEDOUT.
    public init(_ netlinkProtocol: NetlinkProtocol, netns: String? = nil, receiveTimeout: Double = 5) throws(NetlinkError) {
        self.netlinkProtocol = netlinkProtocol
        fd = try NetlinkSocket.openConfigured(netlinkProtocol, netns: netns, receiveTimeout: receiveTimeout)
        buffer = [UInt8](repeating: 0, count: 1 << 20)
    }

    deinit { close(fd) }

    /// A bound netlink socket in the namespace, with acks capped, extended acks on, 8 MiB buffers and the
    /// receive timeout (shared with `MNLSocket`, which hands the descriptor to libmnl).
    static func openConfigured(_ p: NetlinkProtocol, netns: String?, receiveTimeout: Double) throws(NetlinkError) -> Int32 {
        let fd: Int32
        if let netns { fd = try openInNamespace(netns, p) } else { fd = try open(p) }
        configure(fd, receiveTimeout: receiveTimeout)
        return fd
    }

    private static func open(_ p: NetlinkProtocol) throws(NetlinkError) -> Int32 {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), p.rawValue)
        guard fd >= 0 else { throw NetlinkError(errno: errno, operation: "open netlink socket (\(p))") }
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_nl>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw NetlinkError(errno: e, operation: "bind netlink socket (\(p))")
        }
        return fd
    }

    private static func openInNamespace(_ name: String, _ p: NetlinkProtocol) throws(NetlinkError) -> Int32 {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw NetlinkError(errno: EINVAL, operation: "open network namespace '\(name)'",
                               hint: "give a namespace name as listed by `ip netns list`")
        }
        let nsfd = Glibc.open("/var/run/netns/\(name)", O_RDONLY | O_CLOEXEC)
        guard nsfd >= 0 else {
            throw NetlinkError(errno: errno, operation: "open network namespace /var/run/netns/\(name)",
                               hint: "create it first (`ip netns add \(name)`)")
        }
        defer { close(nsfd) }
        let result = ThreadResult()
        // setns(CLONE_NEWNET) changes only the calling thread: do it on a thread that exists just for this.
        let thread = Thread {
            if cnf_setns_net(nsfd) != 0 {
                result.set(.failure(NetlinkError(errno: errno, operation: "enter network namespace \(name)")))
            } else {
                do throws(NetlinkError) { result.set(.success(try NetlinkSocket.open(p))) }
                catch { result.set(.failure(error)) }
            }
            result.done.signal()
        }
        thread.start()
        result.done.wait()
        return try result.get()
    }

    private static func configure(_ fd: Int32, receiveTimeout: Double) {
        var one: Int32 = 1
        // Errors carry no copy of our request (acks for a 10k-element batch stay small) but do carry the
        // kernel's explanation.
        _ = setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, socklen_t(4))
        _ = setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, socklen_t(4))
        var size: Int32 = 8 << 20
        // FORCE works as root and lifts rmem_max; fall back to the capped variant otherwise.
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(4)) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(4))
        }
        if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, socklen_t(4)) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(4))
        }
        var tv = timeval(tv_sec: Int(receiveTimeout), tv_usec: Int((receiveTimeout - receiveTimeout.rounded(.down)) * 1e6))
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    public func send(_ datagram: [UInt8]) throws(NetlinkError) {
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        while true {
            let n = datagram.withUnsafeBytes { raw in
                withUnsafePointer(to: &kernel) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                    }
                }
            }
            if n >= 0 { return }
            if errno == EINTR { continue }
            throw NetlinkError(errno: errno, operation: "send netlink message (\(datagram.count) bytes)")
        }
    }

    public func receive() throws(NetlinkError) -> [UInt8] {
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_TRUNC)) }
            if n >= 0 {
                guard n <= buffer.count else {
                    throw NetlinkError(errno: EMSGSIZE, operation: "receive netlink reply (\(n) bytes)",
                                       hint: "reply larger than the 1 MiB receive buffer")
                }
                return Array(buffer[0..<n])
            }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK {
                throw NetlinkError(errno: ETIMEDOUT, operation: "wait for netlink reply")
            }
            throw NetlinkError(errno: errno, operation: "receive netlink reply")
        }
    }
}

/// Hands the result of the namespace thread back; the semaphore orders the write before the read.
private final class ThreadResult: @unchecked Sendable {
    let done = DispatchSemaphore(value: 0)
    private var value: Result<Int32, NetlinkError> = .failure(NetlinkError(errno: EINVAL, operation: "open socket in namespace"))
    func set(_ v: Result<Int32, NetlinkError>) { value = v }
    func get() throws(NetlinkError) -> Int32 { try value.get() }
}

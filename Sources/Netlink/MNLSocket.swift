#if canImport(Glibc)
import Glibc
#endif
import CNetfilter

/// A libmnl socket: the transport of nf_tables batches and dumps (`NFTablesClient`).
///
/// Opened like `NetlinkSocket` (same namespace handling, buffers, capped and extended acks, receive
/// timeout), then handed to libmnl, which owns the descriptor from there on: sends are
/// `mnl_socket_sendto`, receives `mnl_socket_recvfrom` (one datagram each).
public final class MNLSocket: NetlinkTransport {
    private let socket: OpaquePointer
    private var buffer: [UInt8]

    public init(_ netlinkProtocol: NetlinkProtocol, netns: String? = nil, receiveTimeout: Double = 5) throws(NetlinkError) {
        let fd = try NetlinkSocket.openConfigured(netlinkProtocol, netns: netns, receiveTimeout: receiveTimeout)
        guard let socket = mnl_socket_fdopen(fd) else {
            let e = errno
            close(fd)
            throw NetlinkError(errno: e, operation: "hand the netlink socket (\(netlinkProtocol)) to libmnl")
        }
        self.socket = socket
        buffer = [UInt8](repeating: 0, count: 1 << 20)
    }

    deinit { mnl_socket_close(socket) }

    public func send(_ datagram: [UInt8]) throws(NetlinkError) {
        while true {
            let n = datagram.withUnsafeBytes { mnl_socket_sendto(socket, $0.baseAddress, $0.count) }
            if n >= 0 { return }
            if errno == EINTR { continue }
            throw NetlinkError(errno: errno, operation: "send netlink message (\(datagram.count) bytes) with libmnl")
        }
    }

    public func receive() throws(NetlinkError) -> [UInt8] {
        while true {
            let n = buffer.withUnsafeMutableBytes { mnl_socket_recvfrom(socket, $0.baseAddress, $0.count) }
            if n >= 0 { return Array(buffer[0..<n]) }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: throw NetlinkError(errno: ETIMEDOUT, operation: "wait for netlink reply")
            case ENOSPC: throw NetlinkError(errno: EMSGSIZE, operation: "receive netlink reply",
                                            hint: "reply larger than the 1 MiB receive buffer")
            default: throw NetlinkError(errno: errno, operation: "receive netlink reply with libmnl")
            }
        }
    }
}

import CNetfilter
import Foundation

/// A minimal blocking netlink request/response socket for the WireGuard layer's few messages (link create,
/// up, address, genetlink WireGuard). Every request carries NLM_F_ACK and is read until its ACK, error or
/// NLMSG_DONE; replies with another sequence number are skipped. Reads are bounded in size and time.
///
/// The Netlink layer (Sources/Netlink) owns the general batch machinery; this stays small on purpose so the
/// WireGuard backends work on their own. Not thread-safe: one owner at a time.
final class NetlinkSocket {
    private let fd: Int32
    private var sequence: UInt32
    private let name: String

    /// Largest total answer we read for one request.
    static let maxAnswerBytes = 4 << 20

    init(protocol netlinkProtocol: Int32, name: String) throws(WireGuardError) {
        self.name = name
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), netlinkProtocol)
        guard fd >= 0 else { throw .netlink(operation: "socket(\(name))", errno: errno) }
        var local = sockaddr_nl()
        local.nl_family = sa_family_t(AF_NETLINK)
        let bound = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_nl>.size)) }
        }
        guard bound == 0 else {
            let code = errno
            close(fd)
            throw .netlink(operation: "bind(\(name))", errno: code)
        }
        var limit = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        var strict: Int32 = 1
        setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &strict, socklen_t(MemoryLayout<Int32>.size))
        self.fd = fd
        sequence = UInt32.random(in: 1...0x7fff_ffff)
    }

    deinit { close(fd) }

    func nextSequence() -> UInt32 {
        sequence &+= 1
        return sequence
    }

    /// Sends one message (built with `nextSequence()`), returns the payloads (after struct nlmsghdr) of the
    /// replies to it, and throws the kernel's errno when it answered with an error.
    func request(_ operation: String, _ message: [UInt8]) throws(WireGuardError) -> [ArraySlice<UInt8>] {
        guard message.count >= NetlinkMessage.headerLength else { throw .malformedNetlink(detail: "short request") }
        let expected = UInt32(message[8]) | UInt32(message[9]) << 8 | UInt32(message[10]) << 16 | UInt32(message[11]) << 24
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        let sent = message.withUnsafeBytes { raw in
            withUnsafePointer(to: &kernel) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                }
            }
        }
        guard sent == message.count else { throw .netlink(operation: "\(operation): send", errno: errno) }

        var replies: [ArraySlice<UInt8>] = []
        var total = 0
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_TRUNC)) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .netlink(operation: "\(operation): receive", errno: errno)
            }
            guard count <= buffer.count else { throw .malformedNetlink(detail: "\(operation): reply truncated") }
            total += count
            guard total <= NetlinkSocket.maxAnswerBytes else {
                throw .malformedNetlink(detail: "\(operation): answer over \(NetlinkSocket.maxAnswerBytes) bytes")
            }
            var offset = 0
            while count - offset >= NetlinkMessage.headerLength {
                let header = Attribute(type: 0, payload: buffer[offset..<(offset + 16)])
                let length = Int(header.u32 ?? 0)
                guard length >= NetlinkMessage.headerLength, length <= count - offset else {
                    throw .malformedNetlink(detail: "\(operation): message length \(length)")
                }
                let type = Attribute(type: 0, payload: buffer[(offset + 4)..<(offset + 6)]).u16 ?? 0
                let seq = Attribute(type: 0, payload: buffer[(offset + 8)..<(offset + 12)]).u32 ?? 0
                let payload = Array(buffer[(offset + 16)..<(offset + length)])[...]
                offset += length + NetlinkMessage.padding(length)
                guard seq == expected else { continue }
                switch Int32(type) {
                case NLMSG_ERROR, NLMSG_DONE:
                    // struct nlmsgerr / the DONE payload both start with an int error (0 = ack).
                    let code = Int32(bitPattern: Attribute(type: 0, payload: payload).u32 ?? 0)
                    if code != 0 { throw .netlink(operation: operation, errno: -code) }
                    return replies
                case NLMSG_NOOP:
                    continue
                default:
                    replies.append(payload)
                    guard replies.count <= 65536 else { throw .malformedNetlink(detail: "\(operation): too many replies") }
                }
            }
        }
    }
}

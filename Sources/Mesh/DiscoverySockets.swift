import CNetfilter
import Foundation
import Glibc
import Model

/// Why discovery could not start. Each case names the uplink or address and the fix.
public enum DiscoveryError: Error, Hashable, CustomStringConvertible {
    case socket(operation: String, interface: String?, errno: Int32)

    public var description: String {
        switch self {
        case .socket(let operation, let interface, let code):
            "discovery \(operation)\(interface.map { " on \($0)" } ?? "") failed: \(String(cString: strerror(code)))"
                + (code == EADDRINUSE ? "; is another patronus-router running here?" : "")
        }
    }
}

/// The UDP sockets of discovery: one per uplink that exists, bound to that device and joined to the group
/// on it only; one socket on the group port for unicast traffic (`--peer`, relays, and what arrives through
/// the tunnels); and one send-only socket for announcements through the tunnels, each datagram pinned to its
/// path by the path's mark. Non-blocking; the owner polls `descriptors`. An uplink that does not exist (not
/// plugged in yet) or cannot be set up is skipped: `rebind` opens the uplink sockets again once the interfaces
/// change (the membership is per interface index).
final class DiscoverySockets {
    struct Uplink {
        let name: String
        let fd: Int32
    }

    private(set) var names: [String]
    private(set) var uplinks: [Uplink] = []
    let unicast: Int32
    /// Send-only: SO_MARK is set before each datagram (one I/O thread sends, so no two marks interleave).
    let tunnel: Int32
    let group: SocketAddress4
    let ttl: UInt8

    /// Opens the unicast socket; throws when it cannot be opened (e.g. the port is in use). The uplink
    /// sockets are opened by `rebind`.
    init(uplinks names: [String], group: SocketAddress4, ttl: UInt8) throws(DiscoveryError) {
        self.names = names
        self.group = group
        self.ttl = ttl
        unicast = try Self.openSocket(address: nil, port: group.port, device: nil)
        var all: Int32 = 0
        do throws(DiscoveryError) {
            try Self.set(unicast, Int32(IPPROTO_IP), IP_MULTICAST_ALL, &all, "IP_MULTICAST_ALL", nil)
        } catch {
            close(unicast)
            throw error
        }
        tunnel = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard tunnel >= 0 else {
            let code = errno
            close(unicast)
            throw DiscoveryError.socket(operation: "socket", interface: nil, errno: code)
        }
    }

    deinit {
        for uplink in uplinks { close(uplink.fd) }
        close(unicast)
        close(tunnel)
    }

    /// Sends one datagram through the path that `mark` selects (the path's routing table leads into its
    /// tunnel); returns errno on failure. SO_MARK needs CAP_NET_ADMIN, which the daemon has.
    func send(_ bytes: [UInt8], to destination: SocketAddress4, mark: UInt32) -> Int32? {
        var value = mark
        guard setsockopt(tunnel, SOL_SOCKET, SO_MARK, &value, socklen_t(MemoryLayout<UInt32>.size)) == 0 else { return errno }
        return send(bytes, from: tunnel, to: destination)
    }

    /// Closes the uplink sockets and opens one for every uplink that exists now (of `names`, which replace
    /// the uplinks when given). `skipped` hears of each uplink left out: nil error when the interface does
    /// not exist.
    func rebind(_ replacing: [String]? = nil, skipped: (String, DiscoveryError?) -> Void) {
        if let replacing { names = replacing }
        for uplink in uplinks { close(uplink.fd) }
        uplinks = []
        for name in names {
            let index = if_nametoindex(name)
            guard index != 0 else {
                skipped(name, nil)
                continue
            }
            do throws(DiscoveryError) {
                uplinks.append(Uplink(name: name, fd: try Self.openUplinkSocket(name, index: index, group: group, ttl: ttl)))
            } catch {
                skipped(name, error)
            }
        }
    }

    private static func openUplinkSocket(_ name: String, index: UInt32, group: SocketAddress4,
                                         ttl: UInt8) throws(DiscoveryError) -> Int32 {
        // Bound to the group address: it receives only what is sent to the group; unicast (peers, relays,
        // tunnels) goes to the unicast socket, so we know which is which. Linux sends from the device's own
        // address when a socket is bound to a multicast one.
        let fd = try openSocket(address: group.address, port: group.port, device: name)
        do throws(DiscoveryError) {
            // ip_mreqn with the ifindex: joining on INADDR_ANY needs a multicast or default route, and
            // would pick one interface for all uplinks.
            var membership = ip_mreqn()
            membership.imr_multiaddr.s_addr = group.address.value.bigEndian
            membership.imr_ifindex = Int32(bitPattern: index)
            try set(fd, Int32(IPPROTO_IP), IP_ADD_MEMBERSHIP, &membership, "IP_ADD_MEMBERSHIP", name)
            try set(fd, Int32(IPPROTO_IP), IP_MULTICAST_IF, &membership, "IP_MULTICAST_IF", name)
            var hops = Int32(ttl)
            try set(fd, Int32(IPPROTO_IP), IP_MULTICAST_TTL, &hops, "IP_MULTICAST_TTL", name)
            // Only our own memberships: by default Linux hands a socket every group any socket joined.
            var all: Int32 = 0
            try set(fd, Int32(IPPROTO_IP), IP_MULTICAST_ALL, &all, "IP_MULTICAST_ALL", name)
            return fd
        } catch {
            close(fd)
            throw error
        }
    }

    var descriptors: [Int32] { uplinks.map(\.fd) + [unicast] }

    private static func openSocket(address bindAddress: IPv4Address?, port: UInt16, device: String?) throws(DiscoveryError) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .socket(operation: "socket", interface: device, errno: errno) }
        do throws(DiscoveryError) {
            var one: Int32 = 1
            try set(fd, SOL_SOCKET, SO_REUSEADDR, &one, "SO_REUSEADDR", device)
            if let device {
                var name = Array(device.utf8) + [0]
                guard setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, &name, socklen_t(name.count)) == 0 else {
                    throw DiscoveryError.socket(operation: "SO_BINDTODEVICE", interface: device, errno: errno)
                }
            }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr.s_addr = (bindAddress?.value ?? 0).bigEndian
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0 else { throw DiscoveryError.socket(operation: "bind port \(port)", interface: device, errno: errno) }
            return fd
        } catch {
            close(fd)
            throw error
        }
    }

    private static func set<T: BitwiseCopyable>(_ fd: Int32, _ level: Int32, _ option: Int32, _ value: inout T,
                                                _ name: String, _ interface: String?) throws(DiscoveryError) {
        let result = withUnsafeBytes(of: &value) { setsockopt(fd, level, option, $0.baseAddress, socklen_t($0.count)) }
        guard result == 0 else {
            throw .socket(operation: name, interface: interface, errno: errno)
        }
    }

    /// Sends one datagram; returns errno on failure (a down uplink is normal, not fatal).
    func send(_ bytes: [UInt8], from fd: Int32, to destination: SocketAddress4) -> Int32? {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = destination.port.bigEndian
        address.sin_addr.s_addr = destination.address.value.bigEndian
        let sent = bytes.withUnsafeBytes { raw in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL), $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        return sent == bytes.count ? nil : errno
    }

    /// Receives one datagram without blocking. `size` is the datagram's real size (MSG_TRUNC), which may
    /// exceed `buffer.count`: the caller drops those as oversized without reading them.
    func receive(from fd: Int32, into buffer: inout [UInt8]) -> (size: Int, source: SocketAddress4)? {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let size = buffer.withUnsafeMutableBytes { raw in
            withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(fd, raw.baseAddress, raw.count, Int32(MSG_TRUNC) | Int32(MSG_DONTWAIT), $0, &length)
                }
            }
        }
        guard size >= 0 else { return nil }
        let source = SocketAddress4(IPv4Address(UInt32(bigEndian: address.sin_addr.s_addr)),
                                    port: UInt16(bigEndian: address.sin_port))
        return (size, source)
    }
}

import CNetfilter
import Glibc

/// An AF_PACKET socket bound to one interface: every frame that arrives on it, whatever its destination
/// MAC, and nothing it sends itself (PACKET_IGNORE_OUTGOING, Linux >= 4.20; without it the emulator would
/// read back its own transmissions and loop them).
enum PacketSocket {
    /// Opens the socket inside `namespace` for `interface`. The receive buffer is forced to `receiveBuffer`
    /// bytes so a burst (a TCP window arriving at once) waits in the kernel instead of being dropped there.
    static func open(interface: String, in namespace: NetworkNamespace, receiveBuffer: Int32 = 4 << 20) throws -> Int32 {
        try namespace.perform {
            let index = if_nametoindex(interface)
            guard index != 0 else {
                throw LabError.systemCall("if_nametoindex \(interface) in \(namespace.name)", errno: errno)
            }
            // Protocol 0 receives nothing until bind() names the interface, so no frame of another
            // interface can slip in between socket() and bind().
            let fd = socket(AF_PACKET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw LabError.systemCall("socket(AF_PACKET)", errno: errno) }
            do {
                var one: Int32 = 1
                try setOption(fd, Int32(SOL_PACKET), PACKET_IGNORE_OUTGOING, &one, "PACKET_IGNORE_OUTGOING")
                var size = receiveBuffer
                if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
                    try setOption(fd, SOL_SOCKET, SO_RCVBUF, &size, "SO_RCVBUF")
                }
                var address = sockaddr_ll()
                address.sll_family = UInt16(AF_PACKET)
                address.sll_protocol = UInt16(ETH_P_ALL).bigEndian
                address.sll_ifindex = Int32(index)
                let rc = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_ll>.size))
                    }
                }
                guard rc == 0 else { throw LabError.systemCall("bind AF_PACKET to \(interface)", errno: errno) }
                return fd
            } catch {
                close(fd)
                throw error
            }
        }
    }

    private static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: inout Int32, _ label: String) throws {
        guard setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw LabError.systemCall("setsockopt \(label)", errno: errno)
        }
    }
}

/// Offloads that a userspace bridge cannot live with, switched off through SIOCETHTOOL.
///
/// Why: with tx checksum offload a veth hands the peer frames whose L4 checksum is not filled in
/// (CHECKSUM_PARTIAL); read by AF_PACKET and re-sent, they reach the receiver with a bad checksum. With
/// TSO/GSO the stack hands over 64 KB "frames" that cannot be re-sent on a 1500-byte link. GRO on the
/// reading side would merge frames again.
public enum Offloads {
    /// Turns tx checksumming, scatter-gather-dependent TSO, GSO and GRO off on `interface` in `namespace`.
    public static func disable(on interface: String, in namespace: NetworkNamespace) throws {
        try namespace.perform {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw LabError.systemCall("socket", errno: errno) }
            defer { close(fd) }
            // TSO before tx checksumming: the kernel refuses neither order, but TSO depends on it.
            let commands: [(UInt32, String)] = [
                (UInt32(ETHTOOL_STSO), "tso"), (UInt32(ETHTOOL_SGSO), "gso"),
                (UInt32(ETHTOOL_SGRO), "gro"), (UInt32(ETHTOOL_STXCSUM), "tx-checksumming"),
            ]
            for (command, feature) in commands {
                var value: UInt32 = 0
                if cnf_ethtool_value(fd, interface, command, &value) != 0 && errno != EOPNOTSUPP {
                    throw LabError.systemCall("SIOCETHTOOL \(feature) off on \(interface) in \(namespace.name)", errno: errno)
                }
            }
        }
    }

    /// Whether tx checksumming is on (for tests).
    public static func txChecksumming(on interface: String, in namespace: NetworkNamespace) throws -> Bool {
        try namespace.perform {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw LabError.systemCall("socket", errno: errno) }
            defer { close(fd) }
            var value: UInt32 = 0
            guard cnf_ethtool_value(fd, interface, UInt32(ETHTOOL_GTXCSUM), &value) == 0 else {
                throw LabError.systemCall("SIOCETHTOOL get tx-checksumming on \(interface)", errno: errno)
            }
            return value != 0
        }
    }
}

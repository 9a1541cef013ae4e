import Foundation
import Glibc
import Model

/// The IPv4 addresses of local interfaces, read with getifaddrs(3) (no subprocess, no netlink state):
/// what `TunnelPlanner.localEndpoints` needs to announce each uplink. Call it at start and when the
/// steering layer reports an address change; it costs one getifaddrs call.
public enum UplinkAddresses {
    /// The first IPv4 address of each named interface that has one (link-local 169.254/16 is skipped: it
    /// is not reachable from other sites).
    public static func current(for interfaces: [String]) -> [String: IPv4Address] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [:] }
        defer { freeifaddrs(list) }
        let wanted = Set(interfaces)
        var result: [String: IPv4Address] = [:]
        var entry = list
        while let current = entry {
            defer { entry = current.pointee.ifa_next }
            guard let raw = current.pointee.ifa_addr, raw.pointee.sa_family == sa_family_t(AF_INET) else { continue }
            let name = String(cString: current.pointee.ifa_name)
            guard wanted.contains(name), result[name] == nil else { continue }
            let address = raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                IPv4Address(UInt32(bigEndian: $0.pointee.sin_addr.s_addr))
            }
            guard !IPv4Prefix(IPv4Address(169, 254, 0, 0), length: 16).contains(address) else { continue }
            result[name] = address
        }
        return result
    }
}

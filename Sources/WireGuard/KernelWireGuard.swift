import CNetfilter
import Foundation

/// WireGuard in the kernel: links of kind "wireguard" over rtnetlink, configuration over the "wireguard"
/// generic netlink family (WG_CMD_SET_DEVICE / WG_CMD_GET_DEVICE), exactly what `ip link` and `wg` send.
///
/// Creating it probes the kernel: it fails with `.kernelUnsupported` when the family does not exist.
/// Each call opens a netlink socket, sends one or a few messages and waits for their acks.
public struct KernelWireGuard: WireGuardBackend {
    public var kind: WireGuardBackendKind { .kernel }
    /// The generic netlink family id the kernel assigned to "wireguard".
    public let family: UInt16
    private let links: any LinkControl

    public init(links: any LinkControl = RouteNetlinkLinks()) throws(WireGuardError) {
        family = try KernelWireGuard.resolveFamily()
        self.links = links
    }

    static func resolveFamily() throws(WireGuardError) -> UInt16 {
        let socket = try NetlinkSocket(protocol: NETLINK_GENERIC, name: "generic netlink")
        let replies: [ArraySlice<UInt8>]
        do {
            replies = try socket.request("resolve family wireguard", WireGuardNetlink.getFamily(sequence: socket.nextSequence()))
        } catch .netlink(_, let code) where code == ENOENT {
            throw .kernelUnsupported
        }
        return try familyID(from: replies)
    }

    static func familyID(from replies: [ArraySlice<UInt8>]) throws(WireGuardError) -> UInt16 {
        for reply in replies where reply.count >= 4 {
            for attribute in try Attribute.parse(reply.dropFirst(4)) where attribute.type == UInt16(CTRL_ATTR_FAMILY_ID) {
                if let id = attribute.u16 { return id }
            }
        }
        throw .malformedNetlink(detail: "family reply without CTRL_ATTR_FAMILY_ID")
    }

    public func createInterface(named name: String) async throws(WireGuardError) {
        try validateInterfaceName(name)
        let socket = try NetlinkSocket(protocol: NETLINK_ROUTE, name: "rtnetlink")
        do {
            _ = try socket.request("create wireguard link \(name)",
                                   RouteNetlink.createWireGuardLink(name: name, sequence: socket.nextSequence()))
        } catch .netlink(_, let code) where code == EEXIST {
            // Adopt it only if it really is a WireGuard link: GET_DEVICE fails on anything else.
            _ = try await state(of: name)
        } catch .netlink(_, let code) where code == EOPNOTSUPP {
            throw .kernelUnsupported
        }
    }

    public func configure(_ name: String, _ update: DeviceUpdate) async throws(WireGuardError) {
        let socket = try NetlinkSocket(protocol: NETLINK_GENERIC, name: "generic netlink")
        let first = socket.nextSequence()
        let messages = WireGuardNetlink.setDevice(family: family, interface: name, update: update, firstSequence: first)
        for _ in 1..<max(messages.count, 1) { _ = socket.nextSequence() }
        for message in messages {
            do {
                _ = try socket.request("configure \(name)", message)
            } catch .netlink(_, let code) where code == ENODEV {
                throw .noSuchInterface(name)
            } catch .netlink(_, let code) {
                throw .rejected(interface: name, ConfigurationErrno(code: Int64(code)))
            }
        }
    }

    public func bringUp(_ name: String, addresses: [InterfaceAddress]) async throws(WireGuardError) {
        for address in addresses { try links.addAddress(address, to: name) }
        try links.setUp(name)
    }

    public func state(of name: String) async throws(WireGuardError) -> InterfaceState {
        let socket = try NetlinkSocket(protocol: NETLINK_GENERIC, name: "generic netlink")
        do {
            let replies = try socket.request("read \(name)",
                                             WireGuardNetlink.getDevice(family: family, interface: name,
                                                                        sequence: socket.nextSequence()))
            return try WireGuardNetlink.parseDevice(replies)
        } catch .netlink(_, let code) where code == ENODEV || code == EOPNOTSUPP {
            throw .noSuchInterface(name)
        }
    }

    public func deleteInterface(named name: String) async throws(WireGuardError) {
        let socket = try NetlinkSocket(protocol: NETLINK_ROUTE, name: "rtnetlink")
        do {
            _ = try socket.request("delete link \(name)", RouteNetlink.deleteLink(name: name, sequence: socket.nextSequence()))
        } catch .netlink(_, let code) where code == ENODEV {
            return
        }
    }
}

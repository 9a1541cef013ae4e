import CNetfilter
import Foundation
import Netlink

/// WireGuard in the kernel: links of kind "wireguard" over rtnetlink, configuration over the "wireguard"
/// generic netlink family (WG_CMD_SET_DEVICE / WG_CMD_GET_DEVICE), exactly what `ip link` and `wg` send.
///
/// Creating it probes the kernel: it fails with `.kernelUnsupported` when the family does not exist.
/// Each call opens a netlink socket, sends one or a few messages and waits for their acks.
public struct KernelWireGuard: LinkBackedBackend {
    public var kind: WireGuardBackendKind { .kernel }
    /// The generic netlink family id the kernel assigned to "wireguard".
    public let family: UInt16
    let links: any LinkControl

    public init(links: any LinkControl = RouteNetlinkLinks()) throws(WireGuardError) {
        family = try KernelWireGuard.resolveFamily()
        self.links = links
    }

    static func resolveFamily() throws(WireGuardError) -> UInt16 {
        do {
            let connection = try NetlinkConnection(.generic)
            let replies = try connection.get(NetlinkRequest(WireGuardNetlink.getFamily(), "look up generic netlink family wireguard"))
            return try WireGuardNetlink.familyID(from: replies)
        } catch let error as NetlinkError where error.errno == ENOENT {
            throw .kernelUnsupported
        } catch let error as NetlinkError {
            throw .netlink(error)
        } catch let error as WireGuardError {
            throw error
        } catch {
            throw .malformedNetlink(detail: "\(error)")
        }
    }

    public func createInterface(named name: String) async throws(WireGuardError) {
        try validateInterfaceName(name)
        do {
            try NetlinkConnection(.route).perform([NetlinkRequest(WireGuardLinks.create(name: name), "create wireguard link \(name)")])
        } catch where error.errno == EEXIST {
            // Adopt it only if it really is a WireGuard link: GET_DEVICE fails on anything else.
            _ = try await state(of: name)
        } catch where error.errno == EOPNOTSUPP {
            throw .kernelUnsupported
        } catch {
            throw .netlink(error)
        }
    }

    public func configure(_ name: String, _ update: DeviceUpdate) async throws(WireGuardError) {
        let messages = WireGuardNetlink.setDevice(family: family, interface: name, update: update)
        do {
            // One datagram, every message acked: the kernel applies them in order.
            try NetlinkConnection(.generic).perform(messages.map { NetlinkRequest($0, "configure wireguard \(name)") })
        } catch where error.errno == ENODEV {
            throw .noSuchInterface(name)
        } catch {
            throw .rejected(interface: name, ConfigurationErrno(code: Int64(error.errno)))
        }
    }

    public func state(of name: String) async throws(WireGuardError) -> InterfaceState {
        let replies: [NetlinkMessage]
        do {
            replies = try NetlinkConnection(.generic).dump(
                NetlinkRequest(WireGuardNetlink.getDevice(family: family, interface: name), "read wireguard \(name)"))
        } catch where error.errno == ENODEV || error.errno == EOPNOTSUPP {
            throw .noSuchInterface(name)
        } catch {
            throw .netlink(error)
        }
        return try WireGuardNetlink.parseDevice(replies)
    }

    /// Links with the prefix that answer WG_CMD_GET_DEVICE (i.e. are WireGuard links).
    public func interfaces(withPrefix prefix: String) async throws(WireGuardError) -> [String] {
        let links: [Link]
        do {
            links = try RouteNetlinkClient().links()
        } catch {
            throw .netlink(error)
        }
        var result: [String] = []
        for link in links where link.name.hasPrefix(prefix) {
            if (try? await state(of: link.name)) != nil { result.append(link.name) }
        }
        return result.sorted()
    }

    public func deleteInterface(named name: String) async throws(WireGuardError) {
        try WireGuardLinks.deleteLink(named: name)
    }
}

import CNetfilter
import Foundation
import Netlink
import Model

/// An address to put on a tunnel interface, host bits kept ("10.99.3.1/32"). By name, unlike the Netlink
/// layer's `InterfaceAddress` (by kernel index): the backends resolve the index when they apply it.
public struct TunnelAddress: Hashable, Sendable, CustomStringConvertible {
    public var address: IPv4Address
    public var prefixLength: UInt8

    public init(_ address: IPv4Address, prefixLength: UInt8) {
        precondition(prefixLength <= 32, "prefix length \(prefixLength) is over 32")
        self.address = address
        self.prefixLength = prefixLength
    }

    public var description: String { "\(address)/\(prefixLength)" }
}

/// One way of running WireGuard interfaces: the kernel module or wireguard-go. Both show up in `wg show`.
///
/// Calls for different interfaces may run concurrently; calls for one interface should be serialized by the
/// caller (the tunnel reconciler does). Each call costs a few syscalls, except `createInterface` on the
/// userspace backend, which starts a process and waits (typically 20-100 ms) for its UAPI socket.
public protocol WireGuardBackend: Sendable {
    var kind: WireGuardBackendKind { get }

    /// Creates the interface, or adopts it when one of that name already runs (e.g. left by a crash).
    func createInterface(named name: String) async throws(WireGuardError)

    /// Applies a change (keys, port, mark, peers) to an existing interface.
    func configure(_ name: String, _ update: DeviceUpdate) async throws(WireGuardError)

    /// Brings the interface up and gives it these addresses (existing equal addresses are kept).
    func bringUp(_ name: String, addresses: [TunnelAddress]) async throws(WireGuardError)

    /// Takes addresses off the interface (absent ones are ignored).
    func removeAddresses(_ addresses: [TunnelAddress], from name: String) async throws(WireGuardError)

    /// Reads configuration, latest handshakes and transfer counters.
    func state(of name: String) async throws(WireGuardError) -> InterfaceState

    /// Removes the interface (and stops its process); no error when it does not exist.
    func deleteInterface(named name: String) async throws(WireGuardError)

    /// The WireGuard interfaces in this network namespace whose names start with `prefix` (ours, or left by
    /// an earlier run), for cleaning up what no plan wants any more.
    func interfaces(withPrefix prefix: String) async throws(WireGuardError) -> [String]
}

public enum WireGuardBackendKind: String, Sendable, CaseIterable {
    case kernel
    case userspace
}

/// The `--wireguard kernel|userspace|auto` flag.
public enum WireGuardBackendChoice: String, Sendable, CaseIterable, CustomStringConvertible {
    case kernel
    case userspace
    case auto

    public var description: String { rawValue }
}

/// Link-level operations both backends need: bring a link up and put addresses on it. The default
/// implementation speaks rtnetlink itself; the daemon may pass the Netlink layer's instead.
public protocol LinkControl: Sendable {
    func setUp(_ interface: String) throws(WireGuardError)
    func addAddress(_ address: TunnelAddress, to interface: String) throws(WireGuardError)
    /// No error when the address is not there.
    func removeAddress(_ address: TunnelAddress, from interface: String) throws(WireGuardError)
}

/// `LinkControl` over the Netlink layer's rtnetlink client (RTM_NEWLINK IFF_UP, RTM_NEWADDR, RTM_DELADDR).
/// Opens a socket per call (in the calling thread's namespace): these run a few times per interface lifetime.
public struct RouteNetlinkLinks: LinkControl {
    public init() {}

    public func setUp(_ interface: String) throws(WireGuardError) {
        do {
            let client = try RouteNetlinkClient()
            try client.setLink(index: try client.link(named: interface).index, up: true)
        } catch {
            throw error.errno == ENODEV ? .noSuchInterface(interface) : .netlink(error)
        }
    }

    public func addAddress(_ address: TunnelAddress, to interface: String) throws(WireGuardError) {
        do {
            let client = try RouteNetlinkClient()
            try client.addAddress(try Self.netlinkAddress(address, on: client.link(named: interface).index))
        } catch where error.errno == EEXIST {
            return  // already there: adding is idempotent
        } catch {
            throw error.errno == ENODEV ? .noSuchInterface(interface) : .netlink(error)
        }
    }

    public func removeAddress(_ address: TunnelAddress, from interface: String) throws(WireGuardError) {
        do {
            let client = try RouteNetlinkClient()
            let message = RouteNetlink.addressMessage(try Self.netlinkAddress(address, on: client.link(named: interface).index),
                                                      delete: true)
            try client.connection.perform([NetlinkRequest(message, "remove address \(address) from \(interface)")])
        } catch where error.errno == EADDRNOTAVAIL {
            return
        } catch {
            throw error.errno == ENODEV ? .noSuchInterface(interface) : .netlink(error)
        }
    }

    static func netlinkAddress(_ address: TunnelAddress, on index: Int32) -> InterfaceAddress {
        InterfaceAddress(interfaceIndex: index, address: address.address.value, prefixLength: address.prefixLength)
    }
}

/// The link half of a backend: both backends do addresses and link state the same way.
protocol LinkBackedBackend: WireGuardBackend {
    var links: any LinkControl { get }
}

extension LinkBackedBackend {
    public func bringUp(_ name: String, addresses: [TunnelAddress]) async throws(WireGuardError) {
        for address in addresses { try links.addAddress(address, to: name) }
        try links.setUp(name)
    }

    public func removeAddresses(_ addresses: [TunnelAddress], from name: String) async throws(WireGuardError) {
        for address in addresses { try links.removeAddress(address, from: name) }
    }
}

extension WireGuardBackend {
    /// Creates, configures (replacing everything) and brings up an interface in one call.
    public func start(_ name: String, configuration: InterfaceConfiguration,
                      addresses: [TunnelAddress]) async throws(WireGuardError) {
        try await createInterface(named: name)
        try await configure(name, DeviceUpdate(replacingWith: configuration))
        try await bringUp(name, addresses: addresses)
    }
}

func validateInterfaceName(_ name: String) throws(WireGuardError) {
    guard Uplink.isValidInterfaceName(name) else { throw .invalidInterfaceName(name) }
}

/// Picks the backend for `--wireguard`.
public enum WireGuardBackendSelector {
    /// `auto` probes the kernel for the "wireguard" generic netlink family (which also autoloads the module)
    /// and falls back to wireguard-go; `kernel` fails with `.kernelUnsupported` when the probe fails.
    public static func make(_ choice: WireGuardBackendChoice, links: any LinkControl = RouteNetlinkLinks(),
                            wireguardGo: String = UserspaceWireGuard.defaultExecutable)
        throws(WireGuardError) -> any WireGuardBackend
    {
        switch choice {
        case .userspace:
            return UserspaceWireGuard(executable: wireguardGo, links: links)
        case .kernel:
            return try KernelWireGuard(links: links)
        case .auto:
            if let kernel = try? KernelWireGuard(links: links) { return kernel }
            return UserspaceWireGuard(executable: wireguardGo, links: links)
        }
    }
}

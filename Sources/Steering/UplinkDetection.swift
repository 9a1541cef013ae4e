import Model
import Netlink

/// What the router needs to know about this machine's interfaces at start: which are uplinks and their
/// IPv4 addresses (the endpoints we announce). Read over rtnetlink, never by running `ip`.
public struct InterfaceInventory: Sendable {
    public struct Interface: Hashable, Sendable {
        public var name: String
        public var index: Int32
        public var isUp: Bool
        public var addresses: [IPv4Address]
        public var hasRoute: Bool
    }

    public var interfaces: [Interface]

    public init(interfaces: [Interface]) { self.interfaces = interfaces }

    /// Reads links, addresses and main-table routes of the current network namespace.
    public static func read() throws -> InterfaceInventory {
        let client = try RouteNetlinkClient()
        let addresses = try client.addresses()
        let routes = try client.routes(table: 254)
        return InterfaceInventory(interfaces: try client.links().map { link in
            Interface(name: link.name, index: link.index, isUp: link.isUp,
                      addresses: addresses.filter { $0.interfaceIndex == link.index }.map { IPv4Address($0.address) },
                      hasRoute: routes.contains { $0.outputInterface == link.index })
        })
    }

    /// The first global IPv4 address of each interface (what a remote site can reach).
    public var primaryAddresses: [String: IPv4Address] {
        var out: [String: IPv4Address] = [:]
        for interface in interfaces {
            if let address = interface.addresses.first(where: Self.isGlobal) { out[interface.name] = address }
        }
        return out
    }

    static func isGlobal(_ address: IPv4Address) -> Bool {
        !IPv4Prefix(IPv4Address(127, 0, 0, 0), length: 8).contains(address)
            && !IPv4Prefix(IPv4Address(169, 254, 0, 0), length: 16).contains(address)
            && !Conventions.overlayPool.contains(address)
    }

    /// `--uplink` when given, present or not (one that is absent or has no address yet is used when it
    /// appears), else every interface that is up, has a global address
    /// and a route, and is not one of our tunnels: labelled by its own name.
    public func uplinks(configured: [Uplink], tunnelPrefix: String) throws(UplinkError) -> [Uplink] {
        if !configured.isEmpty { return configured }
        let detected = interfaces.filter {
            $0.name != "lo" && $0.isUp && $0.hasRoute && !$0.name.hasPrefix(tunnelPrefix) && !$0.name.hasPrefix("wg")
                && $0.addresses.contains(where: Self.isGlobal)
        }
        guard !detected.isEmpty else { throw .noneDetected }
        return detected.map { Uplink(interface: $0.name, label: $0.name) }
    }
}

public enum UplinkError: Error, Equatable, CustomStringConvertible {
    case noneDetected

    public var description: String {
        switch self {
        case .noneDetected:
            "no uplink found: no interface is up with a global IPv4 address and a route; name them with --uplink IFACE[=LABEL]"
        }
    }
}

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
        /// A main-table default route leaves by it.
        public var hasDefaultRoute: Bool
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
                      hasDefaultRoute: routes.contains { $0.outputInterface == link.index && UplinkTracker.isMainDefault($0) })
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
    /// appears), else every interface that is an uplink now by `UplinkDetection` (labelled by its own name;
    /// possibly none yet: the `UplinkTracker` adds the ones that qualify later).
    public func uplinks(configured: [Uplink], tunnelPrefix: String) -> [Uplink] {
        if !configured.isEmpty { return configured }
        let rule = UplinkDetection(tunnelPrefix: tunnelPrefix)
        return interfaces.filter {
            rule.qualifies(name: $0.name, isUp: $0.isUp, hasGlobalAddress: $0.addresses.contains(where: Self.isGlobal),
                           hasDefaultRoute: $0.hasDefaultRoute)
        }.prefix(Conventions.uplinkSlots.count).map { Uplink(interface: $0.name, label: $0.name) }
    }
}

/// Which interfaces are uplinks when none is named with `--uplink`: up, with a global IPv4 address and a
/// main-table default route out of it (what DHCP or PPPoE gives an uplink; a LAN interface has neither a
/// default route nor, usually, should it get one), not loopback, not one of our tunnels (nor any `wg*`
/// interface), and with a name that is a valid label (the uplink is labelled by it). Checked at start
/// and, by the `UplinkTracker`, on every change after it: an interface that qualifies later becomes an
/// uplink then, without a restart.
public struct UplinkDetection: Hashable, Sendable {
    public var tunnelPrefix: String

    public init(tunnelPrefix: String) { self.tunnelPrefix = tunnelPrefix }

    public func qualifies(name: String, isUp: Bool, hasGlobalAddress: Bool, hasDefaultRoute: Bool) -> Bool {
        name != "lo" && isUp && hasGlobalAddress && hasDefaultRoute && !name.hasPrefix(tunnelPrefix) && !name.hasPrefix("wg")
            && Uplink(argument: name) != nil
    }
}


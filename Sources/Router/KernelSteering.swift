import Glibc
import Logging
import Model
import Netlink
import Steering

/// The daemon's one owner of the kernel steering state (`Steering` is single-owner, not thread-safe): every
/// plan goes through this actor, so two batches never interleave.
public actor KernelSteering: PlanApplier {
    private let steering: Steering
    private let uplinks: UplinkPinning
    private let logger: Logger

    public init(netns: String? = nil, logger: Logger) throws {
        steering = try Steering(netns: netns)
        uplinks = UplinkPinning(routing: try RouteNetlinkClient(netns: netns))
        self.logger = logger
    }

    public func apply(_ plan: SteeringPlan) async throws {
        let changes = try steering.apply(plan)
        logger.debug("steering applied", metadata: ["changes": "\(changes)"])
    }

    /// Pins each uplink's encrypted tunnel traffic to that uplink (see `UplinkPinning`).
    public func pinUplinks(_ bindings: [UplinkPinning.Binding]) throws {
        try uplinks.apply(bindings)
    }

    /// Removes everything we installed: our table, rules and routes. Idempotent.
    public func removeAll() {
        do { _ = try steering.removeAll() } catch { logger.error("removing steering state: \(error)") }
        do { try uplinks.removeAll() } catch { logger.error("removing uplink rules: \(error)") }
    }

    /// The plan last applied, if any.
    public func currentPlan() -> SteeringPlan? { steering.currentPlan }

    /// Our nft counters (packets/bytes per class and path chain, flows per class), read in one rule dump of
    /// our table, for the metrics endpoint. Empty when the table is not installed.
    public func counters() throws(SteeringError) -> SteeringCounters {
        try steering.counters()
    }
}

/// Keeps WireGuard's encrypted UDP on the uplink its tunnel belongs to. Each tunnel interface sets the
/// socket mark `uplink slot << 24` (mask 0x0f000000); an ip rule at priority 6220 (protocol 78, inside our
/// band 6200-6299) sends that mark to table 6100 + slot, which holds copies of the main table's routes out of
/// that uplink (its connected subnet and, where there is one, its default route). Without it, two uplinks
/// that both reach a remote endpoint would carry each other's tunnels whenever the main table prefers one.
///
/// Rules and routes tagged protocol 78 in that band and those tables are ours: anything else is left alone.
public struct UplinkPinning {
    public static let rulePriority: UInt32 = 6220
    public static let tableBase: UInt32 = 6100
    public static let protocolTag: UInt8 = 78
    public static let markMask: UInt32 = 0x0f00_0000
    static let mainTable: UInt32 = 254

    public struct Binding: Hashable, Sendable {
        public var slot: UInt8
        public var interface: String
        public init(slot: UInt8, interface: String) {
            self.slot = slot
            self.interface = interface
        }
        public var mark: UInt32 { UInt32(slot) << 24 }
        public var table: UInt32 { UplinkPinning.tableBase + UInt32(slot) }
    }

    let routing: RouteNetlinkClient

    /// The rules and routes `bindings` need, given the main table and link indexes now. Pure.
    static func desired(_ bindings: [Binding], links: [Link], mainRoutes: [IPRoute]) -> (rules: [IPRule], routes: [IPRoute]) {
        var rules: [IPRule] = []
        var routes: [IPRoute] = []
        for binding in bindings {
            guard let link = links.first(where: { $0.name == binding.interface }) else { continue }
            rules.append(IPRule(priority: rulePriority, fwmark: binding.mark, fwmask: markMask, table: binding.table,
                                protocolTag: protocolTag))
            for route in mainRoutes where route.table == mainTable && route.outputInterface == link.index {
                routes.append(IPRoute(destination: route.destination, prefixLength: route.prefixLength,
                                      table: binding.table, outputInterface: link.index, gateway: route.gateway,
                                      protocolTag: protocolTag))
            }
        }
        return (rules, routes)
    }

    private func installed() throws -> (rules: [IPRule], routes: [IPRoute]) {
        let range = Self.tableBase + 1...Self.tableBase + 15
        let rules = try routing.rules().filter { $0.protocolTag == Self.protocolTag && $0.priority == Self.rulePriority }
        let routes = try routing.routes().filter { $0.protocolTag == Self.protocolTag && range.contains($0.table) }
        return (rules, routes)
    }

    /// Converges rules and routes to `bindings`: removes what is ours and unwanted, then adds what is
    /// missing. Called at start and whenever an uplink's interface, address, gateway or carrier changes (the
    /// main table's routes out of it change with them); removing first lets a new default route replace the
    /// old one, and a route the kernel already flushed (its address went) is not an error.
    func apply(_ bindings: [Binding]) throws {
        let want = Self.desired(bindings, links: try routing.links(), mainRoutes: try routing.routes(table: Self.mainTable))
        let have = try installed()
        for rule in have.rules where !want.rules.contains(rule) {
            try Self.ignoringAbsent { () throws(NetlinkError) in try routing.deleteRule(rule) }
        }
        for route in have.routes where !want.routes.contains(route) {
            try Self.ignoringAbsent { () throws(NetlinkError) in try routing.route(route, .delete) }
        }
        for route in want.routes where !have.routes.contains(route) { try routing.route(route, .replace) }
        for rule in want.rules where !have.rules.contains(rule) { try routing.addRule(rule) }
    }

    private static func ignoringAbsent(_ body: () throws(NetlinkError) -> Void) throws(NetlinkError) {
        do { try body() } catch where error.errno == ESRCH || error.errno == ENOENT {}
    }

    func removeAll() throws { try apply([]) }
}

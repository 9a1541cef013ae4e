import Model
import Netlink

/// One configured uplink as the kernel shows it now.
public struct UplinkState: Hashable, Sendable, CustomStringConvertible {
    public var uplink: Uplink
    /// The interface index; nil while the interface does not exist (not plugged in yet, or gone).
    public var index: Int32?
    /// Up, with carrier, operationally up (`Link.isRunning`).
    public var running: Bool
    /// The first global IPv4 address on it (what we announce), if any.
    public var address: IPv4Address?
    /// The next hop of the main table's default route out of it, if there is one.
    public var gateway: IPv4Address?
    /// What we announce for it: its address, or, while the same interface has none, the last one it had. A
    /// renumbering removes the old address just before the new one comes; withdrawing the endpoint in
    /// between would tear the tunnels down on both sides. Gone with the interface.
    public var announced: IPv4Address?

    public init(uplink: Uplink, index: Int32? = nil, running: Bool = false, address: IPv4Address? = nil,
                gateway: IPv4Address? = nil, announced: IPv4Address? = nil) {
        self.uplink = uplink
        self.index = index
        self.running = running
        self.address = address
        self.gateway = gateway
        self.announced = announced ?? address
    }

    public var description: String {
        guard index != nil else { return "\(uplink.interface) absent" }
        return "\(uplink.interface) \(running ? "running" : "no carrier")"
            + " address \(address.map { "\($0)" } ?? "none (announcing \(announced.map { "\($0)" } ?? "none"))") gateway \(gateway.map { "\($0)" } ?? "none")"
    }
}

/// What changed on one uplink, and what the daemon has to do about it.
public struct UplinkChange: Hashable, Sendable, CustomStringConvertible {
    public var before: UplinkState
    public var after: UplinkState

    /// The uplink stopped carrying traffic (carrier lost, set down, removed): its paths are down now, no
    /// probe misses to wait for.
    public var stoppedRunning: Bool { before.running && !after.running }
    /// It carries traffic again (carrier back, plugged in and up).
    public var startedRunning: Bool { !before.running && after.running }
    /// The per-uplink routing table must be rewritten (the main table's routes out of it changed with the
    /// address, gateway, interface or carrier).
    public var needsPinning: Bool { before != after }
    /// What we announce for it changed (an address appeared or moved, or the interface went).
    public var endpointChanged: Bool { before.announced != after.announced }
    /// Discovery's socket on it must be opened again (new interface index, new address, or back up).
    public var needsRebind: Bool { before.index != after.index || before.address != after.address || startedRunning }

    public var description: String { "\(before.uplink.interface): \(before) -> \(after)" }
}

/// The configured uplinks' state from rtnetlink: a snapshot (`reset`, at start and after an overrun) and
/// then the kernel's notifications (`apply`), each answered with the uplinks that changed. Pure: no I/O, so
/// every transition is tested without root.
///
/// An uplink is known by its interface name, so one that is absent at start (a USB modem plugged in later)
/// or re-created with a new index is picked up when it appears, and one that disappears is absent again.
/// With `detection` (no `--uplink` given) an interface that qualifies later (`UplinkDetection`: it got an
/// address and a default route) is added as an uplink then, in the next free slot, and reported as a
/// change from absent; one that was added keeps its slot when it goes away (absent, its endpoint withdrawn)
/// and when it comes back. At most `Conventions.uplinkSlots.count` uplinks.
public struct UplinkTracker: Sendable {
    public private(set) var uplinks: [Uplink]
    public private(set) var states: [UplinkState]
    public let detection: UplinkDetection?
    private var links: [Int32: Link] = [:]
    private var addresses: Set<InterfaceAddress> = []
    /// Main-table default routes.
    private var defaults: Set<IPRoute> = []

    public static let mainTable = Conventions.mainTable

    public init(uplinks: [Uplink], detection: UplinkDetection? = nil) {
        self.uplinks = uplinks
        self.detection = detection
        states = uplinks.map { UplinkState(uplink: $0) }
    }

    /// Replaces everything known with a full read of the kernel's state.
    public mutating func reset(links: [Link], addresses: [InterfaceAddress], routes: [IPRoute]) -> [UplinkChange] {
        self.links = Dictionary(links.map { ($0.index, $0) }, uniquingKeysWith: { _, last in last })
        self.addresses = Set(addresses)
        defaults = Set(routes.filter(Self.isMainDefault))
        return recompute()
    }

    /// One notification. `.overrun` changes nothing here: the caller reads everything and calls `reset`.
    public mutating func apply(_ event: RouteEvent) -> [UplinkChange] {
        switch event {
        case .link(let link):
            links[link.index] = link
        case .linkRemoved(let link):
            links[link.index] = nil
            addresses = addresses.filter { $0.interfaceIndex != link.index }
            defaults = defaults.filter { $0.outputInterface != link.index }
        case .address(let address):
            addresses.insert(address)
        case .addressRemoved(let address):
            addresses.remove(address)
        case .route(let route):
            guard Self.isMainDefault(route) else { return [] }
            // A replace keeps one default per (interface, metric) in the kernel; we key on the interface.
            defaults = defaults.filter { $0.outputInterface != route.outputInterface || $0.gateway == route.gateway }
            defaults.insert(route)
        case .routeRemoved(let route):
            guard Self.isMainDefault(route) else { return [] }
            defaults.remove(route)
        case .overrun:
            return []
        }
        return recompute()
    }

    static func isMainDefault(_ route: IPRoute) -> Bool {
        route.table == mainTable && route.prefixLength == 0 && route.destination == 0
    }

    /// Adds, in interface index order, every interface that qualifies as an uplink and is not one yet.
    private mutating func detect() {
        guard let detection else { return }
        let known = Set(uplinks.map(\.interface))
        for link in links.values.sorted(by: { $0.index < $1.index }) where !known.contains(link.name) {
            guard uplinks.count < Conventions.uplinkSlots.count else { return }
            let qualifies = detection.qualifies(
                name: link.name, isUp: link.isUp,
                hasGlobalAddress: addresses.contains { $0.interfaceIndex == link.index && InterfaceInventory.isGlobal(IPv4Address($0.address)) },
                hasDefaultRoute: defaults.contains { $0.outputInterface == link.index })
            guard qualifies else { continue }
            let uplink = Uplink(interface: link.name, label: link.name)
            uplinks.append(uplink)
            states.append(UplinkState(uplink: uplink))
        }
    }

    private mutating func recompute() -> [UplinkChange] {
        detect()
        var changes: [UplinkChange] = []
        for (position, before) in states.enumerated() {
            let link = links.values.first { $0.name == before.uplink.interface }
            var after = UplinkState(uplink: before.uplink)
            if let link {
                after.index = link.index
                after.running = link.isRunning
                after.address = addresses.filter { $0.interfaceIndex == link.index }
                    .map { IPv4Address($0.address) }.sorted { $0.value < $1.value }
                    .first(where: InterfaceInventory.isGlobal)
                after.gateway = defaults.filter { $0.outputInterface == link.index }
                    .compactMap(\.gateway).sorted().first.map { IPv4Address($0) }
                after.announced = after.address ?? (before.index == link.index ? before.announced : nil)
            }
            if after != before {
                states[position] = after
                changes.append(UplinkChange(before: before, after: after))
            }
        }
        return changes
    }

    /// The announced addresses of the uplinks, by interface (what `TunnelPlanner.localEndpoints` takes).
    public var addressesByInterface: [String: IPv4Address] {
        var out: [String: IPv4Address] = [:]
        for state in states { if let address = state.announced { out[state.uplink.interface] = address } }
        return out
    }
}

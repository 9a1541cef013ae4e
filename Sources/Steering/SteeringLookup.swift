import Model
import Netlink

/// Read-only questions to the kernel of one namespace about the steering it does: the installed table
/// (`InstalledSteering`), and how it routes a packet carrying a mark (RTM_GETROUTE, so the real ip rules and
/// tables answer) with our rules the mark takes on the way. Never writes.
public final class SteeringLookup {
    let nftables: NFTablesClient
    let routing: RouteNetlinkClient

    /// Opens netlink sockets in the current namespace (nil) or in /var/run/netns/NAME.
    public init(netns: String?) throws(SteeringError) {
        do {
            nftables = try NFTablesClient(netns: netns)
            routing = try RouteNetlinkClient(netns: netns)
        } catch { throw .kernel(error) }
    }

    /// The shapers installed in this namespace (our htb `62:` at the root of an interface), with their rate
    /// (class `62:1`) and per-band statistics: one qdisc dump, one class dump per shaped interface. Read-only.
    public func shapers() throws(SteeringError) -> [ShaperStatistics] {
        try kernel { () throws(NetlinkError) in
            let names = Dictionary(try routing.links().map { ($0.index, $0.name) }, uniquingKeysWith: { a, _ in a })
            var out: [ShaperStatistics] = []
            for root in try routing.qdiscs() where root.parent == .root && root.handle == ShaperLayout.rootHandle && root.kind == "htb" {
                let classes = try routing.classes(interface: root.interfaceIndex)
                let rate = classes.first { $0.handle == ShaperLayout.rootClass }?.rateBytesPerSecond ?? 0
                var bands: [ShaperStatistics.Band] = []
                for c in classes {
                    guard let band = ShaperLayout.band(ofClass: c.handle) else { continue }
                    bands.append(.init(band: band, sentBytes: c.statistics.bytes, sentPackets: c.statistics.packets,
                                       backlogBytes: c.statistics.backlog, queuedPackets: c.statistics.queueLength,
                                       drops: c.statistics.drops))
                }
                out.append(ShaperStatistics(interface: names[root.interfaceIndex] ?? "#\(root.interfaceIndex)",
                                            rateBitsPerSecond: rate * 8, bands: bands.sorted { $0.band.prio < $1.band.prio }))
            }
            return out.sorted { $0.interface < $1.interface }
        }
    }

    public func installed() throws(SteeringError) -> InstalledSteering {
        try kernel { () throws(NetlinkError) in try InstalledSteering.read(nftables) }
    }

    /// The kernel's answer for one packet.
    public struct Route: Sendable, Hashable {
        public var table: UInt32
        public var isLocal: Bool
        public var interfaceIndex: Int32?
        public var interface: String?
        public var gateway: IPv4Address?
        public var preferredSource: IPv4Address?
        /// Our ip rules the mark matched on its way to `table` (a group `goto`, then the path's `lookup`),
        /// as `ip rule` would print them; empty without a mark or when none of ours led there.
        public var rules: [String]
    }

    /// How the kernel routes a packet to `destination` from `source`, arriving on `inputInterface` (a
    /// forwarded packet) or sent by this host (nil), carrying `mark`.
    public func route(to destination: IPv4Address, from source: IPv4Address? = nil, arrivingOn inputInterface: Int32? = nil,
                      mark: UInt32? = nil) throws(SteeringError) -> Route {
        let answer = try kernel { () throws(NetlinkError) in
            try routing.lookup(destination: destination.value, source: source?.value, inputInterface: inputInterface, mark: mark)
        }
        var route = Route(table: answer.table, isLocal: answer.isLocal, interfaceIndex: answer.outputInterface,
                          gateway: answer.gateway.map(IPv4Address.init),
                          preferredSource: answer.preferredSource.map(IPv4Address.init), rules: [])
        if let index = answer.outputInterface {
            route.interface = (try? routing.link(index: index).name) ?? "#\(index)"
        }
        if let mark {
            let rules = try kernel { () throws(NetlinkError) in try routing.rules() }
            route.rules = Self.rulesTaken(by: mark, to: answer.table, in: rules)
        }
        return route
    }

    /// The rules, in priority order, that a packet with `mark` matches up to the `lookup` of `table`.
    static func rulesTaken(by mark: UInt32, to table: UInt32, in rules: [IPRule]) -> [String] {
        let matched = rules.filter(SteeringNames.isOurs).sorted { $0.priority < $1.priority }.filter { rule in
            guard let fwmark = rule.fwmark, mark & (rule.fwmask ?? 0xffff_ffff) == fwmark else { return false }
            switch rule.action {
            case .goto: return true
            case .lookup(let t): return t == table
            case .nop: return false
            }
        }
        guard let last = matched.lastIndex(where: { $0.table == table }) else { return [] }
        return matched[...last].map { rule in
            let action = switch rule.action {
            case .lookup(let t): "lookup \(t)"
            case .goto(let priority): "goto \(priority)"
            case .nop: "nop"
            }
            return "\(rule.priority): fwmark \(hex(rule.fwmark ?? 0))/\(hex(rule.fwmask ?? 0xffff_ffff)) \(action)"
        }
    }

    private func kernel<T>(_ body: () throws(NetlinkError) -> T) throws(SteeringError) -> T {
        do { return try body() } catch { throw .kernel(error) }
    }
}

private func hex(_ v: UInt32) -> String {
    let d = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - d.count)) + d
}

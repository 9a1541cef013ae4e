/// What the kernel should do with traffic to remote sites: the one value the pure Routing layer produces
/// and the Steering layer applies. Printing it shows the whole decision; two plans compare with `==`.
///
/// Kernel conventions it encodes (docs/STEERING.md): path slot 1...255 -> packet mark `slot << 16` under
/// mask 0x00ff0000 and routing table 6200 + slot; class id 1...254 -> conntrack mark `id << 16` under the
/// same mask (255 marks "no policy matched").
public struct SteeringPlan: Hashable, Sendable, Codable, CustomStringConvertible {
    /// Application classes, in match order (first match wins, like policy priority).
    public var classes: [TrafficClass]
    public var paths: [SteeringPath]
    public var destinations: [Destination]
    /// For each (destination site, class): the path, or weighted buckets of paths.
    public var choices: [Choice]

    public init(classes: [TrafficClass] = [], paths: [SteeringPath] = [], destinations: [Destination] = [],
                choices: [Choice] = []) {
        self.classes = classes
        self.paths = paths
        self.destinations = destinations
        self.choices = choices
    }

    /// The bits of the packet and conntrack mark that steering owns. All other bits are preserved.
    public static let markMask: UInt32 = 0x00ff_0000
    /// First table number of the per-path routing tables (table = base + slot).
    public static let tableBase: UInt32 = 6200
    /// The ip-rule priority of the per-path `fwmark -> table` rules (inside our band 6200-6299).
    public static let rulePriority: UInt32 = 6210
    /// A packet carrying any value under `markMask` when it reaches our chains is already pinned to a path by
    /// its sender (SO_MARK) and is not steered again. This value (slot 255) has no ip rule: the main table and
    /// the socket's outgoing interface decide. The probe responder replies with it.
    public static let pinnedMark: UInt32 = 0x00ff_0000
    /// Class id that marks a flow no policy matched: classified once, never steered.
    public static let unclassifiedID: UInt8 = 255

    /// One application class, from one policy.
    public struct TrafficClass: Hashable, Sendable, Codable, CustomStringConvertible {
        /// 1...254, stable for the class across plans (it is stored in conntrack marks of live flows).
        public var id: UInt8
        /// The policy name; used in nft set/chain names and comments, so it follows `Policy.isValidName`.
        public var name: String
        /// Traffic of the class: any of these (each a conjunction of its fields).
        public var matches: [TrafficMatch]
        /// Keep per-class counters (cheap: nft counters on rules the class already has).
        public var counters: Bool

        public init(id: UInt8, name: String, matches: [TrafficMatch], counters: Bool = true) {
            self.id = id
            self.name = name
            self.matches = matches
            self.counters = counters
        }

        public var ctMark: UInt32 { UInt32(id) << 16 }

        public var description: String {
            let m = matches.map(SteeringPlan.describe).joined(separator: " | ")
            return "class \(id) \(name): \(m.isEmpty ? "nothing" : m)\(counters ? " [counters]" : "")"
        }
    }

    /// One path: a tunnel interface towards one remote site.
    public struct SteeringPath: Hashable, Sendable, Codable, CustomStringConvertible {
        /// 1...255; decides mark and table.
        public var slot: UInt8
        /// The WireGuard interface the path's traffic leaves by.
        public var interface: String
        /// The remote site this path reaches.
        public var site: SiteID
        /// A next hop, for paths over a broadcast link (tests over veth); nil for point-to-point tunnels.
        public var gateway: IPv4Address?
        /// Which uplink/endpoint pair this is, for comments and status; optional.
        public var key: PathKey?

        public init(slot: UInt8, interface: String, site: SiteID, gateway: IPv4Address? = nil, key: PathKey? = nil) {
            self.slot = slot
            self.interface = interface
            self.site = site
            self.gateway = gateway
            self.key = key
        }

        public var mark: UInt32 { Self.mark(slot: slot) }
        public var table: UInt32 { SteeringPlan.tableBase + UInt32(slot) }
        /// The packet mark that selects the path of `slot` (its routing table leads into its tunnel).
        public static func mark(slot: UInt8) -> UInt32 { UInt32(slot) << 16 }

        public var description: String {
            "path \(slot) dev \(interface)\(gateway.map { " via \($0)" } ?? "") -> site \(site) mark \(hex(mark)) table \(table)"
        }
    }

    /// A remote site and the prefixes reachable there (over every path to it).
    public struct Destination: Hashable, Sendable, Codable, CustomStringConvertible {
        public var site: SiteID
        /// Short name for comments ("branch-1"); follows `Policy.isValidName`.
        public var name: String
        public var prefixes: [IPv4Prefix]

        public init(site: SiteID, name: String, prefixes: [IPv4Prefix]) {
            self.site = site
            self.name = name
            self.prefixes = prefixes
        }

        public var description: String { "site \(name) (\(site)): \(prefixes.map(\.description).joined(separator: ", "))" }
    }

    /// Where one class's traffic to one site goes.
    public enum Target: Hashable, Sendable, Codable, CustomStringConvertible {
        /// Every flow takes this path slot.
        case path(UInt8)
        /// A flow hash (source . destination address, so all flows of one call stay together) picks bucket
        /// i, which takes `slots[i]`. Weights are the number of buckets a path holds.
        case buckets([UInt8])

        public var slots: Set<UInt8> {
            switch self {
            case .path(let s): [s]
            case .buckets(let b): Set(b)
            }
        }

        public var description: String {
            switch self {
            case .path(let s): "path \(s)"
            case .buckets(let b): "buckets [\(b.map(String.init).joined(separator: ","))]"
            }
        }
    }

    public struct Choice: Hashable, Sendable, Codable, CustomStringConvertible {
        public var site: SiteID
        public var classID: UInt8
        public var target: Target

        public init(site: SiteID, classID: UInt8, target: Target) {
            self.site = site
            self.classID = classID
            self.target = target
        }

        public var description: String { "class \(classID) to site \(site) -> \(target)" }
    }

    public var description: String {
        var lines = ["SteeringPlan"]
        lines += classes.map { "  " + $0.description }
        lines += paths.map { "  " + $0.description }
        lines += destinations.map { "  " + $0.description }
        lines += choices.map { "  " + $0.description }
        return lines.joined(separator: "\n")
    }

    static func describe(_ m: TrafficMatch) -> String {
        if m.matchesEverything { return "all traffic" }
        var parts: [String] = []
        if !m.services.isEmpty { parts.append(m.services.map(\.description).joined(separator: ",")) }
        if !m.dscp.isEmpty { parts.append("dscp " + m.dscp.map(String.init).joined(separator: ",")) }
        if !m.sources.isEmpty { parts.append("from " + m.sources.map(\.description).joined(separator: ",")) }
        if !m.destinations.isEmpty { parts.append("to " + m.destinations.map(\.description).joined(separator: ",")) }
        return parts.joined(separator: " ")
    }

    /// What is wrong with the plan, if anything, in words that name the fix. Steering refuses invalid plans.
    public func problems() -> [String] { structureProblems() + choiceProblems() }

    /// Problems of classes, paths and destinations (checked when they change). O(n log n) in prefixes.
    public func structureProblems() -> [String] {
        var out: [String] = []
        var ids = Set<UInt8>(), names = Set<String>()
        for c in classes {
            if c.id == 0 || c.id == SteeringPlan.unclassifiedID { out.append("class \(c.name): id \(c.id) is not in 1...254") }
            if !ids.insert(c.id).inserted { out.append("class id \(c.id) is used twice") }
            if !names.insert(c.name).inserted { out.append("class name \(c.name) is used twice") }
            if !Policy.isValidName(c.name) { out.append("class name '\(c.name)' is not a valid policy name") }
        }
        var slots = Set<UInt8>()
        for p in paths {
            if p.slot == 0 { out.append("path on \(p.interface): slot 0 is not in 1...255") }
            if !slots.insert(p.slot).inserted { out.append("path slot \(p.slot) is used twice") }
            if !Uplink.isValidInterfaceName(p.interface) { out.append("path \(p.slot): interface name '\(p.interface)' is invalid") }
        }
        var sites = Set<SiteID>(), siteNames = Set<String>()
        for d in destinations {
            if !sites.insert(d.site).inserted { out.append("destination site \(d.site) is listed twice") }
            if !siteNames.insert(d.name).inserted { out.append("destination name \(d.name) is used twice") }
            if !Policy.isValidName(d.name) { out.append("destination name '\(d.name)' is not a valid name") }
        }
        // Sorted by start, a prefix can only overlap a neighbour that starts before it ends.
        let all = destinations.flatMap { d in d.prefixes.map { (d.name, $0) } }.sorted { $0.1 < $1.1 }
        var widest: (String, IPv4Prefix)?
        for item in all {
            if let w = widest, w.1.overlaps(item.1) {
                out.append("remote prefixes \(w.1) (\(w.0)) and \(item.1) (\(item.0)) overlap")
            }
            if widest == nil || item.1.last > widest!.1.last { widest = item }
        }
        return out
    }

    /// Problems of the choices (checked on every apply). O(choices + paths).
    public func choiceProblems() -> [String] {
        var out: [String] = []
        let ids = Set(classes.map(\.id))
        let sites = Set(destinations.map(\.site))
        let pathSite = Dictionary(paths.map { ($0.slot, $0.site) }, uniquingKeysWith: { a, _ in a })
        var seen = Set<String>()
        for choice in choices {
            if !ids.contains(choice.classID) { out.append("choice names unknown class \(choice.classID)") }
            if !sites.contains(choice.site) { out.append("choice names unknown site \(choice.site)") }
            if !seen.insert("\(choice.site)/\(choice.classID)").inserted {
                out.append("two choices for class \(choice.classID) to site \(choice.site)")
            }
            if case .buckets(let b) = choice.target, b.isEmpty || b.count > 1024 {
                out.append("class \(choice.classID) to site \(choice.site): bucket count \(b.count) is not in 1...1024")
            }
            for slot in choice.target.slots {
                guard let site = pathSite[slot] else {
                    out.append("class \(choice.classID) to site \(choice.site): unknown path slot \(slot)")
                    continue
                }
                if site != choice.site { out.append("class \(choice.classID): path \(slot) does not lead to site \(choice.site)") }
            }
        }
        return out
    }
}

private func hex(_ v: UInt32) -> String {
    let d = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - d.count)) + d
}

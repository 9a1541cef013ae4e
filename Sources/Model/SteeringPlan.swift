/// What the kernel should do with traffic to remote sites: the one value the pure Routing layer produces
/// and the Steering layer applies. Printing it shows the whole decision; two plans compare with `==`.
///
/// Kernel conventions it encodes (`Conventions`, docs/STEERING.md): path slot 1...4094 -> packet mark
/// `slot << 16` under 0x0fff0000 and routing table 6200 + slot; class id 1...254 -> conntrack mark `id << 16`
/// under 0x00ff0000 (255 marks "no policy matched"); uplink slot 1...15 -> WireGuard's socket mark
/// `slot << 28` and routing table 6100 + slot.
public struct SteeringPlan: Hashable, Sendable, Codable, CustomStringConvertible {
    /// Application classes, in match order (first match wins, like policy priority).
    public var classes: [TrafficClass]
    public var paths: [SteeringPath]
    public var destinations: [Destination]
    /// For each (destination site, class): the path, or weighted buckets of paths.
    public var choices: [Choice]
    /// The uplinks whose tunnels are pinned to them (by WireGuard's socket mark).
    public var uplinks: [UplinkPin]
    /// Egress shapers, one per shaped tunnel interface (docs/SHAPING.md). Empty: nothing shaped, and the
    /// ruleset has no `shape` chain.
    public var shapers: [Shaper]
    /// Download shapers, one per uplink whose download is shaped (docs/SHAPING.md, "Download").
    public var downloadShapers: [DownloadShaper]
    /// For duplicated classes: where the copy of a packet that took path `from` goes (docs/STEERING.md,
    /// "Duplication"). None for a (site, class) with one usable path: nothing is copied.
    public var copies: [Copy]
    /// This site relays for other members (`run --relay`, docs/MESH.md "Relayed paths"): it forwards between
    /// its tunnels. false (every other site): what arrives by one path's interface and would leave by one is
    /// dropped and counted (the site chains' transit rule, docs/STEERING.md "Transit"), so no member routes another
    /// site's traffic through us.
    public var relay: Bool

    public init(classes: [TrafficClass] = [], paths: [SteeringPath] = [], destinations: [Destination] = [],
                choices: [Choice] = [], uplinks: [UplinkPin] = [], shapers: [Shaper] = [], downloadShapers: [DownloadShaper] = [],
                copies: [Copy] = [], relay: Bool = false) {
        self.relay = relay
        self.copies = copies
        self.downloadShapers = downloadShapers
        self.classes = classes
        self.paths = paths
        self.destinations = destinations
        self.choices = choices
        self.uplinks = uplinks
        self.shapers = shapers
    }

    /// An htb shaper at the root of one tunnel interface: every class shares `rateBitsPerSecond`, counted
    /// with `overhead` bytes per packet added (what the encapsulation and the uplink's framing add).
    public struct Shaper: Hashable, Sendable, Codable, CustomStringConvertible {
        public var interface: String
        public var rateBitsPerSecond: UInt64
        public var overhead: UInt16

        public init(interface: String, rateBitsPerSecond: UInt64, overhead: UInt16 = Conventions.shaperOverhead) {
            self.interface = interface
            self.rateBitsPerSecond = rateBitsPerSecond
            self.overhead = overhead
        }

        /// 64 kbit/s ... 1 Tbit/s: outside, a number is wrong, not a link.
        public static let rates: ClosedRange<UInt64> = 64_000...1_000_000_000_000

        public var description: String { "shaper dev \(interface) rate \(rateBitsPerSecond) bit/s overhead \(overhead)" }
    }

    /// The download of one uplink, shaped after conntrack (docs/SHAPING.md, "Download"): packets that arrive
    /// over one of `tunnels` and leave by a device holding an address in one of `lanPrefixes` are redirected
    /// to the uplink's ifb (`Conventions.downloadDevice(slot:)`), whose htb has the same layout as a tunnel's
    /// shaper, at `rateBitsPerSecond`.
    public struct DownloadShaper: Hashable, Sendable, Codable, CustomStringConvertible {
        /// The uplink's slot: the packet-mark value that selects its ifb (`Conventions.uplinkMark(slot:)`).
        public var slot: UInt8
        /// The tunnel interfaces of the uplink: what arrives over them is its download.
        public var tunnels: [String]
        /// Where the download leaves to: every device with an address in one of these.
        public var lanPrefixes: [IPv4Prefix]
        public var rateBitsPerSecond: UInt64
        public var overhead: UInt16

        public init(slot: UInt8, tunnels: [String], lanPrefixes: [IPv4Prefix], rateBitsPerSecond: UInt64,
                    overhead: UInt16 = Conventions.downloadShaperOverhead) {
            self.slot = slot
            self.tunnels = tunnels
            self.lanPrefixes = lanPrefixes
            self.rateBitsPerSecond = rateBitsPerSecond
            self.overhead = overhead
        }

        /// The ifb the download is redirected to.
        public var device: String { Conventions.downloadDevice(slot: slot) }
        /// Its htb, as a `Shaper` of the ifb.
        public var shaper: Shaper { Shaper(interface: device, rateBitsPerSecond: rateBitsPerSecond, overhead: overhead) }

        public var description: String {
            "download shaper uplink \(slot) dev \(device) from \(tunnels.joined(separator: ",")) to \(lanPrefixes.map(\.description).joined(separator: ",")) rate \(rateBitsPerSecond) bit/s overhead \(overhead)"
        }
    }

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
        /// Which queue of a shaped tunnel the class's packets wait in.
        public var band: ShapingBand
        /// The class's packets are copied over a second path (`copies`) and the receiver drops the second
        /// copy: this site installs the receiving side (de-duplication) for the class whether or not it sends.
        public var duplicate: Bool

        public init(id: UInt8, name: String, matches: [TrafficMatch], counters: Bool = true, band: ShapingBand = .standard,
                    duplicate: Bool = false) {
            self.duplicate = duplicate
            self.id = id
            self.name = name
            self.matches = matches
            self.counters = counters
            self.band = band
        }

        public var ctMark: UInt32 { Conventions.classMark(id: id) }

        public var description: String {
            let m = matches.map(SteeringPlan.describe).joined(separator: " | ")
            return "class \(id) \(name): \(m.isEmpty ? "nothing" : m)\(counters ? " [counters]" : "")\(band == .standard ? "" : " [\(band)]")\(duplicate ? " [duplicate]" : "")"
        }
    }

    /// One path: a tunnel interface towards one remote site.
    public struct SteeringPath: Hashable, Sendable, Codable, CustomStringConvertible {
        /// The path's identity, the same everywhere a person reads it: the `paths.id` of the database, the
        /// `<class>_path<id>` chains and their comments, status, metrics and logs. Without a database (tests,
        /// benches) the slot.
        public var id: Int64
        /// 1...4094: decides the packet mark and the routing table (`Conventions`). Internal; the `paths`
        /// table has it as the `slot` column, and it equals the id whenever the id is a free slot.
        public var slot: UInt16
        /// The WireGuard interface the path's traffic leaves by.
        public var interface: String
        /// The remote site this path reaches.
        public var site: SiteID
        /// A next hop, for paths over a broadcast link (tests over veth); nil for point-to-point tunnels.
        public var gateway: IPv4Address?
        /// Which uplink/endpoint pair this is, for comments and status; optional.
        public var key: PathKey?
        /// What a person needs to recognise the path in `nft list ruleset` (site, local uplink, remote
        /// endpoint), e.g. "east via isp-a (eth1) to isp-b 198.51.100.2:51820"; nil: the key's words.
        public var summary: String?

        public init(id: Int64? = nil, slot: UInt16, interface: String, site: SiteID, gateway: IPv4Address? = nil,
                    key: PathKey? = nil, summary: String? = nil) {
            self.id = id ?? Int64(slot)
            self.slot = slot
            self.interface = interface
            self.site = site
            self.gateway = gateway
            self.key = key
            self.summary = summary
        }

        public var mark: UInt32 { Conventions.pathMark(slot: slot) }
        public var table: UInt32 { Conventions.pathTable(slot: slot) }

        /// "path 7 (east via isp-a to isp-b, wg-sdwan0)": the words of chain comments and logs.
        public var label: String {
            let about = summary ?? key.map { "\($0.localLabel) to \($0.remoteLabel)" }
            return "path \(id) (\(about.map { $0 + ", " } ?? "")\(interface))"
        }

        public var description: String {
            "path \(id) slot \(slot) dev \(interface)\(gateway.map { " via \($0)" } ?? "") -> site \(site) mark \(hex(mark)) table \(table)"
        }
    }

    /// One uplink whose tunnels are pinned to it: WireGuard's packets with the socket mark of `slot` take
    /// the uplink's routing table, which copies the main table's routes out of `interface`.
    public struct UplinkPin: Hashable, Sendable, Codable, CustomStringConvertible {
        /// 1...15.
        public var slot: UInt8
        public var interface: String

        public init(slot: UInt8, interface: String) {
            self.slot = slot
            self.interface = interface
        }

        public var mark: UInt32 { Conventions.uplinkMark(slot: slot) }
        public var table: UInt32 { Conventions.uplinkTable(slot: slot) }
        public var description: String { "uplink \(slot) dev \(interface) mark \(hex(mark)) table \(table)" }
    }

    /// A remote site and the prefixes reachable there (over every path to it).
    public struct Destination: Hashable, Sendable, Codable, CustomStringConvertible {
        public var site: SiteID
        /// Short name for comments ("branch-1"); follows `Policy.isValidName`.
        public var name: String
        public var prefixes: [IPv4Prefix]
        /// The site's index in the ct mark of its flows (`Conventions.siteMark`), 1...255: a later packet of
        /// a flow finds the site by it, without the address lookup. nil: no index (the address lookup only).
        public var index: UInt8?

        public init(site: SiteID, name: String, prefixes: [IPv4Prefix], index: UInt8? = nil) {
            self.site = site
            self.name = name
            self.prefixes = prefixes
            self.index = index
        }

        public var description: String {
            "site \(name) (\(site)): \(prefixes.map(\.description).joined(separator: ", "))" + (index.map { ", index \($0)" } ?? "")
        }
    }

    /// Where one class's traffic to one site goes.
    public enum Target: Hashable, Sendable, Codable, CustomStringConvertible {
        /// Every flow takes the path of this slot.
        case path(UInt16)
        /// A flow hash (source . destination address, so all flows of one call stay together) picks bucket
        /// i + 1, which takes `slots[i]`; exactly `Conventions.balanceBuckets` of them. Weights are the number
        /// of buckets a path holds.
        case buckets([UInt16])

        public var slots: Set<UInt16> {
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

    /// A packet of class `classID` to `site` that took path slot `from` is also sent over path slot `to`.
    public struct Copy: Hashable, Sendable, Codable, CustomStringConvertible {
        public var site: SiteID
        public var classID: UInt8
        public var from: UInt16
        public var to: UInt16

        public init(site: SiteID, classID: UInt8, from: UInt16, to: UInt16) {
            self.site = site
            self.classID = classID
            self.from = from
            self.to = to
        }

        public var description: String { "class \(classID) to site \(site): path \(from) copied to path \(to)" }
    }

    public var description: String {
        var lines = ["SteeringPlan"]
        lines += classes.map { "  " + $0.description }
        lines += paths.map { "  " + $0.description }
        lines += destinations.map { "  " + $0.description }
        lines += choices.map { "  " + $0.description }
        lines += uplinks.map { "  " + $0.description }
        lines += shapers.map { "  " + $0.description }
        lines += downloadShapers.map { "  " + $0.description }
        lines += copies.map { "  " + $0.description }
        if relay { lines.append("  relay: forwards between tunnels") }
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
            if !Conventions.classIDs.contains(c.id) { out.append("class \(c.name): id \(c.id) is not in \(Conventions.classIDs)") }
            if !ids.insert(c.id).inserted { out.append("class id \(c.id) is used twice") }
            if !names.insert(c.name).inserted { out.append("class name \(c.name) is used twice") }
            if !Policy.isValidName(c.name) { out.append("class name '\(c.name)' is not a valid policy name") }
        }
        var slots = Set<UInt16>(), pathIDs = Set<Int64>()
        for p in paths {
            if !Conventions.pathSlots.contains(p.slot) {
                out.append("path \(p.id) on \(p.interface): slot \(p.slot) is not in \(Conventions.pathSlots) (at most \(Conventions.pathSlots.count) paths)")
            }
            if !slots.insert(p.slot).inserted { out.append("path slot \(p.slot) is used twice") }
            if p.id < 1 { out.append("path on \(p.interface): id \(p.id) is not positive") }
            if !pathIDs.insert(p.id).inserted { out.append("path id \(p.id) is used twice") }
            if !Uplink.isValidInterfaceName(p.interface) { out.append("path \(p.id): interface name '\(p.interface)' is invalid") }
        }
        var uplinkSlots = Set<UInt8>()
        for u in uplinks {
            if !Conventions.uplinkSlots.contains(u.slot) { out.append("uplink \(u.interface): slot \(u.slot) is not in \(Conventions.uplinkSlots)") }
            if !uplinkSlots.insert(u.slot).inserted { out.append("uplink slot \(u.slot) is used twice") }
            if !Uplink.isValidInterfaceName(u.interface) { out.append("uplink \(u.slot): interface name '\(u.interface)' is invalid") }
        }
        var shaped = Set<String>()
        for s in shapers {
            if !Uplink.isValidInterfaceName(s.interface) { out.append("shaper: interface name '\(s.interface)' is invalid") }
            if !shaped.insert(s.interface).inserted { out.append("interface \(s.interface) has two shapers") }
            if !Shaper.rates.contains(s.rateBitsPerSecond) {
                out.append("shaper on \(s.interface): rate \(s.rateBitsPerSecond) bit/s is not in 64 kbit/s ... 1 Tbit/s")
            }
        }
        var downloadSlots = Set<UInt8>()
        for d in downloadShapers {
            if !Conventions.uplinkSlots.contains(d.slot) { out.append("download shaper: uplink slot \(d.slot) is not in \(Conventions.uplinkSlots)") }
            if !downloadSlots.insert(d.slot).inserted { out.append("uplink slot \(d.slot) has two download shapers") }
            if d.tunnels.isEmpty || !d.tunnels.allSatisfy(Uplink.isValidInterfaceName) {
                out.append("download shaper of uplink \(d.slot): tunnel interfaces \(d.tunnels) are missing or invalid")
            }
            if d.lanPrefixes.isEmpty { out.append("download shaper of uplink \(d.slot): no LAN prefix (--lan) to shape towards") }
            if !Shaper.rates.contains(d.rateBitsPerSecond) {
                out.append("download shaper of uplink \(d.slot): rate \(d.rateBitsPerSecond) bit/s is not in 64 kbit/s ... 1 Tbit/s")
            }
        }
        var sites = Set<SiteID>(), siteNames = Set<String>(), siteIndexes = Set<UInt8>()
        for d in destinations {
            if !sites.insert(d.site).inserted { out.append("destination site \(d.site) is listed twice") }
            if !siteNames.insert(d.name).inserted { out.append("destination name \(d.name) is used twice") }
            if !Policy.isValidName(d.name) { out.append("destination name '\(d.name)' is not a valid name") }
            if let i = d.index {
                if !Conventions.siteIndexes.contains(i) { out.append("destination \(d.name): index \(i) is not in \(Conventions.siteIndexes)") }
                if !siteIndexes.insert(i).inserted { out.append("site index \(i) is used twice") }
            }
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
            if case .buckets(let b) = choice.target, b.count != Int(Conventions.balanceBuckets) {
                out.append("class \(choice.classID) to site \(choice.site): \(b.count) buckets; a balanced class has exactly \(Conventions.balanceBuckets)")
            }
            for slot in choice.target.slots {
                guard let site = pathSite[slot] else {
                    out.append("class \(choice.classID) to site \(choice.site): unknown path slot \(slot)")
                    continue
                }
                if site != choice.site { out.append("class \(choice.classID): path \(slot) does not lead to site \(choice.site)") }
            }
        }
        let duplicated = Set(classes.filter(\.duplicate).map(\.id))
        var copied = Set<String>()
        for copy in copies {
            let what = "copy of class \(copy.classID) to site \(copy.site)"
            if !duplicated.contains(copy.classID) { out.append("\(what): the class does not duplicate") }
            if copy.from == copy.to { out.append("\(what): path \(copy.from) is copied to itself") }
            if !copied.insert("\(copy.classID)/\(copy.from)").inserted {
                out.append("\(what): path \(copy.from) has two copy targets")
            }
            for slot in [copy.from, copy.to] where pathSite[slot] != copy.site {
                out.append("\(what): path \(slot) \(pathSite[slot] == nil ? "is unknown" : "does not lead to the site")")
            }
        }
        return out
    }
}

/// The queue a class waits in on a shaped tunnel: realtime first (voice, our probes), then standard, then
/// bulk. Each is an htb class under the shaper's rate; a lower band is served first whenever it has packets.
public enum ShapingBand: String, Hashable, Sendable, Codable, CaseIterable, CustomStringConvertible {
    case realtime, standard, bulk

    /// The htb class minor (`62:10`, `62:20`, `62:30`).
    public var classMinor: UInt16 {
        switch self {
        case .realtime: 0x10
        case .standard: 0x20
        case .bulk: 0x30
        }
    }

    /// htb `prio`: 0 is served first.
    public var prio: UInt32 {
        switch self {
        case .realtime: 0
        case .standard: 1
        case .bulk: 2
        }
    }

    public var description: String { rawValue }
}

private func hex(_ v: UInt32) -> String {
    let d = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - d.count)) + d
}

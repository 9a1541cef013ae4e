import Model

/// A remote site as the planner needs it: its name (for nft comments) and the prefixes behind it (overlay
/// address and announced LANs), reachable over every path to it.
public struct RemoteSite: Hashable, Sendable {
    public var id: SiteID
    public var name: String
    public var prefixes: [IPv4Prefix]

    public init(id: SiteID, name: String, prefixes: [IPv4Prefix]) {
        self.id = id
        self.name = name
        self.prefixes = prefixes
    }
}

/// A path as the kernel knows it: its identity (the `paths.id`), its slot (mark and table) and the tunnel
/// interface its traffic leaves by.
public struct PathBinding: Hashable, Sendable {
    public var key: PathKey
    /// The `paths.id` of the database (the slot where there is none).
    public var id: Int64
    public var slot: UInt16
    public var interface: String
    /// Site, uplink and remote endpoint in words, for the ruleset's comments.
    public var summary: String?

    public init(key: PathKey, id: Int64? = nil, slot: UInt16, interface: String, summary: String? = nil) {
        self.key = key
        self.id = id ?? Int64(slot)
        self.slot = slot
        self.interface = interface
        self.summary = summary
    }

    /// The packet mark that pins a datagram to this path (probes, announcements through the tunnel).
    public var mark: UInt32 { Conventions.pathMark(slot: slot) }
}

/// Hands out small numbers that must stay the same for a name as long as it exists: class ids (they live in
/// the conntrack marks of flows already classified) and path slots (they live in packet marks and table
/// numbers). A released number is reused only after every never-used one, so a stale conntrack mark from a
/// deleted class is unlikely to meet a new class with its id. A name may prefer a number (a path its
/// `paths.id`, so slot and id agree): it gets it when that number is free.
public struct StableNumbering<Name: Hashable & Sendable, Number: FixedWidthInteger & Sendable>: Sendable {
    public private(set) var assigned: [Name: Number] = [:]
    private var inUse: Set<Number> = []
    private var released: [Number] = []
    private var next: Int
    private let range: ClosedRange<Int>

    public init(range: ClosedRange<Int>) {
        precondition(range.lowerBound >= Int(Number.min) && range.upperBound <= Int(Number.max))
        self.range = range
        self.next = range.lowerBound
    }

    /// Gives every name in `names` a number (keeping existing ones), releases names no longer present.
    /// Names that could not get a number because the range is exhausted are missing from the result.
    public mutating func update(_ names: some Sequence<Name>, preferring preferred: (Name) -> Int? = { _ in nil })
        -> [Name: Number] {
        let wanted = Set(names)
        for (name, number) in assigned where !wanted.contains(name) {
            assigned[name] = nil
            inUse.remove(number)
            released.append(number)
        }
        for name in names where assigned[name] == nil {
            if let p = preferred(name), range.contains(p), !inUse.contains(Number(p)) {
                take(Number(p), for: name)
            } else if let number = nextFree() {
                take(number, for: name)
            }
        }
        return assigned
    }

    private mutating func take(_ number: Number, for name: Name) {
        assigned[name] = number
        inUse.insert(number)
        released.removeAll { $0 == number }
    }

    private mutating func nextFree() -> Number? {
        while next <= range.upperBound {
            let number = Number(next)
            next += 1
            if !inUse.contains(number) { return number }
        }
        return released.first { !inUse.contains($0) }
    }
}

/// Turns the engine's selections into the SteeringPlan the Steering layer applies. Pure.
public enum SteeringPlanner {
    /// - Parameters:
    ///   - policies: enabled policies in priority order (lowest number first): classes match in that order.
    ///   - classIDs: the stable id of each policy name (see `StableNumbering`).
    ///   - sites: remote sites with their prefixes; sites without a path get no destination.
    ///   - paths: the kernel binding of every known path.
    ///   - selections: the engine's current decision.
    ///   - copies: for duplicating policies, the engine's copy target of each selected path.
    ///   - siteIndexes: the stable index of each site (see `StableNumbering`, `Conventions.siteMark`); a site
    ///     without one is steered by its addresses alone.
    public static func plan(policies: [Policy], classIDs: [String: UInt8], sites: [RemoteSite],
                            paths: [PathBinding], selections: [SelectionKey: Selection],
                            copies: [SelectionKey: [PathKey: PathKey]] = [:],
                            siteIndexes: [SiteID: UInt8] = [:]) -> SteeringPlan {
        let ordered = classOrder(policies).filter { classIDs[$0.name] != nil }
        let classes = ordered.map {
            SteeringPlan.TrafficClass(id: classIDs[$0.name]!, name: $0.name, matches: [$0.match], band: band(of: $0),
                                      duplicate: $0.duplicate)
        }
        let slotOf = Dictionary(uniqueKeysWithValues: paths.map { ($0.key, $0.slot) })
        let steeringPaths = paths.sorted { $0.slot < $1.slot }.map {
            SteeringPlan.SteeringPath(id: $0.id, slot: $0.slot, interface: $0.interface, site: $0.key.site, key: $0.key,
                                      summary: $0.summary)
        }
        let reachable = Set(paths.map(\.key.site))
        var usedNames = Set<String>()
        let destinations = sites.filter { reachable.contains($0.id) }.sorted { $0.id < $1.id }.map {
            SteeringPlan.Destination(site: $0.id, name: ruleName(for: $0, avoiding: &usedNames),
                                     prefixes: $0.prefixes.sorted(), index: siteIndexes[$0.id])
        }
        var choices: [SteeringPlan.Choice] = []
        var planCopies: [SteeringPlan.Copy] = []
        for site in destinations {
            for policy in ordered {
                let key = SelectionKey(site: site.site, policy: policy.name)
                if policy.duplicate, let targets = copies[key] {
                    for (from, to) in targets.sorted(by: { $0.key < $1.key }) {
                        guard let a = slotOf[from], let b = slotOf[to] else { continue }
                        planCopies.append(SteeringPlan.Copy(site: site.site, classID: classIDs[policy.name]!, from: a, to: b))
                    }
                }
                guard let selection = selections[key] else { continue }
                let target: SteeringPlan.Target?
                switch selection {
                case .single(let key):
                    target = slotOf[key].map { .path($0) }
                case .buckets(let keys):
                    let slots = keys.compactMap { slotOf[$0] }
                    target = slots.count == keys.count ? .buckets(slots) : nil
                }
                if let target {
                    choices.append(SteeringPlan.Choice(site: site.site, classID: classIDs[policy.name]!, target: target))
                }
            }
        }
        return SteeringPlan(classes: classes, paths: steeringPaths, destinations: destinations, choices: choices,
                            copies: planCopies)
    }

    /// The queue a policy's traffic waits in on a shaped tunnel (docs/SHAPING.md): the class that asks for
    /// the lowest latency (voice) is served first, the one that asks for the most bandwidth (bulk transfers)
    /// last, everything else between.
    public static func band(of policy: Policy) -> ShapingBand {
        switch policy.strategy {
        case .lowestLatency: .realtime
        case .highestBandwidth: .bulk
        default: .standard
        }
    }

    /// The enabled policies in the order the kernel's `classify` chain tries their classes: priority, then
    /// name. The first whose match selects a flow gives the flow its class.
    public static func classOrder(_ policies: [Policy]) -> [Policy] {
        policies.filter(\.enabled).sorted { ($0.priority, $0.name) < ($1.priority, $1.name) }
    }

    /// The policy whose class the `classify` chain gives `flow` (first match in `classOrder`), or nil when
    /// none matches (the flow is marked unclassified and not steered).
    public static func classify(_ flow: Flow, policies: [Policy]) -> Policy? {
        classOrder(policies).first { $0.match.matches(flow) }
    }

    /// Site names may hold characters and lengths nft object names cannot ("branch.east", 63 characters):
    /// the ruleset uses a name derived from it that is valid, readable and unique within the plan.
    static func ruleName(for site: RemoteSite, avoiding used: inout Set<String>) -> String {
        var base = String(site.name.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") ? $0 : "_" })
        if !(base.first?.isLetter ?? false) { base = "s" + base }
        base = String(base.prefix(24))
        var name = base
        var counter = 2
        while !used.insert(name).inserted {
            name = "\(base)_\(counter)"
            counter += 1
        }
        return name
    }
}

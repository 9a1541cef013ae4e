import Model
import Netlink

/// What one apply changes, for logs, the status report and tests ("a re-steer touched elements only").
public struct SteeringChanges: Hashable, Sendable, CustomStringConvertible {
    public var tableCreated = false
    public var tableDeleted = false
    /// `table ip patronus_egress` (duplication) created or deleted; its chains, sets and elements are counted
    /// with the rest, their names prefixed "egress:".
    public var egressTableCreated = false
    public var egressTableDeleted = false
    public var chainsCreated: [String] = []
    public var chainsDeleted: [String] = []
    /// Chains whose rules were reloaded (policy or structure change). Empty for a re-steer.
    public var chainsReloaded: [String] = []
    public var setsCreated: [String] = []
    public var setsDeleted: [String] = []
    public var elementsAdded = 0
    public var elementsDeleted = 0
    public var ipRulesAdded: [IPRule] = []
    public var ipRulesDeleted: [IPRule] = []
    public var routesAdded: [SteeringRuleset.Route] = []
    public var routesDeleted: [SteeringRuleset.Route] = []
    /// Routes not installed because their path's interface does not exist yet (retried on the next apply).
    public var routesSkipped: [SteeringRuleset.Route] = []
    /// nf_tables messages in the one batch (0 when nothing changed).
    public var batchMessages = 0
    /// Shapers (by interface) installed, removed, or changed in place (a new rate).
    public var shapersInstalled: [String] = []
    public var shapersRemoved: [String] = []
    public var shaperRatesChanged: [String] = []
    /// Shapers that could not be installed or changed: their interfaces stay unshaped (routing goes on).
    public var shaperProblems: [String] = []
    /// What a drift check found changed or missing in our shapers (they were then put back).
    public var shaperDrift: [String] = []

    public init() {}

    public var isEmpty: Bool { self == SteeringChanges() }

    /// Adds the changes of the egress table's diff.
    mutating func merge(egress c: SteeringChanges) {
        egressTableCreated = egressTableCreated || c.tableCreated || c.egressTableCreated
        egressTableDeleted = egressTableDeleted || c.tableDeleted || c.egressTableDeleted
        chainsCreated += c.chainsCreated.map { "egress:" + $0 }
        chainsDeleted += c.chainsDeleted.map { "egress:" + $0 }
        chainsReloaded += c.chainsReloaded.map { "egress:" + $0 }
        setsCreated += c.setsCreated.map { "egress:" + $0 }
        setsDeleted += c.setsDeleted.map { "egress:" + $0 }
        elementsAdded += c.elementsAdded
        elementsDeleted += c.elementsDeleted
        batchMessages += c.batchMessages + (c.egressTableDeleted ? 1 : 0)
    }

    /// True when only map elements changed: the re-steer fast path.
    public var elementsOnly: Bool {
        var s = self
        s.elementsAdded = 0
        s.elementsDeleted = 0
        s.batchMessages = 0
        return s.isEmpty
    }

    public var description: String {
        if isEmpty { return "no change" }
        var parts: [String] = []
        if tableCreated { parts.append("table created") }
        if tableDeleted { parts.append("table deleted") }
        if egressTableCreated { parts.append("egress table created") }
        if egressTableDeleted { parts.append("egress table deleted") }
        if !chainsCreated.isEmpty { parts.append("chains created: \(chainsCreated.joined(separator: ","))") }
        if !chainsDeleted.isEmpty { parts.append("chains deleted: \(chainsDeleted.joined(separator: ","))") }
        if !chainsReloaded.isEmpty { parts.append("rules reloaded in: \(chainsReloaded.joined(separator: ","))") }
        if !setsCreated.isEmpty { parts.append("sets created: \(setsCreated.joined(separator: ","))") }
        if !setsDeleted.isEmpty { parts.append("sets deleted: \(setsDeleted.joined(separator: ","))") }
        if elementsAdded + elementsDeleted > 0 { parts.append("elements +\(elementsAdded) -\(elementsDeleted)") }
        if !ipRulesAdded.isEmpty || !ipRulesDeleted.isEmpty { parts.append("ip rules +\(ipRulesAdded.count) -\(ipRulesDeleted.count)") }
        if !routesAdded.isEmpty || !routesDeleted.isEmpty { parts.append("routes +\(routesAdded.count) -\(routesDeleted.count)") }
        if !shapersInstalled.isEmpty { parts.append("shapers installed: \(shapersInstalled.joined(separator: ","))") }
        if !shapersRemoved.isEmpty { parts.append("shapers removed: \(shapersRemoved.joined(separator: ","))") }
        if !shaperRatesChanged.isEmpty { parts.append("shaper rates changed: \(shaperRatesChanged.joined(separator: ","))") }
        if !shaperDrift.isEmpty { parts.append("shapers found changed: \(shaperDrift.joined(separator: "; "))") }
        if !shaperProblems.isEmpty { parts.append("shaper problems: \(shaperProblems.joined(separator: "; "))") }
        if !routesSkipped.isEmpty { parts.append("routes waiting for interfaces: \(Set(routesSkipped.map(\.interface)).sorted().joined(separator: ","))") }
        return parts.joined(separator: "; ")
    }
}

/// The difference between what is installed and what a ruleset wants, as one nf_tables batch plus the
/// rtnetlink changes. Pure.
struct SteeringDiff {
    var batch: [NetlinkRequest] = []
    var changes = SteeringChanges()

    init(installed: InstalledState, desired: SteeringRuleset) {
        let family = desired.table.family, table = desired.table.name
        let where_ = "\(family) \(table)"
        var c = SteeringChanges()
        var b: [NetlinkRequest] = []

        let desiredChains = Dictionary(uniqueKeysWithValues: desired.chains.map { ($0.name, $0) })
        // Base chains whose hook changed are re-created; regular chains are identified by name.
        let recreated = Set(desired.chains.compactMap { d -> String? in
            guard let i = installed.chains[d.name], i.hook != d.hook else { return nil }
            return d.name
        })
        let obsoleteChains = installed.chains.keys.filter { desiredChains[$0] == nil || recreated.contains($0) }.sorted()
        let desiredSets = Dictionary(uniqueKeysWithValues: (desired.staticSets.map(\.set) + desired.maps.map(\.set)).map { ($0.name, $0) })
        let changedSets = Set(installed.sets.compactMap { name, s -> String? in
            guard let d = desiredSets[name] else { return name }
            return Self.sameDefinition(s, d) ? nil : name
        })
        // Static sets are always rebuilt when their rule is (their content is only tracked by fingerprint).
        var reloaded: [String] = []
        for d in desired.chains {
            let want = (desired.rules[d.name] ?? []).map { InstalledState.fingerprint($0.userdata) }
            let have = installed.ruleFingerprints[d.name] ?? []
            if installed.chains[d.name] != nil && !recreated.contains(d.name) && want != have { reloaded.append(d.name) }
        }
        let rebuiltStatic = Set(desired.staticSets.filter { s in
            installed.sets[s.set.name] != nil && (changedSets.contains(s.set.name)
                || s.owners.allSatisfy { reloaded.contains($0) || obsoleteChains.contains($0) })
        }.map(\.set.name))

        if !installed.tableExists {
            b.append(NetlinkRequest(NFTables.newTable(desired.table), "create table \(where_)"))
            c.tableCreated = true
        }
        // 1. Unhook rules that are going away (they may reference sets and chains we delete below).
        for name in reloaded + obsoleteChains where (installed.ruleFingerprints[name]?.isEmpty == false) {
            b.append(NetlinkRequest(NFTables.flushChain(family: family, table: table, name: name), "flush chain \(where_) \(name)"))
        }
        // 2. Map elements: delete what is gone or changes its verdict (replace = delete + add).
        var adds: [(String, [NFTElement])] = []
        for map in desired.maps {
            let name = map.set.name
            if installed.sets[name] == nil || changedSets.contains(name) {
                adds.append((name, map.elements))
                continue
            }
            let have = installed.mapElements[name] ?? []
            let wantByKey = Dictionary(map.elements.map { (ElementKey($0), $0) }, uniquingKeysWith: { a, _ in a })
            let haveByKey = Dictionary(have.map { (ElementKey($0), $0) }, uniquingKeysWith: { a, _ in a })
            let deletions = have.filter { wantByKey[ElementKey($0)]?.data != $0.data }
            let additions = map.elements.filter { haveByKey[ElementKey($0)]?.data != $0.data }
            if !deletions.isEmpty {
                let strip = deletions.map { NFTElement(key: $0.key, keyEnd: $0.keyEnd) }
                for m in NFTables.elementMessages(strip, family: family, table: table, set: name, delete: true) {
                    b.append(NetlinkRequest(m, "delete elements from map \(where_) \(name)"))
                }
                c.elementsDeleted += deletions.count
            }
            if !additions.isEmpty { adds.append((name, additions)) }
        }
        // Maps no longer wanted may hold verdicts pointing at chains we delete: delete the maps first.
        for name in installed.sets.keys.sorted() where changedSets.contains(name) || rebuiltStatic.contains(name) {
            b.append(NetlinkRequest(NFTables.deleteSet(family: family, table: table, name: name), "delete set \(where_) \(name)"))
            c.setsDeleted.append(name)
        }
        // 3. Chains that are gone (after every reference to them went in steps 1-2).
        for name in obsoleteChains {
            b.append(NetlinkRequest(NFTables.deleteChain(family: family, table: table, name: name), "delete chain \(where_) \(name)"))
            c.chainsDeleted.append(name)
        }
        // 4. New chains (set elements and rules may point at them), then new sets with their elements.
        var newChains: [String] = []
        for d in desired.chains where installed.chains[d.name] == nil || recreated.contains(d.name) {
            b.append(NetlinkRequest(NFTables.newChain(d), "create chain \(where_) \(d.name)"))
            newChains.append(d.name)
        }
        c.chainsCreated = newChains
        let createdSets = desired.staticSets.filter { installed.sets[$0.set.name] == nil || rebuiltStatic.contains($0.set.name) }
        var setID: UInt32 = 1
        for s in createdSets {
            var set = s.set
            set.id = setID
            setID += 1
            b.append(NetlinkRequest(NFTables.newSet(set), "create set \(where_) \(set.name)"))
            for m in NFTables.elementMessages(s.elements, family: family, table: table, set: set.name) {
                b.append(NetlinkRequest(m, "add elements to set \(where_) \(set.name)"))
            }
            c.setsCreated.append(set.name)
        }
        for map in desired.maps where installed.sets[map.set.name] == nil || changedSets.contains(map.set.name) {
            var set = map.set
            set.id = setID
            setID += 1
            b.append(NetlinkRequest(NFTables.newSet(set), "create map \(where_) \(set.name)"))
            c.setsCreated.append(set.name)
        }
        // 5. Map elements (their verdicts need the chains above), then rules (they need sets and chains).
        for (name, elements) in adds {
            for m in NFTables.elementMessages(elements, family: family, table: table, set: name) {
                b.append(NetlinkRequest(m, "add elements to map \(where_) \(name)"))
            }
            c.elementsAdded += elements.count
        }
        // Base chains last, so that nothing hooks into a half-built table in the same commit order.
        for name in (reloaded + newChains).sorted(by: { Self.order(desired, $0) < Self.order(desired, $1) }) {
            for r in desired.rules[name] ?? [] {
                b.append(NetlinkRequest(NFTables.newRule(r), "add rule to chain \(where_) \(name)"))
            }
        }
        c.chainsReloaded = reloaded

        // rtnetlink: compare as multisets so duplicates left by someone else are removed too.
        var haveRules = installed.ipRules
        for r in desired.ipRules {
            if let i = haveRules.firstIndex(of: r) { haveRules.remove(at: i) } else { c.ipRulesAdded.append(r) }
        }
        c.ipRulesDeleted = haveRules
        var haveRoutes = installed.routes
        for r in desired.routes {
            if let i = haveRoutes.firstIndex(of: r) { haveRoutes.remove(at: i) } else { c.routesAdded.append(r) }
        }
        c.routesDeleted = haveRoutes

        c.batchMessages = b.count
        batch = b
        changes = c
    }

    static func order(_ r: SteeringRuleset, _ chain: String) -> Int {
        r.chains.firstIndex { $0.name == chain } ?? Int.max
    }

    /// Compares what the kernel reports with what we would create (the kernel reports a verdict map's data
    /// length as its own verdict size, and no batch id).
    static func sameDefinition(_ installed: NFTSet, _ desired: NFTSet) -> Bool {
        installed.flags == desired.flags && installed.keyType == desired.keyType && installed.keyLength == desired.keyLength
            && installed.dataType == desired.dataType && installed.fieldLengths == desired.fieldLengths
            && installed.userdata == desired.userdata && installed.timeoutMs == desired.timeoutMs && installed.size == desired.size
            && (desired.dataType == NFTSet.verdictDataType || installed.dataLength == desired.dataLength)
    }
}

/// An element's identity within its set.
struct ElementKey: Hashable {
    var key: [UInt8]
    var keyEnd: [UInt8]?
    init(_ e: NFTElement) {
        key = e.key
        keyEnd = e.keyEnd
    }
}

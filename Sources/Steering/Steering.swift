import Model
import Netlink

/// Applies steering plans to the kernel of one network namespace: `table inet patronus`, ip rules with
/// protocol 77 in the 6200-6299 band, routes in tables 6201-6455 (docs/STEERING.md).
///
/// Guarantees:
/// - `apply` diffs the plan against what is installed and sends the nf_tables part as ONE atomic batch,
///   returning only after every message is acked (on any error nothing of the batch is applied). Moving a
///   class to another path changes map elements only.
/// - What is installed is read from the kernel at the first call and after any failure, so leftovers of a
///   crashed run are adopted or removed, never duplicated.
/// - Foreign tables, rules, routes and mark bits outside 0x00ff0000 are never touched.
///
/// Cost: a re-steer is one `sendto` + one `recv` (no dump); the first apply dumps our table, rules and routes.
/// Not thread-safe: one owner (the daemon's steering service).
public final class Steering {
    public let nftables: NFTablesClient
    public let routing: RouteNetlinkClient
    private var installed: InstalledState?
    private var lastPlan: SteeringPlan?
    private var lastRuleset: SteeringRuleset?
    private var interfaceIndex: [String: Int32] = [:]
    private var structureKey: StructureKey?
    private var structure: SteeringRuleset?

    /// Opens netlink sockets in the current namespace (nil) or in /var/run/netns/NAME.
    public convenience init(netns: String? = nil) throws(SteeringError) {
        do {
            self.init(nftables: try NFTablesClient(netns: netns), routing: try RouteNetlinkClient(netns: netns))
        } catch { throw .kernel(error) }
    }

    public init(nftables: NFTablesClient, routing: RouteNetlinkClient) {
        self.nftables = nftables
        self.routing = routing
    }

    /// The plan last applied successfully.
    public var currentPlan: SteeringPlan? { lastPlan }

    /// Makes the kernel match `plan`. Returns what changed (`elementsOnly` for a pure re-steer).
    @discardableResult
    public func apply(_ plan: SteeringPlan) throws(SteeringError) -> SteeringChanges {
        let ruleset = try compile(plan)
        do {
            let changes = try converge(to: ruleset)
            lastPlan = plan
            lastRuleset = ruleset
            return changes
        } catch let first {
            if case .invalidPlan = first { throw first }
            if case .missingInterface = first { throw first }
            // The kernel state may have changed behind our back: read it again and retry once.
            installed = nil
            interfaceIndex = [:]
            let changes = try converge(to: ruleset)
            lastPlan = plan
            lastRuleset = ruleset
            return changes
        }
    }

    /// Compiles with the structure (classes, paths, destinations) cached: a re-steer only rebuilds choices.
    private func compile(_ plan: SteeringPlan) throws(SteeringError) -> SteeringRuleset {
        if plan == lastPlan, let lastRuleset { return lastRuleset }
        let key = StructureKey(classes: plan.classes, paths: plan.paths, destinations: plan.destinations)
        if key != structureKey || structure == nil {
            structure = try SteeringCompiler.compileStructure(plan)
            structureKey = key
        }
        var ruleset = structure!
        try SteeringCompiler.addChoices(plan, to: &ruleset)
        return ruleset
    }

    private struct StructureKey: Equatable {
        var classes: [SteeringPlan.TrafficClass]
        var paths: [SteeringPlan.SteeringPath]
        var destinations: [SteeringPlan.Destination]
    }

    /// Re-reads the kernel and converges to the last applied plan (repairs drift); with no plan applied
    /// yet, only refreshes what is known to be installed (adopting leftovers until the first apply).
    @discardableResult
    public func reconcile() throws(SteeringError) -> SteeringChanges {
        installed = nil
        interfaceIndex = [:]
        guard let lastRuleset else {
            _ = try currentState()
            return SteeringChanges()
        }
        return try converge(to: lastRuleset)
    }

    /// Removes everything Steering installed: our table, our ip rules, our routes. Foreign objects stay.
    @discardableResult
    public func removeAll() throws(SteeringError) -> SteeringChanges {
        installed = nil
        let state = try currentState()
        var c = SteeringChanges()
        installed = nil
        if state.tableExists {
            try kernel { () throws(NetlinkError) in
                try nftables.commit([NetlinkRequest(NFTables.deleteTable(family: SteeringNames.family, name: SteeringNames.table),
                                                    "delete table inet \(SteeringNames.table)")])
            }
            c.tableDeleted = true
            c.batchMessages = 1
        }
        for r in state.ipRules { try deleteRule(r) }
        c.ipRulesDeleted = state.ipRules
        for r in state.routes { try deleteRoute(r) }
        c.routesDeleted = state.routes
        installed = InstalledState()
        lastPlan = nil
        lastRuleset = nil
        return c
    }

    /// Packets and bytes per class and path (the `<class>_path<slot>` chains), and new flows per class (the
    /// `classify` and `classify_reply` rules), read from the kernel in one dump. For the status report and metrics.
    public func counters() throws(SteeringError) -> SteeringCounters {
        let rules: [NFTables.ListedRule]
        do { rules = try nftables.rules(family: SteeringNames.family, table: SteeringNames.table) } catch {
            if error.errno == 2 { return SteeringCounters() } // no table: nothing counted
            throw .kernel(error)
        }
        var out = SteeringCounters()
        let plan = lastPlan
        for r in rules {
            guard let (packets, bytes) = r.counter else { continue }
            if r.chain == SteeringNames.classifyChain || r.chain == SteeringNames.classifyReplyChain {
                let comment = NFTUserdata.comment(in: r.userdata) ?? ""
                let name = comment.hasPrefix("class ") ? String(comment.dropFirst("class ".count)) : comment
                out.flowsPerClass[name, default: 0] += packets
            } else if let c = plan?.classes.first(where: { r.chain.hasPrefix($0.name + "_path") }),
                      let slot = UInt8(r.chain.dropFirst(c.name.count + "_path".count)) {
                out.paths.append(.init(className: c.name, slot: slot, packets: packets, bytes: bytes))
            }
        }
        return out
    }

    /// What is installed, as last read or maintained.
    public func currentState() throws(SteeringError) -> InstalledState {
        if let installed { return installed }
        do {
            let s = try InstalledState.read(nft: nftables, rtnl: routing)
            installed = s
            return s
        } catch { throw .kernel(error) }
    }

    private func converge(to ruleset: SteeringRuleset) throws(SteeringError) -> SteeringChanges {
        let state = try currentState()
        let diff = SteeringDiff(installed: state, desired: ruleset)
        // Until this converge completes, what is installed is unknown: a failure makes the next call re-read.
        installed = nil
        var changes = diff.changes
        // Routes and rules first, so a mark never points at an empty table; deletions last.
        for r in diff.changes.routesAdded {
            let route: IPRoute
            do {
                route = try kernelRoute(r)
            } catch .missingInterface {
                // The tunnel is not up (yet): its packets fall through the empty table to the main one.
                // Everything else is applied; the next apply adds the route once the interface exists.
                changes.routesAdded.removeAll { $0 == r }
                changes.routesSkipped.append(r)
                continue
            }
            try kernel { () throws(NetlinkError) in try routing.route(route, .replace) }
        }
        for r in diff.changes.ipRulesAdded { try kernel { () throws(NetlinkError) in try routing.addRule(r) } }
        try kernel { () throws(NetlinkError) in try nftables.commit(diff.batch) }
        for r in diff.changes.ipRulesDeleted { try deleteRule(r) }
        for r in diff.changes.routesDeleted { try deleteRoute(r) }
        if !changes.routesSkipped.isEmpty {
            var known = Self.afterApply(ruleset)
            known.routes.removeAll { changes.routesSkipped.contains($0) }
            installed = known
        } else if diff.changes.elementsOnly {
            // The re-steer fast path: only map contents changed; keep the rest of what we know.
            var known = state
            for map in ruleset.maps { known.mapElements[map.set.name] = map.elements }
            installed = known
        } else {
            installed = Self.afterApply(ruleset)
        }
        return changes
    }

    /// Deleting what is already gone is success: the goal is its absence.
    private func deleteRule(_ r: IPRule) throws(SteeringError) {
        do { try routing.deleteRule(r) } catch {
            if error.errno != 2 /* ENOENT */ { throw .kernel(error) }
        }
    }

    /// A route whose interface is gone went with it (the kernel flushes a device's routes).
    private func deleteRoute(_ r: SteeringRuleset.Route) throws(SteeringError) {
        let route: IPRoute
        do { route = try kernelRoute(r) } catch .missingInterface { return }
        do { try routing.route(route, .delete) } catch {
            if error.errno != 3 /* ESRCH */ && error.errno != 2 /* ENOENT */ { throw .kernel(error) }
        }
    }

    private func kernel<T>(_ body: () throws(NetlinkError) -> T) throws(SteeringError) -> T {
        do { return try body() } catch { throw .kernel(error) }
    }

    private func kernelRoute(_ r: SteeringRuleset.Route) throws(SteeringError) -> IPRoute {
        let index: Int32
        if let known = interfaceIndex[r.interface] {
            index = known
        } else {
            do {
                index = try routing.link(named: r.interface).index
            } catch {
                if error.errno == 19 /* ENODEV */ {
                    throw .missingInterface(path: UInt8(truncatingIfNeeded: r.table - SteeringPlan.tableBase), interface: r.interface)
                }
                throw .kernel(error)
            }
            interfaceIndex[r.interface] = index
        }
        return IPRoute(destination: r.prefix.network.value, prefixLength: r.prefix.length, table: r.table,
                       outputInterface: index, gateway: r.gateway?.value, protocolTag: SteeringNames.protocolTag)
    }

    /// The installed state right after `ruleset` committed, so the next diff needs no dump.
    static func afterApply(_ r: SteeringRuleset) -> InstalledState {
        var s = InstalledState()
        s.tableExists = true
        for c in r.chains { s.chains[c.name] = c }
        for (chain, rules) in r.rules { s.ruleFingerprints[chain] = rules.map { InstalledState.fingerprint($0.userdata) } }
        for set in r.staticSets { s.sets[set.set.name] = set.set }
        for map in r.maps {
            s.sets[map.set.name] = map.set
            s.mapElements[map.set.name] = map.elements
        }
        s.ipRules = r.ipRules
        s.routes = r.routes
        return s
    }
}

/// Counters of the installed ruleset (see `Steering.counters()`).
public struct SteeringCounters: Hashable, Sendable {
    public struct PathCounter: Hashable, Sendable {
        public var className: String
        public var slot: UInt8
        public var packets: UInt64
        public var bytes: UInt64
    }

    /// Packets/bytes steered per (class, path).
    public var paths: [PathCounter] = []
    /// First packets classified per class (= flows), by class name; "no policy matched: not steered" too.
    public var flowsPerClass: [String: UInt64] = [:]

    public init() {}

    public func packets(className: String, slot: UInt8) -> UInt64 {
        paths.first { $0.className == className && $0.slot == slot }?.packets ?? 0
    }
}

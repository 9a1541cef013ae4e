import Model
import Netlink

/// The one owner of everything the router installs in the kernel of one network namespace: `table inet
/// patronus`, our ip rules in the 6200-6299 band, the per-path and per-uplink routing tables (`Conventions`,
/// docs/STEERING.md). One plan, one diff.
///
/// Guarantees:
/// - `apply` diffs the plan against what is installed and sends the nf_tables part as ONE atomic batch,
///   returning only after every message is acked (on any error nothing of the batch is applied). Moving a
///   class to another path changes map elements only.
/// - What is installed is read from the kernel at the first call and after any failure, so leftovers of a
///   crashed run are adopted or removed, never duplicated.
/// - Foreign tables, rules, routes and mark bits outside our fields are never touched.
///
/// Cost: a re-steer is one `sendto` + one `recv` (no dump); the first apply dumps our table, rules and routes.
/// Not thread-safe: one owner (the daemon's steering service).
public final class Steering {
    public let nftables: NFTablesClient
    public let routing: RouteNetlinkClient
    private var installed: InstalledState?
    /// `table ip patronus_egress` (copies, shaper bands), as installed; nil: unknown, read before the next diff.
    private var installedEgress: InstalledState?
    private var lastPlan: SteeringPlan?
    private var lastRuleset: SteeringRuleset?
    private var lastEgress: SteeringRuleset?
    private var interfaceIndex: [String: Int32] = [:]
    private var structureKey: StructureKey?
    private var structure: SteeringRuleset?
    /// The main table's routes out of the pinned uplinks, read when the pins change or on request.
    private var uplinkRoutes: UplinkRoutes = [:]
    private var uplinkRoutesRead: [SteeringPlan.UplinkPin]?
    /// The nf_tables generation at the last drift check, and how many batches we committed since: each
    /// committed batch bumps the generation by one, so any other difference is somebody else's commit.
    private var checkedGeneration: UInt32?
    private var commitsSinceCheck: UInt32 = 0
    /// The htb shapers of the plan's tunnels (docs/SHAPING.md).
    private let shaping: ShaperInstaller
    /// The ifbs and LAN filters of download shaping (their htbs are `shaping`'s).
    private let downloads: DownloadRedirects

    /// Opens netlink sockets in the current namespace (nil) or in /var/run/netns/NAME.
    public convenience init(netns: String? = nil) throws(SteeringError) {
        do {
            self.init(nftables: try NFTablesClient(netns: netns), routing: try RouteNetlinkClient(netns: netns))
        } catch { throw .kernel(error) }
    }

    public init(nftables: NFTablesClient, routing: RouteNetlinkClient) {
        self.nftables = nftables
        self.routing = routing
        shaping = ShaperInstaller(routing: routing)
        downloads = DownloadRedirects(routing: routing)
    }

    /// The shapers and download redirects of `plan`: the ifbs first, so their htbs can be installed.
    private func convergeShaping(_ plan: SteeringPlan, changes: inout SteeringChanges) {
        downloads.converge(plan.downloadShapers, changes: &changes)
        shaping.converge(plan.shapers + plan.downloadShapers.map(\.shaper), changes: &changes)
        shaping.removeLeftovers(tunnels: Set(plan.paths.map(\.interface)), changes: &changes)
    }

    /// The plan last applied successfully.
    public var currentPlan: SteeringPlan? { lastPlan }

    /// Makes the kernel match `plan`. Returns what changed (`elementsOnly` for a pure re-steer).
    /// `rereadUplinks`: the main table's routes out of an uplink changed (its address, gateway or carrier):
    /// read them again for the uplink tables. They are read anyway when the plan's uplinks change.
    @discardableResult
    public func apply(_ plan: SteeringPlan, rereadUplinks: Bool = false) throws(SteeringError) -> SteeringChanges {
        // Only shaper rates (or which tunnels are shaped) changed: rtnetlink only, nothing for nf_tables.
        // (Not while routes wait for their interface: every apply retries those.)
        if !rereadUplinks, let lastPlan, lastPlan.shapers != plan.shapers || lastPlan.downloadShapers != plan.downloadShapers,
           !routesWaiting, Self.withoutShapers(lastPlan) == Self.withoutShapers(plan) {
            var changes = SteeringChanges()
            convergeShaping(plan, changes: &changes)
            self.lastPlan = plan
            return changes
        }
        if rereadUplinks || uplinkRoutesRead != plan.uplinks {
            uplinkRoutes = try readUplinkRoutes(plan.uplinks)
            uplinkRoutesRead = plan.uplinks
        }
        let ruleset = try compile(plan)
        let egress = try compileEgress(plan)
        do {
            var changes = try converge(to: ruleset, egress: egress)
            lastPlan = plan
            lastRuleset = ruleset
            lastEgress = egress
            convergeShaping(plan, changes: &changes)
            return changes
        } catch let first {
            if case .invalidPlan = first { throw first }
            if case .missingInterface = first { throw first }
            // The kernel state may have changed behind our back: read it again and retry once.
            installed = nil
            installedEgress = nil
            interfaceIndex = [:]
            var changes = try converge(to: ruleset, egress: egress)
            lastPlan = plan
            lastRuleset = ruleset
            lastEgress = egress
            convergeShaping(plan, changes: &changes)
            return changes
        }
    }

    /// The egress table of a plan (nil when no class duplicates and nothing is shaped). `dup` names its
    /// interface by index, so the tunnels' indexes are read on every apply with a duplicated class: a tunnel
    /// re-created under the same name gets a new index, which changes the copy rule's fingerprint and
    /// reloads it.
    private func compileEgress(_ plan: SteeringPlan) throws(SteeringError) -> SteeringRuleset? {
        var index: [String: Int32] = [:]
        if plan.classes.contains(where: \.duplicate) {
            let links = try kernel { () throws(NetlinkError) in try routing.links() }
            index = Dictionary(links.map { ($0.name, $0.index) }, uniquingKeysWith: { a, _ in a })
        }
        return try SteeringCompiler.compileEgress(plan, interfaceIndex: index)
    }

    /// The plan as nf_tables sees it: the egress table's band rules exist while anything is shaped; rates and
    /// interfaces of the shapers are rtnetlink's business only.
    private static func withoutShapers(_ plan: SteeringPlan) -> SteeringPlan {
        var p = plan
        p.shapers = plan.shapers.isEmpty ? [] : [SteeringPlan.Shaper(interface: "-", rateBitsPerSecond: 0)]
        p.downloadShapers = downloadStructure(plan)
        return p
    }

    /// The download shapers as the egress table sees them: uplinks and tunnels, not rates.
    private static func downloadStructure(_ plan: SteeringPlan) -> [SteeringPlan.DownloadShaper] {
        plan.downloadShapers.map { SteeringPlan.DownloadShaper(slot: $0.slot, tunnels: $0.tunnels, lanPrefixes: [], rateBitsPerSecond: 0) }
    }

    /// Every installed shaper's rate and, per band, bytes sent, bytes waiting and drops (one class dump per
    /// shaped interface), for status and metrics.
    public func shaperStatistics() throws(SteeringError) -> [ShaperStatistics] {
        try kernel { () throws(NetlinkError) in try shaping.statistics() }
    }

    /// Compiles with the structure (classes, paths, destinations) cached: a re-steer only rebuilds choices.
    private func compile(_ plan: SteeringPlan) throws(SteeringError) -> SteeringRuleset {
        let key = StructureKey(classes: plan.classes, paths: plan.paths, destinations: plan.destinations,
                               uplinks: plan.uplinks, uplinkRoutes: uplinkRoutes, relay: plan.relay)
        if plan == lastPlan, key == structureKey, let lastRuleset { return lastRuleset }
        if key != structureKey || structure == nil {
            structure = try SteeringCompiler.compileStructure(plan, uplinkRoutes: uplinkRoutes)
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
        var uplinks: [SteeringPlan.UplinkPin]
        var uplinkRoutes: UplinkRoutes
        var relay: Bool
    }

    /// The main table's routes out of each pinned uplink that exists now.
    private func readUplinkRoutes(_ pins: [SteeringPlan.UplinkPin]) throws(SteeringError) -> UplinkRoutes {
        guard !pins.isEmpty else { return [:] }
        return try kernel { () throws(NetlinkError) in
            let links = Dictionary(try routing.links().map { ($0.name, $0.index) }, uniquingKeysWith: { a, _ in a })
            let main = try routing.routes(table: Conventions.mainTable)
            var out: UplinkRoutes = [:]
            for pin in pins {
                guard let index = links[pin.interface] else { continue }
                out[pin.interface] = main.filter { $0.table == Conventions.mainTable && $0.outputInterface == index }.map {
                    UplinkRoute(prefix: IPv4Prefix(IPv4Address($0.destination), length: $0.prefixLength),
                                gateway: $0.gateway.map(IPv4Address.init))
                }
            }
            return out
        }
    }

    /// Re-reads the kernel and converges to the last applied plan (repairs drift); with no plan applied
    /// yet, only refreshes what is known to be installed (adopting leftovers until the first apply).
    @discardableResult
    public func reconcile() throws(SteeringError) -> SteeringChanges {
        installed = nil
        installedEgress = nil
        interfaceIndex = [:]
        guard let lastRuleset else {
            _ = try currentState()
            return SteeringChanges()
        }
        // A tunnel re-created under its name has a new index (its routes went with the old one, which is
        // what brings us here): the copy rules are compiled again with the indexes of now.
        if let lastPlan { lastEgress = try compileEgress(lastPlan) }
        return try converge(to: lastRuleset, egress: lastEgress)
    }

    /// Finds changes somebody else made to what we own and puts our state back (the last plan). Cheap
    /// enough to run several times a second: one nf_tables generation request and one dump of the ip
    /// rules; our routes are read only when `routesTouched` (a route of ours was deleted, as rtnetlink
    /// notifications tell). Foreign objects are never touched. Returns what was repaired, nil when nothing
    /// had drifted (or no plan is applied yet).
    public func repairDrift(routesTouched: Bool = false) throws(SteeringError) -> SteeringChanges? {
        guard let lastRuleset else { return nil }
        var shaperRepair: SteeringChanges?
        let brokenShapers = try kernel { () throws(NetlinkError) in try shaping.drifted() }
        if !brokenShapers.isEmpty {
            var c = SteeringChanges()
            shaping.repair(brokenShapers.keys.sorted(), changes: &c)
            c.shaperDrift = brokenShapers.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value.joined(separator: ", "))" }
            shaperRepair = c
        }
        if let plan = lastPlan, !plan.downloadShapers.isEmpty {
            let problems = try kernel { () throws(NetlinkError) in try downloads.differences() }.filter { !$0.hasPrefix("no LAN device") }
            if !problems.isEmpty {
                var c = shaperRepair ?? SteeringChanges()
                convergeShaping(plan, changes: &c)
                c.shaperDrift += problems
                shaperRepair = c
            }
        }
        let generation = try kernel { () throws(NetlinkError) in try nftables.generation() }
        var drifted = checkedGeneration.map { generation != $0 &+ commitsSinceCheck } ?? true
        // From here on, only our own commits (the repair's) move the generation.
        checkedGeneration = generation
        commitsSinceCheck = 0
        if !drifted {
            let rules = try kernel { () throws(NetlinkError) in try routing.rules().filter(SteeringNames.isOurs) }
            drifted = Set(rules) != Set(lastRuleset.ipRules)
        }
        guard drifted || routesTouched else { return shaperRepair }
        var changes = try reconcile()
        if let shaperRepair {
            changes.shapersInstalled += shaperRepair.shapersInstalled
            changes.shaperProblems += shaperRepair.shaperProblems
            changes.shaperDrift = shaperRepair.shaperDrift
        }
        return changes.isEmpty ? nil : changes
    }

    /// Removes everything Steering installed: our table, our ip rules, our routes. Foreign objects stay.
    @discardableResult
    public func removeAll() throws(SteeringError) -> SteeringChanges {
        installed = nil
        let state = try currentState()
        var c = SteeringChanges()
        shaping.removeAll(changes: &c)
        downloads.converge([], changes: &c)
        installed = nil
        if state.tableExists {
            try kernel { () throws(NetlinkError) in
                try nftables.commit([NetlinkRequest(NFTables.deleteTable(family: SteeringNames.family, name: SteeringNames.table),
                                                    "delete table inet \(SteeringNames.table)")])
            }
            c.tableDeleted = true
            c.batchMessages = 1
        }
        installedEgress = nil
        if try egressState().tableExists {
            try kernel { () throws(NetlinkError) in try nftables.commit([Self.deleteEgressTable]) }
            c.egressTableDeleted = true
            c.batchMessages += 1
        }
        installedEgress = InstalledState()
        lastEgress = nil
        for r in state.ipRules { try deleteRule(r) }
        c.ipRulesDeleted = state.ipRules
        for r in state.routes { try deleteRoute(r) }
        c.routesDeleted = state.routes
        installed = InstalledState()
        lastPlan = nil
        lastRuleset = nil
        uplinkRoutesRead = nil
        return c
    }

    /// Packets and bytes per class and path (the `<class>_path<id>` chains), new flows per class (the
    /// `classify` and `classify_reply` rules) and refused transit packets (the site chains' transit rules), read from the kernel
    /// in one dump. For the status report and metrics.
    public func counters() throws(SteeringError) -> SteeringCounters {
        let rules: [NFTables.ListedRule]
        do { rules = try nftables.rules(family: SteeringNames.family, table: SteeringNames.table) } catch {
            if error.errno == 2 { return SteeringCounters() } // no table: nothing counted
            throw .kernel(error)
        }
        var out = SteeringCounters()
        let classNames = lastPlan?.classes.map(\.name) ?? []
        for r in rules {
            guard let (packets, bytes) = r.counter else { continue }
            if r.chain == SteeringNames.classifyChain || r.chain == SteeringNames.classifyReplyChain {
                let comment = NFTUserdata.comment(in: r.userdata) ?? ""
                let name = comment.hasPrefix("class ") ? String(comment.dropFirst("class ".count)) : comment
                out.flowsPerClass[name, default: 0] += packets
            } else if let (className, pathID) = SteeringNames.parseClassPathChain(r.chain, classNames: classNames) {
                out.paths.append(.init(className: className, pathID: pathID, packets: packets, bytes: bytes))
            } else if NFTUserdata.comment(in: r.userdata) == SteeringCompiler.transitRefusedComment {
                out.transitRefused = (out.transitRefused ?? 0) + packets
            } else if let (className, pathID) = SteeringNames.parse(r.chain, classNames: classNames, SteeringNames.duplicateChain) {
                out.duplicatesDropped.append(.init(className: className, pathID: pathID, packets: packets, bytes: bytes))
            }
        }
        guard lastPlan?.classes.contains(where: \.duplicate) ?? false else { return out }
        let copyRules: [NFTables.ListedRule]
        do { copyRules = try nftables.rules(family: SteeringNames.egressFamily, table: SteeringNames.egressTable) } catch {
            if error.errno == 2 { return out }
            throw .kernel(error)
        }
        for r in copyRules {
            guard let (packets, bytes) = r.counter,
                  let (className, pathID) = SteeringNames.parse(r.chain, classNames: classNames, SteeringNames.copyChain) else { continue }
            out.copiesSent.append(.init(className: className, pathID: pathID, packets: packets, bytes: bytes))
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

    /// `table ip patronus_egress` as installed (read when unknown). An earlier version's copy table goes
    /// then, once: it is ours, and left in place its hook would go on copying.
    private func egressState() throws(SteeringError) -> InstalledState {
        if let installedEgress { return installedEgress }
        let s = try kernel { () throws(NetlinkError) in
            try InstalledState.read(nft: nftables, family: SteeringNames.egressFamily, table: SteeringNames.egressTable)
        }
        try removeLegacyTables()
        installedEgress = s
        return s
    }

    /// Deletes the tables of ours that earlier versions installed under other names
    /// (`Conventions.legacyTables`), if any are there.
    private func removeLegacyTables() throws(SteeringError) {
        let present = try kernel { () throws(NetlinkError) in
            let names = Set(try nftables.tables(family: SteeringNames.egressFamily).map(\.name))
            return Conventions.legacyTables.filter(names.contains)
        }
        guard !present.isEmpty else { return }
        try kernel { () throws(NetlinkError) in
            try nftables.commit(present.map {
                NetlinkRequest(NFTables.deleteTable(family: SteeringNames.egressFamily, name: $0), "delete table ip \($0) (an earlier version's)")
            })
        }
        commitsSinceCheck &+= 1
    }

    static let deleteEgressTable = NetlinkRequest(NFTables.deleteTable(family: SteeringNames.egressFamily, name: SteeringNames.egressTable),
                                                "delete table ip \(SteeringNames.egressTable)")

    /// The last converge left routes out because their interface did not exist yet.
    private var routesWaiting = false

    private func converge(to ruleset: SteeringRuleset, egress: SteeringRuleset?) throws(SteeringError) -> SteeringChanges {
        routesWaiting = true // until this converge completes
        let state = try currentState()
        let egressInstalled = try egressState()
        let diff = SteeringDiff(installed: state, desired: ruleset)
        // The egress table goes in the same atomic batch: a re-steer moves the class and its copies together.
        var egressBatch: [NetlinkRequest] = []
        var egressChanges = SteeringChanges()
        if let egress {
            let egressDiff = SteeringDiff(installed: egressInstalled, desired: egress)
            egressBatch = egressDiff.batch
            egressChanges = egressDiff.changes
        } else if egressInstalled.tableExists {
            egressBatch = [Self.deleteEgressTable]
            egressChanges.egressTableDeleted = true
        }
        // Until this converge completes, what is installed is unknown: a failure makes the next call re-read.
        installed = nil
        installedEgress = nil
        var changes = diff.changes
        changes.merge(egress: egressChanges)
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
        let batch = diff.batch + egressBatch
        try kernel { () throws(NetlinkError) in try nftables.commit(batch) }
        if !batch.isEmpty { commitsSinceCheck &+= 1 }
        if let egress {
            var known = Self.afterApply(egress)
            known.ipRules = []
            known.routes = []
            installedEgress = known
        } else {
            installedEgress = InstalledState()
        }
        for r in diff.changes.ipRulesDeleted { try deleteRule(r) }
        for r in diff.changes.routesDeleted { try deleteRoute(r) }
        routesWaiting = !changes.routesSkipped.isEmpty
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
                    throw .missingInterface(table: r.table, interface: r.interface)
                }
                throw .kernel(error)
            }
            interfaceIndex[r.interface] = index
        }
        return IPRoute(destination: r.prefix.network.value, prefixLength: r.prefix.length, table: r.table,
                       outputInterface: index, gateway: r.gateway?.value,
                       protocolTag: SteeringNames.protocolTag(forTable: r.table))
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
        public var pathID: Int64
        public var packets: UInt64
        public var bytes: UInt64
    }

    /// Packets/bytes steered per (class, path).
    public var paths: [PathCounter] = []
    /// First packets classified per class (= flows), by class name; "no policy matched: not steered" too.
    public var flowsPerClass: [String: UInt64] = [:]
    /// Duplicated classes: copies this site sent per (class, path the copy took).
    public var copiesSent: [PathCounter] = []
    /// Duplicated classes: second copies this site received and dropped, per (class, path they arrived by).
    public var duplicatesDropped: [PathCounter] = []
    /// Packets that arrived by one of our tunnels bound for a remote site, dropped (the site chains' transit
    /// rules of a site that does not relay); nil when they are not installed (a relay, or no tunnel).
    public var transitRefused: UInt64?

    public init() {}

    public func packets(className: String, pathID: Int64) -> UInt64 {
        paths.first { $0.className == className && $0.pathID == pathID }?.packets ?? 0
    }
}

import Foundation
import Model
import Routing
import Steering
import Store

/// Answers "why does this flow go there?" from what is installed, not from the daemon's memory: the kernel's
/// steering table (`InstalledSteering`), a route lookup with the mark its path chain writes (so the real ip
/// rules and tables answer), and the database (sites and their prefixes, policies, paths and their latest
/// figures, the daemon's last recorded moves). Read-only, in the namespace given (nil: the current one).
///
/// Cost: one dump of our table and its maps, one rule dump and a few route lookups; milliseconds.
public final class SteeringInspector {
    let store: Store
    let kernel: SteeringLookup
    let engine = RoutingEngine()

    public init(store: Store, netns: String?) throws(InspectionError) {
        self.store = store
        do { kernel = try SteeringLookup(netns: netns) } catch { throw .kernel(error) }
    }

    // MARK: explain

    /// What the user asks: a destination, optionally a protocol and port, a source and a DSCP.
    public struct Query: Sendable {
        public var destination: IPv4Address
        public var proto: TransportProtocol?
        public var port: UInt16?
        public var source: IPv4Address?
        public var dscp: UInt8

        public init(destination: IPv4Address, proto: TransportProtocol? = nil, port: UInt16? = nil,
                    source: IPv4Address? = nil, dscp: UInt8 = 0) {
            self.destination = destination
            self.proto = proto
            self.port = port
            self.source = source
            self.dscp = dscp
        }
    }

    public func explain(_ query: Query) throws(InspectionError) -> FlowExplanation {
        let view = try DatabaseView(store)
        guard let (site, prefix) = view.site(containing: query.destination) else {
            throw .notSteered("\(query.destination) is not in any site's prefixes")
        }
        let installed = try ask { () throws(SteeringError) in try kernel.installed() }
        guard installed.tableExists else {
            throw .notSteered("no table inet \(SteeringNames.table) in this network namespace (is the daemon running here? "
                              + "give the router's namespace with --netns)")
        }
        // The source the classifier and the flow hash see: the one given, else the one this host would pick.
        let origin = try origin(of: query)
        let flow = Flow(source: origin.source, destination: query.destination, proto: query.proto, port: query.port,
                        dscp: query.dscp)
        var e = FlowExplanation(flow: .init(flow), site: .init(id: site.id, name: site.name, prefix: prefix.description))
        guard let policy = SteeringPlanner.classify(flow, policies: view.policies) else {
            throw .notSteered("\(flow) matches no enabled policy: the kernel marks it unclassified and does not steer it")
        }
        e.policy = policy.name
        e.strategy = policy.strategy.description
        guard let classMark = installed.classMarks[policy.name] else {
            throw .notSteered("policy \(policy.name) (the class of \(flow)) is not in the kernel's classify chain yet: "
                              + "the daemon has not applied it (is it running?)")
        }
        e.classMark = hex(classMark)
        guard let siteChain = installed.siteChain(for: query.destination) else {
            throw .notSteered("\(query.destination) (site \(site.name)) is not in the kernel's \(SteeringNames.sitesMap) map: "
                              + "no path to \(site.name) is installed")
        }
        guard let decision = installed.decide(siteChain: siteChain, classMark: classMark, source: origin.source,
                                              destination: query.destination) else {
            throw .notSteered("the kernel's map \(siteChain) has no path for class \(policy.name)")
        }
        e.kernel = FlowExplanation.KernelPath(siteChain: siteChain, balanceChain: decision.balance?.chain,
                                              bucket: decision.balance.map { Int($0.bucket) },
                                              bucketCount: decision.balance.map { Int($0.buckets) },
                                              pathChain: decision.pathChain, mark: decision.mark.map(hex),
                                              flowKey: decision.flowKey.map(hex), establishedChain: decision.establishedChain)
        let hop = try route(decision, to: query.destination, origin: origin)
        e.kernel?.table = hop.table
        e.kernel?.rule = hop.rule
        e.kernel?.interface = hop.interface
        e.kernel?.gateway = hop.gateway
        let sitePaths = view.paths(to: site.id)
        e.candidates = sitePaths
        let used = hop.interface.flatMap { name in sitePaths.first { $0.wgInterface == name } }
        e.path = used
        // Every path the class can take to the site (one, or each bucket's), for the reason and the shares.
        var all = uses(installed, siteChain: siteChain, classMark: classMark, destination: query.destination,
                       origin: origin, sitePaths: sitePaths, siteName: site.name)
        if let i = all.firstIndex(where: { $0.steered.chain == decision.pathChain }) { all.insert(all.remove(at: i), at: 0) }
        let judged = judge(policy: policy, site: site, uses: all, view: view)
        e.reason = judged.reason
        e.winner = judged.winner
        e.runnerUp = judged.runnerUp
        var established: String?
        if let later = decision.establishedChain, later != decision.pathChain {
            established = "the kernel steers this flow's first packet to \(decision.pathChain) but its later ones to \(later) "
                + "(flows element \(decision.flowKey.map(hex) ?? "?")): the two maps disagree"
        }
        e.disagreements = ([all.first?.problem] + [judged.disagreement, established]).compactMap { $0 }
        if policy.duplicate {
            e.duplicate = true
            e.copy = all.first { $0.steered.chain == decision.pathChain }.flatMap { use in
                copyTarget(installed, policy: policy, classMark: classMark, use: use, sitePaths: sitePaths)
            }
        }
        if let balance = decision.balance {
            e.reason = "flow hash bucket \(balance.bucket) of \(balance.buckets) (jhash of source . destination, seed "
                + "\(hex(balance.seed))) takes \(used.map { "path \($0.id) \($0.name ?? "")" } ?? "no path"); " + e.reason
        }
        return e
    }

    // MARK: status

    /// Every shaped tunnel in the namespace, from the kernel, with the path whose tunnel it is (`paths`).
    public func shapers(paths: [StatusSnapshot.Path]) throws(InspectionError) -> [StatusSnapshot.Shaper] {
        let installed = try ask { () throws(SteeringError) in try kernel.shapers() }
        return installed.map { s in
            StatusSnapshot.Shaper(interface: s.interface, pathId: paths.first { $0.wgInterface == s.interface }?.id,
                                  qdisc: "htb", direction: s.interface.hasPrefix(Conventions.downloadDevicePrefix) ? "download" : "upload",
                                  rateBps: s.rateBitsPerSecond, queueDelayMs: s.queueDelayMs,
                                  bands: s.bands.map {
                                      .init(band: $0.band.rawValue, sentBytes: $0.sentBytes, sentPackets: $0.sentPackets,
                                            backlogBytes: $0.backlogBytes, queuedPackets: $0.queuedPackets, drops: $0.drops)
                                  })
        }
    }

    /// Whether the kernel refuses transit between our tunnels (the site chains' transit rules) and how many packets it
    /// refused; nil when our table is not in this namespace.
    public func transit() throws(InspectionError) -> StatusSnapshot.Transit? {
        let installed = try ask { () throws(SteeringError) in try kernel.installed() }
        guard installed.tableExists else { return nil }
        guard let refused = installed.transitRefused else {
            return StatusSnapshot.Transit(policy: "forwarded", refusedPackets: nil)
        }
        return StatusSnapshot.Transit(policy: "refused", refusedPackets: refused.packets)
    }

    /// For every active remote site and every enabled class: the path(s) the kernel sends the class by now,
    /// why, and any disagreement with the database.
    public func currentSteering() throws(InspectionError) -> [StatusSnapshot.ClassSteering] {
        let view = try DatabaseView(store)
        let installed = try ask { () throws(SteeringError) in try kernel.installed() }
        guard installed.tableExists else {
            throw .invalid("no table inet \(SteeringNames.table) in this network namespace (give the router's "
                              + "namespace with --netns)")
        }
        var out: [StatusSnapshot.ClassSteering] = []
        for site in view.sites {
            let sitePaths = view.paths(to: site.id)
            guard !sitePaths.isEmpty else { continue }
            let probe = site.overlay ?? site.prefixes.first?.network
            for policy in SteeringPlanner.classOrder(view.policies) {
                var entry = StatusSnapshot.ClassSteering(site: site.id, siteName: site.name, policy: policy.name,
                                                         strategy: policy.strategy.description, paths: [], winner: nil,
                                                         runnerUp: nil, reason: "", disagreement: nil)
                guard let probe, let siteChain = installed.siteChain(for: probe) else {
                    entry.reason = "not steered"
                    entry.disagreement = "the kernel has no steering to \(site.name) while the database has paths to it"
                    out.append(entry)
                    continue
                }
                guard let classMark = installed.classMarks[policy.name] else {
                    entry.reason = "not steered"
                    entry.disagreement = "policy \(policy.name) is enabled in the database but not in the kernel's classify chain"
                    out.append(entry)
                    continue
                }
                let all = uses(installed, siteChain: siteChain, classMark: classMark, destination: probe, origin: nil,
                               sitePaths: sitePaths, siteName: site.name)
                guard !all.isEmpty else {
                    entry.reason = "not steered"
                    entry.disagreement = "the kernel's map \(siteChain) has no path for class \(policy.name)"
                    out.append(entry)
                    continue
                }
                entry.paths = all.map(\.steered)
                if policy.duplicate {
                    entry.duplication = sitePaths.map { path in
                        StatusSnapshot.DuplicationCounters(
                            pathId: path.id, name: path.name,
                            copiesSent: installed.copyCounters[SteeringNames.copyChain(policy.name, path.id)]?.packets,
                            duplicatesDropped: installed.chainCounters[SteeringNames.duplicateChain(policy.name, path.id)]?.packets)
                    }
                    entry.copies = all.compactMap { use in
                        copyTarget(installed, policy: policy, classMark: classMark, use: use, sitePaths: sitePaths)
                    }
                }
                let judged = judge(policy: policy, site: site, uses: all, view: view)
                entry.reason = judged.reason
                entry.winner = judged.winner
                entry.runnerUp = judged.runnerUp
                entry.disagreement = all.compactMap(\.problem).first ?? judged.disagreement
                out.append(entry)
            }
        }
        return out
    }

    /// Where the egress table copies the class's packets that leave by `use`'s chain; nil when it does not.
    private func copyTarget(_ installed: InstalledSteering, policy: Policy, classMark: UInt32, use: Use,
                            sitePaths: [StatusSnapshot.Path]) -> StatusSnapshot.CopyTarget? {
        guard let chain = installed.copyChain(classMark: classMark, pathChain: use.steered.chain) else { return nil }
        let id = SteeringNames.parse(chain, classNames: [policy.name], SteeringNames.copyChain)?.pathID
        let path = id.flatMap { id in sitePaths.first { $0.id == id } }
        return StatusSnapshot.CopyTarget(fromPathId: use.path?.id, pathId: path?.id, name: path?.name, chain: chain,
                                         copiesSent: installed.copyCounters[chain]?.packets)
    }

    /// One path chain a class takes to a site, as the kernel routes its mark.
    struct Use {
        var steered: StatusSnapshot.SteeredPath
        /// The database's path whose tunnel the route leaves by.
        var path: StatusSnapshot.Path?
        /// Why the route does not lead into a path of the site, if it does not.
        var problem: String?
    }

    private func uses(_ installed: InstalledSteering, siteChain: String, classMark: UInt32, destination: IPv4Address,
                      origin: Origin?, sitePaths: [StatusSnapshot.Path], siteName: String) -> [Use] {
        let shares = installed.bucketShares(siteChain: siteChain, classMark: classMark)
        return installed.pathChains(siteChain: siteChain, classMark: classMark).map { chain in
            let mark = installed.chainMarks[chain]
            var use = Use(steered: StatusSnapshot.SteeredPath(
                pathId: nil, name: nil, chain: chain, mark: mark.map(hex) ?? "none", table: nil, interface: nil,
                buckets: shares?[chain], bucketCount: shares.map { $0.values.reduce(0, +) }))
            do {
                let hop = try route(InstalledSteering.Decision(siteChain: siteChain, pathChain: chain, mark: mark),
                                    to: destination, origin: origin)
                use.steered.table = hop.table
                use.steered.interface = hop.interface
                if let path = hop.interface.flatMap({ name in sitePaths.first { $0.wgInterface == name } }) {
                    use.steered.pathId = path.id
                    use.steered.name = path.name
                    use.path = path
                } else {
                    use.problem = "mark \(use.steered.mark) (chain \(chain)) is routed by table \(hop.table) dev "
                        + "\(hop.interface ?? "-"), which is no path to \(siteName)"
                }
            } catch {
                use.problem = "chain \(chain): \(error)"
            }
            return use
        }
    }

    // MARK: the route

    struct Origin {
        var source: IPv4Address
        /// The interface a forwarded packet from `source` arrives on; nil for this host's own traffic.
        var inputInterface: Int32?
    }

    struct Hop {
        var table: UInt32
        var interface: String?
        var gateway: String?
        var rule: String?
    }

    /// Where the flow comes from: a foreign source arrives on the interface that leads to it (the kernel
    /// routes it as forwarded traffic); a local or absent source is this host's own traffic.
    private func origin(of query: Query) throws(InspectionError) -> Origin {
        if let source = query.source {
            let back = try ask { () throws(SteeringError) in try kernel.route(to: source) }
            return Origin(source: source, inputInterface: back.isLocal ? nil : back.interfaceIndex)
        }
        let first = try ask { () throws(SteeringError) in try kernel.route(to: query.destination) }
        guard let chosen = first.preferredSource else {
            throw .invalid("the kernel picks no source address for \(query.destination): give one with --from")
        }
        return Origin(source: chosen, inputInterface: nil)
    }

    /// The kernel's route for a packet carrying the mark `decision`'s chain writes, and our ip rules for it.
    private func route(_ decision: InstalledSteering.Decision, to destination: IPv4Address,
                       origin: Origin?) throws(InspectionError) -> Hop {
        let answer = try ask { () throws(SteeringError) in
            try kernel.route(to: destination, from: origin?.source, arrivingOn: origin?.inputInterface, mark: decision.mark)
        }
        return Hop(table: answer.table, interface: answer.interface, gateway: answer.gateway?.description,
                   rule: answer.rules.isEmpty ? nil : answer.rules.joined(separator: ", "))
    }

    // MARK: why

    struct Judgement {
        var reason: String
        var winner: String?
        var runnerUp: String?
        var disagreement: String?
    }

    /// Why the paths in use are the ones, by the engine's ranking over the database's latest figures, and
    /// whether the database (statuses, the daemon's last recorded move) disagrees with the kernel. The first
    /// use is the one explained (the flow's, or a single-path class's only one).
    private func judge(policy: Policy, site: DatabaseView.Site, uses: [Use], view: DatabaseView) -> Judgement {
        let sitePaths = view.paths(to: site.id)
        let states = sitePaths.compactMap(DatabaseView.state)
        let used = uses.compactMap(\.path)
        guard let first = uses.first?.path, let inUse = DatabaseView.key(first) else {
            return Judgement(reason: "the kernel's route leaves by \(uses.first?.steered.interface ?? "no interface"), "
                             + "which is no path to \(site.name)")
        }
        let assessment = engine.assess(policy: policy, paths: states, inUse: inUse)
        let figure = Figure(policy.strategy)
        func describe(_ path: StatusSnapshot.Path) -> String { "path \(path.id) \(path.name ?? "")" }
        let byKey = Dictionary(sitePaths.compactMap { p in DatabaseView.key(p).map { ($0, p) } }, uniquingKeysWith: { a, _ in a })
        let others = assessment.ranked.filter { state in !used.contains { DatabaseView.key($0) == state.key } }
        var j = Judgement(reason: "")
        j.winner = figure.text(first)
        if let other = others.first.flatMap({ byKey[$0.key] }) { j.runnerUp = "\(describe(other)): \(figure.text(other))" }
        let runnerUp = j.runnerUp.map { "; runner-up \($0)" } ?? "; no other usable path"
        switch assessment.verdict {
        case .best:
            if case .fixed(let label) = policy.strategy, first.localLabel == label {
                j.reason = "\(policy.strategy): the path over uplink \(label)" + runnerUp
            } else {
                j.reason = "\(policy.strategy): \(figure.superlative) (\(j.winner!))" + runnerUp
            }
        case .keptWithinMargin(let better):
            let name = byKey[better].map(describe) ?? "\(better)"
            j.reason = "\(policy.strategy): kept, \(name) ranks first (\(byKey[better].map(figure.text) ?? "?")) but is not "
                + "better by the switch margin (no flapping); in use: \(j.winner!)"
        case .betterByMargin(let better):
            let name = byKey[better].map(describe) ?? "\(better)"
            j.reason = "\(policy.strategy): \(name) is better by the switch margin (\(byKey[better].map(figure.text) ?? "?") "
                + "against \(j.winner!)): traffic moves after the hold-down"
        case .unusable:
            j.reason = "\(policy.strategy): the path in use is \(first.status) in the database" + runnerUp
            j.disagreement = "the kernel sends class \(policy.name) by \(describe(first)), which the database says is "
                + "\(first.status)\(first.measuredAt == nil ? " and unmeasured" : "") while another path is usable"
        case .nothingUsable:
            j.reason = "no path to \(site.name) is usable: the last one is kept rather than withdrawing the route"
        case .balanced:
            j.reason = "load-balance: buckets over the usable paths, weighted by score: " + uses.map { use in
                let name = use.path.map(describe) ?? use.steered.chain
                let score = use.path?.score.map(StatusSnapshot.formatNumber) ?? "n/a"
                return "\(name) (score \(score)) holds \(use.steered.buckets ?? 0)/\(use.steered.bucketCount ?? 0)"
            }.joined(separator: ", ")
            j.winner = nil
            j.runnerUp = nil
        }
        // The daemon's last recorded move for this class and site names the path it chose.
        if j.disagreement == nil, uses.count == 1, let siteID = SiteID(site.id),
           let last = view.lastMove[SelectionKey(site: siteID, policy: policy.name)],
           let target = last.toPath, target != first.id {
            j.disagreement = "the daemon's last move (\(UTCTime.format(last.time)), \(last.reason)) put class \(policy.name) "
                + "on path \(target); the kernel uses path \(first.id)"
        }
        return j
    }

    /// The figure a strategy compares, for the reason text.
    struct Figure {
        var strategy: Strategy
        init(_ strategy: Strategy) { self.strategy = strategy }

        var superlative: String {
            switch strategy {
            case .lowestLatency: "the lowest latency"
            case .highestBandwidth: "the highest bandwidth"
            case .lowestLoss: "the lowest loss"
            case .bestScore, .loadBalance, .fixed: "the best score"
            }
        }

        func text(_ path: StatusSnapshot.Path) -> String {
            func n(_ v: Double?) -> String { v.map(StatusSnapshot.formatNumber) ?? "n/a" }
            return switch strategy {
            case .lowestLatency: "latency \(n(path.latencyMs)) ms, jitter \(n(path.jitterMs)) ms"
            case .highestBandwidth: "bandwidth \(n(path.bandwidthMbps)) Mbit/s"
            case .lowestLoss: "loss \(n(path.packetLossPct)) %"
            case .bestScore, .loadBalance, .fixed: "score \(n(path.score))"
            }
        }
    }

    private func ask<T>(_ body: () throws(SteeringError) -> T) throws(InspectionError) -> T {
        do { return try body() } catch { throw .kernel(error) }
    }
}

/// What the database says, read once per answer.
struct DatabaseView {
    struct Site {
        var id: String
        var name: String
        var overlay: IPv4Address?
        var prefixes: [IPv4Prefix]
    }

    var sites: [Site]
    var snapshot: StatusSnapshot
    var policies: [Policy]
    /// The newest recorded move per (site, class).
    var lastMove: [SelectionKey: FailoverEvent]

    init(_ store: Store) throws(InspectionError) {
        do {
            snapshot = try store.statusSnapshot()
            policies = try store.policies().map(\.policy)
            var moves: [SelectionKey: FailoverEvent] = [:]
            for event in try store.failoverEvents(limit: 1000) {
                guard let site = event.destination else { continue }
                let key = SelectionKey(site: site, policy: event.policy)
                if moves[key] == nil { moves[key] = event }
            }
            lastMove = moves
        } catch { throw .store(error) }
        sites = snapshot.activeSites.map { site in
            let overlay = site.overlayAddress.flatMap { IPv4Address($0) }
            let lans = site.lanPrefixes.compactMap { IPv4Prefix($0) }
            return Site(id: site.id, name: site.name, overlay: overlay,
                        prefixes: (overlay.map { [IPv4Prefix($0, length: 32)] } ?? []) + lans)
        }
    }

    /// The remote site announcing the most specific prefix that holds `address`.
    func site(containing address: IPv4Address) -> (Site, IPv4Prefix)? {
        sites.flatMap { site in site.prefixes.filter { $0.contains(address) }.map { (site, $0) } }
            .max { $0.1.length < $1.1.length }
    }

    func paths(to site: String) -> [StatusSnapshot.Path] { snapshot.paths.filter { $0.dstSite == site } }

    static func key(_ path: StatusSnapshot.Path) -> PathKey? {
        SiteID(path.dstSite).map { PathKey(site: $0, localLabel: path.localLabel, remoteLabel: path.remoteLabel) }
    }

    /// The path as the engine would see it, from its latest figures (nil metrics while unmeasured).
    static func state(_ path: StatusSnapshot.Path) -> PathState? {
        guard let key = key(path), let status = PathStatus(rawValue: path.status) else { return nil }
        var metrics: PathMetrics?
        if let latency = path.latencyMs, let jitter = path.jitterMs, let loss = path.packetLossPct, let score = path.score {
            metrics = PathMetrics(latencyMs: latency, jitterMs: jitter, lossPct: loss, bandwidthMbps: path.bandwidthMbps,
                                  score: score)
        }
        return PathState(key: key, status: status, metrics: metrics)
    }
}

/// Why an inspection gave no answer. `notSteered` is an answer too: the flow is not steered, and why.
public enum InspectionError: Error, CustomStringConvertible {
    case notSteered(String)
    case invalid(String)
    case kernel(SteeringError)
    case store(StoreError)

    public var description: String {
        switch self {
        case .notSteered(let why): "not steered: \(why)"
        case .invalid(let why): why
        case .kernel(let error): "reading the kernel's steering: \(error) (run as root, in the router's network namespace: --netns NAME)"
        case .store(let error): "\(error)"
        }
    }
}

private func hex(_ v: UInt32) -> String {
    let d = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - d.count)) + d
}

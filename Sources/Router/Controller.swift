import Logging
import Model
import Routing
import Steering

/// Installs a plan in the kernel. The real one is the Steering layer (one netlink batch per change).
public protocol PlanApplier: Sendable {
    func apply(_ plan: SteeringPlan) async throws
}

/// Something that wants to know about every selection that moved (the store's failover_events, metrics).
public struct FailoverRecord: Hashable, Sendable {
    public var policy: String
    public var site: SiteID
    public var from: PathKey?
    public var to: PathKey?
    public var reason: String
    /// From the path event that triggered the move (probe misses until "down"), when there was one.
    public var detectionMs: Double?
    /// From the decision to the kernel's ack of the batch.
    public var switchMs: Double

    public init(policy: String, site: SiteID, from: PathKey?, to: PathKey?, reason: String, detectionMs: Double?,
                switchMs: Double) {
        self.policy = policy
        self.site = site
        self.from = from
        self.to = to
        self.reason = reason
        self.detectionMs = detectionMs
        self.switchMs = switchMs
    }
}

/// The failover loop's brain: it holds the latest policies, sites, paths and their states, asks the pure
/// RoutingEngine for a decision whenever any of them changes (and on ticks, for hold-down timers), turns it
/// into a SteeringPlan and applies it only when it differs from the installed one. A path going down is
/// handled in the call that reports it: no waiting for a tick.
public actor Controller {
    private let engine: RoutingEngine
    private let applier: any PlanApplier
    private let clock = ContinuousClock()
    private let start: ContinuousClock.Instant
    private let logger: Logger
    private let onFailover: @Sendable ([FailoverRecord]) async -> Void

    private var policies: [Policy] = []
    private var sites: [SiteID: RemoteSite] = [:]
    private var bindings: [PathKey: PathBinding] = [:]
    private var states: [PathKey: PathState] = [:]
    private var classNumbers = StableNumbering<String, UInt8>(range: Int(Conventions.classIDs.lowerBound)...Int(Conventions.classIDs.upperBound))
    /// Each steered site's index in its flows' ct mark: the one its id asks for when free, so that a flow
    /// outliving a restart finds its own site again; a released index is reused last.
    private var siteNumbers = StableNumbering<SiteID, UInt8>(range: Int(Conventions.siteIndexes.lowerBound)...Int(Conventions.siteIndexes.upperBound))
    private var routing = RoutingState()
    public private(set) var installed: SteeringPlan?
    public private(set) var failovers: UInt64 = 0
    private var pendingDetection: [PathKey: Double] = [:]

    public init(engine: RoutingEngine = RoutingEngine(), applier: any PlanApplier, logger: Logger,
                onFailover: @escaping @Sendable ([FailoverRecord]) async -> Void = { _ in }) {
        self.engine = engine
        self.applier = applier
        self.logger = logger
        self.onFailover = onFailover
        self.start = clock.now
    }

    /// Seconds since the controller started: the engine's notion of time.
    private var now: Double {
        let elapsed = clock.now - start
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    public func setPolicies(_ policies: [Policy]) async throws {
        self.policies = policies
        try await reconcile()
    }

    /// The mesh's view changed: which remote sites exist, what they announce, and which paths lead there.
    /// Paths new to the controller start unmeasured (not yet usable) until the prober reports them.
    public func setTopology(sites: [RemoteSite], paths: [PathBinding]) async throws {
        self.sites = Dictionary(uniqueKeysWithValues: sites.map { ($0.id, $0) })
        self.bindings = Dictionary(uniqueKeysWithValues: paths.map { ($0.key, $0) })
        for key in states.keys where bindings[key] == nil { states[key] = nil }
        for key in bindings.keys where states[key] == nil {
            states[key] = PathState(key: key, status: .down, metrics: nil)
        }
        try await reconcile()
    }

    /// A prober's report. `detectionMs` is how long the path was failing before it was declared down.
    public func pathUpdated(_ key: PathKey, status: PathStatus, metrics: PathMetrics?, detectionMs: Double? = nil)
        async throws
    {
        guard bindings[key] != nil else { return }
        let previous = states[key]
        states[key] = PathState(key: key, status: status, metrics: metrics ?? previous?.metrics)
        if status == .down, previous?.status != .down { pendingDetection[key] = detectionMs }
        try await reconcile()
    }

    /// Re-evaluates hold-down timers; cheap when nothing is pending.
    public func tick() async throws {
        try await reconcile()
    }

    public var currentSelections: [SelectionKey: Selection] { routing.selections }
    /// For duplicated classes: where the copies of each selected path go now (the routing engine's choice).
    public var currentCopies: [SelectionKey: [PathKey: PathKey]] { routing.copies }
    public var pathStates: [PathKey: PathState] { states }

    private func reconcile() async throws {
        let enabled = policies.filter(\.enabled)
        let ids = classNumbers.update(enabled.sorted { $0.priority < $1.priority }.map(\.name))
        let decision = engine.decide(policies: enabled, paths: Array(states.values), previous: routing, now: now)
        let steered = Set(bindings.keys.map(\.site))
        let siteIndexes = siteNumbers.update(sites.keys.filter(steered.contains).sorted(), preferring: Conventions.preferredSiteIndex)
        let plan = SteeringPlanner.plan(policies: enabled, classIDs: ids, sites: Array(sites.values),
                                        paths: Array(bindings.values), selections: decision.state.selections,
                                        copies: decision.state.copies, siteIndexes: siteIndexes)
        let began = clock.now
        if plan != installed {
            try await applier.apply(plan)
            installed = plan
        }
        routing = decision.state
        let switchMs = Self.milliseconds(clock.now - began)
        let moves = decision.changes.filter { $0.from != nil }
        guard !moves.isEmpty else { return }
        failovers += UInt64(moves.count)
        var records: [FailoverRecord] = []
        for change in moves {
            let from = change.from?.paths.sorted().first
            let to = change.to.paths.sorted().first
            let detection = from.flatMap { pendingDetection[$0] ?? nil }
            records.append(FailoverRecord(policy: change.key.policy, site: change.key.site, from: from, to: to,
                                          reason: change.reason.rawValue, detectionMs: detection, switchMs: switchMs))
            logger.info("steering moved", metadata: [
                "policy": "\(change.key.policy)", "site": "\(sites[change.key.site]?.name ?? "\(change.key.site)")",
                "from": "\(from.map(name(of:)) ?? "-")", "to": "\(to.map(name(of:)) ?? "-")",
                "from_path": "\(from.flatMap { bindings[$0]?.id }.map(String.init) ?? "-")",
                "to_path": "\(to.flatMap { bindings[$0]?.id }.map(String.init) ?? "-")",
                "reason": "\(change.reason.rawValue)",
            ])
        }
        pendingDetection.removeAll()
        await onFailover(records)
    }

    /// "isp-a->east": the uplink label and the remote site's name, as operators say it.
    private func name(of key: PathKey) -> String { key.name(siteName: sites[key.site]?.name ?? "\(key.site)") }

    static func milliseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    }
}

extension KernelSteering: PlanApplier {}

import Model

/// What the engine knows about one path when it decides.
public struct PathState: Hashable, Sendable {
    public var key: PathKey
    public var status: PathStatus
    /// Nil until the prober has measured the path once.
    public var metrics: PathMetrics?

    public init(key: PathKey, status: PathStatus, metrics: PathMetrics?) {
        self.key = key
        self.status = status
        self.metrics = metrics
    }
}

/// Where one policy's traffic to one site goes.
public enum Selection: Hashable, Sendable {
    /// Every flow of the class takes this path.
    case single(PathKey)
    /// Flows are hashed into `buckets.count` buckets; bucket i takes `buckets[i]`.
    case buckets([PathKey])

    /// The distinct paths this selection uses.
    public var paths: Set<PathKey> {
        switch self {
        case .single(let key): [key]
        case .buckets(let keys): Set(keys)
        }
    }
}

/// Identifies one routing decision: a policy's traffic towards one remote site.
public struct SelectionKey: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var site: SiteID
    public var policy: String

    public init(site: SiteID, policy: String) {
        self.site = site
        self.policy = policy
    }

    public static func < (lhs: SelectionKey, rhs: SelectionKey) -> Bool {
        (lhs.site, lhs.policy) < (rhs.site, rhs.policy)
    }

    public var description: String { "\(policy)->\(site)" }
}

/// Why a selection changed; recorded in failover_events.
public enum SwitchReason: String, Hashable, Sendable {
    /// No previous selection (start, new site, new policy).
    case initial
    /// The path in use went down: moved at once.
    case pathDown = "path-down"
    /// The path in use broke the policy's SLA while another path meets it (after the hold-down).
    case slaViolation = "sla-violation"
    /// Another path was better by the switch margin for the whole hold-down.
    case betterPath = "better-path"
    /// The set of usable paths changed under a load-balanced policy.
    case rebalanced
    /// The policy changed (strategy, SLA).
    case policyChanged = "policy-changed"
}

/// One change between two decisions.
public struct SelectionChange: Hashable, Sendable {
    public var key: SelectionKey
    public var from: Selection?
    public var to: Selection
    public var reason: SwitchReason
}

/// Knobs of the engine; the defaults are the product's defaults.
public struct RoutingSettings: Hashable, Sendable {
    /// How long a better path must stay better before traffic moves to it (seconds). A down path is left at
    /// once regardless.
    public var holdDown: Double = 1.0
    /// Relative improvement required to move (0.1 = 10 %), so near-equal paths do not make traffic flap.
    public var relativeMargin: Double = 0.10
    /// Absolute improvements required as well: latency (ms), loss (percentage points), score (points).
    public var latencyMarginMs: Double = 2.0
    /// A latency advantage must also exceed this many times the larger of the two paths' jitter: medians over
    /// short windows (the daemon's is 0.5 s) of two equally jittery paths differ by about their jitter.
    public var latencyJitterMargin: Double = 2.0
    public var lossMarginPct: Double = 0.5
    public var scoreMargin: Double = 5.0
    /// Packets in each path's loss estimate (the probers' loss window: 200 probes = 10 s at 50 ms). Two paths
    /// with the same true loss p differ in their estimates by sqrt(2 p (1 - p) / lossSamples) (one standard
    /// deviation); at 2% loss on every uplink (about 8% per round trip) that is 2.7 percentage points, i.e.
    /// 7 score points, more than `scoreMargin`.
    public var lossSamples: Int = 200
    /// How many of those standard deviations a loss or score advantage must exceed, on top of the margins
    /// above, before it counts: 4 makes a move between two equally lossy paths a ~3e-5 event per comparison
    /// (zero false failovers in 10 minutes at 2% loss), and adds nothing when both paths are loss-free.
    public var lossNoiseSigmas: Double = 4.0
    /// Score points per percentage point of loss (PathScore: 2.5 R per %, R scaled by 100 / 93.2).
    public var scorePointsPerLossPct: Double = 2.5 * 100 / 93.2
    /// Buckets of a load-balanced policy; a flow hash picks one (the kernel's bucket field fixes the number).
    public var bucketCount: Int = Int(Conventions.balanceBuckets)
    /// Local uplink labels that never carry copies of duplicated classes (`--uplink IFACE=LABEL,no-copies`:
    /// metered links). Their paths still carry a class's traffic when the engine selects them.
    public var noCopyLabels: Set<String> = []

    public init() {}
}

/// The engine's memory between two decisions: current selections and running hold-down timers.
public struct RoutingState: Hashable, Sendable {
    public var selections: [SelectionKey: Selection] = [:]
    /// Per selection: the path that has been beating the current one, and since when (seconds).
    public var challengers: [SelectionKey: Challenger] = [:]
    /// The policy each selection was made for, to notice policy edits.
    public var policies: [SelectionKey: Policy] = [:]
    /// For duplicating policies: the path each selected path's packets are copied to (the best other usable
    /// path to the site, not over a no-copies uplink). Missing: nothing to copy to (one usable path).
    public var copies: [SelectionKey: [PathKey: PathKey]] = [:]

    public struct Challenger: Hashable, Sendable {
        public var path: PathKey
        public var since: Double
        public var reason: SwitchReason
    }

    public init() {}
}

/// Pure routing: policies and path states in, selections out. No I/O and no clock: the caller passes the
/// time, so every behaviour (hold-down, margins, bucket stability) is unit-testable over tables of states.
///
/// Candidate order, for each (site, policy): usable paths (up or degraded, measured) meeting the SLA, up before
/// degraded; when none meets the SLA, the least bad usable path; when no path is usable, the path in use is
/// kept (or the first known path), because "no route" would send the traffic out of the default route
/// instead of into a tunnel.
public struct RoutingEngine: Sendable {
    public var settings: RoutingSettings

    public init(settings: RoutingSettings = RoutingSettings()) {
        self.settings = settings
    }

    /// Decides every (site, enabled policy) pair. Returns the new state and what changed.
    public func decide(policies: [Policy], paths: [PathState], previous: RoutingState, now: Double)
        -> (state: RoutingState, changes: [SelectionChange])
    {
        var state = RoutingState()
        var changes: [SelectionChange] = []
        let bySite = Dictionary(grouping: paths, by: \.key.site)
        for site in bySite.keys.sorted() {
            let sitePaths = bySite[site]!.sorted { $0.key < $1.key }
            for policy in policies where policy.enabled {
                let key = SelectionKey(site: site, policy: policy.name)
                let old = previous.selections[key]
                let policyChanged = previous.policies[key].map { $0.strategy != policy.strategy || $0.sla != policy.sla } ?? false
                let outcome = select(policy: policy, paths: sitePaths, current: policyChanged ? nil : old,
                                     challenger: policyChanged ? nil : previous.challengers[key], now: now)
                state.selections[key] = outcome.selection
                state.policies[key] = policy
                if policy.duplicate {
                    let targets = copyTargets(policy: policy, paths: sitePaths, selection: outcome.selection)
                    if !targets.isEmpty { state.copies[key] = targets }
                }
                if let challenger = outcome.challenger { state.challengers[key] = challenger }
                if outcome.selection != old {
                    let reason: SwitchReason = old == nil ? .initial : (policyChanged ? .policyChanged : outcome.reason)
                    changes.append(SelectionChange(key: key, from: old, to: outcome.selection, reason: reason))
                }
            }
        }
        return (state, changes)
    }

    private struct Outcome {
        var selection: Selection
        var challenger: RoutingState.Challenger?
        var reason: SwitchReason
    }

    private func select(policy: Policy, paths: [PathState], current: Selection?,
                        challenger: RoutingState.Challenger?, now: Double) -> Outcome {
        if case .loadBalance = policy.strategy {
            return Outcome(selection: balance(policy: policy, paths: paths, current: current), challenger: nil,
                           reason: .rebalanced)
        }
        let ranked = rank(policy: policy, paths: paths)
        guard let best = ranked.first else {
            // Nothing usable: keep what we have rather than withdraw the route.
            let fallback = current ?? .single(paths[0].key)
            return Outcome(selection: fallback, challenger: nil, reason: .pathDown)
        }
        guard case .single(let inUse)? = current, let inUseState = paths.first(where: { $0.key == inUse }) else {
            return Outcome(selection: .single(best.key), challenger: nil, reason: .initial)
        }
        if !isUsable(inUseState) {
            return Outcome(selection: .single(best.key), challenger: nil, reason: .pathDown)
        }
        if best.key == inUse { return Outcome(selection: .single(inUse), challenger: nil, reason: .initial) }

        // A different path ranks first. Move only if it clears the margin (or the path in use breaks the SLA
        // while the best meets it), continuously for the hold-down.
        let slaBroken = !meetsSLA(inUseState, policy) && meetsSLA(best, policy)
        let clearlyBetter = slaBroken || beatsByMargin(best, inUseState, strategy: policy.strategy)
        guard clearlyBetter else { return Outcome(selection: .single(inUse), challenger: nil, reason: .betterPath) }
        let reason: SwitchReason = slaBroken ? .slaViolation : .betterPath
        let since = (challenger?.path == best.key) ? challenger!.since : now
        if now - since >= settings.holdDown {
            return Outcome(selection: .single(best.key), challenger: nil, reason: reason)
        }
        return Outcome(selection: .single(inUse),
                       challenger: RoutingState.Challenger(path: best.key, since: since, reason: reason),
                       reason: reason)
    }

    /// Usable paths, best first, for a single-path strategy.
    func rank(policy: Policy, paths: [PathState]) -> [PathState] {
        let usable = paths.filter(isUsable)
        if case .fixed(let label) = policy.strategy,
           let pinned = usable.first(where: { $0.key.localLabel == label }) {
            return [pinned] + usable.filter { $0.key != pinned.key }
        }
        return usable.sorted { a, b in
            let tierA = tier(a, policy), tierB = tier(b, policy)
            if tierA != tierB { return tierA < tierB }
            if tierA >= 2 {
                // Nobody meets the SLA: least bad first.
                let excessA = slaExcess(a, policy), excessB = slaExcess(b, policy)
                if excessA != excessB { return excessA < excessB }
            }
            let order = compare(a, b, strategy: policy.strategy)
            return order != 0 ? order < 0 : a.key < b.key
        }
    }

    func isUsable(_ path: PathState) -> Bool { path.status != .down && path.metrics != nil }

    /// Where the copies of a duplicating policy go: for each path the selection uses, the best-ranked other
    /// usable path that is not over a no-copies uplink. A path with no such partner gets no copy.
    func copyTargets(policy: Policy, paths: [PathState], selection: Selection) -> [PathKey: PathKey] {
        let candidates = rank(policy: policy, paths: paths).filter { !settings.noCopyLabels.contains($0.key.localLabel) }
        var out: [PathKey: PathKey] = [:]
        for path in selection.paths {
            if let partner = candidates.first(where: { $0.key != path }) { out[path] = partner.key }
        }
        return out
    }

    /// 0: up and meets the SLA; 1: degraded and meets it; 2: up, breaks it; 3: degraded, breaks it.
    private func tier(_ path: PathState, _ policy: Policy) -> Int {
        (meetsSLA(path, policy) ? 0 : 2) + (path.status == .up ? 0 : 1)
    }

    func meetsSLA(_ path: PathState, _ policy: Policy) -> Bool {
        guard let metrics = path.metrics else { return false }
        return policy.sla.isMet(by: metrics)
    }

    /// How far a path is over its SLA limits, each excess relative to its limit, summed.
    private func slaExcess(_ path: PathState, _ policy: Policy) -> Double {
        guard let m = path.metrics else { return .infinity }
        func over(_ value: Double, _ limit: Double?) -> Double {
            guard let limit else { return 0 }
            return max(0, value - limit) / max(limit, 0.001)
        }
        return over(m.latencyMs, policy.sla.maxLatencyMs) + over(m.jitterMs, policy.sla.maxJitterMs)
            + over(m.lossPct, policy.sla.maxLossPct)
    }

    /// Negative when `a` is better than `b` for the strategy, positive when worse, 0 when equal.
    private func compare(_ a: PathState, _ b: PathState, strategy: Strategy) -> Int {
        let ma = a.metrics!, mb = b.metrics!
        func sign(_ x: Double) -> Int { x < 0 ? -1 : (x > 0 ? 1 : 0) }
        switch strategy {
        case .lowestLatency:
            return sign(ma.latencyMs - mb.latencyMs) * 4 + sign(ma.jitterMs - mb.jitterMs) * 2
                + sign(ma.lossPct - mb.lossPct)
        case .highestBandwidth:
            let ba = ma.bandwidthMbps ?? 0, bb = mb.bandwidthMbps ?? 0
            if ba != bb { return sign(bb - ba) }
            return sign(mb.score - ma.score)
        case .lowestLoss:
            if ma.lossPct != mb.lossPct { return sign(ma.lossPct - mb.lossPct) }
            return sign(ma.latencyMs - mb.latencyMs)
        case .bestScore, .fixed, .loadBalance:
            if ma.score != mb.score { return sign(mb.score - ma.score) }
            return sign(ma.latencyMs - mb.latencyMs)
        }
    }

    /// The loss difference (percentage points) that random loss alone puts between two paths this lossy,
    /// `lossNoiseSigmas` standard deviations of the difference of two estimates over `lossSamples` packets.
    /// Zero when neither path loses anything.
    func lossNoise(_ a: PathMetrics, _ b: PathMetrics) -> Double {
        let pooled = min(1, max(0, (a.lossPct + b.lossPct) / 200))
        let sigma = (2 * pooled * (1 - pooled) / Double(max(1, settings.lossSamples))).squareRoot() * 100
        return settings.lossNoiseSigmas * sigma
    }

    /// The score advantage that counts as better: the margin plus what loss noise alone explains.
    private func scoreMargin(_ c: PathMetrics, _ i: PathMetrics) -> Double {
        settings.scoreMargin + lossNoise(c, i) * settings.scorePointsPerLossPct
    }

    /// True when `challenger` is better than `incumbent` by the switch margin on the strategy's metric.
    /// Loss-driven comparisons (score, loss, and "up beats degraded", where degraded is usually a loss
    /// threshold crossed by an estimate) allow for the estimates' noise, so random loss on equal paths moves
    /// no traffic, while a path that is really worse is still left.
    func beatsByMargin(_ challenger: PathState, _ incumbent: PathState, strategy: Strategy) -> Bool {
        let c = challenger.metrics!, i = incumbent.metrics!
        if challenger.status == .up && incumbent.status == .degraded && c.score >= i.score + scoreMargin(c, i) {
            return true
        }
        let margin = settings.relativeMargin
        switch strategy {
        case .lowestLatency:
            return c.latencyMs < i.latencyMs * (1 - margin)
                && i.latencyMs - c.latencyMs >= max(settings.latencyMarginMs, settings.latencyJitterMargin * max(c.jitterMs, i.jitterMs))
        case .highestBandwidth:
            let cb = c.bandwidthMbps ?? 0, ib = i.bandwidthMbps ?? 0
            if cb == 0 && ib == 0 { return c.score >= i.score + scoreMargin(c, i) }
            return cb > ib * (1 + margin)
        case .lowestLoss:
            return i.lossPct - c.lossPct >= settings.lossMarginPct + lossNoise(c, i)
        case .bestScore, .loadBalance:
            return c.score >= i.score + scoreMargin(c, i)
        case .fixed(let label):
            // Back to the pinned uplink as soon as it is usable again (after the hold-down).
            return challenger.key.localLabel == label && incumbent.key.localLabel != label
        }
    }

    /// Weighted buckets over the usable paths (weight = score, at least 1). Bucket stability: a bucket keeps
    /// its path while that path stays usable and under its share; only the buckets of a path that left, or
    /// the surplus of a path over its share when a path joins, move.
    func balance(policy: Policy, paths: [PathState], current: Selection?) -> Selection {
        let count = settings.bucketCount
        var members = paths.filter(isUsable).filter { meetsSLA($0, policy) }
        if members.isEmpty { members = paths.filter(isUsable) }
        guard !members.isEmpty else {
            return current ?? .buckets(Array(repeating: paths[0].key, count: count))
        }
        let weights = members.map { max(1, $0.metrics!.score) }
        let total = weights.reduce(0, +)
        // Largest remainder, so the shares add up to `count` exactly and every member gets one bucket.
        var shares = weights.map { max(1, Int(($0 / total * Double(count)).rounded(.down))) }
        var order = Array(members.indices).sorted {
            let ra = weights[$0] / total * Double(count) - Double(shares[$0])
            let rb = weights[$1] / total * Double(count) - Double(shares[$1])
            return ra != rb ? ra > rb : members[$0].key < members[$1].key
        }
        while shares.reduce(0, +) < count { shares[order.first!] += 1; order.append(order.removeFirst()) }
        while shares.reduce(0, +) > count, let i = shares.indices.max(by: { shares[$0] < shares[$1] }) { shares[i] -= 1 }

        var target: [PathKey: Int] = [:]
        for (i, member) in members.enumerated() { target[member.key] = shares[i] }
        var previous: [PathKey] = []
        if case .buckets(let old)? = current, old.count == count { previous = old }
        if case .single(let old)? = current { previous = Array(repeating: old, count: count) }
        // Same members as before: keep the buckets as they are, so a score wobble moves no flow.
        if !previous.isEmpty, Set(previous) == Set(target.keys) { return .buckets(previous) }

        var result = [PathKey?](repeating: nil, count: count)
        var used: [PathKey: Int] = [:]
        for (i, key) in previous.enumerated() where target[key] != nil && used[key, default: 0] < target[key]! {
            result[i] = key
            used[key, default: 0] += 1
        }
        var needy = members.map(\.key).flatMap { key in
            Array(repeating: key, count: target[key]! - used[key, default: 0])
        }
        for i in result.indices where result[i] == nil { result[i] = needy.removeFirst() }
        return .buckets(result.map { $0! })
    }
}

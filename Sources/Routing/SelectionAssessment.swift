import Model

/// How the path a class uses stands among the paths to its site, by the engine's own rules: for a person
/// asking why traffic goes where it goes (`explain`, the status report), never for deciding.
public struct SelectionAssessment: Hashable, Sendable {
    /// Usable paths, best first for the policy's strategy (the engine's ranking).
    public var ranked: [PathState]
    public var verdict: Verdict

    public enum Verdict: Hashable, Sendable {
        /// The path in use ranks first.
        case best
        /// `better` ranks first, but not by the switch margin: the path in use is kept (no flapping).
        case keptWithinMargin(better: PathKey)
        /// `better` beats the path in use by the margin (or meets the SLA it breaks): traffic moves after the
        /// hold-down; seen for longer, the kernel is behind the decision.
        case betterByMargin(better: PathKey)
        /// The path in use is down or unmeasured while another is usable: the engine would have left it.
        case unusable
        /// No path is usable: the path in use is kept rather than withdrawing the route.
        case nothingUsable
        /// A load-balanced class: flows spread over the usable paths by score.
        case balanced
    }
}

extension RoutingEngine {
    /// Judges `inUse` for `policy` among `paths` (all to one site) with the engine's ranking and margins.
    public func assess(policy: Policy, paths: [PathState], inUse: PathKey) -> SelectionAssessment {
        let ranked = rank(policy: policy, paths: paths)
        if case .loadBalance = policy.strategy { return SelectionAssessment(ranked: ranked, verdict: .balanced) }
        guard let best = ranked.first else { return SelectionAssessment(ranked: ranked, verdict: .nothingUsable) }
        guard let current = paths.first(where: { $0.key == inUse }), isUsable(current) else {
            return SelectionAssessment(ranked: ranked, verdict: .unusable)
        }
        if best.key == inUse { return SelectionAssessment(ranked: ranked, verdict: .best) }
        let clearly = (!meetsSLA(current, policy) && meetsSLA(best, policy))
            || beatsByMargin(best, current, strategy: policy.strategy)
        return SelectionAssessment(ranked: ranked, verdict: clearly ? .betterByMargin(better: best.key)
                                                                     : .keptWithinMargin(better: best.key))
    }
}

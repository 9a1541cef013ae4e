import Foundation
import Model
import WireGuard

/// What the relay decision sees of one moment: the members, and the WireGuard sessions per (interface, peer).
public struct RelayInputs: Sendable {
    /// The active, authenticated sites (`DiscoveryService.sites`): nothing else is ever relayed to or through.
    public var members: [SiteDescription]
    /// When each member was first planned (a site gets `Conventions.relayDirectGrace` to come up direct).
    public var knownSince: [SiteID: Date]
    /// The last completed handshake of every planned (interface, peer), nil before the first.
    public var handshakes: [TunnelSession: Date?]
    /// What else is known of each session: its path's status and when the peer last sent us anything.
    /// A session without an entry is judged by its handshake alone.
    public var liveness: [TunnelSession: SessionLiveness]
    public var now: Date

    public init(members: [SiteDescription], knownSince: [SiteID: Date], handshakes: [TunnelSession: Date?],
                liveness: [TunnelSession: SessionLiveness] = [:], now: Date) {
        self.members = members
        self.knownSince = knownSince
        self.handshakes = handshakes
        self.liveness = liveness
        self.now = now
    }
}

/// One session's signs of life besides its handshake (`RelayPlanner.isDead`).
public struct SessionLiveness: Hashable, Sendable {
    /// The path's probes have been failing long enough for the prober to declare it down.
    public var pathDown: Bool
    /// When the peer's receive counter last moved (WireGuard counts only authenticated packets from it), or
    /// when the session was first seen.
    public var lastReceived: Date

    public init(pathDown: Bool, lastReceived: Date) {
        self.pathDown = pathDown
        self.lastReceived = lastReceived
    }
}

/// One WireGuard peer on one of our interfaces.
public struct TunnelSession: Hashable, Sendable {
    public var interface: String
    public var peer: WireGuardKey

    public init(interface: String, peer: WireGuardKey) {
        self.interface = interface
        self.peer = peer
    }
}

/// The relayed fallback (docs/MESH.md "Relayed paths"). Pure: the driver feeds it sessions and applies what
/// it returns to the tunnel plan.
///
/// A session works when WireGuard counts it (handshake within 180 s) and it is not dead (`isDead`: its path
/// down and nothing received from the peer for `Conventions.relayDeadSilence`).
/// A site we have no working direct session with on any path, `Conventions.relayDirectGrace` after we first
/// planned it (the time NAT traversal needs), is reached through a relay: a member that announces `relay`,
/// with which we have a working session. On every interface where both have a peer, the site's overlay /32
/// and LAN prefixes move from its own peer's allowed IPs to the relay's peer: the path's routing table still
/// sends them into that interface, WireGuard now encrypts them to the relay, and the relay's steering forwards
/// them into its own tunnel to the site (the site does the same the other way, since neither has a direct
/// session). The site's own peer stays, without allowed IPs, and keeps trying its handshake: the moment a
/// direct session works, the site is direct again. A direct path that works is therefore never replaced by
/// a relayed one.
public enum RelayPlanner {
    /// Which member reaches which other member through which relay: site -> relay. `current` is the previous
    /// decision: a relay in use stays while it still qualifies (no flapping between two equal relays).
    public static func decide(_ inputs: RelayInputs, plan: TunnelPlan, current: [SiteID: SiteID]) -> [SiteID: SiteID] {
        let members = Dictionary(inputs.members.map { ($0.siteID, $0) }, uniquingKeysWith: { a, _ in a })
        // Working sessions per member: on how many of our interfaces its own peer has handshaken recently
        // and is not dead.
        var workingInterfaces: [SiteID: Int] = [:]
        for path in plan.paths where members[path.remoteSite] != nil {
            let session = TunnelSession(interface: path.interface, peer: path.peer)
            if isWorking(session, inputs) { workingInterfaces[path.remoteSite, default: 0] += 1 }
        }
        let relays = members.values.filter { $0.relay && workingInterfaces[$0.siteID, default: 0] > 0 }
        var decision: [SiteID: SiteID] = [:]
        for site in members.keys.sorted() where workingInterfaces[site, default: 0] == 0 {
            guard let since = inputs.knownSince[site],
                  inputs.now.timeIntervalSince(since) >= Conventions.relayDirectGrace else { continue }
            let candidates = relays.filter { $0.siteID != site && shareAnInterface(site, $0.siteID, plan) }
            if let kept = current[site], candidates.contains(where: { $0.siteID == kept }) {
                decision[site] = kept
                continue
            }
            // The relay we have the most working sessions with; ties: the smallest id.
            let best = candidates.min {
                (-workingInterfaces[$0.siteID, default: 0], $0.siteID) < (-workingInterfaces[$1.siteID, default: 0], $1.siteID)
            }
            if let best { decision[site] = best.siteID }
        }
        return decision
    }

    /// A session works when WireGuard counts it (handshake within `TunnelReconciler.workingSessionAge`) and
    /// it is not dead (`isDead`).
    static func isWorking(_ session: TunnelSession, _ inputs: RelayInputs) -> Bool {
        TunnelReconciler.isWorking(lastHandshake: inputs.handshakes[session] ?? nil, now: inputs.now)
            && !isDead(inputs.liveness[session], now: inputs.now)
    }

    /// Whether a session is dead although its handshake is recent: its path is down (every probe failing)
    /// and the peer sent nothing for `Conventions.relayDeadSilence`. Both are needed: a path that loses
    /// probes but gets a single reply through, or a quiet peer whose path is up, stays working.
    public static func isDead(_ liveness: SessionLiveness?, now: Date) -> Bool {
        guard let liveness, liveness.pathDown else { return false }
        return now.timeIntervalSince(liveness.lastReceived) >= Conventions.relayDeadSilence
    }

    /// The planned sessions that WireGuard still counts (recent handshake) but that are dead (`isDead`):
    /// the driver restarts them (the peer re-created, its old session gone), so the site is direct again
    /// only after a new handshake proves the direct path, never on the stale one: no flapping between a
    /// dead direct path and the relay.
    public static func deadSessions(_ inputs: RelayInputs, plan: TunnelPlan) -> Set<TunnelSession> {
        Set(plan.paths.map { TunnelSession(interface: $0.interface, peer: $0.peer) }.filter { session in
            TunnelReconciler.isWorking(lastHandshake: inputs.handshakes[session] ?? nil, now: inputs.now)
                && isDead(inputs.liveness[session], now: inputs.now)
        })
    }

    /// Whether some interface has a peer for both sites (where a relayed path can run).
    static func shareAnInterface(_ a: SiteID, _ b: SiteID, _ plan: TunnelPlan) -> Bool {
        let interfacesOf = { (site: SiteID) in Set(plan.paths.filter { $0.remoteSite == site }.map(\.interface)) }
        return !interfacesOf(a).isDisjoint(with: interfacesOf(b))
    }

    /// `plan` with every relayed site's destinations moved to its relay's peer on every interface that has
    /// both, and those paths marked relayed. Sites and relays that are not in the plan change nothing.
    public static func apply(_ decision: [SiteID: SiteID], to plan: TunnelPlan) -> TunnelPlan {
        var result = plan
        for (site, relay) in decision.sorted(by: { $0.key < $1.key }) where site != relay {
            for (index, path) in result.paths.enumerated() where path.remoteSite == site {
                guard let relayPath = result.paths.first(where: { $0.remoteSite == relay && $0.interface == path.interface }),
                      let interface = result.interfaces.firstIndex(where: { $0.name == path.interface }) else { continue }
                var peers = result.interfaces[interface].peers
                guard let own = peers.firstIndex(where: { $0.publicKey == path.peer }),
                      let through = peers.firstIndex(where: { $0.publicKey == relayPath.peer }) else { continue }
                let moved = peers[own].allowedIPs
                peers[own].allowedIPs = []
                peers[through].allowedIPs += moved
                result.interfaces[interface].peers = peers
                result.paths[index].relay = relay
                result.paths[index].relayName = relayPath.remoteName
            }
        }
        return result
    }
}

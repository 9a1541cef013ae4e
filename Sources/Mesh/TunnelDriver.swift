import Foundation
import Logging
import Model
import Synchronization
import WireGuard

/// Keeps the tunnels in step with discovery: on every mesh event, and every `retryInterval` (to retry
/// failures; free when nothing changed), it re-plans from the active sites and reconciles; every 100 ms
/// it lets the reconciler nudge peers whose first handshake stalled. After each
/// reconciliation `onPlan` gets the plan (its `paths` feed steering and the database) and the report.
///
/// `run` creates the interfaces first and only then starts discovery, so no site hears of an endpoint
/// before it listens (a handshake sent to a closed port waits out WireGuard's 5 s retry). Runs until the
/// calling task is cancelled. The one consumer of `discovery.events`: the daemon observes them via `onEvent`.
public struct TunnelDriver: Sendable {
    public let discovery: DiscoveryService
    public let reconciler: TunnelReconciler
    /// The uplinks in slot order; grows when a detected uplink appears (`setUplinks`).
    private let uplinkList: UplinkList
    public var uplinks: [Uplink] { uplinkList.value.withLock { $0 } }
    public let settings: TunnelSettings
    /// The pool our overlay address was chosen from (`OverlayAddressing`); nil when the operator fixed it.
    /// With a pool, the driver moves our overlay when a site with a smaller id announces the same one.
    public let overlayPool: IPv4Prefix?
    public var retryInterval: Duration
    private let logger: Logger

    /// Our endpoints are what `discovery` announces (`discovery.update` changes them; the next tick re-plans).
    public init(discovery: DiscoveryService, reconciler: TunnelReconciler, uplinks: [Uplink], settings: TunnelSettings,
                overlayPool: IPv4Prefix? = OverlayAddressing.defaultPool, retryInterval: Duration = .seconds(1),
                logger: Logger = Logger(label: "patronus.mesh.tunnels")) {
        self.discovery = discovery
        self.reconciler = reconciler
        uplinkList = UplinkList(uplinks)
        self.settings = settings
        self.overlayPool = overlayPool
        self.retryInterval = retryInterval
        self.logger = logger
    }

    /// Replaces the uplinks (slot order: an uplink keeps its position); the next plan uses them.
    public func setUplinks(_ uplinks: [Uplink]) {
        uplinkList.value.withLock { $0 = uplinks }
    }

    private final class UplinkList: Sendable {
        let value: Mutex<[Uplink]>
        init(_ uplinks: [Uplink]) { value = Mutex(uplinks) }
    }

    /// The relay decision in force (site -> relay), when each member was first planned, and what the
    /// decision knows of each session's life: the paths the probers hold down, and each peer's receive
    /// counter with when it last moved.
    private struct RelayState {
        var decision: [SiteID: SiteID] = [:]
        var knownSince: [SiteID: Date] = [:]
        var pathsDown: Set<TunnelSession> = []
        var received: [TunnelSession: (bytes: UInt64, at: Date)] = [:]
    }
    private final class RelayBox: Sendable {
        let value = Mutex(RelayState())
    }
    private let relayBox = RelayBox()

    /// Sites reached through a relay now: site -> relay.
    public var relayed: [SiteID: SiteID] { relayBox.value.withLock { $0.decision } }

    /// The prober's verdict on a path's session (down: its probes all fail), for the relay decision.
    public func setPathDown(_ session: TunnelSession, _ down: Bool) {
        relayBox.value.withLock { state in
            if down { state.pathsDown.insert(session) } else { state.pathsDown.remove(session) }
        }
    }

    /// Decides again which sites go through a relay, from the sessions the interfaces report now (`states`,
    /// `RelayPlanner.decide`); logs each change. Returns the sessions found dead (`RelayPlanner.deadSessions`),
    /// which the caller restarts.
    func decideRelays(_ plan: TunnelPlan, states: [String: InterfaceState]) -> Set<TunnelSession> {
        let now = Date()
        var handshakes: [TunnelSession: Date?] = [:]
        var received: [TunnelSession: UInt64] = [:]
        for path in plan.paths {
            let session = TunnelSession(interface: path.interface, peer: path.peer)
            let live = states[path.interface]?.peer(path.peer)
            handshakes[session] = live?.lastHandshake
            if let live { received[session] = live.rxBytes }
        }
        let members = discovery.sites.map(\.site)
        let names = Dictionary(members.map { ($0.siteID, $0.name) }, uniquingKeysWith: { a, _ in a })
        let (old, new, dead) = relayBox.value.withLock { state in
            let present = Set(members.map(\.siteID))
            state.knownSince = state.knownSince.filter { present.contains($0.key) }
            for site in present where state.knownSince[site] == nil { state.knownSince[site] = now }
            // A counter that moved (or went back: the peer was re-created) is a sign of life now.
            var seen: [TunnelSession: (bytes: UInt64, at: Date)] = [:]
            for (session, bytes) in received {
                let last = state.received[session]
                seen[session] = last.map { $0.bytes == bytes ? $0 : (bytes, now) } ?? (bytes, now)
            }
            state.received = seen
            state.pathsDown = state.pathsDown.filter { handshakes.keys.contains($0) }
            var liveness: [TunnelSession: SessionLiveness] = [:]
            for (session, last) in seen {
                liveness[session] = SessionLiveness(pathDown: state.pathsDown.contains(session), lastReceived: last.at)
            }
            let inputs = RelayInputs(members: members, knownSince: state.knownSince, handshakes: handshakes,
                                     liveness: liveness, now: now)
            let old = state.decision
            state.decision = RelayPlanner.decide(inputs, plan: plan, current: old)
            return (old, state.decision, RelayPlanner.deadSessions(inputs, plan: plan))
        }
        let siteOf = Dictionary(plan.paths.map { (TunnelSession(interface: $0.interface, peer: $0.peer), $0.remoteSite) },
                                uniquingKeysWith: { a, _ in a })
        for session in dead.sorted(by: { $0.interface < $1.interface }) {
            let site = siteOf[session]
            logger.notice("direct session dead (path down, nothing received for \(Int(Conventions.relayDeadSilence)) s): restarting it", metadata: [
                "site": "\(site.flatMap { names[$0] } ?? site?.description ?? "-")", "interface": "\(session.interface)"])
        }
        for (site, relay) in new where old[site] != relay {
            logger.info("no direct session: reaching the site through a relay", metadata: [
                "site": "\(names[site] ?? site.description)", "relay": "\(names[relay] ?? relay.description)"])
        }
        for site in old.keys where new[site] == nil {
            logger.info("site reached directly again (or gone): relay dropped", metadata: ["site": "\(names[site] ?? site.description)"])
        }
        return dead
    }

    /// The plan for the sites discovery knows now.
    public func currentPlan() throws(TunnelPlanError) -> TunnelPlan {
        try TunnelPlanner.plan(uplinks: uplinks, localEndpoints: discovery.local.endpoints,
                               remotes: discovery.sites.map(\.site), settings: settings)
    }

    /// `currentPlan()` with the relay decision in force applied (`RelayPlanner.apply`).
    public func relayedPlan() throws(TunnelPlanError) -> TunnelPlan {
        RelayPlanner.apply(relayed, to: try currentPlan())
    }

    /// Moves our overlay address if a site with a smaller id claims it; returns the new address.
    func resolveOverlayConflict() async -> IPv4Address? {
        guard let overlayPool else { return nil }
        let local = discovery.local
        // As announced: a site with a smaller id that holds our address is refused until we move.
        let known = Dictionary(discovery.announcedSites.map { ($0.siteID, $0.overlay) }, uniquingKeysWith: { a, _ in a })
        let chosen = OverlayAddressing.choose(for: local.siteID, in: overlayPool, known: known)
        guard chosen != local.overlay else { return nil }
        logger.warning("overlay address claimed by a site with a smaller id; moving", metadata: [
            "from": "\(local.overlay)", "to": "\(chosen)",
        ])
        var moved = local
        moved.overlay = chosen
        do {
            try discovery.update(moved)
        } catch {
            logger.error("cannot announce the new overlay address", metadata: ["error": "\(error)"])
            return nil
        }
        await reconciler.setAddresses([TunnelAddress(chosen, prefixLength: 32)])
        return chosen
    }

    /// Tells discovery where we see each site's tunnels from (the endpoint WireGuard learned from the peer's
    /// authenticated packets, for sessions that work): discovery sends each site its own, through its tunnels,
    /// so a site behind NAT learns and announces its public mapping. Same-label pairing only: with all-pairs
    /// an uplink announces a port block, which a NAT does not map as a block.
    func observe(_ plan: TunnelPlan, states: [String: InterfaceState]) {
        guard settings.pairing == .sameLabel else { return }
        let now = Date()
        var observed: [SiteID: [EndpointObservation.Sighting]] = [:]
        for path in plan.paths {
            guard let live = states[path.interface]?.peer(path.peer), let endpoint = live.endpoint,
                  TunnelReconciler.isWorking(lastHandshake: live.lastHandshake, now: now) else { continue }
            observed[path.remoteSite, default: []].append(.init(label: path.remoteEndpoint.label,
                                                                announced: path.remoteEndpoint.address, observed: endpoint))
        }
        discovery.setObservations(observed)
    }

    /// Throws only when discovery cannot open its sockets. `onOverlay` hears of a moved overlay address.
    public func run(onEvent: @escaping @Sendable (MeshEvent) async -> Void = { _ in },
                    onPlan: @escaping @Sendable (TunnelPlan, ReconcileReport) async -> Void = { _, _ in },
                    onOverlay: @escaping @Sendable (IPv4Address) async -> Void = { _ in })
        async throws(DiscoveryError)
    {
        let apply: @Sendable (_ observing: Bool) async -> Void = { observing in
            if let moved = await resolveOverlayConflict() { await onOverlay(moved) }
            do {
                // One read of every interface's sessions serves the relay decision and the observations.
                let states = observing ? await reconciler.states() : [:]
                let dead = observing ? decideRelays(try currentPlan(), states: states) : []
                let plan = try relayedPlan()
                let report = await reconciler.apply(plan)
                // After the plan (a dead session's site is relayed now): the old session goes, and the site
                // is direct again only once a new handshake proves the direct path.
                if !dead.isEmpty { await reconciler.restartSessions(dead) }
                await onPlan(plan, report)
                if observing { observe(plan, states: states) }
            } catch {
                logger.error("cannot plan tunnels", metadata: ["error": "\(error)"])
            }
        }
        await apply(false)  // the interfaces exist (and listen) before anyone hears of them
        await reconciler.removeStale(prefix: settings.interfacePrefix)
        let failure = await withTaskGroup(of: DiscoveryError?.self) { group -> DiscoveryError? in
            group.addTask {
                do throws(DiscoveryError) {
                    try await discovery.run()
                    return nil
                } catch {
                    return error
                }
            }
            group.addTask {
                for await event in discovery.events {
                    await onEvent(event)
                    await apply(false)
                }
                return nil
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: retryInterval)
                    if Task.isCancelled { break }
                    await apply(true)
                }
                return nil
            }
            group.addTask {
                // Cheap when no peer awaits its first handshake: no backend call at all.
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(100))
                    await reconciler.nudgeStalledHandshakes()
                }
                return nil
            }
            // The first child to end (discovery failing, or cancellation) ends all.
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        if let failure { throw failure }
    }
}

import Foundation
import Logging
import Model
import WireGuard

/// What one reconciliation did, for logs and tests.
public struct ReconcileReport: Sendable, Equatable {
    public var created: [String] = []
    public var updated: [String] = []
    public var deleted: [String] = []
    /// Interfaces that could not be brought to the plan, with the error; retried on the next `apply`.
    public var failures: [String: String] = [:]

    public init() {}
    public var changedSomething: Bool { !(created.isEmpty && updated.isEmpty && deleted.isEmpty) }
}

/// Brings WireGuard interfaces to a `TunnelPlan` through a backend, with the smallest changes:
///
/// - an interface that stays planned is never deleted or restarted; port, mark and peers change in place;
/// - a new peer is created with its endpoint in the same set, so no packet ever leaves without one;
/// - a peer whose planned endpoint changed is removed and re-added in one set, which clears wireguard-go's
///   5 s handshake rate limit so the new path handshakes at once;
/// - allowed IPs or keepalive changes update the peer in place (its session survives);
/// - interfaces no longer planned are deleted; interfaces it did not create are adopted if planned
///   (crash recovery) and otherwise left alone.
///
/// The baseline is what it last applied, not what the interface reports: WireGuard itself moves a peer's
/// endpoint when the peer roams, which must not count as a change. For an interface it has not applied yet,
/// the backend's state is the baseline. One actor serializes all changes.
public actor TunnelReconciler {
    private let backend: any WireGuardBackend
    private var privateKey: WireGuardPrivateKey
    private let logger: Logger
    private var addresses: [TunnelAddress]
    private var applied: [String: PlannedInterface] = [:]
    /// Peers we initiate to, added (or re-created) without a completed handshake yet, per interface.
    private var awaitingHandshake: [String: [WireGuardKey: Nudge]] = [:]
    /// Peers that initiate to us, added with keepalive off until their first handshake (or a deadline).
    private var keepaliveHeld: [String: [WireGuardKey: ContinuousClock.Instant]] = [:]

    private struct Nudge {
        var due: ContinuousClock.Instant
        var backoff: Duration
    }

    /// Actor methods are re-entrant at every `await`: without this, an event-driven `apply` and the ticker's
    /// could interleave and leave an older plan applied, or a nudge could re-add a peer just removed.
    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    private func exclusively<T>(_ body: () async -> T) async -> T {
        if busy {
            await withCheckedContinuation { waiting.append($0) }
        }
        busy = true
        defer {
            if waiting.isEmpty { busy = false } else { waiting.removeFirst().resume() }
        }
        return await body()
    }

    /// First nudge of a peer without a handshake after this long (a handshake takes one round trip); then
    /// 2x, up to `maxNudgeBackoff`. The cap is short because initiations are lost in bursts (every site
    /// measuring every path at start saturates the links for a few seconds): with 8 s, a tunnel whose first
    /// initiations fell into that burst came up 15.5 s after the others (seen in the lab demo); with 2 s it
    /// retries at 3.75 and 5.75 s. A nudge is one UAPI set on a peer that has no session to lose.
    public static let firstNudge: Duration = .milliseconds(250)
    public static let maxNudgeBackoff: Duration = .seconds(2)
    /// A peer that should initiate to us gets its keepalive (and so we initiate) after this long even without
    /// a handshake: it may be unable to reach us, because it announced an address that is private behind a NAT
    /// (we then reach it only once our own initiation has opened the NAT's mapping from its side, or it
    /// reaches us: whichever initiates through the NAT works). 1 s: the designated initiator's handshake takes
    /// one round trip, and its nudges at 0.25 and 0.75 s have had their chance, so the two initiations do not
    /// cross; with 2 s a NATed path came up only after about 2.6 s.
    public static let keepaliveHoldLimit: Duration = .seconds(1)
    /// A session whose last handshake is younger than this is working (WireGuard re-handshakes every 2 min
    /// while traffic flows; keepalives every 25 s keep it flowing): its endpoint, possibly one WireGuard
    /// learned from the peer's authenticated packets (the address a NAT shows us), is kept.
    public static let workingSessionAge: TimeInterval = 180

    /// Whether a session whose last handshake was at `lastHandshake` (nil: never) is working at `now`.
    public static func isWorking(lastHandshake: Date?, now: Date) -> Bool {
        lastHandshake.map { now.timeIntervalSince($0) < workingSessionAge } ?? false
    }

    /// One initiator per pair: the side whose public key sorts first. A new peer sends its first keepalive,
    /// and so a handshake initiation, the moment it is added; when both sides add each other at once their
    /// initiations cross, each consumes the other's (dropping its own pending handshake) and both refuse
    /// the responses: WireGuard then waits its 5 s retry, and a retry racing a half-finished exchange can
    /// leave one direction without a usable session (both seen in the lab). So the other side adds the
    /// peer with keepalive off (it answers, it does not initiate) and turns it on after the handshake.
    private func weInitiate(to key: WireGuardKey) -> Bool {
        privateKey.publicKey.bytes.lexicographicallyPrecedes(key.bytes)
    }

    /// `addresses` go on every tunnel interface (the site's overlay address as a /32).
    public init(backend: any WireGuardBackend, privateKey: WireGuardPrivateKey, addresses: [TunnelAddress],
                logger: Logger = Logger(label: "patronus.mesh.tunnels")) {
        self.backend = backend
        self.privateKey = privateKey
        self.addresses = addresses
        self.logger = logger
    }

    /// Changes the addresses every tunnel interface carries (the overlay moved): adds the new ones to every
    /// applied interface, then removes the old ones. Used when a site with a smaller id claims our overlay.
    public func setAddresses(_ new: [TunnelAddress]) async {
        await exclusively { await setAddressesNow(new) }
    }

    private func setAddressesNow(_ new: [TunnelAddress]) async {
        let old = addresses.filter { !new.contains($0) }
        addresses = new
        for name in applied.keys.sorted() {
            do {
                try await backend.bringUp(name, addresses: new)
                try await backend.removeAddresses(old, from: name)
            } catch {
                logger.warning("tunnel address change failed", metadata: ["interface": "\(name)", "error": "\(error)"])
            }
        }
    }

    /// First nudge after a key change: the other sites learn the new key from the announcement sent right
    /// after the change (one one-way delay), so the first initiation worth sending is due soon after it.
    public static let rekeyFirstNudge: Duration = .milliseconds(50)

    /// Replaces the site's WireGuard private key on every tunnel interface, without taking one down: the
    /// device gets the new key and every peer is re-created (its sessions were made with the old key, and a
    /// re-created peer has no handshake, so the first-handshake maintenance applies: we initiate to the peers
    /// whose key sorts after our new one, from `rekeyFirstNudge` on; the others initiate to us once they
    /// have our new key). Announce the new public key right after this returns.
    public func replacePrivateKey(_ key: WireGuardPrivateKey) async {
        await exclusively {
            guard key.publicKey != privateKey.publicKey else { return }
            privateKey = key
            let due = ContinuousClock.now + Self.rekeyFirstNudge
            for name in applied.keys.sorted() {
                guard let interface = applied[name] else { continue }
                var update = DeviceUpdate(privateKey: key.secret)
                for peer in interface.peers { update.peers += [.removing(peer.publicKey), PeerUpdate(setting: peer)] }
                awaitingHandshake[name] = nil
                keepaliveHeld[name] = nil
                update = holdingKeepalive(update, fresh: Set(interface.peers.map(\.publicKey)), on: name)
                for peer in interface.peers where weInitiate(to: peer.publicKey) {
                    awaitingHandshake[name, default: [:]][peer.publicKey] = Nudge(due: due, backoff: Self.rekeyFirstNudge)
                }
                do {
                    try await backend.configure(name, update)
                } catch {
                    logger.warning("the new private key was not set", metadata: ["interface": "\(name)", "error": "\(error)"])
                }
            }
        }
    }

    /// The public half of the key the tunnels use now.
    public var publicKey: WireGuardKey { privateKey.publicKey }

    /// The interfaces as last applied.
    public var interfaces: [PlannedInterface] { applied.values.sorted { $0.name < $1.name } }

    /// Applies `plan`. Failures of one interface do not stop the others; they are reported and retried
    /// on the next call.
    @discardableResult
    public func apply(_ plan: TunnelPlan) async -> ReconcileReport {
        await exclusively { await applyNow(plan) }
    }

    private func applyNow(_ plan: TunnelPlan) async -> ReconcileReport {
        var report = ReconcileReport()
        let planned = Set(plan.interfaces.map(\.name))
        for name in applied.keys.sorted() where !planned.contains(name) {
            do {
                try await backend.deleteInterface(named: name)
                applied[name] = nil
                awaitingHandshake[name] = nil
                keepaliveHeld[name] = nil
                report.deleted.append(name)
                logger.info("tunnel interface removed", metadata: ["interface": "\(name)"])
            } catch {
                report.failures[name] = String(describing: error)
            }
        }
        for interface in plan.interfaces {
            do {
                if let before = applied[interface.name] {
                    if try await update(from: before, to: interface) { report.updated.append(interface.name) }
                } else if let state = try? await backend.state(of: interface.name) {
                    // Adopt what a previous run left: diff against what the interface reports, keeping the
                    // endpoints of working sessions (learned through a NAT, they are what works).
                    _ = try await update(from: Self.baseline(state, like: interface, privateKey: privateKey, now: Date()),
                                         to: interface, forceDevice: state.publicKey != privateKey.publicKey)
                    try await backend.bringUp(interface.name, addresses: addresses)
                    report.updated.append(interface.name)
                } else {
                    // Up first, peers second: wireguard-go sends its first keepalive (and so the handshake)
                    // when a peer is added to an up interface, not when a configured one comes up.
                    var empty = configuration(interface)
                    empty.peers = []
                    try await backend.start(interface.name, configuration: empty, addresses: addresses)
                    if !interface.peers.isEmpty {
                        let peers = DeviceUpdate(peers: interface.peers.map(PeerUpdate.init(setting:)))
                        try await backend.configure(interface.name, holdingKeepalive(peers, fresh: Self.freshPeers(from: nil, to: interface),
                                                                                     on: interface.name))
                    }
                    report.created.append(interface.name)
                    logger.info("tunnel interface created", metadata: [
                        "interface": "\(interface.name)", "uplink": "\(interface.uplink)", "port": "\(interface.listenPort)",
                        "peers": "\(interface.peers.count)",
                    ])
                }
                trackFreshPeers(from: applied[interface.name], to: interface)
                applied[interface.name] = interface
            } catch {
                report.failures[interface.name] = String(describing: error)
                logger.warning("tunnel interface not reconciled", metadata: [
                    "interface": "\(interface.name)", "error": "\(error)",
                ])
            }
        }
        return report
    }

    /// First-handshake maintenance, one set per interface. Peers we initiate to (see `weInitiate`) that have
    /// no handshake yet are re-created (remove + add), which sends a fresh initiation at once: our first
    /// one can reach a site that does not know us yet, and WireGuard would retry only after 5 s (after
    /// 0.25 s, then 0.5, 1, 2, 2 ... s). Peers that initiate to us get their keepalive once their handshake is
    /// done (or after `keepaliveHoldLimit`). Returns how many peers were re-created. The tunnel driver
    /// calls it every 100 ms; with nothing pending it costs nothing.
    @discardableResult
    public func nudgeStalledHandshakes() async -> Int {
        await exclusively { await nudgeNow() }
    }

    private func nudgeNow() async -> Int {
        let now = ContinuousClock.now
        var nudged = 0
        let names = Set(awaitingHandshake.filter { $0.value.values.contains { now >= $0.due } }.keys)
            .union(keepaliveHeld.filter { !$0.value.isEmpty }.keys)
        for name in names.sorted() {
            guard let interface = applied[name], let state = try? await backend.state(of: name) else { continue }
            var update = DeviceUpdate()
            for (key, nudge) in awaitingHandshake[name] ?? [:] {
                guard let planned = interface.peers.first(where: { $0.publicKey == key }),
                      let live = state.peer(key), live.lastHandshake == nil else {
                    awaitingHandshake[name]?[key] = nil
                    continue
                }
                guard now >= nudge.due else { continue }
                update.peers += [.removing(key), PeerUpdate(setting: planned)]
                nudged += 1
                let backoff = min(nudge.backoff * 2, Self.maxNudgeBackoff)
                awaitingHandshake[name]?[key] = Nudge(due: now + backoff, backoff: backoff)
            }
            for (key, deadline) in keepaliveHeld[name] ?? [:] {
                guard let planned = interface.peers.first(where: { $0.publicKey == key }) else {
                    keepaliveHeld[name]?[key] = nil
                    continue
                }
                guard state.peer(key)?.lastHandshake != nil || now >= deadline else { continue }
                // Keepalive on, nothing else touched: the session stays.
                update.peers.append(PeerUpdate(publicKey: key, persistentKeepalive: planned.persistentKeepalive))
                keepaliveHeld[name]?[key] = nil
            }
            if awaitingHandshake[name]?.isEmpty == true { awaitingHandshake[name] = nil }
            if keepaliveHeld[name]?.isEmpty == true { keepaliveHeld[name] = nil }
            guard !update.peers.isEmpty else { continue }
            do {
                try await backend.configure(name, update)
            } catch {
                logger.warning("first-handshake maintenance failed", metadata: ["interface": "\(name)", "error": "\(error)"])
            }
        }
        return nudged
    }

    /// Peers that are new, or whose endpoint changed (they are re-created), between two versions.
    static func freshPeers(from before: PlannedInterface?, to after: PlannedInterface) -> Set<WireGuardKey> {
        let old = Dictionary((before?.peers ?? []).map { ($0.publicKey, $0.endpoint) }, uniquingKeysWith: { a, _ in a })
        return Set(after.peers.filter { old[$0.publicKey] == nil || old[$0.publicKey]! != $0.endpoint }.map(\.publicKey))
    }

    /// Turns keepalive off in `update` for fresh peers that initiate to us, remembering to turn it on.
    private func holdingKeepalive(_ update: DeviceUpdate, fresh: Set<WireGuardKey>, on name: String) -> DeviceUpdate {
        var held = update
        let deadline = ContinuousClock.now + Self.keepaliveHoldLimit
        for index in held.peers.indices {
            let peer = held.peers[index]
            guard !peer.remove, fresh.contains(peer.publicKey), !weInitiate(to: peer.publicKey),
                  (peer.persistentKeepalive ?? 0) > 0 else { continue }
            held.peers[index].persistentKeepalive = 0
            keepaliveHeld[name, default: [:]][peer.publicKey] = deadline
        }
        return held
    }

    private func trackFreshPeers(from before: PlannedInterface?, to after: PlannedInterface) {
        let due = ContinuousClock.now + Self.firstNudge
        for key in Self.freshPeers(from: before, to: after) where weInitiate(to: key) {
            awaitingHandshake[after.name, default: [:]][key] = Nudge(due: due, backoff: Self.firstNudge)
        }
        let kept = Set(after.peers.map(\.publicKey))
        awaitingHandshake[after.name] = awaitingHandshake[after.name]?.filter { kept.contains($0.key) }
        keepaliveHeld[after.name] = keepaliveHeld[after.name]?.filter { kept.contains($0.key) }
    }

    /// Re-creates the peers of `sessions` as applied (one set per interface): their sessions (keys, learned
    /// endpoint, last handshake) are gone, and the first-handshake maintenance takes over as for a new
    /// peer: we initiate (nudged) when our key sorts first, else the peer's keepalive is held for
    /// `keepaliveHoldLimit`. For a session found dead (`RelayPlanner.deadSessions`).
    public func restartSessions(_ sessions: Set<TunnelSession>) async {
        await exclusively {
            let due = ContinuousClock.now + Self.firstNudge
            for (name, group) in Dictionary(grouping: sessions, by: \.interface).sorted(by: { $0.key < $1.key }) {
                guard let interface = applied[name] else { continue }
                let keys = Set(group.map(\.peer))
                var update = DeviceUpdate()
                for peer in interface.peers where keys.contains(peer.publicKey) {
                    update.peers += [.removing(peer.publicKey), PeerUpdate(setting: peer)]
                    if weInitiate(to: peer.publicKey) {
                        awaitingHandshake[name, default: [:]][peer.publicKey] = Nudge(due: due, backoff: Self.firstNudge)
                    }
                }
                guard !update.peers.isEmpty else { continue }
                update = holdingKeepalive(update, fresh: keys, on: name)
                do {
                    try await backend.configure(name, update)
                } catch {
                    logger.warning("restarting a dead session failed", metadata: ["interface": "\(name)", "error": "\(error)"])
                }
            }
        }
    }

    /// Deletes WireGuard interfaces named with `prefix` that this reconciler does not manage: what a crashed
    /// run left and no plan wants (a planned one is adopted by `apply` instead). Call once at start, after
    /// the first `apply`. Returns the names removed.
    @discardableResult
    public func removeStale(prefix: String) async -> [String] {
        await exclusively {
            guard let found = try? await backend.interfaces(withPrefix: prefix) else { return [] }
            var removed: [String] = []
            for name in found where applied[name] == nil {
                do {
                    try await backend.deleteInterface(named: name)
                    removed.append(name)
                    logger.notice("removed a tunnel interface left by an earlier run", metadata: ["interface": "\(name)"])
                } catch {
                    logger.warning("cannot remove a stale tunnel interface", metadata: ["interface": "\(name)", "error": "\(error)"])
                }
            }
            return removed
        }
    }

    /// Deletes every interface this reconciler applied (shutdown; stop the `TunnelDriver` first).
    public func removeAll() async {
        _ = await apply(TunnelPlan(interfaces: [], paths: []))
    }

    /// Live state of every applied interface (handshakes, counters), for path status.
    public func states() async -> [String: InterfaceState] {
        var result: [String: InterfaceState] = [:]
        for name in applied.keys { result[name] = try? await backend.state(of: name) }
        return result
    }

    private func configuration(_ interface: PlannedInterface) -> InterfaceConfiguration {
        InterfaceConfiguration(privateKey: privateKey.secret, listenPort: interface.listenPort,
                               fwmark: interface.fwmark, peers: interface.peers)
    }

    /// Sends the difference (if any); true when something was sent. A peer whose announced endpoint changed
    /// while its session works at another endpoint (one WireGuard learned: the peer is behind a NAT, or it
    /// roamed) keeps its session and endpoint: the announced address may be one we cannot reach.
    private func update(from before: PlannedInterface, to after: PlannedInterface,
                        forceDevice: Bool = false) async throws(WireGuardError) -> Bool {
        var working: Set<WireGuardKey> = []
        if Self.endpointChanges(from: before, to: after), let state = try? await backend.state(of: after.name) {
            working = Self.workingLearnedEndpoints(state, planned: before, now: Date())
        }
        guard let difference = Self.difference(from: before, to: after, privateKey: forceDevice ? privateKey : nil,
                                               keepingEndpointOf: working) else {
            return false
        }
        let planned = Dictionary(after.peers.map { ($0.publicKey, $0.endpoint) }, uniquingKeysWith: { a, _ in a })
        for peer in before.peers where working.contains(peer.publicKey) && planned[peer.publicKey].map({ $0 != peer.endpoint }) == true {
            logger.info("announced endpoint changed; keeping the working learned one", metadata: [
                "interface": "\(after.name)", "peer": "\(peer.publicKey)",
                "announced": "\(planned[peer.publicKey]!.map { "\($0)" } ?? "-")",
            ])
        }
        let change = holdingKeepalive(difference, fresh: Self.freshPeers(from: before, to: after), on: after.name)
        try await backend.configure(after.name, change)
        logger.info("tunnel interface updated", metadata: [
            "interface": "\(after.name)", "peers_changed": "\(change.peers.count)",
        ])
        return true
    }

    /// True when some peer kept across the two versions has a different endpoint.
    static func endpointChanges(from before: PlannedInterface, to after: PlannedInterface) -> Bool {
        let old = Dictionary(before.peers.map { ($0.publicKey, $0.endpoint) }, uniquingKeysWith: { a, _ in a })
        return after.peers.contains { peer in old[peer.publicKey].map { $0 != peer.endpoint } ?? false }
    }

    /// Peers of `state` with a working session (handshake within `workingSessionAge`) at an endpoint other
    /// than the one we set (`planned`): WireGuard learned it from the peer's authenticated packets. Pure.
    static func workingLearnedEndpoints(_ state: InterfaceState, planned: PlannedInterface, now: Date) -> Set<WireGuardKey> {
        Set(state.peers.filter { live in
            guard isWorking(lastHandshake: live.lastHandshake, now: now),
                  let set = planned.peers.first(where: { $0.publicKey == live.publicKey }) else { return false }
            return live.endpoint != nil && live.endpoint != set.endpoint
        }.map(\.publicKey))
    }

    /// The one UAPI/genetlink set that turns `before` into `after`, or nil when they are equal. Pure.
    /// Peers in `keepingEndpointOf` are not re-created for a new endpoint (their working session and learned
    /// endpoint stay); their other changes apply in place.
    static func difference(from before: PlannedInterface, to after: PlannedInterface,
                           privateKey: WireGuardPrivateKey? = nil,
                           keepingEndpointOf kept: Set<WireGuardKey> = []) -> DeviceUpdate? {
        var update = DeviceUpdate()
        update.privateKey = privateKey?.secret
        if before.listenPort != after.listenPort { update.listenPort = after.listenPort }
        if before.fwmark != after.fwmark { update.fwmark = after.fwmark }
        let old = Dictionary(before.peers.map { ($0.publicKey, $0) }, uniquingKeysWith: { a, _ in a })
        let new = Set(after.peers.map(\.publicKey))
        for peer in before.peers where !new.contains(peer.publicKey) { update.peers.append(.removing(peer.publicKey)) }
        for peer in after.peers {
            guard let previous = old[peer.publicKey] else {
                update.peers.append(PeerUpdate(setting: peer))
                continue
            }
            if previous.endpoint != peer.endpoint && !kept.contains(peer.publicKey) {
                update.peers.append(.removing(peer.publicKey))
                update.peers.append(PeerUpdate(setting: peer))
            } else if Set(previous.allowedIPs) != Set(peer.allowedIPs)
                        || previous.persistentKeepalive != peer.persistentKeepalive {
                var inPlace = PeerUpdate(setting: peer)
                if kept.contains(peer.publicKey) { inPlace.endpoint = nil }  // no endpoint: WireGuard keeps its own
                update.peers.append(inPlace)
            }
        }
        let changed = update.privateKey != nil || update.listenPort != nil || update.fwmark != nil || !update.peers.isEmpty
        return changed ? update : nil
    }

    /// An interface's reported state in plan form, for adoption. A peer with a working session keeps its
    /// endpoint (it is what works, possibly learned through a NAT: the baseline takes the planned one, so no
    /// change is seen); other endpoints that differ from the plan are set again (the peer is re-created).
    static func baseline(_ state: InterfaceState, like interface: PlannedInterface,
                         privateKey: WireGuardPrivateKey, now: Date) -> PlannedInterface {
        var baseline = interface
        baseline.listenPort = state.listenPort
        baseline.fwmark = state.fwmark
        let planned = Dictionary(interface.peers.map { ($0.publicKey, $0.endpoint) }, uniquingKeysWith: { a, _ in a })
        baseline.peers = state.peers.map {
            let working = isWorking(lastHandshake: $0.lastHandshake, now: now)
            let endpoint = working && planned[$0.publicKey] != nil ? planned[$0.publicKey]! : $0.endpoint
            return PeerConfiguration(publicKey: $0.publicKey, endpoint: endpoint, allowedIPs: $0.allowedIPs,
                                     persistentKeepalive: $0.persistentKeepalive)
        }
        return baseline
    }
}

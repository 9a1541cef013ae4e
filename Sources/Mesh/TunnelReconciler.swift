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
    private let privateKey: WireGuardPrivateKey
    private let logger: Logger
    private var addresses: [InterfaceAddress]
    private var applied: [String: PlannedInterface] = [:]

    /// `addresses` go on every tunnel interface (the site's overlay address as a /32).
    public init(backend: any WireGuardBackend, privateKey: WireGuardPrivateKey, addresses: [InterfaceAddress],
                logger: Logger = Logger(label: "patronus.mesh.tunnels")) {
        self.backend = backend
        self.privateKey = privateKey
        self.addresses = addresses
        self.logger = logger
    }

    /// The interfaces as last applied.
    public var interfaces: [PlannedInterface] { applied.values.sorted { $0.name < $1.name } }

    /// Applies `plan`. Failures of one interface do not stop the others; they are reported and retried
    /// on the next call.
    @discardableResult
    public func apply(_ plan: TunnelPlan) async -> ReconcileReport {
        var report = ReconcileReport()
        let planned = Set(plan.interfaces.map(\.name))
        for name in applied.keys.sorted() where !planned.contains(name) {
            do {
                try await backend.deleteInterface(named: name)
                applied[name] = nil
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
                    // Adopt what a previous run left: diff against what the interface reports.
                    _ = try await update(from: Self.baseline(state, like: interface, privateKey: privateKey), to: interface,
                                     forceDevice: state.publicKey != privateKey.publicKey)
                    try await backend.bringUp(interface.name, addresses: addresses)
                    report.updated.append(interface.name)
                } else {
                    try await backend.start(interface.name, configuration: configuration(interface), addresses: addresses)
                    report.created.append(interface.name)
                    logger.info("tunnel interface created", metadata: [
                        "interface": "\(interface.name)", "uplink": "\(interface.uplink)", "port": "\(interface.listenPort)",
                        "peers": "\(interface.peers.count)",
                    ])
                }
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

    /// Deletes every interface this reconciler applied (shutdown).
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

    /// Sends the difference (if any); true when something was sent.
    private func update(from before: PlannedInterface, to after: PlannedInterface,
                        forceDevice: Bool = false) async throws(WireGuardError) -> Bool {
        guard let change = Self.difference(from: before, to: after, privateKey: forceDevice ? privateKey : nil) else {
            return false
        }
        try await backend.configure(after.name, change)
        logger.info("tunnel interface updated", metadata: [
            "interface": "\(after.name)", "peers_changed": "\(change.peers.count)",
        ])
        return true
    }

    /// The one UAPI/genetlink set that turns `before` into `after`, or nil when they are equal. Pure.
    static func difference(from before: PlannedInterface, to after: PlannedInterface,
                           privateKey: WireGuardPrivateKey? = nil) -> DeviceUpdate? {
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
            if previous.endpoint != peer.endpoint {
                update.peers.append(.removing(peer.publicKey))
                update.peers.append(PeerUpdate(setting: peer))
            } else if Set(previous.allowedIPs) != Set(peer.allowedIPs)
                        || previous.persistentKeepalive != peer.persistentKeepalive {
                update.peers.append(PeerUpdate(setting: peer))
            }
        }
        let changed = update.privateKey != nil || update.listenPort != nil || update.fwmark != nil || !update.peers.isEmpty
        return changed ? update : nil
    }

    /// An interface's reported state in plan form, for adoption. Endpoints the peer roamed to count as
    /// changes here (we have no record of what was set), which at worst re-creates those peers once.
    static func baseline(_ state: InterfaceState, like interface: PlannedInterface,
                         privateKey: WireGuardPrivateKey) -> PlannedInterface {
        var baseline = interface
        baseline.listenPort = state.listenPort
        baseline.fwmark = state.fwmark
        baseline.peers = state.peers.map {
            PeerConfiguration(publicKey: $0.publicKey, endpoint: $0.endpoint, allowedIPs: $0.allowedIPs,
                              persistentKeepalive: $0.persistentKeepalive)
        }
        return baseline
    }
}

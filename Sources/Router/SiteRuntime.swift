import Foundation
import Logging
import Mesh
import Model
import Probing
import Routing
import Steering
import Store
import WireGuard

/// The glue between the daemon's services: it turns tunnel plans into paths (the `PathRegistry`: slots,
/// probe targets, database rows, the controller's topology), site events into database rows, and probe
/// events into controller updates and path status. One actor, so these views never disagree with each other.
/// It never waits for the database: every row goes to the `StoreWriter`'s queue.
actor SiteRuntime {
    let writer: StoreWriter
    let controller: Controller
    let probes: PathProbeSet
    let probeInterval: Duration
    let logger: Logger

    private var registry: PathRegistry
    private var paths: [String: PlannedRoute] { registry.paths }
    private var lastTopology: [PathBinding] = []
    private var lastSites: [RemoteSite] = []
    private var bandwidth = BandwidthSchedule()
    /// The paths leaving by each uplink (not actor-isolated: the UplinkWatcher takes a dead uplink's paths
    /// down without waiting for this actor).
    nonisolated let uplinkPaths: UplinkPaths
    /// Passive throughput per path (by probe name), from its tunnel peer's transfer counters.
    private var throughput: [String: ThroughputMeter] = [:]
    private var carried: [String: Throughput] = [:]

    typealias PlannedRoute = PathRegistry.PlannedRoute

    /// `pathIDs`: the `paths.id` of every path the database has (read at start); new paths are numbered after them.
    /// Hears every path's status with its tunnel session (the relay decision's `pathDown`).
    let onPathStatus: @Sendable (TunnelSession, PathStatus) -> Void

    /// The last run's download estimate of each path (`Daemon.restorableDownloads`): handed to the path's
    /// first prober, once.
    private var restoredDownloads: [PathID: Double]

    init(writer: StoreWriter, pathIDs: [PathKey: PathID] = [:], controller: Controller, probes: PathProbeSet,
         probeInterval: Duration, restoredDownloads: [PathID: Double] = [:], logger: Logger,
         onPathStatus: @escaping @Sendable (TunnelSession, PathStatus) -> Void = { _, _ in }) {
        self.onPathStatus = onPathStatus
        self.restoredDownloads = restoredDownloads
        self.writer = writer
        registry = PathRegistry(ids: pathIDs)
        self.controller = controller
        self.probes = probes
        self.probeInterval = probeInterval
        self.logger = logger
        uplinkPaths = UplinkPaths(probes: probes)
    }

    /// The latency the routing engine steers on is the median RTT over the last `latencyWindow` (0.5 s): a
    /// median still ignores single late replies, and a latency change is seen in ~0.3 s, so with the 1 s
    /// hold-down and metrics every 250 ms a VoIP class follows swapped latencies within 2 s (issue 7). The
    /// prober's default (100 samples, 5 s) alone took 2.5 s to notice and ~4.4 s to move in the lab.
    static let latencyWindow = Duration.milliseconds(500)
    /// How often each prober reports metrics to the controller.
    static let metricsInterval = Duration.milliseconds(250)

    static func latencyWindowSamples(probeInterval: Duration) -> Int {
        max(5, Int((latencyWindow / probeInterval).rounded()))
    }

    /// A new tunnel plan: every path it carries gets a slot, a row, a prober; paths that left lose theirs.
    /// Returns every path as a route for discovery: our announcements also travel through every tunnel, so
    /// a site stays known for as long as any path to it works.
    @discardableResult
    func planned(_ plan: TunnelPlan, sites: [Announcement]) async -> [TunnelRoute] {
        let (routes, unslotted) = registry.routes(of: plan)
        for key in unslotted {
            logger.error("no steering slot left for path \(key): at most \(Conventions.pathSlots.count) paths at once")
        }
        let remoteSites = sites.map { announcement in
            RemoteSite(id: announcement.site.siteID, name: announcement.site.name,
                       prefixes: [IPv4Prefix(announcement.site.overlay, length: 32)] + announcement.site.lanPrefixes)
        }
        let bindings = routes.values.map(\.binding).sorted { $0.slot < $1.slot }
        if bindings != lastTopology || remoteSites != lastSites {
            do {
                try await controller.setTopology(sites: remoteSites, paths: bindings)
                lastTopology = bindings
                lastSites = remoteSites
            } catch {
                logger.error("steering the new topology failed; keeping the previous one: \(error)")
                return tunnelRoutes
            }
        }

        // Probers: one per path, pinned by the path's mark, to the remote site's overlay address.
        for (name, route) in routes where paths[name] == nil {
            guard let overlay = sites.first(where: { $0.site.siteID == route.key.site })?.site.overlay else { continue }
            do {
                var configuration = ProbeConfiguration()
                configuration.interval = probeInterval
                configuration.rttWindow = Self.latencyWindowSamples(probeInterval: probeInterval)
                let restored = restoredDownloads.removeValue(forKey: route.binding.id)
                try probes.add(ProbeTarget(name: name, remote: SocketAddress4(overlay, port: Conventions.probePort),
                                           pinning: .mark(route.binding.mark)),
                               configuration: configuration, restoredDownloadMbps: restored)
                if let restored { logger.info("path \(name): the last run's download estimate, \(String(format: "%.1f", restored)) Mbit/s, stands until the far site measures again") }
            } catch {
                logger.error("cannot probe path \(name): \(error)")
            }
        }
        for name in paths.keys where routes[name] == nil {
            probes.remove(name)
            bandwidth.pathRemoved(name)
        }

        bindingsByName = routes.mapValues(\.binding)

        // Database rows: every path of the plan; paths that left are marked down (their history stays).
        writer.enqueue(registry.adopt(routes, of: plan))
        uplinkPaths.planned(registry.namesByUplink)
        let overlays = Dictionary(sites.map { ($0.site.siteID, $0.site.overlay) }, uniquingKeysWith: { a, _ in a })
        tunnelRoutes = routes.values.sorted { $0.binding.slot < $1.binding.slot }.compactMap { route in
            overlays[route.key.site].map { TunnelRoute(site: route.key.site, overlay: $0, mark: route.binding.mark) }
        }
        return tunnelRoutes
    }

    /// A new tunnel plan for the sites `discovery` knows; discovery then announces through every path.
    func planned(_ plan: TunnelPlan, discovery: DiscoveryService) async {
        discovery.setTunnelRoutes(await planned(plan, sites: discovery.sites))
    }

    /// The routes of the last plan that steering accepted.
    private var tunnelRoutes: [TunnelRoute] = []
    /// Every planned path's kernel binding (tunnel interface, uplink label), by prober name.
    private var bindingsByName: [String: PathBinding] = [:]

    /// Every planned path's kernel binding, by the name its prober reports under (the shaping service's view).
    func pathBindings() -> [String: PathBinding] { bindingsByName }

    /// Sites restored from the database at start: their first `siteAppeared` is not news for the database
    /// (their rows are where they came from), and must not refresh `last_seen` for a site nobody heard.
    private var restored: Set<SiteID> = []

    func restoring(_ sites: [SiteID]) { restored.formUnion(sites) }

    /// A discovery event: the site's row and endpoints follow what it announces.
    func siteEvent(_ event: MeshEvent) {
        if case .siteAppeared(let announcement) = event, restored.remove(announcement.siteID) != nil { return }
        if case .siteExpired(let announcement) = event { restored.remove(announcement.siteID) }
        if case .siteRevoked(let announcement) = event { restored.remove(announcement.siteID) }
        switch event {
        case .siteAppeared(let announcement), .siteChanged(_, let announcement):
            let site = announcement.site
            writer.enqueue(.remoteSite(Self.record(of: site), endpoints: site.endpoints))
            // Discovery already logged the change at info (one line per state change): details only.
            logger.debug("site recorded", metadata: ["site": "\(site.name)", "id": "\(site.siteID)",
                                                     "endpoints": "\(site.endpoints.map(\.description))"])
        case .siteExpired(let announcement), .siteRevoked(let announcement):
            writer.enqueue(.siteStatus(announcement.site.siteID, .inactive))
            logger.debug("site recorded inactive", metadata: ["site": "\(announcement.site.name)"])
        }
    }

    /// A remote site's row as it announces itself, seen now.
    private static func record(of site: SiteDescription) -> SiteRecord {
        SiteRecord(id: site.siteID, name: site.name, status: .active, lastSeen: Date(), overlayAddress: site.overlay,
                   publicKey: site.publicKey.base64, lanPrefixes: site.lanPrefixes)
    }

    /// Sites are seen continuously; keep last_seen current without a write per announcement.
    func touchSites(_ sites: [Announcement]) {
        writer.enqueue(sites.map { .remoteSite(Self.record(of: $0.site), endpoints: nil) })
    }

    private var lastLocalEndpoints: [LocalEndpoint]?

    /// Our endpoints and their public mappings, for `status` (rewritten only when they change).
    func recordLocalEndpoints(_ endpoints: [LocalEndpoint]) {
        guard endpoints != lastLocalEndpoints else { return }
        writer.enqueue(.localEndpoints(endpoints, at: Date()))
        lastLocalEndpoints = endpoints
    }

    private var lastConflicts: [PrefixConflict] = []

    /// The refused prefixes, for `status` (rewritten only when they change).
    func recordConflicts(_ conflicts: [PrefixConflict]) {
        guard conflicts != lastConflicts else { return }
        writer.enqueue(.conflicts(conflicts.map {
            ConflictRecord(siteID: $0.site.description, siteName: $0.siteName, prefix: $0.prefix.description,
                           kind: $0.kind.rawValue, heldPrefix: $0.heldPrefix.description,
                           holderID: $0.holder?.description, holderName: $0.holderName, since: Date())
        }))
        lastConflicts = conflicts
    }

    /// A prober's event: the controller hears it first (a down path moves traffic now), then the database's
    /// queue.
    func pathEvent(_ event: PathEvent) async {
        guard let route = paths[event.path] else { return }
        onPathStatus(TunnelSession(interface: route.path.interface, peer: route.path.peer), event.status)
        var detectionMs: Double?
        if let change = event.change, change.to == .down, let first = change.firstMissSentAt {
            detectionMs = Controller.milliseconds(change.at - first)
        }
        do {
            try await controller.pathUpdated(route.key, status: event.status, metrics: event.metrics,
                                              detectionMs: detectionMs)
        } catch {
            logger.error("steering after a path change failed: \(error)")
        }
        if let change = event.change {
            logger.info("path \(change.to.rawValue)", metadata: [
                "path": "\(event.path)", "path_id": "\(route.binding.id)", "reason": "\(change.reason)",
            ])
            // The status and the measurements that decided it, together: a report read right after a path
            // came back never shows its new status beside the loss of its outage.
            var metrics = event.metrics
            metrics.throughputTxMbps = carried[event.path]?.transmitMbps
            metrics.throughputRxMbps = carried[event.path]?.receiveMbps
            writer.enqueue(.pathState(PathStateWrite(key: route.key, status: event.status, score: metrics.score,
                                                     metrics: metrics, at: Date())))
            if change.to == .up { bandwidth.pathCameUp(event.path) }
        }
    }

    /// The next path whose bandwidth should be measured, if any (`BandwidthSchedule`).
    func nextBandwidthTest() -> String? {
        bandwidth.next { paths[$0] != nil }
    }

    /// The other paths whose probes leave by the same local uplink as `name` (a bandwidth test on it loads them too).
    func pathsSharingUplink(with name: String) -> [String] {
        registry.sharingUplink(with: name)
    }

    /// A remote site's bandwidth train is arriving through `interface`: excuse the probes of every path that
    /// leaves by the same uplink for a moment (one train plus the queue draining).
    func trainArriving(through interface: String) {
        let names = registry.leavingBy(interface: interface)
        guard !names.isEmpty else { return }
        probes.excuse(names, for: .milliseconds(500))
    }

    /// A train of a remote site's bandwidth test was measured here: it came in through our tunnel
    /// `interface` from `source`. It is the download of the path that interface carries to the site whose
    /// overlay address `source` is (WireGuard delivered it: only that site's peer, or its relay's, may send
    /// from that address into the interface); a train from anything else (a LAN host, an unknown source,
    /// an interface that is no tunnel of ours) is ignored.
    func downloadTrainMeasured(through interface: String, from source: IPv4Address, _ report: TrainReport) {
        guard let site = tunnelRoutes.first(where: { $0.overlay == source })?.site,
              let name = registry.arriving(through: interface, from: site) else { return }
        probes.recordDownloadTrain(path: name, report)
    }

    /// A test that got no report is queued again, at most twice per round.
    func bandwidthTestFailed(_ name: String) {
        bandwidth.testFailed(name, exists: paths[name] != nil)
    }

    /// Queues every path for a new measurement (the daemon does this rarely: bandwidth changes slowly, and a
    /// test costs the path a short burst).
    func remeasureBandwidth() {
        bandwidth.remeasure(paths.keys.sorted())
    }

    /// One metrics row per path, queued together (so written in one transaction unless the queue is full);
    /// scores and statuses refreshed with them. `tunnels`
    /// (the WireGuard interfaces' live state) feed each path's passive throughput; without them (the final
    /// flush at shutdown) the rows carry the last reading.
    func writeMetrics(tunnels: [String: InterfaceState]? = nil, at instant: MonotonicInstant = .now()) {
        let snapshot = probes.snapshot()
        let now = Date()
        if let tunnels {
            carried = [:]
            for name in throughput.keys where paths[name] == nil { throughput[name] = nil }
            for (name, route) in paths {
                // A peer that is gone (tunnel re-created) restarts its meter, as a counter going back would.
                guard let peer = tunnels[route.path.interface]?.peer(route.path.peer) else {
                    throughput[name] = nil
                    continue
                }
                carried[name] = throughput[name, default: ThroughputMeter()]
                    .sample(receivedBytes: peer.rxBytes, transmittedBytes: peer.txBytes, at: instant)
            }
        }
        var states: [StoreWrite] = []
        for (name, state) in snapshot.sorted(by: { $0.key < $1.key }) {
            guard let route = paths[name], state.counters.probesSent > 0 else { continue }
            var metrics = state.metrics
            metrics.throughputTxMbps = carried[name]?.transmitMbps
            metrics.throughputRxMbps = carried[name]?.receiveMbps
            states.append(.pathState(PathStateWrite(key: route.key, status: state.status, score: metrics.score,
                                                    metrics: metrics, at: now)))
        }
        writer.enqueue(states)
    }

    /// The path each policy's traffic to each site takes, by the names operators see (one sample per path
    /// when the policy balances), and for a duplicated class the path its copies take (`copies`, the routing
    /// engine's): for the metrics endpoint and the dashboard.
    func selectionSamples(_ selections: [SelectionKey: Selection], copies: [SelectionKey: [PathKey: PathKey]] = [:],
                          siteNames: [SiteID: String]) -> [SelectionSample] {
        let byKey = Dictionary(paths.map { ($0.value.key, ($0.key, $0.value.binding.id)) }, uniquingKeysWith: { a, _ in a })
        var samples: [SelectionSample] = []
        for (key, selection) in selections.sorted(by: { $0.key < $1.key }) {
            for path in selection.paths.sorted() {
                guard let (name, id) = byKey[path] else { continue } // not planned (yet): no kernel path
                samples.append(SelectionSample(policy: key.policy, site: siteNames[key.site] ?? "\(key.site)",
                                               pathID: id, path: name, copyPath: copies[key]?[path].flatMap { byKey[$0]?.0 }))
            }
        }
        return samples
    }

    /// What the metrics endpoint shows. `counters` are our nft counters (one per class and path chain);
    /// `tunnels` the WireGuard interfaces' live state, whose per-peer transfer counters are the paths' bytes
    /// (a path is one peer on one tunnel interface).
    func sample(failovers: UInt64, drops: [RouterSample.DropKey: UInt64], selections: [SelectionKey: Selection],
                siteNames: [SiteID: String], counters: SteeringCounters = SteeringCounters(),
                tunnels: [String: InterfaceState] = [:], conflicts: Int = 0,
                certificateDaysLeft: Double? = nil) -> RouterSample {
        var sample = RouterSample()
        sample.prefixConflicts = conflicts
        sample.certificateDaysLeft = certificateDaysLeft
        let snapshot = probes.snapshot()
        for (name, route) in paths.sorted(by: { $0.key < $1.key }) {
            let state = snapshot[name]
            let peer = tunnels[route.path.interface]?.peer(route.path.peer)
            var metrics = state?.metrics
            metrics?.throughputTxMbps = carried[name]?.transmitMbps
            metrics?.throughputRxMbps = carried[name]?.receiveMbps
            sample.paths.append(PathSample(pathID: route.binding.id, path: name, site: route.path.remoteName, uplink: route.key.localLabel,
                                           status: state?.status ?? .down, metrics: metrics,
                                           transmitBytes: peer?.txBytes ?? 0, receiveBytes: peer?.rxBytes ?? 0,
                                           relayVia: route.path.relayName))
        }
        sample.selections = selectionSamples(selections, siteNames: siteNames)
        sample.transitRefused = counters.transitRefused
        // Every (class, path) chain counts, not only the selected ones: traffic that went a path before a
        // failover stays counted there, as `nft list table` shows it.
        let byID = Dictionary(paths.map { ($0.value.binding.id, $0) }, uniquingKeysWith: { a, _ in a })
        func packets(_ list: [SteeringCounters.PathCounter]) -> [String: UInt64] {
            Dictionary(list.map { ("\($0.className)/\($0.pathID)", $0.packets) }, uniquingKeysWith: +)
        }
        let copies = packets(counters.copiesSent), duplicates = packets(counters.duplicatesDropped)
        for counter in counters.paths {
            guard let (name, route) = byID[counter.pathID] else { continue }
            let key = "\(counter.className)/\(counter.pathID)"
            sample.classes.append(ClassSample(policy: counter.className, site: route.path.remoteName, pathID: counter.pathID, path: name,
                                              packets: counter.packets, bytes: counter.bytes,
                                              copiesSent: copies[key], duplicatesDropped: duplicates[key]))
        }
        sample.classes.sort { ($0.policy, $0.site, $0.path) < ($1.policy, $1.site, $1.path) }
        sample.failovers = failovers
        sample.drops = drops
        sample.storeWrites = writer.statistics
        return sample
    }
}

/// The paths leaving by each local uplink (by label), so that the UplinkWatcher takes a dead uplink's
/// paths down without waiting for the runtime actor. Lock-protected.
final class UplinkPaths: @unchecked Sendable {
    private let probes: PathProbeSet
    private let lock = NSLock()
    private var paths: [String: Set<String>] = [:]

    init(probes: PathProbeSet) { self.probes = probes }

    /// The planned paths (probe names) by local uplink label.
    func planned(_ byLabel: [String: Set<String>]) { lock.withLock { paths = byLabel } }

    /// The local uplink `label` cannot carry traffic: its paths go down now. They come back by the usual
    /// recovery once replies flow again (a path planned meanwhile starts down, as every new path does).
    func stopped(_ label: String) {
        probes.forceDown(lock.withLock { (paths[label] ?? []).sorted() })
    }
}

import Foundation
import Logging
import Mesh
import Model
import Probing
import Routing
import ServiceLifecycle
import Steering
import Store
import WireGuard

/// The router daemon: discovery and tunnels (Mesh), path probing (Probing), decisions (Routing, through the
/// Controller) and the kernel datapath (Steering), with the database kept current, all as services of one
/// ServiceGroup that stops on SIGTERM/SIGINT. Everything installed in the kernel is removed on the way out,
/// also when start-up fails half-way.
public struct Daemon: Sendable {
    public let configuration: RouterConfiguration
    let logger: Logger
    /// What the start line says this is (`patronus-router 0.10.0 (commit ...)`).
    let version: String?

    public init(configuration: RouterConfiguration, logger: Logger, version: String? = nil) {
        self.configuration = configuration
        self.logger = logger
        self.version = version
    }

    /// Runs until a graceful-shutdown signal. Throws before starting anything when a precondition fails.
    public func run() async throws {
        try configuration.validate()
        guard ProcessCapabilities.effectiveHasNetAdmin() else { throw DaemonError.missingCapability("CAP_NET_ADMIN") }
        // What can be refused without touching anything comes first: a refusal leaves nothing behind.
        let backend = try WireGuardBackendSelector.make(configuration.wireguard)

        let files = StoreFiles(database: configuration.databasePath)
        let lock = try DatabaseLock.acquire(for: files)
        defer { withExtendedLifetime(lock) {} }
        let store = try Store.open(path: files.database)
        let siteID = try store.ensureLocalSite(name: configuration.siteName)
        let privateKey = try Self.privateKey(at: files.privateKey)
        let authentication = try meshAuthentication(files: files)
        let (identity, certificate) = try MeshTrust.identity(configuration: configuration, files: files, siteID: siteID,
                                                             logger: logger)
        try store.setLocalCertificate(MeshTrust.record(certificate))
        if try store.loadDefaultPoliciesIfNew(Policy.defaults()) {
            logger.info("loaded the default policies into \(files.database)")
        }

        // The monitor subscribes before it reads the uplinks' state, so that no change falls between the
        // read and the notifications the UplinkWatcher follows.
        let inventory = try InterfaceInventory.read()
        let detected = inventory.uplinks(configured: configuration.uplinks, tunnelPrefix: configuration.interfaceName)
        // Without --uplink, interfaces that get an address and a default route later become uplinks then.
        let detection = configuration.uplinks.isEmpty ? UplinkDetection(tunnelPrefix: configuration.interfaceName) : nil
        if detection != nil && detected.isEmpty {
            logger.notice("no uplink yet (no interface is up with a global IPv4 address and a default route): each is used when it has one; or name them with --uplink IFACE[=LABEL]")
        }
        let monitor = try UplinkMonitor(uplinks: detected, detection: detection)
        let tracker = monitor.initial
        let uplinks = tracker.uplinks
        for state in tracker.states where state.index == nil || state.address == nil {
            logger.notice("uplink \(state.uplink) is \(state.index == nil ? "absent" : "without an address") now: used when it is ready")
        }
        let tunnelSettings = TunnelSettings(interfacePrefix: configuration.interfaceName, listenPort: configuration.listenPort,
                                            pairing: configuration.pairing)
        let endpoints = UplinkWatcher.endpoints(tracker, settings: tunnelSettings)
        let overlay = OverlayAddressing.choose(for: siteID, known: [:])
        try store.updateLocalSite(overlayAddress: overlay, publicKey: privateKey.publicKey.base64,
                                  lanPrefixes: configuration.lanPrefixes)
        var startMetadata: Logger.Metadata = [
            "overlay": "\(overlay)", "uplinks": "\(uplinks.map(\.description))",
            "endpoints": "\(endpoints.map(\.description))", "database": "\(files.database)",
        ]
        if let version { startMetadata["version"] = "\(version)" }
        logger.notice("site \(configuration.siteName) (\(siteID)) starting", metadata: startMetadata)

        let steering = try KernelSteering(relay: configuration.relay, logger: logger)
        let forwarding = try KernelSetting.enableIPv4Forwarding(journal: files.database + ".ip-forward")
        await StaleTunnels.remove(prefix: configuration.interfaceName, uplinkCount: uplinks.count, backend: backend,
                                  logger: logger)
        let reconciler = TunnelReconciler(backend: backend, privateKey: privateKey,
                                          addresses: [TunnelAddress(overlay, prefixLength: 32)])
        // From here on, the database is written only by the writer's thread: nothing that steers waits for it.
        let writer = StoreWriter(store: store, report: Self.storeReporter(logger))
        do {
            try await steering.pinUplinks(UplinkWatcher.pinned(uplinks))
            try await serve(store: store, writer: writer, siteID: siteID, privateKey: privateKey,
                            authentication: authentication, identity: identity,
                            revocationListPath: configuration.revocationListPath ?? files.revocationList,
                            uplinks: uplinks, endpoints: endpoints, overlay: overlay, tunnelSettings: tunnelSettings,
                            steering: steering, reconciler: reconciler, monitor: monitor, tracker: tracker)
        } catch {
            await writer.stop()
            await tearDown(steering: steering, reconciler: reconciler, forwarding: forwarding)
            throw error
        }
        // Every service has stopped: what they queued is flushed before the tunnels go.
        await writer.stop()
        await tearDown(steering: steering, reconciler: reconciler, forwarding: forwarding)
        _ = try? store.ensureLocalSite(name: configuration.siteName)
        logger.notice("stopped")
    }

    private func meshAuthentication(files: StoreFiles) throws -> MeshAuthentication {
        if configuration.insecureNoAuth {
            logger.warning("--insecure-no-auth: announcements are neither signed nor checked; anyone on the uplinks can join")
            return .insecure
        }
        let path = configuration.meshKeyPath ?? files.meshKey
        let (bytes, created) = try SecretFile.loadOrCreate(at: path)
        guard let key = MeshKey(bytes: bytes) else { throw DaemonError.malformedKey(path) }
        if created {
            logger.notice("created the mesh key \(path): every other site needs a copy of this file (--mesh-key \(path))")
        }
        return .key(key)
    }

    /// The site's WireGuard private key, created once (0600) beside the database.
    static func privateKey(at path: String) throws -> WireGuardPrivateKey {
        let bytes = try SecretFile.loadOrCreate(at: path).bytes
        guard let key = WireGuardPrivateKey(bytes: bytes) else { throw DaemonError.malformedKey(path) }
        return key
    }

    /// A new WireGuard private key in the key file (`wg genkey` output moved over it): the tunnels take it in
    /// place (no interface goes down) and the new public key is announced at once. A file that does not
    /// hold a key is logged and changes nothing.
    static func replacePrivateKey(from path: String, reconciler: TunnelReconciler, discovery: DiscoveryService,
                                  writer: StoreWriter, certified: Bool, lanPrefixes: [IPv4Prefix], logger: Logger) async {
        let key: WireGuardPrivateKey
        do {
            guard let read = WireGuardPrivateKey(bytes: try SecretFile.read(at: path)) else { throw DaemonError.malformedKey(path) }
            key = read
        } catch {
            logger.error("the WireGuard key file changed but was not taken (the tunnels keep the old key): \(error)")
            return
        }
        guard key.publicKey != (await reconciler.publicKey) else { return }
        await reconciler.replacePrivateKey(key)
        var local = discovery.local
        local.publicKey = key.publicKey
        do {
            try discovery.update(local)
        } catch {
            logger.error("the new WireGuard public key cannot be announced: \(error)")
        }
        writer.enqueue(.localSite(overlayAddress: local.overlay, publicKey: key.publicKey.base64, lanPrefixes: lanPrefixes, at: Date()))
        logger.notice("the WireGuard key changed: the tunnels use the new key, announced to every site now",
                      metadata: ["public_key": "\(key.publicKey.base64)"])
        if !certified {
            logger.warning("without a site certificate the other sites refuse a new key for this site until its old entry expires (3 s without announcements): expect an outage of several seconds")
        }
    }

    /// The writer's reports, as log lines: a busy database once per outage and once when it is writable again.
    static func storeReporter(_ logger: Logger) -> @Sendable (StoreWriter.Report) -> Void {
        { report in
            switch report {
            case .busy(let error, let pending):
                logger.warning("the database is busy: \(pending) writes kept and retried until it is free (\(error))")
            case .recovered(let seconds, let pending):
                logger.notice("the database is writable again after \(String(format: "%.1f", seconds)) s (\(pending) writes pending)")
            case .refused(let write, let error):
                logger.error("the database refused a write, which is not retried: \(error)", metadata: ["write": "\(write)"])
            case .pruned(let rows):
                if rows > 0 { logger.debug("pruned \(rows) metrics rows") }
            case .unflushed(let pending, let error):
                logger.error("\(pending) queued writes were not written before shutdown: \(error)")
            }
        }
    }

    private func serve(store: Store, writer: StoreWriter, siteID: SiteID, privateKey: WireGuardPrivateKey,
                       authentication: MeshAuthentication, identity: DiscoveryService.Identity, revocationListPath: String,
                       uplinks: [Uplink], endpoints: [Endpoint], overlay: IPv4Address, tunnelSettings: TunnelSettings,
                       steering: KernelSteering, reconciler: TunnelReconciler, monitor: UplinkMonitor,
                       tracker: UplinkTracker) async throws {
        let local = SiteDescription(siteID: siteID, name: configuration.siteName, publicKey: privateKey.publicKey,
                                    overlay: overlay, lanPrefixes: configuration.lanPrefixes, endpoints: endpoints,
                                    relay: configuration.relay)
        let discovery = try DiscoveryService(
            local: local,
            settings: DiscoverySettings(uplinks: uplinks.map(\.interface), peers: configuration.peers,
                                        group: configuration.multicastGroup),
            authentication: authentication, identity: identity,
            revocationAccepted: { [logger] list in MeshTrust.persist(list, to: revocationListPath, logger: logger) },
            logger: logger)
        let driver = TunnelDriver(discovery: discovery, reconciler: reconciler, uplinks: uplinks,
                                  settings: tunnelSettings, logger: logger)
        var responderConfiguration = ProbeResponder.Configuration()
        responderConfiguration.replyMark = Conventions.pinnedMark
        let responder = try ProbeResponder(configuration: responderConfiguration, logger: logger)
        let probes = PathProbeSet(metricsInterval: SiteRuntime.metricsInterval)
        let failoverLogger = logger
        var routingSettings = RoutingSettings()
        routingSettings.noCopyLabels = Set(uplinks.filter(\.noCopies).map(\.label))
        let controller = Controller(engine: RoutingEngine(settings: routingSettings), applier: steering, logger: logger) { records in
            let acknowledged = writer.enqueue(records.map {
                .failover(FailoverEvent(policy: $0.policy, destination: $0.site, fromPath: nil, toPath: nil,
                                        reason: $0.reason, detectionMs: $0.detectionMs, switchMs: $0.switchMs),
                          from: $0.from, to: $0.to)
            })
            if acknowledged.contains(.refused) {
                failoverLogger.error("failover events after shutdown began were not recorded")
            }
        }
        try await controller.setPolicies(try store.policies().map(\.policy))
        let runtime = SiteRuntime(writer: writer, pathIDs: try store.pathIDs(), controller: controller, probes: probes,
                                  probeInterval: configuration.probeInterval,
                                  restoredDownloads: Self.restorableDownloads(store, within: configuration.bandwidthInterval, logger: logger),
                                  logger: logger) { [driver] session, status in
            driver.setPathDown(session, status == .down)
        }
        // A remote site's bandwidth train on one of our uplinks excuses the probes crossing that uplink, and
        // its measurement is the download of the path it came in by.
        var receiverConfiguration = BandwidthReceiver.Configuration()
        receiverConfiguration.replyMark = Conventions.pinnedMark
        @Sendable func interfaceName(_ index: Int32) -> String? {
            var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
            guard index > 0, if_indextoname(UInt32(index), &name) != nil else { return nil }
            return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        let bandwidthReceiver = try BandwidthReceiver(configuration: receiverConfiguration, logger: logger, onTrain: { index in
            guard let interface = interfaceName(index) else { return }
            Task { await runtime.trainArriving(through: interface) }
        }, onReport: { index, source, report in
            guard let interface = interfaceName(index) else { return }
            Task { await runtime.downloadTrainMeasured(through: interface, from: source, report) }
        })
        let metrics = RouterMetrics()
        let shaping = ShapingState()
        // A restart (crash, upgrade, kill -9) picks up the sites it was talking to a moment ago, so the first
        // plan rebuilds the same tunnels and steering instead of tearing them down until they announce.
        let restorable = Self.recentSites(in: store, logger: logger)
        await runtime.restoring(restorable.map(\.siteID))
        discovery.restore(restorable)

        var services: [any Service] = [
            MeshService(driver: driver, discovery: discovery, runtime: runtime) { [logger, configuration] moved in
                logger.notice("overlay address moved to \(moved)")
                writer.enqueue(.localSite(overlayAddress: moved, publicKey: discovery.local.publicKey.base64,
                                          lanPrefixes: configuration.lanPrefixes, at: Date()))
            },
            ProbeService(probes: probes, responder: responder, bandwidthReceiver: bandwidthReceiver, runtime: runtime,
                         bandwidthInterval: configuration.bandwidthInterval, logger: logger),
            HousekeepingService(controller: controller, runtime: runtime, discovery: discovery, metrics: metrics,
                                responder: responder, bandwidthReceiver: bandwidthReceiver, steering: steering,
                                reconciler: reconciler, readsKernelCounters: configuration.metricsListen != nil,
                                shaping: shaping, logger: logger),
            ShapingService(steering: steering, runtime: runtime, probes: probes,
                           modes: Dictionary(configuration.uplinks.map { ($0.label, $0.shaping) }, uniquingKeysWith: { a, _ in a }),
                           downloads: ShapingLoop.downloadSettings(configuration.uplinks), lanPrefixes: configuration.lanPrefixes,
                           state: shaping, logger: logger),
            UplinkWatcher(monitor: monitor, settings: tunnelSettings, steering: steering,
                          discovery: discovery, driver: driver, runtime: runtime, logger: logger),
            PolicyWatcher(store: store, controller: controller, logger: logger),
            DriftRepair(steering: steering),
            FileWatcher(path: revocationListPath) { [logger] path in
                do {
                    if let refused = discovery.add(try TrustFiles.revocationList(at: path)), refused != .staleRevocationList {
                        logger.error("the revocation list \(path) was refused: \(refused)")
                    }
                } catch {
                    logger.error("reading the revocation list: \(error)")
                }
            },
            StatusReporter(store: store, interval: configuration.statusInterval, logger: logger),
            MetricsPruner(writer: writer, retention: configuration.metricsRetention),
        ]
        let files = StoreFiles(database: configuration.databasePath)
        services.append(FileWatcher(path: files.privateKey) { [logger, configuration] path in
            await Self.replacePrivateKey(from: path, reconciler: reconciler, discovery: discovery, writer: writer,
                                         certified: identity.signer != nil, lanPrefixes: configuration.lanPrefixes,
                                         logger: logger)
        })
        if let path = identity.signer.flatMap({ _ in MeshTrust.certificatePath(configuration: configuration, files: files) }) {
            services.append(FileWatcher(path: path) { [logger, configuration] path in
                guard let signer = try? MeshTrust.signer(at: path, configuration: configuration, files: files, siteID: siteID,
                                                         trust: identity.trust),
                      signer.certificate != discovery.certificate else { return }
                do {
                    try discovery.replaceSigner(signer)
                    writer.enqueue(.localCertificate(MeshTrust.record(signer.certificate)))
                    logger.notice("the site certificate changed: announcing with the new one")
                    MeshTrust.log(signer.certificate, logger: logger)
                } catch {
                    logger.error("the new certificate \(path) was not taken: \(error)")
                }
            })
        }
        if let listen = configuration.metricsListen {
            services.append(MetricsEndpoint(host: "\(listen.address)", port: Int(listen.port), registry: metrics.registry,
                                            logger: logger))
        }
        if let listen = configuration.dashboardListen {
            // Its own read-only connection: the dashboard cannot write, whatever a request asks.
            let dashboard = Dashboard(store: try Store.openReadOnly(path: store.path)) {
                let names = Dictionary(discovery.sites.map { ($0.site.siteID, $0.site.name) }, uniquingKeysWith: { a, _ in a })
                return await runtime.selectionSamples(await controller.currentSelections, copies: await controller.currentCopies,
                                                      siteNames: names)
            }
            services.append(HTTPEndpoint(name: "dashboard", flag: "--dashboard-listen", host: "\(listen.address)",
                                         port: Int(listen.port), logger: logger) { await dashboard.respond(to: $0) })
        }
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint],
                                                      logger: logger))
        SystemdNotify.send("READY=1")
        try await group.run()
        SystemdNotify.send("STOPPING=1")
    }

    /// Each path's download estimate (Mbit/s) as the last run had it, when that run wrote the path's newest
    /// sample within `within` (a bandwidth interval: the far site measures again by then at the latest). A
    /// path's download is measured from the far site's trains, which a restarted router does not get until
    /// the far site tests again; until then the restored figure stands (an `auto` download shaper uses it).
    static func restorableDownloads(_ store: Store, within: Duration, now: Date = Date(), logger: Logger) -> [PathID: Double] {
        do {
            let horizon = Double(within.components.seconds)
            return try store.latestMetrics().compactMapValues { sample in
                guard now.timeIntervalSince(sample.measuredAt) <= horizon, let mbps = sample.metrics.downloadBandwidthMbps,
                      mbps > 0 else { return nil }
                return mbps
            }
        } catch {
            logger.error("reading the last run's download estimates: \(error)")
            return [:]
        }
    }

    /// How old a remote site's `last_seen` may be for a restart to restore it: a crash restart (systemd
    /// waits 2 s) plus the 5 s between `last_seen` updates, with margin. A site stopped longer ago is
    /// learnt again from its announcements.
    static let restoreHorizon: TimeInterval = 30

    /// The remote sites the database saw active within `restoreHorizon`, with their endpoints. Rows that
    /// cannot describe a site (no key or overlay: written by an older version) are skipped.
    static func recentSites(in store: Store, now: Date = Date(), logger: Logger) -> [SiteDescription] {
        do {
            let endpoints = Dictionary(grouping: try store.endpoints(), by: \.site)
            return try store.sites().compactMap { row in
                guard !row.isLocal, row.status == .active, now.timeIntervalSince(row.lastSeen) <= restoreHorizon,
                      let overlay = row.overlayAddress, let key = row.publicKey.flatMap({ WireGuardKey(base64: $0) })
                else { return nil }
                return SiteDescription(siteID: row.id, name: row.name, publicKey: key, overlay: overlay,
                                       lanPrefixes: row.lanPrefixes,
                                       endpoints: (endpoints[row.id] ?? []).map(\.endpoint).sorted { $0.label < $1.label })
            }
        } catch {
            logger.error("reading the sites to restore: \(error)")
            return []
        }
    }

    private func tearDown(steering: KernelSteering, reconciler: TunnelReconciler, forwarding: KernelSetting?) async {
        await steering.removeAll()
        await reconciler.removeAll()
        forwarding?.restore()
    }
}

/// Discovery and tunnels: the TunnelDriver runs discovery and keeps the tunnels in step; every plan and
/// site event goes to the runtime.
struct MeshService: Service {
    let driver: TunnelDriver
    let discovery: DiscoveryService
    let runtime: SiteRuntime
    /// Our overlay address moved (a site with a smaller id claimed it): the database follows.
    let overlayMoved: @Sendable (IPv4Address) async -> Void

    func run() async throws {
        try await untilShutdown {
            try await driver.run(
                onEvent: { event in await runtime.siteEvent(event) },
                onPlan: { plan, _ in await runtime.planned(plan, discovery: discovery) },
                onOverlay: overlayMoved)
        }
    }
}

/// The probe responder, the bandwidth receiver and every path prober; path events go to the runtime.
struct ProbeService: Service {
    let probes: PathProbeSet
    let responder: ProbeResponder
    let bandwidthReceiver: BandwidthReceiver
    let runtime: SiteRuntime
    /// Between re-measurements of every path (`--bandwidth-interval`, default 15 minutes).
    let bandwidthInterval: Duration
    let logger: Logger

    func run() async throws {
        try await untilShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask { await responder.run() }
                group.addTask { await bandwidthReceiver.run() }
                group.addTask { await probes.run() }
                group.addTask {
                    for await event in probes.events { await runtime.pathEvent(event) }
                }
                group.addTask { await measureBandwidth() }
            }
        }
    }
}

extension ProbeService {
    /// Bandwidth tests, one at a time: each path once it first comes up, then every path every
    /// `bandwidthInterval` (15 minutes by default).
    func measureBandwidth() async {
        // Sites that start together would otherwise test at the same moment and measure each other.
        try? await Task.sleep(for: .milliseconds(Int.random(in: 0...2000)))
        var lastRound = ContinuousClock.now
        while !Task.isCancelled {
            if ContinuousClock.now - lastRound > bandwidthInterval {
                await runtime.remeasureBandwidth()
                lastRound = .now
            }
            guard let path = await runtime.nextBandwidthTest() else {
                try? await Task.sleep(for: .milliseconds(500))
                continue
            }
            do {
                if let estimate = try await probes.measureBandwidth(path: path,
                                                                    sharingUplink: await runtime.pathsSharingUplink(with: path)) {
                    logger.info("bandwidth measured", metadata: ["path": "\(path)", "mbps": "\(String(format: "%.1f", estimate.mbps))"])
                }
            } catch {
                logger.notice("bandwidth test on \(path) failed: \(error)")
                await runtime.bandwidthTestFailed(path)
            }
            try? await Task.sleep(for: .milliseconds(300))
        }
    }
}

/// Hold-down timers (every 200 ms), metrics rows and the metrics endpoint's sample (every 5 s): paths,
/// selections, drop counters, and (with the endpoint on) our nft counters and WireGuard transfer counters.
struct HousekeepingService: Service {
    let controller: Controller
    let runtime: SiteRuntime
    let discovery: DiscoveryService
    let metrics: RouterMetrics
    let responder: ProbeResponder
    let bandwidthReceiver: BandwidthReceiver
    let steering: KernelSteering
    let reconciler: TunnelReconciler
    /// Only the metrics endpoint shows the nft counters: without it, no nft dump every 5 s.
    let readsKernelCounters: Bool
    let shaping: ShapingState
    let logger: Logger

    func run() async throws {
        try await untilShutdown {
            var ticks = 0
            var countersFailed = false
            while true {
                try await Task.sleep(for: .milliseconds(200))
                do { try await controller.tick() } catch { logger.error("steering tick failed: \(error)") }
                ticks += 1
                guard ticks % 25 == 0 else { continue }
                // One UAPI read per tunnel interface: the paths' transfer counters (passive throughput).
                let tunnels = await reconciler.states()
                await runtime.writeMetrics(tunnels: tunnels)
                let sites = discovery.sites
                await runtime.touchSites(discovery.heardSites)
                let conflicts = discovery.conflicts
                await runtime.recordConflicts(conflicts)
                let mappings = discovery.publicMappings
                let names = Dictionary(sites.map { ($0.site.siteID, $0.site.name) }, uniquingKeysWith: { a, _ in a })
                let localEndpoints = discovery.local.endpoints.map { endpoint in
                    LocalEndpoint(endpoint: endpoint, publicEndpoint: mappings[endpoint.label]?.address,
                                  observedBy: (mappings[endpoint.label]?.observers ?? []).map { names[$0] ?? $0.description })
                }
                await runtime.recordLocalEndpoints(localEndpoints)
                var drops: [RouterSample.DropKey: UInt64] = [:]
                for (reason, count) in discovery.statistics.drops {
                    drops[.init(component: "discovery", reason: "\(reason)")] = count
                }
                for (component, counts) in [("probe", responder.statistics.drops.counts),
                                            ("bandwidth", bandwidthReceiver.statistics.drops.counts)] {
                    for (reason, count) in counts { drops[.init(component: component, reason: reason.rawValue)] = count }
                }
                var counters = SteeringCounters()
                if readsKernelCounters {
                    do {
                        counters = try await steering.counters()
                        countersFailed = false
                    } catch {
                        // Once per outage, not every 5 s.
                        if !countersFailed { logger.warning("reading the nft counters failed: \(error)") }
                        countersFailed = true
                    }
                }
                var sample = await runtime.sample(failovers: await controller.failovers, drops: drops,
                                                    selections: await controller.currentSelections, siteNames: names,
                                                    counters: counters, tunnels: tunnels,
                                                    conflicts: conflicts.count,
                                                    certificateDaysLeft: discovery.certificate.map {
                                                        $0.notAfterDate.timeIntervalSinceNow / 86_400
                                                    })
                sample.publicMappings = localEndpoints.compactMap { local in
                    local.publicEndpoint.map {
                        PublicMappingSample(uplink: local.endpoint.label, mapping: $0.description, observers: local.observedBy.count)
                    }
                }
                sample.shapers = shaping.current
                metrics.update(sample)
            }
        }
        // Flush the measurements since the last 5 s write. Services stop in reverse order, so the probers
        // (ProbeService, started before this one) still hold them here.
        await runtime.writeMetrics()
    }
}

public enum DaemonError: Error, Equatable, CustomStringConvertible {
    case missingCapability(String)
    case malformedKey(String)

    public var description: String {
        switch self {
        case .malformedKey(let path):
            "\(path) does not hold a 32-byte key in base64: restore it from a backup, or move it away to create a new one"
        case .missingCapability(let name):
            "\(name) is missing: run as root (sudo) or grant it (setcap cap_net_admin+ep or AmbientCapabilities=CAP_NET_ADMIN)"
        }
    }
}

/// The capabilities the kernel reports for this process.
public enum ProcessCapabilities {
    static let netAdminBit = 12

    /// Reads the effective set from /proc/self/status (the same value capget(2) returns, without
    /// declaring the syscall by hand: glibc has no header for it and libcap is not a dependency).
    public static func effectiveHasNetAdmin() -> Bool {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return false }
        return hasNetAdmin(procStatus: status)
    }

    public static func hasNetAdmin(procStatus: String) -> Bool {
        for line in procStatus.split(separator: "\n") where line.hasPrefix("CapEff:") {
            let hex = line.dropFirst("CapEff:".count).trimmingCharacters(in: .whitespaces)
            guard let mask = UInt64(hex, radix: 16) else { return false }
            return mask & (1 << UInt64(netAdminBit)) != 0
        }
        return false
    }
}

/// Prints the status report at start and then every `interval`, as the seed does every 30 s.
struct StatusReporter: Service {
    let store: Store
    let interval: Duration
    let logger: Logger

    func run() async throws {
        try await untilShutdown {
            while true {
                do {
                    FileHandle.standardOutput.write(Data(try store.statusSnapshot().report().utf8))
                } catch {
                    logger.error("status report: \(error)")
                }
                try await Task.sleep(for: interval)
            }
        }
    }
}

/// Deletes metrics rows older than the retention, at start and hourly, on the writer's thread.
struct MetricsPruner: Service {
    let writer: StoreWriter
    let retention: Duration

    func run() async throws {
        try await untilShutdown {
            while true {
                writer.enqueue(.pruneMetrics(retention: TimeInterval(retention.components.seconds), at: Date()))
                try await Task.sleep(for: .seconds(3600))
            }
        }
    }
}

/// Notices policy edits made by other processes (`patronus-router policy`, sqlite3) within 0.5 s.
struct PolicyWatcher: Service {
    let store: Store
    let controller: Controller
    let logger: Logger

    func run() async throws {
        try await untilShutdown {
            var generation = try? store.policyGeneration()
            while true {
                try await Task.sleep(for: .milliseconds(500))
                let current = try? store.policyGeneration()
                guard let current, current != generation else { continue }
                generation = current
                do {
                    let policies = try store.policies()
                    logger.notice("policies changed: \(policies.filter(\.policy.enabled).count) enabled of \(policies.count)")
                    try await controller.setPolicies(policies.map(\.policy))
                } catch {
                    logger.error("policies changed but cannot be read, keeping the previous ones: \(error)")
                }
            }
        }
    }
}

/// Runs `body` until graceful shutdown; the cancellation that shutdown causes is the normal way out.
/// Looks for foreign changes to our kernel state a few times a second and puts ours back
/// (`KernelSteering.repairDrift`): `nft delete table inet patronus`, `ip rule flush`, a deleted route.
struct DriftRepair: Service {
    let steering: KernelSteering

    func run() async throws {
        try await untilShutdown {
            while !Task.isCancelled {
                try await Task.sleep(for: KernelSteering.driftCheckInterval)
                await steering.repairDrift()
            }
        }
    }
}

func untilShutdown(_ body: @escaping @Sendable () async throws -> Void) async throws {
    do {
        try await cancelWhenGracefulShutdown(body)
    } catch is CancellationError {
        return
    }
}

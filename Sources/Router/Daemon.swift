import Foundation
import Logging
import Model
import ServiceLifecycle
import Store

/// The router daemon. This is the minimal foundation version: it refuses what it cannot do yet, takes the
/// database lock, keeps the site identity and default policies, records the local site and prints the
/// status report until SIGTERM/SIGINT. Mesh, probing and steering services join its ServiceGroup later.
public struct Daemon: Sendable {
    public let configuration: RouterConfiguration
    let logger: Logger

    public init(configuration: RouterConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Flags that parse and validate but that this build does not act on yet: refused, never ignored.
    public static func unsupportedFlags(_ configuration: RouterConfiguration) -> [String] {
        var flags: [String] = []
        if !configuration.uplinks.isEmpty { flags.append("--uplink") }
        if !configuration.lanPrefixes.isEmpty { flags.append("--lan") }
        if configuration.meshKeyPath != nil { flags.append("--mesh-key") }
        if configuration.insecureNoAuth { flags.append("--insecure-no-auth") }
        if !configuration.peers.isEmpty { flags.append("--peer") }
        if configuration.probeInterval != RouterConfiguration.defaultProbeInterval { flags.append("--probe-interval") }
        if configuration.metricsListen != nil { flags.append("--metrics-listen") }
        return flags
    }

    /// Runs until a graceful-shutdown signal. Throws before starting anything when a precondition fails.
    public func run() async throws {
        try configuration.validate()
        let unsupported = Self.unsupportedFlags(configuration)
        guard unsupported.isEmpty else { throw DaemonError.notYetSupported(unsupported) }
        guard ProcessCapabilities.effectiveHasNetAdmin() else { throw DaemonError.missingCapability("CAP_NET_ADMIN") }

        let files = StoreFiles(database: configuration.databasePath)
        let lock = try DatabaseLock.acquire(for: files)
        defer { withExtendedLifetime(lock) {} }
        let store = try Store.open(path: files.database)
        let site = try store.ensureLocalSite(name: configuration.siteName)
        _ = try SecretFile.loadOrCreate(at: files.privateKey)
        _ = try SecretFile.loadOrCreate(at: files.meshKey)
        if try store.loadDefaultPoliciesIfNew(Policy.defaults()) {
            logger.info("loaded the default policies into \(files.database)")
        }
        logger.notice("site \(configuration.siteName) (\(site)) started; database \(files.database)")
        logger.notice("this build keeps identity, policies and status only: tunnels, discovery and steering are not started")

        let services: [any Service] = [
            StatusReporter(store: store, interval: configuration.statusInterval, logger: logger),
            MetricsPruner(store: store, retention: configuration.metricsRetention, logger: logger),
            PolicyWatcher(store: store, logger: logger),
        ]
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint],
                                                      logger: logger))
        try await group.run()
        try store.ensureLocalSite(name: configuration.siteName)
        logger.notice("stopped")
    }
}

public enum DaemonError: Error, Equatable, CustomStringConvertible {
    case notYetSupported([String])
    case missingCapability(String)

    public var description: String {
        switch self {
        case .notYetSupported(let flags):
            "\(flags.joined(separator: ", ")) \(flags.count == 1 ? "is" : "are") not yet supported by this build of `run`"
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

/// Deletes metrics rows older than the retention, at start and hourly.
struct MetricsPruner: Service {
    let store: Store
    let retention: Duration
    let logger: Logger

    func run() async throws {
        try await untilShutdown {
            while true {
                do {
                    let removed = try store.pruneMetrics(retention: TimeInterval(retention.components.seconds))
                    if removed > 0 { logger.debug("pruned \(removed) metrics rows") }
                } catch {
                    logger.error("pruning metrics: \(error)")
                }
                try await Task.sleep(for: .seconds(3600))
            }
        }
    }
}

/// Notices policy edits made by other processes (`patronus-router policy`, sqlite3) within 0.5 s.
struct PolicyWatcher: Service {
    let store: Store
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
                } catch {
                    logger.error("policies changed but cannot be read, keeping the previous ones: \(error)")
                }
            }
        }
    }
}

/// Runs `body` until graceful shutdown; the cancellation that shutdown causes is the normal way out.
private func untilShutdown(_ body: @escaping @Sendable () async throws -> Void) async throws {
    do {
        try await cancelWhenGracefulShutdown(body)
    } catch is CancellationError {
        return
    }
}

import Foundation
import Model

/// The probers of all of a site's paths, with one merged event stream: what the daemon holds. Paths can be
/// added and removed while it runs (tunnels come and go with discovery).
///
/// Guarantees: every event of every prober reaches `events` in the order that prober produced it; a removed
/// path's prober is stopped and its socket closed; `snapshot()` never blocks on the network. Cost: per path,
/// what ``PathProber`` costs, plus one forwarding task.
public final class PathProbeSet: @unchecked Sendable {
    /// One path's state on demand.
    public struct Snapshot: Hashable, Sendable {
        public var target: ProbeTarget
        public var status: PathStatus
        public var metrics: PathMetrics
        public var counters: ProbeCounters
    }

    public enum Failure: Error, Equatable, CustomStringConvertible {
        case duplicate(String)
        case socket(String, ProbeSocketError)

        public var description: String {
            switch self {
            case .duplicate(let name): "a prober for path \(name) already exists; remove it first"
            case .socket(let name, let error): "prober for path \(name): \(error)"
            }
        }
    }

    public let configuration: ProbeConfiguration
    public let metricsInterval: Duration
    /// Events of every path. Finishes when `run()` returns. Buffers the newest 4096 if nobody reads.
    public let events: AsyncStream<PathEvent>
    private let continuation: AsyncStream<PathEvent>.Continuation
    private let starts: AsyncStream<PathProber>
    private let startContinuation: AsyncStream<PathProber>.Continuation
    private let lock = NSLock()
    private var probers: [String: PathProber] = [:]

    public init(configuration: ProbeConfiguration = ProbeConfiguration(), metricsInterval: Duration = .seconds(1)) {
        self.configuration = configuration
        self.metricsInterval = metricsInterval
        (events, continuation) = AsyncStream.makeStream(of: PathEvent.self, bufferingPolicy: .bufferingNewest(4096))
        (starts, startContinuation) = AsyncStream.makeStream(of: PathProber.self)
    }

    /// Starts probing a path (its socket is opened now, so a bad interface is reported here). Before `run()`
    /// starts, the prober waits for it.
    /// `restoredDownloadMbps`: the path's download estimate of the last run, if any.
    public func add(_ target: ProbeTarget, configuration: ProbeConfiguration? = nil, restoredDownloadMbps: Double? = nil) throws(Failure) {
        let prober: PathProber
        do {
            prober = try PathProber(target: target, configuration: configuration ?? self.configuration,
                                    metricsInterval: metricsInterval, restoredDownloadMbps: restoredDownloadMbps)
        } catch {
            throw .socket(target.name, error)
        }
        let added = lock.withLock {
            guard probers[target.name] == nil else { return false }
            probers[target.name] = prober
            return true
        }
        guard added else {
            prober.stop()
            throw .duplicate(target.name)
        }
        startContinuation.yield(prober)
    }

    /// Stops probing a path. No more events come for it. Unknown names are ignored.
    public func remove(_ name: String) {
        let prober = lock.withLock { probers.removeValue(forKey: name) }
        prober?.stop()
    }

    public var paths: [String] { lock.withLock { probers.keys.sorted() } }

    /// Every path's status, metrics and counters, now.
    public func snapshot() -> [String: Snapshot] {
        let current = lock.withLock { probers }
        return current.mapValues { prober in
            Snapshot(target: prober.target, status: prober.status, metrics: prober.metrics,
                     counters: prober.counters)
        }
    }

    /// Records a bandwidth test result for a path.
    public func recordBandwidth(path: String, mbps: Double) {
        lock.withLock { probers[path] }?.recordBandwidth(mbps: mbps)
    }

    /// Records the measurement of a train the far site sent us over `path` (its download; ``DownloadBandwidth``).
    /// Returns whether it counted (false for an unknown path or an implausible train).
    @discardableResult
    public func recordDownloadTrain(path: String, _ report: TrainReport) -> Bool {
        lock.withLock { probers[path] }?.recordDownloadTrain(report) ?? false
    }

    /// Excuses the probes of `paths` for `duration` (a bandwidth test, ours or a remote site's, is loading
    /// their uplink; see ``PathMonitor/excusedUntil``). Unknown names are ignored.
    public func excuse(_ paths: [String], for duration: Duration) {
        for prober in lock.withLock({ paths.compactMap { probers[$0] } }) { prober.excuse(for: duration) }
    }

    /// Takes `paths` down now (their uplink lost carrier; see ``PathProber/forceDown()``). Unknown names are
    /// ignored.
    public func forceDown(_ paths: [String]) {
        for prober in lock.withLock({ paths.compactMap { probers[$0] } }) { prober.forceDown() }
    }

    /// Runs a receiver-measured bandwidth test over a path (same pinning and remote address as its probes,
    /// the receiver's port) and records the result in the path's metrics. Nil for an unknown path.
    ///
    /// The test saturates the path's uplink for a moment on purpose: the probes of this path and of
    /// `sharingUplink` (other paths leaving by the same uplink) are excused meanwhile and for `settle`
    /// after, so the test never makes its own path look lossy or dead.
    /// Without `test`, the test is sized for the path's last estimate (`BandwidthTest.sized(forMbps:)`).
    public func measureBandwidth(path: String, test: BandwidthTest? = nil,
                                 receiverPort: UInt16 = Conventions.bandwidthPort, sharingUplink: [String] = [],
                                 settle: Duration = .milliseconds(300)) async throws(BandwidthTest.Failure)
        -> BandwidthEstimate? {
        guard let prober = lock.withLock({ probers[path] }) else { return nil }
        let test = test ?? BandwidthTest.sized(forMbps: prober.bandwidth)
        let excused = lock.withLock { [prober] + sharingUplink.compactMap { probers[$0] } }
        let expected = (test.gapBetweenTrains + test.reportTimeout) * test.trains + settle
        for other in excused { other.excuse(for: expected) }
        defer { for other in excused { other.excuse(for: settle) } }
        var target = prober.target
        target.remote.port = receiverPort
        let estimate = try await test.run(target: target)
        prober.recordBandwidth(mbps: estimate.mbps, testBytes: test.bytesOnTheWire)
        return estimate
    }

    /// Runs every prober, present and future, until the calling task is cancelled; then stops them all and
    /// finishes `events`. Call it once.
    public func run() async {
        let continuation = continuation
        await withDiscardingTaskGroup { group in
            for await prober in starts {
                group.addTask { await prober.run() }
                group.addTask { for await event in prober.events { continuation.yield(event) } }
            }
        }
        let remaining = lock.withLock {
            defer { probers = [:] }
            return Array(probers.values)
        }
        for prober in remaining { prober.stop() }
        continuation.finish()
    }

    deinit {
        startContinuation.finish()
        continuation.finish()
    }
}

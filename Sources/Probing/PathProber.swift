import Foundation
import Logging
import Model

/// Where a path's probes go and how they are kept on that path.
public struct ProbeTarget: Hashable, Sendable {
    /// How the probe socket is pinned to the path.
    public enum Pinning: Hashable, Sendable {
        /// SO_BINDTODEVICE: probes leave by this interface (the path's WireGuard interface), route or not.
        case interface(String)
        /// SO_MARK: probes carry this mark, and the path's ip rule / table carries them.
        case mark(UInt32)
        case interfaceAndMark(String, UInt32)

        var device: String? {
            switch self {
            case .interface(let name), .interfaceAndMark(let name, _): name
            case .mark: nil
            }
        }

        var mark: UInt32? {
            switch self {
            case .mark(let mark), .interfaceAndMark(_, let mark): mark
            case .interface: nil
            }
        }
    }

    /// The caller's name for the path (carried in every event), e.g. "wg-hq0>east".
    public var name: String
    /// The remote site's overlay address and probe port.
    public var remote: SocketAddress4
    public var pinning: Pinning
    /// Optional local address to bind (default: chosen by the kernel from the pinned interface).
    public var source: IPv4Address?

    public init(name: String, remote: SocketAddress4, pinning: Pinning, source: IPv4Address? = nil) {
        self.name = name
        self.remote = remote
        self.pinning = pinning
        self.source = source
    }
}

extension DatagramSocket {
    /// A socket that sends only through the target's path.
    convenience init(pinnedTo target: ProbeTarget) throws(ProbeSocketError) {
        try self.init(bindTo: target.source ?? IPv4Address(0), device: target.pinning.device,
                      mark: target.pinning.mark)
    }
}

/// What a prober publishes. Every event carries the path's status and metrics at that moment; `change` is
/// set when the status changed and nil for the periodic metrics update.
public struct PathEvent: Hashable, Sendable {
    public var path: String
    public var change: PathStatusChange?
    public var status: PathStatus
    public var metrics: PathMetrics
    /// Wall-clock time of the event, for the database and logs (decisions use `change.at`, monotonic).
    public var date: Date

    public init(path: String, change: PathStatusChange?, status: PathStatus, metrics: PathMetrics, date: Date) {
        self.path = path
        self.change = change
        self.status = status
        self.metrics = metrics
        self.date = date
    }
}

/// Probes one path: sends a probe every `interval` through the path only, matches replies, and publishes
/// ``PathEvent``s as an `AsyncStream`: status changes as soon as they are decided (a miss is decided by the
/// timer at the probe's deadline, not when a later reply shows up), metrics at most every `metricsInterval`.
///
/// Cost: one socket, one thread blocked in recvmsg, and one task that sleeps until the next send or deadline
/// (about 20 wakeups/s at the default interval); no polling, no database. Memory: a 512-entry ring, a 100-sample RTT
/// window and a 200-packet loss window.
public final class PathProber: @unchecked Sendable {
    public let target: ProbeTarget
    public let configuration: ProbeConfiguration
    public let metricsInterval: Duration
    /// The events of this prober. Finishes when `run()` returns. Buffers the newest 1024 if nobody reads.
    public let events: AsyncStream<PathEvent>
    private let continuation: AsyncStream<PathEvent>.Continuation
    private let socket: DatagramSocket
    private let lock = NSLock()
    private var monitor: PathMonitor
    private var bandwidthMbps: Double?
    private var download: DownloadBandwidth
    private let dropLog: DropLog

    /// Opens the pinned socket now, so a missing interface or permission is reported at once.
    /// `restoredDownloadMbps`: the path's download estimate of the last run (see ``DownloadBandwidth``).
    public init(target: ProbeTarget, configuration: ProbeConfiguration = ProbeConfiguration(),
                metricsInterval: Duration = .seconds(1), restoredDownloadMbps: Double? = nil,
                logger: Logger = Logger(label: "patronus.probing")) throws(ProbeSocketError) {
        download = DownloadBandwidth(restoredMbps: restoredDownloadMbps)
        dropLog = DropLog(logger: logger, component: "prober \(target.name)")
        self.target = target
        self.configuration = configuration
        self.metricsInterval = metricsInterval
        socket = try DatagramSocket(pinnedTo: target)
        monitor = PathMonitor(configuration: configuration, firstSequence: ProbeSequence.random(), start: .now())
        (events, continuation) = AsyncStream.makeStream(of: PathEvent.self, bufferingPolicy: .bufferingNewest(1024))
    }

    deinit { continuation.finish() }

    /// The current metrics (bandwidth: the last test result, if any; download: the far site's last trains).
    public var metrics: PathMetrics {
        lock.lock()
        defer { lock.unlock() }
        return measured()
    }

    /// Called with the lock held.
    private func measured() -> PathMetrics {
        var metrics = monitor.metrics(bandwidthMbps: bandwidthMbps)
        metrics.downloadBandwidthMbps = download.mbps
        return metrics
    }

    public var status: PathStatus {
        lock.lock()
        defer { lock.unlock() }
        return monitor.status
    }

    public var counters: ProbeCounters {
        lock.lock()
        defer { lock.unlock() }
        return monitor.counters
    }

    /// The last bandwidth test's result, if any.
    public var bandwidth: Double? {
        lock.lock()
        defer { lock.unlock() }
        return bandwidthMbps
    }

    /// Records a bandwidth test result; it is reported in the metrics from now on, and sizes how long an
    /// excuse may cover silence (a slow path's queue holds a test longer).
    public func recordBandwidth(mbps: Double, testBytes: Int = BandwidthTest().bytesOnTheWire) {
        lock.lock()
        bandwidthMbps = mbps
        monitor.sizeExcuse(testBytes: testBytes, bandwidthMbps: mbps)
        lock.unlock()
    }

    /// Records the measurement of a train the far site sent us over this path (``DownloadBandwidth``);
    /// returns whether it counted.
    @discardableResult
    public func recordDownloadTrain(_ report: TrainReport) -> Bool {
        lock.withLock { download.record(report) }
    }

    /// Excuses this path's probes for `duration` from now: our own bandwidth test is loading the uplink, so
    /// what the probes see then is that test, not the path (see ``PathMonitor/excusedUntil``).
    public func excuse(for duration: Duration) {
        lock.withLock { monitor.excuse(until: .now() + duration) }
    }

    /// Takes the path down now (its uplink lost carrier); the change is published at once. It comes back by
    /// the usual recovery.
    public func forceDown() {
        lock.withLock {
            if let change = monitor.forceDown(at: .now()) { publish(change) }
        }
    }

    /// Probes until the calling task is cancelled or `stop()` is called, then closes the socket and finishes
    /// `events`. Call it once.
    public func run() async {
        let receiver = ReceiveLoop(socket: socket, name: "probe-\(target.name)", maximumSize: ProbePacket.size,
                                   niceness: configuration.receiveNiceness) { [self] datagram in handle(datagram) }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await receiver.run() }
            group.addTask { await self.tick() }
            group.addTask { await self.stopSignal.wait() }
            await group.next()
            group.cancelAll()
        }
        socket.close()
        continuation.finish()
    }

    /// Ends `run()` (at once if it has not started yet). Idempotent.
    public func stop() { stopSignal.fire() }

    private let stopSignal = StopSignal()

    private func tick() async {
        var nextMetricsAt = MonotonicInstant.now() + metricsInterval
        while !Task.isCancelled {
            // Replies that arrived while this task or the receive thread was descheduled are handled before
            // any probe is declared missed; their kernel timestamps keep them on time.
            while let datagram = socket.receive(maximumSize: ProbePacket.size, wait: false) { handle(datagram) }
            let now = MonotonicInstant.now()
            let packets = lock.withLock {
                for change in monitor.advance(to: now) { publish(change) }
                return monitor.probesDue(at: now)
            }
            for packet in packets where socket.send(packet.encoded(), to: target.remote) != nil {
                lock.withLock { monitor.sendFailed() }
            }
            if now >= nextMetricsAt {
                lock.withLock { publish(nil) }
                nextMetricsAt = now + metricsInterval
            }
            let wake = lock.withLock { min(monitor.nextWakeup, nextMetricsAt) }
            let delay = wake - MonotonicInstant.now()
            if delay > .zero { try? await Task.sleep(for: delay) }
        }
    }

    /// Called with the lock held.
    private func publish(_ change: PathStatusChange?) {
        continuation.yield(PathEvent(path: target.name, change: change, status: monitor.status,
                                     metrics: measured(), date: Date()))
    }

    private func handle(_ datagram: Datagram) {
        let dropped: ProbeRejection? = lock.withLock {
            let before = monitor.counters.drops
            if datagram.source != target.remote {
                monitor.drop(.unknownPeer)
            } else {
                do throws(ProbeRejection) {
                    let packet = try ProbePacket.decode(datagram.bytes)
                    if let change = monitor.receive(packet, at: datagram.receivedAt) { publish(change) }
                } catch {
                    monitor.drop(error)
                }
            }
            let after = monitor.counters.drops
            return after.total == before.total ? nil : ProbeRejection.allCases.first { after[$0] > before[$0] }
        }
        if let dropped { dropLog.dropped(dropped, from: datagram.source) }
    }
}

/// A one-shot signal an async task can wait for; waiting also ends when the waiting task is cancelled.
final class StopSignal: @unchecked Sendable {
    private let lock = NSLock()
    private var fired = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func fire() {
        let resumed: [CheckedContinuation<Void, Never>] = lock.withLock {
            fired = true
            defer { waiters = [] }
            return waiters
        }
        for waiter in resumed { waiter.resume() }
    }

    func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = lock.withLock {
                    if fired { return true }
                    waiters.append(continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            fire()
        }
    }
}

import Logging
import Model
import Netlink
import Synchronization

/// The daemon's one owner of kernel state (`Steering` is single-owner, not thread-safe): every plan and
/// every uplink change goes through this actor, so two batches never interleave. The routing plan and the
/// uplink pins are two inputs of ONE plan that Steering diffs and applies.
public actor KernelSteering {
    private let steering: Steering
    private let logger: Logger
    /// The last plan routing asked for (its `uplinks` are ours, not routing's).
    private var routed = SteeringPlan()
    private var pins: [SteeringPlan.UplinkPin] = []
    private var shapers: [SteeringPlan.Shaper] = []
    private var downloadShapers: [SteeringPlan.DownloadShaper] = []
    /// This site relays (`run --relay`): no transit refusal between its tunnels.
    private let relay: Bool

    public init(netns: String? = nil, relay: Bool = false, logger: Logger) throws {
        steering = try Steering(netns: netns)
        self.relay = relay
        self.logger = logger
    }

    /// `plan` with what this actor owns: the uplink pins, the shapers, whether the site relays.
    private func full(_ plan: SteeringPlan) -> SteeringPlan {
        var full = plan
        full.uplinks = pins
        full.shapers = shapers
        full.downloadShapers = downloadShapers
        full.relay = relay
        return full
    }

    public func apply(_ plan: SteeringPlan) async throws {
        let changes = try steering.apply(full(plan))
        routed = plan
        logger.debug("steering applied", metadata: ["changes": "\(changes)"])
        logShaperProblems(changes)
    }

    /// The shapers of the tunnels (docs/SHAPING.md): installed, changed in place or removed with the rest of
    /// the plan. A shaper that cannot be installed is logged and its tunnel stays unshaped; routing goes on.
    @discardableResult
    public func setShapers(_ wanted: [SteeringPlan.Shaper], downloads: [SteeringPlan.DownloadShaper] = []) throws -> SteeringChanges {
        guard wanted != shapers || downloads != downloadShapers else { return SteeringChanges() }
        shapers = wanted
        downloadShapers = downloads
        let changes = try steering.apply(full(routed))
        logShaperProblems(changes)
        return changes
    }

    private var reportedShaperProblems: [String] = []

    /// Once per distinct set of problems, not on every rate change.
    private func logShaperProblems(_ changes: SteeringChanges) {
        guard changes.shaperProblems != reportedShaperProblems else { return }
        reportedShaperProblems = changes.shaperProblems
        for problem in changes.shaperProblems { logger.error("shaping: \(problem)") }
    }

    /// Every installed shaper's rate, queues and drops, for the shaping service, status and metrics.
    public func shaperStatistics() throws(SteeringError) -> [ShaperStatistics] {
        try steering.shaperStatistics()
    }

    /// Pins the tunnels of each uplink (by position: slot 1, 2, ...) to it: WireGuard's packets with the
    /// uplink's socket mark take its routing table, a copy of the main table's routes out of its interface.
    /// Without it, two uplinks that both reach a remote endpoint would carry each other's tunnels whenever
    /// the main table prefers one. Call again whenever an uplink's interface, address, gateway or carrier
    /// changes: the main table's routes out of it change with them and are read again.
    public func pinUplinks(_ interfaces: [String]) throws {
        pins = interfaces.enumerated().compactMap { position, interface in
            Conventions.uplinkSlot(position: position).map { SteeringPlan.UplinkPin(slot: $0, interface: interface) }
        }
        let changes = try steering.apply(full(routed), rereadUplinks: true)
        logger.debug("uplinks pinned", metadata: ["changes": "\(changes)"])
    }

    /// Set from any thread (the rtnetlink monitor's) when a route in one of our tables was deleted: the next
    /// drift check then reads our routes too.
    public nonisolated let routesTouched = Mutex(false)

    /// How often the daemon looks for foreign changes to what we own (`repairDrift`): a repair lands within
    /// this period plus the repair itself, well inside the 1 s the design allows.
    public static let driftCheckInterval = Duration.milliseconds(250)

    /// Puts back what somebody else changed of ours (a deleted table, a flushed rule, a deleted route), logged
    /// once per repair with what was repaired. Returns the repair, nil when nothing had drifted.
    @discardableResult
    public func repairDrift() -> SteeringChanges? {
        let touched = routesTouched.withLock { flag in
            defer { flag = false }
            return flag
        }
        do {
            guard let changes = try steering.repairDrift(routesTouched: touched) else { return nil }
            logger.warning("repaired a foreign change to our kernel state", metadata: ["repaired": "\(changes)"])
            return changes
        } catch {
            logger.error("checking our kernel state for foreign changes failed: \(error)")
            return nil
        }
    }

    /// Removes everything we installed: our table, rules and routes. Idempotent.
    public func removeAll() {
        do { _ = try steering.removeAll() } catch { logger.error("removing steering state: \(error)") }
    }

    /// The plan last applied, if any (with the uplink pins).
    public func currentPlan() -> SteeringPlan? { steering.currentPlan }

    /// Our nft counters (packets/bytes per class and path chain, flows per class), read in one rule dump of
    /// our table, for the metrics endpoint. Empty when the table is not installed.
    public func counters() throws(SteeringError) -> SteeringCounters {
        try steering.counters()
    }
}

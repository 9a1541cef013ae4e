import Logging
import Model
import Netlink

/// The daemon's one owner of kernel state (`Steering` is single-owner, not thread-safe): every plan and
/// every uplink change goes through this actor, so two batches never interleave. The routing plan and the
/// uplink pins are two inputs of ONE plan that Steering diffs and applies.
public actor KernelSteering {
    private let steering: Steering
    private let logger: Logger
    /// The last plan routing asked for (its `uplinks` are ours, not routing's).
    private var routed = SteeringPlan()
    private var pins: [SteeringPlan.UplinkPin] = []

    public init(netns: String? = nil, logger: Logger) throws {
        steering = try Steering(netns: netns)
        self.logger = logger
    }

    public func apply(_ plan: SteeringPlan) async throws {
        var full = plan
        full.uplinks = pins
        let changes = try steering.apply(full)
        routed = plan
        logger.debug("steering applied", metadata: ["changes": "\(changes)"])
    }

    /// Pins the tunnels of each uplink (by position: slot 1, 2, ...) to it: WireGuard's packets with the
    /// uplink's socket mark take its routing table, a copy of the main table's routes out of its interface.
    /// Without it, two uplinks that both reach a remote endpoint would carry each other's tunnels whenever
    /// the main table prefers one. Call again whenever an uplink's interface, address, gateway or carrier
    /// changes: the main table's routes out of it change with them and are read again.
    public func pinUplinks(_ interfaces: [String]) throws {
        pins = interfaces.prefix(Conventions.uplinkSlots.count).enumerated().map {
            SteeringPlan.UplinkPin(slot: UInt8($0.offset + 1), interface: $0.element)
        }
        var full = routed
        full.uplinks = pins
        let changes = try steering.apply(full, rereadUplinks: true)
        logger.debug("uplinks pinned", metadata: ["changes": "\(changes)"])
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

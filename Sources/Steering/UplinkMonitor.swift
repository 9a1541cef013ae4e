import Logging
import Model
import Netlink
import Synchronization

/// Follows the uplinks as the kernel changes them, from rtnetlink notifications (never polling): the one
/// place the daemon reads links, addresses and default routes. Subscribed before the first read, so no
/// change falls between the read and the notifications.
public final class UplinkMonitor: Sendable {
    private let monitor: RouteMonitor
    /// The uplinks' state when the monitor started.
    public let initial: UplinkTracker
    /// The uplinks by interface name, as the tracker knows them now (it adds detected ones): what the fast
    /// path on the monitor's thread reports stops of.
    private let known: Known

    private final class Known: Sendable {
        let uplinks: Mutex<[String: Uplink]>
        init(_ uplinks: [String: Uplink]) { self.uplinks = Mutex(uplinks) }
        func callAsFunction(_ name: String) -> Uplink? { uplinks.withLock { $0[name] } }
    }

    /// `detection`: no `--uplink` was given; interfaces that qualify later become uplinks (`UplinkTracker`).
    public init(uplinks: [Uplink], detection: UplinkDetection? = nil) throws(NetlinkError) {
        monitor = try RouteMonitor()
        var tracker = UplinkTracker(uplinks: uplinks, detection: detection)
        _ = try Self.read(into: &tracker)
        initial = tracker
        known = Known(Self.byInterface(tracker.uplinks))
    }

    private static func byInterface(_ uplinks: [Uplink]) -> [String: Uplink] {
        Dictionary(uplinks.map { ($0.interface, $0) }, uniquingKeysWith: { first, _ in first })
    }

    private static func read(into tracker: inout UplinkTracker) throws(NetlinkError) -> [UplinkChange] {
        let client = try RouteNetlinkClient()
        return tracker.reset(links: try client.links(), addresses: try client.addresses(),
                             routes: try client.routes(table: UplinkTracker.mainTable))
    }

    /// Starts receiving. `stopped` runs on the monitor's own thread, not in the task pool (busy with tunnels,
    /// probes and the database at times), with an uplink that lost its carrier or disappeared, so that its
    /// paths can go down within the kernel's notification. `ourRouteRemoved` runs there too when a route in
    /// one of our tables went (ours or not: drift repair tells).
    public func start(stopped: @escaping @Sendable (Uplink) -> Void, ourRouteRemoved: @escaping @Sendable () -> Void = {}) {
        monitor.start { [known] batch in
            for event in batch {
                switch event {
                case .link(let link) where !link.isRunning:
                    if let uplink = known(link.name) { stopped(uplink) }
                case .linkRemoved(let link):
                    if let uplink = known(link.name) { stopped(uplink) }
                case .routeRemoved(let route) where SteeringNames.isOurs(route): ourRouteRemoved()
                default: break
                }
            }
        }
    }

    public func stop() { monitor.stop() }

    /// Calls `react` with each batch of changes (one per uplink: its state before and after the batch) and
    /// the uplinks' state after it, until the notifications end. Lost notifications (an overrun) are made
    /// good by reading everything again.
    public func follow(logger: Logger, _ react: (_ changes: [UplinkChange], _ now: UplinkTracker) async -> Void) async {
        var tracker = initial
        for await batch in monitor.events {
            var changes: [UplinkChange] = []
            for event in batch {
                if event == .overrun {
                    logger.warning("rtnetlink notifications were lost: reading the uplinks again")
                    do { changes += try Self.read(into: &tracker) } catch {
                        logger.error("reading the uplinks failed: \(error)")
                    }
                } else {
                    changes += tracker.apply(event)
                }
            }
            if tracker.uplinks.count != known.uplinks.withLock({ $0.count }) {
                known.uplinks.withLock { $0 = Self.byInterface(tracker.uplinks) }
            }
            let merged = UplinkChange.merged(changes)
            if !merged.isEmpty { await react(merged, tracker) }
        }
    }
}

extension UplinkChange {
    /// One change per uplink: from its state before the batch to its state after; none where they are equal.
    public static func merged(_ changes: [UplinkChange]) -> [UplinkChange] {
        var order: [String] = []
        var byInterface: [String: UplinkChange] = [:]
        for change in changes {
            let name = change.before.uplink.interface
            if let first = byInterface[name] {
                byInterface[name] = UplinkChange(before: first.before, after: change.after)
            } else {
                order.append(name)
                byInterface[name] = change
            }
        }
        return order.compactMap { byInterface[$0] }.filter { $0.before != $0.after }
    }
}

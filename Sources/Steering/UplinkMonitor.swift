import Logging
import Model
import Netlink

/// Follows the uplinks as the kernel changes them, from rtnetlink notifications (never polling): the one
/// place the daemon reads links, addresses and default routes. Subscribed before the first read, so no
/// change falls between the read and the notifications.
public final class UplinkMonitor: Sendable {
    private let monitor: RouteMonitor
    /// The uplinks' state when the monitor started.
    public let initial: UplinkTracker

    public init(uplinks: [Uplink]) throws(NetlinkError) {
        monitor = try RouteMonitor()
        var tracker = UplinkTracker(uplinks: uplinks)
        _ = try Self.read(into: &tracker)
        initial = tracker
    }

    private static func read(into tracker: inout UplinkTracker) throws(NetlinkError) -> [UplinkChange] {
        let client = try RouteNetlinkClient()
        return tracker.reset(links: try client.links(), addresses: try client.addresses(),
                             routes: try client.routes(table: UplinkTracker.mainTable))
    }

    /// Starts receiving. `stopped` runs on the monitor's own thread, not in the task pool (busy with tunnels,
    /// probes and the database at times), with the interface name of an uplink that lost its carrier or
    /// disappeared, so that its paths can go down within the kernel's notification. `ourRouteRemoved` runs
    /// there too when a route in one of our tables went (ours or not: drift repair tells).
    public func start(stopped: @escaping @Sendable (String) -> Void, ourRouteRemoved: @escaping @Sendable () -> Void = {}) {
        let names = Set(initial.uplinks.map(\.interface))
        monitor.start { batch in
            for event in batch {
                switch event {
                case .link(let link) where !link.isRunning && names.contains(link.name): stopped(link.name)
                case .linkRemoved(let link) where names.contains(link.name): stopped(link.name)
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

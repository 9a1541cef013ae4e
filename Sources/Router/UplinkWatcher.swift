import Logging
import Mesh
import Model
import Netlink
import ServiceLifecycle
import Steering

/// Follows the uplinks as the kernel changes them (rtnetlink notifications, never polling) and reacts:
/// an uplink that stops carrying traffic has its paths down at once (they come back by the probes' usual
/// recovery: replies for the up hold); any change of interface, address,
/// gateway or carrier rewrites the per-uplink routing tables; a new, moved or lost address is announced
/// at once; discovery's sockets are opened again when an uplink appears, comes back or moves. An uplink
/// named with `--uplink` that is absent at start is used when it appears; one that disappears is dropped
/// (its endpoint withdrawn, its paths down) until it comes back.
struct UplinkWatcher: Service {
    let monitor: RouteMonitor
    /// The state the daemon started from (read after `monitor` subscribed).
    let initial: UplinkTracker
    let settings: TunnelSettings
    let steering: KernelSteering
    let discovery: DiscoveryService
    /// To re-plan the tunnels at once when our endpoints change.
    let driver: TunnelDriver
    let runtime: SiteRuntime
    let logger: Logger

    /// The pinning of each configured uplink, by its position (slot 1, 2, ...).
    static func bindings(_ uplinks: [Uplink]) -> [UplinkPinning.Binding] {
        uplinks.enumerated().map { UplinkPinning.Binding(slot: UInt8($0.offset + 1), interface: $0.element.interface) }
    }

    /// What we announce for the uplinks' current addresses.
    static func endpoints(_ tracker: UplinkTracker, settings: TunnelSettings) -> [Endpoint] {
        TunnelPlanner.localEndpoints(uplinks: tracker.uplinks, addresses: tracker.addressesByInterface, settings: settings)
    }

    func run() async throws {
        let tracker = initial
        let uplinkPaths = runtime.uplinkPaths
        // The fast path runs on the monitor's thread, not in the task pool (busy with tunnels, probes and
        // the database at times): an uplink that stops has its paths down within the kernel's notification.
        let labels = Dictionary(tracker.uplinks.map { ($0.interface, $0.label) }, uniquingKeysWith: { first, _ in first })
        monitor.start { batch in
            for event in batch {
                switch event {
                case .link(let link):
                    if !link.isRunning, let label = labels[link.name] { uplinkPaths.stopped(label) }
                case .linkRemoved(let link):
                    if let label = labels[link.name] { uplinkPaths.stopped(label) }
                default:
                    break
                }
            }
        }
        defer { monitor.stop() }
        try await untilShutdown { [initial] in
            var tracker = initial
            for await batch in monitor.events {
                var changes: [UplinkChange] = []
                for event in batch {
                    if event == .overrun {
                        logger.warning("rtnetlink notifications were lost: reading the uplinks again")
                        do {
                            let client = try RouteNetlinkClient()
                            changes += tracker.reset(links: try client.links(), addresses: try client.addresses(),
                                                     routes: try client.routes(table: UplinkTracker.mainTable))
                        } catch {
                            logger.error("reading the uplinks failed: \(error)")
                        }
                    } else {
                        changes += tracker.apply(event)
                    }
                }
                await react(to: Self.merged(changes), tracker)
            }
        }
    }

    /// One change per uplink: from its state before the batch to its state after.
    static func merged(_ changes: [UplinkChange]) -> [UplinkChange] {
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

    private func react(to changes: [UplinkChange], _ tracker: UplinkTracker) async {
        guard !changes.isEmpty else { return }
        // Also done by the monitor thread's fast path (a path already down stays so); this one covers a stop
        // learnt from a full read after an overrun.
        for change in changes where change.stoppedRunning { runtime.uplinkPaths.stopped(change.after.uplink.label) }
        for change in changes {
            logger.notice("uplink changed", metadata: ["uplink": "\(change.after.uplink)", "now": "\(change.after)"])
        }
        if changes.contains(where: \.needsPinning) {
            do {
                try await steering.pinUplinks(Self.bindings(tracker.uplinks))
            } catch {
                logger.error("rewriting the per-uplink routing tables failed: \(error)")
            }
        }
        if changes.contains(where: \.endpointChanged) {
            var local = discovery.local
            local.endpoints = Self.endpoints(tracker, settings: settings)
            do {
                try discovery.update(local)
                logger.notice("announcing the new endpoints", metadata: ["endpoints": "\(local.endpoints.map(\.description))"])
                // Re-planned now, not at the driver's next tick: a site that hears of a new endpoint starts its
                // handshake at once, and our tunnel must know that site as a peer by then.
                let plan = try driver.currentPlan()
                _ = await driver.reconciler.apply(plan)
                await runtime.planned(plan, discovery: discovery)
            } catch {
                logger.error("cannot announce or plan the new endpoints: \(error)")
            }
        }
        if changes.contains(where: \.needsRebind) { discovery.rebindUplinks() }
    }
}

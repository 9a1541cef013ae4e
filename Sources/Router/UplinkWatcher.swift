import Logging
import Mesh
import Model
import ServiceLifecycle
import Steering

/// Follows the uplinks as the kernel changes them (rtnetlink notifications, never polling) and reacts:
/// an uplink that stops carrying traffic has its paths down at once (they come back by the probes' usual
/// recovery: replies for the up hold); any change of interface, address,
/// gateway or carrier rewrites the per-uplink routing tables; a new, moved or lost address is announced
/// at once; discovery's sockets are opened again when an uplink appears, comes back or moves. An uplink
/// named with `--uplink` that is absent at start is used when it appears; one that disappears is dropped
/// (its endpoint withdrawn, its paths down) until it comes back. Without `--uplink`, an interface that
/// qualifies later (`UplinkDetection`: an address and a default route) becomes an uplink then, and is
/// dropped the same way when it goes.
struct UplinkWatcher: Service {
    let monitor: UplinkMonitor
    let settings: TunnelSettings
    let steering: KernelSteering
    let discovery: DiscoveryService
    /// To re-plan the tunnels at once when our endpoints change.
    let driver: TunnelDriver
    let runtime: SiteRuntime
    let logger: Logger

    /// The interfaces of the configured uplinks, in slot order (slot 1, 2, ...), for `KernelSteering.pinUplinks`.
    static func pinned(_ uplinks: [Uplink]) -> [String] { uplinks.map(\.interface) }

    /// What we announce for the uplinks' current addresses.
    static func endpoints(_ tracker: UplinkTracker, settings: TunnelSettings) -> [Endpoint] {
        TunnelPlanner.localEndpoints(uplinks: tracker.uplinks, addresses: tracker.addressesByInterface, settings: settings)
    }

    func run() async throws {
        let uplinkPaths = runtime.uplinkPaths
        // The fast path: an uplink that stops has its paths down within the kernel's notification.
        let steering = steering
        monitor.start(stopped: { uplink in uplinkPaths.stopped(uplink.label) }, ourRouteRemoved: {
            steering.routesTouched.withLock { $0 = true }
        })
        defer { monitor.stop() }
        try await untilShutdown {
            await monitor.follow(logger: logger) { changes, tracker in await react(to: changes, tracker) }
        }
    }

    private func react(to changes: [UplinkChange], _ tracker: UplinkTracker) async {
        guard !changes.isEmpty else { return }
        // Also done by the monitor thread's fast path (a path already down stays so); this one covers a stop
        // learnt from a full read after an overrun.
        for change in changes where change.stoppedRunning { runtime.uplinkPaths.stopped(change.after.uplink.label) }
        for change in changes {
            logger.notice("uplink changed", metadata: ["uplink": "\(change.after.uplink)", "now": "\(change.after)"])
        }
        // No --uplink: an interface that got an address and a default route became an uplink (the tracker
        // added it in the next slot). Tunnels and discovery take it before anything is announced for it.
        if tracker.uplinks != driver.uplinks {
            for uplink in tracker.uplinks where !driver.uplinks.contains(uplink) {
                logger.notice("uplink detected: using it", metadata: ["uplink": "\(uplink)",
                                                                    "slot": "\(tracker.uplinks.count)"])
            }
            driver.setUplinks(tracker.uplinks)
            discovery.setUplinks(tracker.uplinks.map(\.interface))
        }
        if changes.contains(where: \.needsPinning) {
            do {
                try await steering.pinUplinks(Self.pinned(tracker.uplinks))
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
                let plan = try driver.relayedPlan()
                _ = await driver.reconciler.apply(plan)
                await runtime.planned(plan, discovery: discovery)
            } catch {
                logger.error("cannot announce or plan the new endpoints: \(error)")
            }
        }
        if changes.contains(where: \.needsRebind) { discovery.rebindUplinks() }
    }
}

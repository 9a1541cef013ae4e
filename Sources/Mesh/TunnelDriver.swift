import Foundation
import Logging
import Model

/// Keeps the tunnels in step with discovery: on every mesh event, and every `retryInterval` (to retry
/// failures; free when nothing changed), it re-plans from the active sites and reconciles; every 100 ms
/// it lets the reconciler nudge peers whose first handshake stalled. After each
/// reconciliation `onPlan` gets the plan (its `paths` feed steering and the database) and the report.
///
/// `run` creates the interfaces first and only then starts discovery, so no site hears of an endpoint
/// before it listens (a handshake sent to a closed port waits out WireGuard's 5 s retry). Runs until the
/// calling task is cancelled. The one consumer of `discovery.events`: the daemon observes them via `onEvent`.
public struct TunnelDriver: Sendable {
    public let discovery: DiscoveryService
    public let reconciler: TunnelReconciler
    public let uplinks: [Uplink]
    public let localEndpoints: [Endpoint]
    public let settings: TunnelSettings
    public var retryInterval: Duration
    private let logger: Logger

    public init(discovery: DiscoveryService, reconciler: TunnelReconciler, uplinks: [Uplink], localEndpoints: [Endpoint],
                settings: TunnelSettings, retryInterval: Duration = .seconds(1),
                logger: Logger = Logger(label: "patronus.mesh.tunnels")) {
        self.discovery = discovery
        self.reconciler = reconciler
        self.uplinks = uplinks
        self.localEndpoints = localEndpoints
        self.settings = settings
        self.retryInterval = retryInterval
        self.logger = logger
    }

    /// The plan for the sites discovery knows now.
    public func currentPlan() throws(TunnelPlanError) -> TunnelPlan {
        try TunnelPlanner.plan(uplinks: uplinks, localEndpoints: localEndpoints,
                               remotes: discovery.sites.map(\.site), settings: settings)
    }

    /// Throws only when discovery cannot open its sockets.
    public func run(onEvent: @escaping @Sendable (MeshEvent) async -> Void = { _ in },
                    onPlan: @escaping @Sendable (TunnelPlan, ReconcileReport) async -> Void = { _, _ in })
        async throws(DiscoveryError)
    {
        let apply: @Sendable () async -> Void = {
            do {
                let plan = try currentPlan()
                let report = await reconciler.apply(plan)
                await onPlan(plan, report)
            } catch {
                logger.error("cannot plan tunnels", metadata: ["error": "\(error)"])
            }
        }
        await apply()  // the interfaces exist (and listen) before anyone hears of them
        let failure = await withTaskGroup(of: DiscoveryError?.self) { group -> DiscoveryError? in
            group.addTask {
                do throws(DiscoveryError) {
                    try await discovery.run()
                    return nil
                } catch {
                    return error
                }
            }
            group.addTask {
                for await event in discovery.events {
                    await onEvent(event)
                    await apply()
                }
                return nil
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: retryInterval)
                    if Task.isCancelled { break }
                    await apply()
                }
                return nil
            }
            group.addTask {
                // Cheap when no peer awaits its first handshake: no backend call at all.
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(100))
                    await reconciler.nudgeStalledHandshakes()
                }
                return nil
            }
            // The first child to end (discovery failing, or cancellation) ends all.
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        if let failure { throw failure }
    }
}

import Foundation
import Logging
import Synchronization
import Testing
@testable import Model
@testable import Router
@testable import Routing

private final class RecordingApplier: PlanApplier {
    let plans = Mutex<[SteeringPlan]>([])
    func apply(_ plan: SteeringPlan) async throws { plans.withLock { $0.append(plan) } }
    var last: SteeringPlan? { plans.withLock { $0.last } }
    var count: Int { plans.withLock { $0.count } }
}

private let east = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000e1")!)
private let a = PathKey(site: east, localLabel: "isp-a", remoteLabel: "isp-a")
private let b = PathKey(site: east, localLabel: "isp-b", remoteLabel: "isp-b")

@Suite struct ControllerTests {
    @Test func pathDownMovesTrafficInTheSameCallAndIsRecorded() async throws {
        let applier = RecordingApplier()
        let records = Mutex<[FailoverRecord]>([])
        let controller = Controller(applier: applier, logger: Logger(label: "test")) { new in
            records.withLock { $0 += new }
        }
        try await controller.setPolicies([Policy(name: "voip", priority: 10, strategy: .lowestLatency)])
        try await controller.setTopology(
            sites: [RemoteSite(id: east, name: "east", prefixes: [IPv4Prefix("10.99.0.2/32")!])],
            paths: [PathBinding(key: a, slot: 1, interface: "wg-hq0"), PathBinding(key: b, slot: 2, interface: "wg-hq1")])
        try await controller.pathUpdated(a, status: .up, metrics: PathMetrics(latencyMs: 10, jitterMs: 1, lossPct: 0, score: 95))
        try await controller.pathUpdated(b, status: .up, metrics: PathMetrics(latencyMs: 30, jitterMs: 1, lossPct: 0, score: 90))
        #expect(applier.last?.choices == [SteeringPlan.Choice(site: east, classID: 1, target: .path(1))])
        let appliedBefore = applier.count

        try await controller.pathUpdated(a, status: .down, metrics: nil, detectionMs: 150)
        #expect(applier.count == appliedBefore + 1)
        #expect(applier.last?.choices == [SteeringPlan.Choice(site: east, classID: 1, target: .path(2))])
        let recorded = records.withLock { $0 }
        #expect(recorded.count == 1)
        #expect(recorded.first?.from == a)
        #expect(recorded.first?.to == b)
        #expect(recorded.first?.reason == "path-down")
        #expect(recorded.first?.detectionMs == 150)
        #expect(await controller.failovers == 1)

        // Nothing changed: nothing is applied again.
        try await controller.tick()
        #expect(applier.count == appliedBefore + 1)
    }

    @Test func unmeasuredPathsCarryTheirSiteUntilMeasured() async throws {
        let applier = RecordingApplier()
        let controller = Controller(applier: applier, logger: Logger(label: "test"))
        try await controller.setPolicies([Policy(name: "default", priority: 100, strategy: .bestScore)])
        try await controller.setTopology(
            sites: [RemoteSite(id: east, name: "east", prefixes: [IPv4Prefix("10.99.0.2/32")!])],
            paths: [PathBinding(key: a, slot: 1, interface: "wg-hq0")])
        // No measurement yet: the only path is still chosen (never "no route"), marked down until probed.
        #expect(applier.last?.choices.count == 1)
        #expect(applier.last?.problems() == [])
    }
}

import Foundation
import Testing
import Model
@testable import Routing

private let east = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000e1")!)

@Suite struct FlowClassificationTests {
    let policies = (try! Policy.defaults()) + [
        Policy(name: "video", priority: 50, match: TrafficMatch(services: [ServiceMatch(.udp, [PortRange(3478, 3481)])],
                                                                dscp: [34], destinations: [IPv4Prefix("10.20.0.0/16")!]),
               strategy: .lowestLoss),
        Policy(name: "anyudp", priority: 300, match: TrafficMatch(services: [ServiceMatch(.udp)]), strategy: .bestScore),
        Policy(name: "off", priority: 1, strategy: .bestScore, enabled: false),
    ]

    func classOf(_ proto: TransportProtocol?, _ port: UInt16?, to: String = "10.20.1.1", dscp: UInt8 = 0) -> String? {
        SteeringPlanner.classify(Flow(source: IPv4Address("10.10.1.2")!, destination: IPv4Address(to)!, proto: proto,
                                      port: port, dscp: dscp), policies: policies)?.name
    }

    /// The classify chain's order (priority, then name; disabled policies have no rule) and its rule
    /// semantics: every field of a match must hold, any entry of a field will do, no ports = every port.
    @Test func theFirstMatchingPolicyInPriorityOrderGivesTheClass() {
        #expect(classOf(.udp, 5060) == "voip")
        #expect(classOf(.udp, 16384) == "voip" && classOf(.udp, 32767) == "voip" && classOf(.udp, 32768) == "anyudp")
        #expect(classOf(.tcp, 5061) == "voip" && classOf(.tcp, 5062) == "default")
        #expect(classOf(.tcp, 873) == "bulk" && classOf(.tcp, 20) == "bulk" && classOf(.udp, 873) == "anyudp")
        #expect(classOf(.udp, 3478, dscp: 34) == "video")
        #expect(classOf(.udp, 3478) == "anyudp", "DSCP 0 is not in video's DSCP set")
        #expect(classOf(.udp, 3478, to: "10.30.0.1", dscp: 34) == "anyudp", "outside video's destinations")
        #expect(classOf(nil, nil) == "default", "no ports (ICMP): only a match without services selects it")
        #expect(SteeringPlanner.classOrder(policies).map(\.name) == ["video", "voip", "bulk", "anyudp", "default"])
        let noDefault = policies.filter { $0.name != "default" }
        #expect(SteeringPlanner.classify(Flow(source: IPv4Address(1, 1, 1, 1), destination: IPv4Address(2, 2, 2, 2),
                                              proto: .tcp, port: 443), policies: noDefault) == nil)
    }

    @Test func anEntryWithoutPortsStandsForEveryPortAsInTheKernelSet() {
        #expect(ServiceMatch(.udp).effectivePorts == [PortRange(0, 65535)])
        #expect(ServiceMatch(.tcp, [PortRange(873), PortRange(20, 21)]).effectivePorts == [PortRange(20, 21), PortRange(873)])
        #expect(!ServiceMatch(.udp).matches(proto: .tcp, port: 80))
        #expect(!ServiceMatch(.udp).matches(proto: .udp, port: nil))
    }
}

@Suite struct SelectionAssessmentTests {
    let engine = RoutingEngine()
    func path(_ label: String, _ status: PathStatus = .up, latency: Double, score: Double = 90) -> PathState {
        PathState(key: PathKey(site: east, localLabel: label, remoteLabel: label), status: status,
                  metrics: PathMetrics(latencyMs: latency, jitterMs: 0.2, lossPct: 0, score: score))
    }
    let voip = Policy(name: "voip", priority: 100, strategy: .lowestLatency)

    @Test func judgesThePathInUseByTheEnginesRankingAndMargins() {
        let a = path("isp-a", latency: 10), b = path("isp-b", latency: 25), near = path("isp-c", latency: 10.5)
        #expect(engine.assess(policy: voip, paths: [a, b], inUse: a.key).verdict == .best)
        #expect(engine.assess(policy: voip, paths: [a, b], inUse: a.key).ranked.map(\.key) == [a.key, b.key])
        #expect(engine.assess(policy: voip, paths: [a, b], inUse: b.key).verdict == .betterByMargin(better: a.key))
        #expect(engine.assess(policy: voip, paths: [a, near], inUse: near.key).verdict == .keptWithinMargin(better: a.key))
        let down = path("isp-a", .down, latency: 10)
        #expect(engine.assess(policy: voip, paths: [down, b], inUse: down.key).verdict == .unusable)
        #expect(engine.assess(policy: voip, paths: [down], inUse: down.key).verdict == .nothingUsable)
        let spread = Policy(name: "spread", priority: 1, strategy: .loadBalance)
        #expect(engine.assess(policy: spread, paths: [a, b], inUse: a.key).verdict == .balanced)
    }
}

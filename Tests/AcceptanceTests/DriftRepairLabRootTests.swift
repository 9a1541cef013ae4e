import Foundation
import Glibc
import Lab
import Testing

/// Issue 14: a running router repairs foreign changes to its kernel state within 1 s, under a VoIP stream,
/// and says so once per repair in its log: `nft delete table inet patronus`, `ip rule flush` of our band,
/// a deleted per-path route. The stream's receiver (outside the router) measures the gap each one caused.
@Suite(.serialized) struct DriftRepairLabRootTests {
    @Test(.enabled(if: acceptanceCanRun), .timeLimit(.minutes(4)))
    func aDeletedTableFlushedRulesAndADeletedRouteAreRepairedWithinASecondRoot() throws {
        let lab = try AcceptanceLab(sites: 2)
        defer { lab.down() }
        try Self.vandalizeAndWatchTheRepairs(lab)
    }

    /// The same across the routed internet with hq's isp-b behind carrier NAT, where hq's tunnels depend on
    /// uplink pinning (rules at 6205, protocol 78, and the per-uplink tables): those are flushed too.
    @Test(.enabled(if: acceptanceCanRun), .timeLimit(.minutes(4)))
    func theSameRepairsInTheRoutedLabWithNATAndUplinkPinningRoot() throws {
        let lab = try AcceptanceLab(sites: 2, wan: .routed, nat: [UplinkID(site: "hq", uplink: "isp-b")])
        defer { lab.down() }
        try Self.vandalizeAndWatchTheRepairs(lab, uplinkPinning: true)
    }

    static func vandalizeAndWatchTheRepairs(_ lab: AcceptanceLab, uplinkPinning: Bool = false) throws {
        try lab.waitForMesh()
        let hq = lab.router("hq")
        let rows = try Subprocess.run(["sqlite3", lab.database("hq"), "SELECT slot FROM paths WHERE slot IS NOT NULL ORDER BY id"])
        let tables = rows.stdout.split(separator: "\n").compactMap { Int($0) }.map { 6200 + $0 }
        #expect(tables.count == 2)
        // Uplink pinning as installed now: its rules (protocol 78) and the tables they look up.
        let rules = (try? JSONSerialization.jsonObject(with: Data(try hq.check(["ip", "-j", "rule", "show"]).utf8))) as? [[String: Any]] ?? []
        let pins = rules.filter { "\($0["protocol"] ?? "")" == "78" }.compactMap { $0["table"].map { "\($0)" } }
        if uplinkPinning { #expect(pins.count == 2, "uplink pinning rules: \(pins)") }
        func repaired() -> Bool {
            let nft = (try? hq.check(["nft", "list", "table", "inet", "patronus"])) ?? ""
            let rules = (try? hq.check(["ip", "rule", "show"])) ?? ""
            return nft.contains("chain site_") && tables.allSatisfy { rules.contains("lookup \($0) proto 77") }
                && tables.allSatisfy { !((try? hq.check(["ip", "route", "show", "table", "\($0)"])) ?? "").isEmpty }
                && pins.allSatisfy { rules.contains("lookup \($0) proto 78") }
                && pins.allSatisfy { !((try? hq.check(["ip", "route", "show", "table", $0])) ?? "").isEmpty }
        }
        #expect(repaired())
        let logBefore = lab.log("hq").components(separatedBy: "repaired a foreign change").count
        var vandalism: [(String, [[String]])] = [
            ("nft delete table inet patronus", [["nft", "delete", "table", "inet", "patronus"]]),
            ("ip rule flush protocol 77", [["ip", "rule", "flush", "protocol", "77"]]),
            ("ip route flush of the per-path tables", tables.map { ["ip", "route", "flush", "table", "\($0)"] }),
        ]
        if uplinkPinning {
            vandalism += [
                ("ip rule flush protocol 78 (uplink pinning)", [["ip", "rule", "flush", "protocol", "78"]]),
                ("ip route flush of the uplink tables", pins.map { ["ip", "route", "flush", "table", $0] }),
            ]
        }
        // One stream per change: its longest silence at the receiver is that change's outage, as the LAN
        // sees it. The polling time (an upper bound: it includes starting nft and ip) is printed beside it.
        for (what, commands) in vandalism {
            var took = 0.0
            let result = try lab.stream(from: "hq", to: "east", pps: 200, seconds: 3, after: 1) {
                let began = monotonicSeconds()
                for command in commands { try hq.check(command) }
                while !repaired() && monotonicSeconds() - began < 3 { usleep(10_000) }
                took = (monotonicSeconds() - began) * 1000
            }
            print("drift repair (\(uplinkPinning ? "routed, NAT" : "bridged")): \(what): VoIP \(result); seen repaired by polling after \(String(format: "%.0f", took)) ms")
            #expect(repaired(), "\(what) was not repaired")
            #expect(result.received > 0 && result.maxGapMs < 1000, "\(what): \(result)")
        }
        for line in lab.log("hq").split(separator: "\n") where line.contains("foreign") { print("drift repair log: \(line)") }
        let repairs = lab.log("hq").components(separatedBy: "repaired a foreign change").count - logBefore
        #expect(repairs == vandalism.count, "one log line per repair, got \(repairs)")
    }
}

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
        try lab.waitForMesh()
        let hq = lab.router("hq")
        let rows = try Subprocess.run(["sqlite3", lab.database("hq"), "SELECT slot FROM paths WHERE slot IS NOT NULL ORDER BY id"])
        let tables = rows.stdout.split(separator: "\n").compactMap { Int($0) }.map { 6200 + $0 }
        #expect(tables.count == 2)
        func repaired() -> Bool {
            let nft = (try? hq.check(["nft", "list", "table", "inet", "patronus"])) ?? ""
            let rules = (try? hq.check(["ip", "rule", "show"])) ?? ""
            return nft.contains("chain site_") && tables.allSatisfy { rules.contains("lookup \($0) proto 77") }
                && tables.allSatisfy { !((try? hq.check(["ip", "route", "show", "table", "\($0)"])) ?? "").isEmpty }
        }
        #expect(repaired())
        let logBefore = lab.log("hq").components(separatedBy: "repaired a foreign change").count
        let vandalism: [(String, [[String]])] = [
            ("nft delete table inet patronus", [["nft", "delete", "table", "inet", "patronus"]]),
            ("ip rule flush protocol 77", [["ip", "rule", "flush", "protocol", "77"]]),
            ("ip route flush of the per-path tables", tables.map { ["ip", "route", "flush", "table", "\($0)"] }),
        ]
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
            print("drift repair: \(what): VoIP \(result); seen repaired by polling after \(String(format: "%.0f", took)) ms")
            #expect(repaired(), "\(what) was not repaired")
            #expect(result.received > 0 && result.maxGapMs < 1000, "\(what): \(result)")
        }
        for line in lab.log("hq").split(separator: "\n") where line.contains("foreign") { print("drift repair log: \(line)") }
        let repairs = lab.log("hq").components(separatedBy: "repaired a foreign change").count - logBefore
        #expect(repairs == vandalism.count, "one log line per repair, got \(repairs)")
    }
}

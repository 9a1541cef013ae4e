import Foundation
import Glibc
import Lab
import Testing

/// Issue 22 in the lab, verified from the LAN hosts (outside the routers).
@Suite(.serialized, .enabled(if: Ops.canRun, "needs root, wireguard-go and the built patronus-router"))
struct TrustRootTests {
    /// Received replies of `count` pings from `namespace` to `address`, `intervalMs` apart.
    static func ping(_ namespace: NetworkNamespace, _ address: String, count: Int, intervalMs: Int) throws -> Int {
        let result = try namespace.run(["ping", "-n", "-q", "-c", "\(count)", "-i", String(format: "%.3f", Double(intervalMs) / 1000),
                                        "-W", "1", address])
        let summary = result.stdout.split(separator: "\n").first { $0.contains("received") } ?? ""
        return Int(summary.split(separator: ",").dropFirst().first?.split(separator: " ").first ?? "") ?? 0
    }

    /// `ping` with one line per reply: the longest gap between consecutive replies' sequence numbers, in ms.
    /// Pings `address` every `intervalMs` for `seconds`: how many came back, the longest run of lost ones (in
    /// ms of sending), and the slowest reply (a packet WireGuard held while it made a new session arrives
    /// late, not lost: the delay is the outage it saw).
    static func pingGaps(_ namespace: NetworkNamespace, _ address: String, seconds: Int, intervalMs: Int) throws
        -> (sent: Int, received: Int, longestGapMs: Int, slowestMs: Double)
    {
        let count = seconds * 1000 / intervalMs
        let result = try namespace.run(["ping", "-n", "-c", "\(count)", "-i", String(format: "%.3f", Double(intervalMs) / 1000),
                                        "-W", "1", address])
        let sequences = result.stdout.split(separator: "\n").compactMap { line -> Int? in
            guard let range = line.range(of: "icmp_seq=") else { return nil }
            return Int(line[range.upperBound...].prefix { $0.isNumber })
        }
        var longest = 0
        var previous = 0
        for sequence in sequences.sorted() {
            longest = max(longest, sequence - previous - 1)
            previous = sequence
        }
        longest = max(longest, count - previous)
        let slowest = result.stdout.split(separator: "\n").compactMap { line -> Double? in
            guard let range = line.range(of: "time=") else { return nil }
            return Double(line[range.upperBound...].prefix { $0.isNumber || $0 == "." })
        }.max() ?? 0
        return (count, sequences.count, longest * intervalMs, slowest)
    }

    static func conflicts(_ status: [String: Any]?) -> [[String: Any]] { status?["conflicts"] as? [[String: Any]] ?? [] }

    /// Without certificates: hq (10.10.1.0/24), east and a newcomer "branch-x" started in west's namespace with
    /// the same mesh key and `--lan 10.10.1.0/25`. Both hq and east refuse the newcomer's prefix and show it;
    /// east never refuses a steering plan; east's and hq's LAN hosts keep reaching each other, also across a
    /// cut of hq's uplink (the blackout stays within a second).
    @Test func anOverlappingNewcomerChangesNothingForTheSitesAlreadyUsingThePrefixRoot() throws {
        let lab = try MetricsLab(sites: 3, uplinks: 2)
        try #require(Ops.waitUntil(timeout: .seconds(60)) { lab.upPaths("hq") == 4 && lab.upPaths("east") == 4 },
                     "mesh up: hq \(lab.upPaths("hq")), east \(lab.upPaths("east"))")
        // west leaves; branch-x comes up in its place, announcing half of hq's LAN.
        let west = lab.state.routers["west"]!.pid
        kill(west, SIGTERM)
        #expect(Ops.waitForExit(west, timeout: .seconds(10)) != nil)
        let directory = lab.controller.stateDirectory
        var arguments = Array(lab.state.plan.routerArguments(site: "west", executable: Ops.binary!, stateDirectory: directory,
                                                             meshKey: "\(directory)/mesh.key").dropFirst())
        func replace(_ flag: String, _ value: String) {
            if let index = arguments.firstIndex(of: flag) { arguments[index + 1] = value }
        }
        replace("--site-name", "branch-x")
        replace("--database", "\(directory)/branch-x.db")
        replace("--lan", "10.10.1.0/25")
        let eastLog = lab.log("east")
        let eastLogStart = (try? String(contentsOfFile: eastLog, encoding: .utf8))?.utf8.count ?? 0
        let branch = try Ops.startRouter(in: lab.state.plan.routerNamespace("west"),
                                         arguments + ["--metrics-listen", "127.0.0.1:9477"],
                                         log: "\(directory)/branch-x.log")
        defer {
            kill(branch, SIGTERM)
            _ = Ops.waitForExit(branch, timeout: .seconds(10))
        }

        // The conflict is visible at both sites (status), held by hq at east and by "this site" at hq.
        var eastConflicts: [[String: Any]] = [], hqConflicts: [[String: Any]] = []
        let seen = Ops.waitUntil(timeout: .seconds(20)) {
            eastConflicts = Self.conflicts(Ops.status(database: lab.database("east")))
            hqConflicts = Self.conflicts(Ops.status(database: lab.database("hq")))
            return !eastConflicts.isEmpty && !hqConflicts.isEmpty
        }
        #expect(seen, "east: \(eastConflicts) hq: \(hqConflicts)")
        #expect(eastConflicts.first?["prefix"] as? String == "10.10.1.0/25")
        #expect(eastConflicts.first?["site_name"] as? String == "branch-x")
        #expect(eastConflicts.first?["holder_name"] as? String == "hq")
        #expect(hqConflicts.first?["prefix"] as? String == "10.10.1.0/25" && hqConflicts.first?["holder_id"] == nil)
        // ... and in the metrics.
        #expect(Ops.waitUntil(timeout: .seconds(12)) { (lab.scrape("east")?.value("patronus_prefix_conflicts") ?? 0) >= 1 })
        // branch-x itself is up with east (its other paths are fine): it is only its prefix that is refused.
        #expect(Ops.waitUntil(timeout: .seconds(20)) { lab.upPaths("east") >= 4 })

        // Traffic between hq's and east's LANs, verified at the hosts.
        let hqHost = lab.state.plan.site(named: "hq")!.hostAddress
        let eastHost = lab.state.plan.site(named: "east")!.hostAddress
        let toHQ = try Self.ping(lab.host("east"), hqHost, count: 40, intervalMs: 25)
        let toEast = try Self.ping(lab.host("hq"), eastHost, count: 40, intervalMs: 25)
        print("trust: east->hq \(toHQ)/40, hq->east \(toEast)/40")
        #expect(toHQ >= 38 && toEast >= 38)

        // A cut of each of hq's uplinks in turn (one of them carries the pings): east's pings to hq fail over.
        let controller = UncheckedBox(lab.controller)
        var blackouts: [Int] = []
        for isp in ["isp-a", "isp-b"] {
            #expect(Ops.waitUntil(timeout: .seconds(30)) { lab.upPaths("east") >= 4 && lab.upPaths("hq") >= 4 })
            let cut = Thread {
                usleep(1_500_000)
                _ = try? controller.value.impair(site: "hq", uplink: isp, ImpairmentChange(cut: true),
                                                 directions: [.inbound, .outbound])
            }
            cut.start()
            let across = try Self.pingGaps(lab.host("east"), hqHost, seconds: 6, intervalMs: 20)
            print("trust: across a cut of hq's \(isp): east->hq \(across.received)/\(across.sent), longest blackout \(across.longestGapMs) ms")
            blackouts.append(across.longestGapMs)
            #expect(across.longestGapMs <= 1000)
            _ = try lab.controller.impair(site: "hq", uplink: isp, ImpairmentChange(clear: true), directions: [.inbound, .outbound])
        }
        #expect(blackouts.contains { $0 > 0 }, "neither cut touched the pings")

        let eastLines = ((try? String(contentsOfFile: eastLog, encoding: .utf8)) ?? "").utf8.dropFirst(eastLogStart)
        let text = String(decoding: Array(eastLines), as: UTF8.self)
        let refusals = text.split(separator: "\n").filter { $0.contains("steering plan rejected") }
        #expect(refusals.isEmpty, "east refused steering plans: \(refusals.prefix(3))")
        let logged = text.split(separator: "\n").filter { $0.contains("announced prefix refused") }
        #expect(logged.count == 1, "one log line per change: \(logged)")
    }
}

/// Hands a value to another thread in a test that knows the accesses do not overlap.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

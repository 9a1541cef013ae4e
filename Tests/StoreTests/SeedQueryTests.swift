import Foundation
import Testing
@testable import Model
@testable import Store

/// The sqlite3 queries of the seed README (shared/seed/sdwan-cli-example.md), copied character for character:
/// they are the user's contract, so they must run unchanged against what the store writes.
enum SeedQueries {
    static let sites = "SELECT * FROM sites;"
    static let paths = "SELECT src_site, dst_site, status, wg_interface FROM paths;"
    static let metrics = """

          SELECT
            path_id,
            latency_ms,
            jitter_ms,
            packet_loss_pct,
            bandwidth_mbps,
            score,
            measured_at
          FROM path_metrics
          ORDER BY measured_at DESC
          LIMIT 10;

        """
    static let policies = "SELECT * FROM policies ORDER BY priority;"
    static let bestPath = "SELECT * FROM paths WHERE status='up' ORDER BY score DESC LIMIT 1;"
}

@Suite struct SeedQueryTests {
    static let sqlite3 = "/usr/bin/sqlite3"

    /// Runs one query with the real sqlite3 binary; returns the header columns and the rows.
    func query(_ database: String, _ sql: String) throws -> (columns: [String], rows: [[String]]) {
        let result = try runProgram(Self.sqlite3, ["-header", "-separator", "|", database, sql])
        #expect(result.status == 0, "sqlite3 failed: \(result.stderr)")
        #expect(result.stderr.isEmpty, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        guard let header = lines.first else { return ([], []) }
        return (header.components(separatedBy: "|"), lines.dropFirst().map { $0.components(separatedBy: "|") })
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: sqlite3)))
    func seedQueriesRunVerbatimWhileTheStoreHoldsTheDatabase() throws {
        try withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            try fixture.store.loadDefaultPoliciesIfNew(Policy.defaults())
            let database = fixture.store.path
            // The store stays open (and keeps writing) for the whole test: these reads go through the WAL.
            #expect(FileManager.default.fileExists(atPath: database + "-wal"))

            let sites = try query(database, SeedQueries.sites)
            #expect(Array(sites.columns.prefix(4)) == ["id", "name", "status", "last_seen"])
            #expect(sites.rows.count == 2)
            let hq = try #require(sites.rows.first { $0[1] == "hq" })
            #expect(hq[0] == fixture.local.description && hq[2] == "active" && hq[3] == "2025-10-09 14:35:42")
            #expect(sites.rows.contains { $0[0] == "550e8400-e29b-41d4-a716-446655440002" && $0[1] == "east" })

            let paths = try query(database, SeedQueries.paths)
            #expect(paths.columns == ["src_site", "dst_site", "status", "wg_interface"])
            #expect(paths.rows.map { $0[2] } == ["up", "degraded"])
            #expect(paths.rows.map { $0[3] } == ["wg-hq0", "wg-hq1"])
            #expect(paths.rows.allSatisfy { $0[0] == fixture.local.description && $0[1] == fixture.east.description })

            // A write while sqlite3 is reading afterwards: the newest row must show first.
            try fixture.store.insertMetrics([MetricsSample(
                path: fixture.paths[0], metrics: PathMetrics(latencyMs: 11, jitterMs: 1, lossPct: 0, score: 99),
                measuredAt: Fixture.now.addingTimeInterval(5))])
            let metrics = try query(database, SeedQueries.metrics)
            #expect(metrics.columns == ["path_id", "latency_ms", "jitter_ms", "packet_loss_pct", "bandwidth_mbps",
                                        "score", "measured_at"])
            #expect(metrics.rows.count == 3)
            #expect(metrics.rows.first?.last == "2025-10-09 14:35:47")
            #expect(metrics.rows[1] == ["\(fixture.paths[0])", "12.5", "2.1", "0.05", "987.3", "98.0", "2025-10-09 14:35:42"])

            let policies = try query(database, SeedQueries.policies)
            #expect(Array(policies.columns.prefix(3)) == ["id", "name", "priority"])
            #expect(policies.columns.contains("strategy") && policies.columns.contains("enabled"))
            #expect(policies.rows.map { $0[1] } == ["voip", "bulk", "default"])
            let voip = try #require(policies.rows.first)
            #expect(voip.contains("udp:5060-5061,16384-32767 tcp:5060-5061"))
            #expect(voip.contains("lowest-latency"))

            let best = try query(database, SeedQueries.bestPath)
            #expect(Array(best.columns.prefix(6)) == ["id", "src_site", "dst_site", "status", "wg_interface", "score"])
            #expect(best.rows.count == 1 && best.rows[0][0] == "\(fixture.paths[0])")

            // The store is still fully usable after sqlite3 read beside it.
            try fixture.store.addPolicy(Policy(name: "after", priority: 7, strategy: .bestScore))
            #expect(try query(database, SeedQueries.policies).rows.count == 4)
        }
    }
}

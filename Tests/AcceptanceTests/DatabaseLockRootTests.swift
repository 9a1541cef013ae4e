import Foundation
import Glibc
import Lab
import Testing

/// Issue 14: SQLite is off the failover path. Another process (sqlite3, as an operator's session would) holds
/// a write transaction on hq's database for 10 s; a cut of the path hq's VoIP uses, in the middle of it, is
/// measured like bench/failover (a 200 packets/s VoIP-class stream's longest silence at the receiving LAN
/// host), and the rows of the cut appear once the lock is released.
@Suite(.serialized, .enabled(if: acceptanceCanRun, "needs root, wireguard-go, sqlite3 and the built binaries"))
struct DatabaseLockRootTests {
    @Test(.timeLimit(.minutes(5)))
    func aCutWhileAnotherProcessHoldsTheDatabaseFailsOverInBudgetAndLosesNoRowRoot() throws {
        let lab = try AcceptanceLab(sites: 2)
        defer { lab.down() }
        try lab.waitForMesh()
        // VoIP takes the lowest latency: make it hq's isp-a, the one we cut.
        try lab.impair("hq", "isp-b", .init(delayMs: 10))
        try lab.wait("hq's VoIP on isp-a", timeout: 15) {
            (try lab.metric("hq", to: "east", isp: "isp-b", "latency_ms") ?? 0) > 15
        }
        sleep(2)  // the hold-down: a better path is adopted after 1 s of being better
        let database = lab.database("hq")
        func query(_ sql: String) throws -> String {
            try Subprocess.check(["sqlite3", "-cmd", ".timeout 2000", database, sql]).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let ispA = try query("SELECT id FROM paths WHERE local_label = 'isp-a'")

        // The lock: BEGIN IMMEDIATE in another process, held 10 s.
        let holderLog = "\(lab.controller.stateDirectory)/lock-holder.log"
        let lockedAt = Date()
        let holder = try Subprocess.spawn(["sqlite3", "-cmd", ".timeout 5000", database, "BEGIN IMMEDIATE;",
                                           ".shell sleep 10", "COMMIT;", "SELECT 'released';"], logPath: holderLog)
        defer { kill(holder, SIGKILL); _ = Subprocess.waitForExit(holder) }
        try lab.wait("sqlite3 to hold the write lock", timeout: 5) {
            let probe = try Subprocess.run(["sqlite3", database, "BEGIN IMMEDIATE; ROLLBACK;"])
            return !probe.succeeded && probe.stderr.contains("locked")
        }

        // The cut, ~4.5 s into the lock: the daemon has tried to write its 5 s metrics meanwhile.
        var statusDuringLock: String?
        let result = try lab.stream(from: "hq", to: "east", pps: 200, seconds: 9, after: 4) {
            try lab.impair("hq", "isp-a", .init(cut: true))
            usleep(1_500_000)
            // Readers keep working beside the lock, and still see the path up: nothing could be written.
            statusDuringLock = try lab.paths("hq", to: "east")["isp-a"]?["status"] as? String
        }
        print("cut during a 10 s write lock on hq's database: \(result)")
        #expect(((try? String(contentsOfFile: holderLog, encoding: .utf8)) ?? "").contains("released"),
                "the lock was held to the end")
        #expect(statusDuringLock == "up", "the lock held no write back: \(statusDuringLock ?? "no status")")
        #expect(result.blackoutMs <= 300, "\(result): the budget is p99 <= 300 ms (bench/results/failover.md)")

        // No row lost: the cut's failover event, the path's down status, and the metrics of the lock's 10 s.
        let since = Int(lockedAt.timeIntervalSince1970)
        try lab.wait("the rows of the cut in hq's database", timeout: 10) {
            try query("""
                SELECT count(*) FROM failover_events WHERE policy = 'voip' AND from_path = \(ispA)
                AND time >= datetime(\(since), 'unixepoch')
                """) != "0"
                && query("SELECT status FROM paths WHERE id = \(ispA)") == "down"
        }
        let samples = try query("""
            SELECT count(*) FROM path_metrics WHERE measured_at >= datetime(\(since), 'unixepoch')
            AND measured_at < datetime(\(since + 10), 'unixepoch')
            """)
        #expect((Int(samples) ?? 0) >= 4, "two paths' metrics every 5 s through the lock: \(samples) rows")
    }
}

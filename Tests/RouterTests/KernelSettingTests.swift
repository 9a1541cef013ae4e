import Foundation
import Testing
@testable import Router

/// The journal that lets a restart after kill -9 restore ip_forward to what it was before the dead run.
@Suite struct KernelSettingTests {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pt-ks-\(UUID().uuidString)").path

    func withFiles(_ body: (String, String) throws -> Void) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try body(directory + "/ip_forward", directory + "/site.db.ip-forward")
    }

    func read(_ path: String) -> String? {
        (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func aCleanRunRecordsThenRestoresAndDropsTheJournal() throws {
        try withFiles { setting, journal in
            try "0\n".write(toFile: setting, atomically: true, encoding: .utf8)
            let changed = try #require(try KernelSetting.set(setting, to: "1", journal: journal))
            #expect(read(setting) == "1" && read(journal) == "0")
            changed.restore()
            #expect(read(setting) == "0")
            #expect(!FileManager.default.fileExists(atPath: journal))
        }
    }

    @Test func aRestartAfterACrashRestoresTheValueFromBeforeTheCrash() throws {
        try withFiles { setting, journal in
            try "0\n".write(toFile: setting, atomically: true, encoding: .utf8)
            _ = try KernelSetting.set(setting, to: "1", journal: journal)
            // SIGKILL: no restore. The next run finds "1", but the journal says "0".
            let next = try #require(try KernelSetting.set(setting, to: "1", journal: journal))
            #expect(next.previous == "0")
            next.restore()
            #expect(read(setting) == "0" && !FileManager.default.fileExists(atPath: journal))
        }
    }

    @Test func alreadyOnWithoutAJournalIsLeftAlone() throws {
        try withFiles { setting, journal in
            try "1\n".write(toFile: setting, atomically: true, encoding: .utf8)
            #expect(try KernelSetting.set(setting, to: "1", journal: journal) == nil)
            #expect(!FileManager.default.fileExists(atPath: journal))
            #expect(read(setting) == "1")
        }
    }
}

/// Which leftover interfaces a restart removes: only names of our scheme beyond the configured uplinks.
@Suite struct StaleTunnelTests {
    @Test func namesOfOurSchemeOnly() {
        #expect(StaleTunnels.uplinkIndex(of: "wg-hq0", prefix: "wg-hq") == 0)
        #expect(StaleTunnels.uplinkIndex(of: "wg-hq12", prefix: "wg-hq") == 12)
        #expect(StaleTunnels.uplinkIndex(of: "wg-hq1x3", prefix: "wg-hq") == 1)
        for name in ["wg-hq", "wg-hqx1", "wg-hq1x", "wg-hq1y2", "wg-hqa", "wg-east0", "eth0", "wg-hq٣"] {
            #expect(StaleTunnels.uplinkIndex(of: name, prefix: "wg-hq") == nil, "\(name)")
        }
        #expect(StaleTunnels.uplinkIndex(of: "x0", prefix: "") == nil)
    }

    @Test func staleAreThoseBeyondTheConfiguredUplinks() {
        let names = ["lo", "up0", "wg-hq0", "wg-hq1", "wg-hq2x0", "wg-hq0x1", "wg-hqa"]
        #expect(StaleTunnels.stale(names, prefix: "wg-hq", uplinkCount: 1) == ["wg-hq1", "wg-hq2x0"])
        #expect(StaleTunnels.stale(names, prefix: "wg-hq", uplinkCount: 3).isEmpty)
    }
}

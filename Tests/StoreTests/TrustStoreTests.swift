import Foundation
import Model
import Testing
@testable import Store

/// Issue 22's status: refused prefixes and the local certificate, as `status` and `status --json` show them.
struct TrustStoreTests {
    @Test func conflictsAndTheCertificateAppearInStatusAndKeepTheirSince() throws {
        try withTemporaryDirectory { dir in
            let store = try Store.open(path: dir + "/hq.db")
            _ = try store.ensureLocalSite(name: "east")
            let t0 = Date(timeIntervalSince1970: 1_700_000_000)
            let conflict = ConflictRecord(siteID: "00000000-0000-4000-8000-000000000009", siteName: "branch-x",
                                          prefix: "10.1.0.0/25", kind: "lan", heldPrefix: "10.1.0.0/24",
                                          holderID: "00000000-0000-4000-8000-000000000001", holderName: "hq", since: t0)
            try store.replaceConflicts([conflict])
            // Rewritten later with the conflict still there: it keeps its first time.
            var again = conflict
            again.since = "2030-01-01 00:00:00"
            try store.replaceConflicts([again])
            #expect(try store.conflicts().map(\.since) == [conflict.since])

            let now = Date(timeIntervalSince1970: 1_700_000_000 + 86_400)
            try store.setLocalCertificate(CertificateRecord(serial: "0102030405060708", notBefore: t0,
                                                            notAfter: now.addingTimeInterval(20 * 86_400 + 60), issuer: "b4b7e4b5abbe6fd9"))
            let snapshot = try store.statusSnapshot(now: now)
            #expect(snapshot.conflicts == [conflict])
            #expect(snapshot.certificate?.daysLeft == 20)
            #expect(snapshot.certificate?.expiresSoon == true)
            let report = snapshot.report()
            #expect(report.contains("refused 10.1.0.0/25 of branch-x: overlaps 10.1.0.0/24 held by hq"))
            #expect(report.contains("Certificate: serial 0102030405060708") && report.contains("20 days left") && report.contains("RENEW SOON"))
            let json = snapshot.json()
            #expect(json.contains("\"holder_name\" : \"hq\"") && json.contains("\"days_left\" : 20"))
            #expect(try StatusSnapshot.decode(json: Data(json.utf8)) == snapshot)

            // Resolved and no certificate: both keys are omitted.
            try store.replaceConflicts([])
            try store.setLocalCertificate(nil)
            let clean = try store.statusSnapshot(now: now).json()
            #expect(!clean.contains("conflicts") && !clean.contains("certificate"))
        }
    }
}

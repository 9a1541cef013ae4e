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

/// Issue 13's status: the local site's uplinks, and for one other sites see behind NAT the public mapping it
/// announces and who observed it, as `status` and `status --json` show them.
struct LocalEndpointStoreTests {
    @Test func theLocalEndpointsAndTheirPublicMappingsAppearInStatus() throws {
        try withTemporaryDirectory { dir in
            let store = try Store.open(path: dir + "/east.db")
            _ = try store.ensureLocalSite(name: "east")
            let natted = LocalEndpoint(endpoint: Endpoint(label: "isp-b", address: SocketAddress4("172.18.2.2:51830")!),
                                       publicEndpoint: SocketAddress4("100.66.2.2:51830")!, observedBy: ["hq", "west"])
            let open = LocalEndpoint(endpoint: Endpoint(label: "isp-a", address: SocketAddress4("100.65.2.2:51820")!))
            try store.replaceLocalEndpoints([open, natted])
            let snapshot = try store.statusSnapshot()
            let endpoints = try #require(snapshot.localSite?.endpoints)
            #expect(endpoints.map(\.label) == ["isp-a", "isp-b"])
            #expect(endpoints[0].publicEndpoint == nil && endpoints[0].observedBy == nil)
            #expect(endpoints[1].publicEndpoint == "100.66.2.2:51830" && endpoints[1].observedBy == ["hq", "west"])
            #expect(snapshot.report().contains(
                "- Endpoint: 172.18.2.2:51830 (isp-b), behind NAT: announced as 100.66.2.2:51830 (seen by hq, west)"))
            let json = snapshot.json()
            #expect(json.contains("\"public_endpoint\" : \"100.66.2.2:51830\""))
            #expect(try StatusSnapshot.decode(json: Data(json.utf8)) == snapshot)
            // The mapping gone (no observer repeats it): the row says so.
            try store.replaceLocalEndpoints([open, LocalEndpoint(endpoint: natted.endpoint)])
            #expect(try store.statusSnapshot().localSite?.endpoints[1].publicEndpoint == nil)
            #expect(!(try store.statusSnapshot().json()).contains("public_endpoint"))
        }
    }
}

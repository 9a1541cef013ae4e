import Foundation
import Model
import Testing
import WireGuard
@testable import Mesh

struct PeerTableTests {
    let local = SiteID()
    let t0 = Date(timeIntervalSince1970: 1_700_000_000)

    func announcement(_ id: SiteID, counter: UInt64, at time: Date, key: UInt8 = 1, port: UInt16 = 51830) -> Announcement {
        Announcement(siteID: id, name: "site", publicKey: WireGuardKey(bytes: [UInt8](repeating: key, count: 32))!,
                     overlay: IPv4Address(10, 99, 0, key),
                     endpoints: [Endpoint(label: "wan", address: SocketAddress4(IPv4Address(192, 0, 2, key), port: port))],
                     counter: counter, timestampMilliseconds: UInt64(time.timeIntervalSince1970 * 1000))
    }

    @Test func appearRefreshChangeExpireReappear() throws {
        var table = PeerTable(localSiteID: local)
        let remote = SiteID()
        let first = announcement(remote, counter: 1, at: t0)
        #expect(try table.accept(first, now: t0) == [.siteAppeared(first)])
        #expect(try table.accept(announcement(remote, counter: 2, at: t0 + 1), now: t0 + 1) == [])
        let moved = announcement(remote, counter: 3, at: t0 + 2, port: 51900)
        let events = try table.accept(moved, now: t0 + 2)
        #expect(events == [.siteChanged(old: announcement(remote, counter: 2, at: t0 + 1), new: moved)])
        #expect(table.expire(now: t0 + 4.9) == [])
        #expect(table.nextExpiry == t0 + 5)
        #expect(table.expire(now: t0 + 5.1) == [.siteExpired(moved)])
        #expect(table.sites.isEmpty)
        let back = announcement(remote, counter: 10, at: t0 + 20)
        #expect(try table.accept(back, now: t0 + 20) == [.siteAppeared(back)])
    }

    @Test func restoredSitesAppearExpireUnlessHeardAndTakeTheirNextAnnouncement() throws {
        var table = PeerTable(localSiteID: local, localPublicKey: WireGuardKey(bytes: [UInt8](repeating: 9, count: 32))!)
        let (quiet, alive, known) = (SiteID(), SiteID(), SiteID())
        let knownAnnouncement = announcement(known, counter: 7, at: t0, key: 3)
        _ = try table.accept(knownAnnouncement, now: t0)
        let events = table.restore([
            announcement(quiet, counter: 0, at: t0, key: 1).site,
            announcement(alive, counter: 0, at: t0, key: 2).site,
            announcement(known, counter: 0, at: t0, key: 3, port: 1).site,   // already known: kept as heard
            announcement(local, counter: 0, at: t0, key: 4).site,            // ourselves
            announcement(SiteID(), counter: 0, at: t0, key: 2).site,         // another site's key
            announcement(SiteID(), counter: 0, at: t0, key: 9).site,         // our key
        ], now: t0 + 1)
        #expect(events.map { (e: MeshEvent) -> SiteID? in if case .siteAppeared(let a) = e { a.siteID } else { nil } } == [quiet, alive])
        #expect(table.heardAnnouncements == [knownAnnouncement])
        #expect(table.sites[known]?.announcement == knownAnnouncement)
        // The restored site's next announcement is accepted whatever its counter, with no event: nothing changed.
        #expect(try table.accept(announcement(alive, counter: 1, at: t0 + 2, key: 2), now: t0 + 2) == [])
        #expect(table.heardAnnouncements.map(\.siteID).sorted() == [alive, known].sorted())
        // Not heard within the expiry (3 s): gone, like any silent site.
        #expect(table.expire(now: t0 + 4.5).map { (e: MeshEvent) -> SiteID? in if case .siteExpired(let a) = e { a.siteID } else { nil } } == [known, quiet])
        #expect(table.sites.keys.sorted() == [alive])
    }

    @Test func replayedAndOldCountersAreRefusedEvenAfterExpiry() throws {
        var table = PeerTable(localSiteID: local)
        let remote = SiteID()
        _ = try table.accept(announcement(remote, counter: 5, at: t0), now: t0)
        #expect(throws: AnnouncementRejection.duplicate) { try table.accept(announcement(remote, counter: 5, at: t0), now: t0) }
        #expect(throws: AnnouncementRejection.replayed) { try table.accept(announcement(remote, counter: 4, at: t0), now: t0) }
        _ = table.expire(now: t0 + 10)
        #expect(throws: AnnouncementRejection.duplicate) {
            try table.accept(announcement(remote, counter: 5, at: t0 + 10), now: t0 + 10)
        }
        #expect(throws: AnnouncementRejection.replayed) {
            try table.accept(announcement(remote, counter: 3, at: t0 + 10), now: t0 + 10)
        }
    }

    @Test func timestampsOutsideTheWindowAreStale() throws {
        var table = PeerTable(localSiteID: local, settings: .init(timestampWindow: 30))
        let remote = SiteID()
        #expect(throws: AnnouncementRejection.stale) { try table.accept(announcement(remote, counter: 1, at: t0 - 31), now: t0) }
        #expect(throws: AnnouncementRejection.stale) { try table.accept(announcement(remote, counter: 1, at: t0 + 31), now: t0) }
        #expect(try table.accept(announcement(remote, counter: 1, at: t0 + 29), now: t0).count == 1)
    }

    @Test func ownAnnouncementsAndOwnKeyAreRefused() {
        let ownKey = WireGuardKey(bytes: [UInt8](repeating: 9, count: 32))!
        var table = PeerTable(localSiteID: local, localPublicKey: ownKey)
        #expect(throws: AnnouncementRejection.fromSelf) { try table.accept(announcement(local, counter: 1, at: t0), now: t0) }
        #expect(throws: AnnouncementRejection.keyConflict) { try table.accept(announcement(SiteID(), counter: 1, at: t0, key: 9), now: t0) }
    }

    @Test func anotherKeyForAnActiveIDIsAConflictUntilItExpires() throws {
        var table = PeerTable(localSiteID: local)
        let remote = SiteID()
        _ = try table.accept(announcement(remote, counter: 1, at: t0, key: 1), now: t0)
        #expect(throws: AnnouncementRejection.idConflict) { try table.accept(announcement(remote, counter: 2, at: t0, key: 2), now: t0) }
        // The conflicting announcement did not consume the counter.
        #expect(try table.accept(announcement(remote, counter: 2, at: t0 + 1, key: 1), now: t0 + 1) == [])
        // A second site claiming the same key is refused too.
        #expect(throws: AnnouncementRejection.keyConflict) { try table.accept(announcement(SiteID(), counter: 1, at: t0, key: 1), now: t0) }
        // After expiry, a site that regenerated its key is accepted.
        _ = table.expire(now: t0 + 10)
        let rekeyed = announcement(remote, counter: 3, at: t0 + 10, key: 2)
        #expect(try table.accept(rekeyed, now: t0 + 10) == [.siteAppeared(rekeyed)])
    }

    @Test func tableIsBounded() throws {
        var table = PeerTable(localSiteID: local, settings: .init(maxSites: 2, maxReplayEntries: 3))
        for key in UInt8(1)...2 { _ = try table.accept(announcement(SiteID(), counter: 1, at: t0, key: key), now: t0) }
        #expect(throws: AnnouncementRejection.tableFull) { try table.accept(announcement(SiteID(), counter: 1, at: t0, key: 3), now: t0) }
        _ = table.expire(now: t0 + 10)
        for key in UInt8(4)...5 { _ = try table.accept(announcement(SiteID(), counter: 1, at: t0 + 10, key: key), now: t0 + 10) }
        #expect(table.sites.count == 2)
    }
}

extension PeerTableTests {
    @Test func aLateSecondCopyIsADuplicateNotAReplay() throws {
        var table = PeerTable(localSiteID: local)
        let remote = SiteID()
        _ = try table.accept(announcement(remote, counter: 10, at: t0), now: t0)
        _ = try table.accept(announcement(remote, counter: 11, at: t0), now: t0)  // overtook the copy of 10 on uplink 2
        #expect(throws: AnnouncementRejection.duplicate) { try table.accept(announcement(remote, counter: 10, at: t0), now: t0) }
        #expect(throws: AnnouncementRejection.replayed) { try table.accept(announcement(remote, counter: 9, at: t0), now: t0) }
    }
}

struct PeerAddressTests {
    @Test func parsesLiteralsAndResolvesNames() throws {
        #expect(try DiscoverySettings.resolvePeer("192.0.2.7:51821") == SocketAddress4("192.0.2.7:51821"))
        #expect(try DiscoverySettings.resolvePeer("localhost:51821") == SocketAddress4("127.0.0.1:51821"))
        for bad in ["192.0.2.7", "host:", ":51821", "host:0", "host:70000", "host:x"] {
            #expect(throws: PeerAddressError.malformed(bad)) { try DiscoverySettings.resolvePeer(bad) }
        }
        #expect(throws: PeerAddressError.self) { try DiscoverySettings.resolvePeer("no-such-host.invalid:51821") }
    }
}

struct UplinkAddressesTests {
    @Test func readsLoopbackAndSkipsUnknownInterfaces() {
        let found = UplinkAddresses.current(for: ["lo", "ptnonexistent0"])
        #expect(found["lo"] == IPv4Address(127, 0, 0, 1))
        #expect(found["ptnonexistent0"] == nil)
    }
}

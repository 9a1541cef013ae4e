import Foundation
import Model
import Testing
import WireGuard
@testable import Mesh

struct PrefixClaimsTests {
    let t0 = Date(timeIntervalSince1970: 1_700_000_000)

    func site(_ name: String, _ n: UInt8, lan: [String], overlay: IPv4Address? = nil) -> Announcement {
        Announcement(siteID: SiteID(UUID(uuidString: "00000000-0000-4000-8000-0000000000\(String(format: "%02x", n))")!),
                     name: name, publicKey: WireGuardKey(bytes: [UInt8](repeating: n, count: 32))!,
                     overlay: overlay ?? IPv4Address(10, 99, 0, n), lanPrefixes: lan.map { IPv4Prefix($0)! },
                     counter: 1, timestampMilliseconds: UInt64(t0.timeIntervalSince1970 * 1000))
    }

    func local(_ lan: [String]) -> SiteDescription {
        SiteDescription(siteID: SiteID(), name: "east", publicKey: WireGuardKey(bytes: [UInt8](repeating: 0xee, count: 32))!,
                        overlay: IPv4Address(10, 99, 0, 200), lanPrefixes: lan.map { IPv4Prefix($0)! })
    }

    /// Issue 22's case at east: hq holds 10.1.0.0/24, a later branch announces 10.1.0.0/25. Only the branch's
    /// prefix is refused; hq keeps its prefix and the branch keeps the rest.
    @Test func aLaterOverlappingPrefixIsRefusedAndNothingElse() {
        let hq = site("hq", 1, lan: ["10.1.0.0/24"])
        let branch = site("branch-x", 9, lan: ["10.1.0.0/25", "10.9.0.0/24"])
        let since: [SiteID: Date] = [hq.siteID: t0, branch.siteID: t0 + 30]
        let resolution = PrefixClaims.resolve(local: local(["10.2.0.0/24"]), remotes: [hq, branch]) { site, _ in since[site]! }
        #expect(resolution.sites.map(\.name) == ["hq", "branch-x"])
        #expect(resolution.sites[0].lanPrefixes == [IPv4Prefix("10.1.0.0/24")!])
        #expect(resolution.sites[1].lanPrefixes == [IPv4Prefix("10.9.0.0/24")!])
        #expect(resolution.conflicts.count == 1)
        #expect(resolution.conflicts[0].prefix == IPv4Prefix("10.1.0.0/25")! && resolution.conflicts[0].holder == hq.siteID)
        // The same at hq: its own LAN holds from the beginning, whatever the branch's site id.
        let atHQ = PrefixClaims.resolve(local: local(["10.1.0.0/24"]), remotes: [branch]) { _, _ in t0 }
        #expect(atHQ.sites[0].lanPrefixes == [IPv4Prefix("10.9.0.0/24")!])
        #expect(atHQ.conflicts.first?.holder == nil)
        // The widest newcomer is refused as well (it contains a held prefix), and so is an identical one.
        let wide = site("wide", 5, lan: ["10.0.0.0/8", "10.1.0.0/24"])
        let both = PrefixClaims.resolve(local: local([]), remotes: [hq, wide]) { site, _ in site == hq.siteID ? t0 : t0 + 1 }
        #expect(both.sites.first { $0.name == "wide" }?.lanPrefixes == [])
        #expect(both.conflicts.count == 2)
        // The resolved sites never overlap: what steering and WireGuard need.
        let all = resolution.sites.flatMap { [IPv4Prefix($0.overlay, length: 32)] + $0.lanPrefixes }
        for (i, a) in all.enumerated() { for b in all[(i + 1)...] { #expect(!a.overlaps(b)) } }
    }

    /// A site whose overlay address lies in held space is refused whole, and what it claimed is released.
    @Test func anOverlayConflictRefusesTheSiteAndReleasesItsPrefixes() {
        let hq = site("hq", 1, lan: ["10.1.0.0/24"])
        let squatter = site("squatter", 2, lan: ["10.50.0.0/24"], overlay: IPv4Address(10, 1, 0, 7))
        let later = site("later", 3, lan: ["10.50.0.0/25"])
        let since: [SiteID: Date] = [hq.siteID: t0, squatter.siteID: t0 + 1, later.siteID: t0 + 2]
        let resolution = PrefixClaims.resolve(local: local([]), remotes: [hq, squatter, later]) { site, _ in since[site]! }
        #expect(resolution.sites.map(\.name) == ["hq", "later"])
        #expect(resolution.sites[1].lanPrefixes == [IPv4Prefix("10.50.0.0/25")!])
        #expect(resolution.conflicts.map(\.kind) == [.overlay])
    }

    /// In the table: the first to announce holds; a holder that expires and comes back still holds.
    @Test func thePeerTableDatesClaimsAndKeepsThemAcrossExpiry() throws {
        var table = PeerTable(localSiteID: SiteID())
        var hq = site("hq", 1, lan: ["10.1.0.0/24"])
        var branch = site("branch-x", 0, lan: ["10.1.0.0/25"])  // the smaller id: age decides, not the id
        _ = try table.accept(hq, now: t0)
        _ = try table.accept(branch, now: t0 + 1)
        let east = local(["10.2.0.0/24"])
        #expect(table.resolution(local: east).sites.first { $0.name == "branch-x" }?.lanPrefixes == [])
        _ = table.expire(now: t0 + 3.5)  // hq silent (cut), branch-x heard at t0 + 1 too: both expire
        branch.counter += 1
        _ = try table.accept(branch, now: t0 + 4)
        #expect(table.resolution(local: east).conflicts.isEmpty)
        hq.counter += 1
        _ = try table.accept(hq, now: t0 + 5)
        let back = table.resolution(local: east)
        #expect(back.sites.first { $0.name == "hq" }?.lanPrefixes == [IPv4Prefix("10.1.0.0/24")!])
        #expect(back.conflicts.map(\.siteName) == ["branch-x"])
    }

    @Test func trieFindsContainingAndContainedPrefixes() {
        var trie = PrefixTrie()
        trie.insert(IPv4Prefix("10.1.0.0/24")!, owner: 0)
        trie.insert(IPv4Prefix("192.168.0.0/16")!, owner: 1)
        #expect(trie.overlapping(IPv4Prefix("10.1.0.128/25")!) == 0)
        #expect(trie.overlapping(IPv4Prefix("10.0.0.0/8")!) == 0)
        #expect(trie.overlapping(IPv4Prefix("0.0.0.0/0")!) != nil)
        #expect(trie.overlapping(IPv4Prefix("10.1.1.0/24")!) == nil)
        #expect(trie.overlapping(IPv4Prefix("192.168.3.4/32")!) == 1)
        #expect(trie.overlapping(IPv4Prefix("172.16.0.0/12")!) == nil)
    }
}

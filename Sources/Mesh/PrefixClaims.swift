import Foundation
import Model

/// One announced prefix refused because another site (or this one) held an overlapping one first.
public struct PrefixConflict: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable {
        /// A LAN prefix: only this prefix is refused, the site keeps the rest.
        case lan
        /// The overlay address (as a /32): the whole site is refused, it cannot be reached without it.
        case overlay
    }

    public var kind: Kind
    public var prefix: IPv4Prefix
    public var site: SiteID
    public var siteName: String
    /// The holder's prefix (what it announced first), its id and name; nil id = this site.
    public var heldPrefix: IPv4Prefix
    public var holder: SiteID?
    public var holderName: String

    public var description: String {
        let refused = kind == .overlay ? "overlay \(prefix) (site refused)" : "\(prefix)"
        return "\(refused) of \(siteName) (\(site)) overlaps \(heldPrefix) held by \(holderName)"
            + (holder.map { " (\($0))" } ?? " (this site)")
    }
}

/// Who holds which address space. Every site's LAN prefixes and overlay address (/32) are claims, dated by
/// when this site first heard them; this site's own LAN prefixes and overlay hold from the beginning. Claims
/// are taken in order of age (then site id): a claim that overlaps one already taken by another site (or an
/// earlier one of the same site) is refused. A site whose overlay is refused is left out entirely, and its
/// other claims are released (repeated until nothing changes). Pure: the same claims give the same answer.
///
/// So what was working keeps working: a newcomer (a typo, a stolen router) cannot take a prefix or overlay
/// that is in use, and every other prefix keeps being steered. Cost: O(claims x 32) per pass.
public enum PrefixClaims {
    public struct Claim: Hashable, Sendable {
        public var prefix: IPv4Prefix
        public var kind: PrefixConflict.Kind
        public var since: Date

        public init(prefix: IPv4Prefix, kind: PrefixConflict.Kind, since: Date) {
            self.prefix = prefix
            self.kind = kind
            self.since = since
        }
    }

    public struct Resolution: Hashable, Sendable {
        /// The remote sites as they may be used: refused LAN prefixes removed, sites with a refused overlay
        /// left out. Sorted by site id.
        public var sites: [Announcement]
        public var conflicts: [PrefixConflict]
    }

    /// `local` holds its overlay and LAN prefixes first; `remotes` claim theirs as of `since(site, prefix)`.
    public static func resolve(local: SiteDescription, remotes: [Announcement],
                               since: (SiteID, IPv4Prefix) -> Date) -> Resolution {
        struct Entry { var claim: Claim; var site: SiteID?; var name: String }
        var entries: [Entry] = [Entry(claim: Claim(prefix: IPv4Prefix(local.overlay, length: 32), kind: .overlay,
                                                   since: .distantPast), site: nil, name: local.name)]
        entries += local.lanPrefixes.map {
            Entry(claim: Claim(prefix: $0, kind: .lan, since: .distantPast), site: nil, name: local.name)
        }
        for remote in remotes {
            let overlay = IPv4Prefix(remote.overlay, length: 32)
            entries.append(Entry(claim: Claim(prefix: overlay, kind: .overlay, since: since(remote.siteID, overlay)),
                                 site: remote.siteID, name: remote.name))
            entries += remote.lanPrefixes.map {
                Entry(claim: Claim(prefix: $0, kind: .lan, since: since(remote.siteID, $0)), site: remote.siteID,
                      name: remote.name)
            }
        }
        // Oldest first; ties: this site, then by site id, overlay before LAN, then by prefix.
        entries.sort { a, b in
            if a.claim.since != b.claim.since { return a.claim.since < b.claim.since }
            if a.site != b.site {
                guard let x = a.site else { return true }
                guard let y = b.site else { return false }
                return x < y
            }
            if a.claim.kind != b.claim.kind { return a.claim.kind == .overlay }
            return a.claim.prefix < b.claim.prefix
        }

        var excluded = Set<SiteID>()
        var overlaysRefused: [PrefixConflict] = []
        var refused: [PrefixConflict] = []
        var keptBySite: [SiteID: [IPv4Prefix]] = [:]
        // Each pass can only exclude more sites; at most one pass per site plus one.
        for _ in 0...remotes.count {
            var trie = PrefixTrie()
            refused = []
            keptBySite = [:]
            var newlyExcluded = Set<SiteID>()
            for (index, entry) in entries.enumerated() {
                if let site = entry.site, excluded.contains(site) { continue }
                if let holder = trie.overlapping(entry.claim.prefix), entry.site != nil {
                    let held = entries[holder]
                    refused.append(PrefixConflict(kind: entry.claim.kind, prefix: entry.claim.prefix, site: entry.site!,
                                                  siteName: entry.name, heldPrefix: held.claim.prefix,
                                                  holder: held.site, holderName: held.name))
                    if entry.claim.kind == .overlay {
                        newlyExcluded.insert(entry.site!)
                        overlaysRefused.append(refused.last!)
                    }
                    continue
                }
                trie.insert(entry.claim.prefix, owner: index)
                if let site = entry.site, entry.claim.kind == .lan { keptBySite[site, default: []].append(entry.claim.prefix) }
            }
            if newlyExcluded.isSubset(of: excluded) { break }
            excluded.formUnion(newlyExcluded)
        }
        // A site left out in an earlier pass is not in the last one: report why it is out.
        var seen = Set(refused)
        for conflict in overlaysRefused where excluded.contains(conflict.site) && !refused.contains(where: {
            $0.site == conflict.site && $0.kind == .overlay
        }) && seen.insert(conflict).inserted {
            refused.append(conflict)
        }
        let sites = remotes.filter { !excluded.contains($0.siteID) }.map { remote in
            var kept = remote
            let allowed = Set(keptBySite[remote.siteID] ?? [])
            kept.lanPrefixes = remote.lanPrefixes.filter { allowed.contains($0) }
            return kept
        }.sorted { $0.siteID < $1.siteID }
        refused.sort { ($0.siteName, $0.prefix) < ($1.siteName, $1.prefix) }
        return Resolution(sites: sites, conflicts: refused)
    }
}

/// A binary trie of disjoint prefixes: insert, and find one that overlaps a given prefix, in O(32).
struct PrefixTrie {
    private struct Node {
        var children: (Int32, Int32) = (-1, -1)
        /// The entry whose prefix ends here.
        var owner: Int32 = -1
        /// Some entry ends in this node's subtree (here or below).
        var occupied = false
    }

    private var nodes = [Node()]

    /// An owner whose prefix contains `prefix`, or lies within it; nil when none overlaps.
    func overlapping(_ prefix: IPv4Prefix) -> Int? {
        var node = 0
        let bits = prefix.network.value
        for depth in 0..<Int(prefix.length) {
            if nodes[node].owner >= 0 { return Int(nodes[node].owner) }
            let bit = (bits >> (31 - UInt32(depth))) & 1
            let next = bit == 0 ? nodes[node].children.0 : nodes[node].children.1
            guard next >= 0 else { return nil }
            node = Int(next)
        }
        // At the prefix's own node: it or anything below it overlaps.
        guard nodes[node].occupied else { return nil }
        while nodes[node].owner < 0 {
            let (left, right) = nodes[node].children
            node = Int(left >= 0 && nodes[Int(left)].occupied ? left : right)
        }
        return Int(nodes[node].owner)
    }

    mutating func insert(_ prefix: IPv4Prefix, owner: Int) {
        var node = 0
        nodes[0].occupied = true
        let bits = prefix.network.value
        for depth in 0..<Int(prefix.length) {
            let bit = (bits >> (31 - UInt32(depth))) & 1
            var next = bit == 0 ? nodes[node].children.0 : nodes[node].children.1
            if next < 0 {
                next = Int32(nodes.count)
                nodes.append(Node())
                if bit == 0 { nodes[node].children.0 = next } else { nodes[node].children.1 = next }
            }
            node = Int(next)
            nodes[node].occupied = true
        }
        nodes[node].owner = Int32(owner)
    }
}

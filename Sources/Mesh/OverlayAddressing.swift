import Crypto
import Foundation
import Model

/// Chooses a site's overlay address from the pool (default 10.99.0.0/16) without coordination.
///
/// Candidate k of a site is SHA-256(site id bytes || k) reduced into the pool's usable hosts (network and
/// broadcast excluded). A site takes its first candidate that no known site with a *smaller* site id
/// announces; a site with a larger id that announces the same address moves on when it hears us. Every
/// site applies the same rule, so all converge on distinct addresses with no negotiation, and a site keeps
/// its address across restarts as long as the set of smaller-id claimants does not change.
public enum OverlayAddressing {
    public static let defaultPool = Conventions.overlayPool

    public static func candidate(for id: SiteID, in pool: IPv4Prefix, attempt: UInt32) -> IPv4Address {
        precondition(pool.length <= 30, "an overlay pool needs at least two usable addresses")
        var input = withUnsafeBytes(of: id.uuid.uuid) { Array($0) }
        input += withUnsafeBytes(of: attempt.bigEndian) { Array($0) }
        let digest = Array(SHA256.hash(data: input))
        let value = digest.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let usable = pool.size - 2
        return IPv4Address(pool.network.value + 1 + UInt32(value % usable))
    }

    /// The address for `id`, given what the other known sites announce.
    public static func choose(for id: SiteID, in pool: IPv4Prefix = defaultPool,
                              known: [SiteID: IPv4Address]) -> IPv4Address {
        let claimedBySmaller = Set(known.filter { $0.key < id }.map(\.value))
        for attempt in UInt32(0)..<1024 {
            let address = candidate(for: id, in: pool, attempt: attempt)
            if !claimedBySmaller.contains(address) { return address }
        }
        // A nearly full (or tiny) pool: the first free host in order, still deterministic. A full pool
        // leaves the collision in place rather than looping forever.
        for offset in UInt32(1)..<UInt32(pool.size - 1) {
            let address = IPv4Address(pool.network.value + offset)
            if !claimedBySmaller.contains(address) { return address }
        }
        return candidate(for: id, in: pool, attempt: 0)
    }
}

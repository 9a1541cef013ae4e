import Foundation
import Model

/// How many signature checks received datagrams may cost: a token bucket per source address and one for all
/// sources together. A flood of badly signed announcements from one source gets `perSource` checks a second and
/// the rest are dropped unchecked (`rateLimited`), so it costs bounded CPU and the other sources keep their share.
/// A site sends one announcement per uplink and interval, plus its revocation list. A relay (a hub) forwards
/// one per site it relays, so a relayed datagram is counted per (relay address, site it claims to come
/// from): a hub relaying hundreds of sites gets each of them the same share as a site heard directly, and a
/// flood through one relay of one site's announcements is bounded like a flood from one address. The total
/// bucket bounds everything together. Pure (the clock is an input).
public struct SignatureBudget: Sendable {
    public struct Settings: Sendable, Equatable {
        public var perSource: Double
        public var perSourceBurst: Double
        public var total: Double
        public var totalBurst: Double
        /// Sources remembered at once; when full, all are forgotten (each starts again with a full burst).
        public var maxSources: Int

        public init(perSource: Double = 100, perSourceBurst: Double = 200, total: Double = 1000,
                    totalBurst: Double = 1000, maxSources: Int = 4096) {
            self.perSource = perSource
            self.perSourceBurst = perSourceBurst
            self.total = total
            self.totalBurst = totalBurst
            self.maxSources = maxSources
        }
    }

    private struct Bucket: Sendable {
        var tokens: Double
        var at: Double

        mutating func take(rate: Double, burst: Double, now: Double) -> Bool {
            tokens = min(burst, tokens + (now - at) * rate)
            at = now
            guard tokens >= 1 else { return false }
            tokens -= 1
            return true
        }
    }

    public let settings: Settings
    /// Who is counted: a source address, and for a relayed datagram the site it claims to come from.
    struct Key: Hashable, Sendable {
        var address: IPv4Address
        var relayedSite: SiteID?
    }

    private var sources: [Key: Bucket] = [:]
    private var all: Bucket

    public init(settings: Settings = Settings()) {
        self.settings = settings
        all = Bucket(tokens: settings.totalBurst, at: 0)
    }

    /// One signature check for a datagram from `source` at `now` (seconds on a monotonic clock): granted or
    /// not. `relayedSite`: the datagram came in a relay envelope and claims to be this site's.
    public mutating func take(source: IPv4Address, relayedSite: SiteID? = nil, now: Double) -> Bool {
        let key = Key(address: source, relayedSite: relayedSite)
        var bucket = sources[key] ?? Bucket(tokens: settings.perSourceBurst, at: now)
        let granted = bucket.take(rate: settings.perSource, burst: settings.perSourceBurst, now: now)
            && all.take(rate: settings.total, burst: settings.totalBurst, now: now)
        // Full (a spoofed flood): start over, O(1) amortized; the total bucket still bounds the cost.
        if sources[key] == nil, sources.count >= settings.maxSources { sources.removeAll(keepingCapacity: true) }
        sources[key] = bucket
        return granted
    }
}

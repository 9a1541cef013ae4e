import Foundation
import Model
import WireGuard

/// What a site tells the mesh about itself, once a second: who it is, its WireGuard key, its overlay address,
/// the LAN prefixes behind it and the endpoints (one per uplink) where its tunnels listen.
///
/// The wire form is documented in docs/MESH.md and produced only by `AnnouncementCodec`.
public struct Announcement: Hashable, Sendable {
    public var siteID: SiteID
    public var name: String
    public var publicKey: WireGuardKey
    public var overlay: IPv4Address
    public var lanPrefixes: [IPv4Prefix]
    public var endpoints: [Endpoint]
    /// Strictly increasing per site, across restarts (see `AnnouncementCounter`); receivers drop anything
    /// not newer than what they last accepted from that site.
    public var counter: UInt64
    /// When it was sent, in milliseconds since the Unix epoch; receivers drop it outside their time window.
    public var timestampMilliseconds: UInt64

    public init(siteID: SiteID, name: String, publicKey: WireGuardKey, overlay: IPv4Address,
                lanPrefixes: [IPv4Prefix] = [], endpoints: [Endpoint] = [], counter: UInt64,
                timestampMilliseconds: UInt64) {
        self.siteID = siteID
        self.name = name
        self.publicKey = publicKey
        self.overlay = overlay
        self.lanPrefixes = lanPrefixes
        self.endpoints = endpoints
        self.counter = counter
        self.timestampMilliseconds = timestampMilliseconds
    }

    public var timestamp: Date { Date(timeIntervalSince1970: Double(timestampMilliseconds) / 1000) }

    /// Same site description, ignoring counter and timestamp: what decides whether a site "changed".
    public func describesSameSite(as other: Announcement) -> Bool {
        siteID == other.siteID && name == other.name && publicKey == other.publicKey && overlay == other.overlay
            && lanPrefixes == other.lanPrefixes && endpoints == other.endpoints
    }
}

/// Produces the announcement counter: starts at the wall clock in microseconds and adds one per
/// announcement. At one announcement per second the counter falls behind the clock by a million per
/// second, so a restarted site always starts above every counter it sent before, without persisting state
/// (as long as the clock does not step back by more than the time it was down).
public struct AnnouncementCounter: Sendable {
    private var last: UInt64

    public init(now: Date = Date()) {
        last = UInt64(max(0, now.timeIntervalSince1970 * 1_000_000))
    }

    public mutating func next() -> UInt64 {
        last &+= 1
        return last
    }
}

/// Why an announcement was dropped. Every drop is counted by reason (`status` shows the counters).
public enum AnnouncementRejection: String, Error, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// Shorter than its header or than a length it declares.
    case truncated
    /// Longer than `AnnouncementCodec.maxDatagramSize`.
    case oversized
    /// Not our magic bytes: not a patronus announcement at all.
    case badMagic
    /// A format version this build does not speak.
    case badVersion
    /// Unknown flag bits set.
    case badFlags
    /// The header's length field disagrees with the datagram's size.
    case badLength
    /// Authenticated where we run insecure, or unauthenticated where we require a MAC.
    case authenticationMismatch
    /// The MAC does not verify: another mesh (another key) or tampering.
    case badMAC
    /// The body is not well formed: counts over the limits, bad names, trailing bytes, non-canonical prefixes.
    case malformed
    /// The timestamp is outside the accepted window around our clock.
    case stale
    /// The counter is not newer than the last one accepted from that site.
    case replayed
    /// Our own announcement (multicast loopback, or a peer that reflects it).
    case fromSelf
    /// An active site's id announced with a different WireGuard key.
    case idConflict
    /// Another active site's WireGuard key announced under a different id.
    case keyConflict
    /// The table holds the maximum number of sites.
    case tableFull

    public var description: String { rawValue }
}

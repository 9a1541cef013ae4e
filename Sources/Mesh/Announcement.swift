import Foundation
import Model
import WireGuard

/// Who a site is and where it can be reached: everything an announcement says except its freshness.
public struct SiteDescription: Hashable, Sendable {
    public var siteID: SiteID
    public var name: String
    public var publicKey: WireGuardKey
    public var overlay: IPv4Address
    public var lanPrefixes: [IPv4Prefix]
    /// One per uplink: the label and the address and port where that uplink's tunnel listens.
    public var endpoints: [Endpoint]
    /// The site forwards between other members' tunnels (`run --relay`; flags bit 2 of a version 2
    /// announcement): sites that cannot reach each other directly may send their traffic through it.
    public var relay: Bool

    public init(siteID: SiteID, name: String, publicKey: WireGuardKey, overlay: IPv4Address,
                lanPrefixes: [IPv4Prefix] = [], endpoints: [Endpoint] = [], relay: Bool = false) {
        self.siteID = siteID
        self.name = name
        self.publicKey = publicKey
        self.overlay = overlay
        self.lanPrefixes = lanPrefixes
        self.endpoints = endpoints
        self.relay = relay
    }
}

/// What a site tells the mesh about itself, once a second: its description plus a counter and a timestamp
/// that make every announcement fresh. The wire form is documented in docs/MESH.md and produced only by
/// `AnnouncementCodec`.
@dynamicMemberLookup
public struct Announcement: Hashable, Sendable {
    public var site: SiteDescription
    /// Strictly increasing per site, across restarts (see `AnnouncementCounter`); receivers drop anything
    /// not newer than what they last accepted from that site.
    public var counter: UInt64
    /// When it was sent, in milliseconds since the Unix epoch; receivers drop it outside their time window.
    public var timestampMilliseconds: UInt64
    /// The site's certificate, when the announcement was signed and the signature, the chain to a trusted CA,
    /// the validity window and the announced id, name, prefixes and overlay all checked out (nil otherwise).
    public var certificate: SiteCertificate?

    public init(site: SiteDescription, counter: UInt64, timestampMilliseconds: UInt64,
                certificate: SiteCertificate? = nil) {
        self.site = site
        self.counter = counter
        self.timestampMilliseconds = timestampMilliseconds
        self.certificate = certificate
    }

    public init(siteID: SiteID, name: String, publicKey: WireGuardKey, overlay: IPv4Address,
                lanPrefixes: [IPv4Prefix] = [], endpoints: [Endpoint] = [], counter: UInt64,
                timestampMilliseconds: UInt64) {
        self.init(site: SiteDescription(siteID: siteID, name: name, publicKey: publicKey, overlay: overlay,
                                        lanPrefixes: lanPrefixes, endpoints: endpoints),
                  counter: counter, timestampMilliseconds: timestampMilliseconds)
    }

    public subscript<T>(dynamicMember path: WritableKeyPath<SiteDescription, T>) -> T {
        get { site[keyPath: path] }
        set { site[keyPath: path] = newValue }
    }

    public var timestamp: Date { Date(timeIntervalSince1970: Double(timestampMilliseconds) / 1000) }
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
    /// The counter is older than the last one accepted from that site and not one of its recent ones.
    case replayed
    /// The same counter as the last accepted one: a second copy (one arrives per uplink on a shared
    /// segment, and per peer path) or a replay of the latest. Harmless; counted, never logged.
    case duplicate
    /// Our own announcement (multicast loopback, or a peer that reflects it).
    case fromSelf
    /// An active site's id announced with a different WireGuard key.
    case idConflict
    /// Another active site's WireGuard key announced under a different id.
    case keyConflict
    /// The table holds the maximum number of sites.
    case tableFull
    /// A relay envelope that is malformed, or that wraps another envelope (announcements are relayed once).
    case badRelay
    /// A message kind this build does not handle (v2 header byte 5).
    case badKind
    /// Unsigned, where this site requires certificates (`run --require-certificates`).
    case unsigned
    /// Signed under a certificate (or a revocation list) from a CA this site does not trust.
    case unknownCA
    /// The certificate's CA signature does not verify (forged or altered certificate).
    case badCertificate
    /// The certificate's validity window ended.
    case expired
    /// The certificate's validity window has not started.
    case notYetValid
    /// The certificate was revoked by a CA-signed revocation list.
    case revoked
    /// The announcement claims another id or name, a LAN prefix or an overlay address outside its certificate.
    case outsideCertificate
    /// The site's signature over the announcement does not verify (altered on the way, or forged).
    case badSignature
    /// Too many signature checks asked for by one source: dropped unchecked (a flood must not cost a
    /// signature check each).
    case rateLimited
    /// A revocation list not newer than the one we hold (the normal case: every site repeats its list).
    case staleRevocationList
    /// An endpoint observation that is not about us, or that did not come through a tunnel from its
    /// observer (its source is not the observer's overlay address).
    case badObservation

    public var description: String { rawValue }
}

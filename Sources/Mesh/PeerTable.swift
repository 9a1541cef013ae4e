import Foundation
import Model
import WireGuard

/// What changed in the set of known sites.
public enum MeshEvent: Hashable, Sendable {
    /// A site was heard for the first time, or again after it had expired.
    case siteAppeared(Announcement)
    /// An active site announced a different description (endpoints, prefixes, key after expiry, ...).
    case siteChanged(old: Announcement, new: Announcement)
    /// Nothing was heard from the site for the expiry time; its tunnels and paths should go.
    case siteExpired(Announcement)
    /// A revocation list revoked the site's certificate: its tunnels and paths go now, and it stays out.
    case siteRevoked(Announcement)
}

/// The sites this site knows, as a pure state machine: decoded announcements and the clock go in, events
/// come out. It owns the stateful checks: from ourselves, timestamp window, replay (counter), identity
/// conflicts and the size bound. No I/O; every input is a value, so it is tested without sockets.
///
/// Replay state (last counter per site id) survives a site's expiry, so recorded announcements replayed later
/// are still refused; it is bounded by `maxReplayEntries` (the oldest entry is forgotten first).
public struct PeerTable: Sendable {
    public struct Settings: Sendable, Equatable {
        /// Accepted distance between an announcement's timestamp and our clock, either way.
        public var timestampWindow: TimeInterval
        /// A site not heard from for this long expires (default: 3 announcement intervals of 1 s).
        public var expiry: TimeInterval
        public var maxSites: Int
        public var maxReplayEntries: Int

        public init(timestampWindow: TimeInterval = 60, expiry: TimeInterval = 3, maxSites: Int = 256,
                    maxReplayEntries: Int = 1024) {
            self.timestampWindow = timestampWindow
            self.expiry = expiry
            self.maxSites = maxSites
            self.maxReplayEntries = maxReplayEntries
        }
    }

    /// One known, active site.
    public struct Site: Hashable, Sendable {
        public var announcement: Announcement
        public var firstSeen: Date
        public var lastSeen: Date
        /// False for a site restored at start (`restore`) that has not announced itself since.
        public var heard = true
    }

    public let localSiteID: SiteID
    public let localPublicKey: WireGuardKey?
    public var settings: Settings
    public private(set) var sites: [SiteID: Site] = [:]
    private var lastCounters: [SiteID: (counter: UInt64, at: Date, recent: [UInt64])] = [:]
    /// When each site's prefixes (LAN prefixes and overlay /32) were first heard: the age that decides who holds
    /// an overlapping prefix (`PrefixClaims`). Kept after a site expires (bounded like the replay state), so a
    /// site that comes back after an outage still holds what it held before.
    private var claimedSince: [SiteID: [IPv4Prefix: Date]] = [:]
    /// The newest revocation list per CA (by key id), and every serial they revoke.
    public private(set) var revocationLists: [[UInt8]: RevocationList] = [:]
    /// Sites heard with a valid certificate (bounded like the replay state).
    private var certified: Set<SiteID> = []
    /// Accepted counters remembered per site to tell a late second copy (sent on another uplink, overtaken
    /// by a newer announcement) from a replay.
    static let recentCounters = 8

    public init(localSiteID: SiteID, localPublicKey: WireGuardKey? = nil, settings: Settings = Settings()) {
        self.localSiteID = localSiteID
        self.localPublicKey = localPublicKey
        self.settings = settings
    }

    /// The checks that need no signature: from ourselves, the time window, replay. `DiscoveryService` runs them
    /// before the (expensive) signature checks, so a copy or a replay costs no signature check.
    public func precheck(_ announcement: Announcement, now: Date) throws(AnnouncementRejection) {
        let id = announcement.siteID
        guard id != localSiteID else { throw .fromSelf }
        if let localPublicKey, announcement.publicKey == localPublicKey { throw .keyConflict }
        guard abs(announcement.timestamp.timeIntervalSince(now)) <= settings.timestampWindow else { throw .stale }
        if let last = lastCounters[id], announcement.counter <= last.counter {
            throw last.recent.contains(announcement.counter) ? .duplicate : .replayed
        }
    }

    /// Takes a decoded (authenticated) announcement received at `now`. Returns the events it causes (none for
    /// a plain refresh), or the reason it was refused; a refused announcement changes nothing.
    ///
    /// A certified site (the codec verified its certificate) may announce a new WireGuard key for its id at
    /// once: its identity signature binds the key (rotation). Without a certificate a key change for an
    /// active id is `idConflict` until that site expires.
    public mutating func accept(_ announcement: Announcement, now: Date) throws(AnnouncementRejection) -> [MeshEvent] {
        try precheck(announcement, now: now)
        let id = announcement.siteID
        if let certificate = announcement.certificate,
           revocationLists[certificate.issuer]?.serials.contains(certificate.serial) == true {
            throw .revoked
        }
        // Once a site spoke with a certificate, the shared key alone no longer speaks for it (migration mode).
        if announcement.certificate == nil, certified.contains(id) { throw .unsigned }
        let existing = sites[id]
        if let existing, existing.announcement.publicKey != announcement.publicKey, announcement.certificate == nil {
            throw .idConflict
        }
        if sites.values.contains(where: { $0.announcement.siteID != id && $0.announcement.publicKey == announcement.publicKey }) {
            throw .keyConflict
        }
        if existing == nil, sites.count >= settings.maxSites { throw .tableFull }

        rememberCounter(announcement.counter, for: id, at: now)
        rememberClaims(of: announcement.site, at: now)
        if announcement.certificate != nil { certified.insert(id) }
        guard let existing else {
            sites[id] = Site(announcement: announcement, firstSeen: now, lastSeen: now)
            return [.siteAppeared(announcement)]
        }
        sites[id]!.announcement = announcement
        sites[id]!.lastSeen = now
        sites[id]!.heard = true
        return existing.announcement.site == announcement.site
            ? [] : [.siteChanged(old: existing.announcement, new: announcement)]
    }

    /// Takes a verified revocation list: newer than the one held from its CA, it replaces it, and every active
    /// site whose certificate it revokes is removed at once (`siteRevoked`); that site's later announcements
    /// are refused (`revoked`). An older or equal list is `staleRevocationList` (every site repeats its list).
    public mutating func apply(_ list: RevocationList) throws(AnnouncementRejection) -> [MeshEvent] {
        if let held = revocationLists[list.issuer], held.number >= list.number { throw .staleRevocationList }
        revocationLists[list.issuer] = list
        let revoked = sites.values.filter { site in
            guard let certificate = site.announcement.certificate else { return false }
            return certificate.issuer == list.issuer && list.serials.contains(certificate.serial)
        }.sorted { $0.announcement.siteID < $1.announcement.siteID }
        for site in revoked {
            sites[site.announcement.siteID] = nil
            claimedSince[site.announcement.siteID] = nil
        }
        return revoked.map { .siteRevoked($0.announcement) }
    }

    /// The active sites as they may be used, after `PrefixClaims` settled overlapping prefixes and overlays
    /// (the oldest claim holds; `local` holds its own from the start).
    public func resolution(local: SiteDescription) -> PrefixClaims.Resolution {
        PrefixClaims.resolve(local: local, remotes: announcements) { site, prefix in
            claimedSince[site]?[prefix] ?? .distantFuture
        }
    }

    private mutating func rememberClaims(of site: SiteDescription, at now: Date) {
        let current = [IPv4Prefix(site.overlay, length: 32)] + site.lanPrefixes
        let held = claimedSince[site.siteID] ?? [:]
        claimedSince[site.siteID] = Dictionary(current.map { ($0, held[$0] ?? now) }, uniquingKeysWith: { a, _ in a })
    }

    /// Restores sites this router knew before a restart (its database), as if heard at `now`: tunnels and
    /// steering are then rebuilt as they were, instead of torn down until each site announces again (up to an
    /// announcement interval later). They expire like any site unless heard within `settings.expiry`.
    /// Replay state is not restored, so the site's next genuine announcement is accepted whatever its counter
    /// (as after any restart). Skipped: sites already known, ourselves, a key that is ours or another
    /// site's, and anything beyond `maxSites`. Returns a `siteAppeared` per restored site.
    public mutating func restore(_ descriptions: [SiteDescription], now: Date) -> [MeshEvent] {
        var events: [MeshEvent] = []
        for site in descriptions {
            guard site.siteID != localSiteID, sites[site.siteID] == nil, sites.count < settings.maxSites,
                  site.publicKey != localPublicKey,
                  !sites.values.contains(where: { $0.announcement.publicKey == site.publicKey }) else { continue }
            let announcement = Announcement(site: site, counter: 0,
                                            timestampMilliseconds: UInt64(max(0, now.timeIntervalSince1970) * 1000))
            sites[site.siteID] = Site(announcement: announcement, firstSeen: now, lastSeen: now, heard: false)
            rememberClaims(of: site, at: now)
            events.append(.siteAppeared(announcement))
        }
        return events
    }

    /// Expires every site not heard from within `settings.expiry` before `now`, oldest first.
    public mutating func expire(now: Date) -> [MeshEvent] {
        let expired = sites.values.filter { now.timeIntervalSince($0.lastSeen) > settings.expiry }
            .sorted { ($0.lastSeen, $0.announcement.siteID) < ($1.lastSeen, $1.announcement.siteID) }
        for site in expired { sites[site.announcement.siteID] = nil }
        return expired.map { .siteExpired($0.announcement) }
    }

    /// The next time `expire` can have something to do (nil when no site is known).
    public var nextExpiry: Date? {
        sites.values.map { $0.lastSeen.addingTimeInterval(settings.expiry) }.min()
    }

    /// The active sites that announced themselves since the start (not only restored), sorted by site id.
    public var heardAnnouncements: [Announcement] {
        sites.values.filter(\.heard).map(\.announcement).sorted { $0.siteID < $1.siteID }
    }

    /// The active sites' latest announcements, sorted by site id.
    public var announcements: [Announcement] {
        sites.values.map(\.announcement).sorted { $0.siteID < $1.siteID }
    }

    private mutating func rememberCounter(_ counter: UInt64, for id: SiteID, at now: Date) {
        let recent = ((lastCounters[id]?.recent ?? []) + [counter]).suffix(Self.recentCounters)
        lastCounters[id] = (counter, now, Array(recent))
        guard lastCounters.count > settings.maxReplayEntries else { return }
        // Forget the longest-silent site that is not active (active ones are never evicted).
        if let victim = lastCounters.filter({ sites[$0.key] == nil }).min(by: { $0.value.at < $1.value.at })?.key {
            lastCounters[victim] = nil
            claimedSince[victim] = nil
            certified.remove(victim)
        }
    }
}

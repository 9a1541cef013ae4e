import CNetfilter
import Foundation
import Glibc
import Logging
import Model
import Synchronization

/// Settings of discovery. Defaults are the documented ones (docs/MESH.md).
public struct DiscoverySettings: Sendable, Equatable {
    public var group: SocketAddress4
    /// Interfaces to announce on and listen on (the uplinks); each gets its own socket and membership.
    public var uplinks: [String]
    /// `--peer HOST:PORT`, resolved: announced to by unicast every interval.
    public var peers: [SocketAddress4]
    public var interval: Duration
    /// A site expires after this many intervals without an accepted announcement.
    public var expiryIntervals: Int
    public var timestampWindow: TimeInterval
    public var ttl: UInt8

    public static let defaultGroup = SocketAddress4(Conventions.multicastGroup, port: Conventions.discoveryPort)

    public init(uplinks: [String], peers: [SocketAddress4] = [], group: SocketAddress4 = DiscoverySettings.defaultGroup,
                interval: Duration = .seconds(1), expiryIntervals: Int = 3, timestampWindow: TimeInterval = 60,
                ttl: UInt8 = 1) {
        self.group = group
        self.uplinks = uplinks
        self.peers = peers
        self.interval = interval
        self.expiryIntervals = expiryIntervals
        self.timestampWindow = timestampWindow
        self.ttl = ttl
    }

    var intervalSeconds: TimeInterval {
        let (seconds, attoseconds) = interval.components
        return TimeInterval(seconds) + TimeInterval(attoseconds) / 1e18
    }
}

/// One path to a remote site, for announcing through its tunnel: a datagram to `overlay` with SO_MARK `mark`
/// is routed by the path's table into the path's tunnel (the same pinning the path's probes use).
public struct TunnelRoute: Hashable, Sendable {
    public var site: SiteID
    public var overlay: IPv4Address
    public var mark: UInt32

    public init(site: SiteID, overlay: IPv4Address, mark: UInt32) {
        self.site = site
        self.overlay = overlay
        self.mark = mark
    }
}

/// How an accepted announcement reached us.
public enum AnnouncementPath: String, Sendable, Hashable {
    /// Multicast on an uplink's segment.
    case multicast
    /// Unicast over the underlay (`--peer`, or a site that has us as its `--peer`).
    case unicast
    /// Through one of our tunnels to the site (its source is the site's overlay address).
    case tunnel
    /// Relayed by another site (inside a `RelayEnvelope`).
    case relay
}

/// Counters of discovery, for `status` and metrics.
public struct DiscoveryStatistics: Sendable, Equatable {
    public var datagramsSent: UInt64 = 0
    public var sendErrors: UInt64 = 0
    public var datagramsReceived: UInt64 = 0
    public var accepted: UInt64 = 0
    /// Accepted announcements by how they came (the first copy of each counter only).
    public var acceptedVia: [AnnouncementPath: UInt64] = [:]
    /// Our announcements sent through tunnels, and other sites' announcements we relayed.
    public var tunnelSent: UInt64 = 0
    public var relayedSent: UInt64 = 0
    /// Endpoint observations sent (through tunnels) and accepted (docs/MESH.md, "NAT").
    public var observationsSent: UInt64 = 0
    public var observationsAccepted: UInt64 = 0
    /// Every dropped datagram, by reason.
    public var drops: [AnnouncementRejection: UInt64] = [:]

    public init() {}
}

/// Finds the other sites: announces this site on every uplink (multicast, TTL 1), to every `--peer` and every
/// site that has us as its peer (unicast), and through every tunnel to every known site (so a site stays known
/// while any path to it works, whatever happens to the underlay); relays the announcements it heard directly
/// to its unicast correspondents (a branch configured with only its hub learns the whole mesh); receives and
/// authenticates all of it, and publishes `MeshEvent`s.
///
/// Announces at start, at once when `update(_:)` changes what we announce or when a new site appears (so
/// it learns about us without waiting an interval), then every `interval`. Sites expire after
/// `expiryIntervals` intervals of silence. `run()` owns one I/O thread (poll on the sockets and an
/// eventfd) until its task is cancelled; everything else is lock-protected state, cheap to read.
/// Rejected datagrams are counted by reason and logged at most once per reason per 10 s.
public final class DiscoveryService: Sendable {
    /// The events, in order. One consumer; at most 1024 are buffered (the oldest are dropped first).
    public let events: AsyncStream<MeshEvent>
    private let continuation: AsyncStream<MeshEvent>.Continuation
    let settings: DiscoverySettings
    private let codec: AnnouncementCodec
    private let logger: Logger
    private let state: Mutex<State>

    private struct State: Sendable {
        var local: SiteDescription
        var table: PeerTable
        var counter = AnnouncementCounter()
        var statistics = DiscoveryStatistics()
        var announceNow = true
        /// The uplink sockets are to be opened again (`rebindUplinks()`).
        var rebindNow = false
        /// The uplinks' interfaces (`settings.uplinks`, then `setUplinks`).
        var uplinks: [String]
        var lastAnnounce: ContinuousClock.Instant?
        var stopping = false
        var wakeFD: Int32 = -1
        var lastLogged: [AnnouncementRejection: (at: ContinuousClock.Instant, suppressed: UInt64)] = [:]
        /// Every path to every known site (`setTunnelRoutes`): our announcement goes through each.
        var tunnelRoutes: [TunnelRoute] = []
        /// The latest accepted datagram of each site heard directly (never one that came relayed): what we relay.
        var relayable: [SiteID: [UInt8]] = [:]
        /// Where a site that has us as its `--peer` (or that we have as ours) sends from, as we observe it:
        /// we announce and relay to it, which also keeps a NAT mapping in front of it open.
        var correspondents: [SiteID: SocketAddress4] = [:]
        var budget = SignatureBudget()
        /// The active sites as they may be used, and the refused overlapping claims (`PrefixClaims`).
        var resolution = PrefixClaims.Resolution(sites: [], conflicts: [])
        /// Revocation lists we hold, encoded once (sent with every announcement).
        var revocationDatagrams: [[UInt8]] = []
        /// Signs what we announce (our certificate and identity key); replaceable at run time (renewal).
        var encoder: AnnouncementCodec
        /// Where other sites see our uplinks from (their observations), and so what we announce.
        var publicEndpoints = PublicEndpoints()
        /// The endpoints of our last announcement (ours, with public mappings where we are behind NAT).
        var announcedEndpoints: [Endpoint]?
        /// Where we see each site's tunnels from (`setObservations`): sent to it through its tunnels.
        var observations: [SiteID: [EndpointObservation.Sighting]] = [:]

        /// Re-settles overlapping claims after the table or `local` changed; returns the conflicts that began
        /// and ended, to log one line each.
        mutating func resolve() -> (began: [PrefixConflict], ended: [PrefixConflict]) {
            let before = Set(resolution.conflicts)
            resolution = table.resolution(local: local)
            let after = Set(resolution.conflicts)
            return (resolution.conflicts.filter { !before.contains($0) },
                    Array(before.subtracting(after)).sorted { $0.description < $1.description })
        }
    }

    /// What discovery does with certificates: our signer, the CAs we trust, and what to send before it knows
    /// better (`legacyCopies`: also announce in format version 1, for sites not yet upgraded).
    public struct Identity: Sendable {
        public var trust: CertificateTrust
        public var signer: AnnouncementSigner?
        public var legacyCopies: Bool

        public init(trust: CertificateTrust = .none, signer: AnnouncementSigner? = nil, legacyCopies: Bool = false) {
            self.trust = trust
            self.signer = signer
            self.legacyCopies = legacyCopies
        }
    }

    private let legacyCopies: Bool
    /// The origin of the monotonic seconds the signature budget counts in.
    private static let epoch = ContinuousClock.now
    /// Called (outside the lock) with every newer revocation list accepted, to keep it across restarts.
    private let revocationAccepted: @Sendable (RevocationList) -> Void

    /// Fails when `local` cannot be announced (name, labels or counts outside the format's limits).
    public init(local: SiteDescription, settings: DiscoverySettings, authentication: MeshAuthentication,
                identity: Identity = Identity(),
                revocationAccepted: @escaping @Sendable (RevocationList) -> Void = { _ in },
                logger: Logger = Logger(label: "patronus.mesh.discovery")) throws(AnnouncementCodec.EncodingError) {
        self.settings = settings
        self.codec = AnnouncementCodec(authentication: authentication, trust: identity.trust, signer: identity.signer)
        self.legacyCopies = identity.legacyCopies
        self.revocationAccepted = revocationAccepted
        _ = try codec.encode(Announcement(site: local, counter: 0, timestampMilliseconds: 0))
        self.logger = logger
        let table = PeerTable(localSiteID: local.siteID, localPublicKey: local.publicKey,
                              settings: .init(timestampWindow: settings.timestampWindow,
                                              expiry: settings.intervalSeconds * Double(settings.expiryIntervals)))
        var state = State(local: local, table: table, uplinks: settings.uplinks, encoder: codec)
        _ = state.resolve()
        self.state = Mutex(state)
        (events, continuation) = AsyncStream.makeStream(of: MeshEvent.self, bufferingPolicy: .bufferingNewest(1024))
    }

    /// Changes what this site announces (e.g. an uplink's address changed); announces at once if it differs.
    public func update(_ local: SiteDescription) throws(AnnouncementCodec.EncodingError) {
        let result = state.withLock { state -> Result<(began: [PrefixConflict], ended: [PrefixConflict]), AnnouncementCodec.EncodingError> in
            do throws(AnnouncementCodec.EncodingError) {
                _ = try state.encoder.encode(Announcement(site: local, counter: 0, timestampMilliseconds: 0))
            } catch {
                return .failure(error)
            }
            guard state.local != local else { return .success(([], [])) }
            state.local = local
            state.announceNow = true
            Self.wake(state)
            return .success(state.resolve())
        }
        logConflicts(try result.get())
    }

    /// Signs from now on with `signer` (a renewed certificate, or a new identity key): checked against what
    /// we announce first, then announced at once. No tunnel changes, so renewal costs no outage.
    public func replaceSigner(_ signer: AnnouncementSigner) throws(AnnouncementCodec.EncodingError) {
        let encoder = AnnouncementCodec(authentication: codec.authentication, trust: codec.trust, signer: signer)
        try state.withLock { state throws(AnnouncementCodec.EncodingError) in
            _ = try encoder.encode(Announcement(site: state.local, counter: 0, timestampMilliseconds: 0))
            state.encoder = encoder
            state.announceNow = true
            Self.wake(state)
        }
    }

    /// The certificate we announce with (nil without one).
    public var certificate: SiteCertificate? { state.withLock { $0.encoder.signer?.certificate } }

    /// A revocation list given to this site (the operator's file): verified like a received one, then held,
    /// applied and passed on with every announcement. Returns what it refused for, if it did.
    @discardableResult
    public func add(_ list: RevocationList) -> AnnouncementRejection? {
        do {
            let bytes = try codec.encode(list)
            guard case .revocationList(let verified) = try codec.decodeMessage(bytes) else { return .badKind }
            return apply(verified, from: nil)
        } catch let error as AnnouncementRejection {
            return error
        } catch {
            return .malformed
        }
    }

    /// Applies a verified list: removes the sites it revokes, keeps it, passes it on; nil when it was newer.
    private func apply(_ list: RevocationList, from source: SocketAddress4?) -> AnnouncementRejection? {
        let outcome = state.withLock { state -> Result<([MeshEvent], (began: [PrefixConflict], ended: [PrefixConflict])), AnnouncementRejection> in
            do throws(AnnouncementRejection) {
                let events = try state.table.apply(list)
                state.revocationDatagrams = state.table.revocationLists.values.sorted { $0.issuer.lexicographicallyPrecedes($1.issuer) }
                    .compactMap { try? codec.encode($0) }
                state.announceNow = true  // pass it on now: every site has it within an interval per hop
                Self.wake(state)
                return .success((events, state.resolve()))
            } catch {
                return .failure(error)
            }
        }
        switch outcome {
        case .failure(let rejection):
            return rejection
        case .success(let (events, changes)):
            logger.notice("revocation list accepted", metadata: [
                "number": "\(list.number)", "revoked": "\(list.serials.count)",
                "from": "\(source.map(\.description) ?? "local file")",
            ])
            revocationAccepted(list)
            for event in events {
                if case .siteRevoked(let a) = event {
                    logger.warning("site revoked: its tunnels and paths are removed", metadata: [
                        "site": "\(a.name)", "id": "\(a.siteID)", "serial": "\(a.certificate.map(\.serialText) ?? "-")",
                    ])
                }
                continuation.yield(event)
            }
            logConflicts(changes)
            return nil
        }
    }

    /// The revocation lists held, one per CA.
    public var revocationLists: [RevocationList] {
        state.withLock { state in
            state.table.revocationLists.values.sorted { $0.issuer.lexicographicallyPrecedes($1.issuer) }
        }
    }

    private func logConflicts(_ changes: (began: [PrefixConflict], ended: [PrefixConflict])) {
        for conflict in changes.began {
            logger.warning("announced prefix refused: it overlaps one held earlier", metadata: [
                "conflict": "\(conflict)",
            ])
        }
        for conflict in changes.ended {
            logger.notice("prefix conflict ended", metadata: ["conflict": "\(conflict)"])
        }
    }

    /// Opens the uplink sockets again (and announces on them at once): an uplink appeared, went, or got a
    /// new address or interface index. The I/O thread does it, in its network namespace.
    public func rebindUplinks() {
        state.withLock { state in
            state.rebindNow = true
            state.announceNow = true
            Self.wake(state)
        }
    }

    /// Changes the uplinks to announce and listen on (a detected uplink appeared); their sockets are opened
    /// again at once.
    public func setUplinks(_ interfaces: [String]) {
        state.withLock { state in
            guard state.uplinks != interfaces else { return }
            state.uplinks = interfaces
            state.rebindNow = true
            state.announceNow = true
            Self.wake(state)
        }
    }

    public var statistics: DiscoveryStatistics { state.withLock { $0.statistics } }

    /// The paths to announce through (every path of every known site; the daemon sets them on each tunnel
    /// plan). Announcing through them starts with the next announcement.
    public func setTunnelRoutes(_ routes: [TunnelRoute]) {
        state.withLock { $0.tunnelRoutes = routes }
    }

    /// Where we see each site's tunnels from, by its labels (the tunnel driver sets it from WireGuard's
    /// learned endpoints of working sessions): each round sends every site its own through its tunnels.
    public func setObservations(_ observations: [SiteID: [EndpointObservation.Sighting]]) {
        state.withLock { state in
            let new = observations.filter { !$0.value.isEmpty }
            // A new or moved mapping goes out now (a site behind NAT waits for it), a repeated one each round.
            if new.contains(where: { state.observations[$0.key] != $0.value }) {
                state.announceNow = true
                Self.wake(state)
            }
            state.observations = new
        }
    }

    /// Our uplinks that other sites see behind a NAT: label -> the public mapping we announce, and who saw it.
    public var publicMappings: [String: (address: SocketAddress4, observers: [SiteID])] {
        state.withLock { state in
            let now = Date()
            var out: [String: (address: SocketAddress4, observers: [SiteID])] = [:]
            for endpoint in state.local.endpoints {
                if let mapping = state.publicEndpoints.mapping(of: endpoint.label, local: state.local.endpoints, now: now) {
                    out[endpoint.label] = mapping
                }
            }
            return out
        }
    }

    /// The sites that announce to us by unicast, with the address we see them at.
    public var correspondents: [SiteID: SocketAddress4] { state.withLock { $0.correspondents } }

    /// What this site announces now.
    public var local: SiteDescription { state.withLock { $0.local } }

    /// The active sites as they may be used, sorted by site id: their latest announcements less what
    /// overlaps an earlier holder's prefixes or overlay (`PrefixClaims`; `conflicts` lists what was refused).
    public var sites: [Announcement] { state.withLock { $0.resolution.sites } }

    /// The active sites' latest announcements as announced, sorted by site id.
    public var announcedSites: [Announcement] { state.withLock { $0.table.announcements } }

    /// Announced prefixes and overlays refused because they overlap an earlier holder's.
    public var conflicts: [PrefixConflict] { state.withLock { $0.resolution.conflicts } }

    /// The active sites heard since the start; `sites` also holds restored ones not heard yet.
    public var heardSites: [Announcement] { state.withLock { $0.table.heardAnnouncements } }

    /// Restores the sites known before a restart (see `PeerTable.restore`); call before `run` so that the
    /// first tunnel plan already holds them. Returns how many were restored.
    @discardableResult
    public func restore(_ descriptions: [SiteDescription]) -> Int {
        let (events, changes) = state.withLock { state in
            let events = state.table.restore(descriptions, now: Date())
            Self.wake(state)  // the expiry timer now has a deadline
            return (events, state.resolve())
        }
        logConflicts(changes)
        for event in events {
            if case .siteAppeared(let a) = event {
                logger.info("site restored from the database", metadata: [
                    "site": "\(a.name)", "id": "\(a.siteID)",
                    "expires_unless_heard_in_s": "\(settings.intervalSeconds * Double(settings.expiryIntervals))",
                ])
            }
            continuation.yield(event)
        }
        return events.count
    }

    /// Opens the sockets, then announces and listens until the calling task is cancelled. Call once.
    /// Throws only when the unicast socket cannot be set up (port in use). An uplink that does not exist yet
    /// is logged and bound by `rebindUplinks()` when it appears.
    public func run() async throws(DiscoveryError) {
        let sockets = try DiscoverySockets(uplinks: settings.uplinks, group: settings.group, ttl: settings.ttl)
        // A socket pair wakes the I/O thread's poll when we stop or have something to announce.
        var pair: [Int32] = [-1, -1]
        let paired = socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair)
        guard paired == 0 else { throw .socket(operation: "socketpair", interface: nil, errno: errno) }
        let (wake, wakeWriter) = (pair[0], pair[1])
        state.withLock { $0.wakeFD = wakeWriter }
        logger.info("discovery started", metadata: [
            "uplinks": "\(settings.uplinks.joined(separator: ","))", "peers": "\(settings.peers.count)",
            "group": "\(settings.group)",
        ])
        let io = IOThread(service: self, sockets: sockets, wake: wake)
        await withTaskCancellationHandler {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                let thread = Thread {
                    io.loop()
                    done.resume()
                }
                thread.name = "patronus discovery"
                thread.start()
            }
        } onCancel: {
            stop()
        }
        state.withLock { $0.wakeFD = -1 }
        close(wake)
        close(wakeWriter)
        continuation.finish()
    }

    fileprivate func logSkipped(_ uplink: String, _ error: DiscoveryError?) {
        if let error {
            logger.warning("discovery cannot use uplink \(uplink) for now", metadata: ["error": "\(error)"])
        } else {
            logger.notice("uplink \(uplink) does not exist (yet): discovery uses it when it appears")
        }
    }

    /// Takes a pending rebind request (I/O thread): the uplinks to bind then, or nil.
    fileprivate func takeRebind() -> [String]? {
        state.withLock { state in
            defer { state.rebindNow = false }
            return state.rebindNow ? state.uplinks : nil
        }
    }

    private func stop() {
        state.withLock { state in
            state.stopping = true
            Self.wake(state)
        }
    }

    /// Wakes the I/O thread's poll. Called with the lock held, so `run` cannot close the descriptor (and
    /// the number cannot be reused) in between; the socket is non-blocking, so this never waits.
    private static func wake(_ state: borrowing State) {
        guard state.wakeFD >= 0 else { return }
        var one: UInt64 = 1
        _ = send(state.wakeFD, &one, 8, Int32(MSG_DONTWAIT))
    }

    /// Everything the I/O thread does, with the service's state.
    private struct IOThread: @unchecked Sendable {
        let service: DiscoveryService
        let sockets: DiscoverySockets
        let wake: Int32

        func loop() {
            var buffer = [UInt8](repeating: 0, count: RelayEnvelope.maxDatagramSize + 1)
            var descriptors: [pollfd] = []
            var skipped: Set<String> = []
            // The uplink sockets, opened at start and again on `rebindUplinks()`; an uplink left out is logged
            // once, not at every rebind.
            func bind(_ names: [String]? = nil) {
                var now: Set<String> = []
                sockets.rebind(names) { name, error in
                    now.insert(name)
                    if !skipped.contains(name) { service.logSkipped(name, error) }
                }
                skipped = now
                descriptors = sockets.descriptors.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
                descriptors.append(pollfd(fd: wake, events: Int16(POLLIN), revents: 0))
            }
            bind()
            while true {
                if let names = service.takeRebind() { bind(names) }
                guard let planned = service.plan(now: .now) else { return }
                if let outgoing = planned.outgoing {
                    service.recordSent(send(outgoing))
                }
                let timeout = planned.timeout
                let ready = poll(&descriptors, nfds_t(descriptors.count), timeout)
                guard ready > 0 else { continue }
                var drained = [UInt8](repeating: 0, count: 64)
                while recv(wake, &drained, drained.count, Int32(MSG_DONTWAIT)) > 0 {}
                for index in 0..<(descriptors.count - 1) where descriptors[index].revents & Int16(POLLIN) != 0 {
                    // Bounded work per wake-up, so one flooded socket cannot starve the others or the timers.
                    for _ in 0..<64 {
                        guard let (size, source) = sockets.receive(from: descriptors[index].fd, into: &buffer) else { break }
                        service.handle(buffer.prefix(min(size, buffer.count)), size: size, from: source,
                                       unicast: descriptors[index].fd == sockets.unicast)
                    }
                }
            }
        }

        func send(_ outgoing: Outgoing) -> SendCounts {
            var counts = SendCounts()
            for bytes in outgoing.datagrams {
                for uplink in sockets.uplinks {
                    counts.count(sockets.send(bytes, from: uplink.fd, to: sockets.group))
                }
                for destination in outgoing.unicast {
                    counts.count(sockets.send(bytes, from: sockets.unicast, to: destination))
                }
                for route in outgoing.tunnels {
                    if counts.count(sockets.send(bytes, to: SocketAddress4(route.overlay, port: sockets.group.port), mark: route.mark)) {
                        counts.tunnel += 1
                    }
                }
            }
            for (envelope, destination) in outgoing.relays {
                if counts.count(sockets.send(envelope, from: sockets.unicast, to: destination)) { counts.relayed += 1 }
            }
            for (bytes, route) in outgoing.observations {
                if counts.count(sockets.send(bytes, to: SocketAddress4(route.overlay, port: sockets.group.port), mark: route.mark)) {
                    counts.observations += 1
                }
            }
            return counts
        }
    }

    /// What one announcement round sends: our announcement on every uplink (multicast), to every unicast
    /// destination and through every tunnel, and the relays.
    struct Outgoing {
        /// Our announcement (and its version 1 copy with `legacyCopies`) and the revocation lists we hold.
        var datagrams: [[UInt8]]
        var unicast: [SocketAddress4]
        var tunnels: [TunnelRoute]
        var relays: [([UInt8], SocketAddress4)]
        /// Each site's observation, through every path to it.
        var observations: [([UInt8], TunnelRoute)] = []
    }

    struct SendCounts {
        var sent: UInt64 = 0
        var failed: UInt64 = 0
        var tunnel: UInt64 = 0
        var relayed: UInt64 = 0
        var observations: UInt64 = 0

        @discardableResult
        mutating func count(_ error: Int32?) -> Bool {
            if error == nil { sent += 1 } else { failed += 1 }
            return error == nil
        }
    }

    /// The relays of one round: to every unicast destination, the latest directly heard announcement of
    /// every other site (never the destination's own, never one that reached us relayed). At most
    /// (sites x destinations) datagrams per interval, whatever arrives: relaying is paced by our clock, not
    /// by what we receive, so no input can make it storm.
    static func relays(relayable: [SiteID: [UInt8]], to destinations: [SocketAddress4],
                       correspondents: [SiteID: SocketAddress4]) -> [([UInt8], SocketAddress4)] {
        // Wrapped once per site, sent to every destination (a hub of n sites sends n x n).
        let envelopes = relayable.sorted(by: { $0.key < $1.key }).map { ($0.key, RelayEnvelope.wrap($0.value)) }
        var out: [([UInt8], SocketAddress4)] = []
        for destination in destinations {
            for (site, envelope) in envelopes where correspondents[site] != destination {
                out.append((envelope, destination))
            }
        }
        return out
    }

    /// Each site's observation (where we see its tunnels from), encoded once and sent through every path to it.
    static func observations(_ observations: [SiteID: [EndpointObservation.Sighting]], from observer: SiteID,
                             routes: [TunnelRoute], codec: AnnouncementCodec, now: Date) -> [([UInt8], TunnelRoute)] {
        var out: [([UInt8], TunnelRoute)] = []
        for (subject, sightings) in observations.sorted(by: { $0.key < $1.key }) {
            let observation = EndpointObservation(observer: observer, subject: subject,
                                                  timestampMilliseconds: UInt64(now.timeIntervalSince1970 * 1000),
                                                  sightings: Array(sightings.prefix(AnnouncementCodec.maxEndpoints)))
            guard let bytes = try? codec.encode(observation) else { continue }
            for route in routes where route.site == subject { out.append((bytes, route)) }
        }
        return out
    }

    /// Announces if due and expires sites. Returns what to send when due (the announcement, its version 1 copy
    /// with `legacyCopies`, and the revocation lists we hold: on every uplink, to every unicast destination and
    /// through every tunnel; and the relays) and the poll timeout in ms, or nil when the service is stopping.
    fileprivate func plan(now: ContinuousClock.Instant) -> (outgoing: Outgoing?, timeout: Int32)? {
        let wall = Date()
        let planned = state.withLock { state -> (outgoing: Outgoing?, timeout: Int32, expired: [MeshEvent],
                                                 changes: (began: [PrefixConflict], ended: [PrefixConflict]))? in
            guard !state.stopping else { return nil }
            var outgoing: Outgoing?
            let due = state.lastAnnounce.map { now - $0 >= settings.interval } ?? true
            state.publicEndpoints.expire(local: state.local.endpoints, now: wall)
            let endpoints = state.publicEndpoints.announced(state.local.endpoints, now: wall)
            if endpoints != state.announcedEndpoints { state.announceNow = true }
            if state.announceNow || due {
                var site = state.local
                site.endpoints = endpoints
                state.announcedEndpoints = endpoints
                let announcement = Announcement(site: site, counter: state.counter.next(),
                                                timestampMilliseconds: UInt64(wall.timeIntervalSince1970 * 1000))
                // The description was validated by init/update, so encoding cannot fail here.
                var datagrams: [[UInt8]] = []
                if let bytes = try? state.encoder.encode(announcement) { datagrams.append(bytes) }
                if legacyCopies, let bytes = try? state.encoder.encodeLegacy(announcement) { datagrams.append(bytes) }
                datagrams += state.revocationDatagrams
                var unicast = settings.peers
                for address in state.correspondents.values.sorted(by: { ($0.address, $0.port) < ($1.address, $1.port) })
                    where !unicast.contains(address) {
                    unicast.append(address)
                }
                outgoing = Outgoing(datagrams: datagrams, unicast: unicast, tunnels: state.tunnelRoutes,
                                    relays: Self.relays(relayable: state.relayable, to: unicast,
                                                        correspondents: state.correspondents),
                                    observations: Self.observations(state.observations, from: state.local.siteID,
                                                                    routes: state.tunnelRoutes, codec: state.encoder,
                                                                    now: wall))
                state.lastAnnounce = now
                state.announceNow = false
            }
            let expired = state.table.expire(now: wall)
            for case .siteExpired(let announcement) in expired {
                state.relayable[announcement.siteID] = nil
                state.correspondents[announcement.siteID] = nil
            }
            let changes = expired.isEmpty ? ([], []) : state.resolve()
            var wait = settings.interval - (now - (state.lastAnnounce ?? now))
            if let next = state.table.nextExpiry {
                wait = min(wait, .milliseconds(Int64(max(0, next.timeIntervalSince(wall)) * 1000) + 1))
            }
            let (seconds, attoseconds) = max(wait, .zero).components
            let milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000)
            return (outgoing, milliseconds, expired, changes)
        }
        guard let planned else { return nil }
        logConflicts(planned.changes)
        for event in planned.expired {
            if case .siteExpired(let announcement) = event {
                logger.info("site expired", metadata: ["site": "\(announcement.name)", "id": "\(announcement.siteID)"])
            }
            continuation.yield(event)
        }
        return (planned.outgoing, planned.timeout)
    }

    fileprivate func recordSent(_ counts: SendCounts) {
        state.withLock {
            $0.statistics.datagramsSent += counts.sent
            $0.statistics.sendErrors += counts.failed
            $0.statistics.tunnelSent += counts.tunnel
            $0.statistics.relayedSent += counts.relayed
            $0.statistics.observationsSent += counts.observations
        }
    }

    /// Takes an observation of our uplinks: only about us, only through a tunnel from an active observer (its
    /// source is the observer's overlay address: WireGuard authenticated the sender, since only the observer's
    /// peer may send from that address into our tunnels), only fresh. It can only
    /// change the address we announce for one of our own labels.
    private func record(_ observation: EndpointObservation, from source: SocketAddress4, now: Date) -> AnnouncementRejection? {
        let outcome = state.withLock { state -> Result<(announced: [Endpoint], own: [Endpoint])?, AnnouncementRejection> in
            guard observation.subject == state.local.siteID,
                  state.resolution.sites.contains(where: { $0.siteID == observation.observer && $0.overlay == source.address })
            else { return .failure(.badObservation) }
            let sent = Date(timeIntervalSince1970: Double(observation.timestampMilliseconds) / 1000)
            guard abs(sent.timeIntervalSince(now)) <= settings.timestampWindow else { return .failure(.stale) }
            state.statistics.observationsAccepted += 1
            guard state.publicEndpoints.record(observation, local: state.local.endpoints, now: now) else { return .success(nil) }
            state.announceNow = true
            Self.wake(state)
            return .success((state.publicEndpoints.announced(state.local.endpoints, now: now), state.local.endpoints))
        }
        switch outcome {
        case .failure(let rejection):
            return rejection
        case .success(let changed):
            if let (announced, own) = changed {
                for (mapped, endpoint) in zip(announced, own) where mapped != endpoint {
                    logger.notice("uplink behind NAT: announcing its public mapping", metadata: [
                        "uplink": "\(endpoint.label)", "own": "\(endpoint.address)", "public": "\(mapped.address)",
                    ])
                }
            }
            return nil
        }
    }

    /// Decodes, authenticates and applies one received datagram of `size` bytes (`bytes` holds at most the
    /// largest datagram discovery reads). `unicast`: it came to the unicast socket (a peer, a relay, or a
    /// tunnel), not to an uplink's multicast socket. Cheapest checks first: the relay envelope, header and MAC
    /// (`open`), then replay and freshness (the table) and the signature budget, and only then the signature
    /// checks (`verify`, outside the lock).
    func handle(_ bytes: ArraySlice<UInt8>, size: Int, from source: SocketAddress4, unicast: Bool) {
        let wall = Date()
        let now = ContinuousClock.now
        var opened: OpenedMessage?
        var message: MeshMessage?
        var rejection: AnnouncementRejection?
        var inner = bytes
        var relayed = false
        if size > RelayEnvelope.maxDatagramSize || (size > AnnouncementCodec.maxDatagramSize && !RelayEnvelope.isEnvelope(bytes)) {
            rejection = .oversized
        } else {
            do throws(AnnouncementRejection) {
                if RelayEnvelope.isEnvelope(bytes) {
                    inner = try RelayEnvelope.unwrap(bytes)
                    guard !RelayEnvelope.isEnvelope(inner) else { throw .badRelay }
                    relayed = true
                }
                opened = try codec.open(inner)
            } catch {
                rejection = error
            }
        }
        if let opened {
            let seconds = Double((now - Self.epoch).components.seconds) + Double((now - Self.epoch).components.attoseconds) / 1e18
            rejection = state.withLock { state -> AnnouncementRejection? in
                do throws(AnnouncementRejection) {
                    if let announcement = opened.announcement { try state.table.precheck(announcement, now: wall) }
                    if let list = opened.revocationList, let held = state.table.revocationLists[list.issuer],
                       held.number >= list.number {
                        throw .staleRevocationList
                    }
                } catch {
                    return error
                }
                guard codec.checksSignatures(of: opened) else { return nil }
                return state.budget.take(source: source.address, relayedSite: relayed ? opened.announcement?.siteID : nil,
                                         now: seconds) ? nil : .rateLimited
            }
            if rejection == nil {
                do { message = try codec.verify(opened, now: wall) } catch { rejection = error }
            }
        }
        if case .revocationList(let list) = message {
            rejection = apply(list, from: source)
            message = nil
        }
        if case .observation(let observation) = message {
            rejection = relayed || !unicast ? .badObservation : record(observation, from: source, now: wall)
            message = nil
        }
        let path: AnnouncementPath = relayed ? .relay
            : !unicast ? .multicast
            : { if case .announcement(let a) = message, a.overlay == source.address { true } else { false } }() ? .tunnel : .unicast
        let (events, logLine, changes) = state.withLock { state -> ([MeshEvent], (AnnouncementRejection, UInt64)?, (began: [PrefixConflict], ended: [PrefixConflict])) in
            state.statistics.datagramsReceived += 1
            var events: [MeshEvent] = []
            if case .announcement(let decoded) = message {
                do throws(AnnouncementRejection) {
                    events = try state.table.accept(decoded, now: wall)
                    state.statistics.accepted += 1
                    state.statistics.acceptedVia[path, default: 0] += 1
                    if path != .relay { state.relayable[decoded.siteID] = Array(inner) }
                    // Only an authenticated, fresh announcement teaches where its site sends from.
                    if path == .unicast { state.correspondents[decoded.siteID] = source }
                } catch {
                    rejection = error
                }
            } else if rejection == nil {
                state.statistics.accepted += 1  // a newer revocation list
            }
            guard let rejection else {
                if events.contains(where: { if case .siteAppeared = $0 { true } else { false } }) {
                    state.announceNow = true  // let the newcomer hear about us now, not in an interval
                }
                return (events, nil, events.isEmpty ? ([], []) : state.resolve())
            }
            state.statistics.drops[rejection, default: 0] += 1
            // Our own looped-back datagrams, second copies via another uplink and the lists every site repeats
            // are normal: never logged.
            guard ![.fromSelf, .duplicate, .staleRevocationList].contains(rejection) else { return ([], nil, ([], [])) }
            if let last = state.lastLogged[rejection], now - last.at < .seconds(10) {
                state.lastLogged[rejection]!.suppressed += 1
                return ([], nil, ([], []))
            }
            let suppressed = state.lastLogged[rejection]?.suppressed ?? 0
            state.lastLogged[rejection] = (now, 0)
            return ([], (rejection, suppressed), ([], []))
        }
        logConflicts(changes)
        if let (reason, suppressed) = logLine {
            logger.warning("dropped announcement", metadata: [
                "reason": "\(reason)", "from": "\(source)", "size": "\(size)",
                "similar_drops_not_logged": "\(suppressed)",
            ])
        }
        for event in events {
            switch event {
            case .siteAppeared(let a):
                logger.info("site appeared", metadata: ["site": "\(a.name)", "id": "\(a.siteID)", "from": "\(source)",
                                                        "via": "\(path.rawValue)"])
            case .siteChanged(_, let a):
                logger.info("site changed", metadata: ["site": "\(a.name)", "id": "\(a.siteID)"])
            case .siteExpired, .siteRevoked:
                break
            }
            continuation.yield(event)
        }
    }
}

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

    public static let defaultGroup = SocketAddress4(IPv4Address(239, 255, 77, 77), port: 51821)

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
    }

    /// Fails when `local` cannot be announced (name, labels or counts outside the format's limits).
    public init(local: SiteDescription, settings: DiscoverySettings, authentication: MeshAuthentication,
                logger: Logger = Logger(label: "patronus.mesh.discovery")) throws(AnnouncementCodec.EncodingError) {
        self.settings = settings
        self.codec = AnnouncementCodec(authentication: authentication)
        _ = try codec.encode(Announcement(site: local, counter: 0, timestampMilliseconds: 0))
        self.logger = logger
        let table = PeerTable(localSiteID: local.siteID, localPublicKey: local.publicKey,
                              settings: .init(timestampWindow: settings.timestampWindow,
                                              expiry: settings.intervalSeconds * Double(settings.expiryIntervals)))
        state = Mutex(State(local: local, table: table))
        (events, continuation) = AsyncStream.makeStream(of: MeshEvent.self, bufferingPolicy: .bufferingNewest(1024))
    }

    /// Changes what this site announces (e.g. an uplink's address changed); announces at once if it differs.
    public func update(_ local: SiteDescription) throws(AnnouncementCodec.EncodingError) {
        _ = try codec.encode(Announcement(site: local, counter: 0, timestampMilliseconds: 0))
        state.withLock { state in
            guard state.local != local else { return }
            state.local = local
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

    /// The sites that announce to us by unicast, with the address we see them at.
    public var correspondents: [SiteID: SocketAddress4] { state.withLock { $0.correspondents } }

    /// What this site announces now.
    public var local: SiteDescription { state.withLock { $0.local } }

    /// The active sites' latest announcements, sorted by site id.
    public var sites: [Announcement] { state.withLock { $0.table.announcements } }

    /// The active sites heard since the start; `sites` also holds restored ones not heard yet.
    public var heardSites: [Announcement] { state.withLock { $0.table.heardAnnouncements } }

    /// Restores the sites known before a restart (see `PeerTable.restore`); call before `run` so that the
    /// first tunnel plan already holds them. Returns how many were restored.
    @discardableResult
    public func restore(_ descriptions: [SiteDescription]) -> Int {
        let events = state.withLock { state in
            let events = state.table.restore(descriptions, now: Date())
            Self.wake(state)  // the expiry timer now has a deadline
            return events
        }
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
    /// Throws only when the sockets cannot be set up (missing uplink, port in use).
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
            var descriptors = sockets.descriptors.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            descriptors.append(pollfd(fd: wake, events: Int16(POLLIN), revents: 0))
            while true {
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
            let bytes = outgoing.announcement
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
            for (envelope, destination) in outgoing.relays {
                if counts.count(sockets.send(envelope, from: sockets.unicast, to: destination)) { counts.relayed += 1 }
            }
            return counts
        }
    }

    /// What one announcement round sends: our announcement on every uplink (multicast), to every unicast
    /// destination and through every tunnel, and the relays.
    struct Outgoing {
        var announcement: [UInt8]
        var unicast: [SocketAddress4]
        var tunnels: [TunnelRoute]
        var relays: [([UInt8], SocketAddress4)]
    }

    struct SendCounts {
        var sent: UInt64 = 0
        var failed: UInt64 = 0
        var tunnel: UInt64 = 0
        var relayed: UInt64 = 0

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
        var out: [([UInt8], SocketAddress4)] = []
        for destination in destinations {
            for (site, datagram) in relayable.sorted(by: { $0.key < $1.key }) where correspondents[site] != destination {
                out.append((RelayEnvelope.wrap(datagram), destination))
            }
        }
        return out
    }

    /// Announces if due and expires sites. Returns what to send (if due) and the poll timeout in ms, or nil
    /// when the service is stopping.
    fileprivate func plan(now: ContinuousClock.Instant) -> (outgoing: Outgoing?, timeout: Int32)? {
        let wall = Date()
        let planned = state.withLock { state -> (outgoing: Outgoing?, timeout: Int32, expired: [MeshEvent])? in
            guard !state.stopping else { return nil }
            var outgoing: Outgoing?
            let due = state.lastAnnounce.map { now - $0 >= settings.interval } ?? true
            if state.announceNow || due {
                let announcement = Announcement(site: state.local, counter: state.counter.next(),
                                                timestampMilliseconds: UInt64(wall.timeIntervalSince1970 * 1000))
                // The description was validated by init/update, so encoding cannot fail here.
                if let bytes = try? codec.encode(announcement) {
                    var unicast = settings.peers
                    for address in state.correspondents.values.sorted(by: { ($0.address, $0.port) < ($1.address, $1.port) })
                        where !unicast.contains(address) {
                        unicast.append(address)
                    }
                    outgoing = Outgoing(announcement: bytes, unicast: unicast, tunnels: state.tunnelRoutes,
                                        relays: Self.relays(relayable: state.relayable, to: unicast,
                                                            correspondents: state.correspondents))
                }
                state.lastAnnounce = now
                state.announceNow = false
            }
            let expired = state.table.expire(now: wall)
            for case .siteExpired(let announcement) in expired {
                state.relayable[announcement.siteID] = nil
                state.correspondents[announcement.siteID] = nil
            }
            var wait = settings.interval - (now - (state.lastAnnounce ?? now))
            if let next = state.table.nextExpiry {
                wait = min(wait, .milliseconds(Int64(max(0, next.timeIntervalSince(wall)) * 1000) + 1))
            }
            let (seconds, attoseconds) = max(wait, .zero).components
            let milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000)
            return (outgoing, milliseconds, expired)
        }
        guard let planned else { return nil }
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
        }
    }

    /// Decodes, authenticates and applies one received datagram of `size` bytes (`bytes` holds at most the
    /// largest datagram discovery reads). `unicast`: it came to the unicast socket (a peer, a relay, or a
    /// tunnel), not to an uplink's multicast socket.
    func handle(_ bytes: ArraySlice<UInt8>, size: Int, from source: SocketAddress4, unicast: Bool) {
        let wall = Date()
        var decoded: Announcement?
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
                decoded = try codec.decode(inner)
            } catch {
                rejection = error
            }
        }
        let path: AnnouncementPath = relayed ? .relay
            : !unicast ? .multicast
            : decoded.map { source.address == $0.overlay } == true ? .tunnel : .unicast
        let now = ContinuousClock.now
        let (events, logLine) = state.withLock { state -> ([MeshEvent], (AnnouncementRejection, UInt64)?) in
            state.statistics.datagramsReceived += 1
            var events: [MeshEvent] = []
            if let decoded {
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
            }
            guard let rejection else {
                if events.contains(where: { if case .siteAppeared = $0 { true } else { false } }) {
                    state.announceNow = true  // let the newcomer hear about us now, not in an interval
                }
                return (events, nil)
            }
            state.statistics.drops[rejection, default: 0] += 1
            // Our own looped-back datagrams and second copies via another uplink are normal: never logged.
            guard rejection != .fromSelf && rejection != .duplicate else { return ([], nil) }
            if let last = state.lastLogged[rejection], now - last.at < .seconds(10) {
                state.lastLogged[rejection]!.suppressed += 1
                return ([], nil)
            }
            let suppressed = state.lastLogged[rejection]?.suppressed ?? 0
            state.lastLogged[rejection] = (now, 0)
            return ([], (rejection, suppressed))
        }
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
            case .siteExpired:
                break
            }
            continuation.yield(event)
        }
    }
}

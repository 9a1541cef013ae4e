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

/// Counters of discovery, for `status` and metrics.
public struct DiscoveryStatistics: Sendable, Equatable {
    public var datagramsSent: UInt64 = 0
    public var sendErrors: UInt64 = 0
    public var datagramsReceived: UInt64 = 0
    public var accepted: UInt64 = 0
    /// Every dropped datagram, by reason.
    public var drops: [AnnouncementRejection: UInt64] = [:]

    public init() {}
}

/// Finds the other sites: announces this site on every uplink (multicast, TTL 1) and to every `--peer`
/// (unicast), receives and authenticates theirs, and publishes `MeshEvent`s.
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
        var lastAnnounce: ContinuousClock.Instant?
        var stopping = false
        var wakeFD: Int32 = -1
        var lastLogged: [AnnouncementRejection: (at: ContinuousClock.Instant, suppressed: UInt64)] = [:]
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

    /// Opens the uplink sockets again (and announces on them at once): an uplink appeared, went, or got a
    /// new address or interface index. The I/O thread does it, in its network namespace.
    public func rebindUplinks() {
        state.withLock { state in
            state.rebindNow = true
            state.announceNow = true
            Self.wake(state)
        }
    }

    public var statistics: DiscoveryStatistics { state.withLock { $0.statistics } }

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

    /// Takes a pending rebind request (I/O thread).
    fileprivate func takeRebind() -> Bool {
        state.withLock { state in
            defer { state.rebindNow = false }
            return state.rebindNow
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
            var buffer = [UInt8](repeating: 0, count: AnnouncementCodec.maxDatagramSize + 1)
            var descriptors: [pollfd] = []
            var skipped: Set<String> = []
            // The uplink sockets, opened at start and again on `rebindUplinks()`; an uplink left out is logged
            // once, not at every rebind.
            func bind() {
                var now: Set<String> = []
                sockets.rebind { name, error in
                    now.insert(name)
                    if !skipped.contains(name) { service.logSkipped(name, error) }
                }
                skipped = now
                descriptors = sockets.descriptors.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
                descriptors.append(pollfd(fd: wake, events: Int16(POLLIN), revents: 0))
            }
            bind()
            while true {
                if service.takeRebind() { bind() }
                guard let (announcement, timeout) = service.plan(now: .now) else { return }
                if let announcement {
                    let (sent, failed) = send(announcement, peers: service.settings.peers)
                    service.recordSent(sent, failed: failed)
                }
                let ready = poll(&descriptors, nfds_t(descriptors.count), timeout)
                guard ready > 0 else { continue }
                var drained = [UInt8](repeating: 0, count: 64)
                while recv(wake, &drained, drained.count, Int32(MSG_DONTWAIT)) > 0 {}
                for index in 0..<(descriptors.count - 1) where descriptors[index].revents & Int16(POLLIN) != 0 {
                    // Bounded work per wake-up, so one flooded socket cannot starve the others or the timers.
                    for _ in 0..<64 {
                        guard let (size, source) = sockets.receive(from: descriptors[index].fd, into: &buffer) else { break }
                        service.handle(buffer.prefix(min(size, buffer.count)), size: size, from: source)
                    }
                }
            }
        }

        func send(_ bytes: [UInt8], peers: [SocketAddress4]) -> (sent: UInt64, failed: UInt64) {
            var sent: UInt64 = 0, failed: UInt64 = 0
            for uplink in sockets.uplinks {
                if sockets.send(bytes, from: uplink.fd, to: sockets.group) == nil { sent += 1 } else { failed += 1 }
            }
            for peer in peers {
                if sockets.send(bytes, from: sockets.unicast, to: peer) == nil { sent += 1 } else { failed += 1 }
            }
            return (sent, failed)
        }
    }

    /// Announces if due and expires sites. Returns the datagram to send (if due) and the poll timeout in
    /// ms, or nil when the service is stopping.
    fileprivate func plan(now: ContinuousClock.Instant) -> (announcement: [UInt8]?, timeout: Int32)? {
        let wall = Date()
        let planned = state.withLock { state -> (announcement: [UInt8]?, timeout: Int32, expired: [MeshEvent])? in
            guard !state.stopping else { return nil }
            var bytes: [UInt8]?
            let due = state.lastAnnounce.map { now - $0 >= settings.interval } ?? true
            if state.announceNow || due {
                let announcement = Announcement(site: state.local, counter: state.counter.next(),
                                                timestampMilliseconds: UInt64(wall.timeIntervalSince1970 * 1000))
                // The description was validated by init/update, so encoding cannot fail here.
                bytes = try? codec.encode(announcement)
                state.lastAnnounce = now
                state.announceNow = false
            }
            let expired = state.table.expire(now: wall)
            var wait = settings.interval - (now - (state.lastAnnounce ?? now))
            if let next = state.table.nextExpiry {
                wait = min(wait, .milliseconds(Int64(max(0, next.timeIntervalSince(wall)) * 1000) + 1))
            }
            let (seconds, attoseconds) = max(wait, .zero).components
            let milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000)
            return (bytes, milliseconds, expired)
        }
        guard let planned else { return nil }
        for event in planned.expired {
            if case .siteExpired(let announcement) = event {
                logger.info("site expired", metadata: ["site": "\(announcement.name)", "id": "\(announcement.siteID)"])
            }
            continuation.yield(event)
        }
        return (planned.announcement, planned.timeout)
    }

    fileprivate func recordSent(_ sent: UInt64, failed: UInt64) {
        state.withLock {
            $0.statistics.datagramsSent += sent
            $0.statistics.sendErrors += failed
        }
    }

    /// Decodes, authenticates and applies one received datagram of `size` bytes (`bytes` holds at most the
    /// decoder's limit of it).
    fileprivate func handle(_ bytes: ArraySlice<UInt8>, size: Int, from source: SocketAddress4) {
        let wall = Date()
        var decoded: Announcement?
        var rejection: AnnouncementRejection?
        if size > AnnouncementCodec.maxDatagramSize {
            rejection = .oversized
        } else {
            do { decoded = try codec.decode(bytes) } catch { rejection = error }
        }
        let now = ContinuousClock.now
        let (events, logLine) = state.withLock { state -> ([MeshEvent], (AnnouncementRejection, UInt64)?) in
            state.statistics.datagramsReceived += 1
            var events: [MeshEvent] = []
            if let decoded {
                do throws(AnnouncementRejection) {
                    events = try state.table.accept(decoded, now: wall)
                    state.statistics.accepted += 1
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
                logger.info("site appeared", metadata: ["site": "\(a.name)", "id": "\(a.siteID)", "from": "\(source)"])
            case .siteChanged(_, let a):
                logger.info("site changed", metadata: ["site": "\(a.name)", "id": "\(a.siteID)"])
            case .siteExpired:
                break
            }
            continuation.yield(event)
        }
    }
}

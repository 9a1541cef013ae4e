#if canImport(Glibc)
import Glibc
#endif
import CNetfilter
import Foundation

/// A change the kernel announced on rtnetlink (links, IPv4 addresses, IPv4 routes).
public enum RouteEvent: Hashable, Sendable {
    /// RTM_NEWLINK: a link appeared or changed (flags, carrier, operational state, name).
    case link(Link)
    /// RTM_DELLINK: a link went away (or left the namespace).
    case linkRemoved(Link)
    case address(InterfaceAddress)
    case addressRemoved(InterfaceAddress)
    /// RTM_NEWROUTE / RTM_DELROUTE of a unicast IPv4 route (any table).
    case route(IPRoute)
    case routeRemoved(IPRoute)
    /// The kernel dropped notifications (ENOBUFS: we read too slowly): what was learnt from events may be
    /// stale, so read everything again.
    case overrun
}

extension RouteNetlink {
    /// The notification `m` as an event; nil for messages of other kinds or families (IPv6, multicast routes).
    public static func parseEvent(_ m: NetlinkMessage) throws(NetlinkError) -> RouteEvent? {
        switch Int32(m.type) {
        case Int32(RTM_NEWLINK): return try linkFields(m).map(RouteEvent.link)
        case Int32(RTM_DELLINK): return try linkFields(m).map(RouteEvent.linkRemoved)
        case Int32(RTM_NEWADDR): return try addressFields(m).map(RouteEvent.address)
        case Int32(RTM_DELADDR): return try addressFields(m).map(RouteEvent.addressRemoved)
        case Int32(RTM_NEWROUTE): return try routeFields(m).map(RouteEvent.route)
        case Int32(RTM_DELROUTE): return try routeFields(m).map(RouteEvent.routeRemoved)
        default: return nil
        }
    }
}

/// Listens to the kernel's rtnetlink notifications of one network namespace: links (RTNLGRP_LINK), IPv4
/// addresses (RTNLGRP_IPV4_IFADDR) and IPv4 routes (RTNLGRP_IPV4_ROUTE). No polling: one thread blocks in
/// poll(2) on the netlink socket and a wake-up pipe, and hands each datagram's events over as one batch:
/// first to `handler` on that thread (for what must not wait for a busy task pool), then to `events`.
///
/// Subscribe before reading the current state (`RouteNetlinkClient` dumps), so that no change falls between
/// the two; a `.overrun` event says notifications were lost and the state must be read again.
public final class RouteMonitor: @unchecked Sendable {
    public static let groups: [UInt32] = [RTNLGRP_LINK.rawValue, RTNLGRP_IPV4_IFADDR.rawValue, RTNLGRP_IPV4_ROUTE.rawValue]

    /// The batches of events, in the kernel's order. Finishes when `stop()` is called. Buffers the newest 256
    /// batches if nobody reads (the consumer then sees gaps: it is expected to keep up).
    public let events: AsyncStream<[RouteEvent]>
    private let continuation: AsyncStream<[RouteEvent]>.Continuation
    private let socket: NetlinkSocket
    private let wake: (read: Int32, write: Int32)
    private let lock = NSLock()
    private var started = false
    private var stopped = false

    /// Opens the socket and joins the groups now (in `netns`, or the current namespace).
    public init(netns: String? = nil) throws(NetlinkError) {
        socket = try NetlinkSocket(.route, netns: netns)
        for group in Self.groups {
            var value = group
            guard setsockopt(socket.fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &value, socklen_t(4)) == 0 else {
                throw NetlinkError(errno: errno, operation: "join rtnetlink group \(group)")
            }
        }
        var fds: [Int32] = [-1, -1]
        guard cnf_pipe_cloexec(&fds) == 0 else { throw NetlinkError(errno: errno, operation: "create a wake-up pipe") }
        wake = (fds[0], fds[1])
        (events, continuation) = AsyncStream.makeStream(of: [RouteEvent].self, bufferingPolicy: .bufferingNewest(256))
    }

    deinit {
        stop()
        close(wake.read)
        close(wake.write)
    }

    /// Starts the listening thread (once). `handler` runs on it for every batch, before the batch is
    /// published on `events`; keep it short and non-blocking.
    public func start(handler: @escaping @Sendable ([RouteEvent]) -> Void = { _ in }) {
        let first = lock.withLock {
            defer { started = true }
            return !started && !stopped
        }
        guard first else { return }
        let thread = Thread { [self] in listen(handler) }
        thread.name = "patronus rtnetlink"
        thread.start()
    }

    /// Ends the listening thread and the stream. Idempotent.
    public func stop() {
        let first = lock.withLock {
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        var byte: UInt8 = 1
        _ = write(wake.write, &byte, 1)
        if !lock.withLock({ started }) { continuation.finish() }
    }

    private func listen(_ handler: @Sendable ([RouteEvent]) -> Void) {
        var descriptors = [pollfd(fd: socket.fd, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
        defer { continuation.finish() }
        while !lock.withLock({ stopped }) {
            let ready = poll(&descriptors, 2, -1)
            if ready < 0 {
                if errno == EINTR { continue }
                usleep(10_000) // never spin on an unexpected error
                continue
            }
            if descriptors[1].revents != 0 { return }
            guard descriptors[0].revents != 0 else { continue }
            do throws(NetlinkError) {
                let datagram = try socket.receive()
                var batch: [RouteEvent] = []
                for message in try NetlinkMessage.parse(datagram) {
                    if let event = try RouteNetlink.parseEvent(message) { batch.append(event) }
                }
                if !batch.isEmpty { deliver(batch, handler) }
            } catch {
                // ENOBUFS (we fell behind), a malformed datagram (never seen from a kernel) or a transient
                // error: what it said is lost, so the consumer reads everything again.
                deliver([.overrun], handler)
            }
        }
    }

    private func deliver(_ batch: [RouteEvent], _ handler: @Sendable ([RouteEvent]) -> Void) {
        handler(batch)
        continuation.yield(batch)
    }
}

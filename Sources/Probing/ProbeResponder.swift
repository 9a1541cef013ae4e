import Foundation
import Logging
import Model

/// Answers probes on UDP 51822 (all local addresses), each reply leaving by the interface its request came in
/// on (IP_PKTINFO on receive and on sendmsg) with the request's destination as source, so a probe that came
/// through one tunnel is answered through that same tunnel even when routing would prefer another.
///
/// Every datagram is untrusted: sources outside `allowedSources` (`unknownPeer`), malformed datagrams, and
/// messages that are not requests are dropped and counted. A reply is never larger than its request, so the
/// responder cannot amplify. Cost: one socket and one thread blocked in recvmsg; ~2 syscalls per probe.
public final class ProbeResponder: @unchecked Sendable {
    public struct Configuration: Hashable, Sendable {
        public var port = Conventions.probePort
        public var bindAddress = IPv4Address(0)
        /// Requests from other sources are dropped. Default: the overlay pool, i.e. only through tunnels.
        public var allowedSources: [IPv4Prefix] = [Conventions.overlayPool]
        /// The receive thread's nice value when the kernel allows it (nil: inherit): a busy CPU should not
        /// delay replies into misses on the probing side. Under a flood it still only gets its fair share.
        public var niceness: Int32? = -10
        /// SO_MARK for replies. The daemon sets the steering layer's "pinned" mark, so its own nft chain leaves
        /// the reply alone and the incoming interface (IP_PKTINFO) decides, not the policy for the destination.
        public var replyMark: UInt32?

        public init() {}
    }

    /// What the responder did, for the status report and tests.
    public struct Statistics: Hashable, Sendable {
        public var answered: UInt64 = 0
        public var sendErrors: UInt64 = 0
        public var drops = ProbeDrops()
        /// Hold of the answered requests: kernel receive timestamp of the request to the return of the reply's
        /// sendmsg, i.e. what the responder adds to the prober's RTT (probes carry no hold field to subtract).
        public var holdTotalNanoseconds: UInt64 = 0
        public var holdMaximumNanoseconds: UInt64 = 0

        /// Mean hold per answered request, in microseconds.
        public var meanHoldMicroseconds: Double {
            answered == 0 ? 0 : Double(holdTotalNanoseconds) / Double(answered) / 1000
        }
    }

    public let configuration: Configuration
    private let socket: DatagramSocket
    private let lock = NSLock()
    private var stats = Statistics()
    private let dropLog: DropLog

    /// Opens and binds the socket now, so a port conflict is reported at start, not later. Drops are logged
    /// to `logger` at most once per 10 s.
    public init(configuration: Configuration = Configuration(),
                logger: Logger = Logger(label: "patronus.probing")) throws(ProbeSocketError) {
        self.configuration = configuration
        dropLog = DropLog(logger: logger, component: "probe responder")
        socket = try DatagramSocket(bindTo: configuration.bindAddress, port: configuration.port,
                                    mark: configuration.replyMark, packetInfo: true)
    }

    /// The bound port (useful when configured with port 0).
    public var port: UInt16 { socket.localPort }

    public var statistics: Statistics {
        lock.lock()
        defer { lock.unlock() }
        return stats
    }

    /// Answers until the calling task is cancelled; the socket is closed when it returns.
    public func run() async {
        let loop = ReceiveLoop(socket: socket, name: "probe-responder", maximumSize: ProbePacket.size,
                               niceness: configuration.niceness) { [self] datagram in handle(datagram) }
        await loop.run()
        socket.close()
    }

    private func handle(_ datagram: Datagram) {
        guard configuration.allowedSources.contains(where: { $0.contains(datagram.source.address) }) else {
            count(.unknownPeer, datagram)
            return
        }
        let request: ProbePacket
        do {
            request = try ProbePacket.decode(datagram.bytes)
        } catch {
            count(error, datagram)
            return
        }
        guard request.kind == .request else { count(.unexpectedKind, datagram); return }
        let reply = request.reply().encoded()
        let failed = datagram.interfaceIndex > 0
            ? socket.send(reply, to: datagram.source, viaInterface: datagram.interfaceIndex,
                          from: datagram.destination)
            : socket.send(reply, to: datagram.source)
        let now = MonotonicInstant.now()
        let hold = now >= datagram.receivedAt ? UInt64((now - datagram.receivedAt).nanoseconds) : 0
        lock.withLock {
            if failed == nil {
                stats.answered += 1
                stats.holdTotalNanoseconds &+= hold
                stats.holdMaximumNanoseconds = max(stats.holdMaximumNanoseconds, hold)
            } else {
                stats.sendErrors += 1
            }
        }
    }

    private func count(_ reason: ProbeRejection, _ datagram: Datagram) {
        lock.withLock { stats.drops.count(reason) }
        dropLog.dropped(reason, from: datagram.source)
    }
}

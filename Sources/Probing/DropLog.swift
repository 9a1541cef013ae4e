import Foundation
import Logging
import Model

/// Rate-limited log lines for dropped datagrams: hostile or broken peers must not be able to flood the log.
/// At most one line per `every` per component, summing what was dropped since the previous line; the
/// counters (``ProbeDrops``) stay exact.
final class DropLog: @unchecked Sendable {
    private let logger: Logger
    private let component: String
    private let every: Duration
    private let lock = NSLock()
    private var pending = ProbeDrops()
    private var lastSource: SocketAddress4?
    private var lastLine: MonotonicInstant?

    init(logger: Logger, component: String, every: Duration = .seconds(10)) {
        self.logger = logger
        self.component = component
        self.every = every
    }

    func dropped(_ reason: ProbeRejection, from source: SocketAddress4) {
        let now = MonotonicInstant.now()
        let line: (ProbeDrops, SocketAddress4)? = lock.withLock {
            pending.count(reason)
            lastSource = source
            if let lastLine, now - lastLine < every { return nil }
            lastLine = now
            defer { pending = ProbeDrops() }
            return (pending, source)
        }
        guard let (drops, source) = line else { return }
        logger.warning("\(component) dropped \(drops.total) datagram(s): \(drops); last from \(source)")
    }
}

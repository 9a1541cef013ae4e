import Foundation
import Glibc

/// Names one emulated uplink: a site's connection to one ISP.
public struct UplinkID: Hashable, Codable, Sendable, CustomStringConvertible, Comparable {
    public var site: String
    public var uplink: String
    public init(site: String, uplink: String) {
        self.site = site
        self.uplink = uplink
    }
    public var description: String { "\(site)/\(uplink)" }
    public static func < (a: UplinkID, b: UplinkID) -> Bool { (a.site, a.uplink) < (b.site, b.uplink) }
}

/// What `status` reports for one emulated uplink.
public struct EmulatedLinkStatus: Codable, Equatable, Sendable {
    public var id: UplinkID
    public var inbound: Impairment
    public var outbound: Impairment
    public var inboundCounters: PipeCounters
    public var outboundCounters: PipeCounters
}

/// The userspace WAN emulator: for each uplink, two `FramePipe`s between the site-facing veth and the
/// bridge-facing veth in the ISP namespace (see `FramePipe` for the model and `Impairment` for the
/// semantics). Used in-process by tests and by the `lab wan-emulator` daemon of `lab up`.
///
/// Cost: two threads per uplink, asleep in ppoll when idle; up to 4096 frames (8 MB address space,
/// touched only when used) held per direction.
public final class WANEmulator: @unchecked Sendable {
    private struct Link {
        let inbound: FramePipe
        let outbound: FramePipe
        let sockets: [Int32]
    }

    private let lock = NSLock()
    private var links: [UplinkID: Link] = [:]

    public init() {}

    deinit { stop() }

    /// Starts emulating `id`: frames arriving on `siteInterface` go out of `bridgeInterface` (outbound) and
    /// back (inbound), both in `namespace`. Offloads on both must already be off.
    public func addLink(_ id: UplinkID, in namespace: NetworkNamespace, siteInterface: String,
                        bridgeInterface: String) throws {
        let siteSide = try PacketSocket.open(interface: siteInterface, in: namespace)
        let bridgeSide: Int32
        do {
            bridgeSide = try PacketSocket.open(interface: bridgeInterface, in: namespace)
        } catch {
            close(siteSide)
            throw error
        }
        let link = Link(
            inbound: try FramePipe(name: "\(id) in", rx: bridgeSide, tx: siteSide),
            outbound: try FramePipe(name: "\(id) out", rx: siteSide, tx: bridgeSide),
            sockets: [siteSide, bridgeSide])
        lock.lock()
        let previous = links.updateValue(link, forKey: id)
        lock.unlock()
        if let previous { Self.stop(previous) }
        link.inbound.start()
        link.outbound.start()
    }

    /// The uplinks being emulated.
    public var uplinks: [UplinkID] {
        lock.lock()
        defer { lock.unlock() }
        return links.keys.sorted()
    }

    /// Applies `change` to the given directions of `id`; takes effect for the next frame (a cut also
    /// drops what is already queued).
    public func apply(_ change: ImpairmentChange, to id: UplinkID,
                      directions: Set<TrafficDirection> = Set(TrafficDirection.allCases)) throws(LabError) {
        try change.validate()
        guard let link = link(id) else {
            throw .invalidArgument("unknown uplink \(id): known are \(uplinks.map(\.description).joined(separator: ", "))")
        }
        for direction in directions {
            let pipe = direction == .inbound ? link.inbound : link.outbound
            pipe.set(change.applied(to: pipe.current))
        }
    }

    /// Current settings and counters of every uplink.
    public func status() -> [EmulatedLinkStatus] {
        lock.lock()
        let snapshot = links
        lock.unlock()
        return snapshot.keys.sorted().map { id in
            let link = snapshot[id]!
            return EmulatedLinkStatus(id: id, inbound: link.inbound.current, outbound: link.outbound.current,
                                      inboundCounters: link.inbound.statistics,
                                      outboundCounters: link.outbound.statistics)
        }
    }

    /// Stops every pipe and closes the sockets (so the namespaces can really go away). Idempotent.
    public func stop() {
        lock.lock()
        let all = links
        links.removeAll()
        lock.unlock()
        for link in all.values { Self.stop(link) }
    }

    private func link(_ id: UplinkID) -> Link? {
        lock.lock()
        defer { lock.unlock() }
        return links[id]
    }

    private static func stop(_ link: Link) {
        link.inbound.stop()
        link.outbound.stop()
        for fd in link.sockets { close(fd) }
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Model
import Netlink

/// The kernel objects of one shaper (docs/SHAPING.md), pure: an htb at the root of the tunnel interface,
/// class `62:1` holding the whole rate, one leaf class per band under it, each leaf with a bfifo sized in
/// milliseconds at the rate.
///
///     62:  htb default 20 (unclassified -> standard); direct queue: our bandwidth trains, unshaped
///     └─ 62:1   rate R ceil R
///        ├─ 62:10 realtime  prio 0  rate 30 % R ceil R   bfifo 10 ms at R (>= 6 kB)
///        ├─ 62:20 standard  prio 1  rate 50 % R ceil R   bfifo 50 ms at R
///        └─ 62:30 bulk      prio 2  rate 20 % R ceil R   bfifo 50 ms at R
///
/// htb serves, among the classes that have tokens of their own rate, the lowest prio first; a class over
/// its own rate borrows from 62:1, again lowest prio first. Voice (a few hundred kbit/s) never exhausts the
/// realtime class's 30 %, so a voice packet waits at most for the packet on the wire; the other bands
/// share what is left, standard ahead of bulk. Every rate counts `overhead` bytes per packet on top of
/// the inner packet, which is what the uplink carries after WireGuard.
public struct ShaperLayout: Hashable, Sendable {
    public var root: Qdisc
    public var classes: [HTBClass]
    public var leaves: [Qdisc]

    public static let major = Conventions.shaperMajor
    public static var rootHandle: TCHandle { TCHandle(major: major, minor: 0) }
    public static var rootClass: TCHandle { TCHandle(major: major, minor: Conventions.shaperRootClassMinor) }
    public static func bandClass(_ band: ShapingBand) -> TCHandle { TCHandle(major: major, minor: band.classMinor) }
    public static func leafHandle(_ band: ShapingBand) -> TCHandle {
        TCHandle(major: Conventions.shaperLeafMajorBase + band.classMinor, minor: 0)
    }

    /// Each band's share of the rate it is guaranteed before borrowing.
    public static func share(_ band: ShapingBand) -> Double {
        switch band {
        case .realtime: 0.3
        case .standard: 0.5
        case .bulk: 0.2
        }
    }

    public init(_ shaper: SteeringPlan.Shaper) {
        let bps = shaper.rateBitsPerSecond
        let overhead = shaper.overhead
        root = Qdisc(handle: Self.rootHandle, parent: .root,
                     kind: .htb(defaultClass: ShapingBand.standard.classMinor, directQueueLength: Conventions.shaperDirectQueuePackets))
        // Burst: 1 ms at the rate, at least two full packets; htb refills at this granularity.
        let quantum: UInt32 = 1_600
        let burst = UInt32(min(Double(UInt32.max), max(Double(2 * quantum), Double(bps) / 8 / 1000)))
        let full = TCRate(bitsPerSecond: bps, overhead: overhead)
        classes = [HTBClass(handle: Self.rootClass, parent: Self.rootHandle, rate: full, ceil: full, burst: burst,
                            cburst: burst, quantum: quantum, prio: 0)]
        leaves = []
        for band in ShapingBand.allCases {
            let rate = TCRate(bitsPerSecond: max(8_000, UInt64(Double(bps) * Self.share(band))), overhead: overhead)
            classes.append(HTBClass(handle: Self.bandClass(band), parent: Self.rootClass, rate: rate, ceil: full,
                                    burst: burst, cburst: burst, quantum: quantum, prio: band.prio))
            let ms = band == .realtime ? Conventions.shaperRealtimeQueueMs : Conventions.shaperQueueMs
            let bytes = UInt32(min(Double(UInt32.max), max(Double(Conventions.shaperMinimumQueueBytes), Double(bps) / 8 * ms / 1000)))
            leaves.append(Qdisc(handle: Self.leafHandle(band), parent: Self.bandClass(band), kind: .bfifo(limitBytes: bytes)))
        }
    }

    /// The band of a leaf class handle, if it is one of ours.
    public static func band(ofClass handle: TCHandle) -> ShapingBand? {
        guard handle.major == major else { return nil }
        return ShapingBand.allCases.first { $0.classMinor == handle.minor }
    }

    /// What of `layout` is missing or different in the dumps of one interface (empty: intact).
    static func differences(_ layout: ShaperLayout, qdiscs: [TCObject], classes: [TCObject]) -> [String] {
        var out: [String] = []
        guard qdiscs.contains(where: { $0.handle == rootHandle && $0.parent == .root && $0.kind == "htb" }) else {
            return ["root htb \(rootHandle) missing"]
        }
        for c in layout.classes {
            guard let k = classes.first(where: { $0.handle == c.handle && $0.kind == "htb" }) else {
                out.append("class \(c.handle) missing")
                continue
            }
            if k.rateBytesPerSecond != c.rate.bytesPerSecond || k.ceilBytesPerSecond != c.ceil.bytesPerSecond
                || k.prio != c.prio || k.overhead != c.rate.overhead
                // The kernel lists a class at the top of the htb with parent "root", not the qdisc's handle.
                || !(k.parent == c.parent || (c.parent == rootHandle && k.parent == .root)) {
                out.append("class \(c.handle) changed")
            }
        }
        for q in layout.leaves {
            guard let k = qdiscs.first(where: { $0.handle == q.handle && $0.parent == q.parent }),
                  case .bfifo(let limit) = q.kind, k.kind == "bfifo", k.limit == limit else {
                out.append("queue \(q.handle) missing or changed")
                continue
            }
        }
        return out
    }
}

/// Statistics of one shaper, read from the kernel: per band, what was sent, what waits and what was dropped.
public struct ShaperStatistics: Hashable, Sendable {
    public struct Band: Hashable, Sendable {
        public var band: ShapingBand
        public var sentBytes: UInt64
        public var sentPackets: UInt64
        /// Bytes waiting in the band's queue now.
        public var backlogBytes: UInt32
        public var queuedPackets: UInt32
        /// Packets the band's bounded queue refused since the shaper was installed.
        public var drops: UInt32
    }

    public var interface: String
    public var rateBitsPerSecond: UInt64
    public var bands: [Band]

    /// Time the packets now waiting need at the shaper's rate (all bands), in milliseconds.
    public var queueDelayMs: Double {
        guard rateBitsPerSecond > 0 else { return 0 }
        return Double(bands.reduce(0) { $0 + UInt64($1.backlogBytes) }) * 8 / Double(rateBitsPerSecond) * 1000
    }

    public var sentBytes: UInt64 { bands.reduce(0) { $0 + $1.sentBytes } }
}

/// Installs, changes in place, checks and removes the shapers of a plan, over rtnetlink. Part of `Steering`
/// (the one owner of kernel state); never fails steering: a shaper that cannot be installed is reported,
/// its interface stays unshaped, and the next apply tries again.
final class ShaperInstaller {
    private let routing: RouteNetlinkClient
    /// What we installed, by interface: the shaper and the interface index it was installed on.
    private(set) var installed: [String: (shaper: SteeringPlan.Shaper, index: Int32)] = [:]
    /// What the last plan asked for, installed or not (a tunnel that does not exist yet).
    private var wanted: [SteeringPlan.Shaper] = []

    init(routing: RouteNetlinkClient) { self.routing = routing }

    /// Makes the kernel hold exactly `shapers` (ours; other interfaces' qdiscs are never touched).
    /// A rate change replaces the classes and leaf queues in place: no qdisc is rebuilt, no packet dropped.
    func converge(_ shapers: [SteeringPlan.Shaper], changes: inout SteeringChanges) {
        self.wanted = shapers
        let wanted = Dictionary(shapers.map { ($0.interface, $0) }, uniquingKeysWith: { a, _ in a })
        for (name, old) in installed.sorted(by: { $0.key < $1.key }) where wanted[name] == nil {
            do {
                try routing.deleteRootQdisc(interface: old.index)
            } catch where error.errno == ENOENT || error.errno == ENODEV || error.errno == EINVAL {
                // Gone with its interface, or already removed.
            } catch {
                changes.shaperProblems.append("removing the shaper of \(name): \(error)")
                continue
            }
            installed[name] = nil
            changes.shapersRemoved.append(name)
        }
        for s in shapers.sorted(by: { $0.interface < $1.interface }) {
            let index: Int32
            do { index = try routing.link(named: s.interface).index } catch {
                if error.errno != ENODEV { changes.shaperProblems.append("shaper on \(s.interface): \(error)") }
                installed[s.interface] = nil
                continue // the tunnel is not up yet: shaped once it exists
            }
            if let old = installed[s.interface], old.index == index {
                if old.shaper == s { continue }
                do {
                    try update(s, index: index)
                    installed[s.interface] = (s, index)
                    changes.shaperRatesChanged.append(s.interface)
                } catch {
                    changes.shaperProblems.append("changing the shaper of \(s.interface): \(error)")
                    installed[s.interface] = nil
                }
                continue
            }
            do {
                try install(s, index: index)
                installed[s.interface] = (s, index)
                changes.shapersInstalled.append(s.interface)
            } catch {
                changes.shaperProblems.append("installing the shaper on \(s.interface): \(error)\(Self.hint(error))")
            }
        }
    }

    /// Tunnel names already checked for an earlier run's shaper (once per name and Steering).
    private var checkedForLeftovers: Set<String> = []

    /// Removes our htb (root `62:`) from those of `tunnels` (the plan's path interfaces: ours) that the plan
    /// does not shape: an earlier run (killed, or stopped before its shaper went) left it, and nothing else
    /// would take it off, so the tunnel would stay shaped at the old rate. Each tunnel name is checked once
    /// (a re-steer reads nothing): one that does not exist yet counts as checked, since an interface created
    /// later has no qdisc of an earlier run. Other interfaces are never looked at.
    func removeLeftovers(tunnels: Set<String>, changes: inout SteeringChanges) {
        let unchecked = tunnels.subtracting(checkedForLeftovers).subtracting(wanted.map(\.interface)).subtracting(installed.keys)
        guard !unchecked.isEmpty else { return }
        do {
            let links = Dictionary(try routing.links().map { ($0.name, $0.index) }, uniquingKeysWith: { a, _ in a })
            let present = unchecked.compactMap { name in links[name].map { (name, $0) } }
            let qdiscs = present.isEmpty ? [] : try routing.qdiscs()
            checkedForLeftovers.formUnion(unchecked)
            for (name, index) in present.sorted(by: { $0.0 < $1.0 }) {
                guard qdiscs.contains(where: { $0.interfaceIndex == index && $0.parent == .root && $0.handle == ShaperLayout.rootHandle && $0.kind == "htb" })
                else { continue }
                do {
                    try routing.deleteRootQdisc(interface: index)
                    changes.shapersRemoved.append(name)
                } catch where error.errno == ENOENT || error.errno == ENODEV || error.errno == EINVAL {
                } catch {
                    changes.shaperProblems.append("removing an earlier run's shaper from \(name): \(error)")
                }
            }
        } catch {
            changes.shaperProblems.append("looking for an earlier run's shapers: \(error)")
        }
    }

    private static func hint(_ error: NetlinkError) -> String {
        error.errno == ENOENT || error.errno == EOPNOTSUPP
            ? " (does this kernel have htb and bfifo, CONFIG_NET_SCH_HTB and CONFIG_NET_SCH_FIFO? The interface stays unshaped)"
            : " (the interface stays unshaped)"
    }

    /// A fresh install: our htb replaces whatever root qdisc the interface had (pfifo_fast, noqueue, or a
    /// broken copy of ours), then the classes and leaf queues, in one datagram, each acked.
    private func install(_ s: SteeringPlan.Shaper, index: Int32) throws(NetlinkError) {
        let layout = ShaperLayout(s)
        let present = try routing.qdiscs().filter { $0.interfaceIndex == index }
        if present.contains(where: { $0.parent == .root && $0.handle == ShaperLayout.rootHandle && $0.kind == "htb" }) {
            // Ours from an earlier run: adopted when intact, rebuilt otherwise.
            if ShaperLayout.differences(layout, qdiscs: present, classes: try routing.classes(interface: index)).isEmpty { return }
            try routing.deleteRootQdisc(interface: index)
        }
        var requests = [NetlinkRequest(TrafficControl.qdiscMessage(layout.root, interface: index, .replace), "add \(layout.root) on \(s.interface)")]
        requests += layout.classes.map { NetlinkRequest(TrafficControl.classMessage($0, interface: index, .add), "add \($0) on \(s.interface)") }
        requests += layout.leaves.map { NetlinkRequest(TrafficControl.qdiscMessage($0, interface: index, .add), "add \($0) on \(s.interface)") }
        try routing.trafficControl(requests)
    }

    /// A new rate: every class and leaf queue replaced in place (RTM_NEWTCLASS / RTM_NEWQDISC with
    /// NLM_F_REPLACE), in one datagram.
    private func update(_ s: SteeringPlan.Shaper, index: Int32) throws(NetlinkError) {
        let layout = ShaperLayout(s)
        var requests = layout.classes.map { NetlinkRequest(TrafficControl.classMessage($0, interface: index, .replace), "change \($0) on \(s.interface)") }
        requests += layout.leaves.map { NetlinkRequest(TrafficControl.qdiscMessage($0, interface: index, .replace), "change \($0) on \(s.interface)") }
        try routing.trafficControl(requests)
    }

    /// Interfaces whose shaper somebody changed or removed (one qdisc dump, one class dump per shaper), and
    /// what was wrong. Interfaces that went away are forgotten (their shaper went with them).
    func drifted() throws(NetlinkError) -> [String: [String]] {
        guard !wanted.isEmpty || !installed.isEmpty else { return [:] }
        // A tunnel that went away took its shaper with it; one recreated under its name (a new index) or one
        // that appeared since the plan is shaped now, quietly: neither is somebody else's change.
        let links = Dictionary(try routing.links().map { ($0.name, $0.index) }, uniquingKeysWith: { a, _ in a })
        for (name, entry) in installed where links[name] != entry.index { installed[name] = nil }
        if wanted.contains(where: { installed[$0.interface] == nil && links[$0.interface] != nil }) {
            var quiet = SteeringChanges()
            converge(wanted, changes: &quiet)
        }
        guard !installed.isEmpty else { return [:] }
        let qdiscs = try routing.qdiscs()
        var out: [String: [String]] = [:]
        for (name, entry) in installed {
            let mine = qdiscs.filter { $0.interfaceIndex == entry.index }
            let classes: [TCObject]
            do { classes = try routing.classes(interface: entry.index) } catch where error.errno == ENODEV {
                installed[name] = nil
                continue
            }
            let problems = ShaperLayout.differences(ShaperLayout(entry.shaper), qdiscs: mine, classes: classes)
            if !problems.isEmpty { out[name] = problems }
        }
        return out
    }

    /// Puts the shapers of `interfaces` back (after `drifted`).
    func repair(_ interfaces: [String], changes: inout SteeringChanges) {
        for name in interfaces { installed[name] = nil }
        converge(wanted, changes: &changes)
    }

    /// Every installed shaper's statistics (one class dump per shaper).
    func statistics() throws(NetlinkError) -> [ShaperStatistics] {
        var out: [ShaperStatistics] = []
        for (name, entry) in installed.sorted(by: { $0.key < $1.key }) {
            let classes: [TCObject]
            do { classes = try routing.classes(interface: entry.index) } catch where error.errno == ENODEV { continue }
            var bands: [ShaperStatistics.Band] = []
            for band in ShapingBand.allCases {
                guard let c = classes.first(where: { $0.handle == ShaperLayout.bandClass(band) }) else { continue }
                bands.append(.init(band: band, sentBytes: c.statistics.bytes, sentPackets: c.statistics.packets,
                                   backlogBytes: c.statistics.backlog, queuedPackets: c.statistics.queueLength,
                                   drops: c.statistics.drops))
            }
            out.append(ShaperStatistics(interface: name, rateBitsPerSecond: entry.shaper.rateBitsPerSecond, bands: bands))
        }
        return out
    }

    /// Removes every shaper we installed (stop).
    func removeAll(changes: inout SteeringChanges) { converge([], changes: &changes) }
}

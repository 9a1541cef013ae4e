#if canImport(Glibc)
import Glibc
#endif
import CNetfilter

/// A traffic-control handle `major:minor` (16 bits each), as `tc` prints it in hex ("62:10").
public struct TCHandle: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var value: UInt32

    public init(_ value: UInt32) { self.value = value }
    public init(major: UInt16, minor: UInt16) { value = UInt32(major) << 16 | UInt32(minor) }

    public var major: UInt16 { UInt16(value >> 16) }
    public var minor: UInt16 { UInt16(value & 0xffff) }
    /// TC_H_ROOT: the parent of a device's root qdisc.
    public static let root = TCHandle(0xffff_ffff)
    public static let none = TCHandle(0)
    /// TC_H_CLSACT (= TC_H_INGRESS): the parent of a device's clsact qdisc, whose handle is `ffff:`.
    public static let clsact = TCHandle(0xffff_fff1)
    public static let clsactHandle = TCHandle(major: 0xffff, minor: 0)
    /// TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS): the parent of a clsact's egress filters (`tc filter ... egress`).
    public static let clsactEgress = TCHandle(0xffff_fff3)

    public var description: String {
        if self == .root { return "root" }
        return String(major, radix: 16) + ":" + (minor == 0 ? "" : String(minor, radix: 16))
    }

    public static func < (a: TCHandle, b: TCHandle) -> Bool { a.value < b.value }
}

/// A rate with its per-packet overhead, as the kernel's `struct tc_ratespec` carries it. The linklayer is
/// always ethernet: with a linklayer set, the kernel computes transmission times itself
/// (`psched_ratecfg_precompute`) and needs no rate table, so we send none (tc sends one for old kernels).
public struct TCRate: Hashable, Sendable, CustomStringConvertible {
    /// Bytes per second (tc's unit; `rate 20mbit` is 2,500,000).
    public var bytesPerSecond: UInt64
    /// Bytes added to every packet's length before its transmission time is computed (`overhead N`):
    /// encapsulation and framing the qdisc does not see.
    public var overhead: UInt16

    public init(bytesPerSecond: UInt64, overhead: UInt16 = 0) {
        self.bytesPerSecond = bytesPerSecond
        self.overhead = overhead
    }

    public init(bitsPerSecond: UInt64, overhead: UInt16 = 0) {
        self.init(bytesPerSecond: bitsPerSecond / 8, overhead: overhead)
    }

    public var bitsPerSecond: UInt64 { bytesPerSecond * 8 }
    /// Above this many bytes per second `tc_ratespec.rate` (32 bits) saturates and TCA_HTB_RATE64/CEIL64
    /// carry the rate (34.4 Gbit/s).
    public static let rate32Limit: UInt64 = 1 << 32

    /// struct tc_ratespec: cell_log, linklayer, overhead, cell_align, mpu, rate. cell_log 3 and cell_align -1
    /// are what tc writes for the default 2048-byte MTU; the kernel ignores them without a rate table.
    var ratespec: [UInt8] {
        var b: [UInt8] = [3, UInt8(TC_LINKLAYER_ETHERNET.rawValue)]
        b.appendHost(overhead)
        b.appendHost(UInt16(0xffff)) // cell_align -1
        b.appendHost(UInt16(0)) // mpu
        b.appendHost(UInt32(min(bytesPerSecond, Self.rate32Limit - 1)))
        return b
    }

    public var description: String { "\(bitsPerSecond) bit/s overhead \(overhead)" }
}

/// One htb class (`tc class ... htb rate R ceil C burst B cburst CB quantum Q prio P`).
public struct HTBClass: Hashable, Sendable, CustomStringConvertible {
    public var handle: TCHandle
    public var parent: TCHandle
    public var rate: TCRate
    public var ceil: TCRate
    /// Bytes that may leave at full link speed when the class has saved up tokens (`burst`, `cburst`).
    public var burst: UInt32
    public var cburst: UInt32
    /// Bytes served per round among classes of the same priority (at least an MTU).
    public var quantum: UInt32
    /// 0 (first) ... 7: among classes that may send, the lowest number is served first.
    public var prio: UInt32

    public init(handle: TCHandle, parent: TCHandle, rate: TCRate, ceil: TCRate, burst: UInt32, cburst: UInt32,
                quantum: UInt32, prio: UInt32) {
        self.handle = handle
        self.parent = parent
        self.rate = rate
        self.ceil = ceil
        self.burst = burst
        self.cburst = cburst
        self.quantum = quantum
        self.prio = prio
    }

    public var description: String {
        "class htb \(handle) parent \(parent) rate \(rate.bitsPerSecond)bit ceil \(ceil.bitsPerSecond)bit burst \(burst) cburst \(cburst) prio \(prio) overhead \(rate.overhead)"
    }
}

/// A qdisc we install: htb at the root of a device, or a byte-limited FIFO under an htb leaf class.
public enum QdiscKind: Hashable, Sendable {
    /// `htb default D r2q 10 direct_qlen N`: unclassified packets go to class `major:D`.
    case htb(defaultClass: UInt16, directQueueLength: UInt32)
    /// `bfifo limit BYTES`.
    case bfifo(limitBytes: UInt32)
    /// `clsact`: no queue, the attachment point of a device's ingress and egress filters (handle `ffff:`,
    /// parent `TCHandle.clsact`).
    case clsact

    public var name: String {
        switch self {
        case .htb: "htb"
        case .bfifo: "bfifo"
        case .clsact: "clsact"
        }
    }
}

public struct Qdisc: Hashable, Sendable, CustomStringConvertible {
    public var handle: TCHandle
    public var parent: TCHandle
    public var kind: QdiscKind

    public init(handle: TCHandle, parent: TCHandle, kind: QdiscKind) {
        self.handle = handle
        self.parent = parent
        self.kind = kind
    }

    public var description: String {
        switch kind {
        case .htb(let d, let q): "qdisc htb \(handle) \(parent == .root ? "root" : "parent \(parent)") default \(String(d, radix: 16)) direct_qlen \(q)"
        case .bfifo(let limit): "qdisc bfifo \(handle) parent \(parent) limit \(limit)"
        case .clsact: "qdisc clsact"
        }
    }
}

/// A qdisc or class as a dump lists it: identity, kind, the htb parameters we compare, and the statistics.
public struct TCObject: Hashable, Sendable {
    public var interfaceIndex: Int32
    public var handle: TCHandle
    public var parent: TCHandle
    public var kind: String
    /// htb classes: rate, ceil and prio as the kernel holds them (rates in bytes per second, 64-bit).
    public var rateBytesPerSecond: UInt64?
    public var ceilBytesPerSecond: UInt64?
    public var overhead: UInt16?
    public var prio: UInt32?
    /// bfifo/pfifo: the limit.
    public var limit: UInt32?
    public var statistics: TCStatistics
}

/// gnet_stats_basic + gnet_stats_queue of one qdisc or class (TCA_STATS2).
public struct TCStatistics: Hashable, Sendable {
    public var bytes: UInt64 = 0
    public var packets: UInt64 = 0
    public var queueLength: UInt32 = 0
    /// Bytes waiting.
    public var backlog: UInt32 = 0
    public var drops: UInt32 = 0
    public var overlimits: UInt32 = 0

    public init() {}
}

/// Message builders and parsers for traffic control over rtnetlink (RTM_*QDISC, RTM_*TCLASS). Pure, so
/// each message is golden-tested against what `tc` (iproute2 6.1) sends; `RouteNetlinkClient` sends them.
public enum TrafficControl {
    public enum Verb: Sendable {
        /// NLM_F_CREATE|NLM_F_EXCL: fails if it exists.
        case add
        /// NLM_F_CREATE|NLM_F_REPLACE: creates, or changes in place (an htb class keeps its queue).
        case replace
    }

    /// struct tcmsg: family, 3 pad bytes, ifindex, handle, parent, info.
    static func tcmsg(interface: Int32, handle: TCHandle, parent: TCHandle) -> [UInt8] {
        var p: [UInt8] = [UInt8(AF_UNSPEC), 0, 0, 0]
        p.appendHost(interface)
        p.appendHost(handle.value)
        p.appendHost(parent.value)
        p.appendHost(UInt32(0))
        return p
    }

    static func flags(_ verb: Verb) -> UInt16 {
        verb == .add ? NetlinkFlag.create | NetlinkFlag.exclusive : NetlinkFlag.create | NetlinkFlag.replace
    }

    /// RTM_NEWQDISC, attributes as tc sends them: TCA_KIND, TCA_OPTIONS.
    public static func qdiscMessage(_ q: Qdisc, interface: Int32, _ verb: Verb) -> NetlinkMessage {
        var a = AttributeWriter()
        a.putString(t(TCA_KIND), q.kind.name)
        switch q.kind {
        case .htb(let defaultClass, let directQueueLength):
            a.plainNested(t(TCA_OPTIONS)) { o in
                // struct tc_htb_glob: version 3, rate2quantum 10, defcls, debug 0, direct_pkts 0.
                var glob: [UInt8] = []
                glob.appendHost(UInt32(TC_HTB_PROTOVER))
                glob.appendHost(UInt32(10))
                glob.appendHost(UInt32(defaultClass))
                glob.appendHost(UInt32(0))
                glob.appendHost(UInt32(0))
                o.put(t(TCA_HTB_INIT), glob)
                o.putHostU32(t(TCA_HTB_DIRECT_QLEN), directQueueLength)
            }
        case .bfifo(let limit):
            a.put(t(TCA_OPTIONS), limit.hostBytes) // struct tc_fifo_qopt, not nested
        case .clsact:
            break // no options
        }
        return NetlinkMessage(type: UInt16(RTM_NEWQDISC), flags: flags(verb),
                              payload: tcmsg(interface: interface, handle: q.handle, parent: q.parent) + a.bytes)
    }

    /// RTM_DELQDISC of a device's root qdisc (`tc qdisc del dev X root`): its classes and children go with it.
    public static func deleteRootQdiscMessage(interface: Int32) -> NetlinkMessage {
        NetlinkMessage(type: UInt16(RTM_DELQDISC), flags: 0, payload: tcmsg(interface: interface, handle: .none, parent: .root))
    }

    /// RTM_DELQDISC of a device's clsact (`tc qdisc del dev X clsact`): its filters go with it.
    public static func deleteClsactMessage(interface: Int32) -> NetlinkMessage {
        var a = AttributeWriter()
        a.putString(t(TCA_KIND), QdiscKind.clsact.name)
        return NetlinkMessage(type: UInt16(RTM_DELQDISC), flags: 0,
                              payload: tcmsg(interface: interface, handle: .clsactHandle, parent: .clsact) + a.bytes)
    }

    /// RTM_NEWTCLASS for an htb class: TCA_KIND "htb", TCA_OPTIONS { TCA_HTB_PARMS [, TCA_HTB_RATE64,
    /// TCA_HTB_CEIL64] }. No rate tables: the ratespecs carry the ethernet linklayer.
    public static func classMessage(_ c: HTBClass, interface: Int32, _ verb: Verb) -> NetlinkMessage {
        var a = AttributeWriter()
        a.putString(t(TCA_KIND), "htb")
        a.plainNested(t(TCA_OPTIONS)) { o in
            if c.rate.bytesPerSecond >= TCRate.rate32Limit { o.put(t(TCA_HTB_RATE64), c.rate.bytesPerSecond.hostBytes) }
            if c.ceil.bytesPerSecond >= TCRate.rate32Limit { o.put(t(TCA_HTB_CEIL64), c.ceil.bytesPerSecond.hostBytes) }
            var parms = c.rate.ratespec + c.ceil.ratespec
            parms.appendHost(ticks(bytes: c.burst, rate: c.rate.bytesPerSecond))
            parms.appendHost(ticks(bytes: c.cburst, rate: c.ceil.bytesPerSecond))
            parms.appendHost(c.quantum)
            parms.appendHost(UInt32(0)) // level (out only)
            parms.appendHost(c.prio)
            o.put(t(TCA_HTB_PARMS), parms)
        }
        return NetlinkMessage(type: UInt16(RTM_NEWTCLASS), flags: flags(verb),
                              payload: tcmsg(interface: interface, handle: c.handle, parent: c.parent) + a.bytes)
    }

    /// The time `bytes` take at `rate`, in the kernel's psched ticks (64 ns: PSCHED_SHIFT 6), as tc's
    /// `tc_calc_xmittime` computes htb's buffer and cbuffer. Saturates at UInt32.max.
    public static func ticks(bytes: UInt32, rate: UInt64) -> UInt32 {
        guard rate > 0 else { return UInt32.max }
        let ns = Double(bytes) / Double(rate) * 1e9
        return UInt32(min(Double(UInt32.max), (ns / 64).rounded(.down)))
    }

    /// RTM_GETQDISC / RTM_GETTCLASS dump requests; a class dump needs the device.
    public static func listQdiscsMessage() -> NetlinkMessage {
        NetlinkMessage(type: UInt16(RTM_GETQDISC), flags: 0, payload: tcmsg(interface: 0, handle: .none, parent: .none))
    }

    public static func listClassesMessage(interface: Int32) -> NetlinkMessage {
        NetlinkMessage(type: UInt16(RTM_GETTCLASS), flags: 0, payload: tcmsg(interface: interface, handle: .none, parent: .none))
    }

    /// One RTM_NEWQDISC or RTM_NEWTCLASS dump entry.
    public static func parse(_ m: NetlinkMessage) throws(NetlinkError) -> TCObject? {
        guard m.type == UInt16(RTM_NEWQDISC) || m.type == UInt16(RTM_NEWTCLASS), m.payload.count >= 20 else { return nil }
        let p = m.payload
        let attrs = try AttributeList(parsing: Array(p[20...]))
        var o = TCObject(interfaceIndex: Int32(bitPattern: p.readHostU32(at: 4)), handle: TCHandle(p.readHostU32(at: 8)),
                         parent: TCHandle(p.readHostU32(at: 12)), kind: attrs[TCA_KIND]?.string ?? "",
                         statistics: TCStatistics())
        if let options = attrs[TCA_OPTIONS] {
            if o.kind == "htb", m.type == UInt16(RTM_NEWTCLASS) {
                let nested = try options.nested()
                if let parms = nested[TCA_HTB_PARMS]?.value, parms.count >= 44 {
                    o.rateBytesPerSecond = UInt64(parms.readHostU32(at: 8))
                    o.ceilBytesPerSecond = UInt64(parms.readHostU32(at: 20))
                    o.overhead = parms.readHostU16(at: 2)
                    o.prio = parms.readHostU32(at: 40)
                }
                if let r = nested[TCA_HTB_RATE64]?.value, r.count >= 8 { o.rateBytesPerSecond = r.readHostU64(at: 0) }
                if let c = nested[TCA_HTB_CEIL64]?.value, c.count >= 8 { o.ceilBytesPerSecond = c.readHostU64(at: 0) }
            } else if o.kind == "bfifo" || o.kind == "pfifo", options.value.count >= 4 {
                o.limit = options.value.readHostU32(at: 0)
            }
        }
        if let stats = attrs[TCA_STATS2] {
            let s = try stats.nested()
            if let basic = s[TCA_STATS_BASIC]?.value, basic.count >= 12 {
                o.statistics.bytes = basic.readHostU64(at: 0)
                o.statistics.packets = UInt64(basic.readHostU32(at: 8))
            }
            if let queue = s[TCA_STATS_QUEUE]?.value, queue.count >= 20 {
                o.statistics.queueLength = queue.readHostU32(at: 0)
                o.statistics.backlog = queue.readHostU32(at: 4)
                o.statistics.drops = queue.readHostU32(at: 8)
                o.statistics.overlimits = queue.readHostU32(at: 16)
            }
        }
        return o
    }
}

extension AttributeWriter {
    /// A nested attribute without NLA_F_NESTED, as tc writes TCA_OPTIONS (the kernel accepts both).
    mutating func plainNested(_ type: UInt16, _ body: (inout AttributeWriter) -> Void) {
        var inner = AttributeWriter()
        body(&inner)
        put(type, inner.bytes)
    }
}

extension RouteNetlinkClient {
    public func qdisc(_ q: Qdisc, interface: Int32, _ verb: TrafficControl.Verb) throws(NetlinkError) {
        try connection.perform([NetlinkRequest(TrafficControl.qdiscMessage(q, interface: interface, verb), "\(verb) \(q) on interface #\(interface)")])
    }
    public func htbClass(_ c: HTBClass, interface: Int32, _ verb: TrafficControl.Verb) throws(NetlinkError) {
        try connection.perform([NetlinkRequest(TrafficControl.classMessage(c, interface: interface, verb), "\(verb) \(c) on interface #\(interface)")])
    }
    /// Several changes in one datagram, each acked (e.g. every class of one shaper at a new rate).
    public func trafficControl(_ requests: [NetlinkRequest]) throws(NetlinkError) {
        try connection.perform(requests)
    }
    public func deleteRootQdisc(interface: Int32) throws(NetlinkError) {
        try connection.perform([NetlinkRequest(TrafficControl.deleteRootQdiscMessage(interface: interface), "delete the root qdisc of interface #\(interface)")])
    }
    /// Every qdisc of every device, with statistics.
    public func qdiscs() throws(NetlinkError) -> [TCObject] {
        try connection.dump(NetlinkRequest(TrafficControl.listQdiscsMessage(), "list qdiscs")).parsed(TrafficControl.parse)
    }
    /// The classes of one device, with parameters and statistics.
    public func classes(interface: Int32) throws(NetlinkError) -> [TCObject] {
        try connection.dump(NetlinkRequest(TrafficControl.listClassesMessage(interface: interface), "list classes of interface #\(interface)"))
            .parsed(TrafficControl.parse)
    }
}

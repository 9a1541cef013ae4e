#if canImport(Glibc)
import Glibc
#endif
import CNetfilter

/// One classic BPF instruction (`struct sock_filter`: code, jt, jf, k), as cls_bpf takes a program without
/// the bpf(2) syscall (TCA_BPF_OPS).
public struct ClassicBPFInstruction: Hashable, Sendable {
    public var code: UInt16
    public var jt: UInt8
    public var jf: UInt8
    public var k: UInt32

    public init(code: UInt16, jt: UInt8 = 0, jf: UInt8 = 0, k: UInt32) {
        self.code = code
        self.jt = jt
        self.jf = jf
        self.k = k
    }

    var bytes: [UInt8] {
        var b: [UInt8] = []
        b.appendHost(code)
        b.append(jt)
        b.append(jf)
        b.appendHost(k)
        return b
    }

    // linux/filter.h and linux/bpf_common.h.
    static let ldAbsWord: UInt16 = 0x20 // BPF_LD | BPF_W | BPF_ABS
    static let andK: UInt16 = 0x54 // BPF_ALU | BPF_AND | BPF_K
    static let jeqK: UInt16 = 0x15 // BPF_JMP | BPF_JEQ | BPF_K
    static let retK: UInt16 = 0x06 // BPF_RET | BPF_K
    /// SKF_AD_OFF + SKF_AD_MARK: a load from this offset reads skb->mark.
    static let skbMark = UInt32(bitPattern: -0x1000 + 20)

    /// `mark & mask == value`: cls_bpf's verdict -1 (match, the filter's actions run) or 0 (no match).
    /// tc's bytecode for it: `5,32 0 0 4294963220,84 0 0 MASK,21 0 1 VALUE,6 0 0 4294967295,6 0 0 0`.
    public static func markEquals(_ value: UInt32, mask: UInt32) -> [ClassicBPFInstruction] {
        [ClassicBPFInstruction(code: ldAbsWord, k: skbMark),
         ClassicBPFInstruction(code: andK, k: mask),
         ClassicBPFInstruction(code: jeqK, jt: 0, jf: 1, k: value & mask),
         ClassicBPFInstruction(code: retK, k: UInt32.max),
         ClassicBPFInstruction(code: retK, k: 0)]
    }
}

/// A cls_bpf filter on a clsact hook whose match sends the packet to another device's egress
/// (`tc filter add dev X egress pref P handle H bpf bytecode '...' action mirred egress redirect dev Y`):
/// how download traffic reaches its uplink's ifb (docs/SHAPING.md).
public struct RedirectFilter: Hashable, Sendable, CustomStringConvertible {
    /// The clsact hook: `TCHandle.clsactEgress`.
    public var parent: TCHandle
    /// The filter's preference (priority): ours are told from foreign ones by it.
    public var preference: UInt16
    public var handle: UInt32
    public var program: [ClassicBPFInstruction]
    /// The device the matching packets are redirected to (its egress).
    public var target: Int32

    public init(parent: TCHandle = .clsactEgress, preference: UInt16, handle: UInt32 = 1, program: [ClassicBPFInstruction], target: Int32) {
        self.parent = parent
        self.preference = preference
        self.handle = handle
        self.program = program
        self.target = target
    }

    public var description: String { "filter egress pref \(preference) bpf (\(program.count) insns) mirred egress redirect to #\(target)" }
}

/// A filter as a dump lists it: enough to tell ours and whether it is intact.
public struct TCFilterObject: Hashable, Sendable {
    public var interfaceIndex: Int32
    public var parent: TCHandle
    public var preference: UInt16
    public var handle: UInt32
    public var kind: String
    public var program: [ClassicBPFInstruction]?
    /// The mirred action's target device, when the filter has one.
    public var redirectTarget: Int32?
}

extension TrafficControl {
    // linux/pkt_cls.h, linux/tc_act/tc_mirred.h, linux/pkt_sched.h, linux/if_ether.h, linux/rtnetlink.h.
    static let tcaBPFAct: UInt16 = 1
    static let tcaBPFOpsLength: UInt16 = 4
    static let tcaBPFOps: UInt16 = 5
    static let tcaActKind: UInt16 = 1
    static let tcaActOptions: UInt16 = 2
    static let tcaMirredParms: UInt16 = 2
    static let tcaEgressRedirect: UInt32 = 1
    static let tcActStolen: UInt32 = 4
    static let ethPAll: UInt16 = 0x0003
    static let rtmNewFilter: UInt16 = 44
    static let rtmDeleteFilter: UInt16 = 45
    static let rtmGetFilter: UInt16 = 46

    /// tcm_info of a filter: preference in the high 16 bits, the protocol (network order) in the low 16.
    static func filterInfo(preference: UInt16, protocol proto: UInt16) -> UInt32 {
        UInt32(preference) << 16 | UInt32(proto.bigEndian)
    }

    static func filterHeader(interface: Int32, handle: UInt32, parent: TCHandle, info: UInt32) -> [UInt8] {
        var p: [UInt8] = [UInt8(AF_UNSPEC), 0, 0, 0]
        p.appendHost(interface)
        p.appendHost(handle)
        p.appendHost(parent.value)
        p.appendHost(info)
        return p
    }

    /// RTM_NEWTFILTER, attributes in tc's order: TCA_KIND "bpf", TCA_OPTIONS { TCA_BPF_ACT { 1 { TCA_ACT_KIND
    /// "mirred", TCA_ACT_OPTIONS (nested flag) { TCA_MIRRED_PARMS } } }, TCA_BPF_OPS_LEN, TCA_BPF_OPS }.
    public static func filterMessage(_ f: RedirectFilter, interface: Int32, _ verb: Verb) -> NetlinkMessage {
        var a = AttributeWriter()
        a.putString(t(TCA_KIND), "bpf")
        a.plainNested(t(TCA_OPTIONS)) { o in
            o.plainNested(tcaBPFAct) { actions in
                actions.plainNested(1) { action in
                    action.putString(tcaActKind, "mirred")
                    action.plainNested(tcaActOptions | UInt16(NLA_F_NESTED)) { mirred in
                        // struct tc_mirred: index, capab, action, refcnt, bindcnt, eaction, ifindex.
                        var parms: [UInt8] = []
                        parms.appendHost(UInt32(0))
                        parms.appendHost(UInt32(0))
                        parms.appendHost(tcActStolen)
                        parms.appendHost(UInt32(0))
                        parms.appendHost(UInt32(0))
                        parms.appendHost(tcaEgressRedirect)
                        parms.appendHost(UInt32(bitPattern: f.target))
                        mirred.put(tcaMirredParms, parms)
                    }
                }
            }
            var count: [UInt8] = []
            count.appendHost(UInt16(f.program.count))
            o.put(tcaBPFOpsLength, count)
            o.put(tcaBPFOps, f.program.flatMap(\.bytes))
        }
        return NetlinkMessage(type: rtmNewFilter, flags: flags(verb),
                              payload: filterHeader(interface: interface, handle: f.handle, parent: f.parent,
                                                    info: filterInfo(preference: f.preference, protocol: ethPAll)) + a.bytes)
    }

    /// RTM_DELTFILTER of every filter at one preference (`tc filter del dev X egress pref P`).
    public static func deleteFilterMessage(interface: Int32, parent: TCHandle = .clsactEgress, preference: UInt16) -> NetlinkMessage {
        NetlinkMessage(type: rtmDeleteFilter, flags: 0,
                       payload: filterHeader(interface: interface, handle: 0, parent: parent, info: filterInfo(preference: preference, protocol: 0)))
    }

    /// RTM_GETTFILTER dump of one device's filters under `parent`.
    public static func listFiltersMessage(interface: Int32, parent: TCHandle = .clsactEgress) -> NetlinkMessage {
        NetlinkMessage(type: rtmGetFilter, flags: 0, payload: filterHeader(interface: interface, handle: 0, parent: parent, info: 0))
    }

    /// One RTM_NEWTFILTER dump entry. The kernel lists a preference's chain head (handle 0) and each filter;
    /// a bpf filter's program and its first mirred action's target are read back.
    public static func parseFilter(_ m: NetlinkMessage) throws(NetlinkError) -> TCFilterObject? {
        guard m.type == rtmNewFilter, m.payload.count >= 20 else { return nil }
        let p = m.payload
        let attrs = try AttributeList(parsing: Array(p[20...]))
        var f = TCFilterObject(interfaceIndex: Int32(bitPattern: p.readHostU32(at: 4)), parent: TCHandle(p.readHostU32(at: 12)),
                               preference: UInt16(p.readHostU32(at: 16) >> 16), handle: p.readHostU32(at: 8),
                               kind: attrs[TCA_KIND]?.string ?? "")
        guard f.kind == "bpf", let options = try attrs[TCA_OPTIONS]?.nested() else { return f }
        if let ops = options[tcaBPFOps]?.value, ops.count % 8 == 0 {
            f.program = stride(from: 0, to: ops.count, by: 8).map {
                ClassicBPFInstruction(code: ops.readHostU16(at: $0), jt: ops[$0 + 2], jf: ops[$0 + 3], k: ops.readHostU32(at: $0 + 4))
            }
        }
        if let actions = try options[tcaBPFAct]?.nested() {
            for action in actions.attributes {
                let inner = try action.nested()
                guard inner[tcaActKind]?.string == "mirred", let o = try inner[tcaActOptions]?.nested(),
                      let parms = o[tcaMirredParms]?.value, parms.count >= 28 else { continue }
                f.redirectTarget = Int32(bitPattern: parms.readHostU32(at: 24))
                break
            }
        }
        return f
    }
}

extension RouteNetlinkClient {
    public func filters(interface: Int32, parent: TCHandle = .clsactEgress) throws(NetlinkError) -> [TCFilterObject] {
        try connection.dump(NetlinkRequest(TrafficControl.listFiltersMessage(interface: interface, parent: parent),
                                           "list the filters of interface #\(interface)")).parsed(TrafficControl.parseFilter)
    }
    public func deleteFilters(interface: Int32, parent: TCHandle = .clsactEgress, preference: UInt16) throws(NetlinkError) {
        try connection.perform([NetlinkRequest(TrafficControl.deleteFilterMessage(interface: interface, parent: parent, preference: preference),
                                               "delete the filters at pref \(preference) of interface #\(interface)")])
    }
    public func deleteClsact(interface: Int32) throws(NetlinkError) {
        try connection.perform([NetlinkRequest(TrafficControl.deleteClsactMessage(interface: interface), "delete the clsact of interface #\(interface)")])
    }
}

import CNetfilter

/// nf_tables address families (NFPROTO_*).
public enum NFTFamily: UInt8, Sendable, Hashable, CustomStringConvertible {
    case inet = 1, ip = 2, arp = 3, netdev = 5, bridge = 7, ip6 = 10
    public var description: String {
        switch self {
        case .inet: "inet"
        case .ip: "ip"
        case .arp: "arp"
        case .netdev: "netdev"
        case .bridge: "bridge"
        case .ip6: "ip6"
        }
    }
}

/// A verdict, as carried in NFTA_DATA_VERDICT.
public enum NFTVerdict: Hashable, Sendable, CustomStringConvertible {
    case accept, drop, `continue`, `return`
    case jump(String)
    case goto(String)

    var code: Int32 {
        switch self {
        case .accept: Int32(NF_ACCEPT)
        case .drop: Int32(NF_DROP)
        case .continue: NFT_CONTINUE.rawValue
        case .return: NFT_RETURN.rawValue
        case .jump: NFT_JUMP.rawValue
        case .goto: NFT_GOTO.rawValue
        }
    }

    /// The chain a jump or goto names.
    var chain: String? {
        switch self {
        case .jump(let c), .goto(let c): c
        default: nil
        }
    }

    /// A verdict as the kernel reports it (NFTA_VERDICT_CODE, and the chain for jump and goto).
    init(code: Int32, chain: String) throws(NetlinkError) {
        switch code {
        case Int32(NF_ACCEPT): self = .accept
        case Int32(NF_DROP): self = .drop
        case NFT_CONTINUE.rawValue: self = .continue
        case NFT_RETURN.rawValue: self = .return
        case NFT_JUMP.rawValue: self = .jump(chain)
        case NFT_GOTO.rawValue: self = .goto(chain)
        default: throw .malformed("parse verdict", "unknown verdict code \(code)")
        }
    }

    public var description: String {
        switch self {
        case .accept: "accept"
        case .drop: "drop"
        case .continue: "continue"
        case .return: "return"
        case .jump(let c): "jump \(c)"
        case .goto(let c): "goto \(c)"
        }
    }
}

/// Data in a register, element or immediate: raw bytes (in the byte order the kernel compares) or a verdict.
public enum NFTData: Hashable, Sendable {
    case value([UInt8])
    case verdict(NFTVerdict)
}

/// A table. `userdata` holds nft's comment TLV.
public struct NFTTable: Hashable, Sendable {
    public var family: NFTFamily
    public var name: String
    public var flags: UInt32
    public var userdata: [UInt8]?

    public init(family: NFTFamily, name: String, flags: UInt32 = 0, userdata: [UInt8]? = nil) {
        self.family = family
        self.name = name
        self.flags = flags
        self.userdata = userdata
    }
}

/// A base chain's hook: where it is attached, its type ("filter", "route", "nat") and default policy.
public struct NFTHook: Hashable, Sendable {
    public var hook: UInt32
    public var priority: Int32
    public var type: String
    public var policy: UInt32

    public init(hook: UInt32, priority: Int32, type: String, policy: UInt32 = UInt32(NF_ACCEPT)) {
        self.hook = hook
        self.priority = priority
        self.type = type
        self.policy = policy
    }

    public static let prerouting = UInt32(NF_INET_PRE_ROUTING.rawValue)
    public static let output = UInt32(NF_INET_LOCAL_OUT.rawValue)
    public static let postrouting = UInt32(NF_INET_POST_ROUTING.rawValue)
    public static let forward = UInt32(NF_INET_FORWARD.rawValue)
    /// NF_IP_PRI_FILTER (nft's `priority filter`).
    public static let filterPriority: Int32 = 0
    /// NF_IP_PRI_MANGLE: after conntrack, before the routing decision.
    public static let manglePriority: Int32 = -150
}

public struct NFTChain: Hashable, Sendable {
    public var family: NFTFamily
    public var table: String
    public var name: String
    public var hook: NFTHook?
    public var userdata: [UInt8]?

    public init(family: NFTFamily, table: String, name: String, hook: NFTHook? = nil, userdata: [UInt8]? = nil) {
        self.family = family
        self.table = table
        self.name = name
        self.hook = hook
        self.userdata = userdata
    }
}

/// nft's data types (nftables src/datatype.h `enum datatypes`), as carried in NFTA_SET_KEY_TYPE and
/// NFTA_SET_DATA_TYPE. The kernel only stores them; nft uses them to print keys. A concatenation packs
/// its fields' types 6 bits each, the first field highest (`ipv4_addr . mark` = 7 << 6 | 19).
public enum NFTDataType: Hashable, Sendable, CustomStringConvertible {
    case ipv4Address
    case inetProtocol
    case inetService
    case mark
    case dscp
    /// An htb class id (`meta priority`, nft's `classid`).
    case classID
    /// An interface name (nftables' TYPE_IFNAME): 16 bytes, IFNAMSIZ, zero padded.
    case ifname
    /// NFT_DATA_VERDICT: a verdict map's data.
    case verdict
    case concatenation([NFTDataType])
    /// A type we do not name (from someone else's set).
    case other(UInt32)

    static let fieldBits: UInt32 = 6 // nftables' TYPE_BITS

    public var rawValue: UInt32 {
        switch self {
        case .ipv4Address: 7
        case .inetProtocol: 12
        case .inetService: 13
        case .mark: 19
        case .dscp: 36
        case .classID: 23
        case .ifname: 41
        case .verdict: 0xffff_ff00
        case .concatenation(let fields): fields.reduce(0) { $0 << Self.fieldBits | $1.rawValue }
        case .other(let v): v
        }
    }

    public init(rawValue: UInt32) {
        if let basic = Self.basic(rawValue) { self = basic; return }
        // A concatenation: every 6-bit field must be a type we name, else keep the number.
        var fields: [NFTDataType] = []
        var v = rawValue
        while v != 0 {
            guard let f = Self.basic(v & (1 << Self.fieldBits - 1)) else { self = .other(rawValue); return }
            fields.insert(f, at: 0)
            v >>= Self.fieldBits
        }
        self = fields.count > 1 ? .concatenation(fields) : .other(rawValue)
    }

    private static func basic(_ v: UInt32) -> NFTDataType? {
        switch v {
        case 7: .ipv4Address
        case 12: .inetProtocol
        case 13: .inetService
        case 19: .mark
        case 36: .dscp
        case 23: .classID
        case 41: .ifname
        case 0xffff_ff00: .verdict
        default: nil
        }
    }

    // Identity is the number the kernel stores (so `.concatenation([.mark])` equals `.mark`).
    public static func == (a: NFTDataType, b: NFTDataType) -> Bool { a.rawValue == b.rawValue }
    public func hash(into h: inout Hasher) { h.combine(rawValue) }

    public var description: String {
        switch self {
        case .ipv4Address: "ipv4_addr"
        case .inetProtocol: "inet_proto"
        case .inetService: "inet_service"
        case .mark: "mark"
        case .dscp: "dscp"
        case .classID: "classid"
        case .ifname: "ifname"
        case .verdict: "verdict"
        case .concatenation(let fields): fields.map(\.description).joined(separator: " . ")
        case .other(let v): "type \(v)"
        }
    }
}

/// A named set or map. For concatenated keys, `fieldLengths` lists each field's length in bytes (the
/// kernel needs them to pick the pipapo backend for concatenated intervals).
public struct NFTSet: Hashable, Sendable {
    public var family: NFTFamily
    public var table: String
    public var name: String
    public var flags: UInt32
    public var keyType: NFTDataType
    public var keyLength: UInt32
    public var dataType: NFTDataType?
    public var dataLength: UInt32?
    public var fieldLengths: [UInt32]
    public var userdata: [UInt8]?
    /// Batch-local id so rules in the same batch can reference a set created in it.
    public var id: UInt32?
    /// A dynamic set's default element timeout (NFTA_SET_TIMEOUT, ms) and its size limit (NFTA_SET_DESC_SIZE).
    public var timeoutMs: UInt64?
    public var size: UInt32?

    public init(family: NFTFamily, table: String, name: String, flags: UInt32, keyType: NFTDataType, keyLength: UInt32,
                dataType: NFTDataType? = nil, dataLength: UInt32? = nil, fieldLengths: [UInt32] = [],
                userdata: [UInt8]? = nil, id: UInt32? = nil, timeoutMs: UInt64? = nil, size: UInt32? = nil) {
        self.timeoutMs = timeoutMs
        self.size = size
        self.family = family
        self.table = table
        self.name = name
        self.flags = flags
        self.keyType = keyType
        self.keyLength = keyLength
        self.dataType = dataType
        self.dataLength = dataLength
        self.fieldLengths = fieldLengths
        self.userdata = userdata
        self.id = id
    }

    public static let flagConstant = UInt32(NFT_SET_CONSTANT.rawValue)
    public static let flagInterval = UInt32(NFT_SET_INTERVAL.rawValue)
    public static let flagMap = UInt32(NFT_SET_MAP.rawValue)
    public static let flagConcat = UInt32(NFT_SET_CONCAT.rawValue)
    /// Elements expire (`flags timeout`).
    public static let flagTimeout = UInt32(NFT_SET_TIMEOUT.rawValue)
    /// Rules may add elements (`flags dynamic`).
    public static let flagDynamic = UInt32(NFT_SET_EVAL.rawValue)
    public static let verdictDataType = NFTDataType.verdict

    /// Identity ignoring the batch id (which the kernel does not report back).
    public var definition: NFTSet { var s = self; s.id = nil; return s }
}

/// One set element: key (and key end for concatenated ranges), optional data for maps.
public struct NFTElement: Hashable, Sendable {
    public var key: [UInt8]
    public var keyEnd: [UInt8]?
    public var data: NFTData?
    public var flags: UInt32

    /// NFT_SET_ELEM_INTERVAL_END: this element closes an interval (rbtree sets).
    public static let flagIntervalEnd = UInt32(NFT_SET_ELEM_INTERVAL_END.rawValue)

    public init(key: [UInt8], keyEnd: [UInt8]? = nil, data: NFTData? = nil, flags: UInt32 = 0) {
        self.key = key
        self.keyEnd = keyEnd
        self.data = data
        self.flags = flags
    }
}

/// A rule: an ordered list of expressions (the kernel's register machine) plus userdata (comment).
public struct NFTRule: Hashable, Sendable {
    public var family: NFTFamily
    public var table: String
    public var chain: String
    public var expressions: [NFTExpression]
    public var userdata: [UInt8]?
    /// Set by the kernel; nil for a rule we are about to add.
    public var handle: UInt64?

    public init(family: NFTFamily, table: String, chain: String, expressions: [NFTExpression],
                userdata: [UInt8]? = nil, handle: UInt64? = nil) {
        self.family = family
        self.table = table
        self.chain = chain
        self.expressions = expressions
        self.userdata = userdata
        self.handle = handle
    }
}

/// nft's userdata TLVs (u8 type, u8 length, value), written and read by libnftnl's nftnl_udata. nft keeps
/// comments and set metadata there; the kernel only stores them. Comments are NUL-terminated.
public enum NFTUserdata {
    /// NFTNL_UDATA_{TABLE,CHAIN,RULE}_COMMENT
    public static let commentType = UInt8(NFTNL_UDATA_RULE_COMMENT.rawValue)
    /// NFTNL_UDATA_SET_COMMENT
    public static let setCommentType = SetField.comment.rawValue

    /// A set's userdata fields (enum nftnl_udata_set_types).
    public enum SetField: UInt8, Sendable {
        case keyByteorder = 0, dataByteorder, mergeElements, keyTypeof, dataTypeof, expression, dataInterval, comment
    }

    /// The byte order nft prints a set's key or data in (nftables `enum byteorder`).
    public enum Byteorder: UInt32, Sendable {
        case invalid = 0, host = 1, big = 2
    }

    public static func keyByteorder(_ b: Byteorder) -> [UInt8] { u32(SetField.keyByteorder.rawValue, b.rawValue) }
    public static func dataByteorder(_ b: Byteorder) -> [UInt8] { u32(SetField.dataByteorder.rawValue, b.rawValue) }
    /// Whether a map's data are intervals.
    public static func dataInterval(_ on: Bool) -> [UInt8] { u32(SetField.dataInterval.rawValue, on ? 1 : 0) }
    public static func setField(_ field: SetField, _ value: [UInt8]) -> [UInt8] { tlv(field.rawValue, value) }

    public static func tlv(_ type: UInt8, _ value: [UInt8]) -> [UInt8] {
        let buffer = NFTNLUserdata(capacity: value.count + 2)
        buffer.put(type, value)
        return buffer.bytes
    }
    public static func comment(_ text: String, type: UInt8 = commentType) -> [UInt8] {
        // nft caps comments at 128 bytes (NFTNL_UDATA_COMMENT_MAXLEN); so do we, keeping the length byte honest.
        tlv(type, Array(text.utf8.prefix(Int(NFTNL_UDATA_COMMENT_MAXLEN) - 1)) + [0])
    }
    public static func u32(_ type: UInt8, _ value: UInt32) -> [UInt8] { tlv(type, value.hostBytes) }

    /// The TLVs in order; a truncated last one is dropped. Ours, not `nftnl_udata_parse`: libnftnl 1.2.4
    /// hands a TLV whose length runs past the end of the buffer to its callback (docs/STEERING.md).
    public static func parse(_ bytes: [UInt8]) -> [(UInt8, [UInt8])] {
        var out: [(UInt8, [UInt8])] = []
        var i = 0
        while i + 2 <= bytes.count {
            let n = Int(bytes[i + 1])
            guard i + 2 + n <= bytes.count else { break }
            out.append((bytes[i], Array(bytes[(i + 2)..<(i + 2 + n)])))
            i += 2 + n
        }
        return out
    }

    public static func comment(in bytes: [UInt8]?, type: UInt8 = commentType) -> String? {
        guard let bytes, let v = parse(bytes).first(where: { $0.0 == type })?.1 else { return nil }
        return String(decoding: v.prefix { $0 != 0 }, as: UTF8.self)
    }
}

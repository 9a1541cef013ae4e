import CNetfilter

/// Registers of the nf_tables VM (enum nft_registers): the verdict register, four 16-byte registers, and
/// sixteen 4-byte registers overlaying them (nft's debug output prints these as "reg 8" .. "reg 23").
public enum NFTRegister: UInt32, Hashable, Sendable {
    case verdict = 0
    case reg1 = 1, reg2, reg3, reg4
    case reg32_00 = 8, reg32_01, reg32_02, reg32_03, reg32_04, reg32_05, reg32_06, reg32_07
    case reg32_08, reg32_09, reg32_10, reg32_11, reg32_12, reg32_13, reg32_14, reg32_15
}

/// `meta` keys we read or write (enum nft_meta_keys).
public enum NFTMetaKey: UInt32, Hashable, Sendable {
    case length = 0, `protocol` = 1, priority = 2, mark = 3, inputInterface = 4, outputInterface = 5
    /// The input interface's name (16 bytes, IFNAMSIZ, zero padded).
    case inputInterfaceName = 6
    /// The output interface's name (16 bytes, IFNAMSIZ, zero padded); known from the forward hook on.
    case outputInterfaceName = 7
    case nfproto = 15, l4proto = 16
}

/// `ct` keys we read or write (enum nft_ct_keys).
public enum NFTCtKey: UInt32, Hashable, Sendable {
    case state = 0
    /// One byte: IP_CT_DIR_ORIGINAL (0) or IP_CT_DIR_REPLY (1).
    case direction = 1
    case status = 2
    case mark = 3
}

/// Where a `payload` offset counts from (enum nft_payload_bases).
public enum NFTPayloadBase: UInt32, Hashable, Sendable {
    case link = 0, network = 1, transport = 2
}

/// `cmp` operators (enum nft_cmp_ops).
public enum NFTCmpOp: UInt32, Hashable, Sendable {
    case eq = 0, neq, lt, lte, gt, gte
}

/// `byteorder` operations (enum nft_byteorder_ops).
public enum NFTByteorderOp: UInt32, Hashable, Sendable {
    case ntoh = 0, hton = 1
}

/// One nf_tables expression, mirroring the kernel's attributes one to one. libnftnl encodes it (see
/// `NFTNLRule`), so what we send is what `nft` sends for the same rule (golden tests).
public enum NFTExpression: Hashable, Sendable {
    case meta(key: NFTMetaKey, dreg: NFTRegister)
    case metaSet(key: NFTMetaKey, sreg: NFTRegister)
    case ct(key: NFTCtKey, dreg: NFTRegister)
    case ctSet(key: NFTCtKey, sreg: NFTRegister)
    case payload(base: NFTPayloadBase, offset: UInt32, length: UInt32, dreg: NFTRegister)
    case cmp(sreg: NFTRegister, op: NFTCmpOp, data: [UInt8])
    /// dreg = (sreg & mask) ^ xor, over `mask.count` bytes.
    case bitwise(sreg: NFTRegister, dreg: NFTRegister, mask: [UInt8], xor: [UInt8])
    /// dreg = sreg >> shift, per 32-bit word over `length` bytes.
    case shiftRight(sreg: NFTRegister, dreg: NFTRegister, length: UInt32, shift: UInt32)
    case byteorder(sreg: NFTRegister, dreg: NFTRegister, op: NFTByteorderOp, length: UInt32, size: UInt32)
    case lookup(sreg: NFTRegister, set: String, setID: UInt32?, dreg: NFTRegister?)
    case immediate(dreg: NFTRegister, data: NFTData)
    case counter
    /// jhash of `length` bytes at sreg, scaled onto `0..<modulus`, plus `offset`, into dreg.
    case jhash(sreg: NFTRegister, length: UInt32, dreg: NFTRegister, modulus: UInt32, seed: UInt32, offset: UInt32 = 0)
    /// Adds the key at sreg to a dynamic set (`add @set { key EXPR }`); timeout 0: the set's own. `element`: a
    /// stateful expression each element gets its own copy of, evaluated on every add (at most one, as nft
    /// 1.0.6 sends it): its verdict is the rule's, e.g. a `limitOver` that breaks the rule for an element's
    /// first packet and lets it go on for the next ones.
    indirect case dynsetAdd(sreg: NFTRegister, set: String, setID: UInt32?, timeoutMs: UInt64, element: NFTExpression? = nil)
    /// `limit rate over RATE/UNIT burst BURST packets`: goes on when over the rate, breaks the rule otherwise.
    case limitOver(rate: UInt64, unitSeconds: UInt64, burst: UInt32)
    /// Sends a copy of the packet to the address at `sregAddress` out of the interface whose index is at
    /// `sregDevice` (`dup to ADDR device DEV`; ip and ip6 tables only).
    case dup(sregAddress: NFTRegister, sregDevice: NFTRegister)

    public var name: String {
        switch self {
        case .meta, .metaSet: "meta"
        case .ct, .ctSet: "ct"
        case .payload: "payload"
        case .cmp: "cmp"
        case .bitwise, .shiftRight: "bitwise"
        case .byteorder: "byteorder"
        case .lookup: "lookup"
        case .immediate: "immediate"
        case .counter: "counter"
        case .jhash: "hash"
        case .dynsetAdd: "dynset"
        case .limitOver: "limit"
        case .dup: "dup"
        }
    }
}

/// Names for the constants the Steering compiler uses, so call sites read like nft.
public enum NFT {
    public static let reg1 = NFTRegister.reg1
    public static let reg32_01 = NFTRegister.reg32_01 // "reg 9" in nft's debug output
    public static let metaInputInterfaceName = NFTMetaKey.inputInterfaceName
    public static let metaOutputInterfaceName = NFTMetaKey.outputInterfaceName
    public static let verdictRegister = NFTRegister.verdict
    public static let metaMark = NFTMetaKey.mark
    public static let metaL4Proto = NFTMetaKey.l4proto
    public static let metaPriority = NFTMetaKey.priority
    public static let metaNFProto = NFTMetaKey.nfproto
    public static let ctMark = NFTCtKey.mark
    public static let ctState = NFTCtKey.state
    public static let ctDirection = NFTCtKey.direction
    public static let networkHeader = NFTPayloadBase.network
    public static let transportHeader = NFTPayloadBase.transport
    public static let eq = NFTCmpOp.eq
    public static let neq = NFTCmpOp.neq
    public static let hton = NFTByteorderOp.hton
}

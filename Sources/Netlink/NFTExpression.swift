import CNetfilter

/// Registers of the nf_tables VM. NFT_REG_VERDICT = 0; 16-byte NFT_REG_1..4; 4-byte NFT_REG32_00.. = 8...
public typealias NFTRegister = UInt32

/// One nf_tables expression, mirroring the kernel's attributes one to one so that what we send is exactly
/// what `nft --debug=netlink` prints for the same rule.
public enum NFTExpression: Hashable, Sendable {
    case meta(key: UInt32, dreg: NFTRegister)
    case metaSet(key: UInt32, sreg: NFTRegister)
    case ct(key: UInt32, dreg: NFTRegister)
    case ctSet(key: UInt32, sreg: NFTRegister)
    case payload(base: UInt32, offset: UInt32, length: UInt32, dreg: NFTRegister)
    case cmp(sreg: NFTRegister, op: UInt32, data: [UInt8])
    /// dreg = (sreg & mask) ^ xor, over `mask.count` bytes.
    case bitwise(sreg: NFTRegister, dreg: NFTRegister, mask: [UInt8], xor: [UInt8])
    /// dreg = sreg >> shift, per 32-bit word over `length` bytes.
    case shiftRight(sreg: NFTRegister, dreg: NFTRegister, length: UInt32, shift: UInt32)
    case byteorder(sreg: NFTRegister, dreg: NFTRegister, op: UInt32, length: UInt32, size: UInt32)
    case lookup(sreg: NFTRegister, set: String, setID: UInt32?, dreg: NFTRegister?)
    case immediate(dreg: NFTRegister, data: NFTData)
    case counter
    /// jhash of `length` bytes at sreg, `% modulus`, into dreg.
    case jhash(sreg: NFTRegister, length: UInt32, dreg: NFTRegister, modulus: UInt32, seed: UInt32)

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
        }
    }

    // Attribute order follows libnftnl's *_build functions (what nft sends), so golden bytes match.
    func encode(into a: inout AttributeWriter) {
        a.putString(t(NFTA_EXPR_NAME.rawValue), name)
        a.nested(t(NFTA_EXPR_DATA.rawValue)) { d in
            switch self {
            case let .meta(key, dreg):
                d.putBigU32(t(NFTA_META_KEY.rawValue), key)
                d.putBigU32(t(NFTA_META_DREG.rawValue), dreg)
            case let .metaSet(key, sreg):
                d.putBigU32(t(NFTA_META_KEY.rawValue), key)
                d.putBigU32(t(NFTA_META_SREG.rawValue), sreg)
            case let .ct(key, dreg):
                d.putBigU32(t(NFTA_CT_KEY.rawValue), key)
                d.putBigU32(t(NFTA_CT_DREG.rawValue), dreg)
            case let .ctSet(key, sreg):
                d.putBigU32(t(NFTA_CT_KEY.rawValue), key)
                d.putBigU32(t(NFTA_CT_SREG.rawValue), sreg)
            case let .payload(base, offset, length, dreg):
                d.putBigU32(t(NFTA_PAYLOAD_DREG.rawValue), dreg)
                d.putBigU32(t(NFTA_PAYLOAD_BASE.rawValue), base)
                d.putBigU32(t(NFTA_PAYLOAD_OFFSET.rawValue), offset)
                d.putBigU32(t(NFTA_PAYLOAD_LEN.rawValue), length)
            case let .cmp(sreg, op, data):
                d.putBigU32(t(NFTA_CMP_SREG.rawValue), sreg)
                d.putBigU32(t(NFTA_CMP_OP.rawValue), op)
                d.nested(t(NFTA_CMP_DATA.rawValue)) { $0.put(t(NFTA_DATA_VALUE.rawValue), data) }
            case let .bitwise(sreg, dreg, mask, xor):
                d.putBigU32(t(NFTA_BITWISE_SREG.rawValue), sreg)
                d.putBigU32(t(NFTA_BITWISE_DREG.rawValue), dreg)
                d.putBigU32(t(NFTA_BITWISE_OP.rawValue), UInt32(NFT_BITWISE_MASK_XOR.rawValue))
                d.putBigU32(t(NFTA_BITWISE_LEN.rawValue), UInt32(mask.count))
                d.nested(t(NFTA_BITWISE_MASK.rawValue)) { $0.put(t(NFTA_DATA_VALUE.rawValue), mask) }
                d.nested(t(NFTA_BITWISE_XOR.rawValue)) { $0.put(t(NFTA_DATA_VALUE.rawValue), xor) }
            case let .shiftRight(sreg, dreg, length, shift):
                d.putBigU32(t(NFTA_BITWISE_SREG.rawValue), sreg)
                d.putBigU32(t(NFTA_BITWISE_DREG.rawValue), dreg)
                d.putBigU32(t(NFTA_BITWISE_OP.rawValue), UInt32(NFT_BITWISE_RSHIFT.rawValue))
                d.putBigU32(t(NFTA_BITWISE_LEN.rawValue), length)
                d.nested(t(NFTA_BITWISE_DATA.rawValue)) { $0.put(t(NFTA_DATA_VALUE.rawValue), shift.hostBytes) }
            case let .byteorder(sreg, dreg, op, length, size):
                d.putBigU32(t(NFTA_BYTEORDER_SREG.rawValue), sreg)
                d.putBigU32(t(NFTA_BYTEORDER_DREG.rawValue), dreg)
                d.putBigU32(t(NFTA_BYTEORDER_OP.rawValue), op)
                d.putBigU32(t(NFTA_BYTEORDER_LEN.rawValue), length)
                d.putBigU32(t(NFTA_BYTEORDER_SIZE.rawValue), size)
            case let .lookup(sreg, set, setID, dreg):
                d.putBigU32(t(NFTA_LOOKUP_SREG.rawValue), sreg)
                if let dreg { d.putBigU32(t(NFTA_LOOKUP_DREG.rawValue), dreg) }
                d.putString(t(NFTA_LOOKUP_SET.rawValue), set)
                if let setID { d.putBigU32(t(NFTA_LOOKUP_SET_ID.rawValue), setID) }
            case let .immediate(dreg, data):
                d.putBigU32(t(NFTA_IMMEDIATE_DREG.rawValue), dreg)
                d.nested(t(NFTA_IMMEDIATE_DATA.rawValue)) { NFTables.encodeData(data, into: &$0) }
            case .counter:
                break // nft sends an empty counter: the kernel starts it at zero
            case let .jhash(sreg, length, dreg, modulus, seed):
                d.putBigU32(t(NFTA_HASH_SREG.rawValue), sreg)
                d.putBigU32(t(NFTA_HASH_DREG.rawValue), dreg)
                d.putBigU32(t(NFTA_HASH_LEN.rawValue), length)
                d.putBigU32(t(NFTA_HASH_MODULUS.rawValue), modulus)
                d.putBigU32(t(NFTA_HASH_SEED.rawValue), seed)
                d.putBigU32(t(NFTA_HASH_OFFSET.rawValue), 0)
                d.putBigU32(t(NFTA_HASH_TYPE.rawValue), UInt32(NFT_HASH_JENKINS.rawValue))
            }
        }
    }
}

/// Names for the constants the Steering compiler uses, so call sites read like nft.
public enum NFT {
    public static let reg1: NFTRegister = UInt32(NFT_REG_1.rawValue)
    public static let reg32_01: NFTRegister = UInt32(NFT_REG32_01.rawValue) // "reg 9" in nft's debug output
    public static let verdictRegister: NFTRegister = UInt32(NFT_REG_VERDICT.rawValue)
    public static let metaMark = UInt32(NFT_META_MARK.rawValue)
    public static let metaL4Proto = UInt32(NFT_META_L4PROTO.rawValue)
    public static let metaNFProto = UInt32(NFT_META_NFPROTO.rawValue)
    public static let ctMark = UInt32(NFT_CT_MARK.rawValue)
    public static let ctState = UInt32(NFT_CT_STATE.rawValue)
    /// One byte: IP_CT_DIR_ORIGINAL (0) or IP_CT_DIR_REPLY (1).
    public static let ctDirection = UInt32(NFT_CT_DIRECTION.rawValue)
    public static let networkHeader = UInt32(NFT_PAYLOAD_NETWORK_HEADER.rawValue)
    public static let transportHeader = UInt32(NFT_PAYLOAD_TRANSPORT_HEADER.rawValue)
    public static let eq = UInt32(NFT_CMP_EQ.rawValue)
    public static let neq = UInt32(NFT_CMP_NEQ.rawValue)
    public static let hton = UInt32(NFT_BYTEORDER_HTON.rawValue)
}

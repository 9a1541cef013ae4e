import CNetfilter

extension NFTExpression {
    /// Decodes the expressions a reader of an installed ruleset needs to follow what a rule does to a packet:
    /// `meta`/`ct` loads and stores, `bitwise` mask-and-xor, `immediate` and the jenkins `hash`. Other kinds
    /// (and forms we never emit, such as a hash with an offset) give nil: the caller sees the expression's
    /// name but not its meaning. The inverse of `encode` for those kinds, so a round trip is exact.
    public static func decode(name: String, _ d: AttributeList) -> NFTExpression? {
        func u32(_ type: UInt32) -> UInt32? { d[type]?.bigU32 }
        func data(_ type: UInt32) -> [UInt8]? { (try? d[type]?.nested())??[NFTA_DATA_VALUE.rawValue]?.value }
        switch name {
        case "meta":
            guard let key = u32(NFTA_META_KEY.rawValue) else { return nil }
            if let dreg = u32(NFTA_META_DREG.rawValue) { return .meta(key: key, dreg: dreg) }
            return u32(NFTA_META_SREG.rawValue).map { .metaSet(key: key, sreg: $0) }
        case "ct":
            guard let key = u32(NFTA_CT_KEY.rawValue) else { return nil }
            if let dreg = u32(NFTA_CT_DREG.rawValue) { return .ct(key: key, dreg: dreg) }
            return u32(NFTA_CT_SREG.rawValue).map { .ctSet(key: key, sreg: $0) }
        case "bitwise":
            guard u32(NFTA_BITWISE_OP.rawValue) ?? UInt32(NFT_BITWISE_MASK_XOR.rawValue) == UInt32(NFT_BITWISE_MASK_XOR.rawValue),
                  let sreg = u32(NFTA_BITWISE_SREG.rawValue), let dreg = u32(NFTA_BITWISE_DREG.rawValue),
                  let mask = data(NFTA_BITWISE_MASK.rawValue), let xor = data(NFTA_BITWISE_XOR.rawValue) else { return nil }
            return .bitwise(sreg: sreg, dreg: dreg, mask: mask, xor: xor)
        case "immediate":
            guard let dreg = u32(NFTA_IMMEDIATE_DREG.rawValue),
                  let list = try? d[NFTA_IMMEDIATE_DATA.rawValue]?.nested(),
                  let value = try? NFTables.parseData(list) else { return nil }
            return .immediate(dreg: dreg, data: value)
        case "hash":
            guard u32(NFTA_HASH_TYPE.rawValue) ?? UInt32(NFT_HASH_JENKINS.rawValue) == UInt32(NFT_HASH_JENKINS.rawValue),
                  (u32(NFTA_HASH_OFFSET.rawValue) ?? 0) == 0,
                  let sreg = u32(NFTA_HASH_SREG.rawValue), let dreg = u32(NFTA_HASH_DREG.rawValue),
                  let length = u32(NFTA_HASH_LEN.rawValue), let modulus = u32(NFTA_HASH_MODULUS.rawValue) else { return nil }
            return .jhash(sreg: sreg, length: length, dreg: dreg, modulus: modulus, seed: u32(NFTA_HASH_SEED.rawValue) ?? 0)
        default:
            return nil
        }
    }
}

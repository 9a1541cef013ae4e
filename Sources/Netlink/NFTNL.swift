import CNetfilter

// The bridge to libnftnl: each of our object model's values becomes a libnftnl object, which libnftnl
// encodes into a netlink message (and decodes from a dump reply). Every libnftnl pointer lives inside one
// of the final classes below, which allocates it and frees it in deinit; none leaves this file. An
// expression or set element is handed to its rule or set the moment it is made (libnftnl then owns and
// frees it with its parent).

@inline(__always) private func attr<A: RawRepresentable>(_ a: A) -> UInt16 where A.RawValue: BinaryInteger {
    UInt16(truncatingIfNeeded: a.rawValue)
}
@inline(__always) private func attr(_ a: Int) -> UInt16 { UInt16(truncatingIfNeeded: a) }

/// Bytes libnftnl may write for an attribute with `count` bytes of value (header, padding, a nest).
@inline(__always) func room(_ count: Int) -> Int { 8 + (count + 3) & ~3 }
@inline(__always) func room(_ s: String) -> Int { room(s.utf8.count + 1) }

enum NFTNL {
    /// Builds one nf_tables message: libnftnl writes header and nfgenmsg, `payload` the attributes.
    /// `capacity` must bound what libnftnl writes (it does not check): callers size it with `room`.
    static func message(_ command: UInt32, _ family: NFTFamily, flags: UInt16, capacity: Int,
                        _ payload: (UnsafeMutablePointer<nlmsghdr>) -> Void) -> NetlinkMessage {
        message(command, family: family.rawValue, flags: flags, capacity: capacity, payload)
    }

    static func message(_ command: UInt32, family: UInt8, flags: UInt16, capacity: Int,
                        _ payload: (UnsafeMutablePointer<nlmsghdr>) -> Void) -> NetlinkMessage {
        let capacity = capacity + 64 // nlmsghdr + nfgenmsg
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: capacity) { buffer -> NetlinkMessage in
            buffer.initialize(repeating: 0)
            let base = UnsafeMutableRawPointer(buffer.baseAddress!)
            let nlh = nftnl_nlmsg_build_hdr(base.assumingMemoryBound(to: CChar.self), UInt16(command),
                                            UInt16(family), flags, 0)!
            payload(nlh)
            let length = Int(nlh.pointee.nlmsg_len)
            precondition(length <= capacity, "libnftnl wrote \(length) bytes into a \(capacity)-byte message buffer")
            // NLM_F_REQUEST (which libnftnl sets) and the rest of the header are the connection's business.
            return NetlinkMessage(type: nlh.pointee.nlmsg_type, flags: nlh.pointee.nlmsg_flags & ~NetlinkFlag.request,
                                  payload: Array(UnsafeBufferPointer(rebasing: buffer[NetlinkMessage.headerLength..<length])))
        }
    }

    /// NFNL_MSG_BATCH_BEGIN / _END as libnftnl frames a batch (res_id = NFNL_SUBSYS_NFTABLES).
    static func batchMarker(begin: Bool, sequence: UInt32) -> NetlinkMessage {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 64) { buffer -> NetlinkMessage in
            buffer.initialize(repeating: 0)
            let chars = UnsafeMutableRawPointer(buffer.baseAddress!).assumingMemoryBound(to: CChar.self)
            let nlh = (begin ? nftnl_batch_begin(chars, sequence) : nftnl_batch_end(chars, sequence))!
            return NetlinkMessage(type: nlh.pointee.nlmsg_type, flags: nlh.pointee.nlmsg_flags, sequence: nlh.pointee.nlmsg_seq,
                                  payload: Array(UnsafeBufferPointer(rebasing: buffer[NetlinkMessage.headerLength..<Int(nlh.pointee.nlmsg_len)])))
        }
    }

    /// Hands a received message to a libnftnl parser (which wants the whole message, header included).
    static func decode(_ m: NetlinkMessage, _ what: String, _ parser: (UnsafePointer<nlmsghdr>) -> Int32) throws(NetlinkError) {
        guard m.payload.count >= 4 else { throw .malformed("parse nf_tables \(what)", "\(m.payload.count)-byte reply has no nfgenmsg") }
        let rc = m.encoded().withUnsafeBytes { parser($0.baseAddress!.assumingMemoryBound(to: nlmsghdr.self)) }
        guard rc >= 0 else { throw .malformed("parse nf_tables \(what)", "libnftnl rejected a \(m.payload.count)-byte reply") }
    }

    /// A libnftnl string attribute ("" when unset).
    static func string(_ pointer: UnsafePointer<CChar>?) -> String { pointer.map { String(cString: $0) } ?? "" }

    static func bytes(_ pointer: UnsafeRawPointer?, _ length: UInt32) -> [UInt8] {
        guard let pointer, length > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: Int(length)))
    }
}

// MARK: tables

final class NFTNLTable {
    private let t: OpaquePointer

    init() { t = nftnl_table_alloc() }
    deinit { nftnl_table_free(t) }

    convenience init(_ table: NFTTable) {
        self.init()
        nftnl_table_set_str(t, attr(NFTNL_TABLE_NAME), table.name)
        nftnl_table_set_u32(t, attr(NFTNL_TABLE_FLAGS), table.flags)
        if let u = table.userdata { u.withUnsafeBytes { _ = nftnl_table_set_data(t, attr(NFTNL_TABLE_USERDATA), $0.baseAddress, UInt32($0.count)) } }
    }

    convenience init(name: String) {
        self.init()
        nftnl_table_set_str(t, attr(NFTNL_TABLE_NAME), name)
    }

    func message(_ command: nf_tables_msg_types, _ family: NFTFamily, flags: UInt16, capacity: Int) -> NetlinkMessage {
        NFTNL.message(command.rawValue, family, flags: flags, capacity: capacity) { nftnl_table_nlmsg_build_payload($0, t) }
    }

    /// Decodes one NFT_MSG_NEWTABLE of a dump; nil if libnftnl rejects it.
    static func parse(_ m: NetlinkMessage) throws(NetlinkError) -> NFTTable? {
        let o = NFTNLTable()
        try NFTNL.decode(m, "table") { nftnl_table_nlmsg_parse($0, o.t) }
        guard let family = NFTFamily(rawValue: UInt8(truncatingIfNeeded: nftnl_table_get_u32(o.t, attr(NFTNL_TABLE_FAMILY)))) else { return nil }
        var userdata: [UInt8]?
        if nftnl_table_is_set(o.t, attr(NFTNL_TABLE_USERDATA)) {
            var length: UInt32 = 0
            userdata = NFTNL.bytes(nftnl_table_get_data(o.t, attr(NFTNL_TABLE_USERDATA), &length), length)
        }
        return NFTTable(family: family, name: NFTNL.string(nftnl_table_get_str(o.t, attr(NFTNL_TABLE_NAME))),
                        flags: nftnl_table_get_u32(o.t, attr(NFTNL_TABLE_FLAGS)), userdata: userdata)
    }
}

// MARK: chains

final class NFTNLChain {
    private let c: OpaquePointer

    init() { c = nftnl_chain_alloc() }
    deinit { nftnl_chain_free(c) }

    convenience init(table: String, name: String?) {
        self.init()
        nftnl_chain_set_str(c, attr(NFTNL_CHAIN_TABLE), table)
        if let name { nftnl_chain_set_str(c, attr(NFTNL_CHAIN_NAME), name) }
    }

    convenience init(_ chain: NFTChain) {
        self.init(table: chain.table, name: chain.name)
        if let hook = chain.hook {
            nftnl_chain_set_u32(c, attr(NFTNL_CHAIN_HOOKNUM), hook.hook)
            nftnl_chain_set_s32(c, attr(NFTNL_CHAIN_PRIO), hook.priority)
            nftnl_chain_set_str(c, attr(NFTNL_CHAIN_TYPE), hook.type)
            nftnl_chain_set_u32(c, attr(NFTNL_CHAIN_POLICY), hook.policy)
        }
        if let u = chain.userdata { u.withUnsafeBytes { _ = nftnl_chain_set_data(c, attr(NFTNL_CHAIN_USERDATA), $0.baseAddress, UInt32($0.count)) } }
    }

    func message(_ command: nf_tables_msg_types, _ family: NFTFamily, flags: UInt16, capacity: Int) -> NetlinkMessage {
        NFTNL.message(command.rawValue, family, flags: flags, capacity: capacity) { nftnl_chain_nlmsg_build_payload($0, c) }
    }

    static func parse(_ m: NetlinkMessage) throws(NetlinkError) -> NFTChain? {
        let o = NFTNLChain()
        let c = o.c
        try NFTNL.decode(m, "chain") { nftnl_chain_nlmsg_parse($0, c) }
        guard let family = NFTFamily(rawValue: UInt8(truncatingIfNeeded: nftnl_chain_get_u32(c, attr(NFTNL_CHAIN_FAMILY)))) else { return nil }
        var hook: NFTHook?
        if nftnl_chain_is_set(c, attr(NFTNL_CHAIN_HOOKNUM)) {
            hook = NFTHook(hook: nftnl_chain_get_u32(c, attr(NFTNL_CHAIN_HOOKNUM)), priority: nftnl_chain_get_s32(c, attr(NFTNL_CHAIN_PRIO)),
                           type: NFTNL.string(nftnl_chain_get_str(c, attr(NFTNL_CHAIN_TYPE))),
                           policy: nftnl_chain_is_set(c, attr(NFTNL_CHAIN_POLICY)) ? nftnl_chain_get_u32(c, attr(NFTNL_CHAIN_POLICY)) : UInt32(NF_ACCEPT))
        }
        var userdata: [UInt8]?
        if nftnl_chain_is_set(c, attr(NFTNL_CHAIN_USERDATA)) {
            var length: UInt32 = 0
            userdata = NFTNL.bytes(nftnl_chain_get_data(c, attr(NFTNL_CHAIN_USERDATA), &length), length)
        }
        return NFTChain(family: family, table: NFTNL.string(nftnl_chain_get_str(c, attr(NFTNL_CHAIN_TABLE))),
                        name: NFTNL.string(nftnl_chain_get_str(c, attr(NFTNL_CHAIN_NAME))), hook: hook, userdata: userdata)
    }
}

// MARK: sets and elements

final class NFTNLSet {
    private let s: OpaquePointer
    /// Upper bound of what libnftnl writes for the elements added so far.
    private(set) var elementRoom = 0

    init() { s = nftnl_set_alloc() }
    deinit { nftnl_set_free(s) }

    convenience init(table: String, name: String?, id: UInt32? = nil) {
        self.init()
        nftnl_set_set_str(s, attr(NFTNL_SET_TABLE), table)
        if let name { nftnl_set_set_str(s, attr(NFTNL_SET_NAME), name) }
        if let id { nftnl_set_set_u32(s, attr(NFTNL_SET_ID), id) }
    }

    convenience init(_ set: NFTSet) {
        self.init(table: set.table, name: set.name)
        nftnl_set_set_u32(s, attr(NFTNL_SET_FLAGS), set.flags)
        nftnl_set_set_u32(s, attr(NFTNL_SET_KEY_TYPE), set.keyType.rawValue)
        nftnl_set_set_u32(s, attr(NFTNL_SET_KEY_LEN), set.keyLength)
        if let t = set.dataType { nftnl_set_set_u32(s, attr(NFTNL_SET_DATA_TYPE), t.rawValue) }
        if let l = set.dataLength { nftnl_set_set_u32(s, attr(NFTNL_SET_DATA_LEN), l) }
        if let id = set.id { nftnl_set_set_u32(s, attr(NFTNL_SET_ID), id) }
        if let t = set.timeoutMs { nftnl_set_set_u64(s, attr(NFTNL_SET_TIMEOUT), t) }
        if let n = set.size { nftnl_set_set_u32(s, attr(NFTNL_SET_DESC_SIZE), n) }
        if !set.fieldLengths.isEmpty {
            // libnftnl takes the field lengths as bytes, zero-terminated (at most 16 fields: NFT_REG32_COUNT).
            let fields = set.fieldLengths.prefix(15).map { UInt8(truncatingIfNeeded: $0) } + [0]
            fields.withUnsafeBytes { _ = nftnl_set_set_data(s, attr(NFTNL_SET_DESC_CONCAT), $0.baseAddress, UInt32($0.count - 1)) }
        }
        if let u = set.userdata { u.withUnsafeBytes { _ = nftnl_set_set_data(s, attr(NFTNL_SET_USERDATA), $0.baseAddress, UInt32($0.count)) } }
    }

    /// Adds elements (libnftnl owns each from here on).
    func add(_ elements: some Sequence<NFTElement>) {
        for element in elements {
            let e: OpaquePointer = nftnl_set_elem_alloc()
            if element.flags != 0 { nftnl_set_elem_set_u32(e, attr(NFTNL_SET_ELEM_FLAGS), element.flags) }
            element.key.withUnsafeBytes { _ = nftnl_set_elem_set(e, attr(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count)) }
            var bytes = 24 + room(element.key.count)
            if let end = element.keyEnd {
                end.withUnsafeBytes { _ = nftnl_set_elem_set(e, attr(NFTNL_SET_ELEM_KEY_END), $0.baseAddress, UInt32($0.count)) }
                bytes += room(end.count)
            }
            switch element.data {
            case .value(let value)?:
                value.withUnsafeBytes { _ = nftnl_set_elem_set(e, attr(NFTNL_SET_ELEM_DATA), $0.baseAddress, UInt32($0.count)) }
                bytes += 8 + room(value.count)
            case .verdict(let v)?:
                nftnl_set_elem_set_u32(e, attr(NFTNL_SET_ELEM_VERDICT), UInt32(bitPattern: v.code))
                if let chain = v.chain { nftnl_set_elem_set_str(e, attr(NFTNL_SET_ELEM_CHAIN), chain); bytes += room(chain) }
                bytes += 24
            case nil:
                break
            }
            nftnl_set_elem_add(s, e)
            elementRoom += bytes
        }
    }

    func message(_ command: nf_tables_msg_types, _ family: NFTFamily, flags: UInt16, capacity: Int) -> NetlinkMessage {
        NFTNL.message(command.rawValue, family, flags: flags, capacity: capacity) { nftnl_set_nlmsg_build_payload($0, s) }
    }

    func elementsMessage(_ command: nf_tables_msg_types, _ family: NFTFamily, flags: UInt16, capacity: Int) -> NetlinkMessage {
        NFTNL.message(command.rawValue, family, flags: flags, capacity: capacity + elementRoom) { nftnl_set_elems_nlmsg_build_payload($0, s) }
    }

    static func parse(_ m: NetlinkMessage) throws(NetlinkError) -> NFTSet? {
        let o = NFTNLSet()
        let s = o.s
        try NFTNL.decode(m, "set") { nftnl_set_nlmsg_parse($0, s) }
        guard let family = NFTFamily(rawValue: UInt8(truncatingIfNeeded: nftnl_set_get_u32(s, attr(NFTNL_SET_FAMILY)))) else { return nil }
        func u32(_ a: nftnl_set_attr) -> UInt32? { nftnl_set_is_set(s, attr(a)) ? nftnl_set_get_u32(s, attr(a)) : nil }
        var fields: [UInt32] = []
        if nftnl_set_is_set(s, attr(NFTNL_SET_DESC_CONCAT)) {
            var count: UInt32 = 0
            fields = NFTNL.bytes(nftnl_set_get_data(s, attr(NFTNL_SET_DESC_CONCAT), &count), count).map(UInt32.init)
        }
        var userdata: [UInt8]?
        if nftnl_set_is_set(s, attr(NFTNL_SET_USERDATA)) {
            var length: UInt32 = 0
            userdata = NFTNL.bytes(nftnl_set_get_data(s, attr(NFTNL_SET_USERDATA), &length), length)
        }
        return NFTSet(family: family, table: NFTNL.string(nftnl_set_get_str(s, attr(NFTNL_SET_TABLE))),
                      name: NFTNL.string(nftnl_set_get_str(s, attr(NFTNL_SET_NAME))), flags: u32(NFTNL_SET_FLAGS) ?? 0,
                      keyType: NFTDataType(rawValue: u32(NFTNL_SET_KEY_TYPE) ?? 0), keyLength: u32(NFTNL_SET_KEY_LEN) ?? 0,
                      dataType: u32(NFTNL_SET_DATA_TYPE).map(NFTDataType.init(rawValue:)), dataLength: u32(NFTNL_SET_DATA_LEN),
                      fieldLengths: fields, userdata: userdata,
                      timeoutMs: nftnl_set_is_set(s, attr(NFTNL_SET_TIMEOUT)) ? nftnl_set_get_u64(s, attr(NFTNL_SET_TIMEOUT)) : nil,
                      size: u32(NFTNL_SET_DESC_SIZE))
    }

    /// Decodes one NFT_MSG_NEWSETELEM of a dump into its elements.
    static func parseElements(_ m: NetlinkMessage) throws(NetlinkError) -> [NFTElement] {
        let o = NFTNLSet()
        let s = o.s
        try NFTNL.decode(m, "set elements") { nftnl_set_elems_nlmsg_parse($0, s) }
        guard let iterator = nftnl_set_elems_iter_create(s) else { return [] }
        defer { nftnl_set_elems_iter_destroy(iterator) }
        var out: [NFTElement] = []
        var next = nftnl_set_elems_iter_next(iterator)
        while let e = next {
            next = nftnl_set_elems_iter_next(iterator)
            func data(_ a: Int) -> [UInt8]? {
                guard nftnl_set_elem_is_set(e, attr(a)) else { return nil }
                var length: UInt32 = 0
                return NFTNL.bytes(nftnl_set_elem_get(e, attr(a), &length), length)
            }
            guard let key = data(NFTNL_SET_ELEM_KEY) else { continue }
            var value: NFTData?
            if nftnl_set_elem_is_set(e, attr(NFTNL_SET_ELEM_VERDICT)) {
                let chain = NFTNL.string(nftnl_set_elem_get_str(e, attr(NFTNL_SET_ELEM_CHAIN)))
                value = .verdict(try NFTVerdict(code: Int32(bitPattern: nftnl_set_elem_get_u32(e, attr(NFTNL_SET_ELEM_VERDICT))), chain: chain))
            } else if let d = data(NFTNL_SET_ELEM_DATA) {
                value = .value(d)
            }
            let flags = nftnl_set_elem_is_set(e, attr(NFTNL_SET_ELEM_FLAGS)) ? nftnl_set_elem_get_u32(e, attr(NFTNL_SET_ELEM_FLAGS)) : 0
            out.append(NFTElement(key: key, keyEnd: data(NFTNL_SET_ELEM_KEY_END), data: value, flags: flags))
        }
        return out
    }
}

// MARK: rules and expressions

final class NFTNLRule {
    private let r: OpaquePointer
    /// Upper bound of what libnftnl writes for the expressions added so far.
    private(set) var expressionRoom = 0

    init() { r = nftnl_rule_alloc() }
    deinit { nftnl_rule_free(r) }

    convenience init(table: String, chain: String?, handle: UInt64? = nil) {
        self.init()
        nftnl_rule_set_str(r, attr(NFTNL_RULE_TABLE), table)
        if let chain { nftnl_rule_set_str(r, attr(NFTNL_RULE_CHAIN), chain) }
        if let handle { nftnl_rule_set_u64(r, attr(NFTNL_RULE_HANDLE), handle) }
    }

    convenience init(_ rule: NFTRule) {
        self.init(table: rule.table, chain: rule.chain)
        for e in rule.expressions { add(e) }
        if let u = rule.userdata { u.withUnsafeBytes { _ = nftnl_rule_set_data(r, attr(NFTNL_RULE_USERDATA), $0.baseAddress, UInt32($0.count)) } }
    }

    func message(_ command: nf_tables_msg_types, _ family: NFTFamily, flags: UInt16, capacity: Int) -> NetlinkMessage {
        NFTNL.message(command.rawValue, family, flags: flags, capacity: capacity + expressionRoom) { nftnl_rule_nlmsg_build_payload($0, r) }
    }

    /// Encodes one expression with libnftnl and appends it to the rule (which then owns it).
    private func add(_ expression: NFTExpression) {
        let e: OpaquePointer = nftnl_expr_alloc(expression.name)
        func u32(_ a: Int, _ v: UInt32) { nftnl_expr_set_u32(e, attr(a), v) }
        func reg(_ a: Int, _ v: NFTRegister) { nftnl_expr_set_u32(e, attr(a), v.rawValue) }
        func data(_ a: Int, _ v: [UInt8]) { v.withUnsafeBytes { _ = nftnl_expr_set(e, attr(a), $0.baseAddress, UInt32($0.count)) } }
        var bytes = 96 // list nest, name, data nest, and up to eight u32 attributes
        switch expression {
        case let .meta(key, dreg):
            u32(NFTNL_EXPR_META_KEY, key.rawValue)
            reg(NFTNL_EXPR_META_DREG, dreg)
        case let .metaSet(key, sreg):
            u32(NFTNL_EXPR_META_KEY, key.rawValue)
            reg(NFTNL_EXPR_META_SREG, sreg)
        case let .ct(key, dreg):
            u32(NFTNL_EXPR_CT_KEY, key.rawValue)
            reg(NFTNL_EXPR_CT_DREG, dreg)
        case let .ctSet(key, sreg):
            u32(NFTNL_EXPR_CT_KEY, key.rawValue)
            reg(NFTNL_EXPR_CT_SREG, sreg)
        case let .payload(base, offset, length, dreg):
            reg(NFTNL_EXPR_PAYLOAD_DREG, dreg)
            u32(NFTNL_EXPR_PAYLOAD_BASE, base.rawValue)
            u32(NFTNL_EXPR_PAYLOAD_OFFSET, offset)
            u32(NFTNL_EXPR_PAYLOAD_LEN, length)
        case let .cmp(sreg, op, value):
            reg(NFTNL_EXPR_CMP_SREG, sreg)
            u32(NFTNL_EXPR_CMP_OP, op.rawValue)
            data(NFTNL_EXPR_CMP_DATA, value)
            bytes += room(value.count)
        case let .bitwise(sreg, dreg, mask, xor):
            reg(NFTNL_EXPR_BITWISE_SREG, sreg)
            reg(NFTNL_EXPR_BITWISE_DREG, dreg)
            u32(NFTNL_EXPR_BITWISE_OP, NFT_BITWISE_MASK_XOR.rawValue)
            u32(NFTNL_EXPR_BITWISE_LEN, UInt32(mask.count))
            data(NFTNL_EXPR_BITWISE_MASK, mask)
            data(NFTNL_EXPR_BITWISE_XOR, xor)
            bytes += room(mask.count) + room(xor.count)
        case let .shiftRight(sreg, dreg, length, shift):
            reg(NFTNL_EXPR_BITWISE_SREG, sreg)
            reg(NFTNL_EXPR_BITWISE_DREG, dreg)
            u32(NFTNL_EXPR_BITWISE_OP, NFT_BITWISE_RSHIFT.rawValue)
            u32(NFTNL_EXPR_BITWISE_LEN, length)
            data(NFTNL_EXPR_BITWISE_DATA, shift.hostBytes)
            bytes += room(4)
        case let .byteorder(sreg, dreg, op, length, size):
            reg(NFTNL_EXPR_BYTEORDER_SREG, sreg)
            reg(NFTNL_EXPR_BYTEORDER_DREG, dreg)
            u32(NFTNL_EXPR_BYTEORDER_OP, op.rawValue)
            u32(NFTNL_EXPR_BYTEORDER_LEN, length)
            u32(NFTNL_EXPR_BYTEORDER_SIZE, size)
        case let .lookup(sreg, set, setID, dreg):
            reg(NFTNL_EXPR_LOOKUP_SREG, sreg)
            if let dreg { reg(NFTNL_EXPR_LOOKUP_DREG, dreg) }
            nftnl_expr_set_str(e, attr(NFTNL_EXPR_LOOKUP_SET), set)
            if let setID { u32(NFTNL_EXPR_LOOKUP_SET_ID, setID) }
            bytes += room(set)
        case let .immediate(dreg, value):
            reg(NFTNL_EXPR_IMM_DREG, dreg)
            switch value {
            case .value(let v):
                data(NFTNL_EXPR_IMM_DATA, v)
                bytes += room(v.count)
            case .verdict(let v):
                u32(NFTNL_EXPR_IMM_VERDICT, UInt32(bitPattern: v.code))
                if let chain = v.chain { nftnl_expr_set_str(e, attr(NFTNL_EXPR_IMM_CHAIN), chain); bytes += room(chain) }
            }
        case .counter:
            break // nft sends an empty counter: the kernel starts it at zero
        case let .jhash(sreg, length, dreg, modulus, seed, offset):
            reg(NFTNL_EXPR_HASH_SREG, sreg)
            reg(NFTNL_EXPR_HASH_DREG, dreg)
            u32(NFTNL_EXPR_HASH_LEN, length)
            u32(NFTNL_EXPR_HASH_MODULUS, modulus)
            u32(NFTNL_EXPR_HASH_SEED, seed)
            u32(NFTNL_EXPR_HASH_OFFSET, offset)
            u32(NFTNL_EXPR_HASH_TYPE, NFT_HASH_JENKINS.rawValue)
        case let .dynsetAdd(sreg, set, setID, timeoutMs):
            reg(NFTNL_EXPR_DYNSET_SREG_KEY, sreg)
            u32(NFTNL_EXPR_DYNSET_OP, UInt32(NFT_DYNSET_OP_ADD.rawValue))
            nftnl_expr_set_u64(e, attr(NFTNL_EXPR_DYNSET_TIMEOUT), timeoutMs)
            nftnl_expr_set_str(e, attr(NFTNL_EXPR_DYNSET_SET_NAME), set)
            if let setID { u32(NFTNL_EXPR_DYNSET_SET_ID, setID) }
            bytes += room(set) + room(8)
        case let .dup(sregAddress, sregDevice):
            reg(NFTNL_EXPR_DUP_SREG_ADDR, sregAddress)
            reg(NFTNL_EXPR_DUP_SREG_DEV, sregDevice)
        }
        nftnl_rule_add_expr(r, e)
        expressionRoom += bytes
    }

    /// Decodes one NFT_MSG_NEWRULE of a dump: identity, userdata, expression names and the first counter.
    static func parse(_ m: NetlinkMessage) throws(NetlinkError) -> NFTables.ListedRule? {
        let o = NFTNLRule()
        let r = o.r
        try NFTNL.decode(m, "rule") { nftnl_rule_nlmsg_parse($0, r) }
        guard let family = NFTFamily(rawValue: UInt8(truncatingIfNeeded: nftnl_rule_get_u32(r, attr(NFTNL_RULE_FAMILY)))) else { return nil }
        var names: [String] = []
        var decoded: [NFTExpression?] = []
        var counter: (UInt64, UInt64)?
        if let iterator = nftnl_expr_iter_create(r) {
            defer { nftnl_expr_iter_destroy(iterator) }
            var next = nftnl_expr_iter_next(iterator)
            while let e = next {
                next = nftnl_expr_iter_next(iterator)
                let name = NFTNL.string(nftnl_expr_get_str(e, attr(NFTNL_EXPR_NAME)))
                names.append(name)
                decoded.append(decode(e, name))
                if name == "counter", counter == nil {
                    counter = (nftnl_expr_get_u64(e, attr(NFTNL_EXPR_CTR_PACKETS)), nftnl_expr_get_u64(e, attr(NFTNL_EXPR_CTR_BYTES)))
                }
            }
        }
        var userdata: [UInt8]?
        if nftnl_rule_is_set(r, attr(NFTNL_RULE_USERDATA)) {
            var length: UInt32 = 0
            userdata = NFTNL.bytes(nftnl_rule_get_data(r, attr(NFTNL_RULE_USERDATA), &length), length)
        }
        return NFTables.ListedRule(family: family, table: NFTNL.string(nftnl_rule_get_str(r, attr(NFTNL_RULE_TABLE))),
                                   chain: NFTNL.string(nftnl_rule_get_str(r, attr(NFTNL_RULE_CHAIN))),
                                   handle: nftnl_rule_get_u64(r, attr(NFTNL_RULE_HANDLE)), userdata: userdata,
                                   expressionNames: names, counter: counter, expressions: decoded)
    }

    /// The inverse of `add` for every kind we write; nil for other kinds and forms (a hash with an offset,
    /// a register or key we do not name): the caller still has the expression's name.
    private static func decode(_ e: OpaquePointer, _ name: String) -> NFTExpression? {
        func u32(_ a: Int) -> UInt32? { nftnl_expr_is_set(e, attr(a)) ? nftnl_expr_get_u32(e, attr(a)) : nil }
        func reg(_ a: Int) -> NFTRegister? { u32(a).flatMap(NFTRegister.init(rawValue:)) }
        func data(_ a: Int) -> [UInt8]? {
            guard nftnl_expr_is_set(e, attr(a)) else { return nil }
            var length: UInt32 = 0
            return NFTNL.bytes(nftnl_expr_get(e, attr(a), &length), length)
        }
        switch name {
        case "meta":
            guard let key = u32(NFTNL_EXPR_META_KEY).flatMap(NFTMetaKey.init(rawValue:)) else { return nil }
            if let dreg = reg(NFTNL_EXPR_META_DREG) { return .meta(key: key, dreg: dreg) }
            return reg(NFTNL_EXPR_META_SREG).map { .metaSet(key: key, sreg: $0) }
        case "ct":
            guard let key = u32(NFTNL_EXPR_CT_KEY).flatMap(NFTCtKey.init(rawValue:)) else { return nil }
            if let dreg = reg(NFTNL_EXPR_CT_DREG) { return .ct(key: key, dreg: dreg) }
            return reg(NFTNL_EXPR_CT_SREG).map { .ctSet(key: key, sreg: $0) }
        case "payload":
            guard let dreg = reg(NFTNL_EXPR_PAYLOAD_DREG), let base = u32(NFTNL_EXPR_PAYLOAD_BASE).flatMap(NFTPayloadBase.init(rawValue:)),
                  let offset = u32(NFTNL_EXPR_PAYLOAD_OFFSET), let length = u32(NFTNL_EXPR_PAYLOAD_LEN) else { return nil }
            return .payload(base: base, offset: offset, length: length, dreg: dreg)
        case "cmp":
            guard let sreg = reg(NFTNL_EXPR_CMP_SREG), let op = u32(NFTNL_EXPR_CMP_OP).flatMap(NFTCmpOp.init(rawValue:)),
                  let value = data(NFTNL_EXPR_CMP_DATA) else { return nil }
            return .cmp(sreg: sreg, op: op, data: value)
        case "bitwise":
            guard let sreg = reg(NFTNL_EXPR_BITWISE_SREG), let dreg = reg(NFTNL_EXPR_BITWISE_DREG) else { return nil }
            switch u32(NFTNL_EXPR_BITWISE_OP) ?? NFT_BITWISE_MASK_XOR.rawValue {
            case NFT_BITWISE_MASK_XOR.rawValue:
                guard let mask = data(NFTNL_EXPR_BITWISE_MASK), let xor = data(NFTNL_EXPR_BITWISE_XOR) else { return nil }
                return .bitwise(sreg: sreg, dreg: dreg, mask: mask, xor: xor)
            case NFT_BITWISE_RSHIFT.rawValue:
                guard let length = u32(NFTNL_EXPR_BITWISE_LEN), let shift = data(NFTNL_EXPR_BITWISE_DATA), shift.count == 4 else { return nil }
                return .shiftRight(sreg: sreg, dreg: dreg, length: length, shift: shift.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
            default:
                return nil
            }
        case "byteorder":
            guard let sreg = reg(NFTNL_EXPR_BYTEORDER_SREG), let dreg = reg(NFTNL_EXPR_BYTEORDER_DREG),
                  let op = u32(NFTNL_EXPR_BYTEORDER_OP).flatMap(NFTByteorderOp.init(rawValue:)),
                  let length = u32(NFTNL_EXPR_BYTEORDER_LEN), let size = u32(NFTNL_EXPR_BYTEORDER_SIZE) else { return nil }
            return .byteorder(sreg: sreg, dreg: dreg, op: op, length: length, size: size)
        case "lookup":
            guard let sreg = reg(NFTNL_EXPR_LOOKUP_SREG), nftnl_expr_is_set(e, attr(NFTNL_EXPR_LOOKUP_SET)) else { return nil }
            return .lookup(sreg: sreg, set: NFTNL.string(nftnl_expr_get_str(e, attr(NFTNL_EXPR_LOOKUP_SET))),
                           setID: u32(NFTNL_EXPR_LOOKUP_SET_ID), dreg: reg(NFTNL_EXPR_LOOKUP_DREG))
        case "immediate":
            guard let dreg = reg(NFTNL_EXPR_IMM_DREG) else { return nil }
            if let code = u32(NFTNL_EXPR_IMM_VERDICT) {
                let chain = NFTNL.string(nftnl_expr_get_str(e, attr(NFTNL_EXPR_IMM_CHAIN)))
                guard let verdict = try? NFTVerdict(code: Int32(bitPattern: code), chain: chain) else { return nil }
                return .immediate(dreg: dreg, data: .verdict(verdict))
            }
            return data(NFTNL_EXPR_IMM_DATA).map { .immediate(dreg: dreg, data: .value($0)) }
        case "counter":
            return .counter
        case "hash":
            guard (u32(NFTNL_EXPR_HASH_TYPE) ?? NFT_HASH_JENKINS.rawValue) == NFT_HASH_JENKINS.rawValue,
                  let sreg = reg(NFTNL_EXPR_HASH_SREG), let dreg = reg(NFTNL_EXPR_HASH_DREG),
                  let length = u32(NFTNL_EXPR_HASH_LEN), let modulus = u32(NFTNL_EXPR_HASH_MODULUS) else { return nil }
            return .jhash(sreg: sreg, length: length, dreg: dreg, modulus: modulus, seed: u32(NFTNL_EXPR_HASH_SEED) ?? 0,
                          offset: u32(NFTNL_EXPR_HASH_OFFSET) ?? 0)
        case "dynset":
            guard (u32(NFTNL_EXPR_DYNSET_OP) ?? 0) == UInt32(NFT_DYNSET_OP_ADD.rawValue),
                  let sreg = reg(NFTNL_EXPR_DYNSET_SREG_KEY), nftnl_expr_is_set(e, attr(NFTNL_EXPR_DYNSET_SET_NAME)) else { return nil }
            let timeout = nftnl_expr_is_set(e, attr(NFTNL_EXPR_DYNSET_TIMEOUT)) ? nftnl_expr_get_u64(e, attr(NFTNL_EXPR_DYNSET_TIMEOUT)) : 0
            return .dynsetAdd(sreg: sreg, set: NFTNL.string(nftnl_expr_get_str(e, attr(NFTNL_EXPR_DYNSET_SET_NAME))),
                              setID: u32(NFTNL_EXPR_DYNSET_SET_ID), timeoutMs: timeout)
        case "dup":
            guard let address = reg(NFTNL_EXPR_DUP_SREG_ADDR), let device = reg(NFTNL_EXPR_DUP_SREG_DEV) else { return nil }
            return .dup(sregAddress: address, sregDevice: device)
        default:
            return nil
        }
    }

}

// MARK: ruleset generation

final class NFTNLGeneration {
    private let g: OpaquePointer

    init() { g = nftnl_gen_alloc() }
    deinit { nftnl_gen_free(g) }

    /// NFT_MSG_GETGEN: a header only (AF_UNSPEC), answered by one NFT_MSG_NEWGEN.
    static func request() -> NetlinkMessage {
        NFTNL.message(NFT_MSG_GETGEN.rawValue, family: UInt8(AF_UNSPEC), flags: 0, capacity: 0) { _ in }
    }

    /// The generation id of a NFT_MSG_NEWGEN (nil if it carries none).
    static func parse(_ m: NetlinkMessage) throws(NetlinkError) -> UInt32? {
        let o = NFTNLGeneration()
        let g = o.g
        try NFTNL.decode(m, "generation") { nftnl_gen_nlmsg_parse($0, g) }
        return nftnl_gen_is_set(g, attr(NFTNL_GEN_ID)) ? nftnl_gen_get_u32(g, attr(NFTNL_GEN_ID)) : nil
    }
}

// MARK: userdata

/// A libnftnl udata buffer (the TLVs nft keeps in a table's, chain's, set's or rule's userdata).
final class NFTNLUserdata {
    private let u: OpaquePointer

    init(capacity: Int) { u = nftnl_udata_buf_alloc(UInt32(max(capacity, 1))) }
    deinit { nftnl_udata_buf_free(u) }

    /// Appends one TLV; values longer than 255 bytes do not fit the length byte and are cut.
    func put(_ type: UInt8, _ value: [UInt8]) {
        let value = value.prefix(255)
        let fitted = value.withUnsafeBytes { nftnl_udata_put(u, type, UInt32($0.count), $0.baseAddress) }
        precondition(fitted, "udata buffer sized for \(value.count) bytes of value")
    }

    var bytes: [UInt8] { NFTNL.bytes(nftnl_udata_buf_data(u), nftnl_udata_buf_len(u)) }
}

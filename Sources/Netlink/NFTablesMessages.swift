import CNetfilter

/// Message builders and dump parsers for nf_tables (NETLINK_NETFILTER). Pure: no I/O, so every message
/// is golden-tested against what `nft` sends; `NFTablesClient` sends them in batches.
public enum NFTables {
    static func type(_ command: UInt32) -> UInt16 { UInt16(NFNL_SUBSYS_NFTABLES) << 8 | UInt16(command) }

    /// struct nfgenmsg: family, version NFNETLINK_V0, res_id (big-endian, 0 for objects).
    static func header(_ family: UInt8, resID: UInt16 = 0) -> [UInt8] {
        [family, UInt8(NFNETLINK_V0), UInt8(resID >> 8), UInt8(resID & 0xff)]
    }

    /// NFNL_MSG_BATCH_BEGIN/END: res_id names the subsystem the batch is for.
    public static func batchMarker(type: UInt16, sequence: UInt32) -> NetlinkMessage {
        NetlinkMessage(type: type, flags: NetlinkFlag.request, sequence: sequence,
                       payload: header(UInt8(AF_UNSPEC), resID: UInt16(NFNL_SUBSYS_NFTABLES)))
    }

    static func message(_ command: UInt32, _ family: NFTFamily, flags: UInt16, _ body: (inout AttributeWriter) -> Void) -> NetlinkMessage {
        var a = AttributeWriter()
        body(&a)
        return NetlinkMessage(type: type(command), flags: flags, payload: header(family.rawValue) + a.bytes)
    }

    static func encodeData(_ data: NFTData, into a: inout AttributeWriter) {
        switch data {
        case .value(let bytes):
            a.put(t(NFTA_DATA_VALUE.rawValue), bytes)
        case .verdict(let v):
            a.nested(t(NFTA_DATA_VERDICT.rawValue)) { d in
                d.putBigU32(t(NFTA_VERDICT_CODE.rawValue), UInt32(bitPattern: v.code))
                switch v {
                case .jump(let chain), .goto(let chain): d.putString(t(NFTA_VERDICT_CHAIN.rawValue), chain)
                default: break
                }
            }
        }
    }

    // MARK: tables

    /// NFT_MSG_NEWTABLE with NLM_F_CREATE (like `nft add table`: no error if it exists).
    public static func newTable(_ table: NFTTable) -> NetlinkMessage {
        message(UInt32(NFT_MSG_NEWTABLE.rawValue), table.family, flags: NetlinkFlag.create) { a in
            a.putString(t(NFTA_TABLE_NAME.rawValue), table.name)
            a.putBigU32(t(NFTA_TABLE_FLAGS.rawValue), table.flags)
            if let u = table.userdata { a.put(t(NFTA_TABLE_USERDATA.rawValue), u) }
        }
    }

    /// NFT_MSG_DELTABLE: removes the table and everything in it.
    public static func deleteTable(family: NFTFamily, name: String) -> NetlinkMessage {
        message(UInt32(NFT_MSG_DELTABLE.rawValue), family, flags: 0) { $0.putString(t(NFTA_TABLE_NAME.rawValue), name) }
    }

    public static func listTables(family: NFTFamily) -> NetlinkMessage {
        message(UInt32(NFT_MSG_GETTABLE.rawValue), family, flags: 0) { _ in }
    }

    // MARK: chains

    /// NFT_MSG_NEWCHAIN (CREATE). Base chains carry TYPE, POLICY and HOOK (in nft's order).
    public static func newChain(_ chain: NFTChain) -> NetlinkMessage {
        message(UInt32(NFT_MSG_NEWCHAIN.rawValue), chain.family, flags: NetlinkFlag.create) { a in
            a.putString(t(NFTA_CHAIN_TABLE.rawValue), chain.table)
            a.putString(t(NFTA_CHAIN_NAME.rawValue), chain.name)
            if let hook = chain.hook {
                a.putString(t(NFTA_CHAIN_TYPE.rawValue), hook.type)
                a.putBigU32(t(NFTA_CHAIN_POLICY.rawValue), hook.policy)
                a.nested(t(NFTA_CHAIN_HOOK.rawValue)) { h in
                    h.putBigU32(t(NFTA_HOOK_HOOKNUM.rawValue), hook.hook)
                    h.putBigU32(t(NFTA_HOOK_PRIORITY.rawValue), UInt32(bitPattern: hook.priority))
                }
            }
            if let u = chain.userdata { a.put(t(NFTA_CHAIN_USERDATA.rawValue), u) }
        }
    }

    public static func deleteChain(family: NFTFamily, table: String, name: String) -> NetlinkMessage {
        message(UInt32(NFT_MSG_DELCHAIN.rawValue), family, flags: 0) { a in
            a.putString(t(NFTA_CHAIN_TABLE.rawValue), table)
            a.putString(t(NFTA_CHAIN_NAME.rawValue), name)
        }
    }

    /// Flush = NFT_MSG_DELRULE with only table and chain: removes every rule of the chain.
    public static func flushChain(family: NFTFamily, table: String, name: String) -> NetlinkMessage {
        message(UInt32(NFT_MSG_DELRULE.rawValue), family, flags: 0) { a in
            a.putString(t(NFTA_RULE_TABLE.rawValue), table)
            a.putString(t(NFTA_RULE_CHAIN.rawValue), name)
        }
    }

    public static func listChains(family: NFTFamily, table: String) -> NetlinkMessage {
        message(UInt32(NFT_MSG_GETCHAIN.rawValue), family, flags: 0) { $0.putString(t(NFTA_CHAIN_TABLE.rawValue), table) }
    }

    // MARK: sets

    /// NFT_MSG_NEWSET (CREATE). Concatenations describe each field length in NFTA_SET_DESC_CONCAT.
    public static func newSet(_ set: NFTSet) -> NetlinkMessage {
        message(UInt32(NFT_MSG_NEWSET.rawValue), set.family, flags: NetlinkFlag.create) { a in
            a.putString(t(NFTA_SET_TABLE.rawValue), set.table)
            a.putString(t(NFTA_SET_NAME.rawValue), set.name)
            a.putBigU32(t(NFTA_SET_FLAGS.rawValue), set.flags)
            a.putBigU32(t(NFTA_SET_KEY_TYPE.rawValue), set.keyType)
            a.putBigU32(t(NFTA_SET_KEY_LEN.rawValue), set.keyLength)
            if let dt = set.dataType { a.putBigU32(t(NFTA_SET_DATA_TYPE.rawValue), dt) }
            if let dl = set.dataLength { a.putBigU32(t(NFTA_SET_DATA_LEN.rawValue), dl) }
            if let id = set.id { a.putBigU32(t(NFTA_SET_ID.rawValue), id) }
            if !set.fieldLengths.isEmpty {
                a.nested(t(NFTA_SET_DESC.rawValue)) { d in
                    d.nested(t(NFTA_SET_DESC_CONCAT.rawValue)) { c in
                        for length in set.fieldLengths {
                            c.nested(t(NFTA_LIST_ELEM.rawValue)) { $0.putBigU32(t(NFTA_SET_FIELD_LEN.rawValue), length) }
                        }
                    }
                }
            }
            if let u = set.userdata { a.put(t(NFTA_SET_USERDATA.rawValue), u) }
        }
    }

    public static func deleteSet(family: NFTFamily, table: String, name: String) -> NetlinkMessage {
        message(UInt32(NFT_MSG_DELSET.rawValue), family, flags: 0) { a in
            a.putString(t(NFTA_SET_TABLE.rawValue), table)
            a.putString(t(NFTA_SET_NAME.rawValue), name)
        }
    }

    public static func listSets(family: NFTFamily, table: String) -> NetlinkMessage {
        message(UInt32(NFT_MSG_GETSET.rawValue), family, flags: 0) { $0.putString(t(NFTA_SET_TABLE.rawValue), table) }
    }

    // MARK: elements

    /// NFT_MSG_NEWSETELEM (CREATE) or NFT_MSG_DELSETELEM for a list of elements of one set.
    /// Callers keep one message under ~64 KiB (see `elementMessages`).
    public static func elements(_ elements: [NFTElement], family: NFTFamily, table: String, set: String,
                                setID: UInt32? = nil, delete: Bool = false) -> NetlinkMessage {
        let command = delete ? UInt32(NFT_MSG_DELSETELEM.rawValue) : UInt32(NFT_MSG_NEWSETELEM.rawValue)
        return message(command, family, flags: delete ? 0 : NetlinkFlag.create) { a in
            a.putString(t(NFTA_SET_ELEM_LIST_TABLE.rawValue), table)
            a.putString(t(NFTA_SET_ELEM_LIST_SET.rawValue), set)
            if let setID { a.putBigU32(t(NFTA_SET_ELEM_LIST_SET_ID.rawValue), setID) }
            a.nested(t(NFTA_SET_ELEM_LIST_ELEMENTS.rawValue)) { list in
                // libnftnl numbers the list entries 1, 2, 3... (the kernel ignores the type); we do the same
                // so our bytes equal nft's.
                for (index, e) in elements.enumerated() {
                    list.nested(UInt16(truncatingIfNeeded: index + 1)) { el in
                        if e.flags != 0 { el.putBigU32(t(NFTA_SET_ELEM_FLAGS.rawValue), e.flags) }
                        el.nested(t(NFTA_SET_ELEM_KEY.rawValue)) { $0.put(t(NFTA_DATA_VALUE.rawValue), e.key) }
                        if let end = e.keyEnd {
                            el.nested(t(NFTA_SET_ELEM_KEY_END.rawValue)) { $0.put(t(NFTA_DATA_VALUE.rawValue), end) }
                        }
                        if let data = e.data {
                            el.nested(t(NFTA_SET_ELEM_DATA.rawValue)) { encodeData(data, into: &$0) }
                        }
                    }
                }
            }
        }
    }

    /// Splits many elements into messages of at most `chunk` elements each (10,000 elements fit in a
    /// handful of messages of one batch; the whole batch still commits atomically).
    public static func elementMessages(_ elements: [NFTElement], family: NFTFamily, table: String, set: String,
                                       setID: UInt32? = nil, delete: Bool = false, chunk: Int = 512) -> [NetlinkMessage] {
        stride(from: 0, to: elements.count, by: chunk).map {
            self.elements(Array(elements[$0..<min($0 + chunk, elements.count)]), family: family, table: table,
                          set: set, setID: setID, delete: delete)
        }
    }

    public static func listElements(family: NFTFamily, table: String, set: String) -> NetlinkMessage {
        message(UInt32(NFT_MSG_GETSETELEM.rawValue), family, flags: 0) { a in
            a.putString(t(NFTA_SET_ELEM_LIST_TABLE.rawValue), table)
            a.putString(t(NFTA_SET_ELEM_LIST_SET.rawValue), set)
        }
    }

    // MARK: rules

    /// NFT_MSG_NEWRULE with CREATE|APPEND (like `nft add rule`: appended at the end of the chain).
    public static func newRule(_ rule: NFTRule) -> NetlinkMessage {
        message(UInt32(NFT_MSG_NEWRULE.rawValue), rule.family, flags: NetlinkFlag.create | NetlinkFlag.append) { a in
            a.putString(t(NFTA_RULE_TABLE.rawValue), rule.table)
            a.putString(t(NFTA_RULE_CHAIN.rawValue), rule.chain)
            a.nested(t(NFTA_RULE_EXPRESSIONS.rawValue)) { list in
                for e in rule.expressions { list.nested(t(NFTA_LIST_ELEM.rawValue)) { e.encode(into: &$0) } }
            }
            if let u = rule.userdata { a.put(t(NFTA_RULE_USERDATA.rawValue), u) }
        }
    }

    public static func deleteRule(family: NFTFamily, table: String, chain: String, handle: UInt64) -> NetlinkMessage {
        message(UInt32(NFT_MSG_DELRULE.rawValue), family, flags: 0) { a in
            a.putString(t(NFTA_RULE_TABLE.rawValue), table)
            a.putString(t(NFTA_RULE_CHAIN.rawValue), chain)
            a.putBigU64(t(NFTA_RULE_HANDLE.rawValue), handle)
        }
    }

    public static func listRules(family: NFTFamily, table: String) -> NetlinkMessage {
        message(UInt32(NFT_MSG_GETRULE.rawValue), family, flags: 0) { $0.putString(t(NFTA_RULE_TABLE.rawValue), table) }
    }

    // MARK: parsing dumps

    static func family(_ m: NetlinkMessage) -> NFTFamily? { m.payload.first.flatMap(NFTFamily.init(rawValue:)) }

    static func attributes(_ m: NetlinkMessage, _ command: UInt32) throws(NetlinkError) -> (NFTFamily, AttributeList)? {
        guard m.type == type(command), m.payload.count >= 4, let f = family(m) else { return nil }
        return (f, try AttributeList(parsing: Array(m.payload[4...])))
    }

    public static func parseTable(_ m: NetlinkMessage) throws(NetlinkError) -> NFTTable? {
        guard let (f, a) = try attributes(m, UInt32(NFT_MSG_NEWTABLE.rawValue)) else { return nil }
        return NFTTable(family: f, name: a[NFTA_TABLE_NAME.rawValue]?.string ?? "",
                        flags: a[NFTA_TABLE_FLAGS.rawValue]?.bigU32 ?? 0, userdata: a[NFTA_TABLE_USERDATA.rawValue]?.value)
    }

    public static func parseChain(_ m: NetlinkMessage) throws(NetlinkError) -> NFTChain? {
        guard let (f, a) = try attributes(m, UInt32(NFT_MSG_NEWCHAIN.rawValue)) else { return nil }
        var hook: NFTHook?
        if let h = try a[NFTA_CHAIN_HOOK.rawValue]?.nested() {
            hook = NFTHook(hook: h[NFTA_HOOK_HOOKNUM.rawValue]?.bigU32 ?? 0,
                           priority: Int32(bitPattern: h[NFTA_HOOK_PRIORITY.rawValue]?.bigU32 ?? 0),
                           type: a[NFTA_CHAIN_TYPE.rawValue]?.string ?? "",
                           policy: a[NFTA_CHAIN_POLICY.rawValue]?.bigU32 ?? UInt32(NF_ACCEPT))
        }
        return NFTChain(family: f, table: a[NFTA_CHAIN_TABLE.rawValue]?.string ?? "", name: a[NFTA_CHAIN_NAME.rawValue]?.string ?? "",
                        hook: hook, userdata: a[NFTA_CHAIN_USERDATA.rawValue]?.value)
    }

    public static func parseSet(_ m: NetlinkMessage) throws(NetlinkError) -> NFTSet? {
        guard let (f, a) = try attributes(m, UInt32(NFT_MSG_NEWSET.rawValue)) else { return nil }
        var fields: [UInt32] = []
        if let desc = try a[NFTA_SET_DESC.rawValue]?.nested(), let concat = try desc[NFTA_SET_DESC_CONCAT.rawValue]?.nested() {
            for e in concat.attributes { if let l = try e.nested()[NFTA_SET_FIELD_LEN.rawValue]?.bigU32 { fields.append(l) } }
        }
        return NFTSet(family: f, table: a[NFTA_SET_TABLE.rawValue]?.string ?? "", name: a[NFTA_SET_NAME.rawValue]?.string ?? "",
                      flags: a[NFTA_SET_FLAGS.rawValue]?.bigU32 ?? 0, keyType: a[NFTA_SET_KEY_TYPE.rawValue]?.bigU32 ?? 0,
                      keyLength: a[NFTA_SET_KEY_LEN.rawValue]?.bigU32 ?? 0, dataType: a[NFTA_SET_DATA_TYPE.rawValue]?.bigU32,
                      dataLength: a[NFTA_SET_DATA_LEN.rawValue]?.bigU32, fieldLengths: fields,
                      userdata: a[NFTA_SET_USERDATA.rawValue]?.value)
    }

    static func parseData(_ list: AttributeList) throws(NetlinkError) -> NFTData? {
        if let v = list[NFTA_DATA_VALUE.rawValue] { return .value(v.value) }
        guard let verdict = try list[NFTA_DATA_VERDICT.rawValue]?.nested() else { return nil }
        let code = Int32(bitPattern: verdict[NFTA_VERDICT_CODE.rawValue]?.bigU32 ?? 0)
        let chain = verdict[NFTA_VERDICT_CHAIN.rawValue]?.string ?? ""
        switch code {
        case Int32(NF_ACCEPT): return .verdict(.accept)
        case Int32(NF_DROP): return .verdict(.drop)
        case NFT_CONTINUE.rawValue: return .verdict(.continue)
        case NFT_RETURN.rawValue: return .verdict(.return)
        case NFT_JUMP.rawValue: return .verdict(.jump(chain))
        case NFT_GOTO.rawValue: return .verdict(.goto(chain))
        default: throw .malformed("parse verdict", "unknown verdict code \(code)")
        }
    }

    public static func parseElements(_ m: NetlinkMessage) throws(NetlinkError) -> [NFTElement] {
        guard let (_, a) = try attributes(m, UInt32(NFT_MSG_NEWSETELEM.rawValue)),
              let list = try a[NFTA_SET_ELEM_LIST_ELEMENTS.rawValue]?.nested() else { return [] }
        var out: [NFTElement] = []
        for item in list.attributes {
            let e = try item.nested()
            guard let key = try e[NFTA_SET_ELEM_KEY.rawValue]?.nested()[NFTA_DATA_VALUE.rawValue]?.value else { continue }
            let end = try e[NFTA_SET_ELEM_KEY_END.rawValue]?.nested()[NFTA_DATA_VALUE.rawValue]?.value
            var data: NFTData?
            if let d = try e[NFTA_SET_ELEM_DATA.rawValue]?.nested() { data = try parseData(d) }
            out.append(NFTElement(key: key, keyEnd: end, data: data, flags: e[NFTA_SET_ELEM_FLAGS.rawValue]?.bigU32 ?? 0))
        }
        return out
    }

    /// A rule as listed: table, chain, handle, userdata and the expression names (enough to identify our
    /// rules by their userdata fingerprint), and the few expressions a reader of the installed steering needs
    /// decoded (`NFTExpression.decode`): what a rule writes into a mark, and its flow hash.
    public struct ListedRule: Hashable, Sendable {
        public var family: NFTFamily
        public var table: String
        public var chain: String
        public var handle: UInt64
        public var userdata: [UInt8]?
        public var expressionNames: [String]
        /// The rule's first counter expression, if it has one: (packets, bytes).
        public var counter: (packets: UInt64, bytes: UInt64)?
        /// One entry per expression, in order: the decoded expression, or nil for kinds not decoded.
        public var expressions: [NFTExpression?] = []

        public static func == (a: ListedRule, b: ListedRule) -> Bool {
            a.family == b.family && a.table == b.table && a.chain == b.chain && a.handle == b.handle
                && a.userdata == b.userdata && a.expressionNames == b.expressionNames && a.expressions == b.expressions
                && a.counter?.packets == b.counter?.packets && a.counter?.bytes == b.counter?.bytes
        }

        public func hash(into h: inout Hasher) {
            h.combine(chain)
            h.combine(handle)
        }
    }

    public static func parseRule(_ m: NetlinkMessage) throws(NetlinkError) -> ListedRule? {
        guard let (f, a) = try attributes(m, UInt32(NFT_MSG_NEWRULE.rawValue)) else { return nil }
        var names: [String] = []
        var decoded: [NFTExpression?] = []
        var counter: (UInt64, UInt64)?
        if let exprs = try a[NFTA_RULE_EXPRESSIONS.rawValue]?.nested() {
            for e in exprs.attributes {
                let expr = try e.nested()
                let name = expr[NFTA_EXPR_NAME.rawValue]?.string ?? "?"
                names.append(name)
                let data = try expr[NFTA_EXPR_DATA.rawValue]?.nested()
                decoded.append(data.flatMap { NFTExpression.decode(name: name, $0) })
                if name == "counter", counter == nil, let data = try expr[NFTA_EXPR_DATA.rawValue]?.nested() {
                    counter = (data[NFTA_COUNTER_PACKETS.rawValue]?.bigU64 ?? 0, data[NFTA_COUNTER_BYTES.rawValue]?.bigU64 ?? 0)
                }
            }
        }
        return ListedRule(family: f, table: a[NFTA_RULE_TABLE.rawValue]?.string ?? "", chain: a[NFTA_RULE_CHAIN.rawValue]?.string ?? "",
                          handle: a[NFTA_RULE_HANDLE.rawValue]?.bigU64 ?? 0, userdata: a[NFTA_RULE_USERDATA.rawValue]?.value,
                          expressionNames: names, counter: counter, expressions: decoded)
    }
}

/// nf_tables verbs over a connection: dumps, and `commit` for one atomic batch.
public final class NFTablesClient {
    public let connection: NetlinkConnection

    public init(connection: NetlinkConnection) { self.connection = connection }

    public convenience init(netns: String? = nil) throws(NetlinkError) {
        self.init(connection: try NetlinkConnection(.netfilter, netns: netns))
    }

    /// Sends the requests as one atomic batch; returns only when every message is acked. On any error
    /// nothing of the batch is applied.
    public func commit(_ requests: [NetlinkRequest]) throws(NetlinkError) {
        try connection.performBatch(requests)
    }

    public func tables(family: NFTFamily) throws(NetlinkError) -> [NFTTable] {
        try connection.dump(NetlinkRequest(NFTables.listTables(family: family), "list nft tables")).parsed(NFTables.parseTable)
    }
    public func chains(family: NFTFamily, table: String) throws(NetlinkError) -> [NFTChain] {
        try connection.dump(NetlinkRequest(NFTables.listChains(family: family, table: table), "list chains of table \(family) \(table)"))
            .parsed(NFTables.parseChain).filter { $0.table == table }
    }
    public func sets(family: NFTFamily, table: String) throws(NetlinkError) -> [NFTSet] {
        try connection.dump(NetlinkRequest(NFTables.listSets(family: family, table: table), "list sets of table \(family) \(table)"))
            .parsed(NFTables.parseSet).filter { $0.table == table }
    }
    public func elements(family: NFTFamily, table: String, set: String) throws(NetlinkError) -> [NFTElement] {
        let replies = try connection.dump(NetlinkRequest(NFTables.listElements(family: family, table: table, set: set),
                                                         "list elements of set \(family) \(table) \(set)"))
        var out: [NFTElement] = []
        for m in replies { out += try NFTables.parseElements(m) }
        return out
    }
    public func rules(family: NFTFamily, table: String) throws(NetlinkError) -> [NFTables.ListedRule] {
        try connection.dump(NetlinkRequest(NFTables.listRules(family: family, table: table), "list rules of table \(family) \(table)"))
            .parsed(NFTables.parseRule).filter { $0.table == table }
    }
}

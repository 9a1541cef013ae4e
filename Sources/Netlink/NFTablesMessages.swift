#if canImport(Glibc)
import Glibc
#endif
import CNetfilter

/// nf_tables messages, built and parsed by libnftnl (see NFTNL.swift). Pure: no I/O, so every message
/// is golden-tested against what `nft` sends; `NFTablesClient` sends them in batches.
public enum NFTables {
    static func type(_ command: nf_tables_msg_types) -> UInt16 { UInt16(NFNL_SUBSYS_NFTABLES) << 8 | UInt16(command.rawValue) }

    /// NFNL_MSG_BATCH_BEGIN/END: res_id names the subsystem the batch is for.
    public static func batchMarker(begin: Bool, sequence: UInt32) -> NetlinkMessage {
        NFTNL.batchMarker(begin: begin, sequence: sequence)
    }

    // MARK: tables

    /// NFT_MSG_NEWTABLE with NLM_F_CREATE (like `nft add table`: no error if it exists).
    public static func newTable(_ table: NFTTable) -> NetlinkMessage {
        NFTNLTable(table).message(NFT_MSG_NEWTABLE, table.family, flags: NetlinkFlag.create,
                                  capacity: room(table.name) + room(4) + room(table.userdata?.count ?? 0))
    }

    /// NFT_MSG_DELTABLE: removes the table and everything in it.
    public static func deleteTable(family: NFTFamily, name: String) -> NetlinkMessage {
        NFTNLTable(name: name).message(NFT_MSG_DELTABLE, family, flags: 0, capacity: room(name))
    }

    public static func listTables(family: NFTFamily) -> NetlinkMessage {
        NFTNLTable().message(NFT_MSG_GETTABLE, family, flags: 0, capacity: 0)
    }

    // MARK: chains

    /// NFT_MSG_NEWCHAIN (CREATE). Base chains carry TYPE, POLICY and HOOK (in nft's order).
    public static func newChain(_ chain: NFTChain) -> NetlinkMessage {
        NFTNLChain(chain).message(NFT_MSG_NEWCHAIN, chain.family, flags: NetlinkFlag.create,
                                  capacity: room(chain.table) + room(chain.name) + room(chain.hook?.type ?? "") + 64
                                      + room(chain.userdata?.count ?? 0))
    }

    public static func deleteChain(family: NFTFamily, table: String, name: String) -> NetlinkMessage {
        NFTNLChain(table: table, name: name).message(NFT_MSG_DELCHAIN, family, flags: 0, capacity: room(table) + room(name))
    }

    /// Flush = NFT_MSG_DELRULE with only table and chain: removes every rule of the chain.
    public static func flushChain(family: NFTFamily, table: String, name: String) -> NetlinkMessage {
        NFTNLRule(table: table, chain: name).message(NFT_MSG_DELRULE, family, flags: 0, capacity: room(table) + room(name))
    }

    public static func listChains(family: NFTFamily, table: String) -> NetlinkMessage {
        NFTNLChain(table: table, name: nil).message(NFT_MSG_GETCHAIN, family, flags: 0, capacity: room(table))
    }

    // MARK: sets

    /// NFT_MSG_NEWSET (CREATE). Concatenations describe each field length in NFTA_SET_DESC_CONCAT.
    public static func newSet(_ set: NFTSet) -> NetlinkMessage {
        NFTNLSet(set).message(NFT_MSG_NEWSET, set.family, flags: NetlinkFlag.create,
                              capacity: room(set.table) + room(set.name) + 6 * room(4) + 16 + 16 * set.fieldLengths.count + 2 * room(8) + 16
                                  + room(set.userdata?.count ?? 0))
    }

    public static func deleteSet(family: NFTFamily, table: String, name: String) -> NetlinkMessage {
        NFTNLSet(table: table, name: name).message(NFT_MSG_DELSET, family, flags: 0, capacity: room(table) + room(name))
    }

    public static func listSets(family: NFTFamily, table: String) -> NetlinkMessage {
        NFTNLSet(table: table, name: nil).message(NFT_MSG_GETSET, family, flags: 0, capacity: room(table))
    }

    // MARK: elements

    /// NFT_MSG_NEWSETELEM (CREATE) or NFT_MSG_DELSETELEM for a list of elements of one set.
    /// Callers keep one message under ~64 KiB (see `elementMessages`).
    public static func elements(_ elements: some Collection<NFTElement>, family: NFTFamily, table: String, set: String,
                                setID: UInt32? = nil, delete: Bool = false) -> NetlinkMessage {
        let s = NFTNLSet(table: table, name: set, id: setID)
        s.add(elements)
        return s.elementsMessage(delete ? NFT_MSG_DELSETELEM : NFT_MSG_NEWSETELEM, family, flags: delete ? 0 : NetlinkFlag.create,
                                 capacity: room(table) + room(set) + room(4) + 8)
    }

    /// Splits many elements into messages of at most `chunk` elements each (10,000 elements fit in a
    /// handful of messages of one batch; the whole batch still commits atomically).
    public static func elementMessages(_ elements: [NFTElement], family: NFTFamily, table: String, set: String,
                                       setID: UInt32? = nil, delete: Bool = false, chunk: Int = 512) -> [NetlinkMessage] {
        stride(from: 0, to: elements.count, by: chunk).map {
            self.elements(elements[$0..<min($0 + chunk, elements.count)], family: family, table: table,
                          set: set, setID: setID, delete: delete)
        }
    }

    public static func listElements(family: NFTFamily, table: String, set: String) -> NetlinkMessage {
        NFTNLSet(table: table, name: set).elementsMessage(NFT_MSG_GETSETELEM, family, flags: 0, capacity: room(table) + room(set))
    }

    // MARK: rules

    /// NFT_MSG_NEWRULE with CREATE|APPEND (like `nft add rule`: appended at the end of the chain).
    public static func newRule(_ rule: NFTRule) -> NetlinkMessage {
        NFTNLRule(rule).message(NFT_MSG_NEWRULE, rule.family, flags: NetlinkFlag.create | NetlinkFlag.append,
                                capacity: room(rule.table) + room(rule.chain) + 8 + room(rule.userdata?.count ?? 0))
    }

    public static func deleteRule(family: NFTFamily, table: String, chain: String, handle: UInt64) -> NetlinkMessage {
        NFTNLRule(table: table, chain: chain, handle: handle).message(NFT_MSG_DELRULE, family, flags: 0,
                                                                      capacity: room(table) + room(chain) + room(8))
    }

    public static func listRules(family: NFTFamily, table: String) -> NetlinkMessage {
        NFTNLRule(table: table, chain: nil).message(NFT_MSG_GETRULE, family, flags: 0, capacity: room(table))
    }

    /// An nf_tables payload (nfgenmsg, then attributes) as the kernel reads it, for comparing our messages
    /// with captures of nft's (tests, debugging): each attribute as `type=value`
    /// or `type{...}` for a nest (NLA_F_NESTED), siblings in type order (stable: list items keep theirs).
    public static func attributeTree(_ payload: [UInt8]) -> String {
        func tree(_ b: ArraySlice<UInt8>) -> String {
            var items: [(UInt16, String)] = []
            var i = b.startIndex
            while i + 4 <= b.endIndex {
                let length = Int(UInt16(b[i]) | UInt16(b[i + 1]) << 8), type = UInt16(b[i + 2]) | UInt16(b[i + 3]) << 8
                guard length >= 4, i + length <= b.endIndex else { return "malformed at \(i - b.startIndex): " + hexString(Array(b[i...])) }
                let value = b[(i + 4)..<(i + length)]
                items.append((type & 0x3fff, type & 0x8000 != 0 ? "\(type & 0x3fff){\(tree(value))}" : "\(type)=\(hexString(Array(value)))"))
                i += (length + 3) & ~3
            }
            return items.enumerated().sorted { ($0.element.0, $0.offset) < ($1.element.0, $1.offset) }.map(\.element.1).joined(separator: " ")
        }
        return hexString(Array(payload.prefix(4))) + " " + tree(payload.dropFirst(4))
    }

    static func hexString(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] }, as: UTF8.self)
    }

    // MARK: parsing dumps (libnftnl decodes; other messages of the dump are skipped)

    public static func parseTable(_ m: NetlinkMessage) throws(NetlinkError) -> NFTTable? {
        m.type == type(NFT_MSG_NEWTABLE) ? try NFTNLTable.parse(m) : nil
    }

    public static func parseChain(_ m: NetlinkMessage) throws(NetlinkError) -> NFTChain? {
        m.type == type(NFT_MSG_NEWCHAIN) ? try NFTNLChain.parse(m) : nil
    }

    public static func parseSet(_ m: NetlinkMessage) throws(NetlinkError) -> NFTSet? {
        m.type == type(NFT_MSG_NEWSET) ? try NFTNLSet.parse(m) : nil
    }

    public static func parseElements(_ m: NetlinkMessage) throws(NetlinkError) -> [NFTElement] {
        m.type == type(NFT_MSG_NEWSETELEM) ? try NFTNLSet.parseElements(m) : []
    }

    /// A rule as listed: table, chain, handle, userdata and the expression names (enough to identify our
    /// rules by their userdata fingerprint), and the few expressions a reader of the installed steering needs
    /// decoded: what a rule writes into a mark, and its flow hash (libnftnl decodes every kind we write).
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
        m.type == type(NFT_MSG_NEWRULE) ? try NFTNLRule.parse(m) : nil
    }
}

/// nf_tables verbs over a connection: dumps, and `commit` for one atomic batch.
public final class NFTablesClient {
    public let connection: NetlinkConnection

    public init(connection: NetlinkConnection) { self.connection = connection }

    /// Over a libmnl socket in the current or a named namespace.
    public convenience init(netns: String? = nil) throws(NetlinkError) {
        self.init(connection: NetlinkConnection(transport: try MNLSocket(.netfilter, netns: netns),
                                                firstSequence: UInt32(truncatingIfNeeded: time(nil))))
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

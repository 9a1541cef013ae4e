import Model
import Netlink

/// The steering the kernel does now, read from `table inet patronus`: which chain each remote prefix goes
/// to, each class's conntrack mark, each site map's class -> chain elements, the bucket maps and their flow
/// hashes, the packet mark each path chain writes, and every chain's counter. Read-only: dumps, never a
/// write, so it is safe beside the daemon and while traffic flows.
///
/// It follows the packet the way the ruleset does (docs/STEERING.md): `sites` (interval map) -> `site_<name>`
/// chain, whose map of the same name is looked up with the class bits of the ct mark -> a path chain, or a
/// `lb_*` chain that hashes the flow into a bucket (its hash's map -> the chain writing the bucket's ct mark
/// bits) and looks the site map up again with class|bucket. Nothing is derived from chain names: marks,
/// hashes, buckets and class ids are read from the rules' expressions.
public struct InstalledSteering: Sendable, Equatable {
    public var tableExists = false
    /// Class name -> the conntrack mark value its `classify` rules write (the class bits).
    public var classMarks: [String: UInt32] = [:]
    /// Remote address ranges (host order, inclusive) and the chain they go to.
    public var siteRanges: [SiteRange] = []
    /// Per map (by name): key (host-order u32: a class mark or a bucket) -> the chain its verdict goes to.
    public var maps: [String: [UInt32: String]] = [:]
    /// Per chain: the packet mark its rule writes (the `<class>_path<n>` chains).
    public var chainMarks: [String: UInt32] = [:]
    /// Per chain: the flow hash its rule computes (the `lb_*` chains).
    public var chainHashes: [String: Hash] = [:]
    /// Per chain other than `classify`: the ct mark bits its rule writes (the `bucket_<n>` chains).
    public var chainCtMarks: [String: UInt32] = [:]
    /// Per chain: the first counter of its rules.
    public var chainCounters: [String: Counter] = [:]
    /// The transit refusal (a site that does not relay): the packets its rules in the site chains dropped,
    /// summed; nil when no such rule is installed (a relay, or no path yet).
    public var transitRefused: Counter?
    /// Per chain: its comment.
    public var chainComments: [String: String] = [:]
    /// Per chain of `table ip patronus_egress` (duplication): its counter, the copies sent.
    public var copyCounters: [String: Counter] = [:]
    /// The egress table's `copies` map: the class's ct mark bits . the path mark of the path taken -> the chain
    /// that copies the packet to the second path (`copy_<class>_path<id>`). Empty: nothing is copied.
    public var copies: [CopyKey: String] = [:]

    public struct CopyKey: Hashable, Sendable {
        public var classMark: UInt32
        public var pathMark: UInt32

        public init(classMark: UInt32, pathMark: UInt32) {
            self.classMark = classMark
            self.pathMark = pathMark
        }
    }

    public struct SiteRange: Sendable, Equatable {
        public var first: UInt32
        public var last: UInt32
        public var chain: String
    }

    public struct Hash: Sendable, Equatable {
        public var modulus: UInt32
        public var seed: UInt32
        public var offset: UInt32 = 0
        /// The map the hash is looked up in (hash value -> the chain writing that bucket), if any.
        public var map: String?
    }

    public struct Counter: Sendable, Equatable {
        public var packets: UInt64
        public var bytes: UInt64
    }

    public init() {}

    /// Builds the view from what a dump returns: chains, rules and the elements of every map.
    public init(chains: [NFTChain], rules: [NFTables.ListedRule], mapElements: [String: [NFTElement]]) {
        tableExists = true
        for c in chains { chainComments[c.name] = NFTUserdata.comment(in: c.userdata) }
        for r in rules {
            if let counter = r.counter, chainCounters[r.chain] == nil {
                chainCounters[r.chain] = Counter(packets: counter.packets, bytes: counter.bytes)
            }
            if NFTUserdata.comment(in: r.userdata) == SteeringCompiler.transitRefusedComment {
                let counter = r.counter ?? (packets: 0, bytes: 0)
                transitRefused = Counter(packets: (transitRefused?.packets ?? 0) + counter.packets,
                                         bytes: (transitRefused?.bytes ?? 0) + counter.bytes)
            }
            for (i, e) in r.expressions.enumerated() {
                switch e {
                case .metaSet(let key, _)? where key == NFT.metaMark:
                    if let value = Self.xor(before: i, in: r) { chainMarks[r.chain] = value }
                case .ctSet(let key, _)? where key == NFT.ctMark && r.chain == SteeringNames.classifyChain:
                    if let value = Self.xor(before: i, in: r),
                       let name = SteeringNames.className(inClassifyComment: NFTUserdata.comment(in: r.userdata)) {
                        classMarks[name] = value
                    }
                case .ctSet(let key, _)? where key == NFT.ctMark && r.chain != SteeringNames.classifyReplyChain:
                    if let value = Self.xor(before: i, in: r) { chainCtMarks[r.chain] = value }
                case .jhash(_, _, let dreg, let modulus, let seed, let offset)?:
                    var map: String?
                    if case .lookup(let sreg, let set, _, _)? = r.expressions.dropFirst(i + 1).first, sreg == dreg { map = set }
                    chainHashes[r.chain] = Hash(modulus: modulus, seed: seed, offset: offset, map: map)
                default:
                    break
                }
            }
        }
        for (name, elements) in mapElements {
            if name == SteeringNames.sitesMap {
                siteRanges = Self.ranges(elements)
                continue
            }
            var map: [UInt32: String] = [:]
            for e in elements {
                guard let key = Self.hostU32(e.key), let chain = Self.target(e.data) else { continue }
                map[key] = chain
            }
            maps[name] = map
        }
    }

    /// Reads our table in the namespace `nft` is bound to. A missing table gives `tableExists == false`.
    public static func read(_ nft: NFTablesClient) throws(NetlinkError) -> InstalledSteering {
        let family = SteeringNames.family, table = SteeringNames.table
        guard try nft.tables(family: family).contains(where: { $0.name == table }) else { return InstalledSteering() }
        let chains = try nft.chains(family: family, table: table)
        let rules = try nft.rules(family: family, table: table)
        var elements: [String: [NFTElement]] = [:]
        for set in try nft.sets(family: family, table: table) where set.flags & NFTSet.flagMap != 0 {
            elements[set.name] = try nft.elements(family: family, table: table, set: set.name)
        }
        var installed = InstalledSteering(chains: chains, rules: rules, mapElements: elements)
        if try nft.tables(family: SteeringNames.egressFamily).contains(where: { $0.name == SteeringNames.egressTable }) {
            for r in try nft.rules(family: SteeringNames.egressFamily, table: SteeringNames.egressTable) {
                if let counter = r.counter, installed.copyCounters[r.chain] == nil {
                    installed.copyCounters[r.chain] = Counter(packets: counter.packets, bytes: counter.bytes)
                }
            }
            let copyMaps = try nft.sets(family: SteeringNames.egressFamily, table: SteeringNames.egressTable)
            if copyMaps.contains(where: { $0.name == SteeringNames.copiesMap }) {
                installed.addCopies(try nft.elements(family: SteeringNames.egressFamily, table: SteeringNames.egressTable,
                                                     set: SteeringNames.copiesMap))
            }
        }
        return installed
    }

    /// Takes in the elements of the egress table's `copies` map (key: two host-order u32, class . path mark).
    public mutating func addCopies(_ elements: [NFTElement]) {
        for e in elements where e.key.count == 8 {
            guard let classMark = Self.hostU32(Array(e.key[0..<4])), let pathMark = Self.hostU32(Array(e.key[4..<8])),
                  let chain = Self.target(e.data) else { continue }
            copies[CopyKey(classMark: classMark, pathMark: pathMark)] = chain
        }
    }

    /// The chain that copies a packet of the class (ct mark bits `classMark`) leaving by `pathChain`, as the
    /// copy table looks it up (the class bits . the mark `pathChain` writes); nil: the packet is not copied.
    public func copyChain(classMark: UInt32, pathChain: String) -> String? {
        guard let mark = chainMarks[pathChain] else { return nil }
        return copies[CopyKey(classMark: classMark, pathMark: mark)]
    }

    // MARK: following a packet

    /// Where the kernel sends a packet to `destination`: the site chain of the `sites` map, or nil when the
    /// address is in no remote range (not steered).
    public func siteChain(for destination: IPv4Address) -> String? {
        siteRanges.first { $0.first <= destination.value && destination.value <= $0.last }?.chain
    }

    /// The path a flow of the class whose ct mark is `classMark` takes through `siteChain`: the element of
    /// the site's map, and for a load-balanced class the bucket the flow hash picks. Nil when the map has no
    /// element for the class (a flow of it is not steered).
    public func decide(siteChain: String, classMark: UInt32, source: IPv4Address,
                       destination: IPv4Address) -> Decision? {
        guard let target = maps[siteChain]?[classMark] else { return nil }
        guard let hash = chainHashes[target] else {
            let later = established(siteChain: siteChain, flowBits: classMark)
            return Decision(siteChain: siteChain, pathChain: target, mark: chainMarks[target],
                            flowKey: later?.key, establishedChain: later?.chain)
        }
        // A balanced class: the flow hash picks a bucket, whose chain writes its bits into the ct mark; the
        // site map then gives class|bucket -> path.
        let bucket = FlowHash.bucket(source: source, destination: destination, modulus: hash.modulus, seed: hash.seed) + hash.offset
        guard let bits = bucketBits(hash)[bucket], let chain = maps[siteChain]?[classMark | bits] else { return nil }
        let later = established(siteChain: siteChain, flowBits: classMark | bits)
        return Decision(siteChain: siteChain, balance: Balance(chain: target, bucket: bucket, buckets: hash.modulus,
                                                               seed: hash.seed),
                        pathChain: chain, mark: chainMarks[chain], flowKey: later?.key, establishedChain: later?.chain)
    }

    /// A classified flow's ct mark (the site index its site chain writes, bits 31-24, with `flowBits`: class
    /// and bucket) and the chain the `flows` element of that key goes to. Nil when the site chain writes no
    /// index (a site without one: its established flows are steered by `sites`, like their first packet).
    func established(siteChain: String, flowBits: UInt32) -> (key: UInt32, chain: String?)? {
        guard let site = chainCtMarks[siteChain].map({ $0 & Conventions.siteMarkMask }), site != 0 else { return nil }
        return (site | flowBits, maps[SteeringNames.flowsMap]?[site | flowBits])
    }

    /// Hash value -> the ct mark bits the chain of that bucket writes (the `buckets` map a hash looks up).
    func bucketBits(_ hash: Hash) -> [UInt32: UInt32] {
        guard let map = hash.map, let buckets = maps[map] else { return [:] }
        return buckets.compactMapValues { chainCtMarks[$0] }
    }

    /// Bucket (hash value) -> path chain of a balanced class, as the kernel would resolve each bucket.
    func bucketTargets(siteChain: String, classMark: UInt32, hash: Hash) -> [UInt32: String] {
        guard let site = maps[siteChain] else { return [:] }
        return bucketBits(hash).compactMapValues { site[classMark | $0] }
    }

    /// One flow's way through the table.
    public struct Decision: Sendable, Hashable {
        public var siteChain: String
        public var balance: Balance?
        /// The chain that sets the path mark (and counts the class on that path).
        public var pathChain: String
        /// The packet mark `pathChain` writes (nil if its rule writes none: not our ruleset).
        public var mark: UInt32?
        /// The flow's ct mark once classified (site index . class . bucket): the key the `flows` map steers
        /// its later packets by. Nil when the site chain writes no index (those go through `sites` each time).
        public var flowKey: UInt32?
        /// The chain the `flows` element of `flowKey` goes to: where the flow's later packets are steered.
        /// Nil without a key or without an element (then they take the first packet's way).
        public var establishedChain: String?

        public init(siteChain: String, balance: Balance? = nil, pathChain: String, mark: UInt32?,
                    flowKey: UInt32? = nil, establishedChain: String? = nil) {
            self.siteChain = siteChain
            self.balance = balance
            self.pathChain = pathChain
            self.mark = mark
            self.flowKey = flowKey
            self.establishedChain = establishedChain
        }
    }

    public struct Balance: Sendable, Hashable {
        public var chain: String
        public var bucket: UInt32
        public var buckets: UInt32
        public var seed: UInt32
    }

    /// The distinct path chains a class can take through a site chain (one, or every bucket's).
    public func pathChains(siteChain: String, classMark: UInt32) -> [String] {
        guard let target = maps[siteChain]?[classMark] else { return [] }
        guard let hash = chainHashes[target] else { return [target] }
        return Array(Set(bucketTargets(siteChain: siteChain, classMark: classMark, hash: hash).values)).sorted()
    }

    /// How many buckets of a load-balanced target each path chain holds.
    public func bucketShares(siteChain: String, classMark: UInt32) -> [String: Int]? {
        guard let target = maps[siteChain]?[classMark], let hash = chainHashes[target] else { return nil }
        return Dictionary(bucketTargets(siteChain: siteChain, classMark: classMark, hash: hash).values.map { ($0, 1) },
                          uniquingKeysWith: +)
    }

    // MARK: decoding

    /// The xor operand of the `bitwise` right before expression `index` (the `(mark & ~ours) ^ value` the
    /// compiler writes): the value our bits get.
    static func xor(before index: Int, in rule: NFTables.ListedRule) -> UInt32? {
        guard index > 0, case .bitwise(_, _, _, let xor)? = rule.expressions[index - 1] else { return nil }
        return hostU32(xor)
    }

    static func hostU32(_ bytes: [UInt8]) -> UInt32? {
        guard bytes.count == 4 else { return nil }
        return bytes.reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    static func target(_ data: NFTData?) -> String? {
        switch data {
        case .verdict(.goto(let chain))?, .verdict(.jump(let chain))?: chain
        default: nil
        }
    }

    /// Interval-map elements (start elements with a verdict, end elements flagged INTERVAL_END, keys in
    /// network order, any order in a dump) as inclusive ranges.
    static func ranges(_ elements: [NFTElement]) -> [SiteRange] {
        // Adjacent ranges share a key: the first one's end and the next one's start. The end sorts first.
        func isEnd(_ e: NFTElement) -> Bool { e.flags & NFTElement.flagIntervalEnd != 0 }
        let sorted = elements.compactMap { e -> (UInt32, NFTElement)? in
            guard let key = IPv4Address(bytes: e.key) else { return nil }
            return (key.value, e)
        }.sorted { ($0.0, isEnd($0.1) ? 0 : 1) < ($1.0, isEnd($1.1) ? 0 : 1) }
        var out: [SiteRange] = []
        for (i, (start, e)) in sorted.enumerated() where !isEnd(e) {
            guard let chain = target(e.data) else { continue }
            let end = sorted[(i + 1)...].first { isEnd($0.1) }?.0
            out.append(SiteRange(first: start, last: end.map { $0 &- 1 } ?? UInt32.max, chain: chain))
        }
        return out
    }
}

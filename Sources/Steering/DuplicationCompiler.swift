import Model
import Netlink

/// Duplication (docs/STEERING.md, "Duplication"): the sending side copies each packet of a duplicated
/// class onto a second path in `table ip patronus_egress` (EgressCompiler: nft's `dup` exists only in ip/ip6 tables); the
/// receiving side, in `table inet patronus`, remembers every packet of a duplicated class that arrives from
/// a remote site for `Conventions.copySeenTimeoutMs` and drops a second arrival of the same packet.
extension SteeringCompiler {
    /// The receiving side, added to the inet table when any class duplicates.
    struct Deduplication {
        var chains: [NFTChain]
        var rules: [String: [NFTRule]]
        var staticSets: [SteeringRuleset.StaticSet]
        var maps: [SteeringRuleset.Map]
        /// The prerouting rule that sends UDP from remote sites to `dedup`.
        var hook: NFTRule
    }

    /// The key that identifies one packet: IP id, source and destination address, the UDP header (ports,
    /// length, checksum) and the first 12 bytes of the UDP payload (for RTP: flags, sequence, timestamp,
    /// SSRC). An original and its copy are the same bytes (the copy is made before anything rewrites the
    /// packet); two distinct packets of one flow share the key only if their IP id (16 bits), their
    /// checksum and their first 12 payload bytes all agree within the timeout. 32 bytes in reg32_00...07.
    /// A datagram shorter than 12 payload bytes, or a fragment, fails the load: it is neither remembered
    /// nor dropped.
    static let packetKey: [NFTExpression] = [
        .payload(base: NFT.networkHeader, offset: 4, length: 2, dreg: NFT.reg1),
        .payload(base: NFT.networkHeader, offset: 12, length: 8, dreg: .reg32_01),
        .payload(base: NFT.transportHeader, offset: 0, length: 20, dreg: .reg32_03),
    ]
    static let packetKeyLength: UInt32 = 32
    /// Each remembered packet's limiter: over after one packet (`limit rate over 1/hour burst 1 packets`).
    static let firstArrivalPasses = NFTExpression.limitOver(rate: 1, unitSeconds: 3600, burst: 1)

    /// An interface name as the kernel keys it (`ifname`): 16 bytes, zero padded.
    static func interfaceNameKey(_ name: String) -> [UInt8] {
        Array(name.utf8.prefix(15)) + Array(repeating: 0, count: 16 - min(name.utf8.count, 15))
    }

    /// (tunnel interface . remote prefix range) -> `<class>_dup<id>`, one element per path and prefix of its
    /// site. Two paths on one interface to one site cannot be told apart by their packets: the lower id counts.
    static func arrivalElements(_ plan: SteeringPlan, className: String) -> [NFTElement] {
        var out: [NFTElement] = []
        var seen = Set<[UInt8]>()
        for p in plan.paths.sorted(by: { $0.id < $1.id }) {
            for prefix in plan.destinations.first(where: { $0.site == p.site })?.prefixes.sorted() ?? [] {
                let name = interfaceNameKey(p.interface)
                let key = name + prefix.network.value.bigEndianBytes
                guard seen.insert(key).inserted else { continue }
                out.append(NFTElement(key: key, keyEnd: name + prefix.last.value.bigEndianBytes,
                                      data: .verdict(.goto(SteeringNames.duplicateChain(className, p.id)))))
            }
        }
        return out.sorted { $0.key.lexicographicallyPrecedes($1.key) }
    }

    static func deduplication(_ plan: SteeringPlan) -> Deduplication? {
        let duplicated = plan.classes.filter(\.duplicate)
        guard !duplicated.isEmpty else { return nil }
        var chains: [NFTChain] = []
        var rules: [String: [NFTRule]] = [:]
        var maps: [SteeringRuleset.Map] = []

        let seen = NFTSet(family: family, table: table, name: SteeringNames.copiesSeenSet,
                          flags: NFTSet.flagTimeout | NFTSet.flagDynamic, keyType: .other(4), keyLength: packetKeyLength,
                          userdata: NFTUserdata.keyByteorder(.big)
                              + NFTUserdata.comment("packets of duplicated classes seen: a second arrival is dropped", type: NFTUserdata.setCommentType),
                          timeoutMs: Conventions.copySeenTimeoutMs, size: Conventions.copySeenSize)
        let dedupChains = duplicated.map { SteeringNames.dedupClassChain($0.name) }
        let seenSet = SteeringRuleset.StaticSet(set: seen, elements: [], owners: dedupChains)

        let sources = prefixSet(SteeringNames.copySourcesSet, comment: "remote prefixes: where copies come from")
        let sourcesSet = SteeringRuleset.StaticSet(set: sources, elements: intervalElements(plan.destinations.flatMap(\.prefixes).map { ($0, nil) }),
                                                   owners: [SteeringNames.preroutingChain])
        let hook = rule(SteeringNames.preroutingChain, ipv4Only + [
            .meta(key: NFT.metaL4Proto, dreg: NFT.reg1),
            .cmp(sreg: NFT.reg1, op: NFT.eq, data: [TransportProtocol.udp.number]),
            .payload(base: NFT.networkHeader, offset: 12, length: 4, dreg: NFT.reg1),
            .lookup(sreg: NFT.reg1, set: sources.name, setID: nil, dreg: nil),
            .immediate(dreg: NFT.verdictRegister, data: .verdict(.jump(SteeringNames.dedupChain))),
        ], comment: "UDP from a remote site: drop second copies", sets: [sources], elements: [sourcesSet.elements])

        // dedup: the flow's class (classified here once, like a steered flow, so a one-way stream is known
        // too), then the class's chain if it duplicates.
        let classes = markMap(SteeringNames.dedupClassesMap, comment: "duplicated class -> its de-duplication")
        maps.append(.init(set: classes, elements: duplicated.map {
            NFTElement(key: $0.ctMark.hostBytes, data: .verdict(.goto(SteeringNames.dedupClassChain($0.name))))
        }))
        chains.append(NFTChain(family: family, table: table, name: SteeringNames.dedupChain,
                               userdata: NFTUserdata.comment("UDP from remote sites: the class, then its de-duplication")))
        rules[SteeringNames.dedupChain] = classifyOnce(SteeringNames.dedupChain) + [
            rule(SteeringNames.dedupChain, classBits + [
                .lookup(sreg: NFT.reg1, set: classes.name, setID: nil, dreg: NFT.verdictRegister),
            ], comment: nil, sets: [classes]),
        ]

        let paths = plan.paths.sorted { $0.slot < $1.slot }
        for c in duplicated {
            let name = SteeringNames.dedupClassChain(c.name)
            // Tunnel . source -> the path: one tunnel interface can carry paths to several sites (one peer
            // each), so the path of an arrival is its interface and the site its source address is in.
            let arrivals = NFTSet(family: family, table: table, name: SteeringNames.arrivalsMap(c.name),
                                  flags: NFTSet.flagMap | NFTSet.flagInterval | NFTSet.flagConcat,
                                  keyType: .concatenation([.ifname, .ipv4Address]), keyLength: 20, dataType: NFTSet.verdictDataType,
                                  dataLength: 0, fieldLengths: [16, 4],
                                  userdata: NFTUserdata.keyByteorder(.invalid) + NFTUserdata.dataByteorder(.invalid) + NFTUserdata.dataInterval(false)
                                      + NFTUserdata.comment("class \(c.name): tunnel . source of a second copy -> its path's counter", type: NFTUserdata.setCommentType))
            maps.append(.init(set: arrivals, elements: arrivalElements(plan, className: c.name)))
            chains.append(NFTChain(family: family, table: table, name: name,
                                   userdata: NFTUserdata.comment("class \(c.name): drop a packet seen in the last \(Conventions.copySeenTimeoutMs) ms")))
            // One rule, so that two copies handled at the same instant on two CPUs cannot both pass: the add
            // finds or inserts the packet's element atomically, and the element's own limiter (one packet,
            // refilled after an hour, i.e. never within the element's 2 s) lets exactly one arrival through:
            // the first breaks the rule (delivered), every later one goes on to its path's counter and drop.
            rules[name] = [
                rule(name, packetKey + [
                    .dynsetAdd(sreg: NFT.reg1, set: seen.name, setID: nil, timeoutMs: 0, element: firstArrivalPasses),
                    .meta(key: NFT.metaInputInterfaceName, dreg: NFT.reg1),
                    .payload(base: NFT.networkHeader, offset: 12, length: 4, dreg: .reg2),
                    .lookup(sreg: NFT.reg1, set: arrivals.name, setID: nil, dreg: NFT.verdictRegister),
                ], comment: "first arrival: remembered, delivered; a second: counted by path, dropped", sets: [seen, arrivals]),
            ]
            for p in paths {
                let drop = SteeringNames.duplicateChain(c.name, p.id)
                chains.append(NFTChain(family: family, table: table, name: drop,
                                       userdata: NFTUserdata.comment("class \(c.name): second copies arriving by \(p.label)")))
                rules[drop] = [rule(drop, [.counter, .immediate(dreg: NFT.verdictRegister, data: .verdict(.drop))], comment: nil)]
            }
        }
        return Deduplication(chains: chains, rules: rules, staticSets: [sourcesSet, seenSet], maps: maps, hook: hook)
    }
}

import Model
import Netlink

/// `table ip patronus_egress` (`Conventions.egressTable`): what is done to a packet on its way out, after
/// routing, in ONE base chain (`postrouting`, priority mangle), so that a packet pays one hook for all of
/// it. Two features live here:
/// - the copies of duplicated classes (docs/STEERING.md "Duplication"): nft's `dup` exists only in ip and
///   ip6 tables, not in inet;
/// - the shapers' htb band (docs/SHAPING.md): `meta priority`, which forwarding rewrites before the forward
///   hook, so only a late hook can set it.
/// Both only concern packets bound to a tunnel (path bits in the mark) or, for a shaped download, to an
/// uplink's ifb: every other packet leaves the chain by its first rule after the download rules.
extension SteeringCompiler {
    /// The egress table, or nil when no class duplicates and nothing is shaped. `interfaceIndex`: the
    /// tunnels' interface indexes (`dup` takes an index); a path whose interface does not exist gets no copy
    /// chain and no copies until it does. Rates and shaped interfaces are rtnetlink's business: only whether
    /// something is shaped, and the download shapers' uplinks and tunnels, matter here.
    ///
    /// The chain, in order: the download rules (a packet from a tunnel with a shaped download gets its
    /// uplink's mark); "not for a tunnel" (nor a download): return; the copies (one concatenated lookup,
    /// class . path, that misses for every packet not to be copied; a hit jumps to `copy_<class>_path<id>`:
    /// `dup to ADDRESS device INDEX`, ADDRESS the path's gateway or, on a point-to-point tunnel, the packet's
    /// own destination, and a counter); then the class's band and the overlay test (`shapeRules`).
    public static func compileEgress(_ plan: SteeringPlan, interfaceIndex: [String: Int32]) throws(SteeringError) -> SteeringRuleset? {
        let duplicated = plan.classes.filter(\.duplicate)
        let shaped = !plan.shapers.isEmpty || !plan.downloadShapers.isEmpty
        guard !duplicated.isEmpty || shaped else { return nil }
        let problems = plan.problems()
        guard problems.isEmpty else { throw .invalidPlan(problems) }
        let family = SteeringNames.egressFamily, table = SteeringNames.egressTable, hook = SteeringNames.egressChain
        var chains: [NFTChain] = []
        var rules: [String: [NFTRule]] = [:]
        var staticSets: [SteeringRuleset.StaticSet] = []
        var maps: [SteeringRuleset.Map] = []

        let shaping = shapeRules(plan)
        var chain = shaped ? shaping.downloads : []
        chain.append(shaping.exit)

        if !duplicated.isEmpty {
            let paths = plan.paths.sorted { $0.slot < $1.slot }
            var present: [UInt16: SteeringPlan.SteeringPath] = [:]
            for c in duplicated {
                for p in paths {
                    guard let index = interfaceIndex[p.interface] else { continue }
                    present[p.slot] = p
                    let name = SteeringNames.copyChain(c.name, p.id)
                    chains.append(NFTChain(family: family, table: table, name: name,
                                           userdata: NFTUserdata.comment("class \(c.name): copies sent by \(p.label)")))
                    let address: NFTExpression = p.gateway.map { .immediate(dreg: NFT.reg1, data: .value($0.value.bigEndianBytes)) }
                        ?? .payload(base: NFT.networkHeader, offset: 16, length: 4, dreg: NFT.reg1)
                    // Forwarded packets only (an input interface): the router's own packets are not copied.
                    rules[name] = [rule(name, [
                        .meta(key: .inputInterface, dreg: NFT.reg1),
                        .cmp(sreg: NFT.reg1, op: NFT.neq, data: [0, 0, 0, 0]),
                        address,
                        .immediate(dreg: .reg2, data: .value(UInt32(bitPattern: index).hostBytes)),
                        .dup(sregAddress: NFT.reg1, sregDevice: .reg2),
                        .counter,
                    ], comment: nil, family: family, table: table)]
                }
            }
            let copies = NFTSet(family: family, table: table, name: SteeringNames.copiesMap, flags: NFTSet.flagMap,
                                keyType: .concatenation([.mark, .mark]), keyLength: 8, dataType: NFTSet.verdictDataType, dataLength: 0,
                                userdata: NFTUserdata.keyByteorder(.host) + NFTUserdata.dataByteorder(.invalid) + NFTUserdata.dataInterval(false)
                                    + NFTUserdata.comment("class . path taken -> copy to the second path", type: NFTUserdata.setCommentType))
            let classByID = Dictionary(duplicated.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
            var elements: [NFTElement] = []
            for copy in plan.copies {
                guard let c = classByID[copy.classID], let from = plan.paths.first(where: { $0.slot == copy.from }),
                      let to = present[copy.to] else { continue }
                // jump: after the copy, the original goes on to its band.
                elements.append(NFTElement(key: c.ctMark.hostBytes + from.mark.hostBytes,
                                           data: .verdict(.jump(SteeringNames.copyChain(c.name, to.id)))))
            }
            maps.append(.init(set: copies, elements: elements))
            chain.append(rule(hook, [
                .ct(key: NFT.ctMark, dreg: NFT.reg1),
                .bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: classMask.hostBytes, xor: [0, 0, 0, 0]),
                .meta(key: NFT.metaMark, dreg: NFT.reg32_01),
                .bitwise(sreg: NFT.reg32_01, dreg: NFT.reg32_01, mask: pathMask.hostBytes, xor: [0, 0, 0, 0]),
                .lookup(sreg: NFT.reg1, set: copies.name, setID: nil, dreg: NFT.verdictRegister),
            ], comment: "class . path -> copy", sets: [copies], family: family, table: table))
        }

        if shaped {
            chain += shaping.bands
            chains.append(NFTChain(family: family, table: table, name: SteeringNames.shapeControlChain,
                                   userdata: NFTUserdata.comment("our control traffic (to an overlay address): its band")))
            rules[SteeringNames.shapeControlChain] = shaping.control
            if let bands = shaping.bandsMap { staticSets.append(bands) }
        }
        let what = [duplicated.isEmpty ? nil : "copies of duplicated classes", shaped ? "shaped tunnels' htb band (meta priority)" : nil]
        chains.append(NFTChain(family: family, table: table, name: hook,
                               hook: NFTHook(hook: NFTHook.postrouting, priority: NFTHook.manglePriority, type: "filter"),
                               userdata: NFTUserdata.comment("packets bound to a tunnel: " + what.compactMap { $0 }.joined(separator: ", "))))
        rules[hook] = chain
        return SteeringRuleset(
            table: NFTTable(family: family, name: table,
                            userdata: NFTUserdata.comment("patronus-router egress: copies and shaper bands; managed, do not edit")),
            chains: chains, rules: rules, staticSets: staticSets, maps: maps, ipRules: [], routes: [])
    }
}

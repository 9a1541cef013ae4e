import Model
import Netlink

/// Compiles a `SteeringPlan` into a `SteeringRuleset`. Pure and deterministic: the same plan always gives
/// the same bytes, which is what makes fingerprints and the committed reference ruleset work.
///
/// Datapath (per packet, flat in the number of policies): prerouting/output look the destination up in the
/// interval map `sites` (remote prefix -> `site_<name>` chain); there the class bits of the ct mark select,
/// in the hash map `site_<name>`, the chain `<class>_path<id>` (sets the path's packet mark, counts) or
/// `lb_<class>_<site>` (hashes the flow's addresses into a bucket map). An established flow's packet runs
/// exactly those two lookups and the mark write: the "has this flow a class?" test sits in the site chain
/// behind the map lookup, so it is paid once per flow (the map misses class 0), not per packet, and traffic
/// that is not for a remote site never reads the ct mark. A flow without a class jumps once to `classify`
/// (first packet in the original direction) or `classify_reply` (first packet a reply), whose rules (one per
/// class match, set lookups inside) write the class id into the ct mark. Only the mark bits of
/// `Conventions` are written: the path field of the packet mark, the class field of the ct mark.
///
/// Why two lookups and not one `ip daddr . class` interval map: a re-steer replaces elements, and the
/// kernel commits an element replace in a hash map in ~8 us but in a concatenated-interval (pipapo) map
/// in ~75 us on this machine (bench/results/resteer.txt); the destination map changes only with the sites.
public enum SteeringCompiler {
    static let family = SteeringNames.family
    static let table = SteeringNames.table
    static let pathMask = Conventions.pathMarkMask
    static let classMask = Conventions.classMarkMask

    /// Userdata TLV type carrying a rule's fingerprint (nft ignores unknown udata types when listing).
    public static let fingerprintUserdataType: UInt8 = 0xf0

    public static func compile(_ plan: SteeringPlan, uplinkRoutes: UplinkRoutes = [:]) throws(SteeringError) -> SteeringRuleset {
        var r = try compileStructure(plan, uplinkRoutes: uplinkRoutes)
        try addChoices(plan, to: &r)
        return r
    }

    /// The part of the ruleset that depends on classes, paths and destinations only (not on choices):
    /// Steering caches it, so a re-steer compiles nothing but map elements.
    /// `uplinkRoutes`: the main table's routes out of each pinned uplink's interface (by interface name),
    /// which the uplink's table copies.
    public static func compileStructure(_ plan: SteeringPlan, uplinkRoutes: UplinkRoutes = [:]) throws(SteeringError) -> SteeringRuleset {
        let problems = plan.structureProblems()
        guard problems.isEmpty else { throw .invalidPlan(problems) }

        var chains: [NFTChain] = []
        var rules: [String: [NFTRule]] = [:]
        var staticSets: [SteeringRuleset.StaticSet] = []
        var maps: [SteeringRuleset.Map] = []

        // Per (class, path): set the path mark and count. Created for every pair so that moving a class
        // is an element change only.
        for c in plan.classes {
            for p in plan.paths.sorted(by: { $0.slot < $1.slot }) {
                let name = SteeringNames.classPathChain(c.name, p.id)
                chains.append(NFTChain(family: family, table: table, name: name,
                                       userdata: NFTUserdata.comment("class \(c.name) via \(p.label)")))
                var e = setMark(meta: true, value: p.mark)
                if c.counters { e.append(.counter) }
                rules[name] = [rule(name, e, comment: nil)]
            }
        }

        // Per site: a chain whose class -> path hash map is what a re-steer changes.
        var sitesElements: [(IPv4Prefix, NFTVerdict)] = []
        let transit = transitRefusal(plan)
        if let transit { staticSets.append(transit.set) }
        for d in plan.destinations {
            let name = SteeringNames.siteChain(d.name)
            let map = markMap(name, comment: "class -> path to \(d.name)")
            maps.append(.init(set: map, elements: []))
            chains.append(NFTChain(family: family, table: table, name: name,
                                   userdata: NFTUserdata.comment("to site \(d.name) (\(d.site))")))
            // A classified flow leaves by the first rule (class and, for a balanced class, the flow's bucket);
            // only a flow's first steered packet reads on. The last rule looks the class alone up: a flow
            // just classified (no bucket yet: a balanced class goes on to its `lb_` chain), or one hashed
            // while its class was balanced that now takes one path.
            rules[name] = [
                rule(name, classAndBucketBits + [
                    .lookup(sreg: NFT.reg1, set: name, setID: nil, dreg: NFT.verdictRegister),
                ], comment: nil, sets: [map]),
            ] + (transit.map { [$0.rule(name)] } ?? []) + classifyOnce(name, siteIndex: d.index) + [
                rule(name, classBits + [
                    .lookup(sreg: NFT.reg1, set: name, setID: nil, dreg: NFT.verdictRegister),
                ], comment: nil, sets: [map]),
            ]
            for prefix in d.prefixes { sitesElements.append((prefix, .goto(name))) }
        }
        // A flow's site . class . bucket (ct mark, written when it was classified by a packet of its original
        // direction) -> its path: every later packet of that direction is steered by this one hash lookup,
        // without the `sites` interval lookup by address. Elements come with the choices (`addChoices`).
        maps.append(.init(set: flowsMap, elements: []))
        let sites = NFTSet(family: family, table: table, name: SteeringNames.sitesMap,
                           flags: NFTSet.flagMap | NFTSet.flagInterval, keyType: .ipv4Address, keyLength: 4,
                           dataType: NFTSet.verdictDataType, dataLength: 0,
                           userdata: NFTUserdata.keyByteorder(.big) + NFTUserdata.dataByteorder(.invalid) + NFTUserdata.dataInterval(false)
                               + NFTUserdata.comment("remote prefix -> site", type: NFTUserdata.setCommentType))
        let sitesSet = SteeringRuleset.StaticSet(set: sites, elements: intervalElements(sitesElements), owners: [SteeringNames.preroutingChain, SteeringNames.outputChain])

        // Classification, once per flow, first match wins (class order = policy priority). A flow is
        // classified by its first packet that is steered: usually the first packet of the original direction,
        // but for a flow opened from a remote site (a call to a local SIP server) it is the first reply, so
        // `classify_reply` matches the same policies on the reply's mirrored fields (source port = the
        // original destination port, source address = the original destination).
        var classify: [NFTRule] = []
        var classifyReply: [NFTRule] = []
        let classifiers = [SteeringNames.classifyChain, SteeringNames.classifyReplyChain]
        for c in plan.classes {
            for (i, m) in c.matches.enumerated() {
                let base = c.matches.count == 1 ? c.name : "\(c.name)_\(i + 1)"
                // Each set of the match, with the expressions loading its key per direction (original, reply).
                var loads: [(set: SteeringRuleset.StaticSet, original: [NFTExpression], reply: [NFTExpression])] = []
                for (prefixes, suffix, offset) in [(m.sources, "src", UInt32(12)), (m.destinations, "dst", UInt32(16))] where !prefixes.isEmpty {
                    let s = prefixSet("\(base)_\(suffix)", comment: "policy \(c.name): \(suffix == "src" ? "source" : "destination") prefixes")
                    let mirrored: UInt32 = offset == 12 ? 16 : 12
                    loads.append((.init(set: s, elements: intervalElements(prefixes.map { ($0, nil) }), owners: classifiers), [.payload(base: NFT.networkHeader, offset: offset, length: 4, dreg: NFT.reg1)],
                                  [.payload(base: NFT.networkHeader, offset: mirrored, length: 4, dreg: NFT.reg1)]))
                }
                if !m.dscp.isEmpty {
                    let s = NFTSet(family: family, table: table, name: "\(base)_dscp", flags: 0, keyType: .dscp, keyLength: 1,
                                   userdata: NFTUserdata.keyByteorder(.big) + NFTUserdata.comment("policy \(c.name): DSCP", type: NFTUserdata.setCommentType))
                    let dscp: [NFTExpression] = [.payload(base: NFT.networkHeader, offset: 1, length: 1, dreg: NFT.reg1),
                                                 .bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: [0xfc], xor: [0]),
                                                 .shiftRight(sreg: NFT.reg1, dreg: NFT.reg1, length: 1, shift: 2)]
                    loads.append((.init(set: s, elements: Set(m.dscp).sorted().map { NFTElement(key: [$0]) }, owners: classifiers),
                                  dscp, dscp))
                }
                if !m.services.isEmpty {
                    let s = NFTSet(family: family, table: table, name: "\(base)_svc", flags: NFTSet.flagInterval | NFTSet.flagConcat,
                                   keyType: .concatenation([.inetProtocol, .inetService]), keyLength: 8, fieldLengths: [1, 2],
                                   userdata: concatUserdata + NFTUserdata.comment("policy \(c.name): protocol . port", type: NFTUserdata.setCommentType))
                    let proto: [NFTExpression] = [.meta(key: NFT.metaL4Proto, dreg: NFT.reg1),
                                                  .byteorder(sreg: NFT.reg1, dreg: NFT.reg1, op: NFT.hton, length: 1, size: 2)]
                    loads.append((.init(set: s, elements: serviceElements(m.services), owners: classifiers), proto + [.payload(base: NFT.transportHeader, offset: 2, length: 2, dreg: NFT.reg32_01)],
                                  proto + [.payload(base: NFT.transportHeader, offset: 0, length: 2, dreg: NFT.reg32_01)]))
                }
                staticSets += loads.map(\.set)
                let ipFields = !m.sources.isEmpty || !m.destinations.isEmpty || !m.dscp.isEmpty
                let tail: [NFTExpression] = setMark(meta: false, value: c.ctMark) + (c.counters ? [.counter] : [])
                    + [.immediate(dreg: NFT.verdictRegister, data: .verdict(.return))]
                for reply in [false, true] {
                    var e: [NFTExpression] = ipFields ? ipv4Only : []
                    for l in loads {
                        e += reply ? l.reply : l.original
                        e.append(.lookup(sreg: NFT.reg1, set: l.set.set.name, setID: nil, dreg: nil))
                    }
                    let chain = reply ? SteeringNames.classifyReplyChain : SteeringNames.classifyChain
                    let r = rule(chain, e + tail, comment: SteeringNames.classifyComment(c.name), sets: loads.map(\.set.set),
                                 elements: loads.map(\.set.elements))
                    if reply { classifyReply.append(r) } else { classify.append(r) }
                }
            }
        }
        for chain in classifiers {
            let r = rule(chain, setMark(meta: false, value: Conventions.classMark(id: Conventions.unclassifiedClassID)) + [.counter],
                         comment: "no policy matched: not steered")
            if chain == SteeringNames.classifyChain { classify.append(r) } else { classifyReply.append(r) }
        }
        chains.append(NFTChain(family: family, table: table, name: SteeringNames.classifyChain,
                               userdata: NFTUserdata.comment("once per flow, first packet original: policy -> class id in ct mark")))
        chains.append(NFTChain(family: family, table: table, name: SteeringNames.classifyReplyChain,
                               userdata: NFTUserdata.comment("once per flow, first packet a reply: the same policies, mirrored")))
        rules[SteeringNames.classifyChain] = classify
        rules[SteeringNames.classifyReplyChain] = classifyReply
        staticSets.append(sitesSet)

        // The hooks. Forwarded traffic (prerouting) never arrives with our path bits set, so only local
        // traffic (output) pays for the "pinned by SO_MARK" check; fewer expressions per forwarded packet.
        let pinned = rule(SteeringNames.outputChain, [
            .meta(key: NFT.metaMark, dreg: NFT.reg1),
            .bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: pathMask.hostBytes, xor: [0, 0, 0, 0]),
            .cmp(sreg: NFT.reg1, op: NFT.neq, data: [0, 0, 0, 0]),
            .immediate(dreg: NFT.verdictRegister, data: .verdict(.return)),
        ], comment: "already pinned to a path (probes): keep")
        for (name, hook, type) in [(SteeringNames.preroutingChain, NFTHook.prerouting, "filter"),
                                   (SteeringNames.outputChain, NFTHook.output, "route")] {
            chains.append(NFTChain(family: family, table: table, name: name,
                                   hook: NFTHook(hook: hook, priority: NFTHook.manglePriority, type: type),
                                   userdata: NFTUserdata.comment(name == "output" ? "local traffic: a new mark re-routes" : "forwarded traffic")))
            let steer = [
                rule(name, [
                    .ct(key: NFT.ctDirection, dreg: NFT.reg1),
                    .cmp(sreg: NFT.reg1, op: NFT.eq, data: [0]),
                    .ct(key: NFT.ctMark, dreg: NFT.reg1),
                    .bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: flowKeyMask.hostBytes, xor: [0, 0, 0, 0]),
                    .lookup(sreg: NFT.reg1, set: SteeringNames.flowsMap, setID: nil, dreg: NFT.verdictRegister),
                ], comment: "established flow: its path by the ct mark", sets: [flowsMap]),
                rule(name, ipv4Only + [
                    .payload(base: NFT.networkHeader, offset: 16, length: 4, dreg: NFT.reg1),
                    .lookup(sreg: NFT.reg1, set: SteeringNames.sitesMap, setID: nil, dreg: NFT.verdictRegister),
                ], comment: "remote destination: to its site", sets: [sites], elements: [sitesSet.elements]),
            ]
            rules[name] = name == SteeringNames.outputChain ? [pinned] + steer : steer
        }
        if let receiver = deduplication(plan) {
            chains.insert(contentsOf: receiver.chains, at: 0)
            rules.merge(receiver.rules) { _, new in new }
            staticSets += receiver.staticSets
            maps += receiver.maps
            rules[SteeringNames.preroutingChain, default: []].append(receiver.hook)
        }

        let (ipRules, routes) = policyRouting(plan, uplinkRoutes: uplinkRoutes)
        return SteeringRuleset(
            table: NFTTable(family: family, name: table,
                            userdata: NFTUserdata.comment("patronus-router steering; managed, do not edit")),
            chains: chains, rules: rules, staticSets: staticSets, maps: maps, ipRules: ipRules, routes: routes)
    }

    /// Transit refusal on a site that does not relay (nil for a relay, or without paths or sites): a packet
    /// that arrived by one of our tunnels (a path's interface) and is bound for a remote site (its prefix or
    /// overlay address: the `sites` map sent it to that site's chain) is another member routing its traffic
    /// through us: dropped, counted. The rule sits in every site chain after the established flows' lookup,
    /// so only packets that lookup does not steer pay for it (a flow's first packets, and flows no policy
    /// steers); nothing else of the forwarding path does (a `forward` base chain cost every forwarded
    /// packet a hook: docs/STEERING.md "Transit"). WireGuard accepts from a peer only sources inside its
    /// allowed IPs, so a member cannot pass its packets off as a flow a LAN host of ours opened.
    static func transitRefusal(_ plan: SteeringPlan) -> (set: SteeringRuleset.StaticSet, rule: (String) -> NFTRule)? {
        let tunnels = Set(plan.paths.map(\.interface)).sorted()
        guard !plan.relay, !tunnels.isEmpty, !plan.destinations.isEmpty else { return nil }
        let set = NFTSet(family: family, table: table, name: SteeringNames.tunnelsSet, flags: 0, keyType: .ifname, keyLength: 16,
                         userdata: NFTUserdata.keyByteorder(.host)
                             + NFTUserdata.comment("our tunnels: no transit between them", type: NFTUserdata.setCommentType))
        let elements = tunnels.map { NFTElement(key: interfaceNameKey($0)) }
        let staticSet = SteeringRuleset.StaticSet(set: set, elements: elements,
                                                  owners: plan.destinations.map { SteeringNames.siteChain($0.name) })
        return (staticSet, { chain in
            rule(chain, [
                .meta(key: NFT.metaInputInterfaceName, dreg: NFT.reg1),
                .lookup(sreg: NFT.reg1, set: set.name, setID: nil, dreg: nil),
                .counter,
                .immediate(dreg: NFT.verdictRegister, data: .verdict(.drop)),
            ], comment: transitRefusedComment, sets: [set], elements: [elements])
        })
    }

    /// The comment of the site chains' transit drop rule (how counters and `status` find it).
    public static let transitRefusedComment = "arrived by one of our tunnels: transit refused (not a relay)"

    /// The shapers' part of the egress table's `postrouting` chain (forwarding rewrites `meta priority`
    /// from the TOS before the forward hook, so only a late hook can set it): for packets bound to a tunnel
    /// (path bits in the mark), the htb class of the shaped tunnel they leave by. Every packet pays for it,
    /// so it is short: after the exit (the "not for a tunnel" return, shared with the copies), one lookup of
    /// the class in `class_bands` (realtime and bulk classes; the rest stays unset and htb puts it in its
    /// default, standard, class), then one address test that sends only traffic to an overlay address (ours:
    /// probes, their replies, announcements, bandwidth trains, also when a relay forwards them) on to
    /// `shape_control`: trains take htb's direct queue (unshaped, so a test measures the path, not our
    /// shaper), the rest the realtime class. Packets that leave by an unshaped interface carry the priority
    /// harmlessly (its low 4 bits, what pfifo_fast reads, are 0).
    /// Returns the download rules (before the exit), the exit, the band rules (after the copies), the
    /// `shape_control` rules and the bands map.
    static func shapeRules(_ plan: SteeringPlan) -> (downloads: [NFTRule], exit: NFTRule, bands: [NFTRule], control: [NFTRule],
                                                   bandsMap: SteeringRuleset.StaticSet?) {
        let chain = SteeringNames.egressChain, control = SteeringNames.shapeControlChain
        let family = SteeringNames.egressFamily, table = SteeringNames.egressTable
        func rule(_ chain: String, _ expressions: [NFTExpression], comment: String?, sets: [NFTSet] = []) -> NFTRule {
            SteeringCompiler.rule(chain, expressions, comment: comment, sets: sets, family: family, table: table)
        }
        func setPriority(_ value: UInt32) -> [NFTExpression] {
            [.immediate(dreg: NFT.reg1, data: .value(value.hostBytes)),
             .metaSet(key: NFT.metaPriority, sreg: NFT.reg1),
             .immediate(dreg: NFT.verdictRegister, data: .verdict(.return))]
        }
        func udpPort(_ offset: UInt32, _ port: UInt16) -> [NFTExpression] {
            [.meta(key: NFT.metaL4Proto, dreg: NFT.reg1),
             .cmp(sreg: NFT.reg1, op: NFT.eq, data: [TransportProtocol.udp.number]),
             .payload(base: NFT.transportHeader, offset: offset, length: 2, dreg: NFT.reg1),
             .cmp(sreg: NFT.reg1, op: NFT.eq, data: [UInt8(port >> 8), UInt8(port & 0xff)])]
        }
        // A download (arrived over a tunnel with a shaped download, leaves by no tunnel) gets its uplink's
        // mark, which the LAN devices' filters redirect to the uplink's ifb, then its band like an upload.
        var out: [NFTRule] = []
        for d in plan.downloadShapers.sorted(by: { $0.slot < $1.slot }) {
            for tunnel in d.tunnels.sorted() {
                out.append(rule(chain, [
                    .meta(key: NFT.metaInputInterfaceName, dreg: NFT.reg1),
                    .cmp(sreg: NFT.reg1, op: NFT.eq, data: interfaceNameKey(tunnel)),
                    .meta(key: NFT.metaMark, dreg: NFT.reg1),
                    .bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: pathMask.hostBytes, xor: [0, 0, 0, 0]),
                    .cmp(sreg: NFT.reg1, op: NFT.eq, data: [0, 0, 0, 0]),
                    .meta(key: NFT.metaMark, dreg: NFT.reg1),
                    .bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: (~Conventions.uplinkMarkMask).hostBytes,
                             xor: Conventions.uplinkMark(slot: d.slot).hostBytes),
                    .metaSet(key: NFT.metaMark, sreg: NFT.reg1),
                ], comment: "download of uplink \(d.slot) over \(tunnel): to \(d.device)"))
            }
        }
        let downloads = !plan.downloadShapers.isEmpty
        let notShaped: UInt32 = downloads ? pathMask | Conventions.uplinkMarkMask : pathMask
        let exit = rule(chain, [
            .meta(key: NFT.metaMark, dreg: NFT.reg1),
            .bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: notShaped.hostBytes, xor: [0, 0, 0, 0]),
            .cmp(sreg: NFT.reg1, op: NFT.eq, data: [0, 0, 0, 0]),
            .immediate(dreg: NFT.verdictRegister, data: .verdict(.return)),
        ], comment: downloads ? "neither for a tunnel nor a download" : "not for a tunnel")
        var bandRules: [NFTRule] = []
        var bands: SteeringRuleset.StaticSet?
        let banded = plan.classes.filter { $0.band != .standard }
        if !banded.isEmpty {
            let map = NFTSet(family: family, table: table, name: SteeringNames.bandsMap, flags: NFTSet.flagMap, keyType: .mark,
                             keyLength: 4, dataType: .classID, dataLength: 4,
                             userdata: NFTUserdata.keyByteorder(.host) + NFTUserdata.dataByteorder(.host) + NFTUserdata.dataInterval(false)
                                 + NFTUserdata.comment("class -> htb band (meta priority)", type: NFTUserdata.setCommentType))
            bands = .init(set: map, elements: banded.map {
                NFTElement(key: $0.ctMark.hostBytes, data: .value(Conventions.shaperPriority($0.band).hostBytes))
            }, owners: [chain])
            bandRules.append(rule(chain, classBits + [
                .lookup(sreg: NFT.reg1, set: SteeringNames.bandsMap, setID: nil, dreg: NFT.reg1),
                .metaSet(key: NFT.metaPriority, sreg: NFT.reg1),
                .immediate(dreg: NFT.verdictRegister, data: .verdict(.return)),
            ], comment: "class: its band (" + banded.map { "\($0.name) \($0.band)" }.joined(separator: ", ") + ")", sets: [map]))
        }
        let pool = Conventions.overlayPool
        bandRules.append(rule(chain, [   // an ip table: IPv4 only, no nfproto test (nft 1.0.6 cannot list one there)
            .payload(base: NFT.networkHeader, offset: 16, length: 4, dreg: NFT.reg1),
            .bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: IPv4Address(pool.mask).bytes, xor: [0, 0, 0, 0]),
            .cmp(sreg: NFT.reg1, op: NFT.eq, data: pool.network.bytes),
            .immediate(dreg: NFT.verdictRegister, data: .verdict(.goto(control))),
        ], comment: "to an overlay address: our control traffic"))
        let controlRules = [
            rule(control, udpPort(2, Conventions.bandwidthPort) + setPriority(Conventions.shaperDirectPriority),
                 comment: "bandwidth trains: unshaped"),
            rule(control, udpPort(2, Conventions.probePort) + setPriority(Conventions.shaperPriority(.realtime)),
                 comment: "probes: realtime"),
            rule(control, udpPort(0, Conventions.probePort) + setPriority(Conventions.shaperPriority(.realtime)),
                 comment: "probe replies: realtime"),
            rule(control, udpPort(2, Conventions.discoveryPort) + setPriority(Conventions.shaperPriority(.realtime)),
                 comment: "announcements through the tunnel: realtime"),
        ]
        return (out, exit, bandRules, controlRules, bands)
    }

    /// The ip rules and routes of a plan (`Conventions`, "ip rules"). Uplink pinning first; then every
    /// packet without path bits leaves the band with one check; a steered packet checks the group rules (one
    /// per group of 64 slots that has a path) and then the rules of its own group only: at most 64 + 64
    /// checks with 4094 paths, instead of one per path.
    static func policyRouting(_ plan: SteeringPlan, uplinkRoutes: UplinkRoutes) -> ([IPRule], [SteeringRuleset.Route]) {
        var ipRules: [IPRule] = []
        var routes: [SteeringRuleset.Route] = []
        for u in plan.uplinks.sorted(by: { $0.slot < $1.slot }) {
            ipRules.append(IPRule(priority: Conventions.uplinkRulePriority, fwmark: u.mark, fwmask: Conventions.uplinkMarkMask,
                                  table: u.table, protocolTag: Conventions.uplinkProtocol))
            for r in (uplinkRoutes[u.interface] ?? []).sorted(by: { ($0.prefix, $0.gateway?.value ?? 0) < ($1.prefix, $1.gateway?.value ?? 0) }) {
                routes.append(.init(prefix: r.prefix, table: u.table, interface: u.interface, gateway: r.gateway))
            }
        }
        let paths = plan.paths.sorted { $0.slot < $1.slot }
        guard !paths.isEmpty else { return (ipRules, routes) }
        let tag = Conventions.steeringProtocol
        ipRules.append(IPRule(priority: Conventions.unsteeredRulePriority, fwmark: 0, fwmask: pathMask,
                              action: .goto(Conventions.bandEndPriority), protocolTag: tag))
        ipRules.append(IPRule(priority: Conventions.bandEndPriority, action: .nop, protocolTag: tag))
        // Group rules only when the paths span two groups or more: with one group (up to 63 paths, the
        // usual site) a steered packet goes straight on to that group's rules, one goto fewer.
        let spanned = Set(paths.map { Conventions.pathGroup(slot: $0.slot) })
        var groups = Set<UInt16>()
        for p in paths where spanned.count > 1 && groups.insert(Conventions.pathGroup(slot: p.slot)).inserted {
            let group = Conventions.pathGroup(slot: p.slot)
            ipRules.append(IPRule(priority: Conventions.pathGroupRulePriority, fwmark: Conventions.pathGroupMark(group: group),
                                  fwmask: Conventions.pathGroupMask, action: .goto(Conventions.pathRulePriority(slot: p.slot)),
                                  protocolTag: tag))
        }
        for p in paths {
            ipRules.append(IPRule(priority: Conventions.pathRulePriority(slot: p.slot), fwmark: p.mark, fwmask: pathMask,
                                  table: p.table, protocolTag: tag))
            for prefix in plan.destinations.first(where: { $0.site == p.site })?.prefixes.sorted() ?? [] {
                routes.append(.init(prefix: prefix, table: p.table, interface: p.interface, gateway: p.gateway))
            }
        }
        return (ipRules, routes)
    }

    /// Adds what the choices decide: the `steer` map's elements and, for balanced choices, the bucket
    /// chains and maps. Cheap: no set declarations or class rules are rebuilt.
    public static func addChoices(_ plan: SteeringPlan, to r: inout SteeringRuleset) throws(SteeringError) {
        let problems = plan.choiceProblems()
        guard problems.isEmpty else { throw .invalidPlan(problems) }
        let classByID = Dictionary(plan.classes.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        let destinationBySite = Dictionary(plan.destinations.map { ($0.site, $0) }, uniquingKeysWith: { a, _ in a })
        let pathID = Dictionary(plan.paths.map { ($0.slot, $0.id) }, uniquingKeysWith: { a, _ in a })
        func pathChain(_ c: SteeringPlan.TrafficClass, _ slot: UInt16) -> String {
            SteeringNames.classPathChain(c.name, pathID[slot] ?? Int64(slot)) // choiceProblems: every slot is known
        }
        var chains: [NFTChain] = []
        var rules: [String: [NFTRule]] = [:]
        var maps: [SteeringRuleset.Map] = []
        // Load balancing. A flow of a balanced class is hashed once, by its first packet: the site map sends
        // class|0 to `lb_<class>_<site>`, which hashes the flow's addresses into bucket 1...16 (`buckets` ->
        // `bucket_<n>`, which writes n into the ct mark's bucket field) and then looks the bucket up in its
        // own map (bucket -> path). Every later packet of the flow finds class|bucket -> path in the site
        // chain's first lookup: no hash per packet. The bucket -> path elements are in both maps because
        // the kernel refuses a chain that looks up a map holding a verdict to itself (the site map holds
        // class|0 -> `lb_...`): a loop, even if no packet could take it. A path's weight is the number of
        // buckets it holds.
        var siteElements: [String: [NFTElement]] = [:]
        // The same choices keyed by the site's index too (`flows`), for flows that carry it in the ct mark.
        var flowElements: [NFTElement] = []
        var balanced = false
        for choice in plan.choices {
            guard let c = classByID[choice.classID], let d = destinationBySite[choice.site] else { continue }
            let siteChain = SteeringNames.siteChain(d.name)
            let site = d.index.map(Conventions.siteMark(index:))
            switch choice.target {
            case .path(let slot):
                siteElements[siteChain, default: []].append(NFTElement(key: c.ctMark.hostBytes, data: .verdict(.goto(pathChain(c, slot)))))
                if let site { flowElements.append(NFTElement(key: (site | c.ctMark).hostBytes, data: .verdict(.goto(pathChain(c, slot))))) }
            case .buckets(let slots):
                balanced = true
                let name = SteeringNames.balanceChain(c.name, d.name)
                let map = markMap(name, comment: "class \(c.name) to \(d.name): flow hash bucket -> path")
                chains.append(NFTChain(family: family, table: table, name: name,
                                       userdata: NFTUserdata.comment("class \(c.name) to \(d.name): load balanced, the flow's first packet")))
                rules[name] = [
                    rule(name, ipv4Only + [
                        .payload(base: NFT.networkHeader, offset: 12, length: 4, dreg: .reg2),
                        .payload(base: NFT.networkHeader, offset: 16, length: 4, dreg: .reg32_05),
                        .jhash(sreg: .reg2, length: 8, dreg: NFT.reg1, modulus: Conventions.balanceBuckets,
                               seed: SteeringNames.hashSeed, offset: 1),
                        .lookup(sreg: NFT.reg1, set: SteeringNames.bucketsMap, setID: nil, dreg: NFT.verdictRegister),
                    ], comment: "hash the flow into a bucket, once", sets: [bucketsMap]),
                    rule(name, bucketBits + [
                        .lookup(sreg: NFT.reg1, set: name, setID: nil, dreg: NFT.verdictRegister),
                    ], comment: nil, sets: [map]),
                ]
                var elements = [NFTElement(key: c.ctMark.hostBytes, data: .verdict(.goto(name)))]
                var bucketElements: [NFTElement] = []
                for (i, slot) in slots.enumerated() {
                    let bucket = Conventions.bucketMark(UInt32(i + 1))
                    elements.append(NFTElement(key: (c.ctMark | bucket).hostBytes, data: .verdict(.goto(pathChain(c, slot)))))
                    bucketElements.append(NFTElement(key: bucket.hostBytes, data: .verdict(.goto(pathChain(c, slot)))))
                    if let site { flowElements.append(NFTElement(key: (site | c.ctMark | bucket).hostBytes, data: .verdict(.goto(pathChain(c, slot))))) }
                }
                siteElements[siteChain, default: []] += elements
                maps.append(.init(set: map, elements: bucketElements))
            }
        }
        if balanced {
            var elements: [NFTElement] = []
            for bucket in 1...Conventions.balanceBuckets {
                let name = SteeringNames.bucketChain(bucket)
                chains.append(NFTChain(family: family, table: table, name: name,
                                       userdata: NFTUserdata.comment("flow hash bucket \(bucket) of \(Conventions.balanceBuckets): into the ct mark")))
                rules[name] = [rule(name, setMark(field: Conventions.bucketMarkMask, value: Conventions.bucketMark(bucket)), comment: nil)]
                elements.append(NFTElement(key: bucket.hostBytes, data: .verdict(.jump(name))))
            }
            maps.append(.init(set: bucketsMap, elements: elements))
        }
        r.chains += chains
        r.rules.merge(rules) { _, new in new }
        for i in r.maps.indices {
            if let e = siteElements[r.maps[i].set.name] { r.maps[i].elements = e }
            if r.maps[i].set.name == SteeringNames.flowsMap { r.maps[i].elements = flowElements }
        }
        r.maps += maps
    }

    /// nft's set userdata for concatenated interval keys (key byte order, then a typeof blob nft 1.0.6
    /// writes for `type a . b` sets); copied from what nft sends so `nft list` shows our sets like its own.
    static let concatUserdata: [UInt8] = NFTUserdata.keyByteorder(.invalid)
        + NFTUserdata.setField(.keyTypeof, [0x00, 0x04, 0x0d, 0x00, 0x00, 0x00, 0x01, 0x00])

    static let ipv4Only: [NFTExpression] = [
        .meta(key: NFT.metaNFProto, dreg: NFT.reg1),
        .cmp(sreg: NFT.reg1, op: NFT.eq, data: [UInt8(NFTFamily.ip.rawValue)]),
    ]

    /// A flow without a class (ct mark class bits 0) jumps once to `classify` (first packet in the original
    /// direction) or `classify_reply` (first packet a reply); both return to the next rule. A flow classified
    /// in its original direction first gets the site's index (if it has one) into the ct mark: its later
    /// packets of that direction are steered by `flows`. A flow classified by a reply gets none (`flows` is
    /// looked up for the original direction only, and it is the replies that are steered).
    static func classifyOnce(_ chain: String, siteIndex: UInt8? = nil) -> [NFTRule] {
        let site = siteIndex.map { setMark(field: Conventions.siteMarkMask, value: Conventions.siteMark(index: $0)) } ?? []
        return [
            rule(chain, classBits + [
                .cmp(sreg: NFT.reg1, op: NFT.eq, data: [0, 0, 0, 0]),
                .ct(key: NFT.ctDirection, dreg: NFT.reg1),
                .cmp(sreg: NFT.reg1, op: NFT.eq, data: [0]),
            ] + site + [
                .immediate(dreg: NFT.verdictRegister, data: .verdict(.jump(SteeringNames.classifyChain))),
            ], comment: siteIndex == nil ? "new flow: classify once" : "new flow: its site into the ct mark, classify once"),
            rule(chain, classBits + [
                .cmp(sreg: NFT.reg1, op: NFT.eq, data: [0, 0, 0, 0]),
                .immediate(dreg: NFT.verdictRegister, data: .verdict(.jump(SteeringNames.classifyReplyChain))),
            ], comment: "new flow seen first in reply: classify once"),
        ]
    }

    /// The class id bits of the ct mark, into register 1.
    static let classBits: [NFTExpression] = [
        .ct(key: NFT.ctMark, dreg: NFT.reg1),
        .bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: classMask.hostBytes, xor: [0, 0, 0, 0]),
    ]

    /// The class id and flow bucket bits of the ct mark, into register 1.
    static let classAndBucketBits: [NFTExpression] = [
        .ct(key: NFT.ctMark, dreg: NFT.reg1),
        .bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: (classMask | Conventions.bucketMarkMask).hostBytes, xor: [0, 0, 0, 0]),
    ]

    /// mark = (mark & ~field) | value: our field only (the path field of the packet mark, the class field
    /// of the ct mark).
    static func setMark(meta: Bool, value: UInt32) -> [NFTExpression] {
        meta ? [.meta(key: NFT.metaMark, dreg: NFT.reg1),
                .bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: (~pathMask).hostBytes, xor: value.hostBytes),
                .metaSet(key: NFT.metaMark, sreg: NFT.reg1)]
             : setMark(field: classMask, value: value)
    }

    /// ct mark = (ct mark & ~field) | value.
    static func setMark(field: UInt32, value: UInt32) -> [NFTExpression] {
        [.ct(key: NFT.ctMark, dreg: NFT.reg1),
         .bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: (~field).hostBytes, xor: value.hostBytes),
         .ctSet(key: NFT.ctMark, sreg: NFT.reg1)]
    }

    /// The flow bucket bits of the ct mark, into register 1.
    static let bucketBits: [NFTExpression] = [
        .ct(key: NFT.ctMark, dreg: NFT.reg1),
        .bitwise(sreg: NFT.reg1, dreg: NFT.reg1, mask: Conventions.bucketMarkMask.hostBytes, xor: [0, 0, 0, 0]),
    ]

    /// A map from a mark (host order) to a verdict, as nft declares `type mark : verdict`.
    static func markMap(_ name: String, comment: String) -> NFTSet {
        NFTSet(family: family, table: table, name: name, flags: NFTSet.flagMap, keyType: .mark,
               keyLength: 4, dataType: NFTSet.verdictDataType, dataLength: 0,
               userdata: NFTUserdata.keyByteorder(.host) + NFTUserdata.dataByteorder(.invalid) + NFTUserdata.dataInterval(false)
                   + NFTUserdata.comment(comment, type: NFTUserdata.setCommentType))
    }

    /// A flow's site index, class id and bucket: the `flows` key.
    static let flowKeyMask = Conventions.siteMarkMask | classMask | Conventions.bucketMarkMask
    static let flowsMap = markMap(SteeringNames.flowsMap, comment: "established flow: site . class . bucket (ct mark) -> path")

    /// Flow hash -> the chain writing that bucket into the ct mark (present while a class is balanced).
    static let bucketsMap = markMap(SteeringNames.bucketsMap, comment: "flow hash -> bucket")

    static func prefixSet(_ name: String, comment: String) -> NFTSet {
        NFTSet(family: family, table: table, name: name, flags: NFTSet.flagInterval, keyType: .ipv4Address, keyLength: 4,
               userdata: NFTUserdata.keyByteorder(.big) + NFTUserdata.comment(comment, type: NFTUserdata.setCommentType))
    }

    /// Interval set elements as nft sends them for the rbtree backend: each merged range is a start element
    /// and an end element (first address after the range, flagged INTERVAL_END), with a leading end element
    /// at 0.0.0.0 when the first range does not start there.
    static func intervalElements(_ prefixes: [(IPv4Prefix, NFTVerdict?)]) -> [NFTElement] {
        var ranges: [(lo: UInt64, hi: UInt64, data: NFTVerdict?)] = []
        for (p, data) in prefixes.sorted(by: { $0.0 < $1.0 }) {
            let lo = UInt64(p.network.value), hi = UInt64(p.last.value) + 1
            // Overlaps merge (sets only: maps are validated overlap-free); adjacent ranges stay separate,
            // as nft sends them (no auto-merge).
            if let last = ranges.last, lo < last.hi {
                ranges[ranges.count - 1].hi = max(last.hi, hi)
            } else {
                ranges.append((lo, hi, data))
            }
        }
        let end = NFTElement.flagIntervalEnd
        var out: [NFTElement] = []
        if let first = ranges.first, first.lo != 0 { out.append(NFTElement(key: [0, 0, 0, 0], flags: end)) }
        for r in ranges {
            out.append(NFTElement(key: UInt32(r.lo).bigEndianBytes, data: r.data.map(NFTData.verdict)))
            if r.hi <= UInt64(UInt32.max) { out.append(NFTElement(key: UInt32(r.hi).bigEndianBytes, flags: end)) }
        }
        return out
    }

    /// (protocol . port range) elements; a protocol without ports matches all of its ports.
    static func serviceElements(_ services: [ServiceMatch]) -> [NFTElement] {
        var seen = Set<[UInt8]>()
        var out: [NFTElement] = []
        for s in services {
            for r in s.effectivePorts {
                let proto: [UInt8] = [s.proto.number, 0, 0, 0]
                let key = proto + [UInt8(r.lower >> 8), UInt8(r.lower & 0xff), 0, 0]
                let keyEnd = proto + [UInt8(r.upper >> 8), UInt8(r.upper & 0xff), 0, 0]
                if seen.insert(key + keyEnd).inserted { out.append(NFTElement(key: key, keyEnd: keyEnd)) }
            }
        }
        return out
    }

    /// A rule whose userdata holds its comment and a fingerprint of everything it depends on: its own
    /// expressions and the definitions (and, for static sets, the elements) of the sets it looks up.
    static func rule(_ chain: String, _ expressions: [NFTExpression], comment: String?, sets: [NFTSet] = [],
                     elements: [[NFTElement]] = [], family: NFTFamily = SteeringCompiler.family,
                     table: String = SteeringCompiler.table) -> NFTRule {
        var r = NFTRule(family: family, table: table, chain: chain, expressions: expressions,
                        userdata: comment.map { NFTUserdata.comment($0) })
        var hasher = FNV1a()
        hasher.add(NFTables.newRule(r).payload)
        for s in sets { hasher.add(NFTables.newSet(s).payload) }
        for (s, e) in zip(sets, elements) {
            hasher.add(NFTables.elements(e, family: s.family, table: s.table, set: s.name).payload)
        }
        r.userdata = (r.userdata ?? []) + NFTUserdata.tlv(fingerprintUserdataType, hasher.value.bigEndianBytes8)
        return r
    }
}

/// 64-bit FNV-1a: a stable, dependency-free content hash for fingerprints (not for security).
struct FNV1a {
    private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    mutating func add(_ bytes: [UInt8]) {
        for b in bytes { value = (value ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
    }
}

extension UInt64 {
    var bigEndianBytes8: [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: self >> (56 - 8 * $0)) } }
}

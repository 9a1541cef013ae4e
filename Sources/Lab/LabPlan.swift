import Model

/// The lab's topology and addressing as a value: which namespaces, interfaces and addresses exist. Pure;
/// `LabTopology` builds it. The plan is documented in docs/LAB.md ("Topology and addressing plan").
///
/// Two WAN modes (`Options.wan`):
/// - `bridged`: ISP k (1-based; label `isp-a`, `isp-b`, ...) is one L2 segment, bridge `br0` in namespace
///   `pt<instance>-isp-a` holding 100.64.k.254/24 (shared address space, RFC 6598); site i's uplink is
///   100.64.k.i/24 on it.
/// - `routed`: ISP k is a router. Site i's uplink has its own subnet 100.(64+k).i.0/24 (site .2, the ISP's
///   gateway .1 on `b-<site>`), or, behind carrier NAT, 172.(16+k).i.0/24, masqueraded to the ISP's core
///   address. The ISPs meet in namespace `pt<instance>-internet` (bridge `br0`, 100.64.0.254/24; ISP k is
///   100.64.0.k there, routing 100.(64+k).0.0/16), so every public uplink address reaches every other by
///   routing and no L2 (no multicast) crosses an ISP.
/// - Site i (`hq`, `east`, `west`, ...): router namespace `pt<instance>-hq` with `wan-a`, `wan-b`, ... and
///   `lan0` (10.10.i.1/24); LAN host namespace `pt<instance>-hq-lan` with `eth0` 10.10.i.2/24, default
///   route via 10.10.i.1.
/// - In ISP k's namespace, per site: `s-<site>` (peer of the site's `wan-x`), `e-<site>` and its peer
///   `b-<site>` (a port of `br0` when bridged, the gateway when routed). The WAN emulator moves frames
///   between `s-<site>` and `e-<site>`. An uplink unplugged at start waits in the ISP namespace as
///   `p-<site>` (the peer of `s-<site>`) until `plug` moves it into the router namespace.
public struct LabPlan: Codable, Equatable, Sendable {
    public struct Site: Codable, Equatable, Sendable {
        public var name: String
        /// 1-based; the site's number in every address.
        public var index: Int
        public var lanPrefix: String { "10.10.\(index).0/24" }
        public var routerLANAddress: String { "10.10.\(index).1" }
        public var hostAddress: String { "10.10.\(index).2" }
    }

    public struct ISP: Codable, Equatable, Sendable {
        /// `isp-a`, `isp-b`, ...: also the uplink label the routers are given.
        public var label: String
        public var index: Int
        /// Bridged mode: the ISP's segment and its address on it.
        public var subnet: String { "100.64.\(index).0/24" }
        public var gateway: String { "100.64.\(index).254" }
        /// Routed mode: the ISP's address on the internet core, also the public address its carrier NAT
        /// maps private uplinks to.
        public var coreAddress: String { "100.64.0.\(index)" }
        /// Routed mode: the public block the ISP numbers its customers' uplinks from.
        public var block: String { "100.\(64 + index).0.0/16" }
        /// The letter after `isp-`.
        public var letter: String { String(label.dropFirst(4)) }
    }

    /// How the ISPs carry the sites' uplinks.
    public enum WANMode: String, Codable, Sendable, CaseIterable {
        /// One shared L2 segment per ISP (multicast discovery works, ISPs are not interconnected).
        case bridged
        /// Every uplink on its own subnet behind its ISP's router, the ISPs interconnected by an internet
        /// core: sites find each other with `--peer` only.
        case routed
    }

    public struct Uplink: Codable, Equatable, Sendable {
        public var site: String
        public var siteIndex: Int
        public var isp: String
        public var ispIndex: Int
        public var wan: WANMode = .bridged
        /// Behind the ISP's carrier NAT (routed mode only): a private address, masqueraded to the ISP's
        /// core address.
        public var natted = false
        /// How often the uplink was renumbered (`renumber`): each time a new subnet (routed) or address.
        public var generation = 0
        public var id: UplinkID { UplinkID(site: site, uplink: isp) }
        /// In the router namespace.
        public var routerInterface: String { "wan-\(isp.dropFirst(4))" }
        /// The third octet (routed) or last octet (bridged) that numbers this uplink; 16 per generation.
        private var number: Int { siteIndex + 16 * generation }
        /// The site's address on this uplink.
        public var address: String {
            switch wan {
            case .bridged: "100.64.\(ispIndex).\(number)"
            case .routed: natted ? "172.\(16 + ispIndex).\(number).2" : "100.\(64 + ispIndex).\(number).2"
            }
        }
        /// The next hop of the site's default route over this uplink (the ISP's address on it).
        public var gateway: String {
            switch wan {
            case .bridged: "100.64.\(ispIndex).254"
            case .routed: natted ? "172.\(16 + ispIndex).\(number).1" : "100.\(64 + ispIndex).\(number).1"
            }
        }
        public var prefixLength: Int { 24 }
        /// The uplink's subnet (routed: the site's own; bridged: the ISP's segment).
        public var subnet: String {
            switch wan {
            case .bridged: "100.64.\(ispIndex).0/24"
            case .routed: natted ? "172.\(16 + ispIndex).\(number).0/24" : "100.\(64 + ispIndex).\(number).0/24"
            }
        }
        /// Whether other sites can reach this uplink's address (not behind NAT).
        public var isPublic: Bool { !natted }
        /// Where other sites see this uplink: its address, or behind NAT the public address its ISP's NAT
        /// maps it to (routed mode: 100.(64+k).i.2, the address it would have if public; one per NATed uplink,
        /// as a carrier NAT's pool gives each customer its own).
        public var publicAddress: String {
            natted ? "100.\(64 + ispIndex).\(number).2" : address
        }
        /// In the ISP namespace: the site-facing veth end, the emulator's bridge-side end, its peer (bridge
        /// port or gateway interface).
        public var siteFacing: String { "s-\(site)" }
        public var emulatorFacing: String { "e-\(site)" }
        public var bridgePort: String { "b-\(site)" }
        /// The router's end while the uplink is unplugged: parked in the ISP namespace under this name.
        public var parked: String { "p-\(site)" }
        /// Per-uplink bridge used instead of the userspace emulator when the kernel has netem.
        public var netemBridge: String { "u-\(site)" }
        /// The renumbering limit: the numbering octet stays below 254.
        public static let maxGeneration = 14
    }

    public var instance: String
    public var sites: [Site]
    public var isps: [ISP]
    public var wan: WANMode = .bridged
    /// Uplinks behind carrier NAT (routed mode).
    public var natted: [UplinkID] = []
    /// Those of `natted` whose NAT is symmetric (endpoint-dependent mapping: every new destination gets a new,
    /// random public port), which defeats direct traversal. Optional so that state files written before it
    /// still read.
    public var symmetricNAT: [UplinkID]?
    /// Uplinks the routers are told about but that are not plugged in (`plug` / `unplug` change it).
    public var unplugged: [UplinkID] = []
    /// Uplinks whose router is told never to carry copies of duplicated classes (`--uplink ...,no-copies`).
    /// Optional so that state files written before it still read.
    public var noCopies: [UplinkID]?
    /// Routed: the one site every other site is given as `--peer` (it has none); the others learn each other
    /// through it (relayed discovery). Nil: every site is given every other site's public addresses.
    public var hub: String?
    /// Renumbering generation per uplink (`renumber` changes it); absent means 0.
    public var generations: [String: Int] = [:]
    /// Sites whose routers get no `--uplink` and detect their uplinks (interfaces with an address and a
    /// default route, labelled by their names: `wan-a`...). Nil: none (every router is told its uplinks).
    public var detecting: [String]?

    public static let defaultSiteNames = ["hq", "east", "west", "north", "south", "central"]
    public static let maxSites = 16
    public static let maxUplinks = 6
    public static let bridge = "br0"
    public static let lanInterface = "lan0"
    public static let hostInterface = "eth0"
    /// Routed mode: the internet core's namespace suffix, its address, and each ISP's interface on it.
    public static let internetLabel = "internet"
    public static let internetAddress = "100.64.0.254"
    public static let coreInterface = "core"
    /// The discovery port the routers listen on (`--peer` targets it).
    public static let discoveryPort = Int(Conventions.discoveryPort)

    /// A plan for `sites` sites with `uplinks` uplinks each. `instance` (1-16 lowercase letters or digits)
    /// makes every namespace name unique: `lab up` uses "lab", tests a random one. `nat` (routed only) puts
    /// those uplinks behind their ISP's NAT; `unplugged` leaves those uplinks unplugged at start.
    public static func make(instance: String, sites: Int = 3, uplinks: Int = 2, wan: WANMode = .bridged,
                            nat: [UplinkID] = [], symmetricNAT: [UplinkID] = [], unplugged: [UplinkID] = [],
                            hub: String? = nil, detecting: [String] = [], noCopies: [UplinkID] = []) throws(LabError) -> LabPlan {
        guard (1...16).contains(instance.count),
              instance.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber) }) else {
            throw .invalidArgument("lab instance '\(instance)' must be 1-16 lowercase letters or digits")
        }
        guard (1...maxSites).contains(sites) else {
            throw .invalidArgument("--sites \(sites) is out of range: use 1...\(maxSites)")
        }
        guard (1...maxUplinks).contains(uplinks) else {
            throw .invalidArgument("--uplinks \(uplinks) is out of range: use 1...\(maxUplinks)")
        }
        let names = (0..<sites).map { $0 < defaultSiteNames.count ? defaultSiteNames[$0] : "site\($0 + 1)" }
        let letters = Array("abcdefghijklmnopqrstuvwxyz")
        var plan = LabPlan(
            instance: instance,
            sites: names.enumerated().map { Site(name: $1, index: $0 + 1) },
            isps: (0..<uplinks).map { ISP(label: "isp-\(letters[$0])", index: $0 + 1) })
        plan.wan = wan
        if !(nat + symmetricNAT).isEmpty && wan != .routed {
            throw .invalidArgument("--nat needs --wan routed: a bridged ISP is one L2 segment with no router to NAT")
        }
        // Each named uplink must exist; resolving also accepts `b` or `wan-b` for `isp-b`.
        plan.natted = try Set((nat + symmetricNAT).map { id throws(LabError) in try plan.uplink(site: id.site, named: id.uplink).id }).sorted()
        if !symmetricNAT.isEmpty {
            plan.symmetricNAT = try Set(symmetricNAT.map { id throws(LabError) in try plan.uplink(site: id.site, named: id.uplink).id }).sorted()
        }
        plan.unplugged = try Set(unplugged.map { id throws(LabError) in
            try plan.uplink(site: id.site, named: id.uplink).id
        }).sorted()
        if !noCopies.isEmpty {
            plan.noCopies = try Set(noCopies.map { id throws(LabError) in try plan.uplink(site: id.site, named: id.uplink).id }).sorted()
        }
        if let hub {
            guard wan == .routed else { throw .invalidArgument("--hub needs --wan routed: bridged sites find each other by multicast") }
            guard plan.site(named: hub) != nil else { throw .invalidArgument("--hub \(hub): no such site") }
            plan.hub = hub
        }
        for site in detecting where plan.site(named: site) == nil {
            throw .invalidArgument("detecting uplinks at \(site): no such site")
        }
        plan.detecting = detecting.isEmpty ? nil : detecting
        return plan
    }

    /// Whether `id` is behind a symmetric NAT (`symmetricNAT`).
    public func isSymmetricNAT(_ id: UplinkID) -> Bool { symmetricNAT?.contains(id) == true }

    public var uplinks: [Uplink] {
        sites.flatMap { site in
            isps.map { isp in
                let id = UplinkID(site: site.name, uplink: isp.label)
                return Uplink(site: site.name, siteIndex: site.index, isp: isp.label, ispIndex: isp.index, wan: wan,
                              natted: natted.contains(id), generation: generations[id.description] ?? 0)
            }
        }
    }

    public func uplinks(of site: String) -> [Uplink] { uplinks.filter { $0.site == site } }

    /// Whether `id` is plugged in (its `wan-x` is in the router namespace).
    public func isPlugged(_ id: UplinkID) -> Bool { !unplugged.contains(id) }

    /// The namespace prefix of this instance: every namespace of the lab starts with it.
    public var namespacePrefix: String { "pt\(instance)-" }
    public func routerNamespace(_ site: String) -> String { "\(namespacePrefix)\(site)" }
    public func hostNamespace(_ site: String) -> String { "\(namespacePrefix)\(site)-lan" }
    public func ispNamespace(_ isp: String) -> String { "\(namespacePrefix)\(isp)" }
    /// Routed mode: the internet core between the ISPs.
    public var internetNamespace: String { "\(namespacePrefix)\(Self.internetLabel)" }

    /// Every namespace of the lab in creation order: the internet core (routed), the ISPs, the sites.
    public var namespaceNames: [String] {
        (wan == .routed ? [internetNamespace] : []) + isps.map { ispNamespace($0.label) }
            + sites.flatMap { [routerNamespace($0.name), hostNamespace($0.name)] }
    }

    public func site(named name: String) -> Site? { sites.first { $0.name == name } }

    /// Resolves user input naming an uplink: its label (`isp-a`), its letter (`a`) or the router's
    /// interface (`wan-a`).
    public func uplink(site: String, named name: String) throws(LabError) -> Uplink {
        guard self.site(named: site) != nil else {
            throw .invalidArgument("unknown site '\(site)': the lab has \(sites.map(\.name).joined(separator: ", "))")
        }
        let match = uplinks(of: site).first { $0.isp == name || $0.routerInterface == name || $0.isp.dropFirst(4) == name }
        guard let match else {
            throw .invalidArgument("unknown uplink '\(name)' for site \(site): use \(isps.map(\.label).joined(separator: ", "))")
        }
        return match
    }

    /// The WireGuard interface prefix of a site's router: `wg-hq` in the default lab, and one carrying a
    /// short tag of the instance otherwise (`w3f9ahq`), because wireguard-go's UAPI sockets in
    /// /var/run/wireguard are shared by every namespace: two labs at once must not share names.
    public func tunnelPrefix(site name: String) -> String {
        guard instance != "lab" else { return "wg-\(name)" }
        var hash: UInt32 = 2_166_136_261
        for byte in instance.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        let tag = String(hash & 0xffff, radix: 16)
        return "w" + String(repeating: "0", count: 4 - tag.count) + tag + String(name.prefix(8))
    }

    /// The command line that runs the real router for `site` inside its namespace (the hook `lab up`
    /// uses once `patronus-router run` works). Its WireGuard interfaces are named after the site
    /// (`wg-hq`...), because wireguard-go's UAPI sockets in /var/run/wireguard are shared by all namespaces.
    /// `shaping`: per ISP label, the `shape=` option of that uplink (`auto`, `off`, a rate); none: the default.
    public func routerArguments(site name: String, executable: String, stateDirectory: String,
                                meshKey: String? = nil, shaping: [String: String] = [:]) -> [String] {
        guard let site = site(named: name) else { return [] }
        var argv = [executable, "run", "--site-name", site.name, "--database", "\(stateDirectory)/\(site.name).db",
                    "--interface", tunnelPrefix(site: site.name)]
        if detecting?.contains(site.name) != true {
            for uplink in uplinks(of: site.name) {
                let options = (shaping[uplink.isp].map { ",shape=\($0)" } ?? "") + (noCopies?.contains(uplink.id) == true ? ",no-copies" : "")
                argv += ["--uplink", "\(uplink.routerInterface)=\(uplink.isp)" + options]
            }
        }
        argv += ["--lan", site.lanPrefix]
        for peer in discoveryPeers(of: site.name) { argv += ["--peer", peer] }
        if site.name == hub { argv.append("--relay") }  // the hub relays for branches that cannot meet directly
        if let meshKey { argv += ["--mesh-key", meshKey] }
        return argv
    }

    /// Routed mode: multicast does not cross the ISPs, so each router announces by unicast to every public
    /// address (not behind NAT, plugged in at start) of every other site, `address:51821`; with a `hub`, only
    /// to the hub's (and the hub to nobody). Bridged: none.
    public func discoveryPeers(of site: String) -> [String] {
        guard wan == .routed, site != hub else { return [] }
        return uplinks.filter { $0.site != site && (hub == nil || $0.site == hub) && $0.isPublic && isPlugged($0.id) }
            .map { "\($0.address):\(Self.discoveryPort)" }
    }

    // MARK: changing uplinks

    /// The plan after `id` got its next address (and, routed, its next subnet and gateway).
    public func renumbered(_ id: UplinkID) throws(LabError) -> LabPlan {
        let uplink = try uplink(site: id.site, named: id.uplink)
        guard uplink.generation < Uplink.maxGeneration else {
            throw .invalidArgument("\(uplink.id) was renumbered \(uplink.generation) times: the plan has no further address")
        }
        var next = self
        next.generations[uplink.id.description] = uplink.generation + 1
        return next
    }

    /// The plan with `id` plugged in (`true`) or unplugged.
    public func plugging(_ id: UplinkID, _ plugged: Bool) throws(LabError) -> LabPlan {
        let uplink = try uplink(site: id.site, named: id.uplink)
        guard isPlugged(uplink.id) != plugged else {
            throw .invalidArgument("\(uplink.id) is already \(plugged ? "plugged in" : "unplugged")")
        }
        var next = self
        next.unplugged = plugged ? unplugged.filter { $0 != uplink.id } : (unplugged + [uplink.id]).sorted()
        return next
    }
}

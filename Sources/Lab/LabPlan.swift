/// The lab's topology and addressing as a value: which namespaces, interfaces and addresses exist. Pure;
/// `LabTopology` builds it. The plan is documented in docs/LAB.md ("Addressing plan").
///
/// - ISP k (1-based; label `isp-a`, `isp-b`, ...): namespace `pt<instance>-isp-a`, bridge `br0` holding
///   100.64.k.254/24 (shared address space, RFC 6598: looks like an ISP, collides with no LAN).
/// - Site i (`hq`, `east`, `west`, ...): router namespace `pt<instance>-hq` with `wan-a`, `wan-b`, ...
///   (100.64.k.i/24 on ISP k) and `lan0` (10.10.i.1/24); LAN host namespace `pt<instance>-hq-lan` with
///   `eth0` 10.10.i.2/24, default route via 10.10.i.1.
/// - In ISP k's namespace, per site: `s-<site>` (peer of the site's `wan-x`), `e-<site>` and its peer
///   `b-<site>` (a port of `br0`). The WAN emulator moves frames between `s-<site>` and `e-<site>`.
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
        public var subnet: String { "100.64.\(index).0/24" }
        public var gateway: String { "100.64.\(index).254" }
        /// The letter after `isp-`.
        public var letter: String { String(label.dropFirst(4)) }
    }

    public struct Uplink: Codable, Equatable, Sendable {
        public var site: String
        public var siteIndex: Int
        public var isp: String
        public var ispIndex: Int
        public var id: UplinkID { UplinkID(site: site, uplink: isp) }
        /// In the router namespace.
        public var routerInterface: String { "wan-\(isp.dropFirst(4))" }
        public var address: String { "100.64.\(ispIndex).\(siteIndex)" }
        /// In the ISP namespace: the site-facing veth end, the emulator's bridge-side end, its bridge port.
        public var siteFacing: String { "s-\(site)" }
        public var emulatorFacing: String { "e-\(site)" }
        public var bridgePort: String { "b-\(site)" }
        /// Per-uplink bridge used instead of the userspace emulator when the kernel has netem.
        public var netemBridge: String { "u-\(site)" }
    }

    public var instance: String
    public var sites: [Site]
    public var isps: [ISP]

    public static let defaultSiteNames = ["hq", "east", "west", "north", "south", "central"]
    public static let maxSites = 16
    public static let maxUplinks = 6
    public static let bridge = "br0"
    public static let lanInterface = "lan0"
    public static let hostInterface = "eth0"

    /// A plan for `sites` sites with `uplinks` uplinks each. `instance` (1-16 lowercase letters or digits)
    /// makes every namespace name unique: `lab up` uses "lab", tests a random one.
    public static func make(instance: String, sites: Int = 3, uplinks: Int = 2) throws(LabError) -> LabPlan {
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
        return LabPlan(
            instance: instance,
            sites: names.enumerated().map { Site(name: $1, index: $0 + 1) },
            isps: (0..<uplinks).map { ISP(label: "isp-\(letters[$0])", index: $0 + 1) })
    }

    public var uplinks: [Uplink] {
        sites.flatMap { site in
            isps.map { Uplink(site: site.name, siteIndex: site.index, isp: $0.label, ispIndex: $0.index) }
        }
    }

    public func uplinks(of site: String) -> [Uplink] { uplinks.filter { $0.site == site } }

    /// The namespace prefix of this instance: every namespace of the lab starts with it.
    public var namespacePrefix: String { "pt\(instance)-" }
    public func routerNamespace(_ site: String) -> String { "\(namespacePrefix)\(site)" }
    public func hostNamespace(_ site: String) -> String { "\(namespacePrefix)\(site)-lan" }
    public func ispNamespace(_ isp: String) -> String { "\(namespacePrefix)\(isp)" }

    /// Every namespace of the lab, ISPs first (creation order).
    public var namespaceNames: [String] {
        isps.map { ispNamespace($0.label) } + sites.flatMap { [routerNamespace($0.name), hostNamespace($0.name)] }
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
    public func routerArguments(site name: String, executable: String, stateDirectory: String,
                                meshKey: String? = nil) -> [String] {
        guard let site = site(named: name) else { return [] }
        var argv = [executable, "run", "--site-name", site.name, "--database", "\(stateDirectory)/\(site.name).db",
                    "--interface", tunnelPrefix(site: site.name)]
        for uplink in uplinks(of: site.name) { argv += ["--uplink", "\(uplink.routerInterface)=\(uplink.isp)"] }
        argv += ["--lan", site.lanPrefix]
        if let meshKey { argv += ["--mesh-key", meshKey] }
        return argv
    }
}

import Mesh
import Model
import WireGuard

/// Everything `patronus-router run` was asked to do, validated. The CLI builds it from flags; tests and the
/// lab build it directly. `validate()` holds every rule, so any way of building one gets the same checks.
public struct RouterConfiguration: Hashable, Sendable {
    public static let defaultListenPort = Conventions.wireGuardPort
    public static let defaultDatabasePath = "sdwan.db"
    public static let defaultInterfaceName = "wg-sdwan"
    public static let defaultMulticastGroup = SocketAddress4(Conventions.multicastGroup, port: Conventions.discoveryPort)
    public static let defaultProbeInterval = Duration.milliseconds(50)
    public static let probeIntervalRange = 10...10_000
    public static let defaultStatusInterval = Duration.seconds(30)
    public static let overlayPool = Conventions.overlayPool
    public static let defaultMetricsRetention = Duration.seconds(7 * 24 * 3600)
    /// How often every path's bandwidth is measured again after its first test (15 minutes): a test costs the
    /// path a 368 kB burst, and capacity changes slowly.
    public static let defaultBandwidthInterval = Duration.seconds(900)
    /// Seconds. Below 10 s the trains would be a noticeable share of a slow path's capacity.
    public static let bandwidthIntervalRange = 10...86_400

    /// This site's human name, announced to the others (1-63 of letters, digits, '-', '_', '.').
    public var siteName: String
    /// The WireGuard listen port (the first tunnel's; the mesh layer derives the others from it).
    public var listenPort: UInt16
    public var databasePath: String
    /// The tunnel interface name, or the prefix of the per-path tunnel names.
    public var interfaceName: String
    public var multicastGroup: SocketAddress4
    public var debug: Bool
    /// Empty means: detect uplinks (interfaces with a global address and a route, never our tunnels).
    public var uplinks: [Uplink]
    /// LAN prefixes this site announces and routes for.
    public var lanPrefixes: [IPv4Prefix]
    /// A shared mesh key file; nil means the one beside the database.
    public var meshKeyPath: String?
    /// Accept unauthenticated announcements (lab and debugging only).
    public var insecureNoAuth: Bool
    /// Unicast discovery targets, for networks without multicast.
    public var peers: [SocketAddress4]
    public var probeInterval: Duration
    /// Where to serve metrics (Prometheus text); nil: not served.
    public var metricsListen: SocketAddress4?
    /// Where to serve the read-only web dashboard (`--dashboard-listen`); nil: not served. A local or
    /// management address: never the wildcard, which would show the WAN to every uplink.
    public var dashboardListen: SocketAddress4?
    public var statusInterval: Duration
    /// Which WireGuard implementation carries the tunnels (`--wireguard`); `auto` uses the kernel's when it
    /// has one, else wireguard-go.
    public var wireguard: WireGuardBackendChoice = .auto
    /// Which local uplinks pair with which remote endpoints (`--pairing`); every site of a mesh must use
    /// the same (docs/MESH.md).
    public var pairing: PathPairing = .sameLabel
    public var metricsRetention: Duration
    /// Time between bandwidth re-measurements of every path (`--bandwidth-interval`).
    public var bandwidthInterval: Duration
    /// The mesh CA certificate file(s) this site trusts (`--ca`); nil: no certificates are checked.
    public var caPath: String?
    /// This site's certificate (`--certificate`); nil: the one beside the database when present.
    public var certificatePath: String?
    /// Refuse announcements without a valid certificate (`--require-certificates`; needs `--ca`).
    public var requireCertificates = false
    /// The revocation list file (`--revocation-list`); nil: the one beside the database.
    public var revocationListPath: String?
    /// Also announce in format version 1, for sites not upgraded yet (`--announce-v1`).
    public var announceV1 = false
    /// Relay for other members that cannot reach each other directly (`--relay`; docs/MESH.md "Relayed paths").
    public var relay = false

    public init(siteName: String, listenPort: UInt16 = defaultListenPort, databasePath: String = defaultDatabasePath,
                interfaceName: String = defaultInterfaceName, multicastGroup: SocketAddress4 = defaultMulticastGroup,
                debug: Bool = false, uplinks: [Uplink] = [], lanPrefixes: [IPv4Prefix] = [], meshKeyPath: String? = nil,
                insecureNoAuth: Bool = false, peers: [SocketAddress4] = [],
                probeInterval: Duration = defaultProbeInterval, metricsListen: SocketAddress4? = nil,
                statusInterval: Duration = defaultStatusInterval, metricsRetention: Duration = defaultMetricsRetention,
                bandwidthInterval: Duration = defaultBandwidthInterval) {
        self.siteName = siteName
        self.listenPort = listenPort
        self.databasePath = databasePath
        self.interfaceName = interfaceName
        self.multicastGroup = multicastGroup
        self.debug = debug
        self.uplinks = uplinks
        self.lanPrefixes = lanPrefixes
        self.meshKeyPath = meshKeyPath
        self.insecureNoAuth = insecureNoAuth
        self.peers = peers
        self.probeInterval = probeInterval
        self.metricsListen = metricsListen
        self.statusInterval = statusInterval
        self.metricsRetention = metricsRetention
        self.bandwidthInterval = bandwidthInterval
    }

    public static func isValidSiteName(_ name: some StringProtocol) -> Bool {
        (1...63).contains(name.utf8.count) && name.first!.isASCII && (name.first!.isLetter || name.first!.isNumber)
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
    }

    /// Checks every rule the types cannot express; the error names the flag and what is accepted.
    public func validate() throws(ConfigurationError) {
        guard Self.isValidSiteName(siteName) else {
            throw .invalid(flag: "--site-name", "'\(siteName)' must be 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit")
        }
        guard listenPort != 0 else { throw .invalid(flag: "--listen-port", "0 is not a port (use 1-65535)") }
        guard !databasePath.isEmpty, !databasePath.hasSuffix("/") else {
            throw .invalid(flag: "--database", "'\(databasePath)' is not a file path")
        }
        guard Uplink.isValidInterfaceName(interfaceName) else {
            throw .invalid(flag: "--interface", "'\(interfaceName)' is not a Linux interface name (1-15 characters, no '/', ':' or spaces)")
        }
        guard IPv4Prefix(IPv4Address(224, 0, 0, 0), length: 4).contains(multicastGroup.address) else {
            throw .invalid(flag: "--multicast-group", "\(multicastGroup.address) is not a multicast address (224.0.0.0/4)")
        }
        var interfaces = Set<String>()
        for uplink in uplinks {
            guard interfaces.insert(uplink.interface).inserted else {
                throw .invalid(flag: "--uplink", "interface \(uplink.interface) is given twice")
            }
            guard !uplink.interface.hasPrefix(interfaceName) else {
                throw .invalid(flag: "--uplink", "\(uplink.interface) is one of our own tunnels (prefix \(interfaceName))")
            }
        }
        for (index, prefix) in lanPrefixes.enumerated() {
            guard !prefix.overlaps(Self.overlayPool) else {
                throw .invalid(flag: "--lan", "\(prefix) overlaps the overlay pool \(Self.overlayPool)")
            }
            guard prefix.length > 0 else { throw .invalid(flag: "--lan", "0.0.0.0/0 is not a LAN") }
            if let other = lanPrefixes[..<index].first(where: { $0.overlaps(prefix) }) {
                throw .invalid(flag: "--lan", "\(prefix) overlaps \(other)")
            }
        }
        if let meshKeyPath, meshKeyPath.isEmpty { throw .invalid(flag: "--mesh-key", "the path is empty") }
        if requireCertificates, caPath == nil {
            throw .invalid(flag: "--require-certificates", "needs --ca: the CA certificate to check them against")
        }
        if meshKeyPath != nil, insecureNoAuth {
            throw .invalid(flag: "--insecure-no-auth", "cannot be combined with --mesh-key")
        }
        for peer in peers where IPv4Prefix(IPv4Address(224, 0, 0, 0), length: 4).contains(peer.address) || peer.address.value == 0 {
            throw .invalid(flag: "--peer", "\(peer) is not a unicast address")
        }
        let milliseconds = probeInterval / .milliseconds(1)
        guard Double(Self.probeIntervalRange.lowerBound) <= milliseconds,
              milliseconds <= Double(Self.probeIntervalRange.upperBound) else {
            throw .invalid(flag: "--probe-interval", "\(milliseconds) ms is not in \(Self.probeIntervalRange.lowerBound)-\(Self.probeIntervalRange.upperBound) ms")
        }
        let bandwidthSeconds = bandwidthInterval / .seconds(1)
        guard Double(Self.bandwidthIntervalRange.lowerBound) <= bandwidthSeconds,
              bandwidthSeconds <= Double(Self.bandwidthIntervalRange.upperBound) else {
            throw .invalid(flag: "--bandwidth-interval", "\(bandwidthSeconds) s is not in \(Self.bandwidthIntervalRange.lowerBound)-\(Self.bandwidthIntervalRange.upperBound) s")
        }
        if let dashboardListen {
            guard dashboardListen.address.value != 0 else {
                throw .invalid(flag: "--dashboard-listen", "\(dashboardListen) listens on every address, uplinks included: give a local or management address (e.g. 127.0.0.1:\(dashboardListen.port))")
            }
            guard dashboardListen.port != 0 else { throw .invalid(flag: "--dashboard-listen", "0 is not a port (use 1-65535)") }
            guard dashboardListen != metricsListen else {
                throw .invalid(flag: "--dashboard-listen", "\(dashboardListen) is already --metrics-listen: give the dashboard its own port")
            }
        }
        guard statusInterval > .zero else { throw .invalid(flag: "status interval", "must be positive") }
        guard metricsRetention > .zero else { throw .invalid(flag: "metrics retention", "must be positive") }
    }
}

/// A configuration rule was broken; `flag` is the command-line flag to fix.
public enum ConfigurationError: Error, Equatable, CustomStringConvertible {
    case invalid(flag: String, String)

    public var description: String {
        switch self {
        case .invalid(let flag, let detail): "\(flag): \(detail)"
        }
    }
}

import ArgumentParser
import BuildInfo
import Foundation
import Logging
import Mesh
import Model
import Router
import WireGuard

/// `patronus-router run`: the seed's flags with its defaults, and ours.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the router for this site (needs CAP_NET_ADMIN).",
        discussion: "Prints a network status report every 30 seconds; stops cleanly on SIGTERM or Ctrl+C.")

    @Option(help: "Name of this site (required).")
    var siteName: String

    @Option(help: "WireGuard listen port.")
    var listenPort: UInt16 = RouterConfiguration.defaultListenPort

    @Option(help: "Database file path.")
    var database: String = RouterConfiguration.defaultDatabasePath

    @Option(help: "WireGuard interface name (or prefix of the per-path tunnel names).")
    var interface: String = RouterConfiguration.defaultInterfaceName

    @Option(help: "Multicast group for discovery.", transform: ArgumentParsing.socketAddress)
    var multicastGroup: SocketAddress4 = RouterConfiguration.defaultMulticastGroup

    @Flag(help: "Enable debug logging.")
    var debug = false

    @Option(help: ArgumentHelp("An uplink to use, with an optional label and the shaping of its tunnels: auto (default: from the measured bandwidth, adapted to the delay under load), off, or a fixed rate such as 20M (upload only); UP/DOWN sets upload and download apart, e.g. 20M/100M or auto/off; ',no-copies': it never carries copies of duplicated classes, for metered links (repeatable; default: detect).",
                               valueName: "iface[=label][,shape=mode[/mode]][,no-copies]"), transform: ArgumentParsing.uplink)
    var uplink: [Uplink] = []

    @Option(help: ArgumentHelp("A LAN prefix this site announces (repeatable).", valueName: "cidr"),
            transform: ArgumentParsing.prefix)
    var lan: [IPv4Prefix] = []

    @Option(help: ArgumentHelp("The shared mesh key file (from `mesh-key generate`).", valueName: "path"))
    var meshKey: String?

    @Flag(help: "Accept unauthenticated announcements (lab and debugging only).")
    var insecureNoAuth = false

    @Option(help: ArgumentHelp("A peer to announce to by unicast (repeatable).", valueName: "host:port"),
            transform: ArgumentParsing.socketAddress)
    var peer: [SocketAddress4] = []

    @Option(help: ArgumentHelp("Probe interval per path, in milliseconds.", valueName: "ms"))
    var probeInterval: Int = Int(RouterConfiguration.defaultProbeInterval / .milliseconds(1))

    @Option(help: ArgumentHelp("Seconds between bandwidth re-measurements of every path (each path is also measured when it first comes up; 10-86400).",
                               valueName: "seconds"))
    var bandwidthInterval: Int = Int(RouterConfiguration.defaultBandwidthInterval / .seconds(1))

    @Option(help: ArgumentHelp("Serve metrics on this address.", valueName: "addr:port"),
            transform: ArgumentParsing.socketAddress)
    var metricsListen: SocketAddress4?

    @Option(help: ArgumentHelp("Serve the read-only web dashboard on this address (local or management; off by default).",
                               valueName: "addr:port"),
            transform: ArgumentParsing.socketAddress)
    var dashboardListen: SocketAddress4?

    @Option(help: ArgumentHelp("WireGuard implementation: kernel, userspace (wireguard-go) or auto.",
                               valueName: "kind"),
            transform: ArgumentParsing.choice("--wireguard"))
    var wireguard: WireGuardBackendChoice = .auto

    @Option(help: ArgumentHelp("Which uplinks pair with which remote endpoints: same-label (an uplink with the remote endpoints of its label) or all-pairs (every uplink with every remote endpoint). Every site of a mesh must use the same.",
                               valueName: "kind"),
            transform: ArgumentParsing.choice("--pairing"))
    var pairing: PathPairing = .sameLabel

    @Option(help: ArgumentHelp("The mesh CA certificate(s) to trust (from `ca init`): announcements signed under it are checked.",
                               valueName: "path"))
    var ca: String?

    @Option(help: ArgumentHelp("This site's certificate (from `ca sign`; default: DATABASE.crt when present).",
                               valueName: "path"))
    var certificate: String?

    @Flag(help: "Refuse announcements without a valid certificate (needs --ca; the last step of a migration).")
    var requireCertificates = false

    @Option(help: ArgumentHelp("The revocation list file: read when it changes, rewritten when a newer one arrives (default: DATABASE.crl).",
                               valueName: "path"))
    var revocationList: String?

    @Flag(help: "Also announce in format version 1, for sites not upgraded yet.")
    var announceV1 = false

    @Flag(help: "Relay: announce that this site forwards between members that cannot reach each other directly (both behind NATs that defeat traversal). Give it to a site with a public uplink; with certificates it also needs role hub.")
    var relay = false

    init() {}

    /// The validated configuration these flags describe.
    var routerConfiguration: RouterConfiguration {
        var configuration = RouterConfiguration(
            siteName: siteName, listenPort: listenPort, databasePath: database, interfaceName: interface,
            multicastGroup: multicastGroup, debug: debug, uplinks: uplink, lanPrefixes: lan, meshKeyPath: meshKey,
            insecureNoAuth: insecureNoAuth, peers: peer, probeInterval: .milliseconds(probeInterval),
            metricsListen: metricsListen, bandwidthInterval: .seconds(bandwidthInterval))
        configuration.wireguard = wireguard
        configuration.pairing = pairing
        configuration.caPath = ca
        configuration.certificatePath = certificate
        configuration.requireCertificates = requireCertificates
        configuration.revocationListPath = revocationList
        configuration.announceV1 = announceV1
        configuration.relay = relay
        configuration.dashboardListen = dashboardListen
        return configuration
    }

    func validate() throws {
        do { try routerConfiguration.validate() } catch { throw ValidationError(error.description) }
    }

    func run() async throws {
        let level: Logger.Level = debug ? .debug : .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        // The version goes in the daemon's start line, after its preconditions: a refused start stays ONE line.
        try await Daemon(configuration: routerConfiguration, logger: Logger(label: "patronus"),
                         version: BuildInfo.description).run()
    }
}

import ArgumentParser
import Foundation
import Testing
import Mesh
import WireGuard
@testable import CLI
import Lab
import Model
import Router

@Suite struct RunParsingTests {
    func parseRun(_ arguments: [String]) throws -> RunCommand {
        try #require(try PatronusRouter.parseAsRoot(["run"] + arguments) as? RunCommand)
    }

    func error(_ arguments: [String]) -> String? {
        do {
            _ = try PatronusRouter.parseAsRoot(arguments)
            return nil
        } catch {
            return PatronusRouter.oneLineMessage(for: error)
        }
    }

    @Test func seedDefaults() throws {
        let configuration = try parseRun(["--site-name", "test-site"]).routerConfiguration
        #expect(configuration == RouterConfiguration(siteName: "test-site"))
        #expect(configuration.listenPort == 51820)
        #expect(configuration.databasePath == "sdwan.db")
        #expect(configuration.interfaceName == "wg-sdwan")
        #expect(configuration.multicastGroup.description == "239.255.77.77:51821")
        #expect(!configuration.debug)
        #expect(configuration.probeInterval == .milliseconds(50))
        #expect(configuration.statusInterval == .seconds(30))
        #expect(configuration.bandwidthInterval == .seconds(900))
    }

    @Test func seedExampleCommandLines() throws {
        let hq = try parseRun(["--site-name", "headquarters", "--listen-port", "51820", "--database",
                               "/var/lib/patronus/hq.db", "--interface", "wg-hq"]).routerConfiguration
        #expect(hq.siteName == "headquarters" && hq.databasePath == "/var/lib/patronus/hq.db" && hq.interfaceName == "wg-hq")
        let test = try parseRun(["--site-name", "test-site", "--database", "/tmp/sdwan-test.db", "--debug"])
        #expect(test.routerConfiguration.debug)
    }

    @Test func relayFlagAndTheLabsNATMappings() throws {
        #expect(try parseRun(["--site-name", "hq", "--relay"]).routerConfiguration.relay)
        #expect(try !parseRun(["--site-name", "hq"]).routerConfiguration.relay)
        #expect(try LabCommand.natUplink("east:isp-b") == (UplinkID(site: "east", uplink: "isp-b"), false))
        #expect(try LabCommand.natUplink("east:isp-b:symmetric") == (UplinkID(site: "east", uplink: "isp-b"), true))
        #expect(try LabCommand.natUplink("east:b:port-preserving") == (UplinkID(site: "east", uplink: "b"), false))
        #expect(throws: LabError.self) { try LabCommand.natUplink("east:isp-b:cone") }
    }

    @Test func wireguardBackendFlag() throws {
        #expect(try parseRun(["--site-name", "hq"]).routerConfiguration.wireguard == .auto)
        #expect(try parseRun(["--site-name", "hq", "--wireguard", "userspace"]).routerConfiguration.wireguard == .userspace)
        #expect(try parseRun(["--site-name", "hq", "--wireguard", "kernel"]).routerConfiguration.wireguard == .kernel)
        #expect(throws: (any Error).self) { try parseRun(["--site-name", "hq", "--wireguard", "both"]) }
    }

    @Test func pairingFlag() throws {
        #expect(try parseRun(["--site-name", "hq"]).routerConfiguration.pairing == .sameLabel)
        #expect(try parseRun(["--site-name", "hq", "--pairing", "all-pairs"]).routerConfiguration.pairing == .allPairs)
        #expect(throws: (any Error).self) { try parseRun(["--site-name", "hq", "--pairing", "every"]) }
    }

    @Test func ourFlags() throws {
        let configuration = try parseRun([
            "--site-name", "hq", "--uplink", "eth0=isp-a", "--uplink", "wwan0=lte", "--lan", "192.168.1.0/24",
            "--lan", "192.168.5.0/24", "--mesh-key", "/etc/patronus/mesh.key", "--peer", "192.0.2.7:51821",
            "--probe-interval", "100", "--bandwidth-interval", "30", "--metrics-listen", "127.0.0.1:9477", "--multicast-group", "239.1.2.3:4000",
            "--dashboard-listen", "10.0.0.1:9480",
        ]).routerConfiguration
        #expect(configuration.dashboardListen?.description == "10.0.0.1:9480")
        #expect(configuration.uplinks == [Uplink(interface: "eth0", label: "isp-a"), Uplink(interface: "wwan0", label: "lte")])
        #expect(configuration.lanPrefixes.map(\.description) == ["192.168.1.0/24", "192.168.5.0/24"])
        #expect(configuration.meshKeyPath == "/etc/patronus/mesh.key")
        #expect(configuration.peers.map(\.description) == ["192.0.2.7:51821"])
        #expect(configuration.probeInterval == .milliseconds(100))
        #expect(configuration.bandwidthInterval == .seconds(30))
        #expect(configuration.metricsListen?.description == "127.0.0.1:9477")
        #expect(configuration.multicastGroup.description == "239.1.2.3:4000")
        #expect(configuration.uplinks.allSatisfy { !$0.noCopies })
    }

    @Test func anUplinkCanRefuseCopies() throws {
        let configuration = try parseRun(["--site-name", "hq", "--uplink", "eth0=isp-a", "--uplink", "wwan0=lte,no-copies",
                                          "--uplink", "eth2,no-copies,shape=20M"]).routerConfiguration
        #expect(configuration.uplinks == [Uplink(interface: "eth0", label: "isp-a"), Uplink(interface: "wwan0", label: "lte", noCopies: true),
                                          Uplink(interface: "eth2", label: "eth2", shaping: .fixed(bitsPerSecond: 20_000_000), noCopies: true)])
        #expect(configuration.uplinks[1].description == "wwan0=lte,no-copies")
        for bad in ["wwan0=lte,no-copy", "wwan0=lte,", ",no-copies", "wwan0,no-copies,no-copies"] {
            #expect(error(["run", "--site-name", "hq", "--uplink", bad])?.contains("[,no-copies]") == true, "\(bad)")
        }
    }

    @Test func uplinkShaping() throws {
        let configuration = try parseRun([
            "--site-name", "hq", "--uplink", "eth0=isp-a,shape=off", "--uplink", "wwan0=lte,shape=20M",
            "--uplink", "eth2,shape=1.5G", "--uplink", "eth3=dsl,shape=auto", "--uplink", "eth4=sat,shape=800k",
        ]).routerConfiguration
        #expect(configuration.uplinks.map(\.shaping) == [.off, .fixed(bitsPerSecond: 20_000_000), .fixed(bitsPerSecond: 1_500_000_000),
                                                        .auto, .fixed(bitsPerSecond: 800_000)])
        #expect(configuration.uplinks.map(\.description) == ["eth0=isp-a,shape=off", "wwan0=lte,shape=20M", "eth2=eth2,shape=1.5G",
                                                            "eth3=dsl", "eth4=sat,shape=800k"])
        // One rate is the upload's (the download stays auto); auto and off apply to both directions.
        #expect(configuration.uplinks.map(\.downloadShaping) == [.off, .auto, .auto, .auto, .auto])
    }

    @Test func uplinkShapingUpAndDown() throws {
        let configuration = try parseRun([
            "--site-name", "hq", "--uplink", "eth0=isp-a,shape=20M/100M", "--uplink", "wwan0=lte,shape=auto/off",
            "--uplink", "eth2,no-copies,shape=off/8M", "--uplink", "eth3,shape=auto/auto",
        ]).routerConfiguration
        #expect(configuration.uplinks.map(\.shaping) == [.fixed(bitsPerSecond: 20_000_000), .auto, .off, .auto])
        #expect(configuration.uplinks.map(\.downloadShaping) == [.fixed(bitsPerSecond: 100_000_000), .off,
                                                                .fixed(bitsPerSecond: 8_000_000), .auto])
        #expect(configuration.uplinks.map(\.description) == ["eth0=isp-a,shape=20M/100M", "wwan0=lte,shape=auto/off",
                                                            "eth2=eth2,shape=off/8M,no-copies", "eth3=eth3"])
        // The description parses back to the same uplink.
        for uplink in configuration.uplinks { #expect(Uplink(argument: uplink.description) == uplink) }
    }

    @Test func everyBadFlagIsOneClearLine() throws {
        let cases: [([String], String)] = [
            (["run"], "--site-name"),
            (["run", "--site-name", "hq", "--bogus"], "--bogus"),
            (["run", "--site-name", "bad name"], "--site-name"),
            (["run", "--site-name", "hq", "--listen-port", "0"], "--listen-port"),
            (["run", "--site-name", "hq", "--listen-port", "70000"], "--listen-port"),
            (["run", "--site-name", "hq", "--listen-port", "x"], "--listen-port"),
            (["run", "--site-name", "hq", "--interface", "a-very-long-interface"], "--interface"),
            (["run", "--site-name", "hq", "--multicast-group", "10.0.0.1:51821"], "multicast"),
            (["run", "--site-name", "hq", "--multicast-group", "239.255.77.77"], "--multicast-group"),
            (["run", "--site-name", "hq", "--uplink", "eth0=a b"], "--uplink"),
            (["run", "--site-name", "hq", "--uplink", "eth0", "--uplink", "eth0=x"], "twice"),
            (["run", "--site-name", "hq", "--uplink", "wg-sdwan0"], "own tunnels"),
            (["run", "--site-name", "hq", "--uplink", "eth0=isp-a,shape=fast"], "the upload 'fast' is not auto, off or a rate"),
            (["run", "--site-name", "hq", "--uplink", "eth0=isp-a,shape=10"], "the upload '10' is not auto, off or a rate"),
            (["run", "--site-name", "hq", "--uplink", "eth0=isp-a,shape=2000G"], "64k...1000G"),
            (["run", "--site-name", "hq", "--uplink", "eth0=isp-a,shape=20M/5"], "the download '5' is not auto, off or a rate"),
            (["run", "--site-name", "hq", "--uplink", "eth0=isp-a,shape=x/20M"], "the upload 'x'"),
            (["run", "--site-name", "hq", "--uplink", "eth0=isp-a,shape=20M/"], "the download ''"),
            (["run", "--site-name", "hq", "--uplink", "eth0=isp-a,shape=1M/2M/3M"], "UP/DOWN"),
            (["run", "--site-name", "hq", "--uplink", "eth0=isp-a,speed=20M"], "shape=MODE[/MODE]"),
            (["run", "--site-name", "hq", "--lan", "10.99.3.0/24"], "overlay pool"),
            (["run", "--site-name", "hq", "--lan", "192.168.1.1/24"], "--lan"),
            (["run", "--site-name", "hq", "--lan", "192.168.0.0/16", "--lan", "192.168.1.0/24"], "overlaps"),
            (["run", "--site-name", "hq", "--peer", "example.org:1"], "--peer"),
            (["run", "--site-name", "hq", "--peer", "239.1.1.1:1"], "unicast"),
            (["run", "--site-name", "hq", "--probe-interval", "5"], "--probe-interval"),
            (["run", "--site-name", "hq", "--probe-interval", "20000"], "--probe-interval"),
            (["run", "--site-name", "hq", "--bandwidth-interval", "9"], "--bandwidth-interval"),
            (["run", "--site-name", "hq", "--bandwidth-interval", "86401"], "--bandwidth-interval"),
            (["run", "--site-name", "hq", "--metrics-listen", "127.0.0.1"], "--metrics-listen"),
            (["run", "--site-name", "hq", "--dashboard-listen", "0.0.0.0:9480"], "local or management address"),
            (["run", "--site-name", "hq", "--dashboard-listen", "127.0.0.1:0"], "--dashboard-listen"),
            (["run", "--site-name", "hq", "--dashboard-listen", "127.0.0.1:9477", "--metrics-listen", "127.0.0.1:9477"],
             "its own port"),
            (["run", "--site-name", "hq", "--mesh-key", "k", "--insecure-no-auth"], "--insecure-no-auth"),
            (["run", "--site-name", "hq", "--database", ""], "--database"),
            (["status", "--jsn"], "--jsn"),
            (["policy", "frobnicate"], "frobnicate"),
            (["mesh-key", "generate", "--output"], "--output"),
        ]
        for (arguments, expected) in cases {
            let message = try #require(error(arguments), "\(arguments) was accepted")
            #expect(message.contains(expected), "\(arguments): \(message)")
            #expect(!message.contains("\n"), "\(arguments): \(message)")
        }
    }
}

@Suite struct PolicyParsingTests {
    func parseAdd(_ arguments: [String]) throws -> PolicyCommand.Add {
        try #require(try PatronusRouter.parseAsRoot(["policy", "add"] + arguments) as? PolicyCommand.Add)
    }

    @Test func addBuildsTheWholePolicy() throws {
        let add = try parseAdd(["--name", "voip2", "--priority", "90", "--strategy", "lowest-latency",
                                "--match", "udp:5060-5061,16384-32767", "--match", "tcp:5060-5061", "--dscp", "46",
                                "--dscp", "34,26", "--src", "192.168.1.0/24", "--dst", "10.20.0.0/16",
                                "--max-latency", "150", "--max-jitter", "30", "--max-loss", "1", "--disabled",
                                "--database", "/tmp/x.db"])
        let policy = add.policy
        #expect(policy.name == "voip2" && policy.priority == 90 && policy.strategy == .lowestLatency && !policy.enabled)
        #expect(policy.match.services == [ServiceMatch(.udp, [PortRange(5060, 5061), PortRange(16384, 32767)]),
                                          ServiceMatch(.tcp, [PortRange(5060, 5061)])])
        #expect(policy.match.dscp == [46, 34, 26])
        #expect(policy.match.sources == [IPv4Prefix("192.168.1.0/24")!])
        #expect(policy.match.destinations == [IPv4Prefix("10.20.0.0/16")!])
        #expect(policy.sla == SLA(maxLatencyMs: 150, maxJitterMs: 30, maxLossPct: 1))
        #expect(add.options.database == "/tmp/x.db")
        let fixed = try parseAdd(["--name", "pin", "--priority", "5", "--strategy", "fixed:isp-a"])
        #expect(fixed.policy.strategy == .fixed(uplinkLabel: "isp-a") && fixed.policy.match.matchesEverything)
    }

    /// explain's bad input is a usage error like every other bad flag: one line, exit 64, before anything is read.
    @Test func malformedExplainQueriesAreUsageErrors() throws {
        let cases: [([String], String)] = [
            (["explain", "10.10.2.2", "icmp", "1"], "icmp"),
            (["explain", "10.10.2.2", "udp", "0"], "port '0'"),
            (["explain", "10.10.2.2", "udp", "65536"], "port '65536'"),
            (["explain", "10.10.2.2", "tcp", "-5"], "PORT"),
            (["explain", "10.10.2.2", "udp"], "PROTO and PORT"),
            (["explain", "10.10.2"], "10.10.2"),
            (["explain", "10.10.2.2", "--from", "hq"], "'hq'"),
            (["explain", "10.10.2.2", "--dscp", "64"], "DSCP"),
            (["explain", "10.10.2.2", "--netns", "../x"], "--netns"),
            (["explain"], "<destination>"),
        ]
        expectRefusedInOneLine(cases, exitCode: 64)
    }

    /// Each argument list must fail to parse with one line naming `expected` (and the exit code, if given).
    func expectRefusedInOneLine(_ cases: [([String], String)], exitCode: Int32? = nil) {
        for (arguments, expected) in cases {
            do {
                _ = try PatronusRouter.parseAsRoot(arguments)
                Issue.record("\(arguments) was accepted")
            } catch {
                let message = PatronusRouter.oneLineMessage(for: error)
                #expect(message.contains(expected), "\(arguments): \(message)")
                #expect(!message.contains("\n"))
                if let exitCode { #expect(PatronusRouter.exitCode(for: error).rawValue == exitCode, "\(arguments)") }
            }
        }
    }

    @Test func malformedPoliciesAreRefusedInOneLine() throws {
        let base = ["policy", "add", "--name", "p", "--priority", "5", "--strategy", "best-score"]
        let cases: [([String], String)] = [
            (["policy", "add", "--name", "p", "--priority", "5", "--strategy", "fastest"], "fastest"),
            (base + ["--match", "icmp"], "--match"),
            (base + ["--match", "udp:0"], "--match"),
            (base + ["--match", "udp:10-5"], "--match"),
            (base + ["--dscp", "64"], "--dscp"),
            (base + ["--src", "10.0.0.1/8"], "--src"),
            (base + ["--max-loss", "150"], "max loss"),
            (base + ["--max-latency=-1"], "max latency"),
            (base + ["--max-jitter", "0"], "max jitter"),
            (["policy", "add", "--name", "9lives", "--priority", "5", "--strategy", "best-score"], "policy name"),
            (["policy", "add", "--name", "p", "--priority", "0", "--strategy", "best-score"], "priority"),
            (["policy", "add", "--name", "p", "--strategy", "best-score"], "--priority"),
            (["policy", "remove"], "<name>"),
        ]
        expectRefusedInOneLine(cases)
    }

    @Test func otherCommandsParse() throws {
        let status = try #require(try PatronusRouter.parseAsRoot(["status", "--database", "a.db", "--json"]) as? StatusCommand)
        #expect(status.options.database == "a.db" && status.json && status.options.netns == nil)
        #expect((try PatronusRouter.parseAsRoot(["status"]) as? StatusCommand)?.options.database == "sdwan.db")
        #expect((try PatronusRouter.parseAsRoot(["status", "--netns", "ptlab-hq"]) as? StatusCommand)?.options.netns == "ptlab-hq")
        let explain = try #require(try PatronusRouter.parseAsRoot(["explain", "10.10.2.2", "udp", "5060", "--from", "10.10.1.2",
                                                                   "--dscp", "46", "--netns", "ptlab-hq", "--json"]) as? ExplainCommand)
        #expect(explain.destination == IPv4Address("10.10.2.2") && explain.proto == .udp && explain.port == 5060
                && explain.source == IPv4Address("10.10.1.2") && explain.dscp == 46 && explain.json
                && explain.options.netns == "ptlab-hq" && explain.options.database == "sdwan.db")
        let bare = try #require(try PatronusRouter.parseAsRoot(["explain", "10.10.2.2"]) as? ExplainCommand)
        #expect(bare.proto == nil && bare.port == nil && bare.source == nil && bare.dscp == 0)
        #expect((try PatronusRouter.parseAsRoot(["policy", "disable", "bulk"]) as? PolicyCommand.Disable)?.name == "bulk")
        #expect((try PatronusRouter.parseAsRoot(["policy", "list", "--json"]) as? PolicyCommand.List)?.json == true)
        let generate = try #require(try PatronusRouter.parseAsRoot(["mesh-key", "generate", "--output", "k", "--force"])
            as? MeshKeyCommand.Generate)
        #expect(generate.output == "k" && generate.force)
    }

    @Test func capabilityParsing() {
        #expect(ProcessCapabilities.hasNetAdmin(procStatus: "Name:\tx\nCapEff:\t000001ffffffffff\n"))
        #expect(!ProcessCapabilities.hasNetAdmin(procStatus: "CapEff:\t0000000000000000\n"))
        #expect(ProcessCapabilities.hasNetAdmin(procStatus: "CapEff:\t0000000000001000\n"))
        #expect(!ProcessCapabilities.hasNetAdmin(procStatus: "CapEff:\tzz\n"))
    }
}

import ArgumentParser
import Foundation
import Lab

/// `patronus-router lab`: a whole SD-WAN on one machine (see docs/LAB.md).
public struct LabCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "lab",
        abstract: "A whole SD-WAN on one machine: sites, LAN hosts and ISPs in network namespaces, with a WAN emulator.",
        subcommands: [Up.self, Down.self, Status.self, Impair.self, Carrier.self, Renumber.self, Plug.self, Unplug.self,
                      WANEmulatorCommand.self]
    )
    public init() {}

    /// Options every lab subcommand takes.
    struct Common: ParsableArguments {
        @Option(help: ArgumentHelp("Lab instance name (namespaces are pt<instance>-*).", visibility: .hidden))
        var instance = "lab"
        @Option(help: ArgumentHelp("Where lab state lives.", visibility: .hidden))
        var stateRoot = "/run/patronus-lab"

        var controller: LabController { LabController(instance: instance, stateRoot: stateRoot) }
    }

    /// Runs `body`; a lab error becomes one line on stderr and exit status 1.
    static func reporting(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch let error as LabError {
            FileHandle.standardError.write(Data("error: \(error.description)\n".utf8))
            throw ExitCode.failure
        }
    }

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Build the lab (fails if one is up).")
        @OptionGroup var common: Common
        @Option(help: "Number of sites (1-16): hq, east, west, north, south, central, site7...")
        var sites = 3
        @Option(help: "Uplinks per site (1-6), labels isp-a, isp-b, ...")
        var uplinks = 2
        @Option(help: "bridged (one L2 segment per ISP, multicast discovery) or routed (every uplink on its own subnet behind its ISP's router, the ISPs joined by an internet exchange; routers get --peer).")
        var wan = "bridged"
        @Option(help: ArgumentHelp("Put SITE's UPLINK behind its ISP's carrier NAT (routed only; repeatable). MAPPING: port-preserving (default: endpoint-independent, like most CPE) or symmetric (a new random port for every destination: defeats direct traversal).",
                                   valueName: "site:uplink[:mapping]"))
        var nat: [String] = []
        @Option(help: ArgumentHelp("Leave SITE's UPLINK unplugged at start (the router is told about it; `lab plug` plugs it; repeatable).",
                                   valueName: "site:uplink"))
        var unplugged: [String] = []
        @Option(help: ArgumentHelp("Tell SITE's router that UPLINK never carries copies of duplicated classes (`--uplink ...,no-copies`; repeatable).",
                                   valueName: "site:uplink"))
        var noCopies: [String] = []
        @Option(help: ArgumentHelp("Routed: give every other site only this site's addresses as --peer (the others learn each other relayed through it).",
                                   valueName: "site"))
        var hub: String?
        @Option(help: ArgumentHelp("Give SITE's router no --uplink: it detects its uplinks, also ones plugged in later (labels wan-a, wan-b, ...; repeatable).",
                                   valueName: "site"))
        var detectUplinks: [String] = []
        @Flag(inversion: .prefixedNo,
              help: "Start `patronus-router run` in every site (--no-routers: the topology alone; bridged: static routes between the LANs).")
        var routers = LabController.routersByDefault

        func run() throws {
            try LabCommand.reporting {
                guard let mode = LabPlan.WANMode(rawValue: wan) else {
                    throw LabError.invalidArgument("--wan '\(wan)' must be bridged or routed")
                }
                let nats = try nat.map(LabCommand.natUplink)
                let state = try common.controller.up(sites: sites, uplinks: uplinks, wan: mode,
                                                     nat: nats.filter { !$0.symmetric }.map(\.id),
                                                     symmetricNAT: nats.filter(\.symmetric).map(\.id), unplugged: try unplugged.map(LabCommand.uplinkID),
                                                     hub: hub, detecting: detectUplinks, routers: routers,
                                                     noCopies: try noCopies.map(LabCommand.uplinkID))
                let plan = state.plan
                print("lab '\(plan.instance)' is up: \(plan.sites.count) sites (\(plan.sites.map(\.name).joined(separator: ", "))), \(plan.isps.count) uplinks each (\(plan.isps.map(\.label).joined(separator: ", "))), WAN: \(plan.wan.rawValue), emulation: \(state.backend.rawValue)")
                for id in plan.natted {
                    let uplink = try plan.uplink(site: id.site, named: id.uplink)
                    print("NAT: \(id) is behind \(id.uplink)'s \(plan.isSymmetricNAT(id) ? "symmetric " : "")carrier NAT (\(uplink.address), seen outside as \(uplink.publicAddress))")
                }
                for id in plan.unplugged { print("unplugged: \(id) (sudo patronus-router lab plug \(id.site) \(id.uplink))") }
                for id in plan.noCopies ?? [] { print("no copies: \(id) never carries copies of duplicated classes") }
                for site in plan.detecting ?? [] { print("detecting: \(site)'s router detects its uplinks (no --uplink)") }
                if state.routers.isEmpty {
                    print("routers: not started: the topology alone\(state.staticRoutes ? ", with static routes between the LANs over \(plan.isps[0].label)" : "")")
                } else {
                    print("routers: \(state.routers.keys.sorted().joined(separator: ", ")) running (logs in \(common.controller.stateDirectory))")
                }
                let first = plan.sites[0]
                print("look inside: sudo ip netns exec \(plan.routerNamespace(first.name)) ip addr")
                if plan.sites.count > 1 {
                    print("             sudo ip netns exec \(plan.hostNamespace(first.name)) ping \(plan.sites[1].hostAddress)")
                }
                print("impair:      sudo patronus-router lab impair \(first.name) \(plan.isps[0].label) --delay 30 --loss 1")
                print("status:      sudo patronus-router lab status")
                print("tear down:   sudo patronus-router lab down")
            }
        }
    }

    struct Down: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove the lab: namespaces, processes, sockets, state.")
        @OptionGroup var common: Common

        func run() throws {
            try LabCommand.reporting {
                let removal = try common.controller.down()
                print("lab '\(common.instance)' is down: removed \(removal.namespaces.count) namespaces, \(removal.processes.count) processes\(removal.stateDirectory ? ", its state" : "")")
            }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the lab's sites, uplinks and impairments.")
        @OptionGroup var common: Common
        @Flag(help: "Print the state and per-uplink counters as JSON.")
        var json = false

        func run() throws {
            try LabCommand.reporting {
                let controller = common.controller
                if json {
                    let state = try controller.read()
                    let links = (try? controller.impairmentStatus()) ?? []
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                    struct Report: Encodable { var state: LabState; var links: [EmulatedLinkStatus] }
                    print(String(decoding: try encoder.encode(Report(state: state, links: links)), as: UTF8.self))
                } else {
                    print(try controller.statusReport())
                }
            }
        }
    }

    struct Impair: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change one uplink's delay, jitter, loss, rate, or cut/restore it.",
            discussion: "Only the given settings change. --restore lifts a cut and keeps the rest; --clear resets the uplink first.")
        @OptionGroup var common: Common
        @Argument(help: "Site name (hq, east, ...).") var site: String
        @Argument(help: "Uplink: isp-a, a or wan-a.") var uplink: String
        @Option(parsing: .unconditional, help: "One-way delay in ms (0-10000).") var delay: Double?
        @Option(parsing: .unconditional, help: "Jitter (normal standard deviation) in ms (0-5000).") var jitter: Double?
        @Option(parsing: .unconditional, help: "Random loss in percent (0-100).") var loss: Double?
        @Option(parsing: .unconditional, help: "Rate limit in Mbit/s (0.01-10000; 0 removes it).") var rate: Double?
        @Option(parsing: .unconditional, help: "The rate limiter's FIFO in ms at its rate (1-10000; default 100): a modem's deep buffer is hundreds.") var queue: Double?
        @Flag(help: "Blackhole the uplink.") var cut = false
        @Flag(help: "Lift a cut.") var restore = false
        @Flag(help: "Reset the uplink to a clean link before applying the other settings.") var clear = false
        @Option(help: "in (isp -> site), out (site -> isp) or both.") var direction = "both"

        func run() throws {
            try LabCommand.reporting {
                if cut && restore { throw LabError.invalidArgument("--cut and --restore contradict each other: give one") }
                let directions: Set<TrafficDirection>
                switch direction {
                case "both": directions = [.inbound, .outbound]
                case "in": directions = [.inbound]
                case "out": directions = [.outbound]
                default: throw LabError.invalidArgument("--direction '\(direction)' must be in, out or both")
                }
                let change = ImpairmentChange(delayMs: delay, jitterMs: jitter, lossPercent: loss, rateMbit: rate,
                                              cut: cut ? true : (restore ? false : nil), clear: clear, queueLimitMs: queue)
                let links = try common.controller.impair(site: site, uplink: uplink, change, directions: directions)
                let plan = try common.controller.read().plan
                let id = try plan.uplink(site: site, named: uplink).id
                if let link = links.first(where: { $0.id == id }) {
                    print("\(id): in \(link.inbound), out \(link.outbound)")
                }
            }
        }
    }

    /// `site:uplink[:mapping]` (as `--nat` takes it): mapping `port-preserving` (the default) or `symmetric`.
    static func natUplink(_ text: String) throws(LabError) -> (id: UplinkID, symmetric: Bool) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return (try uplinkID(text), false) }
        let id = try uplinkID(parts[0...1].joined(separator: ":"))
        switch parts[2] {
        case "symmetric": return (id, true)
        case "port-preserving": return (id, false)
        default: throw .invalidArgument("'\(text)': the NAT mapping must be port-preserving or symmetric, e.g. east:isp-b:symmetric")
        }
    }

    /// `site:uplink` (as `--nat` and `--unplugged` take it).
    static func uplinkID(_ text: String) throws(LabError) -> UplinkID {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw .invalidArgument("'\(text)' must be SITE:UPLINK, e.g. east:isp-b")
        }
        return UplinkID(site: String(parts[0]), uplink: String(parts[1]))
    }

    /// The uplink an uplink verb acts on.
    struct UplinkArguments: ParsableArguments {
        @Argument(help: "Site name (hq, east, ...).") var site: String
        @Argument(help: "Uplink: isp-a, a or wan-a.") var uplink: String
    }

    struct Carrier: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Take an uplink's carrier away (down) or give it back (up), as a pulled cable or a modem losing sync.")
        @OptionGroup var common: Common
        @OptionGroup var target: UplinkArguments
        @Argument(help: "down or up.") var state: String

        func run() throws {
            try LabCommand.reporting {
                guard state == "down" || state == "up" else {
                    throw LabError.invalidArgument("carrier '\(state)' must be down or up")
                }
                try common.controller.setCarrier(site: target.site, uplink: target.uplink, up: state == "up")
                print("\(target.site)/\(target.uplink): carrier \(state)")
            }
        }
    }

    struct Renumber: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give an uplink a new address (routed: a new subnet and gateway too), as DHCP or PPPoE would.")
        @OptionGroup var common: Common
        @OptionGroup var target: UplinkArguments

        func run() throws {
            try LabCommand.reporting {
                let now = try common.controller.renumber(site: target.site, uplink: target.uplink)
                print("\(now.id): \(now.routerInterface) \(now.address)/\(now.prefixLength) via \(now.gateway)")
            }
        }
    }

    struct Plug: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Plug an unplugged uplink in: its wan-x interface appears in the site (as a USB modem would).")
        @OptionGroup var common: Common
        @OptionGroup var target: UplinkArguments

        func run() throws { try LabCommand.setPlugged(common, target, true) }
    }

    struct Unplug: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Unplug an uplink: its wan-x interface disappears from the site.")
        @OptionGroup var common: Common
        @OptionGroup var target: UplinkArguments

        func run() throws { try LabCommand.setPlugged(common, target, false) }
    }

    static func setPlugged(_ common: Common, _ target: UplinkArguments, _ plugged: Bool) throws {
        try reporting {
            let controller = common.controller
            guard plugged else {
                try controller.unplug(site: target.site, uplink: target.uplink)
                return print("\(target.site)/\(target.uplink): unplugged")
            }
            try controller.plug(site: target.site, uplink: target.uplink)
            let now = try controller.read().plan.uplink(site: target.site, named: target.uplink)
            print("\(now.id): plugged in, \(now.routerInterface) \(now.address)/\(now.prefixLength) via \(now.gateway)")
        }
    }

    /// The userspace WAN emulator daemon `lab up` starts; not for direct use.
    struct WANEmulatorCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "wan-emulator", abstract: "Run the userspace WAN emulator (started by `lab up`).",
            shouldDisplay: false)
        @Option(help: "Control socket path.") var control: String
        @Option(help: "SITE/UPLINK=NAMESPACE:SITE_IF:BRIDGE_IF, repeated.") var link: [String] = []

        func run() throws {
            try LabCommand.reporting {
                let links = try link.map { spec throws(LabError) in try EmulatedLinkSpec(parsing: spec) }
                do {
                    try WANEmulatorDaemon.run(controlPath: control, links: links)
                } catch let error as LabError {
                    throw error
                } catch {
                    throw LabError.emulator("\(error)")
                }
            }
        }
    }
}

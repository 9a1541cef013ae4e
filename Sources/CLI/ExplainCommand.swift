import ArgumentParser
import Foundation
import Model
import Router
import Store

/// `patronus-router explain DST [PROTO PORT]`: like `ip route get`, for the SD-WAN. Reads the kernel's
/// steering table, asks the kernel's routing with the path mark, and reads the database; changes nothing.
struct ExplainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract: "Show which class, site, path, tunnel and uplink a flow takes now, and why.",
        discussion: """
            Answers from the kernel (table inet patronus and a route lookup with the path's mark, so the real \
            ip rules and tables answer) and the database (sites, policies, the paths' latest figures). \
            Read-only: safe beside the daemon and while traffic flows. A destination outside every site's \
            prefixes prints one line "not steered: ..." and exits 1.
            Example: patronus-router explain 10.10.2.2 udp 5060 --from 10.10.1.2 --netns ptlab-hq
            """)

    @Argument(help: "The destination address.", transform: ExplainCommand.address)
    var destination: IPv4Address

    @Argument(help: "tcp or udp (with PORT).", transform: ExplainCommand.proto)
    var proto: TransportProtocol?

    @Argument(help: "The destination port, 1-65535.", transform: ExplainCommand.port)
    var port: UInt16?

    @Option(name: .customLong("from"), help: "The source address (default: the one this host would use).",
            transform: ExplainCommand.address)
    var source: IPv4Address?

    @Option(help: "The DSCP code point (0-63) of the flow's packets.", transform: ExplainCommand.dscp)
    var dscp: UInt8 = 0

    @OptionGroup var options: KernelInspectionOptions

    @Flag(help: "Print JSON instead of the report.")
    var json = false

    func validate() throws {
        if (proto == nil) != (port == nil) { throw ValidationError("give both PROTO and PORT (e.g. udp 5060), or neither") }
    }

    func run() throws {
        let store = try Store.openReadOnly(path: options.database)
        let inspector = try SteeringInspector(store: store, netns: options.netns)
        do {
            let answer = try inspector.explain(.init(destination: destination, proto: proto, port: port, source: source,
                                                     dscp: dscp))
            FileHandle.standardOutput.write(Data((json ? answer.json() : answer.report()).utf8))
        } catch .notSteered(let why) {
            FileHandle.standardOutput.write(Data("not steered: \(why)\n".utf8))
            throw ExitCode(1)
        }
    }

    static func address(_ text: String) throws -> IPv4Address {
        guard let address = IPv4Address(text) else { throw ValidationError("'\(text)' is not \(IPv4Address.textForm)") }
        return address
    }

    static func proto(_ text: String) throws -> TransportProtocol {
        guard let proto = TransportProtocol(name: text) else { throw ValidationError("'\(text)' is not \(TransportProtocol.textForm)") }
        return proto
    }

    static func port(_ text: String) throws -> UInt16 {
        guard text.allSatisfy({ $0.isASCII && $0.isNumber }), let port = UInt16(text), port != 0 else {
            throw ValidationError("port '\(text)' is not in 1-65535")
        }
        return port
    }

    static func dscp(_ text: String) throws -> UInt8 {
        guard text.allSatisfy({ $0.isASCII && $0.isNumber }), let code = UInt8(text), code <= 63 else {
            throw ValidationError("'\(text)' is not a DSCP code point 0-63")
        }
        return code
    }
}

/// The options of commands that read the kernel's steering beside the database (`status`, `explain`).
struct KernelInspectionOptions: ParsableArguments {
    @Option(help: "Database file path.")
    var database = "sdwan.db"

    @Option(help: ArgumentHelp("Read the kernel of this network namespace (a name under /var/run/netns, e.g. a lab "
                               + "site's ptlab-hq) instead of the current one.", valueName: "name"))
    var netns: String?

    func validate() throws {
        if let netns, netns.isEmpty || netns.contains("/") || netns == "." || netns == ".." {
            throw ValidationError("--netns '\(netns)' is not a namespace name (a file name under /var/run/netns)")
        }
    }
}

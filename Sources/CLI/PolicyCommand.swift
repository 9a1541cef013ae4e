import ArgumentParser
import Foundation
import Model
import Store

/// `patronus-router policy`: the application policies in the database. Edits are picked up by a running
/// daemon (it watches the policy generation counter), so they need no restart.
struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "List and edit the application policies.",
        subcommands: [List.self, Add.self, Edit.self, Remove.self, Enable.self, Disable.self])

    struct DatabaseOption: ParsableArguments {
        @Option(help: "Database file path.")
        var database = "sdwan.db"

        /// Writers create a missing database and give it the default policies first, exactly as the first
        /// `run` would, so editing before the first start does not lose the defaults.
        func openForWriting() throws -> Store {
            let store = try Store.open(path: database)
            try store.loadDefaultPoliciesIfNew(Policy.defaults())
            return store
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the policies in priority order.")
        @OptionGroup var options: DatabaseOption
        @Flag(help: "Print JSON (the policy file format) instead of a table.")
        var json = false

        func run() throws {
            let policies = try Store.openReadOnly(path: options.database).policies().map(\.policy)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                let data = try encoder.encode(PolicyFile(policies: policies))
                FileHandle.standardOutput.write(data + Data("\n".utf8))
                return
            }
            FileHandle.standardOutput.write(Data(PolicyCommand.table(policies).utf8))
        }
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a policy.",
            discussion: """
                Example: policy add --name video --priority 50 --strategy lowest-loss \\
                  --match udp:3478-3481 --match tcp:443 --dscp 34 --dst 10.20.0.0/16 --max-loss 1
                Strategies: \(Strategy.allNames.joined(separator: ", ")). Lower priority wins.
                """)
        @OptionGroup var options: DatabaseOption
        @Option(help: "A unique name (1-32 letters, digits, '-' or '_').")
        var name: String
        @Option(help: "Lower wins (1-65535).")
        var priority: Int
        @Option(help: ArgumentHelp("How to choose the path.", valueName: "strategy"), transform: ArgumentParsing.strategy)
        var strategy: Strategy
        @Option(help: ArgumentHelp("Protocol and destination ports (repeatable).", valueName: "proto[:ports]"),
                transform: ArgumentParsing.service)
        var match: [ServiceMatch] = []
        @Option(help: ArgumentHelp("DSCP code points (repeatable or comma-separated).", valueName: "0-63"),
                transform: ArgumentParsing.dscp)
        var dscp: [[UInt8]] = []
        @Option(help: ArgumentHelp("Source prefix (repeatable).", valueName: "cidr"), transform: ArgumentParsing.prefix)
        var src: [IPv4Prefix] = []
        @Option(help: ArgumentHelp("Destination prefix (repeatable).", valueName: "cidr"), transform: ArgumentParsing.prefix)
        var dst: [IPv4Prefix] = []
        @Option(help: ArgumentHelp("SLA: maximum latency.", valueName: "ms"))
        var maxLatency: Double?
        @Option(help: ArgumentHelp("SLA: maximum jitter.", valueName: "ms"))
        var maxJitter: Double?
        @Option(help: ArgumentHelp("SLA: maximum loss.", valueName: "percent"))
        var maxLoss: Double?
        @Option(help: "A free-text description.")
        var description = ""
        @Flag(help: "Add it disabled.")
        var disabled = false
        @Flag(help: "Copy every packet of the class over a second path; the receiving site drops the second copy (docs/STEERING.md, Duplication).")
        var duplicate = false

        var policy: Policy {
            Policy(name: name, priority: priority,
                   match: TrafficMatch(services: match, dscp: dscp.flatMap { $0 }, sources: src, destinations: dst),
                   strategy: strategy, sla: SLA(maxLatencyMs: maxLatency, maxJitterMs: maxJitter, maxLossPct: maxLoss),
                   enabled: !disabled, description: description, duplicate: duplicate)
        }

        func validate() throws {
            do { try policy.validate() } catch { throw ValidationError(error.description) }
        }

        func run() throws {
            try options.openForWriting().addPolicy(policy)
            FileHandle.standardOutput.write(Data("added policy \(name) (priority \(priority))\n".utf8))
        }
    }

    struct Edit: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a policy's options.")
        @OptionGroup var options: DatabaseOption
        @Argument(help: "The policy's name.") var name: String
        @Flag(inversion: .prefixedNo, help: "Copy every packet of the class over a second path (or stop copying).")
        var duplicate: Bool?

        func validate() throws {
            guard duplicate != nil else { throw ValidationError("nothing to change: give --duplicate or --no-duplicate") }
        }

        func run() throws {
            let on = duplicate ?? false
            try PolicyCommand.edit(options, on ? "duplicating" : "not duplicating", name) { try $0.setPolicyDuplicate(named: name, on) }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a policy.")
        @OptionGroup var options: DatabaseOption
        @Argument(help: "The policy's name.") var name: String

        func run() throws { try PolicyCommand.edit(options, "removed", name) { try $0.removePolicy(named: name) } }
    }

    struct Enable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Enable a policy.")
        @OptionGroup var options: DatabaseOption
        @Argument(help: "The policy's name.") var name: String

        func run() throws { try PolicyCommand.edit(options, "enabled", name) { try $0.setPolicyEnabled(named: name, true) } }
    }

    struct Disable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Disable a policy (kept, but matches nothing).")
        @OptionGroup var options: DatabaseOption
        @Argument(help: "The policy's name.") var name: String

        func run() throws { try PolicyCommand.edit(options, "disabled", name) { try $0.setPolicyEnabled(named: name, false) } }
    }

    /// Applies one edit to a named policy and confirms it on stdout.
    static func edit(_ options: DatabaseOption, _ done: String, _ name: String, _ change: (Store) throws -> Void) throws {
        try change(options.openForWriting())
        FileHandle.standardOutput.write(Data("\(done) policy \(name)\n".utf8))
    }

    static func number(_ value: Double) -> String { String(format: "%g", value) }

    /// A fixed-width table, one policy per line.
    static func table(_ policies: [Policy]) -> String {
        let header = ["PRIORITY", "NAME", "ENABLED", "STRATEGY", "DUPLICATE", "MATCH", "SLA"]
        let rows = policies.map { policy -> [String] in
            var match = policy.match.services.map(\.argument)
            if !policy.match.dscp.isEmpty { match.append("dscp:" + policy.match.dscp.map(String.init).joined(separator: ",")) }
            if !policy.match.sources.isEmpty { match.append("src:" + policy.match.sources.map(\.description).joined(separator: ",")) }
            if !policy.match.destinations.isEmpty {
                match.append("dst:" + policy.match.destinations.map(\.description).joined(separator: ","))
            }
            var sla: [String] = []
            if let value = policy.sla.maxLatencyMs { sla.append("latency<=\(number(value))ms") }
            if let value = policy.sla.maxJitterMs { sla.append("jitter<=\(number(value))ms") }
            if let value = policy.sla.maxLossPct { sla.append("loss<=\(number(value))%") }
            return ["\(policy.priority)", policy.name, policy.enabled ? "yes" : "no", policy.strategy.description,
                    policy.duplicate ? "yes" : "no",
                    match.isEmpty ? "everything" : match.joined(separator: " "), sla.isEmpty ? "-" : sla.joined(separator: " ")]
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max()! }
        return ([header] + rows).map { row in
            row.indices.map { column in
                column == row.count - 1 ? row[column] : row[column].padding(toLength: widths[column] + 2, withPad: " ", startingAt: 0)
            }.joined()
        }.joined(separator: "\n") + "\n"
    }
}

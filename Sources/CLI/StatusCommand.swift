import ArgumentParser
import Foundation
import Store

/// `patronus-router status`: the status report from the database, read-only, safe beside the daemon.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Print the network status report from the database.",
        discussion: "Reads the database without writing to it, so it works while the daemon runs. "
            + "--json prints the schema documented in docs/STATUS-JSON.md.")

    @Option(help: "Database file path.")
    var database = "sdwan.db"

    @Flag(help: "Print JSON (a stable, versioned schema) instead of the report.")
    var json = false

    func run() throws {
        let snapshot = try Store.openReadOnly(path: database).statusSnapshot()
        FileHandle.standardOutput.write(Data((json ? snapshot.json() : snapshot.report()).utf8))
    }
}

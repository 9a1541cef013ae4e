import ArgumentParser

/// The `patronus-router` command. Subcommands live one per file in this folder.
public struct PatronusRouter: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "patronus-router",
        abstract: "An SD-WAN site router for Linux.",
        subcommands: []
    )
    public init() {}
}

import ArgumentParser
import BuildInfo
import Foundation

/// The `patronus-router` command. Subcommands live one per file in this folder.
public struct PatronusRouter: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "patronus-router",
        abstract: "An SD-WAN site router for Linux.",
        version: BuildInfo.description,
        subcommands: [RunCommand.self, StatusCommand.self, ExplainCommand.self, PolicyCommand.self, MeshKeyCommand.self, CACommand.self,
                      IdentityCommand.self, LabCommand.self]
    )
    public init() {}

    /// Parses and runs a command. Any failure prints ONE line, `error: <what failed and how to fix it>`,
    /// on stderr and exits non-zero (64 for bad flags, 1 otherwise); help and --version print as usual.
    public static func runMain() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exitWithOneLine(error)
        }
    }

    static func exitWithOneLine(_ error: any Error) -> Never {
        let code = exitCode(for: error)
        if code == .success || error is ExitCode { exit(withError: error) }
        FileHandle.standardError.write(Data("error: \(oneLineMessage(for: error))\n".utf8))
        Foundation.exit(code.rawValue)
    }

    /// The message of any error the CLI can meet, on one line.
    public static func oneLineMessage(for error: any Error) -> String {
        let message = message(for: error).trimmingCharacters(in: .whitespacesAndNewlines)
        return message.split(whereSeparator: \.isNewline).joined(separator: "; ")
    }
}

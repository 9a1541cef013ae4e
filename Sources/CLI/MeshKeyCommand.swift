import ArgumentParser
import Foundation
import Store

/// `patronus-router mesh-key generate`: a new shared secret for authenticating announcements.
struct MeshKeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mesh-key",
        abstract: "Manage the mesh key that authenticates site announcements.",
        subcommands: [Generate.self])

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a new random mesh key (32 bytes, base64, mode 0600).",
            discussion: "Copy the file to every site and pass it with `run --mesh-key PATH`.")

        @Option(help: ArgumentHelp("Where to write the key.", valueName: "path"))
        var output = "mesh.key"

        @Flag(help: "Replace an existing file (sites still using the old key can no longer join).")
        var force = false

        func run() throws {
            try SecretFile.generate(at: output, force: force)
            FileHandle.standardOutput.write(Data("wrote a new mesh key to \(output) (mode 0600)\n".utf8))
        }
    }
}

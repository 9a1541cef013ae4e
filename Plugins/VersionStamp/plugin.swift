import Foundation
import PackagePlugin

/// Stamps the `BuildInfo` target with the version (the repository's VERSION file) and the git commit the
/// binary is built from. A prebuild command runs on every build, so the commit is never stale; the script
/// rewrites its output only when the text changes, so an unchanged tree recompiles nothing.
@main struct VersionStamp: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let output = context.pluginWorkDirectoryURL.appending(path: "Generated")
        let root = context.package.directoryURL.path(percentEncoded: false)
        return [.prebuildCommand(
            displayName: "Stamping the version and git commit",
            executable: URL(fileURLWithPath: "/bin/sh"),
            arguments: [root + "/scripts/version-stamp", root, output.path(percentEncoded: false)],
            outputFilesDirectory: output
        )]
    }
}

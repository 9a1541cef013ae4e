/// What this binary is: `version` (the repository's VERSION file) and `commit` (the git commit it was built
/// from), stamped at build time by the VersionStamp plugin (scripts/version-stamp).
public enum BuildInfo {
    /// `patronus-router 0.10.0 (commit 1a2b3c4d5e6f)`: what `--version` prints and the log says at start.
    public static var description: String { "patronus-router \(version) (commit \(commit))" }
}

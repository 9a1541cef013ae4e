import Glibc

/// Everything the lab can fail with. Each description is one line that says what failed and, where there
/// is one, what to do about it.
public enum LabError: Error, Equatable, CustomStringConvertible, Sendable {
    /// A command exited non-zero (or by a signal). `stderr` is its last output line.
    case commandFailed(argv: [String], status: Int32, stderr: String)
    /// A system call failed with `errno`.
    case systemCall(String, errno: Int32)
    /// The lab needs CAP_NET_ADMIN and friends.
    case notRoot
    /// A user-supplied value was rejected before anything was touched.
    case invalidArgument(String)
    /// A lab with this instance name already exists.
    case alreadyRunning(instance: String)
    /// No lab with this instance name exists.
    case notRunning(instance: String)
    /// The WAN emulator answered with an error, or could not be reached.
    case emulator(String)

    public var description: String {
        switch self {
        case let .commandFailed(argv, status, stderr):
            let detail = stderr.isEmpty ? "" : ": \(stderr)"
            return "`\(argv.joined(separator: " "))` failed with status \(status)\(detail)"
        case let .systemCall(call, code):
            return "\(call) failed: \(String(cString: strerror(code))) (errno \(code))"
        case .notRoot:
            return "the lab needs root (network namespaces, veths): run it with sudo"
        case let .invalidArgument(message):
            return message
        case let .alreadyRunning(instance):
            return "a lab named '\(instance)' is already up: run `patronus-router lab down` first"
        case let .notRunning(instance):
            return "no lab named '\(instance)' is up: run `patronus-router lab up` first"
        case let .emulator(message):
            return "WAN emulator: \(message)"
        }
    }
}

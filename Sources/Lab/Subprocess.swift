import CNetfilter
import Glibc

/// What a finished command left behind.
public struct CommandResult: Sendable, Equatable {
    /// Exit status, or 128 + signal number when it was killed by a signal (the shell's convention).
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var succeeded: Bool { status == 0 }
}

/// Runs programs without a shell (argv only, nothing is ever interpolated) via posix_spawn.
///
/// Children get SIGINT/SIGTERM back at their default disposition and an empty signal mask: the cleanup
/// registry ignores those signals in this process to handle them on a queue, and a spawned daemon that
/// inherited "ignored" could then never be stopped with SIGTERM.
public enum Subprocess {
    /// Runs `argv` to completion and captures both output streams (read concurrently with poll, so a
    /// chatty stderr cannot deadlock a child blocked on a full pipe).
    public static func run(_ argv: [String]) throws(LabError) -> CommandResult {
        var outPipe: [Int32] = [-1, -1]
        var errPipe: [Int32] = [-1, -1]
        guard cnf_pipe_cloexec(&outPipe) == 0 else { throw .systemCall("pipe2", errno: errno) }
        guard cnf_pipe_cloexec(&errPipe) == 0 else {
            let code = errno
            close(outPipe[0]); close(outPipe[1])
            throw .systemCall("pipe2", errno: code)
        }
        let pid: pid_t
        do {
            pid = try spawnProcess(argv, stdin: nil, stdout: outPipe[1], stderr: errPipe[1], newSession: false)
        } catch {
            for fd in outPipe + errPipe { close(fd) }
            throw error
        }
        close(outPipe[1]); close(errPipe[1])
        let (out, err) = drain(outPipe[0], errPipe[0])
        close(outPipe[0]); close(errPipe[0])
        let status = waitForExit(pid)
        return CommandResult(status: status, stdout: out, stderr: err)
    }

    /// Runs `argv` and throws `LabError.commandFailed` (with the last stderr line) unless it exits 0.
    @discardableResult
    public static func check(_ argv: [String]) throws(LabError) -> String {
        let result = try run(argv)
        guard result.succeeded else {
            let last = result.stderr.split(separator: "\n").last.map(String.init) ?? ""
            throw .commandFailed(argv: argv, status: result.status, stderr: last)
        }
        return result.stdout
    }

    /// Starts `argv` in the background with stdin from /dev/null and stdout+stderr appended to `logPath`
    /// (or /dev/null). With `newSession` the child leads its own session, so it survives the terminal
    /// that started it (used by `lab up` for processes that outlive the command).
    public static func spawn(_ argv: [String], logPath: String? = nil, newSession: Bool = false) throws(LabError) -> pid_t {
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        guard devNull >= 0 else { throw .systemCall("open /dev/null", errno: errno) }
        defer { close(devNull) }
        let logFD = open(logPath ?? "/dev/null", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard logFD >= 0 else { throw .systemCall("open \(logPath ?? "/dev/null")", errno: errno) }
        defer { close(logFD) }
        return try spawnProcess(argv, stdin: devNull, stdout: logFD, stderr: logFD, newSession: newSession)
    }

    /// Waits for `pid` and returns its status in the shell's convention (128 + signal when signalled).
    @discardableResult
    public static func waitForExit(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        return decode(status)
    }

    /// Non-blocking: the exit status if `pid` (our child) has exited, nil while it runs.
    public static func exitStatusIfExited(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid { return decode(status) }
        if r < 0 && errno == ECHILD { return -1 }
        return nil
    }

    private static func decode(_ status: Int32) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    private static func spawnProcess(
        _ argv: [String], stdin: Int32?, stdout: Int32, stderr: Int32, newSession: Bool
    ) throws(LabError) -> pid_t {
        precondition(!argv.isEmpty, "Subprocess: empty argv")
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let stdin { posix_spawn_file_actions_adddup2(&actions, stdin, 0) }
        posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr, 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGINT)
        sigaddset(&defaults, SIGTERM)
        sigaddset(&defaults, SIGPIPE)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        var flags = Int32(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK)
        if newSession { flags |= Int32(CNF_POSIX_SPAWN_SETSID) }
        posix_spawnattr_setflags(&attributes, Int16(flags))

        let cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for arg in cArgs { free(arg) } }
        var pid: pid_t = 0
        let rc = cArgs.withUnsafeBufferPointer { buffer in
            posix_spawnp(&pid, argv[0], &actions, &attributes, buffer.baseAddress!, environ)
        }
        guard rc == 0 else { throw .systemCall("posix_spawnp \(argv[0])", errno: rc) }
        return pid
    }

    private static func drain(_ outFD: Int32, _ errFD: Int32) -> (String, String) {
        var out: [UInt8] = []
        var err: [UInt8] = []
        var fds = [pollfd(fd: outFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: errFD, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 16384)
        while fds.contains(where: { $0.fd >= 0 }) {
            let ready = poll(&fds, nfds_t(fds.count), -1)
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            for index in fds.indices where fds[index].fd >= 0 && fds[index].revents != 0 {
                let n = buffer.withUnsafeMutableBytes { read(fds[index].fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    if index == 0 { out += buffer[0..<n] } else { err += buffer[0..<n] }
                } else if n == 0 || errno != EINTR {
                    fds[index].fd = -1
                }
            }
        }
        return (String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }
}

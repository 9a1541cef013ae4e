import CNetfilter
import Foundation
import Glibc

/// The write end of the self-pipe the signal handler writes to. Set once, before the handler is installed,
/// so the handler only reads an initialized value (and does nothing but write(2), which is signal-safe).
nonisolated(unsafe) private var signalPipeWriteEnd: Int32 = -1

private func forwardSignal(_ signo: Int32) {
    var byte = UInt8(truncatingIfNeeded: signo)
    _ = write(signalPipeWriteEnd, &byte, 1)
}

/// A process-wide list of undo actions (delete a namespace, kill a process), run newest first.
///
/// Guarantees: every registered action runs at most once, whichever comes first of an explicit
/// `run(_:)`/`runAll()`, normal process exit (atexit), SIGINT or SIGTERM. On a signal the actions run and
/// the signal is then sent again with its default disposition, so the process still dies the way its parent
/// expects. What it cannot cover: SIGKILL and crashes; `lab down` and the `pt` name prefix exist for those.
///
/// Cost: a lock and a dictionary entry per registration; the signal handlers are installed once, on the
/// first registration.
public final class LabCleanup: @unchecked Sendable {
    /// The one registry of this process.
    public static let shared = LabCleanup()

    /// Identifies one registered action.
    public struct Token: Hashable, Sendable {
        fileprivate let value: UInt64
    }

    private struct Entry {
        let label: String
        let action: @Sendable () -> Void
    }

    private let lock = NSLock()
    private var entries: [UInt64: Entry] = [:]
    private var nextValue: UInt64 = 1
    private var handlersInstalled = false
    /// Set when a signal started the final teardown: from then on nothing new may outlive the process.
    private var terminating = false
    /// Undo actions running synchronously in `register` after `terminating` was set.
    private var inFlight = 0

    private init() {}

    /// Registers `action` to be run at teardown. `label` names it in diagnostics.
    @discardableResult
    public func register(_ label: String, _ action: @escaping @Sendable () -> Void) -> Token {
        installHandlersOnce()
        lock.lock()
        if terminating {
            // A signal is tearing everything down: undo this resource at once. The `creating` scope
            // around its creation (if any) keeps the teardown waiting until this is done.
            inFlight += 1
            lock.unlock()
            action()
            lock.lock()
            inFlight -= 1
            lock.unlock()
            return Token(value: 0)
        }
        defer { lock.unlock() }
        let token = Token(value: nextValue)
        nextValue += 1
        entries[token.value] = Entry(label: label, action: action)
        return token
    }

    /// Runs `body`, which makes a resource and registers its undo action, such that a SIGINT/SIGTERM
    /// arriving meanwhile waits for it: otherwise a namespace being made by a child `ip` process when the
    /// signal comes would be registered only after the teardown ended, and leak. When the teardown has
    /// begun, the thread stops here for good (the process is about to die).
    public func creating<T, Failure: Error>(_ body: () throws(Failure) -> T) throws(Failure) -> T {
        installHandlersOnce()
        lock.lock()
        if terminating {
            lock.unlock()
            Self.parkForever()
        }
        inFlight += 1
        lock.unlock()
        defer {
            lock.lock()
            inFlight -= 1
            let stop = terminating
            lock.unlock()
            if stop { Self.parkForever() }
        }
        return try body()
    }

    /// Runs the action now (if it has not run yet) and forgets it.
    public func run(_ token: Token) {
        lock.lock()
        let entry = entries.removeValue(forKey: token.value)
        lock.unlock()
        entry?.action()
    }

    /// Forgets the action without running it (the resource was handed over or already released).
    public func cancel(_ token: Token) {
        lock.lock()
        entries.removeValue(forKey: token.value)
        lock.unlock()
    }

    /// Labels of the actions still pending, oldest first (for tests and diagnostics).
    public var pending: [String] {
        lock.lock()
        defer { lock.unlock() }
        return entries.sorted { $0.key < $1.key }.map(\.value.label)
    }

    /// Runs every pending action, newest first (a veth goes before the namespace holding it).
    public func runAll() {
        lock.lock()
        let all = entries.sorted { $0.key > $1.key }.map(\.value)
        entries.removeAll()
        lock.unlock()
        for entry in all { entry.action() }
    }

    /// The signal path: tear everything down while other threads go on, then die of the signal.
    private func terminate(signal signo: Int32) {
        lock.lock()
        terminating = true
        lock.unlock()
        runAll()
        while true {
            lock.lock()
            let busy = inFlight
            lock.unlock()
            if busy == 0 { break }
            usleep(5_000)
        }
        runAll()
        signal(signo, SIG_DFL)
        // Process-directed: this thread may have the signal blocked, so raise() could leave it pending.
        kill(getpid(), signo)
        Self.parkForever()
    }

    /// exit() path. If a signal's teardown is under way, wait for it (it ends the process) instead of
    /// racing it: exit() would kill that thread half-way.
    private func atExit() {
        lock.lock()
        let signalled = terminating
        lock.unlock()
        if signalled { Self.parkForever() }
        runAll()
    }

    private static func parkForever() -> Never {
        while true { pause() }
    }

    private func installHandlersOnce() {
        lock.lock()
        defer { lock.unlock() }
        guard !handlersInstalled else { return }
        handlersInstalled = true
        atexit { LabCleanup.shared.atExit() }
        // A real handler and a self-pipe, not a dispatch signal source: on Linux a dispatch source needs the
        // signal ignored or blocked in every thread, and an ignored signal is discarded by the kernel.
        var fds: [Int32] = [-1, -1]
        guard cnf_pipe_cloexec(&fds) == 0 else { return }
        signalPipeWriteEnd = fds[1]
        let readEnd = fds[0]
        let thread = Thread {
            var byte: UInt8 = 0
            while true {
                let n = read(readEnd, &byte, 1)
                if n == 1 { break }
                if n < 0 && errno == EINTR { continue }
                return
            }
            LabCleanup.shared.terminate(signal: Int32(byte))
        }
        thread.name = "lab cleanup on signal"
        thread.start()
        for signo in [SIGINT, SIGTERM] {
            signal(signo) { forwardSignal($0) }
        }
    }
}

/// One registered undo action, owned by the object whose resource it undoes. `release()` runs it now,
/// `handOver()` drops it without running (someone else, e.g. the `lab up` state file, owns the resource).
/// Both are idempotent and thread-safe.
final class CleanupHandle: @unchecked Sendable {
    private let lock = NSLock()
    private var token: LabCleanup.Token?

    init(_ label: String, _ action: @escaping @Sendable () -> Void) {
        token = LabCleanup.shared.register(label, action)
    }

    /// An empty handle (owns nothing).
    init() {}

    var isArmed: Bool {
        lock.lock()
        defer { lock.unlock() }
        return token != nil
    }

    func release() {
        if let token = take() { LabCleanup.shared.run(token) }
    }

    func handOver() {
        if let token = take() { LabCleanup.shared.cancel(token) }
    }

    private func take() -> LabCleanup.Token? {
        lock.lock()
        defer { lock.unlock() }
        let taken = token
        token = nil
        return taken
    }
}

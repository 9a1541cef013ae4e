import Dispatch
import Foundation
import Glibc

/// A process-wide list of undo actions (delete a namespace, kill a process), run newest first.
///
/// Guarantees: every registered action runs at most once, whichever comes first of an explicit
/// `run(_:)`/`runAll()`, normal process exit (atexit), SIGINT or SIGTERM. On a signal the actions run and
/// the signal is then re-raised with its default disposition, so the process still dies the way its parent
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
    private var signalSources: [DispatchSourceSignal] = []

    private init() {}

    /// Registers `action` to be run at teardown. `label` names it in diagnostics.
    @discardableResult
    public func register(_ label: String, _ action: @escaping @Sendable () -> Void) -> Token {
        installHandlersOnce()
        lock.lock()
        defer { lock.unlock() }
        let token = Token(value: nextValue)
        nextValue += 1
        entries[token.value] = Entry(label: label, action: action)
        return token
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

    private func installHandlersOnce() {
        lock.lock()
        defer { lock.unlock() }
        guard !handlersInstalled else { return }
        handlersInstalled = true
        atexit { LabCleanup.shared.runAll() }
        for signo in [SIGINT, SIGTERM] {
            // Ignore first so the default action cannot kill us before the source sees the signal.
            signal(signo, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signo, queue: .global())
            source.setEventHandler {
                LabCleanup.shared.runAll()
                signal(signo, SIG_DFL)
                raise(signo)
            }
            source.resume()
            signalSources.append(source)
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

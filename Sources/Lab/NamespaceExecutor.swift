import CNetfilter
import Foundation
import Glibc

/// A task executor whose single thread has joined a network namespace, so async code run under
/// `withTaskExecutorPreference(executor) { ... }` makes its syscalls (sockets, netlink, posix_spawn) inside
/// that namespace, across suspension points. This is how one test process drives several sites' real
/// (async) code in different namespaces without `ip netns exec`.
///
/// Cost: one thread, a lock and a queue append per job. Jobs run in order, one at a time. `shutdown()`
/// ends the thread once the queue is empty; call it when done (the thread keeps the executor alive).
public final class NamespaceExecutor: TaskExecutor, @unchecked Sendable {
    public let namespace: String
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var stopping = false

    public init(_ namespace: NetworkNamespace) throws(LabError) {
        self.namespace = namespace.name
        let fd = open(namespace.path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .systemCall("open \(namespace.path)", errno: errno) }
        defer { close(fd) }
        let ready = DispatchSemaphore(value: 0)
        let outcome = SetnsOutcome()
        let thread = Thread { [self] in
            outcome.errno = cnf_setns_net(fd) == 0 ? 0 : errno
            ready.signal()
            if outcome.errno == 0 { loop() }
        }
        thread.name = "netns \(namespace.name)"
        thread.start()
        ready.wait()
        guard outcome.errno == 0 else { throw .systemCall("setns \(namespace.name)", errno: outcome.errno) }
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        condition.lock()
        jobs.append(unowned)
        condition.signal()
        condition.unlock()
    }

    /// Lets the thread finish after the queued jobs.
    public func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}

private final class SetnsOutcome: @unchecked Sendable {
    var errno: Int32 = 0
}

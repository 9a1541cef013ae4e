import Dispatch
import Foundation
import GRDB
import Synchronization

/// The daemon's only writer of the database, on a thread of its own, so that nothing that steers traffic
/// ever waits for SQLite (a database held by another writer, an fsync, a prune).
///
/// Guarantees:
/// - `enqueue` never blocks: it takes a lock held only to append to or take from an in-memory queue.
/// - Everything acknowledged (`.queued` or `.coalesced`) is written, in order, unless the database refuses
///   that write itself (a row naming a site it does not have; a status of a path without a row updates
///   nothing): busy and locked databases are retried with the rows kept, until `stop`'s deadline.
/// - Batches: whatever is pending (at most `batchLimit` writes) goes in ONE transaction (BEGIN IMMEDIATE),
///   so a reader (status, dashboard, sqlite3; WAL) sees a batch's statuses, samples and events together.
/// - Bounded by coalescing (`WriteQueue`): past `capacity` pending writes, a new status or sample of a path
///   merges into that path's pending one, a site's row into the site's, and `statistics.coalesced` counts it;
///   failover events are never merged or dropped.
/// - `stop` refuses new writes and flushes the rest, retrying a busy database until its deadline.
/// Cost: one thread; a lock and an array append per write.
public final class StoreWriter: Sendable {
    public enum Acknowledgement: Equatable, Sendable {
        /// Queued as its own write.
        case queued
        /// Merged into a pending write of the same row (the queue was full).
        case coalesced
        /// Not accepted: the writer is stopping or stopped.
        case refused
    }

    public struct Statistics: Hashable, Sendable {
        /// Writes acknowledged, queued or coalesced.
        public var accepted = 0
        public var coalesced = 0
        /// Writes committed.
        public var written = 0
        /// Transactions committed (batches, and single writes retried after a refusal).
        public var transactions = 0
        /// Attempts that found the database busy or locked and were retried.
        public var retries = 0
        /// Writes the database refused (logged through `report`).
        public var refused = 0
        /// Writes waiting.
        public var pending = 0

        public init() {}
    }

    /// What the writer tells its owner (for the log); called on the writer's thread.
    public enum Report: Sendable {
        /// The database was busy; the writes are kept and retried. Once per outage.
        case busy(StoreError, pending: Int)
        /// Written again after `seconds` of a busy database.
        case recovered(seconds: Double, pending: Int)
        /// The database refused this write (not busy): it is not retried.
        case refused(StoreWrite, StoreError)
        case pruned(rows: Int)
        /// `stop` reached its deadline with `pending` writes unwritten, the database still busy.
        case unflushed(pending: Int, StoreError)
    }

    private struct State {
        var queue: WriteQueue
        var statistics = Statistics()
        var stopping = false
        var stopDeadline = ContinuousClock.now
        /// `flush` callers: resumed once everything queued before their sequence number is done.
        var flushes: [(through: Int, continuation: CheckedContinuation<Void, Never>)] = []
        var stopped: CheckedContinuation<Void, Never>?
        var finished = false
    }

    private let store: Store
    private let state: Mutex<State>
    private let wake = DispatchSemaphore(value: 0)
    private let batchLimit: Int
    private let retryDelay: Duration
    private let report: @Sendable (Report) -> Void

    /// Starts the writer's thread.
    /// - Parameters:
    ///   - capacity: pending writes before new ones are coalesced (4096: 16 s of 250 ms samples of 64 paths).
    ///   - batchLimit: writes per transaction at most.
    ///   - retryDelay: the pause between attempts on a busy database, besides SQLite's own busy timeout.
    public init(store: Store, capacity: Int = 4096, batchLimit: Int = 1000, retryDelay: Duration = .milliseconds(100),
                report: @escaping @Sendable (Report) -> Void = { _ in }) {
        self.store = store
        state = Mutex(State(queue: WriteQueue(capacity: capacity)))
        self.batchLimit = max(1, batchLimit)
        self.retryDelay = retryDelay
        self.report = report
        let thread = Thread { [self] in run() }
        thread.name = "patronus-store-writer"
        thread.start()
    }

    /// Hands `write` to the writer; returns at once.
    @discardableResult
    public func enqueue(_ write: StoreWrite) -> Acknowledgement {
        enqueue([write]).first ?? .refused
    }

    /// Hands several writes to the writer under one lock; returns at once, one acknowledgement per write.
    @discardableResult
    public func enqueue(_ writes: [StoreWrite]) -> [Acknowledgement] {
        guard !writes.isEmpty else { return [] }
        let acknowledgements = state.withLock { state -> [Acknowledgement] in
            guard !state.stopping else { return writes.map { _ in .refused } }
            let outcomes = writes.map { write -> Acknowledgement in
                state.queue.append(write) == .queued ? .queued : .coalesced
            }
            state.statistics.accepted += writes.count
            state.statistics.coalesced = state.queue.coalesced
            state.statistics.pending = state.queue.count
            return outcomes
        }
        wake.signal()
        return acknowledgements
    }

    public var statistics: Statistics { state.withLock { $0.statistics } }

    /// Returns once everything enqueued before the call has been written (or refused by the database).
    public func flush() async {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state -> Bool in
                guard !state.finished, state.queue.base < state.queue.end else { return true }
                state.flushes.append((state.queue.end, continuation))
                return false
            }
            if done { continuation.resume() } else { wake.signal() }
        }
    }

    /// Refuses new writes, writes what is pending (retrying a busy database until `timeout` has passed), and
    /// stops the thread. What could not be written by then is reported (`.unflushed`).
    public func stop(timeout: Duration = .seconds(10)) async {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state -> Bool in
                if state.finished { return true }
                if !state.stopping {
                    state.stopping = true
                    state.stopDeadline = .now + timeout
                }
                state.stopped = continuation
                return false
            }
            if done { continuation.resume() } else { wake.signal() }
        }
    }

    // MARK: - The writer's thread

    private func run() {
        var busySince: ContinuousClock.Instant?
        while true {
            let (batch, stopping, deadline) = state.withLock { state in
                (state.queue.takeBatch(limit: batchLimit), state.stopping, state.stopDeadline)
            }
            if batch.isEmpty {
                if stopping { return finish(unwritten: 0, error: nil) }
                wake.wait()
                continue
            }
            do {
                try write(batch)
                let (pending, flushed) = done(batch.count, refused: 0)
                if let since = busySince {
                    report(.recovered(seconds: Self.seconds(.now - since), pending: pending))
                    busySince = nil
                }
                for continuation in flushed { continuation.resume() }
            } catch let error where error.isBusy {
                let pending = state.withLock { state in
                    state.queue.finish(0)
                    state.statistics.retries += 1
                    return state.queue.count
                }
                if busySince == nil {
                    busySince = .now
                    report(.busy(error, pending: pending))
                }
                if stopping, ContinuousClock.now >= deadline { return finish(unwritten: pending, error: error) }
                Thread.sleep(forTimeInterval: Self.seconds(retryDelay))
            } catch {
                // Not busy: one of the writes is refused. Write them one by one so only that one is lost.
                var finished = 0, refused = 0
                for write in batch {
                    do {
                        try self.write([write])
                    } catch let error where error.isBusy {
                        break
                    } catch {
                        refused += 1
                        report(.refused(write, error))
                    }
                    finished += 1
                }
                for continuation in done(finished, refused: refused).flushed { continuation.resume() }
            }
        }
    }

    private func write(_ batch: [StoreWrite]) throws(StoreError) {
        if batch.count == 1, case .pruneMetrics(let retention, let at) = batch[0] {
            let removed = try store.pruneMetrics(retention: retention, now: at)
            report(.pruned(rows: removed))
            return
        }
        try store.write(batch: batch)
    }

    /// Removes the `count` writes done from the queue; returns what is pending and the `flush` callers to resume.
    private func done(_ count: Int, refused: Int) -> (pending: Int, flushed: [CheckedContinuation<Void, Never>]) {
        state.withLock { state in
            state.queue.finish(count)
            state.statistics.written += count - refused
            state.statistics.refused += refused
            state.statistics.transactions += count - refused > 0 ? 1 : 0
            state.statistics.pending = state.queue.count
            return (state.queue.count, Self.takeFlushes(&state, through: state.queue.base))
        }
    }

    private func finish(unwritten: Int, error: StoreError?) {
        if let error, unwritten > 0 { report(.unflushed(pending: unwritten, error)) }
        let (flushes, stopped) = state.withLock { state in
            state.finished = true
            let flushes = Self.takeFlushes(&state, through: .max)
            defer { state.stopped = nil }
            return (flushes, state.stopped)
        }
        for continuation in flushes { continuation.resume() }
        stopped?.resume()
    }

    private static func takeFlushes(_ state: inout State, through sequence: Int) -> [CheckedContinuation<Void, Never>] {
        let ready = state.flushes.filter { $0.through <= sequence }.map(\.continuation)
        state.flushes.removeAll { $0.through <= sequence }
        return ready
    }

    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

extension StoreError {
    /// Another connection holds the database: the write may succeed later.
    var isBusy: Bool {
        if case .locked = self { return true }
        return false
    }
}

extension Store {
    /// `batch` in ONE immediate transaction (the write lock taken at BEGIN, so a busy database fails before
    /// anything ran, and a reader never sees half a batch).
    func write(batch: [StoreWrite]) throws(StoreError) {
        guard let writer else { throw .readOnly(path: path, operation: "write \(batch.count) queued changes") }
        try Store.wrapping(path, "write \(batch.count) queued changes") {
            try writer.writeWithoutTransaction { db in
                try db.inTransaction(.immediate) {
                    for write in batch { try apply(write, db) }
                    return .commit
                }
            }
        }
    }
}

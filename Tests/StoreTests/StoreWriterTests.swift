import Foundation
import GRDB
import Synchronization
import Testing
@testable import Model
@testable import Store

/// Another connection holding the database's write lock (BEGIN IMMEDIATE) until `release()`, as sqlite3 or
/// a second program would.
private final class WriteLockHolder {
    let queue: DatabaseQueue

    init(_ path: String) throws {
        var configuration = Configuration()
        configuration.allowsUnsafeTransactions = true
        queue = try DatabaseQueue(path: path, configuration: configuration)
        try queue.inDatabase { try $0.execute(sql: "BEGIN IMMEDIATE") }
    }

    func release() throws { try queue.inDatabase { try $0.execute(sql: "COMMIT") } }
}

/// The writer's reports, collected.
private final class Reports: Sendable {
    private let reports = Mutex<[StoreWriter.Report]>([])
    func add(_ report: StoreWriter.Report) { reports.withLock { $0.append(report) } }
    var all: [StoreWriter.Report] { reports.withLock { $0 } }
    var busy: Int { all.filter { if case .busy = $0 { true } else { false } }.count }
    var refused: [StoreWrite] { all.compactMap { if case .refused(let write, _) = $0 { write } else { nil } } }
    var unflushed: Int? { all.compactMap { if case .unflushed(let pending, _) = $0 { pending } else { nil } }.first }
}

private func state(_ key: PathKey, _ status: PathStatus, latency: Double, bandwidth: Double? = nil,
                   at: Date = Fixture.now) -> StoreWrite {
    .pathState(PathStateWrite(key: key, status: status, score: 90,
                              metrics: PathMetrics(latencyMs: latency, jitterMs: 1, lossPct: 0, bandwidthMbps: bandwidth,
                                                   score: 90),
                              at: at))
}

private func failover(_ n: Int, from: PathKey, to: PathKey) -> StoreWrite {
    .failover(FailoverEvent(time: Fixture.now, policy: "voip-\(n)", fromPath: nil, toPath: nil, reason: "down"),
              from: from, to: to)
}

extension Fixture {
    var ethernet: PathKey { PathKey(site: east, localLabel: "ethernet", remoteLabel: "ethernet") }
    var lte: PathKey { PathKey(site: east, localLabel: "lte", remoteLabel: "lte") }
}

@Suite struct WriteQueueTests {
    let a = PathKey(site: SiteID(), localLabel: "isp-a", remoteLabel: "isp-a")
    let b = PathKey(site: SiteID(), localLabel: "isp-b", remoteLabel: "isp-b")

    @Test func belowCapacityEveryWriteIsItsOwnEntryInOrder() {
        var queue = WriteQueue(capacity: 10)
        let writes = (0..<6).map { state($0 % 2 == 0 ? a : b, .up, latency: Double($0)) }
        #expect(writes.map { queue.append($0) } == Array(repeating: .queued, count: 6))
        #expect(queue.entries == writes && queue.coalesced == 0)
        #expect(queue.takeBatch(limit: 4) == Array(writes.prefix(4)))
        queue.finish(4)
        #expect(queue.entries == Array(writes.suffix(2)) && queue.base == 4 && queue.end == 6)
    }

    @Test func whenFullAPathsStatusAndSampleMergeIntoItsPendingOneAndFailoversAreAlwaysKept() {
        var queue = WriteQueue(capacity: 2)
        #expect(queue.append(state(a, .up, latency: 10, bandwidth: 50)) == .queued)
        #expect(queue.append(state(b, .up, latency: 20)) == .queued)
        // Full: a's newer status and sample merge into its pending entry; the bandwidth only the older had stays.
        #expect(queue.append(state(a, .down, latency: 30, at: Fixture.now.addingTimeInterval(1))) == .coalesced)
        // Failover events never merge, full or not.
        for n in 0..<5 { #expect(queue.append(failover(n, from: a, to: b)) == .queued) }
        // A row with nothing pending to merge with is queued past the capacity rather than dropped.
        let c = PathKey(site: SiteID(), localLabel: "isp-c", remoteLabel: "isp-c")
        #expect(queue.append(state(c, .up, latency: 5)) == .queued)
        #expect(queue.count == 8 && queue.coalesced == 1)
        guard case .pathState(let merged) = queue.entries[0] else { Issue.record("\(queue.entries[0])"); return }
        #expect(merged.status == .down && merged.metrics?.latencyMs == 30 && merged.metrics?.bandwidthMbps == 50)
        #expect(merged.at == Fixture.now.addingTimeInterval(1))
        // The merge went to the newest pending entry of the row: c's next status merges into c's.
        #expect(queue.append(state(c, .down, latency: 6)) == .coalesced)
        #expect(queue.count == 8 && queue.coalesced == 2)
    }

    @Test func aSiteRowMergesItsStatusAndKeepsTheEndpointsOnlyTheOlderCarried() {
        var queue = WriteQueue(capacity: 1)
        let site = SiteRecord(id: SiteID(), name: "east")
        let endpoints = [Endpoint(label: "isp-a", address: SocketAddress4("192.0.2.1:51820")!)]
        #expect(queue.append(.remoteSite(site, endpoints: endpoints)) == .queued)
        #expect(queue.append(.siteStatus(site.id, .inactive)) == .coalesced)
        var inactive = site
        inactive.status = .inactive
        #expect(queue.entries == [.remoteSite(inactive, endpoints: endpoints)])
        // A later refresh without endpoints (touchSites) is active again and keeps them.
        #expect(queue.append(.remoteSite(site, endpoints: nil)) == .coalesced)
        #expect(queue.entries == [.remoteSite(site, endpoints: endpoints)])
    }

    @Test func theBatchInFlightIsNeverMergedIntoAndALeftoverStaysAtTheFront() {
        var queue = WriteQueue(capacity: 2)
        _ = queue.append(state(a, .up, latency: 1))
        _ = queue.append(state(b, .up, latency: 2))
        let batch = queue.takeBatch(limit: 10)
        #expect(batch.count == 2 && queue.inFlight == 2)
        // Full, but a's pending entry is being written: the new status is queued behind it.
        #expect(queue.append(state(a, .down, latency: 3)) == .queued)
        #expect(queue.count == 3 && queue.entries[0] == batch[0])
        // Only the first of the batch went (a refusal or busy part-way): b stays first, open to merges again.
        queue.finish(1)
        #expect(queue.inFlight == 0 && queue.entries.first == batch[1])
        #expect(queue.append(state(b, .degraded, latency: 4)) == .coalesced)
        #expect(queue.count == 2)
    }

    @Test func pruningRunsAloneBetweenBatches() {
        var queue = WriteQueue(capacity: 10)
        _ = queue.append(state(a, .up, latency: 1))
        _ = queue.append(.pruneMetrics(retention: 60, at: Fixture.now))
        _ = queue.append(state(b, .up, latency: 2))
        #expect(queue.takeBatch(limit: 10).count == 1)
        queue.finish(1)
        #expect(queue.takeBatch(limit: 10) == [.pruneMetrics(retention: 60, at: Fixture.now)])
        queue.finish(1)
        #expect(queue.takeBatch(limit: 10).count == 1)
    }
}

/// The fixture's database held by another connection, and a writer on a store that gives up a write after
/// 50 ms of waiting for it (SQLite's busy timeout), retrying every 20 ms.
private func busyDatabase(_ dir: String, capacity: Int = 4096) throws
    -> (Fixture, Store, Reports, StoreWriter, WriteLockHolder)
{
    let fixture = try Fixture(dir)
    let store = try Store.open(path: fixture.store.path, busyTimeout: 0.05)
    let reports = Reports()
    let writer = StoreWriter(store: store, capacity: capacity, retryDelay: .milliseconds(20), report: reports.add)
    return (fixture, store, reports, writer, try WriteLockHolder(store.path))
}

@Suite struct StoreWriterTests {
    /// A database held by another writer: every write waits in the queue (nothing is lost, nothing blocks the
    /// caller), and once the lock is released they are written, many to a transaction.
    @Test func writesWaitForABusyDatabaseAndAreWrittenInBatchesOnceItIsFree() async throws {
        try await withTemporaryDirectoryAsync { dir in
            let (fixture, store, reports, writer, lock) = try busyDatabase(dir)
            let before = try store.metricsCount()
            let clock = ContinuousClock()
            let began = clock.now
            for i in 0..<200 { writer.enqueue(state(i % 2 == 0 ? fixture.ethernet : fixture.lte, .up, latency: Double(i))) }
            writer.enqueue(failover(1, from: fixture.ethernet, to: fixture.lte))
            // Waiting for the database would cost each write the busy timeout (50 ms), 10 s for the 201.
            #expect(clock.now - began < .seconds(2), "enqueueing waited for the database")
            try await Task.sleep(for: .milliseconds(300))
            #expect(try store.metricsCount() == before, "nothing can be written while the lock is held")
            #expect(writer.statistics.pending == 201 && writer.statistics.retries > 0 && reports.busy == 1)

            try lock.release()
            await writer.flush()
            let statistics = writer.statistics
            #expect(try store.metricsCount() == before + 200)
            #expect(try store.failoverEvents().map(\.policy) == ["voip-1"])
            #expect(try store.failoverEvents().first?.fromPath == fixture.paths[0])
            #expect(statistics.written == 201 && statistics.pending == 0 && statistics.coalesced == 0)
            #expect(statistics.transactions <= 2, "201 writes took \(statistics.transactions) transactions")
            #expect(reports.all.contains { if case .recovered = $0 { true } else { false } })
            await writer.stop()
        }
    }

    /// A queue that fills while the database is held coalesces statuses and samples per path, counts it, and
    /// loses nothing it acknowledged: every failover event, and each path's latest status and measurement.
    @Test func aFullQueueCoalescesPerPathAndKeepsEveryFailoverEvent() async throws {
        try await withTemporaryDirectoryAsync { dir in
            let (fixture, store, _, writer, lock) = try busyDatabase(dir, capacity: 8)
            let eventsBefore = try store.failoverEvents().count
            var acknowledgements: [StoreWriter.Acknowledgement] = []
            for i in 0..<100 {
                acknowledgements.append(writer.enqueue(state(fixture.ethernet, i < 99 ? .up : .down, latency: Double(i),
                                                             bandwidth: i == 0 ? 500 : nil)))
                acknowledgements.append(writer.enqueue(state(fixture.lte, .degraded, latency: Double(1000 + i))))
                if i % 20 == 0 { acknowledgements.append(writer.enqueue(failover(i, from: fixture.ethernet, to: fixture.lte))) }
            }
            #expect(!acknowledgements.contains(.refused))
            let coalesced = acknowledgements.filter { $0 == .coalesced }.count
            #expect(coalesced > 150 && writer.statistics.coalesced == coalesced)
            // Bounded: the capacity, plus one entry per path whose pending one was in a batch being tried, plus
            // the failover events.
            #expect(writer.statistics.pending <= 8 + 2 + 5)

            try lock.release()
            await writer.flush()
            #expect(try store.failoverEvents(limit: 100).count == eventsBefore + 5)
            let paths = try store.paths()
            #expect(paths.first { $0.id == fixture.paths[0] }?.status == .down)
            #expect(paths.first { $0.id == fixture.paths[1] }?.status == .degraded)
            let latest = try store.latestMetrics()
            #expect(latest[fixture.paths[0]]?.metrics.latencyMs == 99)
            #expect(latest[fixture.paths[1]]?.metrics.latencyMs == 1099)
            #expect(writer.statistics.written + writer.statistics.coalesced == acknowledgements.count)
            await writer.stop()
        }
    }

    /// A write the database refuses (a status for a site it has no row of) is reported and skipped; the
    /// rest of its batch is written.
    @Test func aRefusedWriteDoesNotHoldBackTheRestOfItsBatch() async throws {
        try await withTemporaryDirectoryAsync { dir in
            let fixture = try Fixture(dir)
            let reports = Reports()
            let writer = StoreWriter(store: fixture.store, report: reports.add)
            let lock = try WriteLockHolder(fixture.store.path)  // so that all three form one batch
            let unknown = StoreWrite.siteStatus(SiteID(), .inactive)
            writer.enqueue([state(fixture.ethernet, .degraded, latency: 1), unknown,
                            failover(7, from: fixture.ethernet, to: fixture.lte)])
            try lock.release()
            await writer.flush()
            #expect(reports.refused == [unknown])
            #expect(try fixture.store.paths().first?.status == .degraded)
            #expect(try fixture.store.failoverEvents().map(\.policy) == ["voip-7"])
            #expect(writer.statistics.refused == 1 && writer.statistics.written == 2)
            await writer.stop()
        }
    }

    /// `stop` writes what is pending before it returns; later writes are refused, not silently lost.
    @Test func stopFlushesWhatIsPendingAndRefusesLaterWrites() async throws {
        try await withTemporaryDirectoryAsync { dir in
            let fixture = try Fixture(dir)
            let writer = StoreWriter(store: fixture.store)
            let before = try fixture.store.metricsCount()
            writer.enqueue((0..<50).map { state(fixture.lte, .up, latency: Double($0)) })
            writer.enqueue(.localSite(overlayAddress: IPv4Address("10.99.0.9"), publicKey: "k", lanPrefixes: [], at: Fixture.now))
            await writer.stop()
            #expect(try fixture.store.metricsCount() == before + 50)
            #expect(try fixture.store.localSite()?.overlayAddress == IPv4Address("10.99.0.9"))
            #expect(writer.enqueue(failover(1, from: fixture.lte, to: fixture.ethernet)) == .refused)
        }
    }

    /// A database that stays busy past the stop deadline: `stop` returns at the deadline and reports how many
    /// writes it could not write.
    @Test func stopGivesUpAtItsDeadlineOnADatabaseThatStaysBusy() async throws {
        try await withTemporaryDirectoryAsync { dir in
            let (fixture, _, reports, writer, lock) = try busyDatabase(dir)
            defer { try? lock.release() }
            writer.enqueue([state(fixture.lte, .up, latency: 1), failover(2, from: fixture.lte, to: fixture.ethernet)])
            let clock = ContinuousClock()
            let began = clock.now
            await writer.stop(timeout: .milliseconds(300))
            #expect(clock.now - began < .seconds(3))
            #expect(reports.unflushed == 2)
        }
    }
}

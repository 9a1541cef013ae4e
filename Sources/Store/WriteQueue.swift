/// The `StoreWriter`'s queue: writes in arrival order, taken out in batches, removed only once written.
///
/// Bounded by coalescing, never by dropping: below `capacity` every write is its own entry; at or above it, a
/// write that has a pending entry for the same row (a path's status and sample, a site, the conflicts) is
/// merged into that entry (`StoreWrite.merged(with:)`: the same end state, the newest values) and counted in
/// `coalesced`. A write with nothing to merge with (a failover event, a path or site not pending) is still
/// queued, so the queue can pass `capacity` by one entry per distinct row plus the failover events.
/// Entries of the batch being written (`inFlight`) are never merged into: a batch is written as it was taken.
/// Not thread-safe: the writer guards it.
struct WriteQueue {
    let capacity: Int
    private(set) var entries: [StoreWrite] = []
    /// The sequence number of `entries[0]`: every write ever queued has one, merged writes share their entry's.
    private(set) var base = 0
    /// How many entries at the front belong to the batch being written.
    private(set) var inFlight = 0
    /// Writes merged into a pending entry instead of queued.
    private(set) var coalesced = 0
    /// The sequence number of the newest entry for each row.
    private var newest: [StoreWrite.Key: Int] = [:]

    init(capacity: Int) {
        precondition(capacity > 0, "a write queue needs room for at least one write")
        self.capacity = capacity
    }

    enum Outcome: Equatable { case queued, coalesced }

    var count: Int { entries.count }
    var isEmpty: Bool { entries.isEmpty }
    /// The sequence number the next queued write will get: everything before it has been queued.
    var end: Int { base + entries.count }

    mutating func append(_ write: StoreWrite) -> Outcome {
        let key = write.key
        if entries.count >= capacity, let key, let sequence = newest[key], sequence >= base + inFlight,
           let merged = entries[sequence - base].merged(with: write) {
            entries[sequence - base] = merged
            coalesced += 1
            return .coalesced
        }
        if let key { newest[key] = end }
        entries.append(write)
        return .queued
    }

    /// The next batch, at most `limit` entries, marked in flight: the entries from the front up to the first
    /// that runs alone (pruning), or that one by itself. Empty when nothing is pending.
    mutating func takeBatch(limit: Int) -> [StoreWrite] {
        guard let first = entries.first else { return [] }
        var taken = first.runsAlone ? 1 : 0
        if !first.runsAlone {
            while taken < min(limit, entries.count), !entries[taken].runsAlone { taken += 1 }
        }
        inFlight = taken
        return Array(entries.prefix(taken))
    }

    /// The first `done` entries of the batch were written (or refused): they leave the queue. The rest of the
    /// batch, if any, stays at the front, open to merges again, for the next attempt.
    mutating func finish(_ done: Int) {
        precondition(done <= inFlight, "finished more entries than were in flight")
        entries.removeFirst(done)
        base += done
        inFlight = 0
        if done > 0 { newest = newest.filter { $0.value >= base } }
    }
}

/// What a prober has sent and what became of it: matches replies to probes and expires probes at their
/// deadline. A value with no clock of its own: every call takes the current instant.
///
/// Guarantees: each (sequence, copy) is resolved once, as answered-in-time or lost; late and duplicate
/// replies are recognised and never resolve anything again; a reply counts only if its 24-bit sequence is
/// one of the last `capacity` sent (distance modulo 2^24 from the newest, so the window works across the
/// wrap) and its entry is still in the ring; anything else, e.g. a previous run's reply (far away, since
/// every run starts at a random sequence), is `.nothing`. The RTT is the ledger's own send time to the
/// reply's arrival: nothing in the reply is trusted but its sequence and copy flag. Cost: a fixed ring of
/// `capacity` entries (default 512, i.e. late replies are recognised for 25 s at 50 ms), and a scan of the
/// few unresolved probes per expiry.
public struct ProbeLedger: Sendable {
    struct Entry: Sendable {
        var sequence: UInt32
        var sentAt: MonotonicInstant
        var deadline: MonotonicInstant
        var copies: UInt8
        var answered: UInt8 = 0
        var expired = false
    }

    /// What one reply turned out to be.
    public enum Match: Equatable, Sendable {
        /// In time; `first` when it is the first reply for its sequence (that one resets the miss count).
        case onTime(rtt: Duration, first: Bool)
        /// After its probe's deadline: a valid RTT sample, but the probe stays lost. `sentAt` says when the
        /// probe that evidently got through was sent.
        case late(rtt: Duration, sentAt: MonotonicInstant)
        /// This copy was already answered.
        case duplicate
        /// Never sent, or no longer in the window.
        case nothing
    }

    /// A probe whose deadline passed: `lostCopies` packets are lost; `missed` when no copy was answered.
    public struct Expiry: Equatable, Sendable {
        public var sequence: UInt32
        public var lostCopies: Int
        public var missed: Bool
        public var sentAt: MonotonicInstant
    }

    private var ring: [Entry?]
    private var unresolved: [UInt32] = []
    /// The last sequence sent: the window is the `capacity` sequences up to it.
    private var newest: UInt32?

    /// `capacity` must be a power of two (so that the ring's slots stay in step with the 24-bit wrap) and at
    /// most 2^23 (half the sequence space, so "recent" is unambiguous).
    public init(capacity: Int = 512) {
        precondition(capacity > 0 && capacity & (capacity - 1) == 0 && capacity <= ProbeSequence.count / 2,
                     "the ledger's capacity must be a power of two between 1 and 2^23")
        ring = Array(repeating: nil, count: capacity)
    }

    private func slot(_ sequence: UInt32) -> Int { Int(sequence % UInt32(ring.count)) }

    /// True when `sequence` is one of the last `capacity` sequences sent (modulo 2^24).
    public func isInWindow(_ sequence: UInt32) -> Bool {
        guard let newest else { return false }
        return ProbeSequence.distance(from: sequence, to: newest) < UInt32(ring.count)
    }

    /// Records a probe sent as `copies` packets (1, or 2 in suspect mode) with its deadline. Sequences are
    /// expected in order (each the ``ProbeSequence/next(_:)`` of the one before), the first one anywhere.
    public mutating func sent(sequence: UInt32, at time: MonotonicInstant, deadline: MonotonicInstant,
                              copies: Int) {
        let sequence = sequence & ProbeSequence.mask
        newest = sequence
        let index = slot(sequence)
        if let old = ring[index] {
            // The ring wrapped onto an older probe; only an unresolved one (a timeout longer than capacity x
            // interval) is still listed, and it must not expire against the new entry.
            unresolved.removeAll { $0 == old.sequence }
        }
        ring[index] = Entry(sequence: sequence, sentAt: time, deadline: deadline,
                            copies: UInt8(clamping: max(1, min(copies, 8))))
        unresolved.append(sequence)
    }

    private func fullMask(_ copies: UInt8) -> UInt8 { UInt8(truncatingIfNeeded: (1 << Int(copies)) - 1) }

    /// Matches a reply that arrived at `now`: RTT = `now` - the probe's send time. The responder's own delay
    /// (microseconds: it replies from its receive thread at once) is part of the RTT.
    public mutating func match(sequence: UInt32, copy: Int, at now: MonotonicInstant) -> Match {
        guard isInWindow(sequence) else { return .nothing }
        let index = slot(sequence)
        guard var entry = ring[index], entry.sequence == sequence,
              copy >= 0, copy < Int(entry.copies), now >= entry.sentAt else { return .nothing }
        let bit = UInt8(1) << UInt8(copy)
        guard entry.answered & bit == 0 else { return .duplicate }
        let first = entry.answered == 0
        entry.answered |= bit
        ring[index] = entry
        let rtt = now - entry.sentAt
        if entry.expired { return .late(rtt: rtt, sentAt: entry.sentAt) }
        if entry.answered == fullMask(entry.copies) { unresolved.removeAll { $0 == sequence } }
        return .onTime(rtt: rtt, first: first)
    }

    /// Expires every unresolved probe whose deadline is at or before `now`, in send order.
    public mutating func expire(at now: MonotonicInstant) -> [Expiry] {
        var expired: [Expiry] = []
        var still: [UInt32] = []
        for sequence in unresolved {
            let index = slot(sequence)
            guard var entry = ring[index], entry.sequence == sequence else { continue }
            guard entry.deadline <= now else { still.append(sequence); continue }
            entry.expired = true
            ring[index] = entry
            let answered = entry.answered.nonzeroBitCount
            expired.append(Expiry(sequence: sequence, lostCopies: Int(entry.copies) - answered,
                                  missed: answered == 0, sentAt: entry.sentAt))
        }
        unresolved = still
        return expired.sorted { $0.sentAt < $1.sentAt }
    }

    /// The earliest deadline of an unresolved probe, if any.
    public var nextDeadline: MonotonicInstant? {
        unresolved.compactMap { ring[slot($0)]?.deadline }.min()
    }

    public var unresolvedCount: Int { unresolved.count }
}

import Testing
@testable import Probing

@Suite struct RTTEstimatorTests {
    @Test func medianAndMeanOverTheWindow() {
        var rtt = RTTEstimator(capacity: 5)
        #expect(rtt.median == nil && rtt.mean == nil)
        for sample in [10.0, 30, 20] { rtt.add(sample) }
        #expect(rtt.median == 20)
        #expect(rtt.mean == 20)
        rtt.add(100)
        #expect(rtt.median == 25) // even count: mean of the middle two
        for sample in [40.0, 50, 60, 70, 80] { rtt.add(sample) } // evicts every earlier sample
        #expect(rtt.count == 5)
        #expect(rtt.median == 60)
        #expect(rtt.mean == 60)
    }

    @Test func oneOutlierDoesNotMoveTheMedian() {
        var rtt = RTTEstimator(capacity: 100)
        for _ in 0..<99 { rtt.add(20) }
        rtt.add(900)
        #expect(rtt.median == 20)
        #expect(rtt.mean! > 28)
    }

    @Test func smoothedFollowsRFC6298() {
        var rtt = RTTEstimator()
        rtt.add(100)
        #expect(rtt.smoothed == 100 && rtt.variation == 50)
        rtt.add(20)
        #expect(rtt.variation == 0.75 * 50 + 0.25 * 80)
        #expect(rtt.smoothed == 0.875 * 100 + 0.125 * 20)
    }

    @Test func jitterIsRFC3550OnRTTSamples() {
        var constant = RTTEstimator()
        for _ in 0..<200 { constant.add(50) }
        #expect(constant.jitter == 0)
        var alternating = RTTEstimator()
        for index in 0..<400 { alternating.add(index % 2 == 0 ? 40 : 60) }
        #expect(abs(alternating.jitter - 20) < 0.01) // |D| is always 20
        var single = RTTEstimator()
        single.add(10)
        single.add(26)
        #expect(single.jitter == 1) // (16 - 0) / 16
    }

    @Test func clockFaultsAreRefused() {
        var rtt = RTTEstimator()
        let refused = [rtt.add(-3), rtt.add(.nan), rtt.add(.infinity)]
        #expect(refused == [false, false, false])
        #expect(rtt.count == 0 && rtt.smoothed == nil)
        let accepted = rtt.add(0)
        #expect(accepted)
    }

    @Test func clearingTheWindowKeepsTheSmoothedRTT() {
        var rtt = RTTEstimator()
        for _ in 0..<10 { rtt.add(30) }
        rtt.clearWindow()
        #expect(rtt.count == 0 && rtt.median == nil && rtt.jitter == 0)
        #expect(rtt.smoothed == 30)
    }
}

@Suite struct LossWindowTests {
    @Test func countsOverTheLastOutcomes() {
        var loss = LossWindow(capacity: 10)
        #expect(loss.percent == 0)
        for index in 0..<10 { loss.record(lost: index < 3) }
        #expect(loss.percent == 30)
        for _ in 0..<3 { loss.record(lost: false) } // the three losses leave the window
        #expect(loss.percent == 0)
        #expect(loss.lost == 0)
        loss.record(lost: true)
        #expect(loss.percent == 10)
        loss.clear()
        #expect(loss.count == 0 && loss.percent == 0)
    }
}

@Suite struct ProbeLedgerTests {
    let t0 = MonotonicInstant(nanoseconds: 1_000_000_000)
    func ms(_ value: Int) -> Duration { .milliseconds(value) }

    @Test func onTimeDuplicateLateAndNothing() {
        var ledger = ProbeLedger()
        ledger.sent(sequence: 1, at: t0, deadline: t0 + ms(100), copies: 1)
        ledger.sent(sequence: 2, at: t0 + ms(50), deadline: t0 + ms(150), copies: 1)
        #expect(ledger.match(sequence: 1, copy: 0, at: t0 + ms(20)) == .onTime(rtt: ms(20), first: true))
        #expect(ledger.match(sequence: 1, copy: 0, at: t0 + ms(21)) == .duplicate)
        #expect(ledger.match(sequence: 3, copy: 0, at: t0 + ms(22)) == .nothing) // not sent yet
        #expect(ledger.match(sequence: 2, copy: 1, at: t0 + ms(60)) == .nothing) // a copy that was never sent
        #expect(ledger.expire(at: t0 + ms(149)).isEmpty)
        let expired = ledger.expire(at: t0 + ms(150))
        #expect(expired.map(\.sequence) == [2] && expired[0].missed && expired[0].lostCopies == 1)
        #expect(ledger.match(sequence: 2, copy: 0, at: t0 + ms(400)) == .late(rtt: ms(350), sentAt: t0 + ms(50)))
        #expect(ledger.match(sequence: 2, copy: 0, at: t0 + ms(401)) == .duplicate)
        #expect(ledger.expire(at: t0 + ms(1000)).isEmpty) // nothing expires twice
        #expect(ledger.unresolvedCount == 0)
    }

    @Test func anEmptyLedgerMatchesNothing() {
        var ledger = ProbeLedger()
        #expect(!ledger.isInWindow(0))
        #expect(ledger.match(sequence: 0, copy: 0, at: t0) == .nothing)
    }

    @Test func reorderedRepliesMatchTheirOwnProbes() {
        var ledger = ProbeLedger()
        for sequence in UInt32(0)..<5 {
            let sent = t0 + ms(Int(sequence) * 50)
            ledger.sent(sequence: sequence, at: sent, deadline: sent + ms(500), copies: 1)
        }
        for sequence in [UInt32(4), 2, 0, 3, 1] {
            let sent = t0 + ms(Int(sequence) * 50)
            #expect(ledger.match(sequence: sequence, copy: 0, at: t0 + ms(300))
                    == .onTime(rtt: t0 + ms(300) - sent, first: true))
        }
        #expect(ledger.unresolvedCount == 0)
    }

    @Test func sequenceWrapsAroundAt24Bits() {
        var ledger = ProbeLedger(capacity: 8)
        var sequence: UInt32 = 0xFF_FFFC
        var time = t0
        for _ in 0..<8 {
            ledger.sent(sequence: sequence, at: time, deadline: time + ms(100), copies: 1)
            #expect(ledger.match(sequence: sequence, copy: 0, at: time + ms(10)) == .onTime(rtt: ms(10), first: true))
            sequence = ProbeSequence.next(sequence)
            time = time + ms(50)
        }
        #expect(sequence == 4)
        #expect(ledger.expire(at: time + ms(1000)).isEmpty)
    }

    @Test func reorderedAndDuplicatedRepliesAcrossTheWrap() {
        var ledger = ProbeLedger(capacity: 8)
        let sequences: [UInt32] = [0xFF_FFFE, 0xFF_FFFF, 0, 1, 2]
        for (offset, sequence) in sequences.enumerated() {
            let sent = t0 + ms(offset * 50)
            ledger.sent(sequence: sequence, at: sent, deadline: sent + ms(1000), copies: 1)
        }
        let arrival = t0 + ms(300)
        for (offset, sequence) in sequences.enumerated().reversed() {
            #expect(ledger.match(sequence: sequence, copy: 0, at: arrival)
                    == .onTime(rtt: arrival - (t0 + ms(offset * 50)), first: true))
        }
        for sequence in sequences { #expect(ledger.match(sequence: sequence, copy: 0, at: arrival) == .duplicate) }
        // Just outside the window on either side of it.
        #expect(ledger.match(sequence: 3, copy: 0, at: arrival) == .nothing)
        #expect(ledger.match(sequence: 0xFF_FFFA, copy: 0, at: arrival) == .nothing)
        #expect(ledger.unresolvedCount == 0)
    }

    @Test func aPreviousRunsReplyIsFarAwayAndMatchesNothing() {
        var ledger = ProbeLedger()
        // This run started at 0x12_3456; the previous one was around 0xAB_CDEF.
        for offset in UInt32(0)..<600 {
            let sent = t0 + ms(Int(offset) * 50)
            ledger.sent(sequence: 0x12_3456 + offset, at: sent, deadline: sent + ms(100), copies: 1)
        }
        let now = t0 + ms(600 * 50)
        // Far away (a previous run), just before this run's start, and this run's first (left the 512-window).
        for stale in [UInt32(0xAB_CDEF), 0xAB_CDF0, 0x12_3455, 0x12_3456] {
            #expect(!ledger.isInWindow(stale))
            #expect(ledger.match(sequence: stale, copy: 0, at: now) == .nothing)
        }
        // The same slot of the ring as a recent probe, half the sequence space away: nothing.
        #expect(ledger.match(sequence: (0x12_3456 + 599) ^ 0x80_0000, copy: 0, at: now) == .nothing)
        #expect(ledger.match(sequence: 0x12_3456 + 599, copy: 0, at: now) == .onTime(rtt: ms(50), first: true))
    }

    @Test func copiesAreCountedPerPacket() {
        var ledger = ProbeLedger()
        ledger.sent(sequence: 9, at: t0, deadline: t0 + ms(100), copies: 2)
        #expect(ledger.match(sequence: 9, copy: 1, at: t0 + ms(30)) == .onTime(rtt: ms(30), first: true))
        #expect(ledger.match(sequence: 9, copy: 0, at: t0 + ms(31)) == .onTime(rtt: ms(31), first: false))
        #expect(ledger.unresolvedCount == 0)
        ledger.sent(sequence: 10, at: t0, deadline: t0 + ms(100), copies: 2)
        _ = ledger.match(sequence: 10, copy: 0, at: t0 + ms(30))
        let expired = ledger.expire(at: t0 + ms(100))
        #expect(expired == [ProbeLedger.Expiry(sequence: 10, lostCopies: 1, missed: false, sentAt: t0)])
    }

    @Test func aReplyBeforeItsSendTimeIsRefused() {
        var ledger = ProbeLedger()
        ledger.sent(sequence: 1, at: t0, deadline: t0 + ms(100), copies: 1)
        #expect(ledger.match(sequence: 1, copy: 0, at: t0 + ms(-1)) == .nothing)
    }

    @Test func theRingForgetsOldProbes() {
        var ledger = ProbeLedger(capacity: 4)
        for sequence in UInt32(0)..<6 {
            ledger.sent(sequence: sequence, at: t0, deadline: t0 + ms(100), copies: 1)
        }
        #expect(ledger.match(sequence: 0, copy: 0, at: t0 + ms(10)) == .nothing)
        #expect(!ledger.isInWindow(1) && ledger.isInWindow(2) && ledger.isInWindow(5) && !ledger.isInWindow(6))
        #expect(ledger.expire(at: t0 + ms(100)).map(\.sequence) == [2, 3, 4, 5])
    }
}

@Suite struct PathScoreTests {
    @Test func boundsAndKnownValues() {
        #expect(PathScore.score(latencyMs: 0, jitterMs: 0, lossPct: 0) > 99.7)
        #expect(PathScore.score(latencyMs: 5000, jitterMs: 0, lossPct: 0) == 0)
        #expect(PathScore.score(latencyMs: 20, jitterMs: 0, lossPct: 100) == 0)
        #expect(PathScore.score(latencyMs: .nan, jitterMs: 1, lossPct: 1) == 0)
        let voice = PathScore.score(latencyMs: 60, jitterMs: 5, lossPct: 1)
        #expect(abs(voice - (93.2 - 50.0 / 40 - 2.5) * 100 / 93.2) < 1e-9)
    }

    @Test func monotoneInEachInput() {
        let grid = stride(from: 0.0, through: 600, by: 7.5)
        let losses = stride(from: 0.0, through: 50, by: 0.5)
        for base in [0.0, 10, 40] {
            var previous = Double.infinity
            for latency in grid {
                let value = PathScore.score(latencyMs: latency, jitterMs: base, lossPct: base / 10)
                #expect(value <= previous)
                previous = value
            }
            previous = .infinity
            for jitter in grid {
                let value = PathScore.score(latencyMs: base, jitterMs: jitter, lossPct: base / 10)
                #expect(value <= previous)
                previous = value
            }
            previous = .infinity
            for loss in losses {
                let value = PathScore.score(latencyMs: base, jitterMs: base, lossPct: loss)
                #expect(value <= previous)
                previous = value
            }
        }
    }

    @Test func continuousWithoutJumps() {
        // A step of 0.01 in any input moves the score by at most 0.05 (the steepest slope is 2.5 per % loss).
        var latency = 0.0
        while latency < 1000 {
            let here = PathScore.score(latencyMs: latency, jitterMs: 3, lossPct: 0.5)
            #expect(abs(PathScore.score(latencyMs: latency + 0.01, jitterMs: 3, lossPct: 0.5) - here) < 0.05)
            #expect(abs(PathScore.score(latencyMs: 3, jitterMs: latency / 4 + 0.01, lossPct: 0.5)
                        - PathScore.score(latencyMs: 3, jitterMs: latency / 4, lossPct: 0.5)) < 0.05)
            latency += 0.37
        }
        // Across the delay branch point (effective one-way delay 160 ms: rtt 300 with no jitter).
        let below = PathScore.score(latencyMs: 299.999, jitterMs: 0, lossPct: 0)
        let above = PathScore.score(latencyMs: 300.001, jitterMs: 0, lossPct: 0)
        #expect(abs(below - above) < 0.001)
    }
}

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
    func stamp(_ time: MonotonicInstant) -> UInt32 { UInt32(truncatingIfNeeded: time.nanoseconds) }

    @Test func onTimeDuplicateLateAndNothing() {
        var ledger = ProbeLedger()
        ledger.sent(sequence: 1, at: t0, deadline: t0 + ms(100), copies: 1)
        ledger.sent(sequence: 2, at: t0 + ms(50), deadline: t0 + ms(150), copies: 1)
        #expect(ledger.match(sequence: 1, stamp: stamp(t0), copy: 0, hold: .zero, at: t0 + ms(20))
                == .onTime(rtt: ms(20), first: true))
        #expect(ledger.match(sequence: 1, stamp: stamp(t0), copy: 0, hold: .zero, at: t0 + ms(21)) == .duplicate)
        #expect(ledger.match(sequence: 3, stamp: stamp(t0), copy: 0, hold: .zero, at: t0 + ms(22)) == .nothing)
        #expect(ledger.match(sequence: 2, stamp: 12345, copy: 0, hold: .zero, at: t0 + ms(60)) == .nothing)
        #expect(ledger.match(sequence: 2, stamp: stamp(t0 + ms(50)), copy: 1, hold: .zero, at: t0 + ms(60))
                == .nothing) // a copy that was never sent
        #expect(ledger.expire(at: t0 + ms(149)).isEmpty)
        let expired = ledger.expire(at: t0 + ms(150))
        #expect(expired.map(\.sequence) == [2] && expired[0].missed && expired[0].lostCopies == 1)
        #expect(ledger.match(sequence: 2, stamp: stamp(t0 + ms(50)), copy: 0, hold: .zero, at: t0 + ms(400))
                == .late(rtt: ms(350), sentAt: t0 + ms(50)))
        #expect(ledger.match(sequence: 2, stamp: stamp(t0 + ms(50)), copy: 0, hold: .zero, at: t0 + ms(401))
                == .duplicate)
        #expect(ledger.expire(at: t0 + ms(1000)).isEmpty) // nothing expires twice
        #expect(ledger.unresolvedCount == 0)
    }

    @Test func reorderedRepliesMatchTheirOwnProbes() {
        var ledger = ProbeLedger()
        for sequence in UInt32(0)..<5 {
            let sent = t0 + ms(Int(sequence) * 50)
            ledger.sent(sequence: sequence, at: sent, deadline: sent + ms(500), copies: 1)
        }
        for sequence in [UInt32(4), 2, 0, 3, 1] {
            let sent = t0 + ms(Int(sequence) * 50)
            #expect(ledger.match(sequence: sequence, stamp: stamp(sent), copy: 0, hold: .zero, at: t0 + ms(300))
                    == .onTime(rtt: t0 + ms(300) - sent, first: true))
        }
        #expect(ledger.unresolvedCount == 0)
    }

    @Test func sequenceWrapsAround() {
        var ledger = ProbeLedger(capacity: 8)
        var sequence = UInt32.max - 3
        var time = t0
        for _ in 0..<8 {
            ledger.sent(sequence: sequence, at: time, deadline: time + ms(100), copies: 1)
            #expect(ledger.match(sequence: sequence, stamp: stamp(time), copy: 0, hold: .zero, at: time + ms(10))
                    == .onTime(rtt: ms(10), first: true))
            sequence &+= 1
            time = time + ms(50)
        }
        #expect(sequence == 4)
        #expect(ledger.expire(at: time + ms(1000)).isEmpty)
    }

    @Test func copiesAreCountedPerPacket() {
        var ledger = ProbeLedger()
        ledger.sent(sequence: 9, at: t0, deadline: t0 + ms(100), copies: 2)
        #expect(ledger.match(sequence: 9, stamp: stamp(t0), copy: 1, hold: .zero, at: t0 + ms(30))
                == .onTime(rtt: ms(30), first: true))
        #expect(ledger.match(sequence: 9, stamp: stamp(t0), copy: 0, hold: .zero, at: t0 + ms(31))
                == .onTime(rtt: ms(31), first: false))
        #expect(ledger.unresolvedCount == 0)
        ledger.sent(sequence: 10, at: t0, deadline: t0 + ms(100), copies: 2)
        _ = ledger.match(sequence: 10, stamp: stamp(t0), copy: 0, hold: .zero, at: t0 + ms(30))
        let expired = ledger.expire(at: t0 + ms(100))
        #expect(expired == [ProbeLedger.Expiry(sequence: 10, lostCopies: 1, missed: false, sentAt: t0)])
    }

    @Test func responderHoldIsSubtractedUnlessItIsNonsense() {
        var ledger = ProbeLedger()
        ledger.sent(sequence: 1, at: t0, deadline: t0 + ms(100), copies: 1)
        ledger.sent(sequence: 2, at: t0, deadline: t0 + ms(100), copies: 1)
        #expect(ledger.match(sequence: 1, stamp: stamp(t0), copy: 0, hold: ms(5), at: t0 + ms(30))
                == .onTime(rtt: ms(25), first: true))
        // A responder whose clock stepped reports a hold longer than the round trip: use the raw round trip.
        #expect(ledger.match(sequence: 2, stamp: stamp(t0), copy: 0, hold: .seconds(4), at: t0 + ms(30))
                == .onTime(rtt: ms(30), first: true))
    }

    @Test func aReplyBeforeItsSendTimeIsRefused() {
        var ledger = ProbeLedger()
        ledger.sent(sequence: 1, at: t0, deadline: t0 + ms(100), copies: 1)
        #expect(ledger.match(sequence: 1, stamp: stamp(t0), copy: 0, hold: .zero, at: t0 + ms(-1)) == .nothing)
    }

    @Test func theRingForgetsOldProbes() {
        var ledger = ProbeLedger(capacity: 4)
        for sequence in UInt32(0)..<6 {
            ledger.sent(sequence: sequence, at: t0, deadline: t0 + ms(100), copies: 1)
        }
        #expect(ledger.match(sequence: 0, stamp: stamp(t0), copy: 0, hold: .zero, at: t0 + ms(10)) == .nothing)
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

import Testing
@testable import Routing

/// The shaper's rate decisions (docs/SHAPING.md): down fast on delay under load, up slowly when clean,
/// never below the floor, never on an idle or silent link.
@Suite struct ShaperRateControllerTests {
    let mbit: UInt64 = 1_000_000

    @Test func startsJustBelowTheEstimateWithFloorAndCeilingAroundIt() {
        let c = ShaperRateController(estimate: 20 * mbit)
        #expect(c.rate == 18 * mbit)
        #expect(c.floor == 5 * mbit)
        #expect(c.ceiling == 19 * mbit)
        // A tiny estimate still gets the absolute floor.
        #expect(ShaperRateController(estimate: 100_000).rate == 256_000)
    }

    @Test func delayUnderLoadLowersTheRateAtOnceThenAfterTheHoldOff() {
        var c = ShaperRateController(estimate: 20 * mbit)
        #expect(c.observe(now: 0, rttMs: 20, sentBitsPerSecond: 0) == .hold) // first sample: the baseline
        let busy = Double(c.rate)
        // One late probe, or two, is not a queue: the lowest of the last three samples must be high.
        #expect(c.observe(now: 0.2, rttMs: 60, sentBitsPerSecond: busy) == .hold)
        #expect(c.observe(now: 0.4, rttMs: 60, sentBitsPerSecond: busy) == .hold)
        #expect(c.observe(now: 0.6, rttMs: 60, sentBitsPerSecond: busy) == .decrease(from: 18 * mbit, to: 15_300_000))
        #expect(c.observe(now: 0.8, rttMs: 60, sentBitsPerSecond: busy) == .hold) // hold-off
        guard case .decrease = c.observe(now: 1.2, rttMs: 60, sentBitsPerSecond: Double(c.rate)) else {
            Issue.record("expected a second decrease after the hold-off")
            return
        }
        #expect(c.rate < 15_300_000)
    }

    @Test func aSingleSpikeUnderLoadIsNotAQueue() {
        var c = ShaperRateController(estimate: 20 * mbit)
        _ = c.observe(now: 0, rttMs: 20, sentBitsPerSecond: 0)
        for i in 1...50 {
            let rtt = i % 3 == 0 ? 45.0 : 21.0 // CPU hiccups every third sample
            if case .decrease = c.observe(now: Double(i) * 0.2, rttMs: rtt, sentBitsPerSecond: Double(c.rate)) {
                Issue.record("decreased on a spike at sample \(i)")
            }
        }
    }

    @Test func aHugeDelayHalvesTheRateAtOnce() {
        var c = ShaperRateController(estimate: 20 * mbit)
        _ = c.observe(now: 0, rttMs: 20, sentBitsPerSecond: 0)
        #expect(c.observe(now: 0.2, rttMs: 400, sentBitsPerSecond: Double(c.rate)) == .decrease(from: 18 * mbit, to: 9 * mbit))
        #expect(c.observe(now: 0.4, rttMs: 400, sentBitsPerSecond: Double(c.rate)) == .hold)
        #expect(c.observe(now: 0.8, rttMs: 400, sentBitsPerSecond: Double(c.rate)) == .decrease(from: 9 * mbit, to: 5 * mbit)) // the floor
    }

    @Test func aBottleneckBelowOurRateIsSeenThoughWeSendLessThanOurRate() {
        var c = ShaperRateController(estimate: 20 * mbit)
        _ = c.observe(now: 0, rttMs: 20, sentBitsPerSecond: 0)
        // The cell fell to 8 Mbit/s: TCP gets 8 of our 18 through, and the modem's queue grows.
        _ = c.observe(now: 0.2, rttMs: 40, sentBitsPerSecond: 8e6)
        _ = c.observe(now: 0.4, rttMs: 45, sentBitsPerSecond: 8e6)
        #expect(c.observe(now: 0.6, rttMs: 45, sentBitsPerSecond: 8e6) == .decrease(from: 18 * mbit, to: 15_300_000))
        // ... but 8 Mbit/s clean is not a reason to raise an 18 Mbit/s shaper.
        var d = ShaperRateController(estimate: 20 * mbit)
        _ = d.observe(now: 0, rttMs: 20, sentBitsPerSecond: 0)
        for i in 1...20 { #expect(d.observe(now: Double(i) * 0.2, rttMs: 20, sentBitsPerSecond: 8e6) == .hold) }
    }

    @Test func afterADelayRaisesStayGentleForFiveSecondsThenCloseTheGap() {
        var c = ShaperRateController(estimate: 20 * mbit)
        _ = c.observe(now: 0, rttMs: 20, sentBitsPerSecond: 0)
        _ = c.observe(now: 0.2, rttMs: 400, sentBitsPerSecond: Double(c.rate)) // halved: 9 Mbit/s
        _ = c.observe(now: 0.4, rttMs: 20, sentBitsPerSecond: Double(c.rate))
        #expect(c.observe(now: 1.3, rttMs: 20, sentBitsPerSecond: Double(c.rate)) == .increase(from: 9 * mbit, to: 9_360_000)) // 4 %
        #expect(c.observe(now: 5.3, rttMs: 20, sentBitsPerSecond: Double(c.rate)) == .increase(from: 9_360_000, to: 10_324_000)) // 10 % of the gap to 19
    }

    @Test func neverBelowTheFloor() {
        var c = ShaperRateController(estimate: 20 * mbit)
        _ = c.observe(now: 0, rttMs: 20, sentBitsPerSecond: 0)
        for i in 1...100 { _ = c.observe(now: Double(i), rttMs: 500, sentBitsPerSecond: Double(c.rate)) }
        #expect(c.rate == c.floor)
        #expect(c.observe(now: 200, rttMs: 500, sentBitsPerSecond: Double(c.rate)) == .hold)
    }

    @Test func cleanAndBusyRaisesSlowlyUpToTheCeiling() {
        var c = ShaperRateController(estimate: 20 * mbit)
        _ = c.observe(now: 0, rttMs: 20, sentBitsPerSecond: 0)
        #expect(c.observe(now: 0.2, rttMs: 21, sentBitsPerSecond: Double(c.rate)) == .hold) // starts the interval
        #expect(c.observe(now: 0.7, rttMs: 21, sentBitsPerSecond: Double(c.rate)) == .hold) // too soon
        #expect(c.observe(now: 1.2, rttMs: 21, sentBitsPerSecond: Double(c.rate)) == .increase(from: 18 * mbit, to: 18_720_000))
        for i in 2...60 { _ = c.observe(now: Double(i) + 0.2, rttMs: 20, sentBitsPerSecond: Double(c.rate)) }
        #expect(c.rate == c.ceiling)
    }

    @Test func afterADropToEightMbitItRecoversToEightyPercentOfTwentyWithinThirtySeconds() {
        var c = ShaperRateController(estimate: 20 * mbit)
        _ = c.observe(now: 0, rttMs: 20, sentBitsPerSecond: 0)
        var t = 0.0
        // The bottleneck is 8 Mbit/s: every observation above it sees a queue.
        while t < 6 {
            t += 0.2
            _ = c.observe(now: t, rttMs: Double(c.rate) > 8e6 ? 80 : 21, sentBitsPerSecond: Double(c.rate))
        }
        #expect(c.rate <= 8_500_000)
        let restored = t
        // Back to 20 Mbit/s: clean while the rate is below it.
        while t < restored + 30 {
            t += 0.2
            _ = c.observe(now: t, rttMs: Double(c.rate) > 20e6 ? 80 : 21, sentBitsPerSecond: Double(c.rate))
        }
        #expect(c.rate >= 16 * mbit, "rate \(c.rate) 30 s after the restore")
    }

    @Test func idleOrSilentLinksAreNeverPunished() {
        var c = ShaperRateController(estimate: 20 * mbit)
        _ = c.observe(now: 0, rttMs: 20, sentBitsPerSecond: 0)
        // Ten idle minutes with a noisy RTT (radio wake-ups), then ten silent ones (no replies at all).
        for i in 1...3000 {
            #expect(c.observe(now: Double(i) * 0.2, rttMs: i % 7 == 0 ? 200 : 25, sentBitsPerSecond: 10_000) == .hold)
        }
        for i in 3001...6000 {
            #expect(c.observe(now: Double(i) * 0.2, rttMs: nil, sentBitsPerSecond: Double(c.rate)) == .hold)
        }
        #expect(c.rate == 18 * mbit)
    }

    @Test func theBaselineFollowsALongerPathOnlyWhileIdle() {
        var c = ShaperRateController(estimate: 20 * mbit)
        _ = c.observe(now: 0, rttMs: 20, sentBitsPerSecond: 0)
        for i in 1...500 { _ = c.observe(now: Double(i), rttMs: 40, sentBitsPerSecond: 0) }
        #expect((c.baselineMs ?? 0) > 39)
        // Now busy at the new path length: clean, not a queue.
        guard case .hold = c.observe(now: 600, rttMs: 41, sentBitsPerSecond: Double(c.rate)) else {
            Issue.record("41 ms on a 40 ms path is not a queue")
            return
        }
    }

    @Test func aNewEstimateMovesFloorAndCeiling() {
        var c = ShaperRateController(estimate: 20 * mbit)
        c.updateEstimate(10 * mbit)
        #expect(c.ceiling == 9_500_000)
        #expect(c.rate == 9_500_000)
        c.updateEstimate(40 * mbit)
        #expect(c.rate == 10 * mbit) // up to the new floor (25 % of 40); the controller raises it from here
    }
}

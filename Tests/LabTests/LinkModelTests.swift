import Testing
@testable import Lab

/// The emulator's decisions without packets: times in nanoseconds, frames of 1500 bytes.
@Suite struct LinkModelTests {
    static let ms: UInt64 = 1_000_000

    func exits(_ model: inout LinkModel, count: Int, every gap: UInt64, length: Int = 1500) -> [UInt64?] {
        (0..<count).map { i in
            if case let .leaves(at) = model.admit(length: length, now: UInt64(i) * gap) { return at }
            return nil
        }
    }

    @Test func cleanLinkPassesAtOnce() {
        var model = LinkModel(seed: 1)
        #expect(model.admit(length: 1500, now: 42) == .leaves(at: 42))
    }

    @Test func delayIsAddedToEveryFrame() {
        var model = LinkModel(seed: 1)
        model.impairment = Impairment(delayMs: 30)
        #expect(exits(&model, count: 3, every: Self.ms) == [30 * Self.ms, 31 * Self.ms, 32 * Self.ms])
    }

    @Test func rateSerializesFramesBackToBack() {
        var model = LinkModel(seed: 1)
        model.impairment = Impairment(rateMbit: 12) // 1500 bytes = 12,000 bits = 1 ms at 12 Mbit/s
        // A burst at t = 0 leaves one per millisecond.
        let burst = (0..<5).map { _ in model.admit(length: 1500, now: 0) }
        #expect(burst == (1...5).map { .leaves(at: UInt64($0) * Self.ms) })
    }

    @Test func rateQueueIsBoundedByTailDrop() {
        var model = LinkModel(seed: 1)
        model.impairment = Impairment(rateMbit: 12) // 100 ms queue limit = 100 frames of 1 ms
        let fates = (0..<150).map { _ in model.admit(length: 1500, now: 0) }
        let dropped = fates.filter { $0 == .dropped(.queue) }.count
        #expect(dropped == 49) // frame k waits k ms; k = 0...100 fit (101), the rest are dropped
    }

    @Test func jitterNeverReordersAndHasTheConfiguredSpread() {
        var model = LinkModel(seed: 7)
        model.impairment = Impairment(delayMs: 30, jitterMs: 10)
        let times = exits(&model, count: 5000, every: 50 * Self.ms).compactMap { $0 }
        #expect(times.count == 5000)
        #expect(zip(times, times.dropFirst()).allSatisfy { $0 <= $1 }, "order is kept")
        let delays = times.enumerated().map { Double($1 - UInt64($0) * 50 * Self.ms) / 1e6 }
        #expect(abs(Statistics.median(delays) - 30) < 0.6)
        #expect(abs(Statistics.standardDeviation(delays) - 10) < 0.4)
    }

    @Test func jitterAboveTheSpacingIsClampedToKeepOrder() {
        var model = LinkModel(seed: 3)
        model.impairment = Impairment(delayMs: 10, jitterMs: 20)
        let times = exits(&model, count: 2000, every: Self.ms).compactMap { $0 }
        #expect(zip(times, times.dropFirst()).allSatisfy { $0 <= $1 })
        #expect(times.first! >= 0)
    }

    @Test func lossDropsTheConfiguredShare() {
        var model = LinkModel(seed: 11)
        model.impairment = Impairment(lossPercent: 5)
        let fates = (0..<20_000).map { _ in model.admit(length: 100, now: 0) }
        let lost = fates.filter { $0 == .dropped(.loss) }.count
        #expect((900...1100).contains(lost))
    }

    @Test func cutDropsEverythingAndRestoreKeepsTheRest() {
        var model = LinkModel(seed: 1)
        model.impairment = ImpairmentChange(delayMs: 5, cut: true).applied(to: .none)
        #expect(model.admit(length: 1500, now: 0) == .dropped(.cut))
        model.impairment = ImpairmentChange(cut: false).applied(to: model.impairment)
        #expect(model.admit(length: 1500, now: 0) == .leaves(at: 5 * Self.ms))
    }

    @Test func loweringTheDelayDoesNotOvertakeFramesInFlight() {
        var model = LinkModel(seed: 1)
        model.impairment = Impairment(delayMs: 100)
        #expect(model.admit(length: 100, now: 0) == .leaves(at: 100 * Self.ms))
        model.impairment = Impairment(delayMs: 0)
        #expect(model.admit(length: 100, now: Self.ms) == .leaves(at: 100 * Self.ms))
        #expect(model.admit(length: 100, now: 200 * Self.ms) == .leaves(at: 200 * Self.ms))
    }
}

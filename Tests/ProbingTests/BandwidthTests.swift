import Foundation
import Synchronization
import Lab
import Model
import Testing
@testable import Probing

@Suite struct BandwidthTests {
    let t0 = MonotonicInstant(nanoseconds: 1_000_000_000)

    @Test func reportGoldenBytesAndStrictDecode() throws {
        let report = TrainReport(session: 0x0A0B_0C0D, train: 2, packets: 100, bytes: 0x1_0000_0001,
                                 spanNanoseconds: 48_000_000, bitsPerSecond: 20_000_000)
        let bytes = report.encoded()
        #expect(bytes.count == 40)
        #expect(Array(bytes[0..<16]) == [0x50, 0x52, 0x02, 0x04, 0x0A, 0x0B, 0x0C, 0x0D, 0, 2, 0, 0, 0, 0, 0, 100])
        #expect(Array(bytes[16..<28]) == [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0])
        #expect(try TrainReport.decode(bytes) == report)
        func reason(_ bytes: [UInt8]) -> ProbeRejection? {
            do { _ = try TrainReport.decode(bytes); return nil } catch { return error }
        }
        #expect(reason(Array(bytes.prefix(39))) == .truncated)
        #expect(reason(bytes + [0]) == .truncated)
        var length = bytes
        length[11] = 1 // a report has no train length
        #expect(reason(length) == .badFlags)
        var kind = bytes
        kind[3] = 0x03
        kind[11] = 200 // a valid train header (index 100 of 200), but not a report
        #expect(reason(kind) == .unexpectedKind)
    }

    @Test func rateComesFromArrivalTimesAndSkipsTheBurstHead() {
        // 100 packets of 1200 bytes: the first 8 arrive back to back (a token bucket's burst), the rest
        // every 491.2 us, i.e. 1228 IP bytes at 20 Mbit/s.
        var train = TrainMeasurement(session: 1, train: 0, length: 100, start: t0)
        var time = t0
        for index in 0..<100 {
            time = time + (index < 8 ? .microseconds(10) : .nanoseconds(491_200))
            train.arrived(index: UInt32(index), at: time, payloadBytes: 1200)
        }
        train.arrived(index: 5, at: time + .seconds(1), payloadBytes: 1200) // duplicate: ignored
        train.arrived(index: 100, at: time, payloadBytes: 1200) // out of range: ignored
        let report = train.report
        #expect(report.packets == 100)
        #expect(abs(Double(report.bitsPerSecond) - 20e6) / 20e6 < 0.01, "\(report.bitsPerSecond)")
    }

    @Test func tooFewPacketsGiveNoRate() {
        var train = TrainMeasurement(session: 1, train: 0, length: 10, start: t0)
        train.arrived(index: 0, at: t0, payloadBytes: 1200)
        #expect(train.report.bitsPerSecond == 0)
    }

    /// The receiver measures what the bucket lets through, never more. It can measure less when the sender
    /// itself is slower than the bucket (a debug build on a loaded 2-core CI machine was seen sending 80
    /// Mbit/s trains at 58 Mbit/s), so a run that under-measures is repeated, at most three times; a run
    /// that over-measures fails at once.
    @Test(.enabled(if: getuid() == 0), .timeLimit(.minutes(1)))
    func receiverMeasuredBandwidthThroughTokenBucketsRoot() async throws {
        var runs: [(slow: Double, fast: Double)] = []
        for _ in 0..<3 {
            let (estimates, drops, heard) = try await measureThroughTokenBuckets(["pa0": 20, "pa1": 80], test: BandwidthTest())
            for estimate in estimates.values {
                #expect(estimate.reports.count == 3)
                #expect(estimate.bytesSent == 3 * 100 * 1228)
            }
            #expect(drops == 0)
            // The receiver's side hears each train's measurement once (the sender may ask more than once),
            // with the source and the interface it came in by: the download of that path.
            #expect(heard.count == 6 && Set(heard.map(\.interface)).count == 2, "\(heard)")
            for (device, estimate) in estimates {
                // pa0's trains come from 10.99.1.1, pa1's from 10.99.2.1 (ProbeTopology), each by its own
                // device of b's (an ifb there: the token bucket's far end).
                let index = UInt8(device.dropFirst(2))!
                let ours = heard.filter { $0.source == IPv4Address(10, 99, index + 1, 1) }
                #expect(Set(ours.map(\.report)) == Set(estimate.reports), "\(device): \(heard) vs \(estimate.reports)")
                #expect(Set(ours.map(\.interface)).count == 1 && ours.first?.interface != "?", "\(ours)")
                var download = DownloadBandwidth()
                for h in ours { download.record(h.report) }
                #expect(download.mbps == estimate.mbps, "the receiver's side keeps the figure the sender gets")
            }
            let slow = try #require(estimates["pa0"]?.mbps)
            let fast = try #require(estimates["pa1"]?.mbps)
            print("bandwidth: tbf 20 Mbit/s -> \(slow) Mbit/s, tbf 80 Mbit/s -> \(fast) Mbit/s")
            #expect(slow <= 20 * 1.15 && fast <= 80 * 1.15, "a bucket's rate was over-measured")
            #expect(slow < fast)
            runs.append((slow, fast))
            if abs(slow - 20) / 20 <= 0.15, abs(fast - 80) / 80 <= 0.15 { break }
        }
        let last = try #require(runs.last)
        #expect(abs(last.slow - 20) / 20 <= 0.15, "20 Mbit/s path measured \(runs.map(\.slow))")
        #expect(abs(last.fast - 80) / 80 <= 0.15, "80 Mbit/s path measured \(runs.map(\.fast))")
    }
}

/// Runs `test` through a `tbf` of each given rate (Mbit/s, on that device of a fresh ProbeTopology) to a
/// BandwidthReceiver; the estimates by device, and the receiver's drop count.
func measureThroughTokenBuckets(_ rates: [String: Int], test: BandwidthTest) async throws
    -> (estimates: [String: BandwidthEstimate], drops: UInt64, heard: [HeardTrain]) {
    let topology = try ProbeTopology()
    defer { topology.delete() }
    for (device, mbit) in rates {
        try topology.a.check(["tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", "\(mbit)mbit", "burst",
                              "32kbit", "latency", "50ms"])
    }
    let heard = Mutex<[HeardTrain]>([])
    let receiver = try topology.b.perform {
        try BandwidthReceiver(onReport: { index, source, report in
            var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
            let interface = if_indextoname(UInt32(index), &name) != nil
                ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
            heard.withLock { $0.append(HeardTrain(interface: interface, source: source, report: report)) }
        })
    }
    let receiving = Task { await receiver.run() }
    defer { receiving.cancel() }
    let remote = SocketAddress4(IPv4Address(10, 99, 9, 2), port: 51823)
    var estimates: [String: BandwidthEstimate] = [:]
    for device in rates.keys.sorted() {
        let target = ProbeTarget(name: device, remote: remote, pinning: .interface(device))
        let socket = try topology.a.perform { try DatagramSocket(pinnedTo: target) }
        estimates[device] = try await test.run(socket: socket, remote: remote)
    }
    return (estimates, receiver.statistics.drops.total, heard.withLock { $0 })
}

/// A train measurement the receiver handed to its `onReport`, with the name of the interface it came in by.
struct HeardTrain: Sendable {
    var interface: String
    var source: IPv4Address
    var report: TrainReport
}

/// What a path's download keeps of the far site's trains: plausible trains of the latest test, their median.
@Suite struct DownloadBandwidthTests {
    static func report(session: UInt32 = 7, train: UInt16, packets: UInt32 = 100, mbps: Double) -> TrainReport {
        TrainReport(session: session, train: train, packets: packets, bytes: 100_000, spanNanoseconds: 40_000_000,
                    bitsPerSecond: UInt64(mbps * 1e6))
    }

    /// A restarted router starts from the last run's figure; the far site's next test replaces it.
    @Test func theLastRunsEstimateStandsUntilATrainCounts() {
        var d = DownloadBandwidth(restoredMbps: 18.8)
        #expect(d.mbps == 18.8)
        let tooShort = d.record(Self.report(train: 0, packets: 5, mbps: 50))
        #expect(!tooShort, "a train too short to time")
        #expect(d.mbps == 18.8)
        let counted = d.record(Self.report(train: 0, mbps: 40))
        #expect(counted)
        #expect(d.mbps == 40)
        for bad in [0.0, -3, .infinity, .nan] { #expect(DownloadBandwidth(restoredMbps: bad).mbps == nil) }
    }

    @Test func theMedianOfTheLatestTestsTrains() {
        var download = DownloadBandwidth()
        #expect(download.mbps == nil)
        download.record(Self.report(train: 0, mbps: 19))
        #expect(download.mbps == 19)
        download.record(Self.report(train: 1, mbps: 21))
        download.record(Self.report(train: 2, mbps: 20))
        #expect(download.mbps == 20)
        download.record(Self.report(train: 2, mbps: 20)) // the same train again: no second vote
        #expect(download.mbps == 20)
        // The far site's next test replaces the last one's trains.
        download.record(Self.report(session: 8, train: 0, mbps: 8))
        #expect(download.mbps == 8)
    }

    /// A train is network input: too few packets, no span, a rate no link has, or more trains than a test
    /// sends never count.
    @Test func implausibleTrainsAreRefused() {
        var download = DownloadBandwidth()
        let refused = [Self.report(train: 0, packets: 19, mbps: 20), // too few packets to time the link
                       Self.report(train: 0, mbps: 0), Self.report(train: 0, mbps: 0.01),
                       Self.report(train: 0, mbps: 1e9), // a petabit per second
                       TrainReport(session: 7, train: 0, packets: 100, bytes: 1, spanNanoseconds: 0, bitsPerSecond: 20_000_000)]
        for report in refused {
            #expect(!DownloadBandwidth.accepts(report), "\(report)")
            download.record(report)
        }
        #expect(DownloadBandwidth.accepts(Self.report(train: 0, mbps: 20)))
        #expect(download.mbps == nil)
        for train in 0..<UInt16(20) { download.record(Self.report(train: train, mbps: train < 8 ? 20 : 1)) }
        #expect(download.mbps == 20, "at most 8 trains of one test")
    }
}

@Suite struct BandwidthTestSizingTests {
    @Test(arguments: [(Double?.none, 100), (0.5, 40), (2, 40), (10, 51), (20, 100), (1000, 100), (.nan, 100)])
    func trainsLastAboutFiftyMillisecondsOnTheLastEstimate(mbps: Double?, packets: Int) {
        let test = BandwidthTest.sized(forMbps: mbps)
        #expect(test.packetsPerTrain == packets)
        #expect(test.trains == 3 && test.payloadBytes == 1200)
    }

    /// A slow path measured with a test sized for it (3 x 40 packets instead of 3 x 100): still within 15%.
    @Test(.enabled(if: getuid() == 0))
    func aSizedTestMeasuresASlowPathRoot() async throws {
        let test = BandwidthTest.sized(forMbps: 4)
        #expect(test.packetsPerTrain == 40)
        let began = ContinuousClock.now
        let estimate = try #require(try await measureThroughTokenBuckets(["pa0": 4], test: test).estimates["pa0"])
        let took = ContinuousClock.now - began
        #expect(abs(estimate.mbps - 4) / 4 <= 0.15, "4 Mbit/s path measured \(estimate.mbps)")
        #expect(estimate.bytesSent == 3 * 40 * 1228)
        print("bandwidth: tbf 4 Mbit/s, sized test (3 x 40 packets) -> \(estimate.mbps) Mbit/s in \(took)")
    }
}

@Suite struct ThroughputMeterTests {
    let t0 = MonotonicInstant(nanoseconds: 1_000_000_000)

    @Test func averagesOverTheWindowAndRestartsOnReset() {
        var meter = ThroughputMeter(window: .seconds(2))
        #expect(meter.sample(receivedBytes: 0, transmittedBytes: 0, at: t0) == nil)
        var result: Throughput?
        for second in 1...5 { // 1.25 MB/s in, 0.25 MB/s out
            result = meter.sample(receivedBytes: UInt64(second) * 1_250_000, transmittedBytes: UInt64(second) * 250_000,
                                  at: t0 + .seconds(Int64(second)))
        }
        #expect(result == Throughput(receiveMbps: 10, transmitMbps: 2))
        // The counter went backwards: start again.
        #expect(meter.sample(receivedBytes: 100, transmittedBytes: 100, at: t0 + .seconds(6)) == nil)
        let after = meter.sample(receivedBytes: 100 + 125_000, transmittedBytes: 100, at: t0 + .seconds(7))
        #expect(after == Throughput(receiveMbps: 1, transmitMbps: 0))
    }

    @Test func readsInterfaceCountersFromSysfs() {
        #expect(ThroughputMeter.interfaceCounters("lo") != nil)
        #expect(ThroughputMeter.interfaceCounters("../../etc") == nil)
        #expect(ThroughputMeter.interfaceCounters("nosuch-if0") == nil)
    }
}

@Suite struct KernelTimestampTests {
    @Test func realtimeStampsMapOntoTheMonotonicClock() {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let readAt = MonotonicInstant(nanoseconds: 50_000_000_000)
        var stamp = now
        stamp.tv_sec -= 1 // arrived a second before it was read
        let mapped = DatagramSocket.monotonic(fromRealtime: stamp, realtimeNow: now, readAt: readAt)
        #expect(readAt - mapped == .seconds(1))
        var future = now
        future.tv_sec += 5 // the wall clock stepped back: keep the read time
        #expect(DatagramSocket.monotonic(fromRealtime: future, realtimeNow: now, readAt: readAt) == readAt)
        var ancient = now
        ancient.tv_sec -= 60
        #expect(DatagramSocket.monotonic(fromRealtime: ancient, realtimeNow: now, readAt: readAt) == readAt)
    }
}

@Suite struct DatagramSocketTests {
    @Test func arrivalTimeIsTheKernelsNotTheReadersRoot() async throws {
        let receiver = try DatagramSocket(bindTo: IPv4Address(127, 0, 0, 1))
        let sender = try DatagramSocket(bindTo: IPv4Address(127, 0, 0, 1))
        let sentAt = MonotonicInstant.now()
        #expect(sender.send([1, 2, 3], to: SocketAddress4(IPv4Address(127, 0, 0, 1), port: receiver.localPort)) == nil)
        try await Task.sleep(for: .milliseconds(80))
        let datagram = try #require(receiver.receive(maximumSize: 100, wait: false))
        let readAt = MonotonicInstant.now()
        #expect(datagram.bytes == [1, 2, 3])
        #expect(datagram.receivedAt - sentAt < .milliseconds(20), "\(datagram.receivedAt - sentAt)")
        #expect(readAt - datagram.receivedAt >= .milliseconds(60))
        #expect(receiver.receive(maximumSize: 100, wait: false) == nil)
    }
}

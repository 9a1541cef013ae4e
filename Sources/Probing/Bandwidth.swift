import Foundation
import Logging
import Model

/// The receiver's measurement of one packet train, sent back to the train's sender.
///
/// Wire form: a ``TrainPacket`` header (kind `report`, the test's session and train index, length 0, index =
/// packets that arrived) followed by a 24-byte body: bytes (UInt64), span ns (UInt64), rate bit/s (UInt64).
/// 40 bytes in all; anything else is rejected.
public struct TrainReport: Hashable, Sendable {
    public var session: UInt32
    public var train: UInt16
    /// Packets of the train that arrived.
    public var packets: UInt32
    /// IP bytes (UDP payload + 28) of the packets that the rate is computed over.
    public var bytes: UInt64
    /// Arrival time from the first to the last packet the rate is computed over.
    public var spanNanoseconds: UInt64
    /// The rate the receiver computed from arrival times: `bytes * 8 / span`. 0 when it could not.
    public var bitsPerSecond: UInt64

    public static let size = TrainPacket.headerSize + 24

    public init(session: UInt32, train: UInt16, packets: UInt32, bytes: UInt64, spanNanoseconds: UInt64,
                bitsPerSecond: UInt64) {
        self.session = session
        self.train = train
        self.packets = packets
        self.bytes = bytes
        self.spanNanoseconds = spanNanoseconds
        self.bitsPerSecond = bitsPerSecond
    }

    public func encoded() -> [UInt8] {
        let header = TrainPacket(kind: .report, session: session, train: train, length: 0, index: packets)
        var bytes = header.encoded(padTo: TrainReport.size)
        WireWord.put64(self.bytes, into: &bytes, at: 16)
        WireWord.put64(spanNanoseconds, into: &bytes, at: 24)
        WireWord.put64(bitsPerSecond, into: &bytes, at: 32)
        return bytes
    }

    public static func decode(_ bytes: [UInt8]) throws(ProbeRejection) -> TrainReport {
        guard bytes.count == size else { throw .truncated }
        let header = try TrainPacket.decode(bytes)
        guard header.kind == .report else { throw .unexpectedKind }
        return TrainReport(session: header.session, train: header.train, packets: header.index,
                           bytes: WireWord.get64(bytes, 16), spanNanoseconds: WireWord.get64(bytes, 24),
                           bitsPerSecond: WireWord.get64(bytes, 32))
    }
}

/// How a train's arrivals become a rate, on the receiver. Pure.
///
/// The first eighth of the packets (at least one) is skipped: they may pass a token bucket's burst allowance
/// or an idle queue at line rate and would inflate the estimate. Rate = IP bytes of the packets after the
/// skipped ones x 8 / (last arrival - last skipped arrival). Duplicated indices are ignored.
public struct TrainMeasurement: Sendable {
    public let session: UInt32
    public let train: UInt16
    public let length: Int
    private var arrivals: [(index: UInt32, at: MonotonicInstant, ipBytes: Int)] = []
    private var seen = Set<UInt32>()
    public private(set) var lastArrival: MonotonicInstant

    public init(session: UInt32, train: UInt16, length: Int, start: MonotonicInstant) {
        self.session = session
        self.train = train
        self.length = max(1, length)
        lastArrival = start
    }

    public mutating func arrived(index: UInt32, at time: MonotonicInstant, payloadBytes: Int) {
        guard Int(index) < length, seen.insert(index).inserted else { return }
        arrivals.append((index, time, payloadBytes + 28))
        lastArrival = max(lastArrival, time)
    }

    public var report: TrainReport {
        let ordered = arrivals.sorted { $0.at < $1.at }
        let skip = max(1, ordered.count / 8)
        guard ordered.count > skip else {
            return TrainReport(session: session, train: train, packets: UInt32(ordered.count), bytes: 0,
                               spanNanoseconds: 0, bitsPerSecond: 0)
        }
        let counted = ordered[skip...]
        let bytes = counted.reduce(0) { $0 + UInt64($1.ipBytes) }
        let span = ordered.last!.at.nanoseconds - ordered[skip - 1].at.nanoseconds
        let rate = span > 0 ? UInt64(Double(bytes) * 8 * 1e9 / Double(span)) : 0
        return TrainReport(session: session, train: train, packets: UInt32(ordered.count), bytes: bytes,
                           spanNanoseconds: span, bitsPerSecond: rate)
    }
}

/// The bandwidth-test receiver on UDP 51823: measures trains from arrival times and reports each back,
/// through the interface the train came in on. Trains are identified by (source, session, train index);
/// at most 16 are tracked at once (oldest evicted) and each is forgotten 5 s after its last packet.
/// Train packets: a ``TrainPacket`` header (kind `train`) padded to the train's packet size; the end-of-train
/// flag asks for the report (sent again for every repeated request). Untrusted input is dropped and counted
/// like the responder's.
public final class BandwidthReceiver: @unchecked Sendable {
    public struct Configuration: Hashable, Sendable {
        public var port = Conventions.bandwidthPort
        public var allowedSources: [IPv4Prefix] = [Conventions.overlayPool]
        /// SO_MARK for reports, as for the probe responder's replies: the daemon's pinned mark keeps its own
        /// steering from moving a report off the tunnel its train came in on.
        public var replyMark: UInt32?
        public init() {}
    }

    private struct Key: Hashable { var source: SocketAddress4; var session: UInt32; var train: UInt16 }

    public let configuration: Configuration
    private let socket: DatagramSocket
    private let lock = NSLock()
    private var trains: [Key: TrainMeasurement] = [:]
    private var drops = ProbeDrops()
    private var reports: UInt64 = 0
    static let maximumPacket = 1472

    /// Trains whose report was handed to `onReport` already (a repeated request is answered, not counted again).
    private var reported: Set<Key> = []

    private let dropLog: DropLog
    private let onTrain: @Sendable (Int32) -> Void
    private let onReport: @Sendable (Int32, IPv4Address, TrainReport) -> Void

    /// `onTrain` hears the incoming interface of every train that starts arriving (a remote site's bandwidth
    /// test is loading that uplink now: the daemon excuses the probes that cross it). `onReport` hears, once
    /// per train, its measurement with the interface it came in on and its source: the rate at which that
    /// path delivers to us (the daemon keeps it as the path's download, ``DownloadBandwidth``).
    public init(configuration: Configuration = Configuration(),
                logger: Logger = Logger(label: "patronus.probing"),
                onTrain: @escaping @Sendable (_ interfaceIndex: Int32) -> Void = { _ in },
                onReport: @escaping @Sendable (_ interfaceIndex: Int32, _ source: IPv4Address, _ report: TrainReport) -> Void
                    = { _, _, _ in }) throws(ProbeSocketError) {
        self.configuration = configuration
        self.onTrain = onTrain
        self.onReport = onReport
        dropLog = DropLog(logger: logger, component: "bandwidth receiver")
        socket = try DatagramSocket(port: configuration.port, mark: configuration.replyMark, packetInfo: true,
                                    receiveBuffer: 4 << 20)
    }

    public var statistics: (reports: UInt64, drops: ProbeDrops) { lock.withLock { (reports, drops) } }

    /// Receives until the calling task is cancelled; the socket is closed when it returns.
    public func run() async {
        let loop = ReceiveLoop(socket: socket, name: "bandwidth-receiver", maximumSize: Self.maximumPacket) {
            [self] datagram in handle(datagram)
        }
        await loop.run()
        socket.close()
    }

    private func handle(_ datagram: Datagram) {
        var started = false
        var measured: TrainReport?
        if let reason = lock.withLock({ measure(datagram, started: &started, measured: &measured) }) {
            dropLog.dropped(reason, from: datagram.source)
        }
        if started { onTrain(datagram.interfaceIndex) }
        if let measured { onReport(datagram.interfaceIndex, datagram.source.address, measured) }
    }

    /// Called with the lock held; returns the drop reason, if dropped. `measured`: a train's first report.
    private func measure(_ datagram: Datagram, started: inout Bool, measured: inout TrainReport?) -> ProbeRejection? {
        guard configuration.allowedSources.contains(where: { $0.contains(datagram.source.address) }) else {
            drops.count(.unknownPeer)
            return .unknownPeer
        }
        guard datagram.bytes.count <= Self.maximumPacket else { drops.count(.truncated); return .truncated }
        let packet: TrainPacket
        do {
            packet = try TrainPacket.decode(datagram.bytes)
        } catch {
            drops.count(error)
            return error
        }
        guard packet.kind == .train else { drops.count(.unexpectedKind); return .unexpectedKind }
        let key = Key(source: datagram.source, session: packet.session, train: packet.train)
        let now = datagram.receivedAt
        trains = trains.filter { now - $0.value.lastArrival < .seconds(5) }
        reported = reported.filter { trains[$0] != nil }
        if trains[key] == nil {
            if trains.count >= 16, let oldest = trains.min(by: { $0.value.lastArrival < $1.value.lastArrival }) {
                trains[oldest.key] = nil
            }
            trains[key] = TrainMeasurement(session: packet.session, train: packet.train, length: Int(packet.length),
                                           start: now)
            started = true
        }
        if packet.isEndOfTrain {
            let measurement = trains[key]!.report
            if reported.insert(key).inserted { measured = measurement }
            let report = measurement.encoded()
            let failed = datagram.interfaceIndex > 0
                ? socket.send(report, to: datagram.source, viaInterface: datagram.interfaceIndex,
                              from: datagram.destination)
                : socket.send(report, to: datagram.source)
            if failed == nil { reports += 1 }
        } else {
            trains[key]!.arrived(index: packet.index, at: now, payloadBytes: datagram.bytes.count)
        }
        return nil
    }
}

/// One bandwidth estimate of a path: the median of the receiver-reported rates of its trains.
public struct BandwidthEstimate: Hashable, Sendable {
    public var mbps: Double
    public var reports: [TrainReport]
    /// Bytes this test put on the path (train packets, IP level), to keep its share of the path visible.
    public var bytesSent: Int
}

/// Runs a receiver-measured bandwidth test over one path: a few short trains of back-to-back packets, each
/// measured by the remote ``BandwidthReceiver`` from arrival times. The sender's own send rate is never used.
///
/// Bounded: default 3 trains x 100 packets x 1200 bytes = 368 kB per test (IP level), about 0.5 kbit/s on
/// average when run every 10 minutes. Run it at path start and then rarely (the daemon decides).
public struct BandwidthTest: Sendable {
    public var trains = 3
    public var packetsPerTrain = 100
    public var payloadBytes = 1200
    public var gapBetweenTrains: Duration = .milliseconds(100)
    public var reportTimeout: Duration = .milliseconds(500)

    public init() {}

    /// What one test puts on the path, at IP level inside the tunnel (payload + UDP + IPv4 headers).
    public var bytesOnTheWire: Int { trains * packetsPerTrain * (payloadBytes + 28) }

    /// A test sized for a path last measured at `mbps`: trains of about `trainTime` on that path, between
    /// `minimumPacketsPerTrain` (enough to skip a token bucket's burst and still time the rest) and the
    /// default 100. A slow path is then loaded for a fraction of a second instead of seconds (2 Mbit/s:
    /// 3 x 40 packets, 0.6 s, instead of 3 x 100, 1.5 s); a path of 20 Mbit/s or more gets the default.
    /// Without an estimate (the first test), the default.
    public static func sized(forMbps mbps: Double?, trainTime: Duration = .milliseconds(50)) -> BandwidthTest {
        var test = BandwidthTest()
        guard let mbps, mbps > 0, mbps.isFinite else { return test }
        let seconds = Double(trainTime.components.seconds) + Double(trainTime.components.attoseconds) / 1e18
        let packets = mbps * 1e6 * seconds / Double((test.payloadBytes + 28) * 8)
        test.packetsPerTrain = Int(min(max(packets.rounded(.up), Double(minimumPacketsPerTrain)), Double(test.packetsPerTrain)))
        return test
    }

    public static let minimumPacketsPerTrain = 40

    public enum Failure: Error, Equatable, CustomStringConvertible {
        case socket(ProbeSocketError)
        case noReport(train: Int)

        public var description: String {
            switch self {
            case .socket(let error): "bandwidth test: \(error)"
            case .noReport(let train):
                "bandwidth test: no report for train \(train); is a BandwidthReceiver listening on the remote site?"
            }
        }
    }

    /// Measures the path to `target` (its `remote` port should be the receiver's, 51823) with the target's
    /// pinning. Throws if no train was reported.
    public func run(target: ProbeTarget) async throws(Failure) -> BandwidthEstimate {
        let socket: DatagramSocket
        do {
            socket = try DatagramSocket(pinnedTo: target)
        } catch {
            throw .socket(error)
        }
        return try await run(socket: socket, remote: target.remote)
    }

    /// Reports that have arrived, by train index.
    private final class Mailbox: @unchecked Sendable {
        let lock = NSLock()
        var reports: [UInt16: TrainReport] = [:]
        func get(_ train: UInt16) -> TrainReport? { lock.withLock { reports[train] } }
        func put(_ report: TrainReport) { lock.withLock { reports[report.train] = report } }
    }

    func run(socket: DatagramSocket, remote: SocketAddress4) async throws(Failure) -> BandwidthEstimate {
        let session = UInt32.random(in: 1...UInt32.max)
        let mailbox = Mailbox()
        let loop = ReceiveLoop(socket: socket, name: "bandwidth-test", maximumSize: TrainReport.size) { datagram in
            guard datagram.source == remote, let report = try? TrainReport.decode(datagram.bytes),
                  report.session == session else { return }
            mailbox.put(report)
        }
        let receiving = Task { await loop.run() }
        defer { receiving.cancel() }
        let length = UInt16(min(max(packetsPerTrain, 2), 0xffff))
        let size = min(max(payloadBytes, TrainPacket.headerSize), BandwidthReceiver.maximumPacket)
        var reports: [TrainReport] = []
        var bytesSent = 0
        for train in 0..<UInt16(max(1, min(trains, 0xffff))) {
            for index in 0..<UInt32(length) {
                let packet = TrainPacket(kind: .train, session: session, train: train, length: length, index: index)
                if socket.send(packet.encoded(padTo: size), to: remote) == nil { bytesSent += size + 28 }
            }
            // Ask for the report until it comes (the request or the report may be lost).
            let request = TrainPacket(kind: .train, session: session, train: train, length: length,
                                      index: UInt32(length), isEndOfTrain: true).encoded()
            let deadline = MonotonicInstant.now() + reportTimeout
            var nextRequest = MonotonicInstant.now()
            while mailbox.get(train) == nil, MonotonicInstant.now() < deadline {
                if MonotonicInstant.now() >= nextRequest {
                    _ = socket.send(request, to: remote)
                    nextRequest = MonotonicInstant.now() + .milliseconds(100)
                }
                try? await Task.sleep(for: .milliseconds(2))
            }
            if let report = mailbox.get(train), report.bitsPerSecond > 0 { reports.append(report) }
            try? await Task.sleep(for: gapBetweenTrains)
        }
        guard !reports.isEmpty else { throw .noReport(train: 0) }
        let rates = reports.map(\.bitsPerSecond).sorted()
        let median = rates.count % 2 == 1
            ? Double(rates[rates.count / 2]) : Double(rates[rates.count / 2 - 1] + rates[rates.count / 2]) / 2
        return BandwidthEstimate(mbps: median / 1e6, reports: reports, bytesSent: bytesSent)
    }
}

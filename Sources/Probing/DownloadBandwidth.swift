/// A path's download, from the bandwidth trains the far site sends us over it: our ``BandwidthReceiver``
/// measures each train (and reports it back, which gives the far site its upload); the same measurement, kept
/// here, is the rate at which the path delivers to us. Pure; one per path (``PathProber`` holds it).
///
/// The estimate is the median of the trains of the latest test (session), as the sender takes the median of
/// its reports. A train is network input even when it came through our tunnel from a member: it counts only
/// when enough of its packets arrived to time it (`minimumPackets`) and its rate is a rate a link can have
/// (`plausibleBitsPerSecond`); a session keeps at most `maximumTrains` trains (a test sends 3).
public struct DownloadBandwidth: Sendable, Hashable {
    /// A test sends at least 40 packets per train (``BandwidthTest/minimumPacketsPerTrain``); fewer than half
    /// of them arriving times the loss, not the link.
    public static let minimumPackets: UInt32 = 20
    public static let plausibleBitsPerSecond: ClosedRange<UInt64> = 64_000...400_000_000_000
    public static let maximumTrains = 8

    private var session: UInt32?
    private var rates: [UInt16: UInt64] = [:]
    /// The last run's estimate (a restart: the far site tests again only when its path comes up or after
    /// its bandwidth interval); stands until a train of ours counts.
    private var restored: Double?

    /// `restoredMbps`: the estimate the last run had for this path (from the database), if any.
    public init(restoredMbps: Double? = nil) {
        restored = restoredMbps.flatMap { $0 > 0 && $0.isFinite ? $0 : nil }
    }

    /// Whether a train's measurement may count: enough packets, a span, a plausible rate.
    public static func accepts(_ report: TrainReport) -> Bool {
        report.packets >= minimumPackets && report.spanNanoseconds > 0 && plausibleBitsPerSecond.contains(report.bitsPerSecond)
    }

    /// The estimate in Mbit/s: the median of the latest session's trains; before any train counted, the
    /// restored estimate, or nil.
    public var mbps: Double? {
        let sorted = rates.values.sorted()
        guard !sorted.isEmpty else { return restored }
        let n = sorted.count
        let median = n % 2 == 1 ? Double(sorted[n / 2]) : (Double(sorted[n / 2 - 1]) + Double(sorted[n / 2])) / 2
        return median / 1e6
    }

    /// Takes one train's measurement; returns whether it counted. A new session (the far site's next test)
    /// replaces the previous one's trains; a train measured again (a repeated report) replaces itself.
    @discardableResult
    public mutating func record(_ report: TrainReport) -> Bool {
        guard Self.accepts(report) else { return false }
        if report.session != session {
            session = report.session
            rates = [:]
        }
        guard rates[report.train] != nil || rates.count < Self.maximumTrains else { return false }
        rates[report.train] = report.bitsPerSecond
        return true
    }
}

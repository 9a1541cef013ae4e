import Foundation

/// A site's stable identity, created once and kept across restarts. Printed as a lowercase UUID.
public struct SiteID: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public let uuid: UUID

    public init(_ uuid: UUID = UUID()) { self.uuid = uuid }

    public init?(_ text: String) {
        guard let uuid = UUID(uuidString: text) else { return nil }
        self.uuid = uuid
    }

    public var description: String { uuid.uuidString.lowercased() }

    public static func < (lhs: SiteID, rhs: SiteID) -> Bool { lhs.description < rhs.description }
}

/// A local uplink: the interface the encrypted traffic of a path leaves by, and its label ("isp-a", "lte").
public struct Uplink: Hashable, Sendable, Codable, CustomStringConvertible {
    public var interface: String
    public var label: String
    /// Egress shaping of the tunnels over this uplink (docs/SHAPING.md).
    public var shaping: ShapingMode
    /// Download shaping of what arrives over the tunnels of this uplink (docs/SHAPING.md, "Download").
    public var downloadShaping: ShapingMode
    /// The uplink never carries the copies of duplicated classes (`no-copies`: metered links; docs/STEERING.md,
    /// "Duplication"). It still carries traffic the routing engine puts on it.
    public var noCopies: Bool

    public init(interface: String, label: String, shaping: ShapingMode = .auto, downloadShaping: ShapingMode = .auto,
                noCopies: Bool = false) {
        self.interface = interface
        self.label = label
        self.shaping = shaping
        self.downloadShaping = downloadShaping
        self.noCopies = noCopies
    }

    /// Parses the `--uplink IFACE[=LABEL][,shape=MODE[/MODE]][,no-copies]` form (options in any order, each
    /// at most once); the label defaults to the interface name, shaping to auto. `shape=UP/DOWN` sets the
    /// upload and the download; a single `auto` or `off` sets both, a single rate the upload only (the
    /// download stays auto).
    public init?(argument: String) {
        var fields = argument.split(separator: ",", omittingEmptySubsequences: false)
        var shaping: (up: ShapingMode, down: ShapingMode)?
        var noCopies = false
        while fields.count > 1 {
            let option = fields.removeLast()
            if option == "no-copies", !noCopies {
                noCopies = true
            } else if option.hasPrefix("shape="), shaping == nil, let modes = ShapingMode.pair(option.dropFirst("shape=".count)) {
                shaping = modes
            } else {
                return nil
            }
        }
        guard fields.count == 1 else { return nil }
        let parts = fields[0].split(separator: "=", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), Uplink.isValidInterfaceName(parts[0]) else { return nil }
        let label = parts.count == 2 ? parts[1] : parts[0]
        guard Policy.isValidName(label) else { return nil }
        self.init(interface: String(parts[0]), label: String(label), shaping: shaping?.up ?? .auto,
                  downloadShaping: shaping?.down ?? .auto, noCopies: noCopies)
    }

    private enum CodingKeys: String, CodingKey { case interface, label, shaping, downloadShaping, noCopies }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        interface = try c.decode(String.self, forKey: .interface)
        label = try c.decode(String.self, forKey: .label)
        shaping = try c.decodeIfPresent(ShapingMode.self, forKey: .shaping) ?? .auto
        downloadShaping = try c.decodeIfPresent(ShapingMode.self, forKey: .downloadShaping) ?? .auto
        noCopies = try c.decodeIfPresent(Bool.self, forKey: .noCopies) ?? false
    }

    /// Linux interface names: 1-15 bytes, no '/', whitespace or ':'.
    public static func isValidInterfaceName(_ name: some StringProtocol) -> Bool {
        (1...15).contains(name.utf8.count) && name != "." && name != ".."
            && name.allSatisfy { $0.isASCII && !$0.isWhitespace && $0 != "/" && $0 != ":" }
    }

    public var description: String {
        "\(interface)=\(label)" + (shapeOption.map { ",shape=\($0)" } ?? "") + (noCopies ? ",no-copies" : "")
    }

    /// The `shape=` value that gives this uplink's shaping (nil: auto both ways, the default).
    public var shapeOption: String? {
        switch (shaping, downloadShaping) {
        case (.auto, .auto): nil
        case (.off, .off): "off"
        case (.fixed, .auto): "\(shaping)"
        default: "\(shaping)/\(downloadShaping)"
        }
    }
}

/// How an uplink's tunnels are shaped on egress: `auto` (from the paths' measured bandwidth, adapted to
/// the delay under load), `off`, or a fixed rate in bits per second (`shape=20M`, `shape=1.5G`, `shape=800k`).
public enum ShapingMode: Hashable, Sendable, Codable, CustomStringConvertible {
    case auto
    case off
    case fixed(bitsPerSecond: UInt64)

    /// "auto", "off", or a rate: a number with an optional k, M or G suffix (bits per second), within
    /// 64 kbit/s ... 1 Tbit/s.
    public init?(_ text: some StringProtocol) {
        switch text.lowercased() {
        case "auto": self = .auto
        case "off": self = .off
        default:
            var digits = Substring(text)
            var scale = 1.0
            switch digits.last {
            case "k", "K": scale = 1e3
            case "m", "M": scale = 1e6
            case "g", "G": scale = 1e9
            default: break
            }
            if scale != 1 { digits = digits.dropLast() }
            guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
                  let value = Double(digits), value.isFinite else { return nil }
            let bps = value * scale
            guard bps >= 64_000, bps <= 1e12 else { return nil }
            self = .fixed(bitsPerSecond: UInt64(bps))
        }
    }

    public var description: String {
        switch self {
        case .auto: "auto"
        case .off: "off"
        case .fixed(let bps): ShapingMode.rateText(bps)
        }
    }

    /// `UP/DOWN` (each auto, off or a rate), or one mode: `auto` and `off` for both directions, a rate for the
    /// upload only (the download stays auto, as before download shaping existed).
    public static func pair(_ text: some StringProtocol) -> (up: ShapingMode, down: ShapingMode)? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        switch parts.count {
        case 1:
            guard let mode = ShapingMode(parts[0]) else { return nil }
            if case .fixed = mode { return (mode, .auto) }
            return (mode, mode)
        case 2:
            guard let up = ShapingMode(parts[0]), let down = ShapingMode(parts[1]) else { return nil }
            return (up, down)
        default:
            return nil
        }
    }

    /// What is wrong with a `shape=` value, in one line (nil: nothing).
    public static func problem(_ text: some StringProtocol) -> String? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count) else {
            return "shape=\(text) has \(parts.count) directions; give one mode or UP/DOWN (e.g. 20M/100M)"
        }
        for (part, direction) in zip(parts, parts.count == 1 ? ["upload"] : ["upload", "download"]) where ShapingMode(part) == nil {
            return "shape=\(text): the \(direction) '\(part)' is not auto, off or a rate of 64k...1000G bit/s (a number with an optional k, M or G suffix)"
        }
        return nil
    }

    /// "20M", "1.5G", "800k": the form `--uplink ...,shape=` takes.
    public static func rateText(_ bps: UInt64) -> String {
        for (scale, suffix) in [(1e9, "G"), (1e6, "M"), (1e3, "k")] where Double(bps) >= scale {
            let v = Double(bps) / scale
            return (v == v.rounded() ? String(Int(v)) : String(format2(v))) + suffix
        }
        return String(bps)
    }

    private static func format2(_ v: Double) -> String {
        let r = (v * 100).rounded() / 100
        return r == r.rounded() ? String(Int(r)) : String(r)
    }
}

/// Where a remote site can be reached: one of its uplinks, as it announced it.
public struct Endpoint: Hashable, Sendable, Codable, CustomStringConvertible {
    public var label: String
    public var address: SocketAddress4

    public init(label: String, address: SocketAddress4) {
        self.label = label
        self.address = address
    }

    public var description: String { "\(address) (\(label))" }
}

/// The health of a path as the prober judges it.
public enum PathStatus: String, Sendable, Codable, CaseIterable, Comparable {
    case up
    case degraded
    case down

    /// Up < degraded < down, so sorting puts healthy paths first.
    public static func < (lhs: PathStatus, rhs: PathStatus) -> Bool {
        let order: [PathStatus] = [.up, .degraded, .down]
        return order.firstIndex(of: lhs)! < order.firstIndex(of: rhs)!
    }
}

/// One measurement of a path, as stored in `path_metrics`. `bandwidthMbps` is nil until a bandwidth test
/// has completed on this path.
public struct PathMetrics: Hashable, Sendable, Codable {
    public var latencyMs: Double
    public var jitterMs: Double
    public var lossPct: Double
    public var bandwidthMbps: Double?
    public var score: Double
    /// Passive throughput: what the path's tunnel peer actually carried (its transfer counters, averaged over
    /// the last 5-10 s), sent and received, in Mbit/s of encrypted datagrams. What the path did, not what it
    /// can do: it is never taken as bandwidth (a sender's own rate says nothing about capacity). nil until
    /// two readings of the counters exist.
    public var throughputTxMbps: Double?
    public var throughputRxMbps: Double?
    /// The smoothed RTT of the last few probes (RFC 6298's SRTT, 1/8 per sample), ms: reacts within a few
    /// probe intervals, where `latencyMs` is the median of the whole window. The shaper's delay signal.
    public var recentLatencyMs: Double?
    /// The path's download: the rate at which the far site's bandwidth trains arrived here over this path
    /// (measured by our receiver; `bandwidthMbps` is the far receiver's measurement of ours). nil until a
    /// train of the far site was measured. The download shaper's estimate (docs/SHAPING.md, "The download rate").
    public var downloadBandwidthMbps: Double?

    public init(latencyMs: Double, jitterMs: Double, lossPct: Double, bandwidthMbps: Double? = nil,
                score: Double, throughputTxMbps: Double? = nil, throughputRxMbps: Double? = nil,
                recentLatencyMs: Double? = nil, downloadBandwidthMbps: Double? = nil) {
        self.recentLatencyMs = recentLatencyMs
        self.downloadBandwidthMbps = downloadBandwidthMbps
        self.latencyMs = latencyMs
        self.jitterMs = jitterMs
        self.lossPct = lossPct
        self.bandwidthMbps = bandwidthMbps
        self.score = score
        self.throughputTxMbps = throughputTxMbps
        self.throughputRxMbps = throughputRxMbps
    }
}

/// Times as the database and the status report show them: UTC, 'YYYY-MM-DD HH:MM:SS'.
public enum UTCTime {
    public static func format(_ date: Date) -> String {
        var time = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&time, &parts)
        return String(format: "%04d-%02d-%02d %02d:%02d:%02d", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1,
                      Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
    }

    /// Parses exactly 'YYYY-MM-DD HH:MM:SS' (UTC); nil for anything else.
    public static func parse(_ text: String) -> Date? {
        let bytes = Array(text.utf8)
        guard bytes.count == 19, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-"),
              bytes[10] == UInt8(ascii: " "), bytes[13] == UInt8(ascii: ":"), bytes[16] == UInt8(ascii: ":")
        else { return nil }
        func number(_ range: Range<Int>) -> Int32? {
            var value: Int32 = 0
            for byte in bytes[range] {
                guard (48...57).contains(byte) else { return nil }
                value = value * 10 + Int32(byte - 48)
            }
            return value
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
              let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var parts = tm()
        parts.tm_year = year - 1900
        parts.tm_mon = month - 1
        parts.tm_mday = day
        parts.tm_hour = hour
        parts.tm_min = minute
        parts.tm_sec = second
        let seconds = timegm(&parts)
        guard format(Date(timeIntervalSince1970: TimeInterval(seconds))) == text else { return nil }
        return Date(timeIntervalSince1970: TimeInterval(seconds))
    }
}

/// Names one path: a local uplink (by label) paired with a remote site's endpoint (by label). Stable across
/// restarts and independent of the kernel slot or database row the path happens to get.
public struct PathKey: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public var site: SiteID
    public var localLabel: String
    public var remoteLabel: String

    public init(site: SiteID, localLabel: String, remoteLabel: String) {
        self.site = site
        self.localLabel = localLabel
        self.remoteLabel = remoteLabel
    }

    public static func < (lhs: PathKey, rhs: PathKey) -> Bool {
        (lhs.site, lhs.localLabel, lhs.remoteLabel) < (rhs.site, rhs.localLabel, rhs.remoteLabel)
    }

    /// How operators name a path: "isp-a->east" (or "isp-a/lte->east" when the labels differ).
    public func name(siteName: String) -> String {
        localLabel == remoteLabel ? "\(localLabel)->\(siteName)" : "\(localLabel)/\(remoteLabel)->\(siteName)"
    }

    public var description: String { name(siteName: site.description) }
}

/// A transport protocol a policy can match.
public enum TransportProtocol: Hashable, Sendable, TextCodable, CaseIterable {
    case tcp
    case udp

    /// The IANA protocol number, as the kernel sees it (meta l4proto).
    public var number: UInt8 { self == .tcp ? 6 : 17 }

    public init?(name: some StringProtocol) {
        switch name.lowercased() {
        case "tcp": self = .tcp
        case "udp": self = .udp
        default: return nil
        }
    }

    public var description: String { self == .tcp ? "tcp" : "udp" }
    public init?(text: String) { self.init(name: text) }
    public static let textForm = "a protocol (tcp or udp)"
}

/// An inclusive range of ports, "5060-5061" or "873".
public struct PortRange: Hashable, Comparable, Sendable, TextCodable {
    public let lower: UInt16
    public let upper: UInt16

    public init(_ lower: UInt16, _ upper: UInt16) {
        precondition(lower <= upper, "port range \(lower)-\(upper) is reversed")
        self.lower = lower
        self.upper = upper
    }

    public init(_ port: UInt16) { self.init(port, port) }

    /// Parses "N" or "N-M" with 1 <= N <= M <= 65535.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count) else { return nil }
        var ports: [UInt16] = []
        for part in parts {
            guard (1...5).contains(part.count), part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let port = UInt16(part), port != 0 else { return nil }
            ports.append(port)
        }
        guard ports[0] <= ports[ports.count - 1] else { return nil }
        self.init(ports[0], ports[ports.count - 1])
    }

    public func contains(_ port: UInt16) -> Bool { (lower...upper).contains(port) }
    public func overlaps(_ other: PortRange) -> Bool { lower <= other.upper && other.lower <= upper }

    public var description: String { lower == upper ? "\(lower)" : "\(lower)-\(upper)" }
    public init?(text: String) { self.init(text) }
    public static let textForm = "a port or port range (1-65535)"

    public static func < (lhs: PortRange, rhs: PortRange) -> Bool { (lhs.lower, lhs.upper) < (rhs.lower, rhs.upper) }
}

/// One protocol with destination ports: "udp 5060-5061". Empty `ports` means every port of the protocol.
public struct ServiceMatch: Hashable, Sendable, Codable, CustomStringConvertible {
    public var proto: TransportProtocol
    public var ports: [PortRange]

    public init(_ proto: TransportProtocol, _ ports: [PortRange] = []) {
        self.proto = proto
        self.ports = ports
    }

    private enum CodingKeys: String, CodingKey { case proto = "protocol", ports }

    public var description: String {
        ports.isEmpty ? "\(proto)" : "\(proto) \(ports.map(\.description).joined(separator: ","))"
    }
}

/// What traffic a policy selects. Fields combine with AND; the entries of one field with OR; an empty
/// field matches everything. An entirely empty match selects all traffic (the `default` policy).
public struct TrafficMatch: Hashable, Sendable, Codable {
    /// Protocol + destination ports; a flow matches when any entry does.
    public var services: [ServiceMatch]
    /// DSCP code points (0-63).
    public var dscp: [UInt8]
    public var sources: [IPv4Prefix]
    public var destinations: [IPv4Prefix]

    public init(services: [ServiceMatch] = [], dscp: [UInt8] = [], sources: [IPv4Prefix] = [],
                destinations: [IPv4Prefix] = []) {
        self.services = services
        self.dscp = dscp
        self.sources = sources
        self.destinations = destinations
    }

    public var matchesEverything: Bool {
        services.isEmpty && dscp.isEmpty && sources.isEmpty && destinations.isEmpty
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        services = try c.decodeIfPresent([ServiceMatch].self, forKey: .services) ?? []
        dscp = try c.decodeIfPresent([UInt8].self, forKey: .dscp) ?? []
        sources = try c.decodeIfPresent([IPv4Prefix].self, forKey: .sources) ?? []
        destinations = try c.decodeIfPresent([IPv4Prefix].self, forKey: .destinations) ?? []
    }

    private enum CodingKeys: String, CodingKey { case services, dscp, sources, destinations }
}

/// How a policy chooses among the usable paths to a destination.
public enum Strategy: Hashable, Sendable, TextCodable {
    case lowestLatency
    case highestBandwidth
    case lowestLoss
    case bestScore
    /// Always the path whose local uplink carries this label (e.g. "isp-a"), while it is usable.
    case fixed(uplinkLabel: String)
    /// Flows spread over all usable paths, weighted by score; a flow stays on its path.
    case loadBalance

    /// Parses the text form used by the CLI and the policies file: "lowest-latency", "highest-bandwidth",
    /// "lowest-loss", "best-score", "load-balance", "fixed:LABEL".
    public init?(_ text: some StringProtocol) {
        switch text {
        case "lowest-latency": self = .lowestLatency
        case "highest-bandwidth": self = .highestBandwidth
        case "lowest-loss": self = .lowestLoss
        case "best-score": self = .bestScore
        case "load-balance": self = .loadBalance
        default:
            guard text.hasPrefix("fixed:") else { return nil }
            let label = String(text.dropFirst("fixed:".count))
            guard Policy.isValidName(label) else { return nil }
            self = .fixed(uplinkLabel: label)
        }
    }

    public var description: String {
        switch self {
        case .lowestLatency: "lowest-latency"
        case .highestBandwidth: "highest-bandwidth"
        case .lowestLoss: "lowest-loss"
        case .bestScore: "best-score"
        case .loadBalance: "load-balance"
        case .fixed(let label): "fixed:\(label)"
        }
    }

    public init?(text: String) { self.init(text) }
    public static var textForm: String { "one of \(allNames.joined(separator: ", "))" }

    public static let allNames = ["lowest-latency", "highest-bandwidth", "lowest-loss", "best-score",
                                  "load-balance", "fixed:LABEL"]
}

/// Service-level limits: a path breaking any of them is avoided while another path meets them all.
public struct SLA: Hashable, Sendable, Codable {
    public var maxLatencyMs: Double?
    public var maxJitterMs: Double?
    public var maxLossPct: Double?

    public init(maxLatencyMs: Double? = nil, maxJitterMs: Double? = nil, maxLossPct: Double? = nil) {
        self.maxLatencyMs = maxLatencyMs
        self.maxJitterMs = maxJitterMs
        self.maxLossPct = maxLossPct
    }

    public var isEmpty: Bool { maxLatencyMs == nil && maxJitterMs == nil && maxLossPct == nil }

    /// True when the metrics meet every limit that is set.
    public func isMet(by metrics: PathMetrics) -> Bool {
        if let limit = maxLatencyMs, metrics.latencyMs > limit { return false }
        if let limit = maxJitterMs, metrics.jitterMs > limit { return false }
        if let limit = maxLossPct, metrics.lossPct > limit { return false }
        return true
    }
}

/// An application policy: which traffic, and how to choose its path. Lower `priority` wins when two
/// policies match the same flow. SIP and RTP of one call belong in ONE policy so they share a path.
public struct Policy: Hashable, Sendable, Codable {
    public var name: String
    public var priority: Int
    public var match: TrafficMatch
    public var strategy: Strategy
    public var sla: SLA
    public var enabled: Bool
    public var description: String
    /// Send every packet of the class over its path and a copy over the best other path to the same site;
    /// the receiving site drops the second copy in its kernel (docs/STEERING.md, "Duplication").
    public var duplicate: Bool

    public init(name: String, priority: Int, match: TrafficMatch = TrafficMatch(), strategy: Strategy,
                sla: SLA = SLA(), enabled: Bool = true, description: String = "", duplicate: Bool = false) {
        self.duplicate = duplicate
        self.name = name
        self.priority = priority
        self.match = match
        self.strategy = strategy
        self.sla = sla
        self.enabled = enabled
        self.description = description
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        priority = try c.decode(Int.self, forKey: .priority)
        match = try c.decodeIfPresent(TrafficMatch.self, forKey: .match) ?? TrafficMatch()
        strategy = try c.decode(Strategy.self, forKey: .strategy)
        sla = try c.decodeIfPresent(SLA.self, forKey: .sla) ?? SLA()
        enabled = try c.decodeIfPresent(Bool.self, forKey: .enabled) ?? true
        description = try c.decodeIfPresent(String.self, forKey: .description) ?? ""
        duplicate = try c.decodeIfPresent(Bool.self, forKey: .duplicate) ?? false
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(priority, forKey: .priority)
        try c.encode(match, forKey: .match)
        try c.encode(strategy, forKey: .strategy)
        try c.encode(sla, forKey: .sla)
        try c.encode(enabled, forKey: .enabled)
        try c.encode(description, forKey: .description)
        if duplicate { try c.encode(duplicate, forKey: .duplicate) }
    }

    private enum CodingKeys: String, CodingKey { case name, priority, match, strategy, sla, enabled, description, duplicate }

    /// Names are short identifiers that are safe in nft comments, set names and log lines.
    public static func isValidName(_ name: some StringProtocol) -> Bool {
        (1...32).contains(name.count) && name.first!.isLetter
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
    }

    public static let priorityRange = 1...65535

    /// Checks everything the types cannot: name form, priority range, DSCP range, SLA values.
    public func validate() throws(PolicyError) {
        guard Policy.isValidName(name) else { throw .invalidName(name) }
        guard Policy.priorityRange.contains(priority) else { throw .invalidPriority(name: name, priority) }
        for code in match.dscp where code > 63 { throw .invalidDSCP(name: name, code) }
        for (field, value) in [("max latency", sla.maxLatencyMs), ("max jitter", sla.maxJitterMs)] {
            if let value, !(value.isFinite && value > 0 && value <= 60_000) {
                throw .invalidSLA(name: name, "\(field) \(value) ms is not in (0, 60000]")
            }
        }
        if let loss = sla.maxLossPct, !(loss.isFinite && loss >= 0 && loss <= 100) {
            throw .invalidSLA(name: name, "max loss \(loss)% is not in [0, 100]")
        }
        for service in match.services where service.ports.count > 4096 {
            throw .tooLarge(name: name, "\(service.ports.count) port ranges (at most 4096)")
        }
    }
}

/// Why a policy was refused. Each message names the field and what is accepted.
public enum PolicyError: Error, Equatable, CustomStringConvertible {
    case invalidName(String)
    case invalidPriority(name: String, Int)
    case invalidDSCP(name: String, UInt8)
    case invalidSLA(name: String, String)
    case tooLarge(name: String, String)
    case duplicateName(String)

    public var description: String {
        switch self {
        case .invalidName(let name):
            "policy name '\(name)' is invalid: use 1-32 letters, digits, '-' or '_', starting with a letter"
        case .invalidPriority(let name, let priority):
            "policy '\(name)': priority \(priority) is not in \(Policy.priorityRange.lowerBound)-\(Policy.priorityRange.upperBound)"
        case .invalidDSCP(let name, let code):
            "policy '\(name)': DSCP \(code) is not in 0-63"
        case .invalidSLA(let name, let detail):
            "policy '\(name)': \(detail)"
        case .tooLarge(let name, let detail):
            "policy '\(name)': \(detail)"
        case .duplicateName(let name):
            "a policy named '\(name)' already exists"
        }
    }
}

import Foundation
import Model
import Store

/// `explain`'s answer: the class a flow gets, the site, the kernel's way through our table to the path mark,
/// the routing table, ip rule and interface the kernel picks for it, the database's path and the reason,
/// with every path's figures. Its JSON form (`explain --json`) uses snake_case keys like `status --json`.
public struct FlowExplanation: Codable, Hashable, Sendable {
    public struct FlowSummary: Codable, Hashable, Sendable {
        public var source: String
        public var destination: String
        public var `protocol`: String?
        public var port: Int?
        public var dscp: Int

        init(_ flow: Flow) {
            source = flow.source.description
            destination = flow.destination.description
            `protocol` = flow.proto?.description
            port = flow.port.map(Int.init)
            dscp = Int(flow.dscp)
        }
    }

    public struct SiteSummary: Codable, Hashable, Sendable {
        public var id: String
        public var name: String
        /// The announced prefix that holds the destination.
        public var prefix: String
    }

    /// What the kernel does with the flow's packets.
    public struct KernelPath: Codable, Hashable, Sendable {
        /// The chain the `sites` map sends the destination to.
        public var siteChain: String
        /// For a load-balanced class: the hashing chain, the flow's bucket and the number of buckets.
        public var balanceChain: String?
        public var bucket: Int?
        public var bucketCount: Int?
        /// The chain that marks (and counts) the class's packets on the path.
        public var pathChain: String
        public var mark: String?
        /// The ct mark the flow carries once classified (site index . class . bucket), the key of the `flows`
        /// map that steers its later packets; nil when the site has no index (they take the first packet's way).
        public var flowKey: String?
        /// The chain that `flows` element goes to (nil: no element, the later packets take the first one's way).
        public var establishedChain: String?
        public var table: UInt32?
        /// Our ip rule that sends the mark to `table`.
        public var rule: String?
        /// The interface the kernel's route leaves by (the path's tunnel).
        public var interface: String?
        public var gateway: String?
    }

    public var flow: FlowSummary
    public var site: SiteSummary
    /// The policy (class) the flow gets.
    public var policy: String?
    public var strategy: String?
    /// The conntrack mark value of the class.
    public var classMark: String?
    public var kernel: KernelPath?
    /// The database's path whose tunnel the kernel's route leaves by.
    public var path: StatusSnapshot.Path?
    public var reason: String = ""
    public var winner: String?
    public var runnerUp: String?
    /// Every path to the site with its latest figures.
    public var candidates: [StatusSnapshot.Path] = []
    /// Whether the class duplicates (`policy --duplicate`); nil when it does not.
    public var duplicate: Bool?
    /// For a duplicated class: the second path the kernel copies the flow's packets to now; nil when nothing
    /// is copied (one usable path, or no other may carry copies).
    public var copy: StatusSnapshot.CopyTarget?
    /// Where the kernel and the database disagree (empty when they agree).
    public var disagreements: [String] = []

    init(flow: FlowSummary, site: SiteSummary) {
        self.flow = flow
        self.site = site
    }

    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try! encoder.encode(self), as: UTF8.self) + "\n"
    }

    /// The human form: a few labelled lines, then the paths' figures.
    public func report() -> String {
        var service = flow.protocol.map { p in flow.port.map { "\(p) \($0)" } ?? p } ?? "any protocol"
        if flow.dscp != 0 { service += " dscp \(flow.dscp)" }
        var lines = ["\(flow.destination) \(service) from \(flow.source)"]
        func add(_ label: String, _ text: String) { lines.append("  " + label.padding(toLength: 8, withPad: " ", startingAt: 0) + text) }
        add("class", "\(policy ?? "-") (\(strategy ?? "-"), ct mark \(classMark ?? "-"))")
        add("site", "\(site.name) (\(site.id)), prefix \(site.prefix)")
        if let path {
            add("path", "\(path.id) \(path.name ?? "") (\(path.status)): tunnel \(path.wgInterface), uplink "
                + "\(path.localUplink) (\(path.localLabel)), remote \(path.remoteEndpoint)")
        } else {
            add("path", "none of the database's paths")
        }
        if let k = kernel {
            var way = "sites -> \(k.siteChain)"
            if let chain = k.balanceChain { way += " -> \(chain) bucket \(k.bucket ?? 0)/\(k.bucketCount ?? 0)" }
            way += " -> \(k.pathChain): mark \(k.mark ?? "none")"
            add("kernel", way)
            if let key = k.flowKey {
                add("later", "ct mark \(key) -> flows -> \(k.establishedChain ?? "no element: the first packet's way again")")
            } else {
                add("later", "the first packet's way again (\(site.name) has no index in the ct mark)")
            }
            add("route", "ip rule \(k.rule ?? "(none of ours matches)") -> table \(k.table.map(String.init) ?? "?")"
                + " -> dev \(k.interface ?? "?")\(k.gateway.map { " via \($0)" } ?? "")")
        }
        if duplicate == true {
            add("copy", copy.map { "each packet also by \($0.text); \(site.name) drops the second to arrive" }
                ?? "none now: class \(policy ?? "-") duplicates, but no second usable path to \(site.name) may carry copies")
        }
        add("why", reason)
        for disagreement in disagreements { add("!", disagreement) }
        lines.append("  paths to \(site.name):")
        lines.append("    " + ["id", "path", "status", "latency", "jitter", "loss", "bandwidth", "score"]
            .enumerated().map { $1.padding(toLength: [4, 18, 9, 10, 9, 8, 16, 6][$0], withPad: " ", startingAt: 0) }
            .joined().trimmingCharacters(in: .whitespaces))
        for p in candidates {
            func n(_ v: Double?, _ unit: String) -> String { v.map { StatusSnapshot.formatNumber($0) + unit } ?? "n/a" }
            let cells = ["\(p.id)", p.name ?? "", p.status, n(p.latencyMs, " ms"), n(p.jitterMs, " ms"),
                         n(p.packetLossPct, " %"), n(p.bandwidthMbps, " Mbit/s"), n(p.score, "")]
            let row = cells.enumerated().map { $1.padding(toLength: [4, 18, 9, 10, 9, 8, 16, 6][$0], withPad: " ", startingAt: 0) }
                .joined().trimmingCharacters(in: .whitespaces)
            lines.append("  \(p.id == path?.id ? "*" : " ") " + row)
        }
        return lines.joined(separator: "\n") + "\n"
    }
}

import Foundation

extension StatusSnapshot {
    /// Which path one class takes to one remote site now, as the kernel's steering table says (not the
    /// daemon's memory), with why: the figure that won and the runner-up's.
    public struct ClassSteering: Codable, Hashable, Sendable {
        public var site: String
        public var siteName: String
        /// The policy (class) name.
        public var policy: String
        public var strategy: String
        /// The path the kernel sends the class by; one per distinct path of a load-balanced class.
        public var paths: [SteeredPath]
        /// The strategy's figure of the (first) path in use, e.g. "latency 1.2 ms".
        public var winner: String?
        /// The best other usable path and its figure, e.g. "path 3 isp-b->east: latency 16.3 ms".
        public var runnerUp: String?
        public var reason: String
        /// Set when the kernel and the database (or the daemon's last recorded decision) disagree.
        public var disagreement: String?
        /// For a duplicated class: per path to the site, the copies this site sent by it and the second
        /// copies that arrived by it and were dropped (nft counters). Nil for other classes.
        public var duplication: [DuplicationCounters]?
        /// For a duplicated class: per path the class takes, the path its packets are copied to now (the copy
        /// table's `copies` map); empty when nothing is copied (one usable path, or the others may not carry
        /// copies). Nil for other classes.
        public var copies: [CopyTarget]?

        public init(site: String, siteName: String, policy: String, strategy: String, paths: [SteeredPath],
                    winner: String?, runnerUp: String?, reason: String, disagreement: String?) {
            self.site = site
            self.siteName = siteName
            self.policy = policy
            self.strategy = strategy
            self.paths = paths
            self.winner = winner
            self.runnerUp = runnerUp
            self.reason = reason
            self.disagreement = disagreement
        }
    }

    /// A duplicated class's counters on one path (docs/STEERING.md, "Duplication").
    public struct DuplicationCounters: Codable, Hashable, Sendable {
        public var pathId: Int64
        public var name: String?
        /// Copies of the class's packets this site sent by the path (nil: no copy chain, the tunnel is missing).
        public var copiesSent: UInt64?
        /// Second copies of the class's packets that arrived by the path and were dropped.
        public var duplicatesDropped: UInt64?

        public init(pathId: Int64, name: String?, copiesSent: UInt64?, duplicatesDropped: UInt64?) {
            self.pathId = pathId
            self.name = name
            self.copiesSent = copiesSent
            self.duplicatesDropped = duplicatesDropped
        }
    }

    /// Where the kernel copies a duplicated class's packets that leave by one path.
    public struct CopyTarget: Codable, Hashable, Sendable {
        /// The path the packets take (nil when its chain routes to no path of the site).
        public var fromPathId: Int64?
        /// The second path, which carries the copies (nil when the copy chain names no path of the site).
        public var pathId: Int64?
        public var name: String?
        /// The egress table's chain that makes the copies (`copy_<class>_path<id>`).
        public var chain: String
        /// Copies it has sent (its counter).
        public var copiesSent: UInt64?

        public init(fromPathId: Int64?, pathId: Int64?, name: String?, chain: String, copiesSent: UInt64?) {
            self.fromPathId = fromPathId
            self.pathId = pathId
            self.name = name
            self.chain = chain
            self.copiesSent = copiesSent
        }

        /// "path 3 isp-b->east (copy_voip_path3, 1234 copies sent)".
        public var text: String {
            let name = pathId.map { "path \($0) \(self.name ?? "")" } ?? "no path of the site"
            return "\(name) (\(chain)\(copiesSent.map { ", \($0) copies sent" } ?? ""))"
        }
    }

    /// One path a class leaves by, as the kernel routes it.
    public struct SteeredPath: Codable, Hashable, Sendable {
        /// The `paths` row the tunnel interface belongs to; nil when none does (a disagreement).
        public var pathId: Int64?
        public var name: String?
        /// The chain that marks the class's packets for this path (its counters count them).
        public var chain: String
        /// The packet mark that chain writes, "0x00020000".
        public var mark: String
        /// The routing table the kernel's ip rules pick for that mark, and the interface its route leaves by.
        public var table: UInt32?
        public var interface: String?
        /// Buckets of a load-balanced class that take this path (of `bucketCount`).
        public var buckets: Int?
        public var bucketCount: Int?

        public init(pathId: Int64?, name: String?, chain: String, mark: String, table: UInt32?, interface: String?,
                    buckets: Int? = nil, bucketCount: Int? = nil) {
            self.pathId = pathId
            self.name = name
            self.chain = chain
            self.mark = mark
            self.table = table
            self.interface = interface
            self.buckets = buckets
            self.bucketCount = bucketCount
        }
    }

    /// The report's steering lines (after the paths): per site, per class, the path in use and why.
    func steeringReport() -> [String] {
        if let steeringError { return ["", "Steering (kernel): \(steeringError)"] }
        guard let steering else { return [] }
        var lines = ["", "Steering now (read from the kernel): \(steering.count) class routes, "
                     + "\(steeringDisagreements ?? 0) disagreeing with the database"]
        var site: String?
        for entry in steering {
            if entry.site != site {
                lines.append("  to \(entry.siteName):")
                site = entry.site
            }
            let paths = entry.paths.map { path in
                let name = path.pathId.map { "path \($0) \(path.name ?? "")" } ?? "no path (\(path.interface ?? "no route"))"
                let share = path.buckets.map { " [\($0)/\(path.bucketCount ?? 0) buckets]" } ?? ""
                return name + share
            }.joined(separator: ", ")
            lines.append("    \(entry.policy) -> \(paths.isEmpty ? "not steered" : paths): \(entry.reason)")
            if let copies = entry.copies {
                lines.append("      duplicated: " + (copies.isEmpty ? "nothing copied now (no second usable path may carry copies)"
                    : "each packet also by " + copies.map(\.text).joined(separator: "; ")))
            }
            if let disagreement = entry.disagreement { lines.append("      ! \(disagreement)") }
        }
        return lines
    }
}

import Foundation
import GRDB
import Model

/// One switch of a class's traffic from one path to another, as `failover_events` keeps it.
public struct FailoverEvent: Hashable, Sendable {
    public var time: Date
    /// The policy (application class) whose traffic moved.
    public var policy: String
    public var destination: SiteID?
    public var fromPath: PathID?
    public var toPath: PathID?
    public var reason: String
    /// From the first bad probe to the decision.
    public var detectionMs: Double?
    /// From the decision to the kernel acking the map update.
    public var switchMs: Double?

    public init(time: Date = Date(), policy: String, destination: SiteID? = nil, fromPath: PathID?, toPath: PathID?,
                reason: String, detectionMs: Double? = nil, switchMs: Double? = nil) {
        self.time = time
        self.policy = policy
        self.destination = destination
        self.fromPath = fromPath
        self.toPath = toPath
        self.reason = reason
        self.detectionMs = detectionMs
        self.switchMs = switchMs
    }
}

extension Store {
    public func recordFailover(_ event: FailoverEvent) throws(StoreError) {
        try write("record a failover event") { db in try insert(event, db) }
    }

    private func insert(_ event: FailoverEvent, _ db: Database) throws {
        try db.execute(sql: """
            INSERT INTO failover_events (time, policy, dst_site, from_path, to_path, reason, detection_ms, switch_ms)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [event.time.utcText, event.policy, event.destination?.description, event.fromPath,
                             event.toPath, event.reason, event.detectionMs, event.switchMs])
    }

    /// Records several events in one transaction, naming paths by key (as the failover loop does); a key
    /// without a row (a path already removed) is stored as NULL rather than failing the batch.
    public func recordFailovers(_ events: [(event: FailoverEvent, from: PathKey?, to: PathKey?)]) throws(StoreError) {
        guard !events.isEmpty else { return }
        try write("record \(events.count) failover events") { db in
            for (event, from, to) in events { try insert(event, from: from, to: to, db) }
        }
    }

    func insert(_ event: FailoverEvent, from: PathKey?, to: PathKey?, _ db: Database) throws {
        var resolved = event
        resolved.destination = event.destination ?? from?.site ?? to?.site
        resolved.fromPath = try from.flatMap { try Store.pathID(of: $0, db) } ?? event.fromPath
        resolved.toPath = try to.flatMap { try Store.pathID(of: $0, db) } ?? event.toPath
        try insert(resolved, db)
    }

    /// The newest events first, at most `limit`; with `since`, only those at or after it (one range of the
    /// failover_events_by_time index).
    public func failoverEvents(limit: Int = 100, since: Date? = nil) throws(StoreError) -> [FailoverEvent] {
        try read("read failover events") { db in
            try Row.fetchAll(db, sql: "SELECT * FROM failover_events WHERE time >= ? ORDER BY time DESC, id DESC LIMIT ?",
                             arguments: [since.map(UTCTime.format) ?? "", limit]).map { row in
                let timeText: String = row["time"]
                guard let time = UTCTime.parse(timeText) else {
                    throw StoreError.malformedRow(table: "failover_events", row: "\(row["id"] as Int64)",
                                                  column: "time", value: timeText)
                }
                return FailoverEvent(time: time, policy: row["policy"],
                                     destination: (row["dst_site"] as String?).flatMap(SiteID.init),
                                     fromPath: row["from_path"], toPath: row["to_path"], reason: row["reason"],
                                     detectionMs: row["detection_ms"], switchMs: row["switch_ms"])
            }
        }
    }
}

import Foundation
import GRDB
import Model

/// The id of a row in `paths`; `path_metrics.path_id` and failover events refer to it.
public typealias PathID = Int64

/// One row of `paths`: a local uplink paired with a remote endpoint, carried by a WireGuard interface.
public struct PathRecord: Hashable, Sendable {
    public var id: PathID
    public var source: SiteID
    public var destination: SiteID
    public var status: PathStatus
    public var wgInterface: String
    /// nil until the prober has scored the path.
    public var score: Double?
    public var localUplink: Uplink
    public var remoteEndpoint: Endpoint
    public var updatedAt: Date
    /// The kernel slot while the path is planned (mark `slot << 16`, table 6200 + slot); nil otherwise.
    public var slot: UInt16?
    /// Relayed: the name of the site the path goes through (docs/MESH.md "Relayed paths"); nil: direct.
    public var relayVia: String? = nil

    /// The path's stable name (destination, local label, remote label), the same one routing uses.
    public var key: PathKey {
        PathKey(site: destination, localLabel: localUplink.label, remoteLabel: remoteEndpoint.label)
    }
}

/// One `path_metrics` row to insert.
public struct MetricsSample: Hashable, Sendable {
    public var path: PathID
    public var metrics: PathMetrics
    public var measuredAt: Date

    public init(path: PathID, metrics: PathMetrics, measuredAt: Date = Date()) {
        self.path = path
        self.metrics = metrics
        self.measuredAt = measuredAt
    }
}

extension Store {
    /// Inserts or refreshes the path from the local site over `uplink` to `endpoint` of site `destination`,
    /// keyed like `PathKey` by (destination, uplink label, endpoint label), and returns its id, stable across
    /// calls; the uplink's interface and the endpoint's address are refreshed.
    /// A new path starts `down` with no score; an existing one keeps its status and score.
    public func upsertPath(to destination: SiteID, uplink: Uplink, endpoint: Endpoint, wgInterface: String,
                           relayVia: String? = nil, now: Date = Date()) throws(StoreError) -> PathID {
        try write("record a path") { db in
            try upsertPath(to: destination, uplink: uplink, endpoint: endpoint, wgInterface: wgInterface,
                           relayVia: relayVia, now: now, db)
        }
    }

    /// `id`: the row id a new path gets (the daemon numbers paths itself, so it never waits for this write to
    /// learn it); nil lets SQLite choose. An existing path keeps its id.
    func upsertPath(to destination: SiteID, uplink: Uplink, endpoint: Endpoint, wgInterface: String,
                    relayVia: String? = nil, now: Date, id: PathID? = nil, _ db: Database) throws -> PathID {
        guard let local = try String.fetchOne(db, sql: "SELECT id FROM sites WHERE is_local = 1") else {
            throw StoreError.noLocalSite(path: path)
        }
        return try Int64.fetchOne(db, sql: """
            INSERT INTO paths (id, src_site, dst_site, status, wg_interface, local_uplink, local_label,
                               remote_label, remote_endpoint, updated_at, relay_via)
            VALUES (?, ?, ?, 'down', ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (dst_site, local_label, remote_label) DO UPDATE SET
                src_site = excluded.src_site, wg_interface = excluded.wg_interface,
                local_uplink = excluded.local_uplink, remote_endpoint = excluded.remote_endpoint,
                updated_at = excluded.updated_at, relay_via = excluded.relay_via
            RETURNING id
            """, arguments: [id, local, destination.description, wgInterface, uplink.interface, uplink.label,
                             endpoint.label, endpoint.address.description, now.utcText, relayVia])!
    }

    /// The row id of the path named `key`, if it has one.
    static func pathID(of key: PathKey, _ db: Database) throws -> PathID? {
        try PathID.fetchOne(db, sql: "SELECT id FROM paths WHERE dst_site = ? AND local_label = ? AND remote_label = ?",
                            arguments: [key.site.description, key.localLabel, key.remoteLabel])
    }

    /// Records the kernel slot of every planned path (`slots`) and clears it on every other path, in one
    /// transaction, so `SELECT id, slot FROM paths` maps marks and tables to paths at any moment.
    public func setPathSlots(_ slots: [PathID: UInt16]) throws(StoreError) {
        try write("record path slots") { db in try Store.setPathSlots(slots, db) }
    }

    static func setPathSlots(_ slots: [PathID: UInt16], _ db: Database) throws {
        try db.execute(sql: "UPDATE paths SET slot = NULL WHERE slot IS NOT NULL")
        for (id, slot) in slots {
            try db.execute(sql: "UPDATE paths SET slot = ? WHERE id = ?", arguments: [Int64(slot), id])
        }
    }

    public func setPathStatus(_ id: PathID, status: PathStatus, score: Double?, now: Date = Date()) throws(StoreError) {
        try write("set path status") { db in try setPathStatus(id, status: status, score: score, now: now, db) }
    }

    func setPathStatus(_ id: PathID, status: PathStatus, score: Double?, now: Date, _ db: Database) throws {
        try db.cachedStatement(sql: "UPDATE paths SET status = ?, score = ?, updated_at = ? WHERE id = ?")
            .execute(arguments: [status.rawValue, score, now.utcText, id])
        guard db.changesCount == 1 else {
            throw StoreError.sql(path: path, operation: "set path status", message: "no path with id \(id)")
        }
    }

    /// A path's status and its measurements at one moment: `paths` (status, score) and a new `path_metrics`
    /// row written in ONE transaction, so a reader (the status report, the dashboard) never sees a status
    /// from one moment beside a score or loss from another.
    public func recordPathStates(_ states: [(path: PathID, status: PathStatus, metrics: PathMetrics)],
                                 now: Date = Date()) throws(StoreError) {
        guard !states.isEmpty else { return }
        try write("record \(states.count) path states") { db in
            let update = try db.cachedStatement(sql: "UPDATE paths SET status = ?, score = ?, updated_at = ? WHERE id = ?")
            for state in states {
                try update.execute(arguments: [state.status.rawValue, state.metrics.score, now.utcText, state.path])
            }
            try Store.insertMetrics(states.map { MetricsSample(path: $0.path, metrics: $0.metrics, measuredAt: now) }, db)
        }
    }

    /// Removes a path and, by cascade, its metrics; failover events keep their row with the path unset.
    public func removePath(_ id: PathID) throws(StoreError) {
        try write("remove a path") { db in try db.execute(sql: "DELETE FROM paths WHERE id = ?", arguments: [id]) }
    }

    public func paths() throws(StoreError) -> [PathRecord] {
        try read("read paths") { db in try Row.fetchAll(db, sql: "SELECT * FROM paths ORDER BY id").map(Store.path) }
    }

    /// The row id of every path by its key, for callers that name paths by `PathKey`.
    public func pathIDs() throws(StoreError) -> [PathKey: PathID] {
        Dictionary(try paths().map { ($0.key, $0.id) }, uniquingKeysWith: { first, _ in first })
    }

    // MARK: Metrics

    /// Inserts every sample in ONE transaction (one fsync-free WAL commit), so the prober can flush a
    /// second's worth of measurements for all paths at once.
    public func insertMetrics(_ samples: [MetricsSample]) throws(StoreError) {
        guard !samples.isEmpty else { return }
        try write("insert \(samples.count) metrics rows") { db in try Store.insertMetrics(samples, db) }
    }

    static func insertMetrics(_ samples: [MetricsSample], _ db: Database) throws {
        let statement = try db.cachedStatement(sql: """
            INSERT INTO path_metrics (path_id, latency_ms, jitter_ms, packet_loss_pct, bandwidth_mbps, score,
                                      measured_at, throughput_tx_mbps, throughput_rx_mbps, download_bandwidth_mbps)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        for sample in samples {
            let m = sample.metrics
            try statement.execute(arguments: [sample.path, m.latencyMs, m.jitterMs, m.lossPct, m.bandwidthMbps,
                                              m.score, sample.measuredAt.utcText, m.throughputTxMbps,
                                              m.throughputRxMbps, m.downloadBandwidthMbps])
        }
    }

    /// Deletes metrics rows measured before `now - retention`; returns how many went. Works in chunks of
    /// `chunk` rows, one short transaction each, so a large backlog never holds the write lock for long
    /// (measured: 128k rows in one transaction held it 0.74 s, about 30 ms per 5000 rows at that rate).
    @discardableResult
    public func pruneMetrics(retention: TimeInterval = Store.defaultMetricsRetention, now: Date = Date(),
                             chunk: Int = 5000) throws(StoreError) -> Int {
        let cutoff = now.addingTimeInterval(-retention).utcText
        var total = 0
        while true {
            let removed = try write("prune metrics") { db in
                try db.execute(sql: """
                    DELETE FROM path_metrics WHERE id IN
                        (SELECT id FROM path_metrics WHERE measured_at < ? LIMIT ?)
                    """, arguments: [cutoff, max(chunk, 1)])
                return db.changesCount
            }
            total += removed
            if removed < max(chunk, 1) { return total }
        }
    }

    /// One index lookup per path (path_metrics_by_path), not a scan of every metrics row: the cost stays
    /// flat as a week of samples accumulates.
    static let latestMetricsSQL = """
        SELECT m.* FROM paths p
        JOIN path_metrics m ON m.id = (SELECT id FROM path_metrics WHERE path_id = p.id
                                       ORDER BY measured_at DESC, id DESC LIMIT 1)
        """

    /// The newest sample of each path that has one.
    public func latestMetrics() throws(StoreError) -> [PathID: MetricsSample] {
        try read("read latest metrics") { db in
            let rows = try Row.fetchAll(db, sql: Store.latestMetricsSQL)
            var result: [PathID: MetricsSample] = [:]
            for row in rows {
                let sample = try Store.sample(row)
                result[sample.path] = sample
            }
            return result
        }
    }

    /// Samples of one path, newest first.
    public func metrics(of path: PathID, limit: Int = 100) throws(StoreError) -> [MetricsSample] {
        try read("read metrics") { db in
            try Row.fetchAll(db, sql: """
                SELECT * FROM path_metrics WHERE path_id = ? ORDER BY measured_at DESC, id DESC LIMIT ?
                """, arguments: [path, limit]).map(Store.sample)
        }
    }

    public func metricsCount() throws(StoreError) -> Int {
        try read("count metrics") { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM path_metrics") ?? 0 }
    }

    static func path(_ row: Row) throws -> PathRecord {
        let id: Int64 = row["id"]
        func bad(_ column: String, _ value: String) -> StoreError {
            .malformedRow(table: "paths", row: "\(id)", column: column, value: value)
        }
        func text(_ column: String) -> String { row[column] ?? "" }
        guard let source = SiteID(text("src_site")) else { throw bad("src_site", text("src_site")) }
        guard let destination = SiteID(text("dst_site")) else { throw bad("dst_site", text("dst_site")) }
        guard let status = PathStatus(rawValue: text("status")) else { throw bad("status", text("status")) }
        guard let address = SocketAddress4(text("remote_endpoint")) else {
            throw bad("remote_endpoint", text("remote_endpoint"))
        }
        guard let updated = UTCTime.parse(text("updated_at")) else { throw bad("updated_at", text("updated_at")) }
        return PathRecord(id: id, source: source, destination: destination, status: status,
                          wgInterface: text("wg_interface"), score: row["score"],
                          localUplink: Uplink(interface: text("local_uplink"), label: text("local_label")),
                          remoteEndpoint: Endpoint(label: text("remote_label"), address: address), updatedAt: updated,
                          slot: (row["slot"] as Int64?).flatMap { UInt16(exactly: $0) }, relayVia: row["relay_via"])
    }

    static func sample(_ row: Row) throws -> MetricsSample {
        let measured: String = row["measured_at"]
        guard let date = UTCTime.parse(measured) else {
            throw StoreError.malformedRow(table: "path_metrics", row: "\(row["id"] as Int64)", column: "measured_at",
                                          value: measured)
        }
        return MetricsSample(path: row["path_id"],
                             metrics: PathMetrics(latencyMs: row["latency_ms"], jitterMs: row["jitter_ms"],
                                                  lossPct: row["packet_loss_pct"], bandwidthMbps: row["bandwidth_mbps"],
                                                  score: row["score"], throughputTxMbps: row["throughput_tx_mbps"],
                                                  throughputRxMbps: row["throughput_rx_mbps"],
                                                  downloadBandwidthMbps: row["download_bandwidth_mbps"]),
                             measuredAt: date)
    }
}

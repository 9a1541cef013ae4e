import Foundation
import GRDB
import Model

/// One point of a path's history: the averages of the `path_metrics` rows in one time bucket.
public struct MetricsPoint: Hashable, Sendable {
    /// The bucket's start.
    public var time: Date
    public var latencyMs: Double?
    public var jitterMs: Double?
    public var lossPct: Double?
    public var score: Double?
    /// The newest receiver-measured bandwidth in the bucket (a test result, not an average).
    public var bandwidthMbps: Double?
    public var throughputTxMbps: Double?
    public var throughputRxMbps: Double?
}

extension Store {
    /// A path's metrics since `since`, averaged per `bucketSeconds` (oldest first), so a chart of any span has
    /// a bounded number of points. One range scan of the path_metrics_by_path index.
    public func metricsHistory(of path: PathID, since: Date, bucketSeconds: Int) throws(StoreError) -> [MetricsPoint] {
        let bucket = max(1, bucketSeconds)
        return try read("read the metrics history of path \(path)") { db in
            try Row.fetchAll(db, sql: """
                SELECT (CAST(strftime('%s', measured_at) AS INTEGER) / ?) * ? AS bucket,
                       avg(latency_ms) AS latency, avg(jitter_ms) AS jitter, avg(packet_loss_pct) AS loss,
                       avg(score) AS score, max(bandwidth_mbps) AS bandwidth,
                       avg(throughput_tx_mbps) AS tx, avg(throughput_rx_mbps) AS rx
                FROM path_metrics WHERE path_id = ? AND measured_at >= ?
                GROUP BY bucket ORDER BY bucket
                """, arguments: [bucket, bucket, path, since.utcText]).map { row in
                MetricsPoint(time: Date(timeIntervalSince1970: TimeInterval(row["bucket"] as Int64)),
                             latencyMs: row["latency"], jitterMs: row["jitter"], lossPct: row["loss"],
                             score: row["score"], bandwidthMbps: row["bandwidth"], throughputTxMbps: row["tx"],
                             throughputRxMbps: row["rx"])
            }
        }
    }
}

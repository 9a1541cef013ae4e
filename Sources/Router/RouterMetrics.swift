import Model
import Prometheus
import Steering
import Store
import Synchronization

/// One path as the metrics endpoint shows it.
public struct PathSample: Hashable, Sendable {
    /// The path's id (`paths.id`, the `<class>_path<id>` chains): the `path_id` label.
    public var pathID: Int64
    public var path: String
    public var site: String
    public var uplink: String
    public var status: PathStatus
    public var metrics: PathMetrics?
    /// Cumulative bytes through the path's tunnel peer, as WireGuard counts them.
    public var transmitBytes: UInt64
    public var receiveBytes: UInt64
    /// Relayed: the name of the site the path goes through; nil: direct.
    public var relayVia: String?

    public init(pathID: Int64, path: String, site: String, uplink: String, status: PathStatus, metrics: PathMetrics?,
                transmitBytes: UInt64, receiveBytes: UInt64, relayVia: String? = nil) {
        self.pathID = pathID
        self.path = path
        self.site = site
        self.uplink = uplink
        self.status = status
        self.metrics = metrics
        self.transmitBytes = transmitBytes
        self.receiveBytes = receiveBytes
        self.relayVia = relayVia
    }
}

/// What our nft counters saw for one traffic class on one path (the `<class>_path<id>` chain), whether
/// or not the class is on that path now.
public struct ClassSample: Hashable, Sendable {
    public var policy: String
    public var site: String
    public var pathID: Int64
    public var path: String
    public var packets: UInt64
    public var bytes: UInt64
    /// Duplicated classes: copies this site sent by the path (`copy_<class>_path<id>` in `ip patronus_egress`).
    /// Nil for classes that do not duplicate.
    public var copiesSent: UInt64?
    /// Duplicated classes: second copies that arrived by the path and were dropped (`<class>_dup<id>`).
    public var duplicatesDropped: UInt64?

    public init(policy: String, site: String, pathID: Int64, path: String, packets: UInt64, bytes: UInt64,
                copiesSent: UInt64? = nil, duplicatesDropped: UInt64? = nil) {
        self.copiesSent = copiesSent
        self.duplicatesDropped = duplicatesDropped
        self.policy = policy
        self.site = site
        self.pathID = pathID
        self.path = path
        self.packets = packets
        self.bytes = bytes
    }
}

/// The path a policy's traffic to a site takes now (one sample per path when the policy balances).
public struct SelectionSample: Hashable, Sendable {
    public var policy: String
    public var site: String
    public var pathID: Int64
    public var path: String
    /// A duplicated class: the path its packets on `path` are also copied to; nil when nothing is copied.
    public var copyPath: String?

    public init(policy: String, site: String, pathID: Int64, path: String, copyPath: String? = nil) {
        self.policy = policy
        self.site = site
        self.pathID = pathID
        self.path = path
        self.copyPath = copyPath
    }
}

/// An uplink that other sites see behind a NAT: the public mapping this site announces for it.
public struct PublicMappingSample: Hashable, Sendable {
    public var uplink: String
    public var mapping: String
    /// How many sites observed it.
    public var observers: Int

    public init(uplink: String, mapping: String, observers: Int) {
        self.uplink = uplink
        self.mapping = mapping
        self.observers = observers
    }
}

/// Everything the exporter publishes, taken in one piece so a scrape never sees half an update.
public struct RouterSample: Sendable {
    public var paths: [PathSample] = []
    public var classes: [ClassSample] = []
    public var selections: [SelectionSample] = []
    public var failovers: UInt64 = 0
    /// Announced prefixes refused because they overlap an earlier holder's (docs/MESH.md).
    public var prefixConflicts = 0
    /// Days until this site's certificate expires; nil without one.
    public var certificateDaysLeft: Double?
    /// Our uplinks behind NAT, with the public mapping we announce.
    public var publicMappings: [PublicMappingSample] = []
    /// (component, reason) -> dropped datagrams, e.g. ("discovery", "bad-mac").
    public var drops: [DropKey: UInt64] = [:]
    /// The database writer's counts.
    public var storeWrites = StoreWriter.Statistics()
    /// Every shaped tunnel (docs/SHAPING.md).
    public var shapers: [ShaperSample] = []
    /// Packets another member tried to route through us between two of our tunnels, refused (a site that
    /// does not relay; docs/MESH.md "Relayed paths"); nil on a relay or without the nft counters.
    public var transitRefused: UInt64?

    public struct DropKey: Hashable, Sendable {
        public var component: String
        public var reason: String
        public init(component: String, reason: String) {
            self.component = component
            self.reason = reason
        }
    }

    public init() {}
}

/// Turns router samples into Prometheus series. Gauges for levels; counters for kernel and WireGuard counts,
/// advanced by the difference between two readings (a reading that went backwards, after a table or tunnel
/// was recreated, counts from zero). Series of paths and classes that disappear are unregistered.
public final class RouterMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    // The daemon updates under this lock; the HTTP handler only reads the registry, which locks itself.
    private let series = Mutex(Series())

    private struct Series: ~Copyable {
        var gauges: [String: Gauge] = [:]
        var counters: [String: (counter: Counter, last: UInt64)] = [:]
    }

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
    }

    public func update(_ sample: RouterSample) {
        series.withLock { (series: inout Series) in
            var seenGauges = Set<String>()
            var seenCounters = Set<String>()
            func gauge(_ name: String, _ help: String, _ labels: [(String, String)], _ value: Double) {
                let id = Self.identity(name, labels)
                seenGauges.insert(id)
                let g = series.gauges[id] ?? registry.makeGauge(descriptor: Self.descriptor(name, help), labels: labels)
                series.gauges[id] = g
                g.set(value)
            }
            func counter(_ name: String, _ help: String, _ labels: [(String, String)], _ absolute: UInt64) {
                let id = Self.identity(name, labels)
                seenCounters.insert(id)
                var entry = series.counters[id] ?? (registry.makeCounter(descriptor: Self.descriptor(name, help), labels: labels), 0)
                let delta = absolute >= entry.last ? absolute - entry.last : absolute
                if delta > 0 { entry.counter.increment(by: Int64(clamping: delta)) }
                entry.last = absolute
                series.counters[id] = entry
            }

            for path in sample.paths {
                let labels = [("path_id", "\(path.pathID)"), ("path", path.path), ("site", path.site), ("uplink", path.uplink)]
                for status in PathStatus.allCases {
                    gauge("path_status", "1 for the path's current status (up, degraded, down)",
                          labels + [("status", status.rawValue)], path.status == status ? 1 : 0)
                }
                if let m = path.metrics {
                    gauge("path_latency_ms", "Round-trip time through the tunnel", labels, m.latencyMs)
                    gauge("path_jitter_ms", "Round-trip time variation", labels, m.jitterMs)
                    gauge("path_loss_percent", "Probe loss over the estimator window", labels, m.lossPct)
                    gauge("path_score", "Path score 0-100", labels, m.score)
                    if let bandwidth = m.bandwidthMbps {
                        gauge("path_bandwidth_mbps", "Receiver-measured bandwidth", labels, bandwidth)
                    }
                    if let download = m.downloadBandwidthMbps {
                        gauge("path_download_bandwidth_mbps", "The far site's bandwidth trains as they arrived here over the path",
                              labels, download)
                    }
                    if let tx = m.throughputTxMbps, let rx = m.throughputRxMbps {
                        gauge("path_throughput_mbps", "What the path's tunnel peer carried over the last 5-10 s (passive)",
                              labels + [("direction", "transmit")], tx)
                        gauge("path_throughput_mbps", "What the path's tunnel peer carried over the last 5-10 s (passive)",
                              labels + [("direction", "receive")], rx)
                    }
                }
                gauge("path_relayed", "1 when the path goes through a relay (label via: the relay's name), 0 when direct",
                      labels + [("via", path.relayVia ?? "")], path.relayVia == nil ? 0 : 1)
                counter("path_transmit_bytes_total", "Bytes sent to the path's tunnel peer", labels,
                        path.transmitBytes)
                counter("path_receive_bytes_total", "Bytes received from the path's tunnel peer", labels,
                        path.receiveBytes)
            }
            for selection in sample.selections {
                gauge("class_selected_path", "1 on the path a policy's traffic to a site takes",
                      [("policy", selection.policy), ("site", selection.site), ("path_id", "\(selection.pathID)"),
                       ("path", selection.path)], 1)
            }
            for cls in sample.classes {
                let labels = [("policy", cls.policy), ("site", cls.site), ("path_id", "\(cls.pathID)"), ("path", cls.path)]
                counter("class_packets_total", "Packets steered for the policy on the path (nft counter)", labels,
                        cls.packets)
                counter("class_bytes_total", "Bytes steered for the policy on the path (nft counter)", labels,
                        cls.bytes)
                if let copies = cls.copiesSent {
                    counter("class_copies_sent_total", "Duplicated policies: copies sent by the path (nft counter)", labels, copies)
                }
                if let dropped = cls.duplicatesDropped {
                    counter("class_duplicates_dropped_total",
                            "Duplicated policies: second copies that arrived by the path, dropped (nft counter)", labels, dropped)
                }
            }
            for shaper in sample.shapers {
                let labels = [("path_id", "\(shaper.pathID)"), ("path", shaper.path), ("uplink", shaper.uplink),
                              ("interface", shaper.interface), ("direction", shaper.direction)]
                gauge("shaper_rate_bits", "Shaper rate: upload of the path's tunnel, or download of the uplink (bit/s, encapsulation counted)", labels,
                      Double(shaper.rateBitsPerSecond))
                gauge("shaper_queue_delay_ms", "Time the packets waiting in the shaper need at its rate", labels, shaper.queueDelayMs)
                for band in shaper.bands {
                    let bandLabels = labels + [("band", band.band.rawValue)]
                    gauge("shaper_backlog_bytes", "Bytes waiting in the shaper's band", bandLabels, Double(band.backlogBytes))
                    counter("shaper_sent_bytes_total", "Bytes the shaper's band sent", bandLabels, band.sentBytes)
                    counter("shaper_drops_total", "Packets the band's bounded queue dropped", bandLabels, UInt64(band.drops))
                }
            }
            if let refused = sample.transitRefused {
                counter("transit_refused_packets_total",
                        "Packets that arrived by one of our tunnels and would have left by one, dropped: this site does not relay (nft counter)",
                        [], refused)
            }
            counter("failovers_total", "Selections moved to another path", [], sample.failovers)
            gauge("prefix_conflicts", "Announced prefixes refused: they overlap an earlier holder's", [],
                  Double(sample.prefixConflicts))
            if let days = sample.certificateDaysLeft {
                gauge("certificate_days_left", "Days until this site's certificate expires", [], days)
            }
            for mapping in sample.publicMappings {
                gauge("uplink_public_mapping",
                      "An uplink other sites see behind NAT: the public mapping announced for it (value: how many sites observed it)",
                      [("uplink", mapping.uplink), ("mapping", mapping.mapping)], Double(mapping.observers))
            }
            let store = sample.storeWrites
            counter("store_writes_total", "Rows the database writer committed", [], UInt64(store.written))
            counter("store_writes_coalesced_total", "Rows merged into a pending row of the same path or site (write queue full)",
                    [], UInt64(store.coalesced))
            counter("store_writes_refused_total", "Rows the database refused (logged)", [], UInt64(store.refused))
            counter("store_busy_retries_total", "Write attempts that found the database busy and were retried", [],
                    UInt64(store.retries))
            gauge("store_writes_pending", "Rows waiting for the database writer", [], Double(store.pending))
            for (key, count) in sample.drops {
                counter("dropped_datagrams_total", "Untrusted datagrams rejected, by reason",
                        [("component", key.component), ("reason", key.reason)], count)
            }

            for (id, g) in series.gauges where !seenGauges.contains(id) {
                registry.unregisterGauge(g)
                series.gauges[id] = nil
            }
            for (id, entry) in series.counters where !seenCounters.contains(id) {
                registry.unregisterCounter(entry.counter)
                series.counters[id] = nil
            }
        }
    }

    /// Our series all live in the `patronus_` namespace; `name` is the rest, unit included.
    private static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "patronus", metricName: name, unitName: "", helpText: help)
    }

    private static func identity(_ name: String, _ labels: [(String, String)]) -> String {
        name + "{" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
    }
}

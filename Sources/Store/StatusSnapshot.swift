import Foundation
import GRDB
import Model

/// Everything the status report shows, read in one transaction. Its JSON form (`status --json`) is a
/// stable, versioned schema documented in docs/STATUS-JSON.md: keys are snake_case like the database
/// columns, keys without a value are omitted, and `schema_version` grows only on incompatible changes.
public struct StatusSnapshot: Codable, Hashable, Sendable {
    public static let currentSchemaVersion = 1

    public struct Site: Codable, Hashable, Sendable {
        public var id: String
        public var name: String
        public var status: String
        public var lastSeen: String
        public var overlayAddress: String?
        public var lanPrefixes: [String]
        public var endpoints: [EndpointSummary]
    }

    public struct EndpointSummary: Codable, Hashable, Sendable {
        public var label: String
        public var address: String
        public var port: Int
        /// Local site only, behind NAT: the public mapping other sites observe ('address:port'), which the
        /// site announces instead, and the names of the sites that observed it.
        public var publicEndpoint: String?
        public var observedBy: [String]?
    }

    public struct PathCounts: Codable, Hashable, Sendable {
        public var total: Int
        public var up: Int
        public var degraded: Int
        public var down: Int
    }

    public struct Path: Codable, Hashable, Sendable {
        public var id: Int64
        /// How operators name the path (`isp-a->east`), as in /metrics and the logs.
        public var name: String?
        public var srcSite: String
        public var srcName: String
        public var dstSite: String
        public var dstName: String
        public var status: String
        public var wgInterface: String
        /// The kernel slot while the path is planned (mark `slot << 16`, table 6200 + slot).
        public var slot: UInt16?
        public var localUplink: String
        public var localLabel: String
        public var remoteLabel: String
        public var remoteEndpoint: String
        public var score: Double?
        public var latencyMs: Double?
        public var jitterMs: Double?
        public var packetLossPct: Double?
        public var bandwidthMbps: Double?
        /// The path's download: the far site's bandwidth trains as they arrived here (docs/SHAPING.md).
        public var downloadBandwidthMbps: Double? = nil
        public var throughputTxMbps: Double?
        public var throughputRxMbps: Double?
        public var measuredAt: String?
        /// Relayed: the name of the site the path goes through (docs/MESH.md "Relayed paths"); nil: direct.
        public var relayVia: String? = nil
    }

    public var schemaVersion: Int
    public var generatedAt: String
    public var localSite: Site?
    /// Remote sites whose status is active, by name.
    public var activeSites: [Site]
    public var inactiveSites: Int
    public var pathCounts: PathCounts
    public var paths: [Path]
    /// The highest-scoring scored path that is neither down nor losing every probe; nil when there is none.
    public var bestPath: Int64?
    /// The worst scored path: a down one first, then the lowest score.
    public var worstPath: Int64?
    /// Announced prefixes this site refused: they overlap an earlier holder's (docs/MESH.md).
    public var conflicts: [ConflictRecord]?
    /// This site's certificate, when it runs with one.
    public var certificate: CertificateSummary?
    /// Per remote site and class, the path the kernel sends it by now and why (`status` fills it from the
    /// kernel of the namespace it runs in; nil when not read).
    public var steering: [ClassSteering]? = nil
    /// How many of `steering`'s entries disagree with the database (0 when all agree).
    public var steeringDisagreements: Int? = nil
    /// Why the kernel's steering could not be read (no table in this namespace, no permission).
    public var steeringError: String? = nil
    /// Every shaped tunnel of this namespace, read from the kernel (docs/SHAPING.md); nil when not read.
    public var shaping: [Shaper]? = nil
    /// Why the shapers could not be read.
    public var shapingError: String? = nil
    /// Whether this site forwards between its tunnels, read from the kernel like `steering`; nil when not read.
    public var transit: Transit? = nil

    /// Transit between our tunnels (docs/MESH.md "Relayed paths"): a site that does not relay drops what
    /// another member routes through it from one of our tunnels into one of our tunnels.
    public struct Transit: Codable, Hashable, Sendable {
        /// "refused": the site chains drop what arrives by a tunnel for a remote site (a site without `--relay`);
        /// "forwarded": no such rule (a relay, or no tunnel yet).
        public var policy: String
        /// Packets refused since the rules were installed (their counters, summed); nil when forwarded.
        public var refusedPackets: UInt64?

        public init(policy: String, refusedPackets: UInt64?) {
            self.policy = policy
            self.refusedPackets = refusedPackets
        }

        /// The report's line.
        public var text: String {
            policy == "refused"
                ? "Transit between our tunnels: refused (not a relay), \(refusedPackets ?? 0) packets dropped"
                : "Transit between our tunnels: forwarded (a relay, run --relay; or no tunnel yet)"
        }
    }

    /// One tunnel's egress shaper as the kernel holds it.
    public struct Shaper: Codable, Hashable, Sendable {
        public var interface: String
        /// The path whose tunnel this is (by `paths.wg_interface`), when the database knows it.
        public var pathId: Int64?
        /// The queueing discipline in use: "htb" (this kernel has neither cake nor fq_codel).
        public var qdisc: String
        /// "upload" (a tunnel's egress) or "download" (an uplink's ifb: what arrives over its tunnels).
        public var direction: String
        /// The shaper's rate, bits per second, encapsulation overhead counted.
        public var rateBps: UInt64
        /// Time the packets waiting in all bands need at that rate.
        public var queueDelayMs: Double
        public var bands: [Band]

        public struct Band: Codable, Hashable, Sendable {
            /// realtime, standard or bulk.
            public var band: String
            public var sentBytes: UInt64
            public var sentPackets: UInt64
            public var backlogBytes: UInt32
            public var queuedPackets: UInt32
            public var drops: UInt32

            public init(band: String, sentBytes: UInt64, sentPackets: UInt64, backlogBytes: UInt32, queuedPackets: UInt32,
                        drops: UInt32) {
                self.band = band
                self.sentBytes = sentBytes
                self.sentPackets = sentPackets
                self.backlogBytes = backlogBytes
                self.queuedPackets = queuedPackets
                self.drops = drops
            }
        }

        public init(interface: String, pathId: Int64?, qdisc: String, direction: String = "upload", rateBps: UInt64,
                    queueDelayMs: Double, bands: [Band]) {
            self.direction = direction
            self.interface = interface
            self.pathId = pathId
            self.qdisc = qdisc
            self.rateBps = rateBps
            self.queueDelayMs = queueDelayMs
            self.bands = bands
        }
    }

    public struct CertificateSummary: Codable, Hashable, Sendable {
        public var serial: String
        public var issuer: String
        public var notAfter: String
        /// Whole days until it expires (negative once expired).
        public var daysLeft: Int
        /// True within `CertificateSummary.warningDays` of expiry: ask the CA for a new one.
        public var expiresSoon: Bool

        public static let warningDays = 30
    }

    /// Pretty, key-sorted JSON with a trailing newline.
    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        // Encoding plain strings, numbers and arrays cannot fail.
        return String(decoding: try! encoder.encode(self), as: UTF8.self) + "\n"
    }

    public static func decode(json: Data) throws -> StatusSnapshot {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(StatusSnapshot.self, from: json)
    }

    /// The seed's "Network Status Report" layout.
    public func report() -> String {
        let rule = String(repeating: "═", count: 55)
        var lines = [rule, "Network Status Report", rule]
        if let local = localSite {
            lines.append("Local site: \(local.name) (ID: \(local.id))")
            for endpoint in local.endpoints {
                let nat = endpoint.publicEndpoint.map {
                    ", behind NAT: announced as \($0) (seen by \((endpoint.observedBy ?? []).joined(separator: ", ")))"
                } ?? ""
                lines.append("    - Endpoint: \(endpoint.address):\(endpoint.port) (\(endpoint.label))\(nat)")
            }
        }
        if let certificate {
            lines.append("Certificate: serial \(certificate.serial), expires \(certificate.notAfter) "
                         + "(\(certificate.daysLeft) days left)" + (certificate.expiresSoon ? " - RENEW SOON (ca sign)" : ""))
        }
        lines.append("Active sites: \(activeSites.count)")
        for site in activeSites {
            lines.append("  • \(site.name) (ID: \(site.id))")
            for endpoint in site.endpoints {
                lines.append("    - Endpoint: \(endpoint.address):\(endpoint.port) (\(endpoint.label))")
            }
        }
        for conflict in conflicts ?? [] {
            let holder = conflict.holderID == nil ? "this site" : conflict.holderName
            lines.append("  ! refused \(conflict.kind == "overlay" ? "overlay " : "")\(conflict.prefix) of \(conflict.siteName): "
                         + "overlaps \(conflict.heldPrefix) held by \(holder) (since \(conflict.since))")
        }
        lines.append("")
        lines.append("Active paths: \(pathCounts.total) (Up: \(pathCounts.up), Degraded: \(pathCounts.degraded), "
                     + "Down: \(pathCounts.down))")
        if let best = paths.first(where: { $0.id == bestPath }) { lines.append("  Best path: \(Self.describe(best))") }
        if let worst = paths.first(where: { $0.id == worstPath }) { lines.append("  Worst path: \(Self.describe(worst))") }
        if pathCounts.total > 0, bestPath == nil, worstPath == nil { lines.append("  No path measured yet") }
        if !paths.isEmpty {
            // The id is the one of `paths`, failover_events, /metrics (path_id) and the nft chains
            // `<class>_path<id>`; the slot picks the mark and the table (docs/STEERING.md).
            lines.append("")
            lines.append("Paths (id: route, tunnel, status; slot: mark and table):")
            for path in paths {
                let via = Self.via(path)
                let slot = path.slot.map { "slot \($0), table \(Conventions.pathTable(slot: $0))" } ?? "not planned"
                let relay = path.relayVia.map { ", relayed via \($0)" } ?? ", direct"
                // Upload: the far receiver's measurement of our trains; download: ours of the far site's.
                let measured = [path.bandwidthMbps.map { "up \(Self.formatNumber($0))" },
                                path.downloadBandwidthMbps.map { "down \(Self.formatNumber($0))" }].compactMap { $0 }
                let bandwidth = measured.isEmpty ? "" : " bandwidth \(measured.joined(separator: ", ")) Mbit/s"
                lines.append("  \(path.id): \(path.srcName) → \(path.dstName) via \(via) (\(path.wgInterface)\(relay), \(path.status); \(slot))\(bandwidth)")
            }
        }
        lines += steeringReport()
        if let transit { lines.append(transit.text) }
        if let shaping, !shaping.isEmpty {
            lines.append("")
            lines.append("Shaping (\(Set(shaping.map(\.qdisc)).sorted().joined(separator: ", ")); docs/SHAPING.md):")
            for s in shaping {
                let drops = s.bands.map { "\($0.band) \($0.drops)" }.joined(separator: ", ")
                lines.append("  \(s.direction) \(s.interface)\(s.pathId.map { " (path \($0))" } ?? ""): \(Self.formatNumber(Double(s.rateBps) / 1e6)) Mbit/s, "
                             + "queue \(Self.formatNumber(s.queueDelayMs)) ms, drops \(drops)")
            }
        }
        lines.append(rule)
        return lines.joined(separator: "\n") + "\n"
    }

    /// Best: the highest score among scored paths that are not down and not losing every probe. Worst: a
    /// down path before any other, then the lowest score. Ties go to the lower id. Both judge each path by
    /// the status, score and loss the snapshot prints for it.
    static func bestAndWorst(_ paths: [Path]) -> (best: Int64?, worst: Int64?) {
        let scored = paths.compactMap { path in path.score.map { (path: path, score: $0) } }
        let down = PathStatus.down.rawValue
        let best = scored.filter { $0.path.status != down && ($0.path.packetLossPct ?? 0) < 100 }
            .max { ($0.score, -$0.path.id) < ($1.score, -$1.path.id) }
        let worst = scored.min {
            ($0.path.status == down ? 0 : 1, $0.score, $0.path.id) < ($1.path.status == down ? 0 : 1, $1.score, $1.path.id)
        }
        return (best?.path.id, worst?.path.id)
    }

    /// "isp-a", or "isp-a→lte" when the local and remote labels differ.
    static func via(_ path: Path) -> String {
        path.localLabel == path.remoteLabel ? path.localLabel : "\(path.localLabel)→\(path.remoteLabel)"
    }

    static func describe(_ path: Path) -> String {
        let via = Self.via(path)
        func number(_ value: Double?, _ unit: String) -> String {
            guard let value else { return "n/a" }
            return formatNumber(value) + unit
        }
        // The seed's line shows no status; a worst path that is down says so, so the line never reads as a
        // live path when it is not.
        let status = path.status == PathStatus.down.rawValue ? "\(path.status), " : ""
        return "\(path.srcName) → \(path.dstName) via \(via) (\(status)score: \(number(path.score, "")), "
            + "latency: \(number(path.latencyMs, "ms")), loss: \(number(path.packetLossPct, "%")))"
    }

    /// Up to two decimals, trailing zeros dropped: 98, 12.5, 0.05.
    public static func formatNumber(_ value: Double) -> String {
        var text = String(format: "%.2f", value)
        while text.hasSuffix("0") { text.removeLast() }
        if text.hasSuffix(".") { text.removeLast() }
        return text == "-0" ? "0" : text
    }
}

extension Store {
    /// Reads the whole status in one read transaction, so counts and lists agree with each other.
    public func statusSnapshot(now: Date = Date()) throws(StoreError) -> StatusSnapshot {
        try read("read status") { db in
            let sites = try Row.fetchAll(db, sql: "SELECT * FROM sites ORDER BY name, id").map(Store.site)
            let endpoints = try Row.fetchAll(db, sql: "SELECT * FROM endpoints ORDER BY label").map(Store.endpoint)
            let paths = try Row.fetchAll(db, sql: "SELECT * FROM paths ORDER BY id").map(Store.path)
            let latest = try Row.fetchAll(db, sql: Store.latestMetricsSQL).map(Store.sample)
            let metrics = Dictionary(latest.map { ($0.path, $0) }, uniquingKeysWith: { first, _ in first })
            let conflicts = try Store.conflicts(db)
            let certificate = try Store.localCertificate(db).map { c in
                let days = Int((c.notAfter.timeIntervalSince(now) / 86_400).rounded(.down))
                return StatusSnapshot.CertificateSummary(serial: c.serial, issuer: c.issuer, notAfter: c.notAfter.utcText,
                                                         daysLeft: days,
                                                         expiresSoon: days < StatusSnapshot.CertificateSummary.warningDays)
            }
            let names = Dictionary(sites.map { ($0.id, $0.name) }, uniquingKeysWith: { first, _ in first })

            func summary(_ site: SiteRecord) -> StatusSnapshot.Site {
                StatusSnapshot.Site(
                    id: site.id.description, name: site.name, status: site.status.rawValue,
                    lastSeen: site.lastSeen.utcText, overlayAddress: site.overlayAddress?.description,
                    lanPrefixes: site.lanPrefixes.map(\.description),
                    endpoints: endpoints.filter { $0.site == site.id }.map {
                        .init(label: $0.endpoint.label, address: $0.endpoint.address.address.description,
                              port: Int($0.endpoint.address.port), publicEndpoint: $0.publicEndpoint?.description,
                              observedBy: $0.observedBy.isEmpty ? nil : $0.observedBy)
                    })
            }
            let remote = sites.filter { !$0.isLocal }
            let pathSummaries = paths.map { path in
                // Score, latency and loss come from ONE row, the newest metrics row, written in the same
                // transaction as the status (Store.recordPathStates); `paths.score` only stands in for a path
                // without any row. Mixing the two printed a path at 100 % loss as the best, scored 98.5.
                let sample = metrics[path.id]
                return StatusSnapshot.Path(
                    id: path.id, name: path.key.name(siteName: names[path.destination] ?? "?"), srcSite: path.source.description, srcName: names[path.source] ?? "?",
                    dstSite: path.destination.description, dstName: names[path.destination] ?? "?",
                    status: path.status.rawValue, wgInterface: path.wgInterface, slot: path.slot,
                    localUplink: path.localUplink.interface, localLabel: path.localUplink.label,
                    remoteLabel: path.remoteEndpoint.label, remoteEndpoint: path.remoteEndpoint.address.description,
                    score: sample.map { $0.metrics.score } ?? path.score, latencyMs: sample?.metrics.latencyMs,
                    jitterMs: sample?.metrics.jitterMs, packetLossPct: sample?.metrics.lossPct,
                    bandwidthMbps: sample?.metrics.bandwidthMbps, downloadBandwidthMbps: sample?.metrics.downloadBandwidthMbps,
                    throughputTxMbps: sample?.metrics.throughputTxMbps,
                    throughputRxMbps: sample?.metrics.throughputRxMbps, measuredAt: sample?.measuredAt.utcText,
                    relayVia: path.relayVia)
            }
            let (best, worst) = StatusSnapshot.bestAndWorst(pathSummaries)
            func count(_ status: PathStatus) -> Int { paths.count { $0.status == status } }
            return StatusSnapshot(
                schemaVersion: StatusSnapshot.currentSchemaVersion, generatedAt: now.utcText,
                localSite: sites.first(where: \.isLocal).map(summary),
                activeSites: remote.filter { $0.status == .active }.map(summary),
                inactiveSites: remote.count { $0.status == .inactive },
                pathCounts: .init(total: paths.count, up: count(.up), degraded: count(.degraded), down: count(.down)),
                paths: pathSummaries, bestPath: best, worstPath: worst,
                conflicts: conflicts.isEmpty ? nil : conflicts, certificate: certificate)
        }
    }
}

import Foundation
import GRDB
import Model

/// One change the daemon hands to the `StoreWriter`: a row (or a few rows of one thing) to write later, with
/// the time it happened, so a row written after a busy database still says when it was true. Paths are named
/// by `PathKey` and resolved to their `paths.id` inside the writer's transaction.
public enum StoreWrite: Hashable, Sendable {
    /// A planned path's `paths` row (`Store.upsertPath`); `id` is what a new row gets (an existing one keeps its).
    /// `relayVia`: the relay's name for a relayed path, nil when direct.
    case path(id: PathID, destination: SiteID, uplink: Uplink, endpoint: Endpoint, wgInterface: String, relayVia: String?, at: Date)
    /// The slot of every planned path, cleared on the others (`Store.setPathSlots`).
    case pathSlots([PathID: UInt16])
    /// A path's status and, when measured, one `path_metrics` row, in the same transaction.
    case pathState(PathStateWrite)
    /// One `failover_events` row; never coalesced.
    case failover(FailoverEvent, from: PathKey?, to: PathKey?)
    /// A remote site's row (marked active, `last_seen` = the record's `lastSeen`) and, when not nil, exactly
    /// these endpoints. nil endpoints (a periodic `last_seen` refresh) leave them as they are.
    case remoteSite(SiteRecord, endpoints: [Endpoint]?)
    case siteStatus(SiteID, SiteStatus)
    /// The refused prefixes, replacing the previous set (`Store.replaceConflicts`).
    case conflicts([ConflictRecord])
    /// What the local site announces (`Store.updateLocalSite`).
    case localSite(overlayAddress: IPv4Address?, publicKey: String?, lanPrefixes: [IPv4Prefix], at: Date)
    case localCertificate(CertificateRecord?)
    /// The local site's endpoints and their public mappings (`Store.replaceLocalEndpoints`).
    case localEndpoints([LocalEndpoint], at: Date)
    /// Deletes metrics older than `retention` before `at`, in short transactions of its own (`Store.pruneMetrics`).
    case pruneMetrics(retention: TimeInterval, at: Date)

    /// What two writes must share to be merged when the queue is full: the same row. Failover events have
    /// none (every one is kept).
    enum Key: Hashable {
        case path(PathKey), pathSlots, pathState(PathKey), site(SiteID), conflicts, localSite, localCertificate, localEndpoints, prune
    }

    var key: Key? {
        switch self {
        case .path(_, let destination, let uplink, let endpoint, _, _, _):
            .path(PathKey(site: destination, localLabel: uplink.label, remoteLabel: endpoint.label))
        case .pathSlots: .pathSlots
        case .pathState(let state): .pathState(state.key)
        case .failover: nil
        case .remoteSite(let site, _): .site(site.id)
        case .siteStatus(let id, _): .site(id)
        case .conflicts: .conflicts
        case .localSite: .localSite
        case .localCertificate: .localCertificate
        case .localEndpoints: .localEndpoints
        case .pruneMetrics: .prune
        }
    }

    /// `newer` applied after `self`, as one write with the same end state: the newest values win, and what
    /// only the older one carried (a site's endpoints, a metrics sample) is kept. nil when they cannot merge.
    func merged(with newer: StoreWrite) -> StoreWrite? {
        switch (self, newer) {
        case (.path, .path), (.pathSlots, .pathSlots), (.conflicts, .conflicts), (.localSite, .localSite),
             (.localCertificate, .localCertificate), (.localEndpoints, .localEndpoints), (.pruneMetrics, .pruneMetrics):
            return newer
        case (.pathState(let old), .pathState(let new)):
            return .pathState(old.merged(with: new))
        case (.remoteSite(_, let endpoints), .remoteSite(let site, let newEndpoints)):
            return .remoteSite(site, endpoints: newEndpoints ?? endpoints)
        case (.remoteSite(var site, let endpoints), .siteStatus(_, let status)):
            site.status = status
            return .remoteSite(site, endpoints: endpoints)
        case (.siteStatus, .remoteSite):
            return newer
        case (.siteStatus, .siteStatus):
            return newer
        default:
            return nil
        }
    }

    /// How many rows the write stands for, as the writer counts them.
    var rows: Int {
        switch self {
        case .pathState(let state): state.metrics == nil ? 1 : 2
        case .conflicts(let conflicts): max(1, conflicts.count)
        default: 1
        }
    }

    /// Whether it runs alone, outside the batch transaction (pruning works in chunks of its own).
    var runsAlone: Bool {
        if case .pruneMetrics = self { return true }
        return false
    }
}

/// A path's status at `at` and, when it was measured, the sample that decided it (a `path_metrics` row).
public struct PathStateWrite: Hashable, Sendable {
    public var key: PathKey
    public var status: PathStatus
    /// `paths.score`; nil leaves it NULL (unscored).
    public var score: Double?
    public var at: Date
    public var metrics: PathMetrics?
    public var measuredAt: Date

    public init(key: PathKey, status: PathStatus, score: Double?, metrics: PathMetrics?, at: Date) {
        self.key = key
        self.status = status
        self.score = score
        self.at = at
        self.metrics = metrics
        self.measuredAt = at
    }

    /// The status of `newer` with the samples of both merged into one: the newer's measurements (each is
    /// already an estimate over a window of probes), the older's where the newer has none (a bandwidth
    /// estimate, a throughput reading).
    func merged(with newer: PathStateWrite) -> PathStateWrite {
        var result = newer
        guard let old = metrics else { return result }
        guard var new = newer.metrics else {
            result.metrics = old
            result.measuredAt = measuredAt
            return result
        }
        new.bandwidthMbps = new.bandwidthMbps ?? old.bandwidthMbps
        new.downloadBandwidthMbps = new.downloadBandwidthMbps ?? old.downloadBandwidthMbps
        new.throughputTxMbps = new.throughputTxMbps ?? old.throughputTxMbps
        new.throughputRxMbps = new.throughputRxMbps ?? old.throughputRxMbps
        result.metrics = new
        return result
    }
}

extension Store {
    /// Applies `write` inside the caller's transaction (the writer's batch).
    func apply(_ write: StoreWrite, _ db: Database) throws {
        switch write {
        case .path(let id, let destination, let uplink, let endpoint, let wgInterface, let relayVia, let at):
            _ = try upsertPath(to: destination, uplink: uplink, endpoint: endpoint, wgInterface: wgInterface,
                               relayVia: relayVia, now: at, id: id, db)
        case .pathSlots(let slots):
            try Store.setPathSlots(slots, db)
        case .pathState(let state):
            // A path whose row was refused (its site not recorded yet) has nothing to update; that refusal was
            // reported, and the next plan records the row.
            guard let id = try Store.pathID(of: state.key, db) else { return }
            try setPathStatus(id, status: state.status, score: state.score, now: state.at, db)
            if let metrics = state.metrics {
                try Store.insertMetrics([MetricsSample(path: id, metrics: metrics, measuredAt: state.measuredAt)], db)
            }
        case .failover(let event, let from, let to):
            try insert(event, from: from, to: to, db)
        case .remoteSite(let site, let endpoints):
            try upsertRemoteSite(site, now: site.lastSeen, db)
            if site.status != .active { try Store.setSiteStatus(site.id, site.status, db) }
            if let endpoints { try Store.replaceEndpoints(of: site.id, with: endpoints, now: site.lastSeen, db) }
        case .siteStatus(let id, let status):
            try Store.setSiteStatus(id, status, db)
        case .conflicts(let conflicts):
            try Store.replaceConflicts(conflicts, db)
        case .localSite(let overlay, let publicKey, let lanPrefixes, let at):
            try updateLocalSite(overlayAddress: overlay, publicKey: publicKey, lanPrefixes: lanPrefixes, now: at, db)
        case .localCertificate(let certificate):
            try Store.setLocalCertificate(certificate, db)
        case .localEndpoints(let endpoints, let at):
            try Store.replaceLocalEndpoints(endpoints, now: at, db)
        case .pruneMetrics:
            preconditionFailure("pruning runs alone, not inside a batch")
        }
    }
}

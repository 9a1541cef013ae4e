import Foundation
import GRDB
import Model

/// Whether a site has been heard from recently (the discovery layer decides what "recently" means).
public enum SiteStatus: String, Sendable, Codable, CaseIterable {
    case active
    case inactive
}

/// One row of `sites`: this router (`isLocal`) or a remote site it learned about.
public struct SiteRecord: Hashable, Sendable {
    public var id: SiteID
    public var name: String
    public var status: SiteStatus
    public var lastSeen: Date
    public var overlayAddress: IPv4Address?
    /// The site's WireGuard public key, base64 as `wg` prints it.
    public var publicKey: String?
    public var lanPrefixes: [IPv4Prefix]
    public var isLocal: Bool

    public init(id: SiteID, name: String, status: SiteStatus = .active, lastSeen: Date = Date(),
                overlayAddress: IPv4Address? = nil, publicKey: String? = nil, lanPrefixes: [IPv4Prefix] = [],
                isLocal: Bool = false) {
        self.id = id
        self.name = name
        self.status = status
        self.lastSeen = lastSeen
        self.overlayAddress = overlayAddress
        self.publicKey = publicKey
        self.lanPrefixes = lanPrefixes
        self.isLocal = isLocal
    }
}

/// One row of `endpoints`: where a site said it can be reached.
public struct EndpointRecord: Hashable, Sendable {
    public var site: SiteID
    public var endpoint: Endpoint
    public var lastSeen: Date
    /// The local site's uplink behind NAT: the public mapping it announces, and who observed it.
    public var publicEndpoint: SocketAddress4?
    public var observedBy: [String] = []
}

/// One of the local site's uplink endpoints as `status` shows it: its own address and, behind NAT, the
/// public mapping other sites observe (and that it announces instead).
public struct LocalEndpoint: Hashable, Sendable {
    public var endpoint: Endpoint
    public var publicEndpoint: SocketAddress4?
    /// Names of the sites that observed the mapping.
    public var observedBy: [String]

    public init(endpoint: Endpoint, publicEndpoint: SocketAddress4? = nil, observedBy: [String] = []) {
        self.endpoint = endpoint
        self.publicEndpoint = publicEndpoint
        self.observedBy = observedBy
    }
}

extension Store {
    // MARK: Sites

    /// The local site's id, created on the first call and kept for the life of the database. Later calls
    /// update its name (a renamed site keeps its identity) and last_seen.
    @discardableResult
    public func ensureLocalSite(name: String, now: Date = Date()) throws(StoreError) -> SiteID {
        try write("record the local site") { db in
            if let text = try String.fetchOne(db, sql: "SELECT id FROM sites WHERE is_local = 1") {
                guard let id = SiteID(text) else {
                    throw StoreError.malformedRow(table: "sites", row: text, column: "id", value: text)
                }
                try db.execute(sql: "UPDATE sites SET name = ?, status = 'active', last_seen = ? WHERE id = ?",
                               arguments: [name, now.utcText, text])
                return id
            }
            let id = SiteID()
            try db.execute(sql: """
                INSERT INTO sites (id, name, status, last_seen, is_local, created_at)
                VALUES (?, ?, 'active', ?, 1, ?)
                """, arguments: [id.description, name, now.utcText, now.utcText])
            return id
        }
    }

    /// Records what the local site announces: its overlay address, public key and LAN prefixes.
    public func updateLocalSite(overlayAddress: IPv4Address?, publicKey: String?, lanPrefixes: [IPv4Prefix],
                                now: Date = Date()) throws(StoreError) {
        try write("update the local site") { db in
            try updateLocalSite(overlayAddress: overlayAddress, publicKey: publicKey, lanPrefixes: lanPrefixes, now: now, db)
        }
    }

    func updateLocalSite(overlayAddress: IPv4Address?, publicKey: String?, lanPrefixes: [IPv4Prefix], now: Date,
                         _ db: Database) throws {
        try db.execute(sql: """
            UPDATE sites SET overlay_address = ?, public_key = ?, lan_prefixes = ?, last_seen = ?
            WHERE is_local = 1
            """, arguments: [overlayAddress?.description, publicKey, Store.join(lanPrefixes), now.utcText])
        guard db.changesCount == 1 else { throw StoreError.noLocalSite(path: path) }
    }

    public func localSite() throws(StoreError) -> SiteRecord? {
        try read("read the local site") { db in
            try Row.fetchOne(db, sql: "SELECT * FROM sites WHERE is_local = 1").map(Store.site)
        }
    }

    /// Inserts or refreshes a remote site (marked active, last_seen = now). The local site cannot be
    /// overwritten this way: a remote announcement carrying our own id is refused.
    public func upsertRemoteSite(_ site: SiteRecord, now: Date = Date()) throws(StoreError) {
        try write("record remote site \(site.name)") { db in try upsertRemoteSite(site, now: now, db) }
    }

    func upsertRemoteSite(_ site: SiteRecord, now: Date, _ db: Database) throws {
        if try Bool.fetchOne(db, sql: "SELECT is_local FROM sites WHERE id = ?", arguments: [site.id.description]) == true {
            throw StoreError.sql(path: path, operation: "record remote site \(site.name)",
                                 message: "its id \(site.id) is the local site's")
        }
        try db.execute(sql: """
            INSERT INTO sites (id, name, status, last_seen, overlay_address, public_key, lan_prefixes,
                               is_local, created_at)
            VALUES (?, ?, 'active', ?, ?, ?, ?, 0, ?)
            ON CONFLICT (id) DO UPDATE SET name = excluded.name, status = 'active',
                last_seen = excluded.last_seen, overlay_address = excluded.overlay_address,
                public_key = excluded.public_key, lan_prefixes = excluded.lan_prefixes
            """, arguments: [site.id.description, site.name, now.utcText, site.overlayAddress?.description,
                             site.publicKey, Store.join(site.lanPrefixes), now.utcText])
    }

    public func setSiteStatus(_ id: SiteID, _ status: SiteStatus) throws(StoreError) {
        try write("set site status") { db in try Store.setSiteStatus(id, status, db) }
    }

    static func setSiteStatus(_ id: SiteID, _ status: SiteStatus, _ db: Database) throws {
        try db.execute(sql: "UPDATE sites SET status = ? WHERE id = ?", arguments: [status.rawValue, id.description])
        guard db.changesCount == 1 else { throw StoreError.noSuchSite(id) }
    }

    /// Every site, local first, then by name.
    public func sites() throws(StoreError) -> [SiteRecord] {
        try read("read sites") { db in
            try Row.fetchAll(db, sql: "SELECT * FROM sites ORDER BY is_local DESC, name, id").map(Store.site)
        }
    }

    // MARK: Endpoints

    /// Makes `endpoints` of `site` exactly the given list (by label): new ones are added, known ones
    /// refreshed, ones no longer announced removed. One transaction.
    public func replaceEndpoints(of site: SiteID, with endpoints: [Endpoint], now: Date = Date()) throws(StoreError) {
        try write("record endpoints") { db in try Store.replaceEndpoints(of: site, with: endpoints, now: now, db) }
    }

    static func replaceEndpoints(of site: SiteID, with endpoints: [Endpoint], now: Date, _ db: Database) throws {
        for endpoint in endpoints {
            try db.execute(sql: """
                INSERT INTO endpoints (site_id, label, address, port, last_seen) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (site_id, label) DO UPDATE SET address = excluded.address, port = excluded.port,
                    last_seen = excluded.last_seen
                """, arguments: [site.description, endpoint.label, endpoint.address.address.description,
                                 Int(endpoint.address.port), now.utcText])
        }
        let labels = endpoints.map(\.label)
        let placeholders = labels.isEmpty ? "''" : Array(repeating: "?", count: labels.count).joined(separator: ",")
        try db.execute(sql: "DELETE FROM endpoints WHERE site_id = ? AND label NOT IN (\(placeholders))",
                       arguments: StatementArguments([site.description] + labels))
    }

    /// Makes the local site's endpoints exactly `endpoints`, with their public mappings. One transaction.
    public func replaceLocalEndpoints(_ endpoints: [LocalEndpoint], now: Date = Date()) throws(StoreError) {
        try write("record the local endpoints") { db in try Store.replaceLocalEndpoints(endpoints, now: now, db) }
    }

    static func replaceLocalEndpoints(_ endpoints: [LocalEndpoint], now: Date, _ db: Database) throws {
        guard let text = try String.fetchOne(db, sql: "SELECT id FROM sites WHERE is_local = 1"), let site = SiteID(text)
        else { return }
        try replaceEndpoints(of: site, with: endpoints.map(\.endpoint), now: now, db)
        for endpoint in endpoints {
            try db.execute(sql: "UPDATE endpoints SET public_endpoint = ?, observed_by = ? WHERE site_id = ? AND label = ?",
                           arguments: [endpoint.publicEndpoint?.description,
                                       endpoint.observedBy.isEmpty ? nil : endpoint.observedBy.joined(separator: ","),
                                       text, endpoint.endpoint.label])
        }
    }

    public func endpoints(of site: SiteID? = nil) throws(StoreError) -> [EndpointRecord] {
        try read("read endpoints") { db in
            let rows = if let site {
                try Row.fetchAll(db, sql: "SELECT * FROM endpoints WHERE site_id = ? ORDER BY label",
                                 arguments: [site.description])
            } else {
                try Row.fetchAll(db, sql: "SELECT * FROM endpoints ORDER BY site_id, label")
            }
            return try rows.map(Store.endpoint)
        }
    }

    // MARK: Row decoding (hand-edited rows fail with the row and column named)

    static func site(_ row: Row) throws -> SiteRecord {
        let idText: String = row["id"]
        func bad(_ column: String, _ value: String?) -> StoreError {
            .malformedRow(table: "sites", row: idText, column: column, value: value ?? "NULL")
        }
        guard let id = SiteID(idText) else { throw bad("id", idText) }
        let statusText: String = row["status"]
        guard let status = SiteStatus(rawValue: statusText) else { throw bad("status", statusText) }
        let seenText: String = row["last_seen"]
        guard let lastSeen = UTCTime.parse(seenText) else { throw bad("last_seen", seenText) }
        var overlay: IPv4Address?
        if let text: String = row["overlay_address"] {
            guard let address = IPv4Address(text) else { throw bad("overlay_address", text) }
            overlay = address
        }
        let lanText: String = row["lan_prefixes"]
        guard let lan = split(lanText, IPv4Prefix.init(text:)) else { throw bad("lan_prefixes", lanText) }
        return SiteRecord(id: id, name: row["name"], status: status, lastSeen: lastSeen, overlayAddress: overlay,
                          publicKey: row["public_key"], lanPrefixes: lan, isLocal: row["is_local"])
    }

    static func endpoint(_ row: Row) throws -> EndpointRecord {
        let rowID: Int64 = row["id"]
        func bad(_ column: String, _ value: String) -> StoreError {
            .malformedRow(table: "endpoints", row: "\(rowID)", column: column, value: value)
        }
        let siteText: String = row["site_id"]
        guard let site = SiteID(siteText) else { throw bad("site_id", siteText) }
        let addressText: String = row["address"]
        guard let address = IPv4Address(addressText) else { throw bad("address", addressText) }
        let port: Int = row["port"]
        guard let port16 = UInt16(exactly: port), port16 != 0 else { throw bad("port", "\(port)") }
        let seenText: String = row["last_seen"]
        guard let lastSeen = UTCTime.parse(seenText) else { throw bad("last_seen", seenText) }
        let publicText: String? = row["public_endpoint"]
        let publicEndpoint = try publicText.map { text throws(StoreError) in
            guard let parsed = SocketAddress4(text) else { throw bad("public_endpoint", text) }
            return parsed
        }
        let observers: String? = row["observed_by"]
        return EndpointRecord(site: site, endpoint: Endpoint(label: row["label"], address: SocketAddress4(address, port: port16)),
                              lastSeen: lastSeen, publicEndpoint: publicEndpoint,
                              observedBy: observers.map { $0.split(separator: ",").map(String.init) } ?? [])
    }

    /// Lists are stored as readable comma-separated text ("10.1.0.0/16,10.2.0.0/16").
    static func join(_ values: [some CustomStringConvertible], separator: String = ",") -> String {
        values.map(\.description).joined(separator: separator)
    }

    static func split<T>(_ text: String, separator: Character = ",", _ parse: (String) -> T?) -> [T]? {
        var result: [T] = []
        for part in text.split(separator: separator) {
            guard let value = parse(part.trimmingCharacters(in: .whitespaces)) else { return nil }
            result.append(value)
        }
        return result
    }
}

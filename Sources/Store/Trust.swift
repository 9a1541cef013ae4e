import Foundation
import GRDB
import Model

/// An announced prefix this site refused because it overlaps an earlier holder's (docs/MESH.md), as stored.
public struct ConflictRecord: Hashable, Sendable, Codable {
    public var siteID: String
    public var siteName: String
    public var prefix: String
    /// `lan` or `overlay`.
    public var kind: String
    public var heldPrefix: String
    /// nil: this site holds it.
    public var holderID: String?
    public var holderName: String
    public var since: String

    /// `siteId`/`holderId`: the snake-case key strategies map them to `site_id` and back.
    enum CodingKeys: String, CodingKey {
        case siteID = "siteId", siteName, prefix, kind, heldPrefix, holderID = "holderId", holderName, since
    }

    public init(siteID: String, siteName: String, prefix: String, kind: String, heldPrefix: String, holderID: String?,
                holderName: String, since: Date) {
        self.siteID = siteID
        self.siteName = siteName
        self.prefix = prefix
        self.kind = kind
        self.heldPrefix = heldPrefix
        self.holderID = holderID
        self.holderName = holderName
        self.since = since.utcText
    }
}

/// This site's certificate, as `status` shows it.
public struct CertificateRecord: Hashable, Sendable {
    public var serial: String
    public var notBefore: Date
    public var notAfter: Date
    public var issuer: String

    public init(serial: String, notBefore: Date, notAfter: Date, issuer: String) {
        self.serial = serial
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.issuer = issuer
    }
}

extension Store {
    /// Replaces the refused prefixes with `conflicts`; a conflict still present keeps its `since`.
    public func replaceConflicts(_ conflicts: [ConflictRecord]) throws(StoreError) {
        try write("record prefix conflicts") { db in try Store.replaceConflicts(conflicts, db) }
    }

    static func replaceConflicts(_ conflicts: [ConflictRecord], _ db: Database) throws {
        let held = try Row.fetchAll(db, sql: "SELECT site_id, prefix, since FROM prefix_conflicts")
        var since: [String: String] = [:]
        for row in held { since["\(row["site_id"] as String)|\(row["prefix"] as String)"] = row["since"] }
        try db.execute(sql: "DELETE FROM prefix_conflicts")
        for c in conflicts {
            try db.execute(sql: """
                INSERT OR REPLACE INTO prefix_conflicts
                    (site_id, site_name, prefix, kind, held_prefix, holder_id, holder_name, since)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [c.siteID, c.siteName, c.prefix, c.kind, c.heldPrefix, c.holderID, c.holderName,
                                 since["\(c.siteID)|\(c.prefix)"] ?? c.since])
        }
    }

    public func conflicts() throws(StoreError) -> [ConflictRecord] {
        try read("read prefix conflicts") { db in try Self.conflicts(db) }
    }

    static func conflicts(_ db: Database) throws -> [ConflictRecord] {
        try Row.fetchAll(db, sql: "SELECT * FROM prefix_conflicts ORDER BY site_name, prefix").map { row in
            var record = ConflictRecord(siteID: row["site_id"], siteName: row["site_name"], prefix: row["prefix"],
                                        kind: row["kind"], heldPrefix: row["held_prefix"], holderID: row["holder_id"],
                                        holderName: row["holder_name"], since: Date())
            record.since = row["since"]
            return record
        }
    }

    /// Records this site's certificate (nil: it runs without one).
    public func setLocalCertificate(_ certificate: CertificateRecord?) throws(StoreError) {
        try write("record the local certificate") { db in try Store.setLocalCertificate(certificate, db) }
    }

    static func setLocalCertificate(_ certificate: CertificateRecord?, _ db: Database) throws {
        try db.execute(sql: "DELETE FROM local_certificate")
        guard let c = certificate else { return }
        try db.execute(sql: """
            INSERT INTO local_certificate (id, serial, not_before, not_after, issuer) VALUES (1, ?, ?, ?, ?)
            """, arguments: [c.serial, c.notBefore.utcText, c.notAfter.utcText, c.issuer])
    }

    static func localCertificate(_ db: Database) throws -> CertificateRecord? {
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM local_certificate WHERE id = 1") else { return nil }
        let notBefore: String = row["not_before"], notAfter: String = row["not_after"]
        guard let from = UTCTime.parse(notBefore), let until = UTCTime.parse(notAfter) else { return nil }
        return CertificateRecord(serial: row["serial"], notBefore: from, notAfter: until, issuer: row["issuer"])
    }
}

import Foundation
import GRDB
import Model

/// A policy as stored: the value plus its row id.
public struct PolicyRecord: Hashable, Sendable {
    public var id: Int64
    public var policy: Policy
}

extension Store {
    /// Every policy, enabled or not, in priority order (ties by name): the order the classifier applies.
    /// A row edited by hand into something unparsable fails the whole read, naming the row and column, so
    /// the daemon keeps its previous policies instead of silently dropping one.
    public func policies() throws(StoreError) -> [PolicyRecord] {
        try read("read policies") { db in
            try Row.fetchAll(db, sql: "SELECT * FROM policies ORDER BY priority, name").map(Store.policy)
        }
    }

    /// Adds a policy after `Policy.validate()`; a name already present is refused.
    public func addPolicy(_ policy: Policy, now: Date = Date()) throws(StoreError) {
        do { try policy.validate() } catch { throw .invalidPolicy(error) }
        try write("add policy \(policy.name)") { db in try insert(policy, db, now: now) }
    }

    @discardableResult
    public func removePolicy(named name: String) throws(StoreError) -> Policy {
        try write("remove policy \(name)") { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM policies WHERE name = ?", arguments: [name]) else {
                throw StoreError.noSuchPolicy(name)
            }
            try db.execute(sql: "DELETE FROM policies WHERE name = ?", arguments: [name])
            return try Store.policy(row).policy
        }
    }

    public func setPolicyEnabled(named name: String, _ enabled: Bool, now: Date = Date()) throws(StoreError) {
        try write("\(enabled ? "enable" : "disable") policy \(name)") { db in
            try db.execute(sql: "UPDATE policies SET enabled = ?, updated_at = ? WHERE name = ?",
                           arguments: [enabled, now.utcText, name])
            guard db.changesCount == 1 else { throw StoreError.noSuchPolicy(name) }
        }
    }

    /// Turns duplication of a policy's class on or off (docs/STEERING.md, "Duplication").
    public func setPolicyDuplicate(named name: String, _ duplicate: Bool, now: Date = Date()) throws(StoreError) {
        try write("\(duplicate ? "turn on" : "turn off") duplication of policy \(name)") { db in
            try db.execute(sql: "UPDATE policies SET duplicate = ?, updated_at = ? WHERE name = ?",
                           arguments: [duplicate, now.utcText, name])
            guard db.changesCount == 1 else { throw StoreError.noSuchPolicy(name) }
        }
    }

    /// A counter that grows on every change to `policies`, by any process (triggers bump it), so a poller
    /// learns of an edit with one single-row read (a few microseconds) and re-reads policies only then.
    public func policyGeneration() throws(StoreError) -> Int64 {
        try read("read the policy generation") { db in
            try Int64.fetchOne(db, sql: "SELECT value FROM store_state WHERE key = 'policy_generation'") ?? 0
        }
    }

    /// Loads `defaults` the first time a database sees this call, and never again (a user who removed
    /// `default` does not get it back on restart). Returns whether it loaded them.
    @discardableResult
    public func loadDefaultPoliciesIfNew(_ defaults: [Policy], now: Date = Date()) throws(StoreError) -> Bool {
        for policy in defaults {
            do { try policy.validate() } catch { throw .invalidPolicy(error) }
        }
        return try write("load default policies") { db in
            if try Bool.fetchOne(db, sql: "SELECT value FROM store_state WHERE key = 'defaults_loaded'") == true {
                return false
            }
            for policy in defaults
            where try !Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM policies WHERE name = ?)",
                                     arguments: [policy.name])! {
                try insert(policy, db, now: now)
            }
            try db.execute(sql: "INSERT OR REPLACE INTO store_state (key, value) VALUES ('defaults_loaded', 1)")
            return true
        }
    }

    private func insert(_ policy: Policy, _ db: Database, now: Date) throws {
        if try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM policies WHERE name = ?)", arguments: [policy.name])! {
            throw StoreError.invalidPolicy(.duplicateName(policy.name))
        }
        try db.execute(sql: """
            INSERT INTO policies (name, priority, enabled, match_services, match_dscp, match_sources,
                                  match_destinations, strategy, max_latency_ms, max_jitter_ms, max_loss_pct,
                                  description, created_at, updated_at, duplicate)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [policy.name, policy.priority, policy.enabled,
                             policy.match.services.map(\.argument).joined(separator: " "),
                             Store.join(policy.match.dscp), Store.join(policy.match.sources),
                             Store.join(policy.match.destinations), policy.strategy.description,
                             policy.sla.maxLatencyMs, policy.sla.maxJitterMs, policy.sla.maxLossPct,
                             policy.description, now.utcText, now.utcText, policy.duplicate])
    }

    static func policy(_ row: Row) throws -> PolicyRecord {
        let name: String = row["name"]
        func text(_ column: String) -> String { row[column] ?? "" }
        func bad(_ column: String) -> StoreError {
            .malformedRow(table: "policies", row: name, column: column, value: text(column))
        }
        guard let services = split(text("match_services"), separator: " ", { ServiceMatch(argument: $0) }) else {
            throw bad("match_services")
        }
        guard let dscp = split(text("match_dscp"), { UInt8($0) }) else { throw bad("match_dscp") }
        guard let sources = split(text("match_sources"), IPv4Prefix.init(text:)) else { throw bad("match_sources") }
        guard let destinations = split(text("match_destinations"), IPv4Prefix.init(text:)) else {
            throw bad("match_destinations")
        }
        guard let strategy = Strategy(text("strategy")) else { throw bad("strategy") }
        let policy = Policy(name: name, priority: row["priority"],
                            match: TrafficMatch(services: services, dscp: dscp, sources: sources,
                                                destinations: destinations),
                            strategy: strategy,
                            sla: SLA(maxLatencyMs: row["max_latency_ms"], maxJitterMs: row["max_jitter_ms"],
                                     maxLossPct: row["max_loss_pct"]),
                            enabled: row["enabled"], description: text("description"),
                            duplicate: row["duplicate"] ?? false)
        do { try policy.validate() } catch { throw StoreError.invalidPolicy(error) }
        return PolicyRecord(id: row["id"], policy: policy)
    }
}

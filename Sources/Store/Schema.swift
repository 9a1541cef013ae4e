import GRDB

/// The versioned schema. Migrations are append-only: a released one is never edited, a change is a new one.
///
/// Column names and order of `sites`, `paths`, `path_metrics` and `policies` are a user contract: the seed
/// README's sqlite3 queries (`SELECT * FROM sites`, ...) must keep running verbatim and show these columns
/// first. Times are UTC text 'YYYY-MM-DD HH:MM:SS' so a human reading sqlite3 output sees real times.
enum Schema {
    /// Every migration this binary knows, oldest first. A database listing any other one is newer than us.
    static let migrationIdentifiers = ["v1-sites-paths-metrics-policies", "v2-failover-events",
                                       "v3-policy-generation", "v4-path-throughput", "v5-prefix-conflicts",
                                       "v6-path-slot", "v7-endpoint-public-mapping", "v8-policy-duplicate",
                                       "v9-path-relay", "v10-path-download-bandwidth"]

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration(migrationIdentifiers[0]) { db in
            try db.execute(sql: """
                CREATE TABLE sites (
                    id TEXT PRIMARY KEY NOT NULL,
                    name TEXT NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
                    last_seen TEXT NOT NULL,
                    overlay_address TEXT,
                    public_key TEXT,
                    lan_prefixes TEXT NOT NULL DEFAULT '',
                    is_local INTEGER NOT NULL DEFAULT 0 CHECK (is_local IN (0, 1)),
                    created_at TEXT NOT NULL
                );
                -- At most one local site: the identity of this router.
                CREATE UNIQUE INDEX sites_one_local ON sites (is_local) WHERE is_local = 1;

                CREATE TABLE endpoints (
                    id INTEGER PRIMARY KEY,
                    site_id TEXT NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
                    label TEXT NOT NULL,
                    address TEXT NOT NULL,
                    port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
                    last_seen TEXT NOT NULL,
                    UNIQUE (site_id, label)
                );

                CREATE TABLE paths (
                    id INTEGER PRIMARY KEY,
                    src_site TEXT NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
                    dst_site TEXT NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
                    status TEXT NOT NULL CHECK (status IN ('up', 'degraded', 'down')),
                    wg_interface TEXT NOT NULL,
                    score REAL,
                    local_uplink TEXT NOT NULL,
                    local_label TEXT NOT NULL,
                    remote_label TEXT NOT NULL,
                    remote_endpoint TEXT NOT NULL,
                    updated_at TEXT NOT NULL,
                    UNIQUE (dst_site, local_label, remote_label)
                );

                CREATE TABLE path_metrics (
                    id INTEGER PRIMARY KEY,
                    path_id INTEGER NOT NULL REFERENCES paths (id) ON DELETE CASCADE,
                    latency_ms REAL NOT NULL,
                    jitter_ms REAL NOT NULL,
                    packet_loss_pct REAL NOT NULL,
                    bandwidth_mbps REAL,
                    score REAL NOT NULL,
                    measured_at TEXT NOT NULL
                );
                CREATE INDEX path_metrics_by_time ON path_metrics (measured_at);
                CREATE INDEX path_metrics_by_path ON path_metrics (path_id, measured_at);

                CREATE TABLE policies (
                    id INTEGER PRIMARY KEY,
                    name TEXT NOT NULL UNIQUE,
                    priority INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 65535),
                    enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
                    match_services TEXT NOT NULL DEFAULT '',
                    match_dscp TEXT NOT NULL DEFAULT '',
                    match_sources TEXT NOT NULL DEFAULT '',
                    match_destinations TEXT NOT NULL DEFAULT '',
                    strategy TEXT NOT NULL,
                    max_latency_ms REAL,
                    max_jitter_ms REAL,
                    max_loss_pct REAL,
                    description TEXT NOT NULL DEFAULT '',
                    created_at TEXT NOT NULL,
                    updated_at TEXT NOT NULL
                );
                """)
        }
        migrator.registerMigration(migrationIdentifiers[1]) { db in
            try db.execute(sql: """
                CREATE TABLE failover_events (
                    id INTEGER PRIMARY KEY,
                    time TEXT NOT NULL,
                    policy TEXT NOT NULL,
                    dst_site TEXT REFERENCES sites (id) ON DELETE SET NULL,
                    from_path INTEGER REFERENCES paths (id) ON DELETE SET NULL,
                    to_path INTEGER REFERENCES paths (id) ON DELETE SET NULL,
                    reason TEXT NOT NULL,
                    detection_ms REAL,
                    switch_ms REAL
                );
                CREATE INDEX failover_events_by_time ON failover_events (time);
                """)
        }
        migrator.registerMigration(migrationIdentifiers[2]) { db in
            // A counter bumped by triggers on every change to `policies`, also changes made by sqlite3 or
            // another process, so the daemon notices edits with one single-row read instead of re-reading all.
            try db.execute(sql: """
                CREATE TABLE store_state (
                    key TEXT PRIMARY KEY NOT NULL,
                    value INTEGER NOT NULL
                );
                INSERT INTO store_state (key, value) VALUES ('policy_generation', 1);
                -- A database that already has policies had its defaults loaded by an earlier version.
                INSERT INTO store_state (key, value)
                    SELECT 'defaults_loaded', 1 WHERE EXISTS (SELECT 1 FROM policies);
                CREATE TRIGGER policies_inserted AFTER INSERT ON policies BEGIN
                    UPDATE store_state SET value = value + 1 WHERE key = 'policy_generation';
                END;
                CREATE TRIGGER policies_updated AFTER UPDATE ON policies BEGIN
                    UPDATE store_state SET value = value + 1 WHERE key = 'policy_generation';
                END;
                CREATE TRIGGER policies_deleted AFTER DELETE ON policies BEGIN
                    UPDATE store_state SET value = value + 1 WHERE key = 'policy_generation';
                END;
                """)
        }
        migrator.registerMigration(migrationIdentifiers[3]) { db in
            // Passive throughput next to the measured bandwidth; appended, so `SELECT *` keeps the seed's
            // columns first and older rows read NULL.
            try db.execute(sql: """
                ALTER TABLE path_metrics ADD COLUMN throughput_tx_mbps REAL;
                ALTER TABLE path_metrics ADD COLUMN throughput_rx_mbps REAL;
                """)
        }
        migrator.registerMigration(migrationIdentifiers[4]) { db in
            // Announced prefixes refused because they overlap an earlier holder's (docs/MESH.md), replaced
            // whole by the daemon whenever they change, for `status`; and this site's certificate, if any.
            try db.execute(sql: """
                CREATE TABLE prefix_conflicts (
                    site_id TEXT NOT NULL,
                    site_name TEXT NOT NULL,
                    prefix TEXT NOT NULL,
                    kind TEXT NOT NULL CHECK (kind IN ('lan', 'overlay')),
                    held_prefix TEXT NOT NULL,
                    holder_id TEXT,
                    holder_name TEXT NOT NULL,
                    since TEXT NOT NULL,
                    PRIMARY KEY (site_id, prefix)
                );
                CREATE TABLE local_certificate (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    serial TEXT NOT NULL,
                    not_before TEXT NOT NULL,
                    not_after TEXT NOT NULL,
                    issuer TEXT NOT NULL
                );
                """)
        }
        migrator.registerMigration(migrationIdentifiers[5]) { db in
            // The kernel slot of a live path (its mark `slot << 16` and table 6200 + slot, docs/STEERING.md);
            // NULL while the path is not planned. Usually equal to the id.
            try db.execute(sql: "ALTER TABLE paths ADD COLUMN slot INTEGER")
        }
        migrator.registerMigration(migrationIdentifiers[6]) { db in
            // The local site's uplinks that other sites see behind a NAT: the public mapping it announces
            // ('address:port') and the names of the sites that observed it ('hq,west'); NULL otherwise.
            try db.execute(sql: """
                ALTER TABLE endpoints ADD COLUMN public_endpoint TEXT;
                ALTER TABLE endpoints ADD COLUMN observed_by TEXT;
                """)
        }
        migrator.registerMigration(migrationIdentifiers[7]) { db in
            // 1: the policy's packets are copied over a second path (docs/STEERING.md, "Duplication").
            // Added last, so `SELECT * FROM policies` keeps the seed's columns first.
            try db.execute(sql: "ALTER TABLE policies ADD COLUMN duplicate INTEGER NOT NULL DEFAULT 0")
        }
        migrator.registerMigration(migrationIdentifiers[8]) { db in
            // The name of the site a relayed path goes through (docs/MESH.md "Relayed paths"); NULL: direct.
            try db.execute(sql: "ALTER TABLE paths ADD COLUMN relay_via TEXT")
        }
        migrator.registerMigration(migrationIdentifiers[9]) { db in
            // The path's download: the rate at which the far site's bandwidth trains arrived here over it
            // (docs/SHAPING.md, "The download rate"); NULL until one was measured. Appended, so `SELECT *`
            // keeps the seed's columns first.
            try db.execute(sql: "ALTER TABLE path_metrics ADD COLUMN download_bandwidth_mbps REAL")
        }
        return migrator
    }
}

import Foundation
import GRDB
import Testing
@testable import Model
@testable import Store

@Suite struct SchemaTests {
    @Test func freshDatabaseIsCurrentWALAndPrivate() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/new.db"
            let store = try Store.open(path: path)
            _ = try store.ensureLocalSite(name: "hq")
            #expect(try store.schemaVersion() == Store.knownMigrations)
            let (journal, foreignKeys) = try store.reader.read { db in
                (try String.fetchOne(db, sql: "PRAGMA journal_mode"), try Bool.fetchOne(db, sql: "PRAGMA foreign_keys"))
            }
            #expect(journal == "wal")
            #expect(foreignKeys == true)
            for file in [path, path + "-wal", path + "-shm"] { #expect(fileMode(file) == 0o600, "\(file)") }
        }
    }

    @Test func migratesFromEachOlderVersionKeepingData() throws {
        for (index, identifier) in Schema.migrationIdentifiers.enumerated().dropLast() {
            try withTemporaryDirectory { dir in
                let path = dir + "/old.db"
                let queue = try DatabaseQueue(path: path)
                try Schema.migrator.migrate(queue, upTo: identifier)
                try queue.write { db in
                    try db.execute(sql: """
                        INSERT INTO sites (id, name, status, last_seen, is_local, created_at)
                        VALUES ('550e8400-e29b-41d4-a716-446655440001', 'hq', 'active', '2025-10-09 14:32:15', 1,
                                '2025-10-09 14:32:15');
                        INSERT INTO policies (name, priority, match_services, strategy, created_at, updated_at)
                        VALUES ('sip', 5, 'udp:5060', 'lowest-latency', '2025-10-09 14:32:15', '2025-10-09 14:32:15');
                        """)
                    // From v3 on, the daemon that loaded (or was given) the policies recorded it.
                    if try db.tableExists("store_state") {
                        try db.execute(sql: "INSERT OR REPLACE INTO store_state (key, value) VALUES ('defaults_loaded', 1)")
                    }
                }
                try queue.close()

                let store = try Store.open(path: path)
                #expect(try store.schemaVersion() == Store.knownMigrations, "from \(identifier) (#\(index))")
                #expect(try store.localSite()?.name == "hq")
                #expect(try store.policies().map(\.policy.name) == ["sip"])
                // The database already had policies, so the defaults are not mixed into the user's set.
                #expect(try !store.loadDefaultPoliciesIfNew(Policy.defaults()))
                try store.recordFailover(FailoverEvent(policy: "sip", fromPath: nil, toPath: nil, reason: "test"))
                let generation = try store.policyGeneration()
                try store.setPolicyEnabled(named: "sip", false)
                #expect(try store.policyGeneration() > generation)
            }
        }
    }

    @Test func refusesANewerSchemaAndChangesNothing() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/future.db"
            let queue = try DatabaseQueue(path: path)
            try Schema.migrator.migrate(queue)
            try queue.write { db in
                try db.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v9-from-the-future')")
            }
            try queue.close()
            let before = fileBytes(path)
            #expect(throws: StoreError.newerSchema(path: path, unknown: ["v9-from-the-future"])) {
                try Store.open(path: path)
            }
            #expect(throws: StoreError.newerSchema(path: path, unknown: ["v9-from-the-future"])) {
                try Store.openReadOnly(path: path)
            }
            #expect(fileBytes(path) == before)
            #expect(!FileManager.default.fileExists(atPath: path + "-wal"))
        }
    }

    @Test func refusesATextFileAndLeavesIt() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/notes.db"
            let text = Data("these are my notes, not a database\n".utf8)
            _ = FileManager.default.createFile(atPath: path, contents: text)
            for open in [{ try Store.open(path: path) }, { try Store.openReadOnly(path: path) }] {
                do {
                    _ = try open()
                    Issue.record("a text file was accepted")
                } catch {
                    guard case .corrupt = error as? StoreError else { throw error }
                    #expect(!String(describing: error).contains("\n"))
                }
            }
            #expect(fileBytes(path) == text)
        }
    }

    @Test func refusesADamagedDatabase() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/damaged.db"
            _ = try Fixture(dir)
            let original = try #require(fileBytes(dir + "/hq.db"))
            var damaged = original
            // Keep the header, wreck the schema page.
            for index in 100..<min(damaged.count, 4096) { damaged[index] = 0xA5 }
            _ = FileManager.default.createFile(atPath: path, contents: damaged)
            #expect(throws: StoreError.self) { _ = try Store.open(path: path).policies() }
            #expect(fileBytes(path) == damaged)
        }
    }

    @Test func reportsMissingAndUnopenablePaths() throws {
        try withTemporaryDirectory { dir in
            #expect(throws: StoreError.missing(path: dir + "/absent.db")) { try Store.openReadOnly(path: dir + "/absent.db") }
            #expect(!FileManager.default.fileExists(atPath: dir + "/absent.db"))
            #expect(throws: StoreError.self) { try Store.open(path: dir + "/no/such/dir/x.db") }
            #expect(throws: StoreError.self) { try Store.open(path: dir) }
            #expect(throws: StoreError.self) { try Store.open(path: "") }
        }
    }

    @Test func readOnlyStoreRefusesWritesAndAnOldSchema() throws {
        try withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            let reader = try Store.openReadOnly(path: fixture.store.path)
            #expect(try reader.sites().count == 2)
            #expect(throws: StoreError.readOnly(path: fixture.store.path, operation: "add policy x")) {
                try reader.addPolicy(Policy(name: "x", priority: 1, strategy: .bestScore))
            }
            let old = dir + "/old.db"
            let queue = try DatabaseQueue(path: old)
            try Schema.migrator.migrate(queue, upTo: Schema.migrationIdentifiers[0])
            try queue.close()
            #expect(throws: StoreError.olderSchema(path: old, pending: Array(Schema.migrationIdentifiers.dropFirst()))) {
                try Store.openReadOnly(path: old)
            }
        }
    }

    @Test func aHeldWriteLockFailsAfterTheBusyTimeout() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/busy.db"
            // The daemon's store stays open, as in real use (its WAL file is then never empty).
            let daemon = try Store.open(path: path)
            defer { withExtendedLifetime(daemon) {} }
            var config = Configuration()
            config.allowsUnsafeTransactions = true
            let other = try DatabaseQueue(path: path, configuration: config)
            try other.writeWithoutTransaction { db in try db.execute(sql: "BEGIN IMMEDIATE") }
            defer { try? other.writeWithoutTransaction { db in try db.execute(sql: "ROLLBACK") } }

            let store = try Store.open(path: path, busyTimeout: 0.2)
            let started = Date()
            #expect(throws: StoreError.locked(path: path, operation: "add policy late")) {
                try store.addPolicy(Policy(name: "late", priority: 3, strategy: .bestScore))
            }
            #expect(Date().timeIntervalSince(started) >= 0.15)
            // Readers are not blocked by the writer (WAL).
            #expect(try store.policies().isEmpty)
        }
    }
}

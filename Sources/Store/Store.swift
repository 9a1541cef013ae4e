import Foundation
import GRDB
import Model

/// The router's SQLite database: sites, endpoints, paths, metrics, policies and failover events.
///
/// Guarantees: WAL journal (sqlite3 and `patronus-router status` read while the daemon writes), foreign keys
/// on, a busy timeout on every connection, versioned migrations applied on open by writers only, and a
/// refusal (with nothing changed) of a file that is not SQLite or whose schema is newer than this binary.
/// A new database file is created 0600; SQLite gives its -wal and -shm files the same mode.
/// Cost: each call is one short transaction on the writer (writes) or a pooled reader (reads); a metrics
/// batch is one transaction whatever its size. Each write waits for the write lock (up to the busy timeout):
/// the daemon therefore writes only through a `StoreWriter`, on its own thread.
public final class Store: Sendable {
    /// How long a write waits for another writer before failing with `StoreError.locked`.
    public static let defaultBusyTimeout: TimeInterval = 5
    /// How long metrics rows are kept by `pruneMetrics`.
    public static let defaultMetricsRetention: TimeInterval = 7 * 24 * 3600

    public let path: String
    let reader: any DatabaseReader
    let writer: (any DatabaseWriter)?

    private init(path: String, reader: any DatabaseReader, writer: (any DatabaseWriter)?) {
        self.path = path
        self.reader = reader
        self.writer = writer
    }

    /// Opens (creating if absent, 0600) a database for reading and writing and applies pending migrations.
    public static func open(path: String, busyTimeout: TimeInterval = defaultBusyTimeout) throws(StoreError) -> Store {
        let existed = try checkFile(path, mustExist: false)
        var created = false
        if !existed {
            let fd = Glibc.open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw .cannotOpen(path: path, reason: String(cString: strerror(errno))) }
            close(fd)
            created = true
        }
        do {
            let applied = existed ? try refuseNewerSchema(path, busyTimeout: busyTimeout) : []
            let pool = try wrapping(path, "open") { try DatabasePool(path: path, configuration: configuration(busyTimeout)) }
            // A current database is opened without a single write, so a second process (the `policy`
            // command beside the daemon) never waits for the write lock just to open.
            if !Set(Schema.migrationIdentifiers).isSubset(of: applied) {
                try wrapping(path, "migrate") { try Schema.migrator.migrate(pool) }
            }
            return Store(path: path, reader: pool, writer: pool)
        } catch {
            // Only a file this call created may be removed; an existing one is never touched on failure.
            if created { for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) } }
            throw error
        }
    }

    /// Opens an existing database without writing to it: for `status` and readers beside the daemon.
    /// A schema that still needs migrations is refused, since applying them is a writer's job.
    public static func openReadOnly(path: String, busyTimeout: TimeInterval = defaultBusyTimeout) throws(StoreError) -> Store {
        _ = try checkFile(path, mustExist: true)
        var config = configuration(busyTimeout)
        config.readonly = true
        let queue = try wrapping(path, "open") { try DatabaseQueue(path: path, configuration: config) }
        let applied = try wrapping(path, "read schema version") { try queue.read { try appliedMigrations($0) } }
        let unknown = applied.subtracting(Schema.migrationIdentifiers)
        guard unknown.isEmpty else { throw .newerSchema(path: path, unknown: unknown.sorted()) }
        let pending = Schema.migrationIdentifiers.filter { !applied.contains($0) }
        guard pending.isEmpty else { throw .olderSchema(path: path, pending: pending) }
        return Store(path: path, reader: queue, writer: nil)
    }

    /// The migrations this database has, in the order this binary knows them.
    public func schemaVersion() throws(StoreError) -> [String] {
        let applied = try read("read schema version") { try Store.appliedMigrations($0) }
        return Schema.migrationIdentifiers.filter { applied.contains($0) }
    }

    public static var knownMigrations: [String] { Schema.migrationIdentifiers }

    // MARK: - Internals shared by the query files

    static func configuration(_ busyTimeout: TimeInterval) -> Configuration {
        var config = Configuration()
        config.busyMode = .timeout(busyTimeout)
        config.foreignKeysEnabled = true
        config.label = "patronus"
        config.prepareDatabase { db in
            // NORMAL is durable across application crashes in WAL mode and avoids an fsync per metrics batch.
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        return config
    }

    /// Returns whether the file exists; refuses anything that is not a regular SQLite file (or empty).
    private static func checkFile(_ path: String, mustExist: Bool) throws(StoreError) -> Bool {
        guard !path.isEmpty else { throw .cannotOpen(path: path, reason: "the path is empty") }
        var info = stat()
        guard stat(path, &info) == 0 else {
            let reason = errno
            if reason == ENOENT {
                if mustExist { throw .missing(path: path) }
                let directory = (path as NSString).deletingLastPathComponent
                guard directory.isEmpty || FileManager.default.fileExists(atPath: directory) else {
                    throw .cannotOpen(path: path, reason: "directory \(directory) does not exist: create it first")
                }
                return false
            }
            throw .cannotOpen(path: path, reason: String(cString: strerror(reason)))
        }
        guard info.st_mode & S_IFMT == S_IFREG else { throw .cannotOpen(path: path, reason: "not a regular file") }
        guard access(path, R_OK) == 0 else {
            throw .cannotOpen(path: path, reason: "\(String(cString: strerror(errno))) (check its owner and mode)")
        }
        guard info.st_size > 0 else { return true }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw .cannotOpen(path: path, reason: "cannot read it")
        }
        defer { try? handle.close() }
        let header = (try? handle.read(upToCount: 16)) ?? Data()
        guard header == Data("SQLite format 3\0".utf8) else {
            throw .corrupt(path: path, reason: "its first bytes are not an SQLite header")
        }
        return true
    }

    /// Reads the applied migrations through a read-only connection, so a newer database is refused before
    /// the pool switches it to WAL or anything else is written.
    private static func refuseNewerSchema(_ path: String, busyTimeout: TimeInterval) throws(StoreError) -> Set<String> {
        var config = configuration(busyTimeout)
        config.readonly = true
        let applied = try wrapping(path, "read schema version") {
            try DatabaseQueue(path: path, configuration: config).read { try appliedMigrations($0) }
        }
        let unknown = applied.subtracting(Schema.migrationIdentifiers)
        guard unknown.isEmpty else { throw .newerSchema(path: path, unknown: unknown.sorted()) }
        return applied
    }

    static func appliedMigrations(_ db: Database) throws -> Set<String> {
        guard try db.tableExists("grdb_migrations") else { return [] }
        return try Set(String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations"))
    }

    static func wrapping<T>(_ path: String, _ operation: String, _ body: () throws -> T) throws(StoreError) -> T {
        do { return try body() } catch { throw StoreError.wrap(error, path: path, operation: operation) }
    }

    func read<T>(_ operation: String, _ body: (Database) throws -> T) throws(StoreError) -> T {
        try Store.wrapping(path, operation) { try reader.read(body) }
    }

    func write<T>(_ operation: String, _ body: (Database) throws -> T) throws(StoreError) -> T {
        guard let writer else { throw .readOnly(path: path, operation: operation) }
        return try Store.wrapping(path, operation) { try writer.write(body) }
    }
}

extension Date {
    var utcText: String { UTCTime.format(self) }
}

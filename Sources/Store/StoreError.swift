import GRDB
import Model

/// Why a store operation failed. Each description is one line that names the database and the fix.
public enum StoreError: Error, Equatable, CustomStringConvertible {
    /// The file is not there (read-only opens never create one).
    case missing(path: String)
    /// The file or its directory cannot be opened (permissions, a directory in its place, no such folder).
    case cannotOpen(path: String, reason: String)
    /// The file is not an SQLite database, or it is damaged.
    case corrupt(path: String, reason: String)
    /// The schema was written by a newer patronus-router; unknown migrations are listed.
    case newerSchema(path: String, unknown: [String])
    /// A read-only open found a schema that still needs migrations (only a writer applies them).
    case olderSchema(path: String, pending: [String])
    /// Another connection held the write lock for longer than the busy timeout.
    case locked(path: String, operation: String)
    /// A read-only store was asked to write.
    case readOnly(path: String, operation: String)
    case invalidPolicy(PolicyError)
    case noSuchPolicy(String)
    /// A row that someone edited by hand no longer parses; names the table, row and column.
    case malformedRow(table: String, row: String, column: String, value: String)
    /// The local site must be recorded before paths from it.
    case noLocalSite(path: String)
    case noSuchSite(SiteID)
    case sql(path: String, operation: String, message: String)

    public var description: String {
        switch self {
        case .missing(let path):
            "no database at \(path): start `patronus-router run --database \(path)` first, or pass --database"
        case .cannotOpen(let path, let reason):
            "cannot open database \(path): \(reason)"
        case .corrupt(let path, let reason):
            "\(path) is not a usable patronus-router database (\(reason)); it was left untouched: move it away or pass another --database"
        case .newerSchema(let path, let unknown):
            "database \(path) was written by a newer patronus-router (unknown migrations: \(unknown.joined(separator: ", "))); it was left untouched: use that version or another --database"
        case .olderSchema(let path, let pending):
            "database \(path) needs schema upgrades (\(pending.joined(separator: ", "))): run `patronus-router run` or a `patronus-router policy` command once to apply them"
        case .locked(let path, let operation):
            "database \(path) is locked by another writer (\(operation) waited for the busy timeout); stop the other process or retry"
        case .readOnly(let path, let operation):
            "database \(path) is open read-only: cannot \(operation)"
        case .invalidPolicy(let error):
            error.description
        case .noSuchPolicy(let name):
            "no policy named '\(name)' (see `patronus-router policy list`)"
        case .malformedRow(let table, let row, let column, let value):
            "\(table) row \(row): column \(column) holds '\(value)', which does not parse; fix or delete that row"
        case .noLocalSite(let path):
            "database \(path) has no local site yet: the daemon records it at start"
        case .noSuchSite(let id):
            "no site with id \(id)"
        case .sql(let path, let operation, let message):
            "database \(path): \(operation) failed: \(message)"
        }
    }

    /// Maps any error thrown inside a store operation to a `StoreError`; store errors pass through.
    static func wrap(_ error: any Error, path: String, operation: String) -> StoreError {
        if let error = error as? StoreError { return error }
        if let error = error as? PolicyError { return .invalidPolicy(error) }
        guard let error = error as? DatabaseError else {
            return .sql(path: path, operation: operation, message: String(describing: error))
        }
        let message = error.message ?? "\(error.resultCode)"
        switch error.resultCode {
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            return .locked(path: path, operation: operation)
        case .SQLITE_NOTADB, .SQLITE_CORRUPT:
            return .corrupt(path: path, reason: message)
        case .SQLITE_CANTOPEN, .SQLITE_PERM, .SQLITE_AUTH:
            return .cannotOpen(path: path, reason: message)
        case .SQLITE_READONLY:
            return .readOnly(path: path, operation: operation)
        default:
            return .sql(path: path, operation: operation, message: message)
        }
    }
}

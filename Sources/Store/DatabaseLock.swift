import Foundation

/// An exclusive flock on the lock file beside a database (`StoreFiles.lock`): one daemon per database.
///
/// Guarantees: the lock is the kernel's, so it is released when the holder exits or crashes (no stale-lock
/// cleanup); the holder's pid is written into the file only to name it in the error of a second daemon.
/// The lock file is 0600 and never removed, since removing it would let two processes lock two files.
public final class DatabaseLock: Sendable {
    public let path: String
    private let descriptor: Int32

    private init(path: String, descriptor: Int32) {
        self.path = path
        self.descriptor = descriptor
    }

    /// Takes the lock or fails at once (no waiting) naming the pid that holds it.
    public static func acquire(for files: StoreFiles) throws(DatabaseLockError) -> DatabaseLock {
        let path = files.lock
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let directory = (path as NSString).deletingLastPathComponent
            if errno == ENOENT, !directory.isEmpty {
                throw .cannotOpen(path: path, reason: "directory \(directory) does not exist: create it first")
            }
            throw .cannotOpen(path: path, reason: String(cString: strerror(errno)))
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let reason = errno
            var buffer = [UInt8](repeating: 0, count: 32)
            let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
            close(fd)
            guard reason == EWOULDBLOCK else { throw .cannotOpen(path: path, reason: String(cString: strerror(reason))) }
            let holder = Int32(String(decoding: buffer[..<max(count, 0)], as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines))
            throw .held(database: files.database, lockPath: path, pid: holder)
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        return DatabaseLock(path: path, descriptor: fd)
    }

    /// Whether some process holds the lock now (for commands that want to say "the daemon is running").
    public static func isHeld(for files: StoreFiles) -> Bool {
        let fd = open(files.lock, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        guard flock(fd, LOCK_SH | LOCK_NB) == 0 else { return errno == EWOULDBLOCK }
        flock(fd, LOCK_UN)
        return false
    }

    deinit { close(descriptor) }
}

public enum DatabaseLockError: Error, Equatable, CustomStringConvertible {
    case held(database: String, lockPath: String, pid: Int32?)
    case cannotOpen(path: String, reason: String)

    public var description: String {
        switch self {
        case .held(let database, let lockPath, let pid):
            "database \(database) is in use by another patronus-router\(pid.map { " (pid \($0))" } ?? "") holding \(lockPath): stop it or pass another --database"
        case .cannotOpen(let path, let reason):
            "cannot open lock file \(path): \(reason)"
        }
    }
}

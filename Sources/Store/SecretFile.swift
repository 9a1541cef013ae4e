import Foundation

/// A 32-byte secret kept as one line of base64 text in a file of mode 0600: the WireGuard private key
/// (exactly the form `wg genkey` writes) and the mesh key.
///
/// Guarantees: a secret is created once and never overwritten unless asked (`force`); creation is atomic
/// (written to a temporary file in the same directory, fsynced, then hard-linked into place, which fails
/// instead of replacing an existing file); a file readable by group or others is refused on read, since a
/// leaked key cannot be taken back.
public enum SecretFile {
    public static let byteCount = 32

    /// Reads the secret at `path`, creating a new random one first when the file does not exist.
    /// Returns the bytes and whether this call created them.
    public static func loadOrCreate(at path: String) throws(SecretFileError) -> (bytes: [UInt8], created: Bool) {
        if FileManager.default.fileExists(atPath: path) { return (try read(at: path), false) }
        let bytes = random()
        do {
            try write(bytes, to: path, force: false)
            return (bytes, true)
        } catch .exists {
            // Another process created it between our check and our link: theirs wins, read it.
            return (try read(at: path), false)
        }
    }

    /// Writes a new random secret to `path`; refuses an existing file unless `force`.
    @discardableResult
    public static func generate(at path: String, force: Bool = false) throws(SecretFileError) -> [UInt8] {
        let bytes = random()
        try write(bytes, to: path, force: force)
        return bytes
    }

    public static func read(at path: String) throws(SecretFileError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw .cannotRead(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            throw .cannotRead(path: path, reason: "not a regular file")
        }
        guard info.st_mode & 0o077 == 0 else { throw .tooOpen(path: path, mode: info.st_mode & 0o777) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard count >= 0 else { throw .cannotRead(path: path, reason: String(cString: strerror(errno))) }
        let text = String(decoding: buffer[..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let data = Data(base64Encoded: text), data.count == byteCount else { throw .malformed(path: path) }
        return [UInt8](data)
    }

    /// The text form of a secret: base64, as `wg` prints keys.
    public static func encode(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

    static func random() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<byteCount).map { _ in generator.next() }
    }

    private static func write(_ bytes: [UInt8], to path: String, force: Bool) throws(SecretFileError) {
        if !force, FileManager.default.fileExists(atPath: path) { throw .exists(path: path) }
        let directory = (path as NSString).deletingLastPathComponent
        let temporary = (directory.isEmpty ? "." : directory) + "/.\((path as NSString).lastPathComponent).\(getpid()).tmp"
        let fd = open(temporary, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .cannotCreate(path: path, reason: String(cString: strerror(errno))) }
        defer { unlink(temporary) }
        let line = Array((encode(bytes) + "\n").utf8)
        let written = line.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == line.count, synced else {
            throw .cannotCreate(path: path, reason: String(cString: strerror(errno)))
        }
        if force {
            guard rename(temporary, path) == 0 else {
                throw .cannotCreate(path: path, reason: String(cString: strerror(errno)))
            }
        } else {
            guard link(temporary, path) == 0 else {
                if errno == EEXIST { throw .exists(path: path) }
                throw .cannotCreate(path: path, reason: String(cString: strerror(errno)))
            }
        }
    }
}

public enum SecretFileError: Error, Equatable, CustomStringConvertible {
    case exists(path: String)
    case cannotCreate(path: String, reason: String)
    case cannotRead(path: String, reason: String)
    case malformed(path: String)
    case tooOpen(path: String, mode: mode_t)

    public var description: String {
        switch self {
        case .exists(let path):
            "\(path) already exists and was left untouched (pass --force to replace it)"
        case .cannotCreate(let path, let reason):
            "cannot create secret file \(path): \(reason)"
        case .cannotRead(let path, let reason):
            "cannot read secret file \(path): \(reason)"
        case .malformed(let path):
            "secret file \(path) does not hold one base64 line of \(SecretFile.byteCount) bytes; it was left untouched"
        case .tooOpen(let path, let mode):
            "secret file \(path) has mode \(String(mode, radix: 8)), readable by others: run `chmod 600 \(path)`"
        }
    }
}

import Crypto
import Foundation

/// A 32-byte WireGuard key (public or pre-shared form) with the two text forms WireGuard uses:
/// base64 (the `wg` tool, config files) and lowercase hex (the UAPI protocol of wireguard-go).
public struct WireGuardKey: Hashable, Sendable, CustomStringConvertible {
    public static let length = 32

    /// Always exactly 32 bytes.
    public let bytes: [UInt8]

    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == WireGuardKey.length else { return nil }
        self.bytes = Array(bytes)
    }

    /// Parses the 44-character base64 form ("...=").
    public init?(base64 text: some StringProtocol) {
        guard text.utf8.count == 44, let data = Data(base64Encoded: String(text)) else { return nil }
        self.init(bytes: data)
    }

    /// Parses the 64-character hex form used by UAPI; either case is accepted.
    public init?(hex text: some StringProtocol) {
        let utf8 = Array(text.utf8)
        guard utf8.count == 64 else { return nil }
        var result = [UInt8]()
        result.reserveCapacity(32)
        var index = 0
        while index < 64 {
            guard let high = hexValue(utf8[index]), let low = hexValue(utf8[index + 1]) else { return nil }
            result.append(high << 4 | low)
            index += 2
        }
        self.bytes = result
    }

    public var base64: String { Data(bytes).base64EncodedString() }

    public var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(64)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The base64 form, as `wg show` prints it.
    public var description: String { base64 }

    /// All zeros: the value WireGuard uses to mean "no key".
    public var isZero: Bool { bytes.allSatisfy { $0 == 0 } }
}

private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
    default: nil
    }
}

/// An X25519 private key for a WireGuard interface. Its description never shows the secret.
public struct WireGuardPrivateKey: Sendable, CustomStringConvertible {
    /// The secret bytes; handle with care (UAPI and genetlink need them).
    public let secret: WireGuardKey
    /// The matching public key, as peers configure it.
    public let publicKey: WireGuardKey

    /// A fresh random key, clamped the way `wg genkey` stores it, so the stored bytes are canonical.
    public init() {
        var raw = Array(Curve25519.KeyAgreement.PrivateKey().rawRepresentation)
        raw[0] &= 248
        raw[31] = (raw[31] & 127) | 64
        // Clamped random bytes are always a valid X25519 scalar.
        self.init(WireGuardKey(bytes: raw)!)!
    }

    public init?(_ key: WireGuardKey) {
        guard let parsed = try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: key.bytes) else {
            return nil
        }
        secret = key
        publicKey = WireGuardKey(bytes: parsed.publicKey.rawRepresentation)!
    }

    public var description: String { "private key for \(publicKey)" }
}

/// Why a secret file could not be used. Each case names the file and the fix.
public enum SecretFileError: Error, Equatable, CustomStringConvertible {
    case unreadable(path: String, errno: Int32)
    case malformed(path: String)
    case tooOpen(path: String, mode: UInt32)
    case notCreated(path: String, errno: Int32)

    public var description: String {
        switch self {
        case .unreadable(let path, let code):
            "cannot read secret file \(path): \(String(cString: strerror(code))); check it exists and is readable by this user"
        case .malformed(let path):
            "secret file \(path) does not hold one base64 32-byte key; restore it from a backup or remove it to create a new one"
        case .tooOpen(let path, let mode):
            "secret file \(path) has mode \(String(mode, radix: 8)): others can read it; run 'chmod 600 \(path)'"
        case .notCreated(let path, let code):
            "cannot create secret file \(path): \(String(cString: strerror(code))); check the directory exists and is writable"
        }
    }
}

/// A 32-byte secret kept in a file as one base64 line (the `wg genkey` format), mode 0600.
///
/// `loadOrCreate` creates the file only when none exists, atomically (a temporary file linked into place), so
/// two starts racing never end up with different keys and an existing key is never overwritten.
public enum SecretFile {
    /// Reads the key in `path`; refuses a file that group or others can read.
    public static func load(from path: String) throws(SecretFileError) -> WireGuardKey {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .unreadable(path: path, errno: errno) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .unreadable(path: path, errno: errno) }
        guard info.st_mode & 0o077 == 0 else { throw .tooOpen(path: path, mode: info.st_mode & 0o7777) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count >= 0 else { throw .unreadable(path: path, errno: errno) }
        var text = String(decoding: buffer[..<count], as: UTF8.self)
        while text.last == "\n" || text.last == "\r" || text.last == " " { text.removeLast() }
        guard let key = WireGuardKey(base64: text) else { throw .malformed(path: path) }
        return key
    }

    /// Loads the key in `path`, or stores `make()` there when no file exists. `created` says which happened,
    /// so the caller can tell the operator once that a new secret exists.
    public static func loadOrCreate(at path: String, make: () -> WireGuardKey) throws(SecretFileError)
        -> (key: WireGuardKey, created: Bool)
    {
        if access(path, F_OK) == 0 { return (try load(from: path), false) }
        let key = make()
        let temporary = "\(path).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .notCreated(path: path, errno: errno) }
        let line = Array((key.base64 + "\n").utf8)
        let written = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let writeErrno = errno
        let synced = fsync(fd) == 0
        close(fd)
        guard written == line.count, synced else {
            unlink(temporary)
            throw .notCreated(path: path, errno: written < 0 ? writeErrno : EIO)
        }
        // link() fails with EEXIST when another process created the file first: then theirs wins.
        let linked = link(temporary, path)
        let linkErrno = errno
        unlink(temporary)
        if linked != 0 {
            if linkErrno == EEXIST { return (try load(from: path), false) }
            throw .notCreated(path: path, errno: linkErrno)
        }
        return (key, true)
    }

    /// The WireGuard private key in `path`, created on first use.
    public static func privateKey(at path: String) throws(SecretFileError) -> (key: WireGuardPrivateKey,
                                                                                  created: Bool)
    {
        let (raw, created) = try loadOrCreate(at: path) { WireGuardPrivateKey().secret }
        guard let key = WireGuardPrivateKey(raw) else { throw .malformed(path: path) }
        return (key, created)
    }
}

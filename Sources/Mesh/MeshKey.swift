import Crypto
import Foundation

/// The 32-byte mesh secret every site of one mesh shares; announcements carry an HMAC-SHA256 under it.
/// Its description never shows the secret. The key file itself is `Store.SecretFile`'s (one base64 line,
/// mode 0600, created once): `MeshKey(bytes: try SecretFile.loadOrCreate(at: path).bytes)`.
public struct MeshKey: Sendable, Equatable, CustomStringConvertible {
    public static let length = 32
    private let bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == MeshKey.length else { return nil }
        self.bytes = bytes
    }

    /// Crypto's key type is not Sendable; making one per use costs one small allocation.
    var key: SymmetricKey { SymmetricKey(data: bytes) }

    /// The base64 form, as `patronus-router mesh-key generate` prints it and the key file holds it.
    public var base64: String { Data(bytes).base64EncodedString() }

    /// Parses the 44-character base64 form (surrounding whitespace ignored).
    public init?(base64 text: String) {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.utf8.count == 44, let data = Data(base64Encoded: trimmed) else { return nil }
        self.init(bytes: Array(data))
    }

    /// A fresh random key from the system CSPRNG.
    public static func generate() -> MeshKey {
        MeshKey(bytes: SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) })!
    }

    public var description: String { "mesh key (hidden)" }
}

/// How announcements are protected: HMAC-SHA256 under the mesh key, or nothing (`--insecure-no-auth`).
public enum MeshAuthentication: Sendable, Equatable {
    case key(MeshKey)
    /// Accepts and sends unauthenticated announcements only. Anyone on the segment can then join the mesh.
    case insecure
}

import Foundation

/// Why a certificate, CA or revocation list file was refused (names the file and the fix).
public enum TrustFileError: Error, Hashable, CustomStringConvertible {
    case cannotRead(path: String, reason: String)
    case missing(path: String, label: String)
    case malformed(path: String, label: String, reason: AnnouncementRejection)
    case cannotWrite(path: String, reason: String)

    public var description: String {
        switch self {
        case .cannotRead(let path, let reason): "cannot read \(path): \(reason)"
        case .missing(let path, let label): "\(path) holds no '\(label)' block; is it the right file?"
        case .malformed(let path, let label, let reason):
            "\(path): the \(label) is not valid (\(reason)); copy it again from the CA"
        case .cannotWrite(let path, let reason): "cannot write \(path): \(reason)"
        }
    }
}

/// Reading and writing the armoured files of docs/MESH.md "Certificates": `ca.crt`, site certificates,
/// certificate requests and revocation lists.
public enum TrustFiles {
    static func blocks(at path: String, label: String) throws(TrustFileError) -> [[UInt8]] {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw .cannotRead(path: path, reason: (error as NSError).localizedDescription)
        }
        let blocks = Armor.unwrap(text, label: label)
        guard !blocks.isEmpty else { throw .missing(path: path, label: label) }
        return blocks
    }

    static func decode<T>(_ path: String, _ label: String,
                          _ decode: ([UInt8]) throws(AnnouncementRejection) -> T) throws(TrustFileError) -> [T] {
        var values: [T] = []
        for block in try blocks(at: path, label: label) {
            do { values.append(try decode(block)) } catch { throw .malformed(path: path, label: label, reason: error) }
        }
        return values
    }

    /// Every CA in the file (two during a CA rotation).
    public static func authorities(at path: String) throws(TrustFileError) -> [CACertificate] {
        try decode(path, Armor.caCertificate) { bytes throws(AnnouncementRejection) in try CACertificate.decode(bytes) }
    }

    public static func certificate(at path: String) throws(TrustFileError) -> SiteCertificate {
        try decode(path, Armor.siteCertificate) { bytes throws(AnnouncementRejection) in try SiteCertificate.decode(bytes) }[0]
    }

    public static func request(at path: String) throws(TrustFileError) -> CertificateRequest {
        try decode(path, Armor.certificateRequest) { bytes throws(AnnouncementRejection) in try CertificateRequest.decode(bytes) }[0]
    }

    public static func revocationList(at path: String) throws(TrustFileError) -> RevocationList {
        try decode(path, Armor.revocationList) { bytes throws(AnnouncementRejection) in try RevocationList.decode(bytes) }[0]
    }

    /// Writes `text` atomically (a temporary file renamed into place) with `mode`.
    public static func write(_ text: String, to path: String, mode: Int = 0o644) throws(TrustFileError) {
        let temporary = path + ".tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: temporary, contents: Data(text.utf8),
                                             attributes: [.posixPermissions: mode]) else {
            throw .cannotWrite(path: path, reason: "cannot create \(temporary)")
        }
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw .cannotWrite(path: path, reason: reason)
        }
    }
}

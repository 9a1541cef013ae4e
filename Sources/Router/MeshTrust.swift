import Foundation
import Logging
import Mesh
import Model
import ServiceLifecycle
import Store

/// The daemon's side of certificates (docs/MESH.md): the CA it trusts, its own certificate and identity key,
/// and the revocation list file (read at start, watched, rewritten when a newer list arrives from the mesh).
enum MeshTrust {
    /// What discovery needs, and our certificate (nil without one). Throws naming the file and the fix.
    static func identity(configuration: RouterConfiguration, files: StoreFiles, siteID: SiteID,
                         logger: Logger) throws -> (DiscoveryService.Identity, SiteCertificate?) {
        var identity = DiscoveryService.Identity(legacyCopies: configuration.announceV1)
        if let caPath = configuration.caPath {
            let authorities = try TrustFiles.authorities(at: caPath)
            identity.trust = CertificateTrust(authorities: authorities.map(\.publicKey),
                                              required: configuration.requireCertificates)
            logger.info("trusting the mesh CA", metadata: ["ca": "\(authorities.map(\.name))",
                                                           "require_certificates": "\(configuration.requireCertificates)"])
        }
        guard let certificatePath = certificatePath(configuration: configuration, files: files) else { return (identity, nil) }
        let signer = try signer(at: certificatePath, configuration: configuration, files: files, siteID: siteID,
                                trust: identity.trust)
        identity.signer = signer
        log(signer.certificate, logger: logger)
        return (identity, signer.certificate)
    }

    /// `--certificate`, or DATABASE.crt when it exists.
    static func certificatePath(configuration: RouterConfiguration, files: StoreFiles) -> String? {
        configuration.certificatePath
            ?? (FileManager.default.fileExists(atPath: files.certificate) ? files.certificate : nil)
    }

    /// Our certificate and identity key, checked: for this site, for this key, signed by a CA we trust.
    static func signer(at certificatePath: String, configuration: RouterConfiguration, files: StoreFiles, siteID: SiteID,
                       trust: CertificateTrust) throws -> AnnouncementSigner {
        let certificate = try TrustFiles.certificate(at: certificatePath)
        guard certificate.siteID == siteID, certificate.name == configuration.siteName else {
            throw MeshTrustError.notOurs(path: certificatePath, certificate: "\(certificate.name) (\(certificate.siteID))",
                                         site: "\(configuration.siteName) (\(siteID))")
        }
        guard let key = SigningPrivateKey(bytes: try SecretFile.read(at: files.identityKey)),
              let signer = AnnouncementSigner(key: key, certificate: certificate) else {
            throw MeshTrustError.wrongKey(path: certificatePath, key: files.identityKey)
        }
        if let authority = trust.authority(for: certificate.issuer), !certificate.isSigned(by: authority) {
            throw MeshTrustError.notSigned(path: certificatePath)
        }
        return signer
    }

    static func log(_ certificate: SiteCertificate, logger: Logger) {
        let days = Int(certificate.notAfterDate.timeIntervalSinceNow / 86_400)
        logger.info("announcing with certificate \(certificate.serialText)", metadata: [
            "valid_until": "\(certificate.notAfterDate)", "days_left": "\(days)",
        ])
        if days < StatusSnapshot.CertificateSummary.warningDays {
            logger.warning("the site certificate expires in \(days) days: ask the CA for a new one (ca sign) and copy it over this one")
        }
    }

    static func record(_ certificate: SiteCertificate?) -> CertificateRecord? {
        certificate.map {
            CertificateRecord(serial: $0.serialText, notBefore: $0.notBeforeDate, notAfter: $0.notAfterDate,
                              issuer: $0.issuer.map { String(format: "%02x", $0) }.joined())
        }
    }

    /// Writes a newer list received from the mesh, so it holds across restarts.
    static func persist(_ list: RevocationList, to path: String, logger: Logger) {
        do {
            try TrustFiles.write(Armor.wrap(try list.encode(), label: Armor.revocationList), to: path)
        } catch {
            logger.error("keeping the revocation list failed: \(error)")
        }
    }
}

public enum MeshTrustError: Error, Equatable, CustomStringConvertible {
    case notOurs(path: String, certificate: String, site: String)
    case wrongKey(path: String, key: String)
    case notSigned(path: String)

    public var description: String {
        switch self {
        case .notOurs(let path, let certificate, let site):
            "\(path) certifies \(certificate), not this site \(site): sign this site's request (identity request)"
        case .wrongKey(let path, let key):
            "\(path) is not for the identity key \(key): sign the request made with that key (identity request)"
        case .notSigned(let path):
            "\(path) is not signed by the CA of --ca: ask that CA for a certificate (ca sign)"
        }
    }
}

/// Calls `changed` with the file's path at start (when it exists) and whenever its modification time changes,
/// checking once a second: the revocation list an operator copied in (`ca revoke` says where), or a renewed
/// certificate copied over the old one (taken without a restart, so without an outage).
struct FileWatcher: Service {
    let path: String
    let changed: @Sendable (String) async -> Void

    func run() async throws {
        var seen: Date?
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let modified = (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
            if let modified, modified != seen {
                seen = modified
                await changed(path)
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }
}

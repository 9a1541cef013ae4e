import ArgumentParser
import Foundation
import Mesh
import Model
import Store

/// `patronus-router ca ...`: the offline mesh CA (like nebula-cert or easy-rsa): its key never has to be on a
/// router. `ca init` creates it, `ca sign` certifies a site's request, `ca revoke` writes the revocation list
/// to give to any one site, `ca show` prints any certificate, request or list.
struct CACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "The mesh CA: create it, sign site certificates, revoke them (keep it off the routers).",
        subcommands: [Init.self, Sign.self, Revoke.self, Show.self])

    /// The CA's directory: ca.key (0600), ca.crt, issued/<serial>.crt, revoked.crl.
    struct Directory {
        let path: String
        var key: String { path + "/ca.key" }
        var certificate: String { path + "/ca.crt" }
        var issued: String { path + "/issued" }
        var revocationList: String { path + "/revoked.crl" }

        func loadKey() throws -> (SigningPrivateKey, CACertificate) {
            guard let key = SigningPrivateKey(bytes: try SecretFile.read(at: key)) else {
                throw ValidationError("\(self.key) is not a CA key")
            }
            let ca = try TrustFiles.authorities(at: certificate)[0]
            guard ca.publicKey == key.publicKey else {
                throw ValidationError("\(self.key) does not belong to \(certificate)")
            }
            return (key, ca)
        }

        func issuedCertificates() -> [SiteCertificate] {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: issued)) ?? []
            return names.filter { $0.hasSuffix(".crt") }.sorted().compactMap { try? TrustFiles.certificate(at: "\(issued)/\($0)") }
        }
    }

    static func say(_ text: String) { FileHandle.standardOutput.write(Data((text + "\n").utf8)) }

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a mesh CA: an Ed25519 key (0600) and its certificate.",
            discussion: "Keep the directory offline; copy only ca.crt to the routers (run --ca ca.crt).")

        @Option(help: "The CA's name.")
        var name = "patronus mesh CA"

        @Option(help: ArgumentHelp("The CA's directory (created; must not hold a CA yet).", valueName: "path"))
        var dir = "mesh-ca"

        func run() throws {
            let directory = Directory(path: dir)
            try FileManager.default.createDirectory(atPath: directory.issued, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
            guard !FileManager.default.fileExists(atPath: directory.key) else {
                throw ValidationError("\(directory.key) exists: this directory already holds a CA")
            }
            let key = SigningPrivateKey(bytes: try SecretFile.generate(at: directory.key))!
            let ca = try CACertificate.create(name: name, key: key)
            try TrustFiles.write(Armor.wrap(ca.encode(), label: Armor.caCertificate), to: directory.certificate)
            say("created the CA '\(name)': \(directory.key) (secret, keep it offline) and \(directory.certificate)")
            say("copy \(directory.certificate) to every router and run it with --ca PATH")
        }
    }

    struct Sign: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Certify a site: its request (from `identity request`), what it may announce, for how long.",
            discussion: "Copy the certificate to the site and run it with --certificate PATH.")

        @Option(help: ArgumentHelp("The CA's directory.", valueName: "path"))
        var dir = "mesh-ca"

        @Option(help: ArgumentHelp("The site's request file.", valueName: "path"))
        var request: String

        @Option(help: ArgumentHelp("A LAN prefix the site may announce (repeatable; its announced prefixes must lie within these).",
                                   valueName: "cidr"), transform: ArgumentParsing.prefix)
        var lan: [IPv4Prefix] = []

        @Option(help: ArgumentHelp("Where its overlay address may lie (repeatable).", valueName: "cidr"),
                transform: ArgumentParsing.prefix)
        var overlay: [IPv4Prefix] = [OverlayAddressing.defaultPool]

        @Option(help: ArgumentHelp("site, or hub (may relay other sites' announcements).", valueName: "role"))
        var role = "site"

        @Option(help: "Days of validity from now.")
        var days = 365

        @Option(help: ArgumentHelp("Where to write the certificate (default: NAME.crt).", valueName: "path"))
        var output: String?

        func run() throws {
            guard let role = SiteRole(name: role) else { throw ValidationError("--role: '\(self.role)' is not site or hub") }
            guard (1...3650).contains(days) else { throw ValidationError("--days: \(days) is not 1-3650") }
            let directory = Directory(path: dir)
            let (key, _) = try directory.loadKey()
            let asked = try TrustFiles.request(at: request)
            let now = UInt64(Date().timeIntervalSince1970)
            var certificate = SiteCertificate(issuer: [], serial: UInt64.random(in: 1...UInt64.max), siteID: asked.siteID,
                                              name: asked.name, role: role, identityKey: asked.identityKey,
                                              notBefore: now - 300, notAfter: now + UInt64(days) * 86_400,
                                              lanPrefixes: lan, overlayPrefixes: overlay)
            try certificate.sign(with: key)
            let text = Armor.wrap(try certificate.encode(), label: Armor.siteCertificate)
            let path = output ?? "\(asked.name).crt"
            try TrustFiles.write(text, to: "\(directory.issued)/\(certificate.serialText).crt")
            try TrustFiles.write(text, to: path)
            say("signed \(asked.name) (\(asked.siteID)), serial \(certificate.serialText), valid \(days) days: \(path)")
            say("copy it to the site and run it with --certificate \(path)")
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke certificates and write the CA-signed revocation list.",
            discussion: "Give the list to any one site (copy it to DATABASE.crl, or its --revocation-list): it spreads "
                + "to every site within seconds, and they drop the revoked sites.")

        @Option(help: ArgumentHelp("The CA's directory.", valueName: "path"))
        var dir = "mesh-ca"

        @Argument(help: ArgumentHelp("What to revoke: a serial (16 hex digits), a site name (all its certificates) or a certificate file.",
                                     valueName: "serial|site|file"))
        var targets: [String]

        func run() throws {
            let directory = Directory(path: dir)
            let (key, _) = try directory.loadKey()
            let issued = directory.issuedCertificates()
            var serials: [UInt64] = []
            for target in targets {
                if FileManager.default.fileExists(atPath: target) {
                    serials.append(try TrustFiles.certificate(at: target).serial)
                } else if let byName = Optional(issued.filter { $0.name == target }), !byName.isEmpty {
                    serials += byName.map(\.serial)
                } else if target.utf8.count == 16, let serial = UInt64(target, radix: 16) {
                    serials.append(serial)
                } else {
                    throw ValidationError("'\(target)' is no certificate file, no site this CA signed, nor a 16-digit serial")
                }
            }
            let held = FileManager.default.fileExists(atPath: directory.revocationList)
                ? try TrustFiles.revocationList(at: directory.revocationList) : nil
            var list = RevocationList(issuer: [], number: (held?.number ?? 0) + 1,
                                      issued: UInt64(Date().timeIntervalSince1970), serials: (held?.serials ?? []) + serials)
            try list.sign(with: key)
            try TrustFiles.write(Armor.wrap(try list.encode(), label: Armor.revocationList), to: directory.revocationList)
            say("revocation list \(list.number): \(list.serials.count) certificates revoked: \(directory.revocationList)")
            say("give it to any one site: copy it to that router's DATABASE.crl (or its --revocation-list path)")
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print certificates, requests, CAs and revocation lists (files), or what a CA issued (--dir).")

        @Option(help: ArgumentHelp("List every certificate this CA issued, with its state.", valueName: "path"))
        var dir: String?

        @Argument(help: ArgumentHelp("Files to print.", valueName: "file"))
        var files: [String] = []

        func run() throws {
            if let dir {
                let directory = Directory(path: dir)
                let revoked = Set((try? TrustFiles.revocationList(at: directory.revocationList))?.serials ?? [])
                for certificate in directory.issuedCertificates() {
                    say(Self.line(certificate) + (revoked.contains(certificate.serial) ? "  REVOKED" : ""))
                }
            }
            for file in files {
                let text = try String(contentsOfFile: file, encoding: .utf8)
                for block in Armor.unwrap(text, label: Armor.caCertificate) {
                    let ca = try CACertificate.decode(block)
                    say("CA \(ca.name): key id \(hex(ca.publicKey.keyID)), public key \(ca.publicKey)")
                }
                for block in Armor.unwrap(text, label: Armor.siteCertificate) {
                    say(Self.line(try SiteCertificate.decode(block)))
                }
                for block in Armor.unwrap(text, label: Armor.certificateRequest) {
                    let request = try CertificateRequest.decode(block)
                    say("request: site \(request.name) (\(request.siteID)), identity key \(request.identityKey)")
                }
                for block in Armor.unwrap(text, label: Armor.revocationList) {
                    let list = try RevocationList.decode(block)
                    say("revocation list \(list.number) from CA \(hex(list.issuer)): "
                        + list.serials.map { String(format: "%016llx", $0) }.joined(separator: " "))
                }
            }
        }

        static func line(_ c: SiteCertificate) -> String {
            let days = Int(c.notAfterDate.timeIntervalSinceNow / 86_400)
            return "certificate \(c.serialText): site \(c.name) (\(c.siteID)), role \(c.role), "
                + "LAN \(c.lanPrefixes.map(\.description).joined(separator: ",")), overlay "
                + "\(c.overlayPrefixes.map(\.description).joined(separator: ",")), valid until \(c.notAfterDate) "
                + "(\(days) days), CA \(hex(c.issuer)), identity key \(c.identityKey)"
        }
    }
}

private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

/// `patronus-router identity request`: the site's identity key (created once, 0600, beside the database) and
/// the request for the CA (`ca sign --request`), like `wg genkey` and easy-rsa's gen-req.
struct IdentityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "identity",
        abstract: "This site's identity key and its certificate request.",
        subcommands: [Request.self])

    struct Request: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the site's identity key if needed (DATABASE.identity-key, 0600) and write its request.",
            discussion: "Give the request to the CA (ca sign --request FILE); only the public half leaves the router.")

        @Option(help: "Database file path.")
        var database = "sdwan.db"

        @Option(help: "Name of this site (as `run --site-name`).")
        var siteName: String

        @Option(help: ArgumentHelp("Where to write the request (default: SITE.req).", valueName: "path"))
        var output: String?

        func run() throws {
            let files = StoreFiles(database: database)
            let store = try Store.open(path: files.database)
            let siteID = try store.ensureLocalSite(name: siteName)
            let (seed, created) = try SecretFile.loadOrCreate(at: files.identityKey)
            let key = SigningPrivateKey(bytes: seed)!
            let request = CertificateRequest(siteID: siteID, name: siteName, identityKey: key.publicKey)
            let path = output ?? "\(siteName).req"
            try TrustFiles.write(Armor.wrap(request.encode(), label: Armor.certificateRequest), to: path)
            CACommand.say((created ? "created the identity key \(files.identityKey) (0600); " : "")
                          + "wrote the request for \(siteName) (\(siteID)) to \(path): sign it with "
                          + "`patronus-router ca sign --request \(path) --lan CIDR`")
        }
    }
}

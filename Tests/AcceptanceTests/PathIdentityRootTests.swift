import Foundation
import Glibc
import Lab
import Testing

/// Issue 21: one name for a path everywhere. In a lab of real routers, the path a class takes as the demo
/// prints it (scripts/lablib.sh, reading nft), the nft chains and their comments, the ip rules and routes,
/// the `paths` table (read with sqlite3), `status` and `status --json` must all name the same path the same
/// way; after a cut, so must the failover_events row.
@Suite(.serialized) struct PathIdentityRootTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test(.enabled(if: acceptanceCanRun), .timeLimit(.minutes(4)))
    func nftTheDatabaseStatusAndTheDemoNameEveryPathAlikeRoot() throws {
        let lab = try AcceptanceLab(sites: 2)
        defer { lab.down() }
        try lab.waitForMesh()
        let hq = lab.router("hq")

        // 1. The database, as a user reads it.
        let rows = try Subprocess.run(["sqlite3", "-separator", "|", lab.database("hq"),
                                       "SELECT id, wg_interface, slot, local_label FROM paths WHERE slot IS NOT NULL ORDER BY id"])
        #expect(rows.succeeded, "\(rows.stderr)")
        let paths: [(id: Int, interface: String, slot: Int, uplink: String)] = rows.stdout.split(separator: "\n").compactMap {
            let f = $0.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            guard f.count == 4, let id = Int(f[0]), let slot = Int(f[2]) else { return nil }
            return (id, f[1], slot, f[3])
        }
        #expect(paths.count == 2, "hq has one path per uplink to east: \(rows.stdout)")

        // 2. nft: a chain per class and path id, whose comment names the path id and its tunnel.
        // (nft 1.0.6's JSON leaves chain comments out: read the listing a user reads.)
        let listing = try hq.check(["nft", "list", "table", "inet", "patronus"])
        var chains: [String: String] = [:]
        var current: String?
        for line in listing.split(separator: "\n").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            if line.hasPrefix("chain "), line.hasSuffix("{") {
                current = String(line.dropFirst("chain ".count).dropLast()).trimmingCharacters(in: .whitespaces)
                chains[current!] = ""
            } else if let name = current, line.hasPrefix("comment \"") {
                chains[name] = String(line.dropFirst("comment \"".count).dropLast())
                current = nil
            }
        }
        for path in paths {
            for policy in ["voip", "bulk", "default"] {
                let comment = try #require(chains["\(policy)_path\(path.id)"], "no chain \(policy)_path\(path.id)")
                #expect(comment.contains("path \(path.id) (") && comment.contains(path.interface) && comment.contains(path.uplink),
                        "the comment of \(policy)_path\(path.id) names another path: [\(comment)] \(path)")
            }
            // 3. ip: the slot's rule and table lead into the path's tunnel.
            let routes = try hq.check(["ip", "route", "show", "table", "\(6200 + path.slot)"])
            #expect(routes.contains("dev \(path.interface)"), "table \(6200 + path.slot): \(routes)")
            let rules = try hq.check(["ip", "rule", "show"])
            #expect(rules.contains("fwmark \(String(format: "0x%x", path.slot << 16))/0xfff0000 lookup \(6200 + path.slot) proto 77"))
        }
        #expect(chains.keys.filter { $0.hasPrefix("voip_path") }.count == paths.count, "no chain for a path that is not in the database")

        // 4. status and status --json: the same ids, tunnels and slots.
        let json = try lab.status("hq")["paths"] as? [[String: Any]] ?? []
        for path in paths {
            let entry = json.first { $0["id"] as? Int == path.id }
            #expect(entry?["wg_interface"] as? String == path.interface && entry?["slot"] as? Int == path.slot)
        }
        let report = try Subprocess.run([Binary.path, "status", "--database", lab.database("hq")]).stdout
        for path in paths {
            #expect(report.contains("  \(path.id): hq → east via \(path.uplink) (\(path.interface), direct, up; slot \(path.slot), table \(6200 + path.slot))"),
                    "\(report)")
        }

        // 5. What the demo prints: the class's path id from nft and its uplink from the database.
        func demo(_ function: String, _ arguments: String) throws -> String {
            let script = "source '\(Self.root.path)/scripts/lablib.sh'; \(function) \(arguments)"
            let result = try Subprocess.run(["env", "LAB_INSTANCE=\(lab.controller.instance)",
                                             "LAB_STATE=\(lab.controller.stateDirectory)", "BIN=\(Binary.path)",
                                             "bash", "-c", script])
            return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let voip = try #require(Int(try demo("lab_class_path", "hq voip east")))
        let before = try #require(paths.first { $0.id == voip }, "the demo's path \(voip) is not in the database")
        #expect(try demo("lab_path_uplink", "hq \(voip)") == before.uplink)

        // 6. A cut: VoIP moves, and the failover_events row names both paths by the same ids.
        try lab.impair("hq", before.uplink, ImpairmentChange(cut: true))
        try lab.wait("VoIP to leave path \(voip)", timeout: 20) { try demo("lab_class_path", "hq voip east") != "\(voip)" }
        let now = try #require(Int(try demo("lab_class_path", "hq voip east")))
        let after = try #require(paths.first { $0.id == now })
        #expect(after.uplink != before.uplink)
        let events = try Subprocess.run(["sqlite3", "-separator", "|", lab.database("hq"),
                                         "SELECT from_path, to_path FROM failover_events WHERE policy = 'voip' ORDER BY id DESC LIMIT 1"])
        #expect(events.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(voip)|\(now)", "\(events.stdout)")
        print("path identity: voip moved from path \(voip) (\(before.uplink), \(before.interface)) to path \(now) (\(after.uplink), \(after.interface))")
    }
}

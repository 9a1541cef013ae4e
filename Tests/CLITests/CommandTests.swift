import Foundation
import Lab
import Testing
import Model
import Store

/// End-to-end runs of the built executable: exit codes, the one error line, and files left as they were.
@Suite(.enabled(if: Binary.exists, "needs the built patronus-router executable"))
struct CommandTests {
    /// `--version` names the VERSION file's version and the git commit of the tree the binary was built from.
    @Test func versionNamesTheVersionFileAndTheCommit() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let version = try String(contentsOf: root.appendingPathComponent("VERSION"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let result = try run(["--version"])
        #expect(result.status == 0)
        let line = result.stdout.trimmingCharacters(in: .newlines)
        #expect(line.hasPrefix("patronus-router \(version) (commit "), "\(line)")
        let commit = line.split(separator: " ").last.map { String($0.dropLast()) } ?? ""
        #expect(commit == "unknown" || commit.range(of: "^[0-9a-f]{12}(\\+dirty)?$", options: .regularExpression) != nil,
                "\(line)")
    }

    @Test func statusRefusesATextFileAndLeavesIt() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/notes.db"
            let text = Data("not a database\n".utf8)
            _ = FileManager.default.createFile(atPath: path, contents: text)
            for arguments in [["status", "--database", path], ["policy", "list", "--database", path],
                              ["policy", "add", "--database", path, "--name", "x", "--priority", "1", "--strategy", "best-score"]] {
                let result = try run(arguments)
                #expect(result.status == 1, "\(arguments)")
                #expect(result.stderrLines.count == 1 && result.stderr.hasPrefix("error: "), "\(result.stderr)")
                #expect(result.stderr.contains("not a usable patronus-router database"))
            }
            #expect(fileBytes(path) == text)
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["notes.db"])
        }
    }

    @Test func anUnopenableDatabaseIsOneLine() throws {
        try withTemporaryDirectory { dir in
            let result = try run(["status", "--database", dir])
            #expect(result.status == 1 && result.stderrLines.count == 1)
            #expect(result.stderr == "error: cannot open database \(dir): not a regular file\n")
            let nowhere = try run(["policy", "add", "--database", dir + "/no/x.db", "--name", "a", "--priority", "1",
                                   "--strategy", "best-score"])
            #expect(nowhere.status == 1 && nowhere.stderr.contains("does not exist: create it first"))
        }
    }

    /// A destination outside every site's prefixes is an answer, not an error: one line on stdout, exit 1,
    /// and nothing written.
    @Test func explainingAnAddressOfNoSiteSaysNotSteered() throws {
        try withTemporaryDirectory { dir in
            let database = dir + "/hq.db"
            let store = try Store.open(path: database)
            _ = try store.ensureLocalSite(name: "hq")
            try store.loadDefaultPoliciesIfNew(Policy.defaults())
            let before = fileBytes(database)
            let result = try run(["explain", "203.0.113.5", "udp", "5060", "--database", database])
            #expect(result.status == 1 && result.stdout == "not steered: 203.0.113.5 is not in any site's prefixes\n"
                    && result.stderr.isEmpty, "\(result.stdout)\(result.stderr)")
            #expect(fileBytes(database) == before)
            let bad = try run(["explain", "203.0.113.5", "gre", "1", "--database", database])
            #expect(bad.status == 64 && bad.stderrLines.count == 1 && bad.stdout.isEmpty)
        }
    }

    @Test func statusOfAMissingDatabaseCreatesNothing() throws {
        try withTemporaryDirectory { dir in
            let result = try run(["status", "--database", dir + "/none.db"])
            #expect(result.status == 1 && result.stderrLines.count == 1 && result.stderr.contains("no database at"))
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
        }
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/sqlite3")))
    func aNewerSchemaIsRefusedUntouched() throws {
        try withTemporaryDirectory { dir in
            let database = dir + "/new.db"
            try Store.open(path: database).loadDefaultPoliciesIfNew(Policy.defaults())
            let insert = try run(["/usr/bin/sqlite3", database, "INSERT INTO grdb_migrations VALUES ('v9-future');"],
                                 executable: "/usr/bin/env")
            #expect(insert.status == 0, "\(insert.stderr)")
            let before = fileBytes(database)
            for arguments in [["status", "--database", database], ["policy", "disable", "--database", database, "bulk"]] {
                let result = try run(arguments)
                #expect(result.status == 1 && result.stderrLines.count == 1, "\(result.stderr)")
                #expect(result.stderr.contains("written by a newer patronus-router") && result.stderr.contains("v9-future"))
            }
            #expect(fileBytes(database) == before)
        }
    }

    @Test func aMalformedPolicyTouchesNothing() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/p.db"
            let result = try run(["policy", "add", "--database", path, "--name", "x", "--priority", "1",
                                  "--strategy", "best-score", "--max-loss", "200"])
            #expect(result.status == 64)
            #expect(result.stderr == "error: policy 'x': max loss 200.0% is not in [0, 100]\n")
            #expect(!FileManager.default.fileExists(atPath: path))
        }
    }

    @Test func policyEditsRoundTrip() throws {
        try withTemporaryDirectory { dir in
            let database = dir + "/p.db"
            let add = try run(["policy", "add", "--database", database, "--name", "video", "--priority", "50",
                               "--strategy", "lowest-loss", "--match", "udp:3478-3481", "--dscp", "34", "--max-loss", "1"])
            #expect(add.status == 0, "\(add.stderr)")
            var list = try run(["policy", "list", "--database", database])
            let lines = list.stdout.split(separator: "\n")
            #expect(lines.count == 5)
            #expect(lines[0].hasPrefix("PRIORITY"))
            #expect(lines[1].hasPrefix("50") && lines[1].contains("video") && lines[1].contains("udp:3478-3481 dscp:34")
                    && lines[1].contains("loss<=1%"))
            #expect(lines[2].contains("voip") && lines[3].contains("bulk") && lines[4].contains("default"))
            #expect(try run(["policy", "disable", "--database", database, "bulk"]).status == 0)
            #expect(try run(["policy", "remove", "--database", database, "default"]).status == 0)
            let duplicate = try run(["policy", "add", "--database", database, "--name", "video", "--priority", "7",
                                     "--strategy", "best-score"])
            #expect(duplicate.status == 1 && duplicate.stderr == "error: a policy named 'video' already exists\n")
            let missing = try run(["policy", "enable", "--database", database, "nope"])
            #expect(missing.status == 1 && missing.stderrLines.count == 1 && missing.stderr.contains("no policy named 'nope'"))
            list = try run(["policy", "list", "--json", "--database", database])
            let policies = try PolicyFile.decode(Data(list.stdout.utf8))
            #expect(policies.map(\.name) == ["video", "voip", "bulk"])
            #expect(policies.map(\.enabled) == [true, true, false])
            #expect(policies.map(\.duplicate) == [false, true, false], "the shipped voip duplicates")
        }
    }

    @Test func duplicationIsAPolicyOptionInAddEditAndList() throws {
        try withTemporaryDirectory { dir in
            let database = dir + "/d.db"
            let add = try run(["policy", "add", "--database", database, "--name", "games", "--priority", "60",
                               "--strategy", "lowest-latency", "--match", "udp:3074", "--duplicate"])
            #expect(add.status == 0, "\(add.stderr)")
            var lines = try run(["policy", "list", "--database", database]).stdout.split(separator: "\n").map(String.init)
            let column = try #require(lines[0].range(of: "DUPLICATE")).lowerBound.utf16Offset(in: lines[0])
            func duplicate(_ name: String) -> String? {
                lines.first { $0.split(separator: " ").dropFirst().first.map(String.init) == name }
                    .map { String($0.dropFirst(column).prefix(3)).trimmingCharacters(in: .whitespaces) }
            }
            #expect(duplicate("games") == "yes" && duplicate("voip") == "yes" && duplicate("bulk") == "no")
            #expect(try run(["policy", "edit", "--database", database, "voip", "--no-duplicate"]).stdout == "not duplicating policy voip\n")
            #expect(try run(["policy", "edit", "--database", database, "bulk", "--duplicate"]).status == 0)
            lines = try run(["policy", "list", "--database", database]).stdout.split(separator: "\n").map(String.init)
            #expect(duplicate("voip") == "no" && duplicate("bulk") == "yes")
            let nothing = try run(["policy", "edit", "--database", database, "bulk"])
            #expect(nothing.status == 64 && nothing.stderr.contains("--duplicate or --no-duplicate"))
            let missing = try run(["policy", "edit", "--database", database, "nope", "--duplicate"])
            #expect(missing.status == 1 && missing.stderr.contains("no policy named 'nope'"))
            let store = try Store.openReadOnly(path: database)
            #expect(try store.policies().filter(\.policy.duplicate).map(\.policy.name).sorted() == ["bulk", "games"])
        }
    }

    @Test func meshKeyIsPrivateAndNeverOverwrittenByAccident() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/mesh.key"
            #expect(try run(["mesh-key", "generate", "--output", path]).status == 0)
            var info = stat()
            #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o600)
            let first = fileBytes(path)
            let again = try run(["mesh-key", "generate", "--output", path])
            #expect(again.status == 1 && again.stderrLines.count == 1 && again.stderr.contains("--force"))
            #expect(fileBytes(path) == first)
            #expect(try run(["mesh-key", "generate", "--output", path, "--force"]).status == 0)
            #expect(fileBytes(path) != first)
            #expect(try SecretFile.read(at: path).count == 32)
        }
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/sqlite3")))
    func aLockedDatabaseFailsAfterTheBusyTimeoutWithOneLine() throws {
        try withTemporaryDirectory { dir in
            let database = dir + "/busy.db"
            let store = try Store.open(path: database)
            try store.loadDefaultPoliciesIfNew(Policy.defaults())
            // Another writer holds the write lock for longer than the 5 s busy timeout.
            let script = dir + "/hold.sql"
            try "BEGIN IMMEDIATE;\nUPDATE policies SET priority = priority;\n.shell sleep 9\nROLLBACK;\n"
                .write(toFile: script, atomically: true, encoding: .utf8)
            let holder = try RunningProgram("/bin/sh", ["-c", "/usr/bin/sqlite3 '\(database)' < '\(script)'"])
            usleep(500_000)
            let started = Date()
            let result = try run(["policy", "disable", "--database", database, "bulk"])
            #expect(Date().timeIntervalSince(started) >= 4)
            #expect(result.status == 1 && result.stderrLines.count == 1, "\(result.stderr)")
            #expect(result.stderr.contains("locked by another writer"))
            _ = holder.wait()
            #expect(try store.policies().allSatisfy(\.policy.enabled))
        }
    }
}

/// The daemon itself: needs CAP_NET_ADMIN, so these run as root (CI) and are skipped otherwise.
@Suite(.enabled(if: Binary.exists && getuid() == 0, "needs root and the built executable"))
struct DaemonRootTests {
    @Test func withoutCapNetAdminRunSaysSoInOneLine() throws {
        let setpriv = "/usr/bin/setpriv"
        try #require(FileManager.default.isExecutableFile(atPath: setpriv))
        try withTemporaryDirectory { dir in
            let result = try run(["--bounding-set", "-net_admin", "--inh-caps", "-net_admin", Binary.path, "run",
                                  "--site-name", "hq", "--database", dir + "/hq.db"], executable: setpriv)
            #expect(result.status == 1)
            #expect(result.stderrLines.count == 1 && result.stderr.contains("CAP_NET_ADMIN"), "\(result.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/hq.db"))
        }
    }

    /// A namespace where the daemon finds one uplink: `up0`, 192.0.2.1/24, up (its veth peer too), with the
    /// default route an uplink has (detection needs it: docs/README "Uplinks that change").
    func namespaceWithOneUplink(label: String) throws -> NetworkNamespace {
        let ns = try NetworkNamespace.create(label: label)
        try ns.ip("link", "add", "up0", "type", "veth", "peer", "name", "up0p")
        try ns.addAddress("192.0.2.1/24", to: "up0")
        try ns.setUp("up0")
        try ns.setUp("up0p")
        try ns.ip("route", "add", "default", "via", "192.0.2.254", "dev", "up0")
        return ns
    }

    /// This kernel has no WireGuard module: `--wireguard kernel` is refused in one line before anything is
    /// installed (no table, forwarding untouched).
    @Test func kernelWireGuardWithoutTheModuleIsRefusedCleanly() throws {
        let ns = try namespaceWithOneUplink(label: "cliwg")
        defer { ns.delete() }
        let kernelHasIt = (try? ns.run(["ip", "link", "add", "wgprobe0", "type", "wireguard"]).status) == 0
        try #require(!kernelHasIt, "this kernel has WireGuard: nothing to refuse")
        try withTemporaryDirectory { dir in
            let result = try RunningProgram("/usr/sbin/ip", ["netns", "exec", ns.name, Binary.path, "run", "--site-name", "hq",
                                                             "--database", dir + "/hq.db", "--wireguard", "kernel"]).wait(timeout: 10)
            #expect(result.status == 1)
            #expect(result.stderrLines.count == 1 && result.stderr.contains("--wireguard userspace"), "\(result.stderr)")
            #expect(try ns.run(["nft", "list", "table", "inet", "patronus"]).status != 0)
            #expect(try ns.check(["cat", "/proc/sys/net/ipv4/ip_forward"]).hasPrefix("0"))
        }
    }

    /// The daemon runs in its own namespace with one uplink (a veth with an address), so nothing it installs
    /// touches this machine; after SIGTERM the namespace holds nothing of ours.
    @Test func runsLocksReportsAndStopsOnSIGTERMKeepingItsIdentity() throws {
        let ns = try namespaceWithOneUplink(label: "cli")
        defer { ns.delete() }
        let tunnel = "wgc\(getpid() % 100_000)"
        try withTemporaryDirectory { dir in
            let database = dir + "/hq.db"
            let files = StoreFiles(database: database)
            let argv = ["netns", "exec", ns.name, Binary.path, "run", "--site-name", "hq", "--database", database,
                        "--interface", tunnel]
            let daemon = try RunningProgram("/usr/sbin/ip", argv)
            var started = false
            for _ in 0..<100 where !started {
                usleep(100_000)
                started = (try? Store.openReadOnly(path: database).localSite()?.overlayAddress) != nil
            }
            #expect(started)
            usleep(500_000)
            let table = try ns.run(["nft", "list", "table", "inet", "patronus"])
            #expect(table.status == 0, "the steering table is installed")
            #expect(try ns.links().keys.contains(tunnel + "0"), "the uplink's tunnel interface exists")

            let second = try RunningProgram("/usr/sbin/ip", argv).wait(timeout: 10)
            #expect(second.status == 1 && second.stderrLines.count == 1, "\(second.stderr)")
            #expect(second.stderr.contains("in use by another patronus-router"))

            let status = try run(["status", "--database", database])
            #expect(status.status == 0)
            #expect(status.stdout.contains("Network Status Report") && status.stdout.contains("Active paths: 0"))
            let json = try run(["status", "--json", "--database", database])
            let snapshot = try StatusSnapshot.decode(json: Data(json.stdout.utf8))
            #expect(snapshot.localSite?.name == "hq")

            daemon.signal(SIGTERM)
            let result = daemon.wait(timeout: 10)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout.contains("Network Status Report"))
            #expect(try ns.run(["nft", "list", "table", "inet", "patronus"]).status != 0, "the table is gone")
            #expect(!(try ns.links().keys.contains(tunnel + "0")), "the tunnel is gone")
            #expect(try ns.check(["ip", "rule"]).components(separatedBy: "\n").filter { $0.hasPrefix("62") }.isEmpty)
            #expect(try ns.check(["cat", "/proc/sys/net/ipv4/ip_forward"]).hasPrefix("0"), "forwarding restored")

            let id = try Store.openReadOnly(path: database).localSite()?.id
            let key = fileBytes(files.privateKey)
            let meshKey = fileBytes(files.meshKey)
            for file in [database, files.privateKey, files.meshKey, files.lock] {
                var info = stat()
                #expect(stat(file, &info) == 0 && info.st_mode & 0o777 == 0o600, "\(file)")
            }
            // A restart keeps the site id and both keys.
            let restart = try RunningProgram("/usr/sbin/ip", argv)
            usleep(1_500_000)
            restart.signal(SIGINT)
            #expect(restart.wait(timeout: 10).status == 0)
            #expect(try Store.openReadOnly(path: database).localSite()?.id == id)
            #expect(fileBytes(files.privateKey) == key && fileBytes(files.meshKey) == meshKey)
        }
    }
}

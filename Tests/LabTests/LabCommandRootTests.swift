import Foundation
import Glibc
import Testing
@testable import Lab

/// `patronus-router lab ...` end to end: the real binary (built next to this test bundle by
/// `swift build --build-tests`), a private instance name and state root so a user's lab is never touched.
@Suite(.serialized) struct LabCommandRootTests {
    static let binary: String? = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let candidate = (exe as NSString).deletingLastPathComponent + "/patronus-router"
        return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil
    }()
    static let canRun = isRoot && binary != nil

    let instance = "t" + String(UInt32.random(in: 0 ... .max), radix: 36)
    let stateRoot = "/tmp/ptlab-state-\(getpid())-\(UInt32.random(in: 0 ... .max))"

    func lab(_ args: String...) throws -> CommandResult { try lab(args) }

    func lab(_ args: [String]) throws -> CommandResult {
        try Subprocess.run([Self.binary!, "lab"] + args + ["--instance", instance, "--state-root", stateRoot])
    }

    /// Everything of this instance that could outlive `lab down`.
    func traces() -> [String] {
        var found = NetworkNamespace.list(prefix: "pt\(instance)-").map { "namespace \($0)" }
        if FileManager.default.fileExists(atPath: "\(stateRoot)/\(instance)") { found.append("state directory") }
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap { Int32($0) } ?? []
        for pid in pids where !ProcessTermination.isZombie(pid) {
            guard let cmdline = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { continue }
            if String(decoding: cmdline, as: UTF8.self).contains(stateRoot) { found.append("process \(pid)") }
        }
        let unixSockets = (try? String(contentsOfFile: "/proc/net/unix", encoding: .utf8)) ?? ""
        if unixSockets.contains(stateRoot) { found.append("unix socket") }
        return found
    }

    /// One SOCK_SEQPACKET exchange with the emulator daemon; returns the answer ("" if none).
    func sendRaw(_ bytes: [UInt8], to path: String) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0)
        defer { close(fd) }
        var address = try WANEmulatorDaemon.unixAddress(path)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(connected == 0)
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var timeout = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 1 << 18)
        let n = recv(fd, &buffer, buffer.count, 0)
        return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : ""
    }

    func rootNamespaceLinks() throws -> [String] {
        try Subprocess.check(["ip", "-o", "link", "show"]).split(separator: "\n")
            .map { $0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces) }.sorted()
    }

    func nftTables() -> String {
        (try? Subprocess.run(["nft", "list", "tables"]))?.stdout ?? ""
    }

    @Test(.enabled(if: canRun)) func upThenDownTwiceLeavesNothingRoot() throws {
        defer { try? FileManager.default.removeItem(atPath: stateRoot) }
        let links = try rootNamespaceLinks()
        let tables = nftTables()
        for round in 1...2 {
            let up = try lab("up")
            #expect(up.succeeded, "round \(round): \(up.stderr)")
            #expect(up.stdout.contains("is up: 3 sites (hq, east, west), 2 uplinks each (isp-a, isp-b)"))
            #expect(NetworkNamespace.list(prefix: "pt\(instance)-").count == 8)
            let status = try lab("status")
            #expect(status.succeeded && status.stdout.contains("hq/isp-a"), "\(status.stderr)")
            #expect(status.stdout.contains("running"))
            let impair = try lab("impair", "east", "isp-b", "--delay", "5", "--direction", "in")
            #expect(impair.succeeded && impair.stdout.contains("east/isp-b: in delay 5 ms, out clean"), "\(impair.stdout) \(impair.stderr)")

            if round == 1 {
                // Garbage on the control socket gets an error answer; the daemon keeps serving.
                let answer = try sendRaw(Array("{not json".utf8), to: "\(stateRoot)/\(instance)/wan.sock")
                #expect(answer.contains("malformed request"))
                _ = try sendRaw([UInt8](repeating: 0xff, count: 70_000), to: "\(stateRoot)/\(instance)/wan.sock")
                #expect(try lab("status").stdout.contains("emulator: pid"), "status after garbage")
                #expect(try lab("status").stdout.contains("delay 5 ms"), "the daemon kept its state")
            }

            let down = try lab("down")
            #expect(down.succeeded, "round \(round): \(down.stderr)")
            // The emulator may take a moment to be reaped by whoever inherited it.
            var left = traces()
            for _ in 0..<50 where !left.isEmpty {
                usleep(100_000)
                left = traces()
            }
            #expect(left.isEmpty, "round \(round) left: \(left)")
            #expect(try rootNamespaceLinks() == links, "the root namespace's links changed")
            #expect(nftTables() == tables)
        }
        let again = try lab("down")
        #expect(again.status == 1 && again.stderr.hasPrefix("error: no lab named"))
    }

    @Test(.enabled(if: canRun)) func badInputIsOneClearLineAndChangesNothingRoot() throws {
        defer {
            _ = try? lab("down")
            try? FileManager.default.removeItem(atPath: stateRoot)
        }
        for (args, message) in [(["up", "--sites", "0"], "--sites 0 is out of range"),
                                (["up", "--uplinks", "9"], "--uplinks 9 is out of range"),
                                (["status"], "no lab named"),
                                (["impair", "hq", "isp-a", "--delay", "5"], "no lab named")] {
            let result = try Subprocess.run([Self.binary!, "lab"] + args + ["--instance", instance, "--state-root", stateRoot])
            #expect(result.status == 1, "\(args)")
            #expect(result.stderr.hasPrefix("error: ") && result.stderr.contains(message), "\(args): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1)
            #expect(traces().isEmpty)
        }
        #expect(try lab("up", "--sites", "2", "--uplinks", "1").succeeded)
        let twice = try lab("up", "--sites", "2", "--uplinks", "1")
        #expect(twice.status == 1 && twice.stderr.contains("is already up"))
        #expect(NetworkNamespace.list(prefix: "pt\(instance)-").count == 5, "the first lab is intact")
        let cases: [([String], String)] = [(["impair", "mars", "isp-a", "--delay", "5"], "unknown site 'mars'"),
                                (["impair", "hq", "isp-b", "--delay", "5"], "unknown uplink 'isp-b'"),
                                (["impair", "hq", "isp-a", "--delay", "-5"], "out of range"),
                                (["impair", "hq", "isp-a", "--loss", "101"], "out of range"),
                                (["impair", "hq", "isp-a", "--rate", "1e12"], "out of range"),
                                (["impair", "hq", "isp-a", "--jitter", "abc"], "invalid"),
                                (["impair", "hq", "isp-a"], "nothing to change"),
                                (["impair", "hq", "isp-a", "--cut", "--restore"], "contradict")]
        for (args, message) in cases {
            let result = try lab(args)
            #expect(result.status != 0, "\(args)")
            #expect(result.stderr.contains("rror") && result.stderr.contains(message), "\(args): \(result.stderr)")
        }
        let status = try lab("status", "--json")
        #expect(status.succeeded && !status.stdout.contains("\"delayMs\" : 5"), "nothing was applied")
        let down = try lab("down")
        #expect(down.succeeded && traces().isEmpty, "down: \(down)")
    }

    @Test(.enabled(if: canRun)) func routerHookStartsOneRouterPerSiteInsideItsNamespaceRoot() throws {
        defer { try? FileManager.default.removeItem(atPath: stateRoot) }
        // A stand-in for `patronus-router`: `run` sleeps, `mesh-key` writes a file, `lab` is the real one.
        let script = "\(stateRoot)-router.sh"
        defer { unlink(script) }
        let text = """
            #!/bin/sh
            case "$1" in
              run) exec sleep 600 ;;
              mesh-key) echo key > "$4" ;;
              *) exec \(Self.binary!) "$@" ;;
            esac
            """
        #expect(FileManager.default.createFile(atPath: script, contents: Data(text.utf8), attributes: [.posixPermissions: 0o755]))
        let controller = LabController(instance: instance, stateRoot: stateRoot, executable: script)
        let state = try controller.up(sites: 2, uplinks: 1, routers: true, emulation: .external)
        #expect(state.routers.keys.sorted() == ["east", "hq"])
        for (site, router) in state.routers {
            #expect(router.isAlive)
            var inside = stat(), expected = stat()
            stat("/proc/\(router.pid)/ns/net", &inside)
            stat("/run/netns/\(state.plan.routerNamespace(site))", &expected)
            #expect(inside.st_ino == expected.st_ino, "router \(site) runs in its namespace")
            let cmdline = String(decoding: FileManager.default.contents(atPath: "/proc/\(router.pid)/cmdline") ?? Data(), as: UTF8.self)
            #expect(cmdline.contains("sleep"))
        }
        #expect(FileManager.default.fileExists(atPath: "\(controller.stateDirectory)/mesh.key"))
        let removal = try controller.down()
        #expect(removal.processes.count == 3, "two routers and the emulator: \(removal.processes)")
        #expect(state.routers.values.allSatisfy { !$0.isAlive })
        #expect(traces().isEmpty)
    }

    @Test(.enabled(if: canRun)) func notRootIsRefusedRoot() throws {
        let result = try Subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", Self.binary!,
                                         "lab", "up", "--instance", instance, "--state-root", stateRoot])
        #expect(result.status == 1)
        #expect(result.stderr == "error: the lab needs root (network namespaces, veths): run it with sudo\n")
        #expect(traces().isEmpty)
    }

    @Test(.enabled(if: canRun)) func signalDuringUpRollsBackRoot() throws {
        defer { try? FileManager.default.removeItem(atPath: stateRoot) }
        for delay in [50_000, 150_000, 300_000] as [UInt32] {
            let pid = try Subprocess.spawn([Self.binary!, "lab", "up", "--instance", instance, "--state-root", stateRoot])
            usleep(delay)
            kill(pid, SIGTERM)
            let status = Subprocess.waitForExit(pid)
            if status == 0 {
                // It finished first: a complete lab that `down` removes.
                #expect(NetworkNamespace.list(prefix: "pt\(instance)-").count == 8)
                #expect(try lab("down").succeeded)
            } else {
                #expect(status == 128 + SIGTERM)
            }
            var left = traces()
            for _ in 0..<50 where !left.isEmpty {
                usleep(100_000)
                left = traces()
            }
            #expect(left.isEmpty, "SIGTERM after \(delay / 1000) ms left \(left)")
        }
    }

    /// The routed internet from the command line: `--wan routed --nat --unplugged`, then every uplink verb,
    /// each answering one line; bad input is one `error:` line and changes nothing; `down` leaves nothing.
    @Test(.enabled(if: canRun)) func routedLabAndUplinkVerbsFromTheCommandLineRoot() throws {
        defer { try? FileManager.default.removeItem(atPath: stateRoot) }
        for (args, message) in [(["up", "--nat", "east:isp-b"], "error: --nat needs --wan routed"),
                                (["up", "--wan", "mesh"], "error: --wan 'mesh' must be bridged or routed"),
                                (["up", "--wan", "routed", "--nat", "east"], "error: 'east' must be SITE:UPLINK"),
                                (["carrier", "hq", "isp-a", "down"], "error: no lab named")] {
            let result = try lab(args)
            #expect(result.status == 1 && result.stderr.hasPrefix(message), "\(args): \(result.stderr)")
            #expect(traces().isEmpty)
        }
        let up = try lab("up", "--wan", "routed", "--nat", "east:isp-b", "--unplugged", "hq:b", "--no-routers")
        #expect(up.succeeded, "\(up.stderr)")
        #expect(up.stdout.contains("WAN: routed") && up.stdout.contains("NAT: east/isp-b") && up.stdout.contains("unplugged: hq/isp-b"))
        #expect(NetworkNamespace.list(prefix: "pt\(instance)-").count == 9)
        let status = try lab("status")
        #expect(status.stdout.contains("wan-b 172.18.2.2 (isp-b NAT)") && status.stdout.contains("wan-b 100.66.1.2 (isp-b unplugged)"),
                "\(status.stdout)")

        let hq = NetworkNamespace(existing: "pt\(instance)-hq")
        #expect(try lab("plug", "hq", "isp-b").stdout == "hq/isp-b: plugged in, wan-b 100.66.1.2/24 via 100.66.1.1\n")
        #expect(try hq.ip("-4", "-o", "addr", "show", "dev", "wan-b").contains("100.66.1.2/24"))
        #expect(try lab("plug", "hq", "isp-b").stderr == "error: hq/isp-b is already plugged in\n")
        #expect(try lab("carrier", "hq", "a", "down").stdout == "hq/a: carrier down\n")
        #expect(eventually { ((try? hq.ip("link", "show", "wan-a")) ?? "").contains("NO-CARRIER") })
        #expect(try lab("carrier", "hq", "a", "sideways").stderr == "error: carrier 'sideways' must be down or up\n")
        #expect(try lab("carrier", "hq", "a", "up").succeeded)
        #expect(try lab("renumber", "east", "wan-b").stdout == "east/isp-b: wan-b 172.18.18.2/24 via 172.18.18.1\n")
        // The NAT follows the new private subnet; the state file keeps the new plan for the next verb.
        let rules = try NetworkNamespace(existing: "pt\(instance)-isp-b").check(["nft", "list", "ruleset"])
        #expect(rules.contains("ip saddr 172.18.18.0/24") && !rules.contains("172.18.2.0/24"))
        #expect(try lab("status").stdout.contains("wan-b 172.18.18.2 (isp-b NAT)"))
        #expect(try lab("unplug", "hq", "isp-b").succeeded)
        #expect(try !hq.ip("link", "show").contains("wan-b"))

        #expect(try lab("down").succeeded)
        #expect(traces().isEmpty)
    }
}

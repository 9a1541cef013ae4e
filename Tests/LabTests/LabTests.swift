// Tests of the Lab layer. Tests named Root need uid 0 and are skipped otherwise.
import Glibc
import Testing
@testable import Lab

let isRoot = getuid() == 0

@Suite struct SubprocessTests {
    @Test func runCapturesOutputAndStatus() throws {
        let ok = try Subprocess.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        #expect(ok.status == 3)
        #expect(ok.stdout == "out\n")
        #expect(ok.stderr == "err\n")
    }

    @Test func checkThrowsWithTheLastStderrLine() {
        #expect(throws: LabError.commandFailed(argv: ["sh", "-c", "echo a >&2; echo b >&2; exit 1"], status: 1, stderr: "b")) {
            try Subprocess.check(["sh", "-c", "echo a >&2; echo b >&2; exit 1"])
        }
    }

    @Test func largeOutputDoesNotDeadlock() throws {
        let result = try Subprocess.run(["sh", "-c", "head -c 300000 /dev/zero; head -c 300000 /dev/zero >&2"])
        #expect(result.stdout.utf8.count == 300000)
        #expect(result.stderr.utf8.count == 300000)
    }

    @Test func missingProgramIsATypedError() {
        #expect(throws: LabError.self) { try Subprocess.run(["/nonexistent/program"]) }
    }
}

@Suite struct LabCleanupTests {
    @Test func actionsRunOnceNewestFirst() {
        final class Log: @unchecked Sendable { var order: [Int] = [] }
        let log = Log()
        let first = LabCleanup.shared.register("first") { log.order.append(1) }
        _ = LabCleanup.shared.register("second") { log.order.append(2) }
        LabCleanup.shared.run(first)
        LabCleanup.shared.run(first)
        #expect(log.order == [1])
        let third = LabCleanup.shared.register("third") { log.order.append(3) }
        LabCleanup.shared.cancel(third)
        #expect(!LabCleanup.shared.pending.contains("third"))
    }
}

@Suite(.serialized) struct NetworkNamespaceRootTests {
    @Test(.enabled(if: isRoot)) func createRunAndDeleteRoot() throws {
        let ns = try NetworkNamespace.create(label: "t")
        let name = ns.name
        #expect(name.hasPrefix("ptt-"))
        #expect(NetworkNamespace.exists(name))
        let links = try ns.links()
        #expect(links.keys.sorted() == ["lo"])
        let result = try ns.run(["sh", "-c", "echo hi; exit 4"])
        #expect(result.status == 4 && result.stdout == "hi\n")
        ns.delete()
        #expect(!NetworkNamespace.exists(name))
        ns.delete()
    }

    @Test(.enabled(if: isRoot)) func deinitDeletesAndKillsProcessesRoot() throws {
        var name = ""
        var pid: pid_t = 0
        do {
            let ns = try NetworkNamespace.create(label: "t")
            name = ns.name
            let sleeper = try ns.spawn(["sleep", "60"])
            pid = sleeper.pid
            sleeper.persist() // only the namespace's deletion may stop it now
            #expect(kill(pid, 0) == 0)
        }
        #expect(!NetworkNamespace.exists(name))
        #expect(ProcessTermination.gone(pid))
    }

    @Test(.enabled(if: isRoot)) func vethCarriesUDPBetweenNamespacesRoot() throws {
        let a = try NetworkNamespace.create(label: "t")
        let b = try NetworkNamespace.create(label: "t")
        defer { a.delete(); b.delete() }
        try a.addVeth("va", peer: "vb", in: b)
        try a.addAddress("10.200.0.1/24", to: "va")
        try b.addAddress("10.200.0.2/24", to: "vb")
        try b.addAddress("10.201.0.1/24", to: "lo")
        try a.addRoute("10.201.0.0/24", via: "10.200.0.2")

        let server = try UDPSocket(in: b, bindTo: "10.201.0.1", port: 0)
        let client = try UDPSocket(in: a)
        #expect(client.send([1, 2, 3], to: "10.201.0.1", port: server.port))
        let got = try #require(server.receive(timeout: .seconds(2)))
        #expect(got.bytes == [1, 2, 3])
        #expect(got.address == "10.200.0.1")
    }

    @Test(.enabled(if: isRoot)) func cleanupRegistryRemovesEverythingRoot() throws {
        let ns = try NetworkNamespace.create(label: "t")
        let name = ns.name
        #expect(LabCleanup.shared.pending.contains("netns \(name)"))
        ns.persist()
        #expect(!LabCleanup.shared.pending.contains("netns \(name)"))
        // Handed over: only an explicit removal deletes it now.
        #expect(NetworkNamespace.exists(name))
        NetworkNamespace.remove(named: name)
        #expect(!NetworkNamespace.exists(name))
    }

    @Test(.enabled(if: isRoot)) func badNamesAreRejectedRoot() {
        #expect(throws: LabError.self) { try NetworkNamespace.create(label: "Bad/Label") }
        #expect(throws: LabError.self) {
            let ns = try NetworkNamespace.create(label: "t")
            defer { ns.delete() }
            try ns.addVeth("this-name-is-too-long", peer: "x", in: ns)
        }
    }
}

import Foundation
import Testing
@testable import Router

/// The repository root, found from this file's path.
private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

@Suite(.serialized) struct SystemdTests {
    @Test func notifiesThroughNotifySocket() throws {
        let path = "/tmp/patronus-notify-\(getpid()).sock"
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd); unlink(path) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        setenv("NOTIFY_SOCKET", path, 1)
        defer { unsetenv("NOTIFY_SOCKET") }
        #expect(SystemdNotify.send("READY=1"))
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        #expect(count == 7)
        #expect(String(decoding: buffer.prefix(max(0, count)), as: UTF8.self) == "READY=1")
    }

    @Test func withoutNotifySocketItIsANoOp() {
        unsetenv("NOTIFY_SOCKET")
        #expect(!SystemdNotify.send("READY=1"))
    }

    /// systemd-analyze checks the unit's syntax, directives and that ExecStart exists; we point ExecStart at
    /// the binary this test run built.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze")))
    func serviceUnitPassesSystemdAnalyzeVerify() throws {
        let unit = try String(contentsOf: root.appendingPathComponent("docs/systemd/patronus-router.service"), encoding: .utf8)
        let binary = root.appendingPathComponent(".build/debug/patronus-router").path
        try #require(FileManager.default.isExecutableFile(atPath: binary), "build the binary first (swift build)")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("patronus-unit-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let copy = directory.appendingPathComponent("patronus-router.service")
        try unit.replacingOccurrences(of: "/usr/bin/patronus-router", with: binary)
            .write(to: copy, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-analyze")
        // The man page named by Documentation= ships in the Debian package (scripts/package --check installs
        // and verifies it), not on a build machine: verify the unit here, not the man page.
        process.arguments = ["verify", "--man=no", copy.path]
        let pipe = Pipe()
        process.standardError = pipe
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        // Judge our unit only: verify also reports on whatever else the machine has installed (Debian's irtt
        // ships a unit that makes it print "irtt.service:9: Special user nobody configured").
        let ours = output.split(separator: "\n").filter { $0.contains("patronus-router") }
        #expect(ours.isEmpty, "\(output)")
    }
}

import Foundation
import GRDB
@testable import Model
@testable import Store

/// A fresh directory removed when the body returns, also when it throws.
func withTemporaryDirectory<T>(_ body: (String) throws -> T) throws -> T {
    let path = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}

private func makeTemporaryDirectory() throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("pt-store-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func fileMode(_ path: String) -> mode_t? {
    var info = stat()
    return stat(path, &info) == 0 ? info.st_mode & 0o777 : nil
}

func fileBytes(_ path: String) -> Data? { FileManager.default.contents(atPath: path) }

/// Runs a program to completion and returns its exit status and outputs.
func runProgram(_ executable: String, _ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    let stderr = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
}

/// A store with a local site `hq`, one remote site `east` with an endpoint, and two measured paths.
struct Fixture {
    let store: Store
    let local: SiteID
    let east: SiteID
    let paths: [PathID]

    static let now = UTCTime.parse("2025-10-09 14:35:42")!

    init(_ directory: String) throws {
        store = try Store.open(path: directory + "/hq.db")
        local = try store.ensureLocalSite(name: "hq", now: Fixture.now)
        east = SiteID(UUID(uuidString: "550E8400-E29B-41D4-A716-446655440002")!)
        try store.upsertRemoteSite(SiteRecord(id: east, name: "east", overlayAddress: IPv4Address("10.99.0.2"),
                                              publicKey: "pub", lanPrefixes: [IPv4Prefix("192.168.2.0/24")!]),
                                   now: Fixture.now)
        let ethernet = Endpoint(label: "ethernet", address: SocketAddress4("192.168.2.10:51820")!)
        let lte = Endpoint(label: "lte", address: SocketAddress4("198.51.100.7:51821")!)
        try store.replaceEndpoints(of: east, with: [ethernet, lte], now: Fixture.now)
        let first = try store.upsertPath(to: east, uplink: Uplink(interface: "eth0", label: "ethernet"),
                                         endpoint: ethernet, wgInterface: "wg-hq0", now: Fixture.now)
        let second = try store.upsertPath(to: east, uplink: Uplink(interface: "wwan0", label: "lte"),
                                          endpoint: lte, wgInterface: "wg-hq1", now: Fixture.now)
        try store.insertMetrics([
            MetricsSample(path: first, metrics: PathMetrics(latencyMs: 12.5, jitterMs: 2.1, lossPct: 0.05,
                                                            bandwidthMbps: 987.3, score: 98),
                          measuredAt: Fixture.now),
            MetricsSample(path: second, metrics: PathMetrics(latencyMs: 45.3, jitterMs: 8.7, lossPct: 0.8,
                                                             bandwidthMbps: 234.1, score: 72),
                          measuredAt: Fixture.now.addingTimeInterval(-2)),
        ])
        try store.setPathStatus(first, status: .up, score: 98, now: Fixture.now)
        try store.setPathStatus(second, status: .degraded, score: 72, now: Fixture.now)
        paths = [first, second]
    }
}

/// `withTemporaryDirectory` for async bodies.
func withTemporaryDirectoryAsync<T>(_ body: (String) async throws -> T) async throws -> T {
    let path = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}

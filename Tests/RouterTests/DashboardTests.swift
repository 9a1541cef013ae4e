import Foundation
import Logging
import Model
import NIOHTTP1
import ServiceLifecycle
import Store
import Testing
@testable import Router

/// A database with a local site `hq`, a remote `east`, two paths with a minute of metrics rows, and one
/// failover event: what the daemon would have written.
private struct DashboardFixture {
    let directory: String
    let path: String
    let paths: [PathID]
    let now = Date()

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("pt-dash-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = directory + "/hq.db"
        let store = try Store.open(path: path)
        _ = try store.ensureLocalSite(name: "hq", now: now)
        let east = SiteID(UUID(uuidString: "550E8400-E29B-41D4-A716-446655440002")!)
        try store.upsertRemoteSite(SiteRecord(id: east, name: "east", overlayAddress: IPv4Address("10.99.0.2"),
                                              publicKey: "pub", lanPrefixes: []), now: now)
        let a = Endpoint(label: "isp-a", address: SocketAddress4("100.64.1.2:51820")!)
        let b = Endpoint(label: "isp-b", address: SocketAddress4("100.64.2.2:51830")!)
        let first = try store.upsertPath(to: east, uplink: Uplink(interface: "eth1", label: "isp-a"), endpoint: a,
                                         wgInterface: "wg-hq0", now: now)
        let second = try store.upsertPath(to: east, uplink: Uplink(interface: "eth2", label: "isp-b"), endpoint: b,
                                          wgInterface: "wg-hq1", now: now)
        for step in stride(from: 60, through: 0, by: -5) {
            try store.recordPathStates(
                [(first, .up, PathMetrics(latencyMs: 20 + Double(step) / 10, jitterMs: 1, lossPct: 0, score: 97,
                                          throughputTxMbps: 1.5, throughputRxMbps: 0.5)),
                 (second, step > 20 ? .up : .down, PathMetrics(latencyMs: 40, jitterMs: 3, lossPct: step > 20 ? 0 : 100,
                                                               score: step > 20 ? 90 : 0))],
                now: now.addingTimeInterval(-Double(step)))
        }
        try store.recordFailover(FailoverEvent(time: now.addingTimeInterval(-20), policy: "voip", destination: east,
                                               fromPath: second, toPath: first, reason: "path down", detectionMs: 131,
                                               switchMs: 0.04))
        paths = [first, second]
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }

    func dashboard() throws -> Dashboard {
        Dashboard(store: try Store.openReadOnly(path: path)) {
            [SelectionSample(policy: "voip", site: "east", pathID: 1, path: "isp-a->east", copyPath: "isp-b->east"),
             SelectionSample(policy: "default", site: "east", pathID: 2, path: "isp-b->east")]
        }
    }

    /// Every byte of the database files (the writer above has closed: no WAL left), to prove nothing is written.
    func files() -> [String: Data] {
        var contents: [String: Data] = [:]
        for suffix in ["", "-wal", "-shm"] { contents[suffix] = FileManager.default.contents(atPath: path + suffix) }
        return contents
    }
}

private func get(_ dashboard: Dashboard, _ uri: String, method: HTTPMethod = .GET) async -> HTTPResponse {
    let parts = uri.split(separator: "?", maxSplits: 1)
    var query: [(name: String, value: String)] = []
    for pair in parts.count == 2 ? parts[1].split(separator: "&") : [] {
        let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        query.append((String(kv[0]), kv.count > 1 ? String(kv[1]) : ""))
    }
    return await dashboard.respond(to: HTTPRequest(method: method, path: String(parts[0]), query: query))
}

private func object(_ response: HTTPResponse) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any] ?? [:]
}

/// Runs curl (a real HTTP client): the body and the status code.
private func curl(_ arguments: [String]) throws -> (body: String, code: Int) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
    process.arguments = ["-s", "--max-time", "5", "-w", "\n%{http_code}"] + arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let text = String(decoding: data, as: UTF8.self)
    let split = text.range(of: "\n", options: .backwards)
    return (split.map { String(text[..<$0.lowerBound]) } ?? "", Int(split.map { String(text[$0.upperBound...]) } ?? "") ?? -1)
}

@Suite struct DashboardTests {
    @Test func apiServesStatusSelectionsHistoryAndFailovers() async throws {
        let fixture = try DashboardFixture()
        defer { fixture.remove() }
        let dashboard = try fixture.dashboard()

        let status = object(await get(dashboard, "/api/v1/status"))
        #expect(status["schema_version"] as? Int == 1)
        let names = (status["paths"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(names == ["isp-a->east", "isp-b->east"])

        let selections = object(await get(dashboard, "/api/v1/selections"))
        let rows = selections["selections"] as? [[String: Any]] ?? []
        #expect(rows.count == 2)
        #expect(rows.first?["path_id"] as? Int == Int(fixture.paths[0]) && rows.first?["policy"] as? String == "voip")
        // A duplicated class says where its copies go; a class that is not copied has no copy_path.
        #expect(rows.first?["copy_path"] as? String == "isp-b->east" && rows.last?["copy_path"] == nil)

        let history = object(await get(dashboard, "/api/v1/metrics?path=\(fixture.paths[1])&minutes=60"))
        let samples = history["samples"] as? [[String: Any]] ?? []
        #expect(history["bucket_seconds"] as? Int == 10 && history["path"] as? String == "isp-b->east")
        #expect(samples.count >= 6 && samples.count <= 8, "61 s of rows every 5 s in 10 s buckets: \(samples.count)")
        #expect(samples.last?["packet_loss_pct"] as? Double == 100, "the newest bucket is the outage")
        #expect(samples.first?["packet_loss_pct"] as? Double == 0)
        let times = samples.compactMap { $0["time"] as? String }
        #expect(times == times.sorted(), "oldest first")
        let short = object(await get(dashboard, "/api/v1/metrics?path=\(fixture.paths[0])&minutes=1"))
        #expect(short["bucket_seconds"] as? Int == 1 && (short["samples"] as? [Any])?.count ?? 0 >= 12)

        let failovers = object(await get(dashboard, "/api/v1/failovers"))
        let events = failovers["events"] as? [[String: Any]] ?? []
        #expect(events.count == 1)
        #expect(events.first?["from_name"] as? String == "isp-b->east" && events.first?["to_name"] as? String == "isp-a->east")
        #expect(events.first?["dst_name"] as? String == "east" && events.first?["detection_ms"] as? Double == 131)

        let page = await get(dashboard, "/")
        #expect(page.status == .ok && String(decoding: page.body, as: UTF8.self).contains("/dashboard.js"))
        let script = String(decoding: await get(dashboard, "/dashboard.js").body, as: UTF8.self)
        #expect(!script.contains("http://") || script.contains("http://www.w3.org/2000/svg"),
                "the script fetches nothing from another host")
        #expect(!script.contains("https://"))
    }

    /// Bad input: a 4xx with a clear message, through the real HTTP server and parser, and not a byte of the
    /// database changes.
    @Test func badRequestsAreRefusedAndNothingIsWritten() async throws {
        let fixture = try DashboardFixture()
        defer { fixture.remove() }
        let before = fixture.files()
        let dashboard = try fixture.dashboard()

        let (stream, continuation) = AsyncStream.makeStream(of: Int.self)
        let endpoint = HTTPEndpoint(name: "dashboard", flag: "--dashboard-listen", host: "127.0.0.1", port: 0,
                                    logger: Logger(label: "test"), onBound: { continuation.yield($0) }) {
            await dashboard.respond(to: $0)
        }
        let group = ServiceGroup(services: [endpoint], logger: Logger(label: "test"))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            var ports = stream.makeAsyncIterator()
            let base = "http://127.0.0.1:\(try #require(await ports.next()))"

            let cases: [(arguments: [String], code: Int, says: String)] = [
                (["\(base)/api/v1/metrics?path=999"], 404, "no path with id 999"),
                (["\(base)/api/v1/metrics?path=abc"], 400, "must be a whole number"),
                (["\(base)/api/v1/metrics?path=-1"], 400, "must be a whole number"),
                (["\(base)/api/v1/metrics?path=99999999999999999999999"], 400, "must be a whole number"),
                (["\(base)/api/v1/metrics"], 400, "'path' is required"),
                (["\(base)/api/v1/metrics?path=1&minutes=100000"], 400, "from 1 to 1440"),
                (["\(base)/api/v1/metrics?path=1&path=2"], 400, "given twice"),
                (["\(base)/api/v1/metrics?path=1&drop=table"], 400, "unknown parameter 'drop'"),
                (["\(base)/api/v1/failovers?limit=0"], 400, "from 1 to 1000"),
                (["\(base)/api/v1/status?x"], 400, "malformed query parameter"),
                (["\(base)/api/v1/status?a=%ZZ"], 400, "malformed query parameter"),
                (["\(base)/api/v1/status?" + (0..<20).map { "p\($0)=1" }.joined(separator: "&")], 400, "at most 16"),
                (["\(base)/api/v1/metrics?path=" + String(repeating: "9", count: 5000)], 414, "at most 2048"),
                (["\(base)/etc/passwd"], 404, "not found"),
                (["\(base)/../../etc/passwd", "--path-as-is"], 404, "not found"),
                (["-X", "POST", "-d", "x=1", "\(base)/api/v1/status"], 405, "read-only"),
                (["-X", "PUT", "\(base)/"], 405, "read-only"),
                (["-X", "DELETE", "\(base)/api/v1/metrics?path=1"], 405, "read-only"),
                (["-I", "\(base)/"], 405, ""),
                (["-H", "Content-Length: nope", "\(base)/"], 400, ""),
                (["-H", "X-Huge: " + String(repeating: "h", count: 120_000), "\(base)/api/v1/status"], 400, ""),
                (["--data-binary", String(repeating: "b", count: 100_000), "-X", "GET", "\(base)/api/v1/failovers"], 200, "\"events\""),
            ]
            for (arguments, code, says) in cases {
                let response = try curl(arguments)
                #expect(response.code == code, "\(arguments.suffix(1)): \(response.code) \(response.body)")
                #expect(says.isEmpty || response.body.contains(says), "\(arguments.suffix(1)): \(response.body)")
            }
            // ...and it still serves.
            let status = try curl(["\(base)/api/v1/status"])
            #expect(status.code == 200 && status.body.contains(#""schema_version" : 1"#))

            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        // SQLite's read-only WAL reader creates the -shm index and an empty -wal; the data is not touched.
        let after = fixture.files()
        #expect(after[""] == before[""], "the dashboard wrote to the database")
        #expect((after["-wal"] ?? Data()).isEmpty, "the dashboard wrote to the WAL")
    }

    /// A client that never finishes its request is closed after the request timeout; clients beyond the
    /// connection cap are closed at once; a well-behaved client is served again once they are gone.
    @Test func slowClientsAreClosedAndConnectionsAreCapped() async throws {
        let (stream, continuation) = AsyncStream.makeStream(of: Int.self)
        let endpoint = HTTPEndpoint(name: "test", flag: "--test", host: "127.0.0.1", port: 0, logger: Logger(label: "test"),
                                    requestTimeout: .milliseconds(500), onBound: { continuation.yield($0) }) { _ in
            HTTPResponse(contentType: "text/plain", body: Array("ok".utf8))
        }
        let group = ServiceGroup(services: [endpoint], logger: Logger(label: "test"))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            var ports = stream.makeAsyncIterator()
            let port = try #require(await ports.next())

            // Half a request line, then silence: closed by the server (read returns 0) within the timeout.
            let slow = try rawConnection(port: UInt16(port))
            defer { close(slow) }
            _ = "GET /api/v1/st".withCString { send(slow, $0, strlen($0), 0) }
            let start = ContinuousClock.now
            var byte: UInt8 = 0
            var timeout = timeval(tv_sec: 3, tv_usec: 0)
            setsockopt(slow, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            #expect(recv(slow, &byte, 1, 0) == 0, "the server closed the slow connection")
            let waited = ContinuousClock.now - start
            #expect(waited >= .milliseconds(400) && waited < .seconds(2), "closed after \(waited)")

            // The cap: 64 idle connections are held; the next is closed on accept.
            var idle: [Int32] = []
            defer { idle.forEach { close($0) } }
            for _ in 0..<HTTPEndpoint.maxConnections { idle.append(try rawConnection(port: UInt16(port))) }
            try await Task.sleep(for: .milliseconds(100))
            let extra = try rawConnection(port: UInt16(port))
            defer { close(extra) }
            setsockopt(extra, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let refusedAt = ContinuousClock.now
            #expect(recv(extra, &byte, 1, 0) <= 0 && ContinuousClock.now - refusedAt < .milliseconds(400),
                    "a connection beyond the cap is closed at once")
            // Once the idle ones time out, a real client is served.
            try await Task.sleep(for: .milliseconds(700))
            let served = try curl(["http://127.0.0.1:\(port)/"])
            #expect(served.code == 200 && served.body == "ok")

            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }
}

/// A connected TCP socket to 127.0.0.1:`port`.
private func rawConnection(port: UInt16) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard fd >= 0, connected == 0 else { throw POSIXError(.ECONNREFUSED) }
    return fd
}

/// A restart restores each path's download estimate from the last run's newest sample, if that run wrote it
/// within a bandwidth interval.
@Suite struct RestoredDownloadTests {
    @Test func theNewestRecentSampleWithADownloadIsRestored() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pt-dl-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try Store.open(path: directory + "/a.db")
        let now = Date()
        _ = try store.ensureLocalSite(name: "hq", now: now)
        let east = SiteID(UUID(uuidString: "550E8400-E29B-41D4-A716-446655440002")!)
        try store.upsertRemoteSite(SiteRecord(id: east, name: "east", overlayAddress: IPv4Address("10.99.0.2"),
                                              publicKey: "pub", lanPrefixes: []), now: now)
        var ids: [PathID] = []
        for (i, label) in ["isp-a", "isp-b", "isp-c"].enumerated() {
            ids.append(try store.upsertPath(to: east, uplink: Uplink(interface: "eth\(i)", label: label),
                                            endpoint: Endpoint(label: label, address: SocketAddress4("100.64.\(i).2:51820")!),
                                            wgInterface: "wg-hq\(i)", now: now))
        }
        func metrics(_ download: Double?) -> PathMetrics {
            var m = PathMetrics(latencyMs: 20, jitterMs: 1, lossPct: 0, score: 97)
            m.downloadBandwidthMbps = download
            return m
        }
        // isp-a: measured, sampled 2 minutes ago (an older sample had another figure); isp-b: its newest sample
        // is an hour old; isp-c: never measured.
        try store.recordPathStates([(ids[0], .up, metrics(12))], now: now.addingTimeInterval(-600))
        try store.recordPathStates([(ids[0], .up, metrics(18.8)), (ids[2], .up, metrics(nil))], now: now.addingTimeInterval(-120))
        try store.recordPathStates([(ids[1], .up, metrics(30))], now: now.addingTimeInterval(-3600))
        let restored = Daemon.restorableDownloads(store, within: .seconds(900), now: now, logger: Logger(label: "test"))
        #expect(restored == [ids[0]: 18.8])
    }
}


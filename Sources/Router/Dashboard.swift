import Foundation
import Model
import NIOHTTP1
import NIOPosix
import Store

/// The read-only web dashboard (`--dashboard-listen`): one page with its own script and style (compiled into
/// the binary, nothing fetched from anywhere else) and the versioned JSON API it polls, documented in
/// docs/DASHBOARD.md. It reads the database through its own read-only connection (it cannot write), and the
/// paths each class takes now from the running controller.
///
/// Every request is checked before anything is read: only GET; known paths; only the query parameters a
/// route takes, each once, each a bounded integer. A refusal is a 4xx with a one-line reason.
public struct Dashboard: Sendable {
    /// The API's `schema_version`: grows only on an incompatible change, as `status --json`'s does.
    public static let schemaVersion = 1
    public static let minutesRange = 1...1440
    public static let defaultMinutes = 60
    public static let eventLimitRange = 1...1000
    public static let defaultEventLimit = 100
    /// At most this many points per chart: rows are averaged over buckets of at least 1 s.
    public static let maxChartPoints = 360

    let store: Store
    let selections: @Sendable () async -> [SelectionSample]
    let now: @Sendable () -> Date

    /// - Parameters:
    ///   - store: a read-only store (`Store.openReadOnly`), so the dashboard cannot write.
    ///   - selections: the path each policy's traffic to each site takes now.
    public init(store: Store, selections: @escaping @Sendable () async -> [SelectionSample],
                now: @escaping @Sendable () -> Date = { Date() }) {
        self.store = store
        self.selections = selections
        self.now = now
    }

    static let routes = "/, /api/v1/status, /api/v1/selections, /api/v1/metrics?path=ID&minutes=N, "
        + "/api/v1/failovers?minutes=N&limit=N"

    public func respond(to request: HTTPRequest) async -> HTTPResponse {
        guard request.method == .GET else {
            return .refusal(.methodNotAllowed, "\(request.method.rawValue) is not served: the dashboard is read-only (GET only)")
        }
        let live = request.path == "/api/v1/selections" ? await selections() : []
        // SQLite reads block their thread: they run on NIO's thread pool, never on the cooperative threads
        // the probers and the controller need (two on this machine), however many dashboards poll.
        do {
            return try await NIOThreadPool.singleton.runIfActive { self.respond(to: request, selections: live) }
        } catch {
            return .refusal(.serviceUnavailable, "the dashboard is shutting down")
        }
    }

    private func respond(to request: HTTPRequest, selections live: [SelectionSample]) -> HTTPResponse {
        do {
            switch request.path {
            case "/", "/index.html":
                try Query(request, allowed: []).done()
                return HTTPResponse(contentType: "text/html; charset=utf-8", body: Array(DashboardPage.html.utf8))
            case "/dashboard.js":
                try Query(request, allowed: []).done()
                return HTTPResponse(contentType: "text/javascript; charset=utf-8", body: Array(DashboardPage.script.utf8))
            case "/dashboard.css":
                try Query(request, allowed: []).done()
                return HTTPResponse(contentType: "text/css; charset=utf-8", body: Array(DashboardPage.style.utf8))
            case "/api/v1/status":
                try Query(request, allowed: []).done()
                return json(Data(try store.statusSnapshot(now: now()).json().utf8))
            case "/api/v1/selections":
                try Query(request, allowed: []).done()
                return json(try selectionsDocument(live))
            case "/api/v1/metrics":
                var query = try Query(request, allowed: ["path", "minutes"])
                let path = try query.integer("path", range: 1...Int(Int64.max), default: nil)
                let minutes = try query.integer("minutes", range: Self.minutesRange, default: Self.defaultMinutes)
                return try json(metricsDocument(path: Int64(path), minutes: minutes))
            case "/api/v1/failovers":
                var query = try Query(request, allowed: ["minutes", "limit"])
                let minutes = try query.integer("minutes", range: Self.minutesRange, default: Self.defaultMinutes)
                let limit = try query.integer("limit", range: Self.eventLimitRange, default: Self.defaultEventLimit)
                return try json(failoversDocument(minutes: minutes, limit: limit))
            default:
                return .refusal(.notFound, "not found: \(request.path.prefix(100)) (the dashboard serves \(Self.routes))")
            }
        } catch let refusal as Refusal {
            return .refusal(refusal.status, refusal.message)
        } catch {
            return .refusal(.serviceUnavailable, "the database cannot be read now: \(error)")
        }
    }

    private func json(_ data: Data) -> HTTPResponse {
        HTTPResponse(contentType: "application/json", body: Array(data))
    }

    // MARK: Documents

    struct SelectionsDocument: Codable {
        var schemaVersion: Int
        var generatedAt: String
        var selections: [Selection]
        struct Selection: Codable {
            var policy: String
            var site: String
            var path: String
            var pathId: Int64?
            /// A duplicated class: the path its packets are also copied to (omitted when nothing is copied).
            var copyPath: String?
        }
    }

    func selectionsDocument(_ live: [SelectionSample]) throws -> Data {
        let ids = Dictionary(try store.statusSnapshot(now: now()).paths.compactMap { path in path.name.map { ($0, path.id) } },
                             uniquingKeysWith: { a, _ in a })
        return Self.encode(SelectionsDocument(
            schemaVersion: Self.schemaVersion, generatedAt: UTCTime.format(now()),
            selections: live.map { .init(policy: $0.policy, site: $0.site, path: $0.path, pathId: ids[$0.path], copyPath: $0.copyPath) }))
    }

    struct MetricsDocument: Codable {
        var schemaVersion: Int
        var generatedAt: String
        var pathId: Int64
        var path: String?
        var minutes: Int
        var bucketSeconds: Int
        var samples: [Sample]
        struct Sample: Codable {
            var time: String
            var latencyMs: Double?
            var jitterMs: Double?
            var packetLossPct: Double?
            var score: Double?
            var bandwidthMbps: Double?
            var throughputTxMbps: Double?
            var throughputRxMbps: Double?
        }
    }

    func metricsDocument(path: PathID, minutes: Int) throws -> Data {
        let snapshot = try store.statusSnapshot(now: now())
        guard let row = snapshot.paths.first(where: { $0.id == path }) else {
            throw Refusal(.notFound, "no path with id \(path): /api/v1/status lists the paths")
        }
        let bucket = max(1, (minutes * 60 + Self.maxChartPoints - 1) / Self.maxChartPoints)
        let points = try store.metricsHistory(of: path, since: now().addingTimeInterval(-Double(minutes) * 60),
                                              bucketSeconds: bucket)
        return Self.encode(MetricsDocument(
            schemaVersion: Self.schemaVersion, generatedAt: UTCTime.format(now()), pathId: path, path: row.name,
            minutes: minutes, bucketSeconds: bucket,
            samples: points.map {
                .init(time: UTCTime.format($0.time), latencyMs: $0.latencyMs, jitterMs: $0.jitterMs, packetLossPct: $0.lossPct,
                      score: $0.score, bandwidthMbps: $0.bandwidthMbps, throughputTxMbps: $0.throughputTxMbps,
                      throughputRxMbps: $0.throughputRxMbps)
            }))
    }

    struct FailoversDocument: Codable {
        var schemaVersion: Int
        var generatedAt: String
        var minutes: Int
        var events: [Event]
        struct Event: Codable {
            var time: String
            var policy: String
            var dstSite: String?
            var dstName: String?
            var fromPath: Int64?
            var fromName: String?
            var toPath: Int64?
            var toName: String?
            var reason: String
            var detectionMs: Double?
            var switchMs: Double?
        }
    }

    func failoversDocument(minutes: Int, limit: Int) throws -> Data {
        let snapshot = try store.statusSnapshot(now: now())
        let pathNames = Dictionary(snapshot.paths.map { ($0.id, $0.name) }, uniquingKeysWith: { a, _ in a })
        let siteNames = Dictionary((snapshot.activeSites + [snapshot.localSite].compactMap { $0 }).map { ($0.id, $0.name) }
                                   + snapshot.paths.map { ($0.dstSite, $0.dstName) }, uniquingKeysWith: { a, _ in a })
        let events = try store.failoverEvents(limit: limit, since: now().addingTimeInterval(-Double(minutes) * 60))
        return Self.encode(FailoversDocument(
            schemaVersion: Self.schemaVersion, generatedAt: UTCTime.format(now()), minutes: minutes,
            events: events.map { event in
                .init(time: UTCTime.format(event.time), policy: event.policy, dstSite: event.destination?.description,
                      dstName: event.destination.flatMap { siteNames[$0.description] },
                      fromPath: event.fromPath, fromName: event.fromPath.flatMap { pathNames[$0] ?? nil },
                      toPath: event.toPath, toName: event.toPath.flatMap { pathNames[$0] ?? nil },
                      reason: event.reason, detectionMs: event.detectionMs, switchMs: event.switchMs)
            }))
    }

    /// Key-sorted snake_case JSON, keys without a value omitted, like `status --json`.
    static func encode(_ value: some Encodable) -> Data {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Plain strings, numbers and arrays: encoding cannot fail.
        return try! encoder.encode(value)
    }

    // MARK: Query checking

    struct Refusal: Error {
        var status: HTTPResponseStatus
        var message: String
        init(_ status: HTTPResponseStatus, _ message: String) {
            self.status = status
            self.message = message
        }
    }

    /// A route's query: only `allowed` names, each at most once; `done()` after reading.
    struct Query {
        private var values: [String: String] = [:]
        let path: String

        init(_ request: HTTPRequest, allowed: Set<String>) throws(Refusal) {
            path = request.path
            for (name, value) in request.query {
                guard allowed.contains(name) else {
                    let takes = allowed.isEmpty ? "takes no parameters" : "takes \(allowed.sorted().joined(separator: ", "))"
                    throw Refusal(.badRequest, "unknown parameter '\(name.prefix(40))': \(path) \(takes)")
                }
                guard values[name] == nil else { throw Refusal(.badRequest, "parameter '\(name)' is given twice") }
                values[name] = value
            }
        }

        func done() throws(Refusal) {}

        /// The parameter as an integer in `range`; `default` when absent (nil: required).
        mutating func integer(_ name: String, range: ClosedRange<Int>, default fallback: Int?) throws(Refusal) -> Int {
            guard let text = values.removeValue(forKey: name) else {
                guard let fallback else { throw Refusal(.badRequest, "parameter '\(name)' is required (\(path)?\(name)=N)") }
                return fallback
            }
            guard text.utf8.count <= 20, text.allSatisfy(\.isASCII), let value = Int(text), range.contains(value) else {
                throw Refusal(.badRequest, "parameter '\(name)' must be a whole number from \(range.lowerBound) to "
                              + "\(range.upperBound), not '\(text.prefix(40))'")
            }
            return value
        }
    }
}

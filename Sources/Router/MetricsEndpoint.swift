import Logging
import Prometheus
import ServiceLifecycle

/// Serves the Prometheus text exposition of a registry at `GET /metrics` (and `/`), nothing else.
///
/// Served by `HTTPEndpoint` (SwiftNIO's parser, one request per connection: scrapes are rare, keep-alive
/// buys nothing, and a client holding sockets open cannot pin resources). Off unless `--metrics-listen`.
public struct MetricsEndpoint: Service {
    public let host: String
    public let port: Int
    let registry: PrometheusCollectorRegistry
    let logger: Logger
    let onBound: @Sendable (Int) -> Void

    /// - Parameter onBound: called with the bound port once listening (useful with port 0 in tests).
    public init(host: String, port: Int, registry: PrometheusCollectorRegistry, logger: Logger,
                onBound: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.host = host
        self.port = port
        self.registry = registry
        self.logger = logger
        self.onBound = onBound
    }

    public func run() async throws {
        let registry = self.registry
        try await HTTPEndpoint(name: "metrics", flag: "--metrics-listen", host: host, port: port, logger: logger,
                               onBound: onBound) { request in
            Self.respond(to: request, registry: registry)
        }.run()
    }

    static func respond(to request: HTTPRequest, registry: PrometheusCollectorRegistry) -> HTTPResponse {
        guard request.method == .GET else { return .refusal(.methodNotAllowed, "only GET /metrics is served") }
        guard request.path == "/metrics" || request.path == "/" else { return .refusal(.notFound, "not found: try /metrics") }
        return HTTPResponse(contentType: "text/plain; version=0.0.4; charset=utf-8", body: registry.emitToBuffer())
    }
}

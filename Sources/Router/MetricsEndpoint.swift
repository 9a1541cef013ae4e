import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// Serves the Prometheus text exposition of a registry at `GET /metrics` (and `/`), nothing else.
///
/// Built on SwiftNIO's HTTP/1 codec so that malformed or hostile requests are parsed by a well-tested
/// parser, not by us. Every response closes the connection: scrapes are rare, keep-alive buys nothing, and
/// a client holding sockets open cannot pin resources. Off unless `--metrics-listen` is given.
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
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(ScrapeHandler(registry: registry))
                    }
                }
                .childChannelOption(.maxMessagesPerRead, value: 1)
                .bind(host: host, port: port)
                .get()
        } catch {
            throw MetricsEndpointError(address: "\(host):\(port)", underlying: "\(error)")
        }
        let boundPort = channel.localAddress?.port ?? port
        logger.info("metrics endpoint listening", metadata: ["address": "\(host):\(boundPort)"])
        onBound(boundPort)
        try? await gracefulShutdown()
        try? await channel.close()
    }
}

/// Answers one request per connection with the registry's exposition.
private final class ScrapeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private var head: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
        case .body:
            break // scrapes carry no body; whatever arrives is ignored, never buffered
        case .end:
            guard let request = head else { return }
            head = nil
            let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
            if request.method == .GET && (path == "/metrics" || path == "/") {
                respond(context: context, status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8",
                        body: registry.emitToBuffer())
            } else if request.method != .GET {
                respond(context: context, status: .methodNotAllowed, contentType: "text/plain",
                        body: Array("only GET /metrics is served\n".utf8))
            } else {
                respond(context: context, status: .notFound, contentType: "text/plain",
                        body: Array("not found: try /metrics\n".utf8))
            }
        }
    }

    private func respond(context: ChannelHandlerContext, status: HTTPResponseStatus, contentType: String, body: [UInt8]) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.count))
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
                      promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: body.count)
        buffer.writeBytes(body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}

/// The metrics endpoint could not listen.
public struct MetricsEndpointError: Error, CustomStringConvertible {
    public var address: String
    public var underlying: String
    public var description: String {
        "cannot serve metrics on \(address): \(underlying) (is the address local and the port free? see --metrics-listen)"
    }
}

import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization

/// One HTTP request as our read-only endpoints see it: the method, the path and the decoded query.
public struct HTTPRequest: Sendable {
    public var method: HTTPMethod
    public var path: String
    /// Query parameters in order; names and values percent-decoded.
    public var query: [(name: String, value: String)]
}

/// What an endpoint answers.
public struct HTTPResponse: Sendable {
    public var status: HTTPResponseStatus
    public var contentType: String
    public var body: [UInt8]

    public init(status: HTTPResponseStatus = .ok, contentType: String, body: [UInt8]) {
        self.status = status
        self.contentType = contentType
        self.body = body
    }

    /// A plain-text answer for a refused request: the reason, and what would be accepted.
    public static func refusal(_ status: HTTPResponseStatus, _ message: String) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "text/plain; charset=utf-8", body: Array((message + "\n").utf8))
    }
}

/// A small read-only HTTP/1.1 server for the metrics endpoint and the dashboard: SwiftNIO's parser faces the
/// network, never ours. Guarantees: one request per connection (answered, then closed); a request line over
/// `maxURILength` bytes gets 414 and a query that is not `name=value` pairs 400 before any responder runs;
/// request bodies are read and dropped, never buffered; a connection that has not finished its request within
/// `requestTimeout` (10 s by default) is closed; at most `maxConnections` are served at once (more are closed on accept).
/// Cost: one task per open connection, structured under the service's task group.
public struct HTTPEndpoint: Service {
    public static let maxURILength = 2048
    public static let maxQueryParameters = 16
    public static let maxConnections = 64
    public static let defaultRequestTimeout = Duration.seconds(10)

    public let host: String
    public let port: Int
    /// What the log and errors call it (`metrics`, `dashboard`), and the flag that sets its address.
    let name: String
    let flag: String
    let respond: @Sendable (HTTPRequest) async -> HTTPResponse
    let logger: Logger
    let onBound: @Sendable (Int) -> Void
    /// How long a client has to send its whole request before the connection is closed.
    let requestTimeout: Duration

    public init(name: String, flag: String, host: String, port: Int, logger: Logger,
                requestTimeout: Duration = defaultRequestTimeout,
                onBound: @escaping @Sendable (Int) -> Void = { _ in },
                respond: @escaping @Sendable (HTTPRequest) async -> HTTPResponse) {
        self.requestTimeout = requestTimeout
        self.name = name
        self.flag = flag
        self.host = host
        self.port = port
        self.logger = logger
        self.onBound = onBound
        self.respond = respond
    }

    public func run() async throws {
        typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>
        let server: NIOAsyncChannel<Connection, Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.maxMessagesPerRead, value: 1)
                .bind(host: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        return try Connection(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw HTTPEndpointError(name: name, flag: flag, address: "\(host):\(port)", underlying: "\(error)")
        }
        let boundPort = server.channel.localAddress?.port ?? port
        logger.info("\(name) endpoint listening", metadata: ["address": "\(host):\(boundPort)"])
        onBound(boundPort)
        let open = ConnectionCount()
        do {
            try await cancelWhenGracefulShutdown {
                try await withThrowingDiscardingTaskGroup { group in
                    try await server.executeThenClose { connections in
                        for try await connection in connections {
                            guard open.value.add(1, ordering: .relaxed).newValue <= Self.maxConnections else {
                                open.value.subtract(1, ordering: .relaxed)
                                try? await connection.channel.close()
                                continue
                            }
                            group.addTask {
                                await serve(connection)
                                open.value.subtract(1, ordering: .relaxed)
                            }
                        }
                    }
                }
            }
        } catch is CancellationError {
            return
        }
    }

    /// Reads one request (within `requestTimeout`), answers it and closes the connection.
    private func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
        let respond = self.respond
        try? await withThrowingTaskGroup(of: Void.self) { race in
            race.addTask {
                try await connection.executeThenClose { inbound, outbound in
                    var head: HTTPRequestHead?
                    for try await part in inbound {
                        switch part {
                        case .head(let request): head = request
                        case .body: continue  // read-only endpoints take no body; dropped as it arrives
                        case .end:
                            guard let request = head else { return }
                            let response = switch Self.parse(request) {
                            case .request(let parsed): await respond(parsed)
                            case .refused(let refusal): refusal
                            }
                            try await Self.write(response, to: outbound, allocator: connection.channel.allocator)
                            return
                        }
                    }
                }
            }
            race.addTask {
                try await Task.sleep(for: requestTimeout)
                try? await connection.channel.close()
            }
            _ = try await race.next()
            race.cancelAll()
        }
    }

    private static func write(_ response: HTTPResponse, to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>,
                              allocator: ByteBufferAllocator) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "X-Content-Type-Options", value: "nosniff")
        // Nothing but this server's own files and API: no CDN, no inline script, no framing by others.
        headers.add(name: "Content-Security-Policy", value: "default-src 'self'; frame-ancestors 'none'")
        headers.add(name: "Connection", value: "close")
        try await outbound.write(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers)))
        try await outbound.write(.body(.byteBuffer(allocator.buffer(bytes: response.body))))
        try await outbound.write(.end(nil))
    }

    enum Parsed {
        case request(HTTPRequest)
        case refused(HTTPResponse)
    }

    /// The request line's path and query, bounded and decoded; a refusal says what is wrong.
    static func parse(_ head: HTTPRequestHead) -> Parsed {
        guard head.uri.utf8.count <= maxURILength else {
            return .refused(.refusal(.uriTooLong, "the request line is \(head.uri.utf8.count) bytes; at most \(maxURILength) are read"))
        }
        let parts = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let rawPath = String(parts.first ?? "")
        guard rawPath.hasPrefix("/"), let path = rawPath.removingPercentEncoding else {
            return .refused(.refusal(.badRequest, "malformed path: \(String(rawPath.prefix(80)))"))
        }
        var query: [(name: String, value: String)] = []
        if parts.count == 2, !parts[1].isEmpty {
            let pairs = parts[1].split(separator: "&", omittingEmptySubsequences: false)
            guard pairs.count <= maxQueryParameters else {
                return .refused(.refusal(.badRequest, "\(pairs.count) query parameters; at most \(maxQueryParameters) are read"))
            }
            for pair in pairs {
                let nameValue = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard nameValue.count == 2, !nameValue[0].isEmpty,
                      let name = String(nameValue[0]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding,
                      let value = String(nameValue[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding
                else {
                    return .refused(.refusal(.badRequest, "malformed query parameter '\(String(pair.prefix(40)))': use name=value"))
                }
                query.append((name, value))
            }
        }
        return .request(HTTPRequest(method: head.method, path: path, query: query))
    }
}

/// How many connections an endpoint serves now (shared by its accept loop and connection tasks).
private final class ConnectionCount: Sendable {
    let value = Atomic<Int>(0)
}

/// An HTTP endpoint could not listen.
public struct HTTPEndpointError: Error, CustomStringConvertible {
    public var name: String
    public var flag: String
    public var address: String
    public var underlying: String
    public var description: String {
        "cannot serve \(name) on \(address): \(underlying) (is the address local and the port free? see \(flag))"
    }
}

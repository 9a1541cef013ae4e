import Foundation
import Logging
import Model
import ServiceLifecycle
import Testing
@testable import Router

/// Runs curl (a real HTTP client) and returns its stdout and exit status.
private func curl(_ arguments: [String]) throws -> (output: String, status: Int32) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
    process.arguments = ["-s", "--max-time", "5"] + arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (String(decoding: data, as: UTF8.self), process.terminationStatus)
}

@Suite struct MetricsEndpointTests {
    @Test func exposesPathsClassesAndDropsAndForgetsVanishedPaths() async throws {
        let metrics = RouterMetrics()
        var sample = RouterSample()
        sample.paths = [
            PathSample(pathID: 1, path: "isp-a->east", site: "east", uplink: "isp-a", status: .up,
                       metrics: PathMetrics(latencyMs: 12.5, jitterMs: 2.1, lossPct: 0.05, bandwidthMbps: 987.3, score: 98,
                                            throughputTxMbps: 41.5, throughputRxMbps: 2.25),
                       transmitBytes: 1000, receiveBytes: 2000),
            PathSample(pathID: 2, path: "isp-b->east", site: "east", uplink: "isp-b", status: .down, metrics: nil,
                       transmitBytes: 10, receiveBytes: 0),
        ]
        sample.classes = [ClassSample(policy: "voip", site: "east", pathID: 1, path: "isp-a->east", packets: 7, bytes: 700)]
        sample.selections = [SelectionSample(policy: "voip", site: "east", pathID: 1, path: "isp-a->east")]
        sample.failovers = 3
        sample.drops = [.init(component: "discovery", reason: "bad-mac"): 4]
        sample.transitRefused = 6
        metrics.update(sample)

        let (stream, continuation) = AsyncStream.makeStream(of: Int.self)
        let endpoint = MetricsEndpoint(host: "127.0.0.1", port: 0, registry: metrics.registry,
                                       logger: Logger(label: "test")) { continuation.yield($0) }
        let group = ServiceGroup(services: [endpoint], logger: Logger(label: "test"))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            var ports = stream.makeAsyncIterator()
            let port = try #require(await ports.next())
            let url = "http://127.0.0.1:\(port)/metrics"

            let first = try curl([url])
            #expect(first.status == 0)
            #expect(first.output.contains(#"patronus_path_latency_ms{path_id="1",path="isp-a->east",site="east",uplink="isp-a"} 12.5"#))
            #expect(first.output.contains(#"patronus_path_status{path_id="2",path="isp-b->east",site="east",uplink="isp-b",status="down"} 1"#))
            #expect(first.output.contains(#"patronus_path_bandwidth_mbps{path_id="1",path="isp-a->east",site="east",uplink="isp-a"} 987.3"#))
            #expect(first.output.contains(#"patronus_path_throughput_mbps{path_id="1",path="isp-a->east",site="east",uplink="isp-a",direction="transmit"} 41.5"#))
            #expect(first.output.contains(#"patronus_path_throughput_mbps{path_id="1",path="isp-a->east",site="east",uplink="isp-a",direction="receive"} 2.25"#))
            #expect(first.output.contains(#"patronus_class_packets_total{policy="voip",site="east",path_id="1",path="isp-a->east"} 7"#))
            #expect(first.output.contains(#"patronus_class_selected_path{policy="voip",site="east",path_id="1",path="isp-a->east"} 1"#))
            #expect(first.output.contains("patronus_failovers_total 3"))
            #expect(first.output.contains("patronus_transit_refused_packets_total 6"))
            #expect(first.output.contains(#"patronus_dropped_datagrams_total{component="discovery",reason="bad-mac"} 4"#))

            // Counters advance by the difference of absolute readings; a vanished path's series go away.
            sample.paths.removeLast()
            sample.paths[0].transmitBytes = 1500
            sample.classes[0].packets = 9
            metrics.update(sample)
            let second = try curl([url])
            #expect(second.output.contains(#"patronus_path_transmit_bytes_total{path_id="1",path="isp-a->east",site="east",uplink="isp-a"} 1500"#))
            #expect(second.output.contains(#"patronus_class_packets_total{policy="voip",site="east",path_id="1",path="isp-a->east"} 9"#))
            #expect(!second.output.contains("isp-b->east"))
            // A relay has no forward chain: no transit series.
            sample.transitRefused = nil
            metrics.update(sample)
            #expect(!(try curl([url]).output.contains("patronus_transit_refused")))

            let missing = try curl(["-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/nope"])
            #expect(missing.output == "404")
            let post = try curl(["-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", url])
            #expect(post.output == "405")
            let garbage = try curl(["-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Length: nope", url])
            #expect(garbage.output == "400")

            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }
}

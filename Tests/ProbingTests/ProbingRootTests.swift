import Foundation
import Lab
import Model
import Testing
@testable import Probing

/// Collects a prober's events and lets a test wait for one.
final class EventRecorder: @unchecked Sendable {
    private let lock = NSLock()
    private var events: [PathEvent] = []

    func append(_ event: PathEvent) { lock.withLock { events.append(event) } }
    var all: [PathEvent] { lock.withLock { events } }

    /// Polls the recorded events (test code only) until one after index `from` matches.
    func wait(for timeout: Duration, from: Int = 0, _ matches: (PathEvent) -> Bool) async -> PathEvent? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let event = all.dropFirst(from).first(where: matches) { return event }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return nil
    }
}

/// Two namespaces joined by veths: `a` probes, `b` responds. b's overlay address 10.99.9.2 is on its loopback
/// and reachable over both veths.
struct ProbeTopology {
    let a: NetworkNamespace
    let b: NetworkNamespace

    init() throws {
        a = try NetworkNamespace.create(label: "proba")
        do {
            b = try NetworkNamespace.create(label: "probb")
        } catch {
            a.delete()
            throw error
        }
        do {
            try a.addVeth("pa0", peer: "pb0", in: b)
            try a.addVeth("pa1", peer: "pb1", in: b)
            try a.addAddress("10.99.1.1/24", to: "pa0")
            try a.addAddress("10.99.2.1/24", to: "pa1")
            try b.addAddress("10.99.1.2/24", to: "pb0")
            try b.addAddress("10.99.2.2/24", to: "pb1")
            try b.addAddress("10.99.9.2/32", to: "lo")
            try a.addRoute("10.99.9.2/32", via: "10.99.1.2", device: "pa0")
        } catch {
            delete()
            throw error
        }
    }

    func delete() {
        a.delete()
        b.delete()
    }
}

@Suite(.serialized) struct ProbingRootTests {
    static let isRoot = getuid() == 0

    @Test(.enabled(if: isRoot), .timeLimit(.minutes(1)))
    func proberMeasuresDetectsACutAndRecoversAfterTheHoldRoot() async throws {
        let topology = try ProbeTopology()
        defer { topology.delete() }
        let responder = try topology.b.perform { try ProbeResponder() }
        let target = ProbeTarget(name: "pa0>b", remote: SocketAddress4(IPv4Address(10, 99, 9, 2), port: 51822),
                                 pinning: .interface("pa0"))
        let prober = try topology.a.perform { try PathProber(target: target, metricsInterval: .milliseconds(500)) }
        let recorder = EventRecorder()
        let responding = Task { await responder.run() }
        let probing = Task { await prober.run() }
        let reading = Task { for await event in prober.events { recorder.append(event) } }
        defer {
            probing.cancel()
            responding.cancel()
        }

        let up = await recorder.wait(for: .seconds(3)) { $0.change?.to == .up }
        #expect(up != nil, "never came up: \(prober.counters)")
        try await Task.sleep(for: .seconds(2))
        // A veth round trip is tens of microseconds; the emulator tests check accuracy at WAN delays.
        let metrics = prober.metrics
        #expect(metrics.lossPct == 0)
        #expect(metrics.latencyMs > 0 && metrics.latencyMs < 1, "latency \(metrics.latencyMs) ms")

        // Cut: b silently drops probe requests.
        let before = recorder.all.count
        try topology.b.check(["nft", "add table inet ptcut; add chain inet ptcut input "
                                + "{ type filter hook input priority 0; udp dport 51822 drop; }"])
        let cutAt = MonotonicInstant.now()
        let down = await recorder.wait(for: .seconds(2), from: before) { $0.change?.to == .down }
        let detection = try #require(down?.change).at - cutAt
        let rtt = Duration.nanoseconds(Int64(metrics.latencyMs * 1e6))
        // 3 intervals + 1 RTT + the 10 ms timeout margin, + 25 ms for a loaded 2-core test machine.
        #expect(detection <= .milliseconds(150 + 10 + 25) + rtt, "detection \(detection)")
        #expect(down?.change?.reason == .consecutiveMisses(3))

        let beforeRestore = recorder.all.count
        try topology.b.check(["nft", "delete table inet ptcut"])
        let restoredAt = MonotonicInstant.now()
        let upAgain = await recorder.wait(for: .seconds(6), from: beforeRestore) { $0.change?.to == .up }
        let recovery = try #require(upAgain?.change).at - restoredAt
        #expect(recovery >= .seconds(3) && recovery <= .milliseconds(3300), "recovery \(recovery)")

        probing.cancel()
        responding.cancel()
        await reading.value // the stream finishes when run() returns
        #expect(prober.counters.drops.total == 0)
        #expect(responder.statistics.drops.total == 0)
        #expect(responder.statistics.answered > 100)
    }

    @Test(.enabled(if: isRoot), .timeLimit(.minutes(1)))
    func responderRepliesThroughTheInterfaceTheProbeCameInOnRoot() async throws {
        let topology = try ProbeTopology()
        defer { topology.delete() }
        // b would route replies to a's pa1 address via pb0; only IP_PKTINFO keeps them on pb1, and a prober
        // pinned to pa1 only hears replies that come back on pa1.
        try topology.b.addRoute("10.99.2.1/32", via: "10.99.1.1", device: "pb0")
        let responder = try topology.b.perform { try ProbeResponder() }
        let target = ProbeTarget(name: "pa1>b", remote: SocketAddress4(IPv4Address(10, 99, 9, 2), port: 51822),
                                 pinning: .interface("pa1"))
        let prober = try topology.a.perform { try PathProber(target: target) }
        let responding = Task { await responder.run() }
        let probing = Task { await prober.run() }
        defer {
            probing.cancel()
            responding.cancel()
        }
        try await Task.sleep(for: .seconds(1))
        let counters = prober.counters
        #expect(counters.repliesOnTime >= 15, "\(counters)")
        #expect(prober.status == .up)
        let viaPb1 = try topology.b.check(["cat", "/sys/class/net/pb1/statistics/tx_packets"])
        #expect((Int(viaPb1.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) >= 15)
    }

    @Test(.enabled(if: isRoot), .timeLimit(.minutes(1)))
    func hostileDatagramsAreDroppedAndCountedRoot() async throws {
        let topology = try ProbeTopology()
        defer { topology.delete() }
        var configuration = ProbeResponder.Configuration()
        configuration.allowedSources = [IPv4Prefix(IPv4Address(10, 99, 1, 0), length: 24)]
        let responder = try topology.b.perform { [configuration] in try ProbeResponder(configuration: configuration) }
        let responding = Task { await responder.run() }
        defer { responding.cancel() }
        let sender = try UDPSocket(in: topology.a, bindTo: "10.99.1.1")
        let outsider = try UDPSocket(in: topology.a, bindTo: "10.99.2.1")
        let good = ProbePacket(kind: .request, sequence: 1).encoded()
        let old = [0x50, 0x52, 0x01, 0x01] + [UInt8](repeating: 0, count: 16) // the 20-byte version-1 probe
        let datagrams: [[UInt8]] = [[], [1, 2, 3], good + [0], old, [0x90, 0, 0, 1], [0x70, 0, 0, 1],
                                    [0x51, 0, 0, 1], ProbePacket(kind: .reply, sequence: 1).encoded(), good]
        for bytes in datagrams { sender.send(bytes, to: "10.99.9.2", port: 51822) }
        outsider.send(good, to: "10.99.9.2", port: 51822)
        let reply = sender.receive(timeout: .seconds(2))
        #expect(reply.map { try? ProbePacket.decode($0.bytes) }??.kind == .reply)
        try await Task.sleep(for: .milliseconds(200))
        let stats = responder.statistics
        #expect(stats.answered == 1)
        #expect(stats.drops[.truncated] == 4)
        #expect(stats.drops[.badVersion] == 1)
        #expect(stats.drops[.badKind] == 1)
        #expect(stats.drops[.badFlags] == 1)
        #expect(stats.drops[.unexpectedKind] == 1)
        #expect(stats.drops[.unknownPeer] == 1)
    }

    /// A scripted responder in front of a real prober: it answers every request correctly and also sends,
    /// from the probed address, a previous run's reply (far-away sequence), a reply to a probe not sent yet,
    /// a request, malformed datagrams, and a valid reply from another port. All dropped and counted by reason;
    /// the path stays up on the genuine replies.
    @Test(.enabled(if: isRoot), .timeLimit(.minutes(1)))
    func proberDropsAndCountsRepliesToNothingAndStrangersRoot() async throws {
        let topology = try ProbeTopology()
        defer { topology.delete() }
        let fake = try UDPSocket(in: topology.b, bindTo: "10.99.9.2", port: 51822)
        let stranger = try UDPSocket(in: topology.b, bindTo: "10.99.9.2")
        let target = ProbeTarget(name: "pa0>b", remote: SocketAddress4(IPv4Address(10, 99, 9, 2), port: 51822),
                                 pinning: .interface("pa0"))
        let prober = try topology.a.perform { try PathProber(target: target) }
        let probing = Task { await prober.run() }
        defer { probing.cancel() }
        var hostile = 0
        let end = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < end {
            guard let request = fake.receive(timeout: .milliseconds(200)),
                  let probe = try? ProbePacket.decode(request.bytes) else { continue }
            let back = { (bytes: [UInt8]) in _ = fake.send(bytes, to: request.address, port: request.port) }
            back(probe.reply().encoded())
            guard hostile < 5 else { continue }
            hostile += 1
            back(ProbePacket(kind: .reply, sequence: probe.sequence ^ 0x80_0000).encoded()) // replyToNothing
            back(ProbePacket(kind: .reply, sequence: ProbeSequence.next(probe.sequence)).encoded()) // replyToNothing
            back(ProbePacket(kind: .request, sequence: probe.sequence).encoded())                // unexpectedKind
            back(probe.reply().encoded() + [0])                                                  // truncated
            back([0x90, 0, 0, 1])                                                                // badVersion
            _ = stranger.send(probe.reply().encoded(), to: request.address, port: request.port) // unknownPeer
        }
        // At once: from now on nobody answers, and the next deadline would be a miss.
        let counters = prober.counters
        let status = prober.status
        #expect(hostile == 5)
        #expect(counters.drops[.replyToNothing] == 10, "\(counters)")
        #expect(counters.drops[.unexpectedKind] == 5)
        #expect(counters.drops[.truncated] == 5)
        #expect(counters.drops[.badVersion] == 5)
        #expect(counters.drops[.unknownPeer] == 5)
        #expect(counters.drops.total == 30)
        #expect(counters.repliesOnTime >= 30 && counters.misses == 0, "\(counters)")
        #expect(status == .up)
    }

    @Test(.enabled(if: isRoot), .timeLimit(.minutes(1)))
    func aProbeSetMergesEventsAndRemovesPathsRoot() async throws {
        let topology = try ProbeTopology()
        defer { topology.delete() }
        let responder = try topology.b.perform { try ProbeResponder() }
        let responding = Task { await responder.run() }
        defer { responding.cancel() }
        let set = PathProbeSet(metricsInterval: .milliseconds(200))
        let remote = SocketAddress4(IPv4Address(10, 99, 9, 2), port: 51822)
        try topology.a.perform {
            try set.add(ProbeTarget(name: "pa0>b", remote: remote, pinning: .interface("pa0")))
            try set.add(ProbeTarget(name: "pa1>b", remote: remote, pinning: .interface("pa1")))
        }
        #expect(throws: PathProbeSet.Failure.duplicate("pa0>b")) {
            try topology.a.perform { try set.add(ProbeTarget(name: "pa0>b", remote: remote, pinning: .interface("pa0"))) }
        }
        #expect(throws: PathProbeSet.Failure.self) {
            try topology.a.perform { try set.add(ProbeTarget(name: "x", remote: remote, pinning: .interface("nosuch0"))) }
        }
        let recorder = EventRecorder()
        let running = Task { await set.run() }
        let reading = Task { for await event in set.events { recorder.append(event) } }
        let bothUp = await recorder.wait(for: .seconds(3)) { _ in
            Set(recorder.all.filter { $0.change?.to == .up }.map(\.path)) == ["pa0>b", "pa1>b"]
        }
        #expect(bothUp != nil)
        set.remove("pa1>b")
        try await Task.sleep(for: .milliseconds(300))
        let afterRemoval = recorder.all.count
        try await Task.sleep(for: .milliseconds(600))
        #expect(recorder.all.dropFirst(afterRemoval).allSatisfy { $0.path == "pa0>b" })
        #expect(recorder.all.dropFirst(afterRemoval).count >= 2) // pa0's metrics keep coming
        #expect(set.paths == ["pa0>b"])
        #expect(set.snapshot()["pa0>b"]?.status == .up)
        // (measureBandwidth opens its socket in the caller's namespace, the test's root one here, so only the
        // unknown-path case is checked; BandwidthTests measures through real token buckets.)
        #expect(try await set.measureBandwidth(path: "nosuch") == nil)
        set.recordBandwidth(path: "pa0>b", mbps: 42)
        #expect(set.snapshot()["pa0>b"]?.metrics.bandwidthMbps == 42)
        running.cancel()
        await reading.value // finishes with run()
    }
}

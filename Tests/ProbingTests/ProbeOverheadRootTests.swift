import Foundation
import Lab
import Model
import Testing
import WireGuard
@testable import Probing

/// hq probing east through a real wireguard-go tunnel over the lab's isp-a (userspace WAN emulator, no
/// impairment), with nft counters on hq's uplink `wan-a` that count the tunnel's encrypted UDP. Nothing else
/// uses the tunnel, and only hq probes, so the uplink's WireGuard data packets are exactly hq's probe requests
/// (out) and east's replies (in).
final class TunnelProbedLab: @unchecked Sendable {
    struct Site {
        let name: String
        let namespace: NetworkNamespace
        let executor: NamespaceExecutor
        let backend = UserspaceWireGuard()
        let interface: String
        let key = WireGuardPrivateKey()
        let underlay: IPv4Address
        let overlay: IPv4Address

        func run<T: Sendable>(_ body: @Sendable @escaping (UserspaceWireGuard) async throws -> T) async throws -> T {
            try await withTaskExecutorPreference(executor) { try await body(backend) }
        }
    }

    /// Packets and IP bytes (nft counts from the IP header on) of one counter.
    struct Count: Equatable {
        var packets: Double
        var bytes: Double
        static func - (a: Count, b: Count) -> Count { Count(packets: a.packets - b.packets, bytes: a.bytes - b.bytes) }
    }

    /// hq's uplink counters: every WireGuard datagram, its data messages (type 4), and the data messages of a
    /// probe's size (IP length 92: a 0..4-byte inner UDP payload), per direction.
    struct Counters {
        var all: (out: Count, in: Count)
        var data: (out: Count, in: Count)
        var probeSized: (out: Count, in: Count)
    }

    static let port: UInt16 = 51820
    let lab: LabTopology
    let hq: Site
    let east: Site
    let responder: ProbeResponder
    let prober: PathProber
    private var tasks: [Task<Void, Never>] = []

    static func start() async throws -> TunnelProbedLab {
        let lab = try LabTopology.build(sites: 2, uplinks: 1, options: .init(emulation: .inProcess))
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        var sites: [Site] = []
        do {
            for (index, name) in ["hq", "east"].enumerated() {
                let namespace = lab.router(name)
                sites.append(Site(name: name, namespace: namespace, executor: try NamespaceExecutor(namespace),
                                  interface: "ptov\(tag)\(name.prefix(1))",
                                  underlay: IPv4Address(100, 64, 1, UInt8(index + 1)),
                                  overlay: IPv4Address(10, 99, 200, UInt8(index + 1))))
            }
            for (local, peer) in [(sites[0], sites[1]), (sites[1], sites[0])] {
                let configuration = InterfaceConfiguration(privateKey: local.key.secret, listenPort: port, peers: [
                    PeerConfiguration(publicKey: peer.key.publicKey, endpoint: SocketAddress4(peer.underlay, port: port),
                                      allowedIPs: [IPv4Prefix(peer.overlay, length: 32)], persistentKeepalive: 0),
                ])
                try await local.run {
                    try await $0.start(local.interface, configuration: configuration,
                                       addresses: [TunnelAddress(local.overlay, prefixLength: 24)])
                }
            }
            let rules = FileManager.default.temporaryDirectory.appendingPathComponent("ptbench-\(tag).nft").path
            try countingRuleset.write(toFile: rules, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: rules) }
            try sites[0].namespace.check(["nft", "-f", rules])
            return try TunnelProbedLab(lab: lab, hq: sites[0], east: sites[1])
        } catch {
            await Self.stop(lab: lab, sites: sites)
            throw error
        }
    }

    private init(lab: LabTopology, hq: Site, east: Site) throws {
        self.lab = lab
        self.hq = hq
        self.east = east
        // The production responder configuration: allowed sources = the overlay pool, i.e. through tunnels.
        responder = try east.namespace.perform { try ProbeResponder() }
        let target = ProbeTarget(name: "hq:isp-a>east", remote: SocketAddress4(east.overlay, port: 51822),
                                 pinning: .interface(hq.interface))
        prober = try hq.namespace.perform { try PathProber(target: target, metricsInterval: .seconds(1)) }
        let responder = responder, prober = prober
        tasks = [Task { await responder.run() }, Task { await prober.run() },
                 Task { for await _ in prober.events {} }]
    }

    /// A private table in hq's router namespace (never the root namespace's), counters only, no verdicts.
    static let countingRuleset = """
        table inet ptbench {
            counter wg_out {}
            counter wg_in {}
            counter data_out {}
            counter data_in {}
            counter probe_out {}
            counter probe_in {}
            chain output {
                type filter hook output priority 0; policy accept;
                oifname "wan-a" udp dport \(port) counter name "wg_out"
                oifname "wan-a" udp dport \(port) @th,64,8 4 counter name "data_out"
                oifname "wan-a" udp dport \(port) @th,64,8 4 ip length 92 counter name "probe_out"
            }
            chain input {
                type filter hook input priority 0; policy accept;
                iifname "wan-a" udp sport \(port) counter name "wg_in"
                iifname "wan-a" udp sport \(port) @th,64,8 4 counter name "data_in"
                iifname "wan-a" udp sport \(port) @th,64,8 4 ip length 92 counter name "probe_in"
            }
        }
        """

    /// All six counters from one listing, so that they belong to the same instant.
    func counters() throws -> Counters {
        let text = try hq.namespace.check(["nft", "list", "table", "inet", "ptbench"])
        // "counter NAME {" then "packets P bytes B"
        var counts: [String: Count] = [:]
        var current: String?
        for line in text.split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if words.count >= 2, words[0] == "counter" { current = String(words[1]) }
            if words.count >= 4, words[0] == "packets", words[2] == "bytes", let name = current {
                counts[name] = Count(packets: Double(words[1]) ?? .nan, bytes: Double(words[3]) ?? .nan)
            }
        }
        func read(_ name: String) throws -> Count {
            guard let count = counts[name] else {
                throw LabError.commandFailed(argv: ["nft", "list", "table", "inet", "ptbench"], status: 0,
                                             stderr: "no counter \(name) in: \(text)")
            }
            return count
        }
        return Counters(all: (try read("wg_out"), try read("wg_in")), data: (try read("data_out"), try read("data_in")),
                        probeSized: (try read("probe_out"), try read("probe_in")))
    }

    func waitUp(_ prober: PathProber? = nil) async -> Bool {
        let prober = prober ?? self.prober
        let end = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < end {
            if prober.status == .up { return true }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    /// East probes hq over the same tunnel too, as in a real mesh where every site probes its paths: then each
    /// direction of the tunnel carries one site's requests and the other's replies. Returns east's prober.
    func startReverseProbing() throws -> PathProber {
        let reverseResponder = try hq.namespace.perform { try ProbeResponder() }
        let target = ProbeTarget(name: "east:isp-a>hq", remote: SocketAddress4(hq.overlay, port: 51822),
                                 pinning: .interface(east.interface))
        let reverse = try east.namespace.perform { try PathProber(target: target, metricsInterval: .seconds(1)) }
        tasks += [Task { await reverseResponder.run() }, Task { await reverse.run() },
                  Task { for await _ in reverse.events {} }]
        return reverse
    }

    /// What the uplink carried for the probes over `span`.
    struct Measurement {
        var seconds: Double
        var probesPerSecond: Double
        var packetsPerSecond: Double
        var repliesPerSecond: Double
        var delta: Counters
        var responderMeanHoldMicroseconds: Double
        var responderMaxHoldMicroseconds: Double

        func rate(_ count: Count) -> (packets: Double, bitsPerSecond: Double, bytesPerPacket: Double) {
            (count.packets / seconds, count.bytes * 8 / seconds, count.packets > 0 ? count.bytes / count.packets : .nan)
        }
    }

    func measure(for span: Duration) async throws -> Measurement {
        let counters0 = prober.counters, responder0 = responder.statistics
        let (c0, t0) = (try counters(), MonotonicInstant.now())
        try await Task.sleep(for: span)
        let (c1, t1) = (try counters(), MonotonicInstant.now())
        let counters1 = prober.counters, responder1 = responder.statistics
        let seconds = Double((t1 - t0).nanoseconds) / 1e9
        let answered = Double(responder1.answered - responder0.answered)
        return Measurement(
            seconds: seconds,
            probesPerSecond: Double(counters1.probesSent - counters0.probesSent) / seconds,
            packetsPerSecond: Double(counters1.packetsSent - counters0.packetsSent) / seconds,
            repliesPerSecond: Double(counters1.repliesOnTime + counters1.repliesLate
                                     - counters0.repliesOnTime - counters0.repliesLate) / seconds,
            delta: Counters(all: (c1.all.out - c0.all.out, c1.all.in - c0.all.in),
                            data: (c1.data.out - c0.data.out, c1.data.in - c0.data.in),
                            probeSized: (c1.probeSized.out - c0.probeSized.out, c1.probeSized.in - c0.probeSized.in)),
            responderMeanHoldMicroseconds: answered > 0
                ? Double(responder1.holdTotalNanoseconds - responder0.holdTotalNanoseconds) / answered / 1000 : .nan,
            responderMaxHoldMicroseconds: Double(responder1.holdMaximumNanoseconds) / 1000)
    }

    func stop() async {
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
        await Self.stop(lab: lab, sites: [hq, east])
    }

    private static func stop(lab: LabTopology, sites: [Site]) async {
        for site in sites {
            _ = try? await site.run { try await $0.deleteInterface(named: site.interface) }
            site.executor.shutdown()
        }
        lab.teardown()
    }
}

extension ProbingLabRootTests {
    static let hasWireGuardGo = access(UserspaceWireGuard.defaultExecutable, X_OK) == 0

    /// The 4-byte probe is a 92-byte WireGuard packet on the uplink: 20 x 92 x 8 = 14.7 kbit/s per direction.
    @Test(.enabled(if: isRoot && hasWireGuardGo), .timeLimit(.minutes(1)))
    func probesAreNinetyTwoBytesOnTheUplinkAndWithinBudgetRoot() async throws {
        let lab = try await TunnelProbedLab.start()
        do {
            #expect(await lab.waitUp())
            let m = try await lab.measure(for: .seconds(3))
            let out = m.rate(m.delta.probeSized.out), inbound = m.rate(m.delta.probeSized.in)
            print("probe overhead (3 s): out \(out), in \(inbound), data out \(m.rate(m.delta.data.out))")
            #expect(m.delta.data.out.packets > 0 && m.delta.data.out == m.delta.probeSized.out)
            #expect(m.delta.data.in == m.delta.probeSized.in)
            #expect(out.bytesPerPacket == 92 && inbound.bytesPerPacket == 92)
            #expect(out.bitsPerSecond <= 16_000 && inbound.bitsPerSecond <= 16_000)
            #expect(lab.prober.counters.drops.total == 0 && lab.responder.statistics.drops.total == 0)
        } catch {
            await lab.stop()
            throw error
        }
        await lab.stop()
    }
}

/// `sudo bench/probe-detect overhead`: a minute of probing through the tunnel, counted on the uplink.
/// Runs only when PATRONUS_BENCH_OVERHEAD_OUT names the results file.
@Suite(.serialized) struct ProbeOverheadBench {
    static let output = ProcessInfo.processInfo.environment["PATRONUS_BENCH_OVERHEAD_OUT"]

    @Test(.enabled(if: getuid() == 0 && output != nil), .timeLimit(.minutes(5)))
    func probeOverheadBenchRoot() async throws {
        let seconds = Int(ProcessInfo.processInfo.environment["PATRONUS_BENCH_SECONDS"] ?? "") ?? 60
        let lab = try await TunnelProbedLab.start()
        do {
            #expect(await lab.waitUp())
            try await Task.sleep(for: .seconds(2))
            let m = try await lab.measure(for: .seconds(Int64(seconds)))
            var report = Self.report(m, lab: lab, seconds: seconds)
            let reverse = try lab.startReverseProbing()
            #expect(await lab.waitUp(reverse))
            try await Task.sleep(for: .seconds(2))
            let both = try await lab.measure(for: .seconds(Int64(seconds / 2)))
            report += "\n" + Self.bothReport(both, reverse: reverse)
            try report.write(toFile: Self.output!, atomically: true, encoding: .utf8)
            print(report)
            #expect(m.rate(m.delta.probeSized.out).bitsPerSecond <= 16_000)
        } catch {
            await lab.stop()
            throw error
        }
        await lab.stop()
    }

    static func f(_ value: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", value) }

    static func row(_ m: TunnelProbedLab.Measurement, _ label: String, _ count: TunnelProbedLab.Count) -> String {
        let r = m.rate(count)
        return "| \(label) | \(f(r.packets, 2)) | \(f(r.bytesPerPacket)) | \(f(r.bitsPerSecond)) |"
    }

    /// The second phase: east probes hq over the same tunnel as well.
    static func bothReport(_ m: TunnelProbedLab.Measurement, reverse: PathProber) -> String {
        let d = m.delta
        return """
        ## Both sites probing the tunnel (\(f(m.seconds)) s)

        Then east probed hq over the same tunnel as well (its own path, its own prober; hq runs a responder too).
        Each direction now carries one site's requests and the other site's replies. East's prober:
        \(reverse.counters.probesSent) probes sent, drops \(reverse.counters.drops).

        | on hq's uplink | packets/s | bytes/packet | bit/s |
        |---|---|---|---|
        \(row(m, "out: WireGuard data of a probe's size = hq's requests + hq's replies to east", d.probeSized.out))
        \(row(m, "in: WireGuard data of a probe's size = east's replies + east's requests", d.probeSized.in))
        \(row(m, "out: all WireGuard UDP", d.all.out))
        \(row(m, "in: all WireGuard UDP", d.all.in))

        Per direction of the tunnel: \(f(m.rate(d.probeSized.out).bitsPerSecond / 1000, 2)) kbit/s out, \(f(m.rate(d.probeSized.in).bitsPerSecond / 1000, 2)) kbit/s in, i.e.
        two paths' worth; each path (a probing site's) still costs its own 14.7 kbit/s per direction.

        """
    }

    static func report(_ m: TunnelProbedLab.Measurement, lab: TunnelProbedLab, seconds: Int) -> String {
        func row(_ label: String, _ count: TunnelProbedLab.Count) -> String { Self.row(m, label, count) }
        let d = m.delta
        return """
        # bench/probe-detect overhead: probe bytes on the uplink, through WireGuard

        Command: `sudo bench/probe-detect overhead` (runs `swift test --filter ProbeOverheadBench` as root with
        PATRONUS_BENCH_OVERHEAD_OUT set; PATRONUS_BENCH_SECONDS=\(seconds)). Lab: 2 sites, 1 uplink (isp-a), userspace WAN
        emulator without impairment; a wireguard-go tunnel hq <-> east over it (UDP \(TunnelProbedLab.port), no keepalive);
        hq's `PathProber` pinned to the tunnel interface probes east's `ProbeResponder` (default configuration:
        50 ms interval, 4-byte probes). Counted by nft counters in hq's router namespace on its uplink `wan-a`
        (IP bytes: outer IPv4 + UDP + WireGuard, no Ethernet). Date: \(UTCTime.format(Date())) UTC.

        ## One path: only hq probes, nothing else uses the tunnel (\(f(m.seconds)) s)

        Prober: \(f(m.probesPerSecond, 2)) probes/s, \(f(m.packetsPerSecond, 2)) packets/s (with suspect-mode copies),
        \(f(m.repliesPerSecond, 2)) replies/s; RTT through the tunnel \(f(lab.prober.metrics.latencyMs, 2)) ms; drops: prober
        \(lab.prober.counters.drops), responder \(lab.responder.statistics.drops).

        | on hq's uplink | packets/s | bytes/packet | bit/s |
        |---|---|---|---|
        \(row("out: WireGuard data of a probe's size (IP length 92) = the probe requests", d.probeSized.out))
        \(row("in: WireGuard data of a probe's size = the replies", d.probeSized.in))
        \(row("out: all WireGuard data messages", d.data.out))
        \(row("in: all WireGuard data messages", d.data.in))
        \(row("out: all WireGuard UDP (with handshakes)", d.all.out))
        \(row("in: all WireGuard UDP (with handshakes)", d.all.in))

        **Probe overhead per path and direction: \(f(m.rate(d.probeSized.out).bitsPerSecond / 1000, 2)) kbit/s out (requests),
        \(f(m.rate(d.probeSized.in).bitsPerSecond / 1000, 2)) kbit/s in (replies)**; budget 16 kbit/s. The previous 20-byte probe was
        108 bytes on the uplink: \(f(m.packetsPerSecond * 108 * 8 / 1000, 2)) kbit/s at this packet rate.

        Responder hold (kernel receive timestamp of the request to the return of the reply's sendmsg), which the
        RTT now includes: mean \(f(m.responderMeanHoldMicroseconds)) us, max \(f(m.responderMaxHoldMicroseconds)) us since the responder started.

        """
    }
}

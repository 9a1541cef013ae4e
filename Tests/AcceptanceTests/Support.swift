import Foundation
import Glibc
import Lab

/// The executable `swift build` built beside the tests: the acceptance tests drive the real binary.
/// `PATRONUS_ROUTER_BINARY` names another (bench scripts: the release build, with patronus-bench beside it).
enum Binary {
    static let path: String = {
        if let chosen = ProcessInfo.processInfo.environment["PATRONUS_ROUTER_BINARY"],
           FileManager.default.isExecutableFile(atPath: chosen) { return chosen }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        for configuration in ["debug", "release"] {
            let candidate = root.appendingPathComponent(".build/\(configuration)/patronus-router").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return ""
    }()
}

/// Root, and a built binary: the acceptance tests are skipped (not failed) without either.
let acceptanceCanRun = getuid() == 0 && !Binary.path.isEmpty

struct AcceptanceFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Seconds on the monotonic clock.
func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

/// One lab of real routers (`patronus-router run` in every site) under a private instance name, so parallel
/// runs never meet. `down()` must run on every way out (the tests use `defer`).
final class AcceptanceLab: @unchecked Sendable {
    let controller: LabController
    let plan: LabPlan
    let sites: Int

    /// When `init` returned: the routers had just been started.
    let started: Double

    init(sites: Int = 2, wan: LabPlan.WANMode = .bridged, nat: [UplinkID] = [], symmetricNAT: [UplinkID] = [],
         hub: String? = nil, routerArguments: [String] = [], shaping: [String: String] = [:]) throws {
        let instance = "t\(getpid())x\(String(UInt32.random(in: 0...0xffff_ff), radix: 36))"
        controller = LabController(instance: instance, executable: Binary.path)
        self.sites = sites
        plan = try controller.up(sites: sites, uplinks: 2, wan: wan, nat: nat, symmetricNAT: symmetricNAT, hub: hub, routers: true,
                                 extraRouterArguments: routerArguments, shaping: shaping).plan
        started = monotonicSeconds()
    }

    func log(_ site: String) -> String {
        (try? String(contentsOfFile: "\(controller.stateDirectory)/\(site).log", encoding: .utf8)) ?? ""
    }

    /// A 160-byte, VoIP-class (RTP port 20000) stream at `pps` from `from`'s LAN host to `to`'s, for `seconds`,
    /// with `during` run after `after` seconds. The receiver (patronus-bench stream-recv) reports what arrived.
    /// `port` 20000 is VoIP (the default policies: lowest latency, duplicated); outside 16384-32767 it is `default`.
    func stream(from: String, to: String, pps: Int, seconds: Double, after: Double, port: Int = 20000,
                during: () throws -> Void) throws -> StreamResult {
        let bench = URL(fileURLWithPath: Binary.path).deletingLastPathComponent().appendingPathComponent("patronus-bench").path
        let log = "\(controller.stateDirectory)/stream-\(UInt32.random(in: 0 ... .max)).log"
        defer { unlink(log) }
        let receiver = try host(to).spawn([bench, "stream-recv", "\(port)", "\(seconds + 1.5)"], logPath: log)
        defer { receiver.terminate() }
        usleep(300_000)
        let sender = try host(from).spawn([bench, "stream-send", hostAddress(to), "\(port)", "\(pps)", "\(seconds)"])
        defer { sender.terminate() }
        usleep(UInt32(after * 1_000_000))
        try during()
        let deadline = monotonicSeconds() + seconds + 5
        while receiver.isRunning && monotonicSeconds() < deadline { usleep(100_000) }
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        guard let result = StreamResult(output, pps: pps, seconds: seconds) else {
            throw AcceptanceFailure("stream-recv said: \(output)")
        }
        return result
    }

    func down() { _ = try? controller.down() }

    func host(_ site: String) -> NetworkNamespace { NetworkNamespace(existing: plan.hostNamespace(site)) }
    func router(_ site: String) -> NetworkNamespace { NetworkNamespace(existing: plan.routerNamespace(site)) }
    func isp(_ label: String) -> NetworkNamespace { NetworkNamespace(existing: plan.ispNamespace(label)) }
    func database(_ site: String) -> String { "\(controller.stateDirectory)/\(site).db" }
    func hostAddress(_ site: String) -> String { plan.site(named: site)!.hostAddress }
    var ispLabels: [String] { plan.isps.map(\.label) }

    /// Turns the shipped `voip`'s duplication off in every site (tests that check that a class's packets
    /// take one path and no other; duplication has its own tests) and gives the routers time to apply it.
    func withoutDuplication() throws {
        for site in plan.sites {
            let result = try Subprocess.run([Binary.path, "policy", "edit", "--database", database(site.name), "voip", "--no-duplicate"])
            guard result.succeeded else { throw AcceptanceFailure("policy edit voip --no-duplicate: \(result.stderr)") }
        }
        usleep(1_500_000) // the daemons poll the policy generation every 500 ms
    }

    func impair(_ site: String, _ isp: String, _ change: ImpairmentChange) throws {
        try controller.impair(site: site, uplink: isp, change, directions: [.inbound, .outbound])
    }

    /// The router's own report, read from its database by the real CLI (`status --json`). Used only to
    /// know when to start a measurement, never as the evidence.
    func status(_ site: String) throws -> [String: Any] {
        let result = try Subprocess.run([Binary.path, "status", "--database", database(site), "--json"])
        guard result.succeeded, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        else { throw AcceptanceFailure("status --json for \(site) failed: \(result.stderr)") }
        return object
    }

    /// `site`'s paths to `remote`, by local uplink label (`isp-a`), as its database reports them.
    func paths(_ site: String, to remote: String) throws -> [String: [String: Any]] {
        let all = try status(site)["paths"] as? [[String: Any]] ?? []
        var result: [String: [String: Any]] = [:]
        for path in all where path["dst_name"] as? String == remote {
            if let label = path["local_label"] as? String { result[label] = path }
        }
        return result
    }

    /// Polls `condition` every 200 ms until it holds; throws naming `what` at the deadline.
    func wait(_ what: String, timeout: Double, _ condition: () throws -> Bool) throws {
        let deadline = monotonicSeconds() + timeout
        while true {
            if (try? condition()) == true { return }
            guard monotonicSeconds() < deadline else {
                throw AcceptanceFailure("timed out after \(Int(timeout)) s waiting for \(what)\n\(diagnostics())")
            }
            usleep(200_000)
        }
    }

    /// Every router's path table, for failure messages.
    func diagnostics() -> String {
        plan.sites.map { site in
            let paths = (try? status(site.name)["paths"] as? [[String: Any]]) ?? []
            return paths.map { p in
                "\(site.name)->\(p["dst_name"] ?? "?") \(p["local_label"] ?? "?"): \(p["status"] ?? "?") score \(p["score"] ?? "-") latency \(p["latency_ms"] ?? "-") loss \(p["packet_loss_pct"] ?? "-") bw \(p["bandwidth_mbps"] ?? "-")"
            }.joined(separator: "\n")
        }.joined(separator: "\n")
    }

    /// Waits until every site sees every path to every other site up (sites x (sites-1) x uplinks).
    func waitForMesh(timeout: Double = 60) throws {
        try wait("every path up", timeout: timeout) {
            try plan.sites.allSatisfy { site in
                let counts = try status(site.name)["path_counts"] as? [String: Any]
                return (counts?["up"] as? Int) == (sites - 1) * plan.isps.count
            }
        }
    }

    /// A path metric of `site`'s path over `isp` to `remote` (nil while unmeasured).
    func metric(_ site: String, to remote: String, isp: String, _ key: String) throws -> Double? {
        try paths(site, to: remote)[isp]?[key] as? Double
    }

    // MARK: evidence: counters in the ISP namespaces

    /// Bytes and packets `site` sent into each ISP (the ISP side of its uplink receives them).
    func uplinkCounters(_ site: String) throws -> [String: (packets: Double, bytes: Double)] {
        var result: [String: (packets: Double, bytes: Double)] = [:]
        for isp in plan.isps {
            let text = try self.isp(isp.label).check(["ip", "-s", "-j", "link", "show", "s-\(site)"])
            guard let links = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]],
                  let stats = links.first?["stats64"] as? [String: Any], let rx = stats["rx"] as? [String: Any],
                  let packets = (rx["packets"] as? NSNumber)?.doubleValue, let bytes = (rx["bytes"] as? NSNumber)?.doubleValue
            else { throw AcceptanceFailure("no counters for s-\(site) in \(isp.label): \(text)") }
            result[isp.label] = (packets, bytes)
        }
        return result
    }

    /// Installs, in every ISP namespace, named nft counters of WireGuard data packets (message type 4) by
    /// outer IPv4 length, per sending site: `<class>_<site>`. The payload is encrypted, so the size is what
    /// tells an application's packets apart from probes (92 bytes), keepalives (60) and bandwidth trains
    /// (1292). A netdev ingress table on the ISP side of each uplink only counts; it never drops.
    func installClassCounters(_ classes: [(name: String, lengths: ClosedRange<Int>)]) throws {
        for isp in plan.isps {
            var text = "table netdev ptaccept {\n"
            for site in plan.sites {
                for kind in classes { text += "  counter \(kind.name)_\(site.name) {}\n" }
                text += "  chain from_\(site.name) {\n    type filter hook ingress device \"s-\(site.name)\" priority 0; policy accept;\n"
                for kind in classes {
                    text += "    ip protocol udp @th,64,32 0x04000000 ip length \(kind.lengths.lowerBound)-\(kind.lengths.upperBound) counter name \"\(kind.name)_\(site.name)\"\n"
                }
                text += "  }\n"
            }
            text += "}\n"
            let file = "\(controller.stateDirectory)/counters-\(isp.label).nft"
            guard FileManager.default.createFile(atPath: file, contents: Data(text.utf8)) else {
                throw AcceptanceFailure("cannot write \(file)")
            }
            try self.isp(isp.label).check(["nft", "-f", file])
        }
    }

    /// Packets per counter name, per ISP label.
    func classCounters() throws -> [String: [String: Double]] {
        var result: [String: [String: Double]] = [:]
        for isp in plan.isps {
            let text = try self.isp(isp.label).check(["nft", "-j", "list", "counters", "table", "netdev", "ptaccept"])
            let root = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
            for item in root?["nftables"] as? [[String: Any]] ?? [] {
                guard let counter = item["counter"] as? [String: Any], let name = counter["name"] as? String,
                      let packets = (counter["packets"] as? NSNumber)?.doubleValue else { continue }
                result[isp.label, default: [:]][name] = packets
            }
        }
        return result
    }
}

/// Differences between two counter snapshots.
func delta(_ after: [String: [String: Double]], _ before: [String: [String: Double]], isp: String, _ name: String) -> Double {
    (after[isp]?[name] ?? 0) - (before[isp]?[name] ?? 0)
}

func delta(_ after: [String: (packets: Double, bytes: Double)], _ before: [String: (packets: Double, bytes: Double)],
           isp: String) -> Double {
    (after[isp]?.bytes ?? 0) - (before[isp]?.bytes ?? 0)
}

/// What a paced stream's receiver saw (patronus-bench stream-recv's line).
struct StreamResult: CustomStringConvertible {
    var received: Int
    var sent: Int
    var maxGapMs: Double
    var pps: Int

    init?(_ line: String, pps: Int, seconds: Double) {
        let words = line.split(whereSeparator: { $0 == " " || $0.isNewline })
        guard words.count >= 8, let received = Int(words[1]), let gap = Double(words[7]) else { return nil }
        self.received = received
        sent = Int(Double(pps) * seconds)
        maxGapMs = gap
        self.pps = pps
    }

    /// The longest silence minus one send interval; if the stream never came back, from its last arrival to
    /// its end (a lower bound).
    var blackoutMs: Double {
        max(maxGapMs - 1000 / Double(pps), Double(sent - received) * 1000 / Double(pps) > maxGapMs
            ? Double(sent - received) * 1000 / Double(pps) : 0)
    }
    var lost: Int { sent - received }
    var description: String {
        "received \(received)/\(sent), longest gap \(String(format: "%.1f", maxGapMs)) ms, blackout \(String(format: "%.1f", blackoutMs)) ms"
    }
}

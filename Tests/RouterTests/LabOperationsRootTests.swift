import Foundation
import Glibc
import Lab
import Testing

/// A lab (2 sites x 2 uplinks, a private instance and state root) whose routers serve metrics on
/// 127.0.0.1:9477 inside their namespaces; always torn down.
final class MetricsLab {
    let controller: LabController
    let state: LabState
    let instance = "o" + String(UInt32.random(in: 0 ... .max), radix: 36)
    let stateRoot = "/tmp/ptlab-ops-\(getpid())-\(UInt32.random(in: 0 ... .max))"

    init(sites: Int = 2, uplinks: Int = 2, wan: LabPlan.WANMode = .bridged, unplugged: [UplinkID] = [],
         detecting: [String] = [], extraArguments: [String] = [], noCopies: [UplinkID] = []) throws {
        let controller = LabController(instance: instance, stateRoot: stateRoot, executable: Ops.binary!)
        self.controller = controller
        do {
            state = try controller.up(sites: sites, uplinks: uplinks, wan: wan, unplugged: unplugged, detecting: detecting,
                                      routers: true,
                                      extraRouterArguments: ["--metrics-listen", "127.0.0.1:9477"] + extraArguments,
                                      noCopies: noCopies)
        } catch {
            _ = try? controller.down()
            try? FileManager.default.removeItem(atPath: stateRoot)
            throw error
        }
    }

    deinit {
        _ = try? controller.down()
        try? FileManager.default.removeItem(atPath: stateRoot)
    }

    func router(_ site: String) -> NetworkNamespace { NetworkNamespace(existing: state.plan.routerNamespace(site)) }
    func host(_ site: String) -> NetworkNamespace { NetworkNamespace(existing: state.plan.hostNamespace(site)) }
    func isp(_ label: String) -> NetworkNamespace { NetworkNamespace(existing: state.plan.ispNamespace(label)) }
    func database(_ site: String) -> String { "\(controller.stateDirectory)/\(site).db" }
    func log(_ site: String) -> String { "\(controller.stateDirectory)/\(site).log" }

    func scrape(_ site: String) -> Exposition? {
        guard let result = try? router(site).run(["curl", "-s", "--max-time", "3", "http://127.0.0.1:9477/metrics"]),
              result.succeeded, !result.stdout.isEmpty else { return nil }
        return Exposition(result.stdout)
    }

    func upPaths(_ site: String) -> Int {
        ((Ops.status(database: database(site))?["path_counts"] as? [String: Any])?["up"] as? Int) ?? 0
    }
}

/// A path's name as the router shows it in metrics (`isp-a->east`), from a `status --json` path.
private func pathName(_ path: [String: Any]) -> String {
    let local = path["local_label"] as? String ?? "", remote = path["remote_label"] as? String ?? ""
    let site = path["dst_name"] as? String ?? ""
    return local == remote ? "\(local)->\(site)" : "\(local)/\(remote)->\(site)"
}

@Suite(.serialized, .enabled(if: Ops.canRun, "needs root, wireguard-go and the built patronus-router"))
struct LabOperationsRootTests {
    /// curl scrapes hq's `--metrics-listen` while LAN traffic flows: every path and status is the database's,
    /// every class/path packet and byte counter is the one `nft -j list table inet patronus` shows, the
    /// selected path per class is the one the site map points at, and path bytes are WireGuard's.
    @Test func scrapedMetricsMatchNftAndTheDatabaseRoot() throws {
        let lab = try MetricsLab()
        try #require(Ops.waitUntil(timeout: .seconds(40)) { lab.upPaths("hq") == 2 && lab.upPaths("east") == 2 },
                     "paths did not come up: \((try? String(contentsOfFile: lab.log("hq"), encoding: .utf8))?.suffix(2000) ?? "")")

        // `status --json` is what docs/STATUS-JSON.md documents: every key printed is documented, and a measured
        // path carries every documented path key.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let schema = try String(contentsOf: root.appendingPathComponent("docs/STATUS-JSON.md"), encoding: .utf8)
        // Metrics rows are written every 5 s: wait for the first, so measured paths carry their numbers.
        var measured: [String: Any]?
        Ops.waitUntil(timeout: .seconds(8)) {
            measured = Ops.status(database: lab.database("hq"))
            return (measured?["paths"] as? [[String: Any]])?.allSatisfy { $0["measured_at"] != nil } == true
        }
        let status = try #require(measured)
        #expect(status["schema_version"] as? Int == 1)
        var printed = Set(status.keys)
        let sites = (status["active_sites"] as? [[String: Any]] ?? []) + [status["local_site"] as? [String: Any] ?? [:]]
        for site in sites {
            printed.formUnion(site.keys)
            for endpoint in site["endpoints"] as? [[String: Any]] ?? [] { printed.formUnion(endpoint.keys) }
        }
        let statusPaths = status["paths"] as? [[String: Any]] ?? []
        for path in statusPaths { printed.formUnion(path.keys) }
        printed.formUnion((status["path_counts"] as? [String: Any] ?? [:]).keys)
        #expect(printed.filter { !schema.contains("`\($0)`") }.isEmpty,
                "undocumented keys: \(printed.filter { !schema.contains("`\($0)`") }.sorted())")
        for path in statusPaths where path["status"] as? String == "up" {
            let keys = ["id", "src_site", "dst_site", "src_name", "dst_name", "status", "wg_interface", "local_uplink",
                        "local_label", "remote_label", "remote_endpoint", "score", "latency_ms", "jitter_ms",
                        "packet_loss_pct", "measured_at"]
            #expect(keys.filter { path[$0] == nil }.isEmpty, "missing: \(keys.filter { path[$0] == nil })")
        }
        #expect(sites.count == 2 && (status["active_sites"] as? [Any])?.count == 1)

        // Traffic of two classes from hq's LAN host to east's: UDP 5060 is voip, UDP 9999 falls to default.
        let sender = try UDPSocket(in: lab.host("hq"))
        var sent = ["voip": 0, "default": 0]
        for i in 0..<600 {
            let (port, policy): (UInt16, String) = i % 3 == 0 ? (5060, "voip") : (9999, "default")
            if sender.send([UInt8](repeating: UInt8(i & 0xff), count: 100 + i % 200), to: "10.10.2.2", port: port) {
                sent[policy]! += 1
            }
            if i % 50 == 0 { usleep(10_000) }
        }

        // Chains are `<policy>_path<id>`, the id of `paths`: id -> "id|name", so that a metric series must
        // carry both the same id (path_id) and the same name (path) to match.
        let hq = lab.router("hq")
        let dbPaths = (Ops.status(database: lab.database("hq"))?["paths"] as? [[String: Any]]) ?? []
        func pathOfID(_ id: Int) -> String? {
            dbPaths.first(where: { $0["id"] as? Int == id }).map { "\(id)|\(pathName($0))" }
        }

        struct Reading: Equatable { var packets: Double; var bytes: Double }
        var nftCounters: [String: Reading] = [:]   // "policy|path"
        var nftSelected: Set<String> = []
        var metricCounters: [String: Reading] = [:]
        var metricSelected: Set<String> = []
        var exposition: Exposition?
        let matched = Ops.waitUntil(timeout: .seconds(15)) {
            guard let scraped = lab.scrape("hq") else { return false }
            exposition = scraped
            nftCounters = [:]
            nftSelected = []
            let objects = Ops.nftObjects((try? hq.check(["nft", "-j", "list", "table", "inet", "patronus"])) ?? "")
            for object in objects {
                if let rule = object["rule"] as? [String: Any], let chain = rule["chain"] as? String,
                   let range = chain.range(of: "_path"), let id = Int(chain[range.upperBound...]),
                   let counter = (rule["expr"] as? [[String: Any]])?.compactMap({ $0["counter"] as? [String: Any] }).first,
                   let path = pathOfID(id) {
                    nftCounters["\(chain[..<range.lowerBound])|\(path)"] = Reading(
                        packets: Double(counter["packets"] as? Int ?? -1), bytes: Double(counter["bytes"] as? Int ?? -1))
                }
                if let map = object["map"] as? [String: Any], (map["name"] as? String)?.hasPrefix("site_") == true {
                    for element in map["elem"] as? [[Any]] ?? [] {
                        guard let target = ((element.last as? [String: Any])?["goto"] as? [String: Any])?["target"] as? String,
                              let range = target.range(of: "_path"), let id = Int(target[range.upperBound...]),
                              let path = pathOfID(id) else { continue }
                        nftSelected.insert("\(target[..<range.lowerBound])|\(path)")
                    }
                }
            }
            metricCounters = [:]
            for (labels, packets) in scraped.all("patronus_class_packets_total") {
                let key = "\(labels["policy"] ?? "")|\(labels["path_id"] ?? "")|\(labels["path"] ?? "")"
                metricCounters[key] = Reading(packets: packets,
                                              bytes: scraped.value("patronus_class_bytes_total", labels) ?? -1)
            }
            metricSelected = Set(scraped.all("patronus_class_selected_path").filter { $0.1 == 1 }
                .map { "\($0.0["policy"] ?? "")|\($0.0["path_id"] ?? "")|\($0.0["path"] ?? "")" })
            let total = { (policy: String) in
                nftCounters.filter { $0.key.hasPrefix(policy + "|") }.map(\.value.packets).reduce(0, +)
            }
            return !nftCounters.isEmpty && nftCounters == metricCounters && nftSelected == metricSelected
                && total("voip") >= Double(sent["voip"]!) && total("default") >= Double(sent["default"]!)
        }
        #expect(matched, "nft \(nftCounters) \(nftSelected)\nmetrics \(metricCounters) \(metricSelected)")
        print("ops: nft class counters \(nftCounters.sorted { $0.key < $1.key }.map { "\($0.key)=\(Int($0.value.packets))p/\(Int($0.value.bytes))B" }), sent \(sent)")
        #expect(nftSelected.count == 3, "one selected path per policy (voip, bulk, default) to east: \(nftSelected)")

        // Paths and statuses: what the database says, every path, no other.
        let statusMatched = Ops.waitUntil(timeout: .seconds(12)) {
            guard let scraped = lab.scrape("hq") else { return false }
            exposition = scraped
            let rows = (Ops.status(database: lab.database("hq"))?["paths"] as? [[String: Any]]) ?? []
            let fromDatabase = Set(rows.map { "\($0["id"] ?? "") \(pathName($0)) \($0["dst_name"] ?? "") \($0["local_label"] ?? "") \($0["status"] ?? "")" })
            let fromMetrics = Set(scraped.all("patronus_path_status").filter { $0.1 == 1 }
                .map { "\($0.0["path_id"] ?? "") \($0.0["path"] ?? "") \($0.0["site"] ?? "") \($0.0["uplink"] ?? "") \($0.0["status"] ?? "")" })
            return !fromDatabase.isEmpty && fromDatabase == fromMetrics
        }
        #expect(statusMatched, "\(exposition?.all("patronus_path_status").filter { $0.1 == 1 } ?? [])")

        // Path bytes come from WireGuard's transfer counters: positive, never ahead of `wg show` read after.
        if let scraped = exposition, FileManager.default.isExecutableFile(atPath: "/usr/bin/wg") {
            for row in dbPaths {
                guard let device = row["wg_interface"] as? String else { continue }
                let labels = ["path_id": "\(row["id"] ?? "")", "path": pathName(row), "site": row["dst_name"] as? String ?? "",
                              "uplink": row["local_label"] as? String ?? ""]
                let tx = scraped.value("patronus_path_transmit_bytes_total", labels) ?? -1
                let rx = scraped.value("patronus_path_receive_bytes_total", labels) ?? -1
                let transfer = (try? Subprocess.check(["wg", "show", device, "transfer"])) ?? ""
                let fields = transfer.split(whereSeparator: \.isWhitespace)
                let wgRx = fields.count >= 3 ? Double(fields[1]) ?? 0 : 0
                let wgTx = fields.count >= 3 ? Double(fields[2]) ?? 0 : 0
                #expect(tx > 0 && tx <= wgTx, "\(labels): metrics tx \(tx), wg tx \(wgTx)")
                #expect(rx > 0 && rx <= wgRx, "\(labels): metrics rx \(rx), wg rx \(wgRx)")
            }
        }
        if let scraped = exposition {
            for name in ["patronus_path_latency_ms", "patronus_path_jitter_ms", "patronus_path_loss_percent",
                         "patronus_path_score"] {
                #expect(scraped.all(name).count == 2, "\(name) for both paths")
            }
            #expect(scraped.value("patronus_failovers_total") != nil)
        }
    }

    /// Garbage, oversized and wrongly authenticated datagrams at hq's discovery port (51821) and probe port
    /// (51822) for 4 s: the router keeps running and serving, counts every drop by reason, and its log grows
    /// by a few rate-limited lines, not one per datagram.
    @Test func hostileDatagramsAreCountedNotLoggedOneByOneRoot() throws {
        let lab = try MetricsLab(sites: 2, uplinks: 1)
        try #require(Ops.waitUntil(timeout: .seconds(40)) { lab.upPaths("hq") == 1 })
        let hqPid = lab.state.routers["hq"]!.pid
        let log = lab.log("hq")
        func logLines() -> [Substring] {
            // Log records start with their timestamp; the periodic status report (stdout) does not.
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.hasPrefix("20") }
        }

        let quietStart = logLines().count
        usleep(4_000_000)
        let quietGrowth = logLines().count - quietStart

        let attacker = try UDPSocket(in: lab.isp("isp-a"))
        let target = "100.64.1.1"
        var badMAC = Array("PTMA".utf8) + [1, 1, 0, 0] + [UInt8](repeating: 0x5a, count: 120)
        badMAC[6] = UInt8(badMAC.count >> 8)
        badMAC[7] = UInt8(badMAC.count & 0xff)
        let floodStart = logLines().count
        let start = ContinuousClock.now
        var sent = 0
        let garbages = (0..<64).map { _ in (0..<Int.random(in: 1...1400)).map { _ in UInt8.random(in: 0...255) } }
        while ContinuousClock.now - start < .seconds(4) {
            for _ in 0..<10 {
                let garbage = garbages[sent / 5 % garbages.count]
                attacker.send(garbage, to: target, port: 51821)
                attacker.send(badMAC, to: target, port: 51821)
                attacker.send([UInt8](repeating: 0xff, count: 1300), to: target, port: 51821)
                attacker.send(garbage, to: target, port: 51822)
                attacker.send(Array(garbage.prefix(20)), to: target, port: 51822)
                sent += 5
            }
            usleep(10_000)
        }
        usleep(1_000_000)
        let floodLines = logLines().dropFirst(floodStart)
        print("ops: \(sent) hostile datagrams in 4 s; log records: \(floodLines.count) during the flood, \(quietGrowth) in a quiet 4 s")
        #expect(kill(hqPid, 0) == 0 && !ProcessTermination.isZombieProcess(hqPid), "the router is still running")
        #expect(floodLines.count <= quietGrowth + 12, "log flood: \(floodLines.joined(separator: "\n"))")
        #expect(quietGrowth <= 10, "a steady router logs nothing in particular")

        // Every drop is counted by reason in the metrics (refreshed every 5 s).
        var discovery = 0.0, probe = 0.0
        let counted = Ops.waitUntil(timeout: .seconds(12)) {
            guard let scraped = lab.scrape("hq") else { return false }
            let drops = scraped.all("patronus_dropped_datagrams_total")
            discovery = drops.filter { $0.0["component"] == "discovery" }.map(\.1).reduce(0, +)
            probe = drops.filter { $0.0["component"] == "probe" }.map(\.1).reduce(0, +)
            // Some may be lost before reaching a socket (emulator, receive buffers); most must be counted.
            return discovery >= Double(sent) * 3 / 5 / 2 && probe >= Double(sent) * 2 / 5 / 2
        }
        print("ops: drops counted: discovery \(Int(discovery)), probe \(Int(probe)) of \(sent * 3 / 5) and \(sent * 2 / 5) sent")
        #expect(counted, "discovery \(discovery), probe \(probe) of \(sent) sent")
        let after = logLines().dropFirst(floodStart)
        #expect(Ops.waitUntil(timeout: .seconds(5)) { lab.upPaths("hq") == 1 },
                "the path is up again: \(Ops.status(database: lab.database("hq"))?["paths"] ?? "")\n\(after.joined(separator: "\n"))")
        print("ops: log records since the flood began:\n" + after.joined(separator: "\n"))
    }
}

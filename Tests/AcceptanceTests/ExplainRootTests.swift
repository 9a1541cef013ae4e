import Foundation
import Glibc
import Lab
import Testing

/// Issue 21's "why does this flow go there?": in a lab of real routers, for every class and every remote
/// site, the path `patronus-router explain` names is the path that carries the class's real packets: the
/// nft counter of the chain it names moves by the packets sent and the class's other path chains do not,
/// and the tunnel it names carries the bytes while the other tunnels do not. A load-balanced class is
/// checked flow by flow (sources whose jhash buckets fall on both paths). After a cut of the uplink VoIP
/// uses, the same holds for the new paths. Evidence comes from `nft -j` and `ip -j -s link`, not from the
/// router.
@Suite(.serialized) struct ExplainRootTests {
    static let datagrams = 300
    static let size = 1000

    @Test(.enabled(if: acceptanceCanRun), .timeLimit(.minutes(8)))
    func explainNamesThePathThatCarriesEachClassesPacketsBeforeAndAfterACutRoot() throws {
        let lab = try AcceptanceLab(sites: 3)
        defer { lab.down() }
        let added = try Subprocess.run([Binary.path, "policy", "add", "--database", lab.database("hq"), "--name", "spread",
                                        "--priority", "150", "--strategy", "load-balance", "--match", "udp:7000"])
        #expect(added.succeeded, "\(added.stderr)")
        try lab.waitForMesh()
        try lab.withoutDuplication() // the other tunnel would carry voip's copies
        // The first bandwidth trains cross every tunnel when its path comes up; wait until they are done so
        // that only the test's packets move tunnel bytes by hundreds of kilobytes.
        try lab.wait("every path of hq measured for bandwidth", timeout: 90) {
            let paths = try lab.status("hq")["paths"] as? [[String: Any]] ?? []
            return paths.count == 4 && paths.allSatisfy { $0["bandwidth_mbps"] is Double }
        }
        let hq = lab.host("hq")
        let sources = (20..<36).map { "10.10.1.\($0)" }
        for source in sources { _ = try hq.ip("addr", "add", "\(source)/24", "dev", "eth0") }
        let servers = try ["east", "west"].map { site in
            try lab.host(site).spawn(["socat", "-u", "TCP-LISTEN:873,reuseaddr,fork", "OPEN:/dev/null"])
        }
        defer { servers.forEach { $0.terminate() } }
        usleep(300_000)

        try checkEveryClass(lab, sources: sources, bothPathsUp: true)
        let common = ["--database", lab.database("hq"), "--netns", lab.plan.routerNamespace("hq")]
        let text = try Subprocess.run([Binary.path, "explain", lab.hostAddress("east"), "udp", "5060", "--from",
                                       lab.hostAddress("hq")] + common)
        print(text.stdout)
        let status = try Subprocess.run([Binary.path, "status"] + common)
        print(status.stdout)
        #expect(status.stdout.contains("0 disagreeing with the database"), "\(status.stdout)")
        let outside = try Subprocess.run([Binary.path, "explain", "203.0.113.5"] + common)
        #expect(outside.status == 1 && outside.stdout == "not steered: 203.0.113.5 is not in any site's prefixes\n",
                "\(outside.stdout)\(outside.stderr)")

        // A foreign ip rule in front of ours sends every path mark to the main table: the kernel no longer
        // steers into the tunnels, and status shows and counts it for every class and site; gone, all agree.
        let marks = try Set(steering(lab, common).flatMap { entry in
            (entry["paths"] as? [[String: Any]] ?? []).compactMap { $0["mark"] as? String }
        })
        #expect(marks.count == 4, "the 4 paths' marks (spread uses both paths of each site): \(marks)")
        for mark in marks { _ = try lab.router("hq").ip("rule", "add", "priority", "100", "fwmark", "\(mark)/0x0fff0000", "lookup", "main") }
        let hijacked = try steering(lab, common)
        for mark in marks { _ = try lab.router("hq").ip("rule", "del", "priority", "100", "fwmark", "\(mark)/0x0fff0000", "lookup", "main") }
        #expect(hijacked.count == 8 && hijacked.allSatisfy { ($0["disagreement"] as? String)?.contains("which is no path to") == true },
                "\(hijacked)")
        #expect(try steering(lab, common).allSatisfy { $0["disagreement"] == nil })

        // Cut the uplink VoIP to east uses; once explain names another path, every class is checked again.
        let before = try explain(lab, "east", proto: "udp", port: 5060)
        let cutInterface = try #require(before.interface)
        let cutLabel = try #require(before.localLabel)
        try lab.impair("hq", cutLabel, ImpairmentChange(cut: true))
        try lab.wait("explain to move voip to east off \(cutInterface)", timeout: 20) {
            try explain(lab, "east", proto: "udp", port: 5060).interface != cutInterface
        }
        usleep(1_500_000) // the database's next status row
        try checkEveryClass(lab, sources: sources, bothPathsUp: false)
        try lab.impair("hq", cutLabel, ImpairmentChange(cut: false))
    }

    /// For each remote site and class, sends the class's packets and checks they went where explain says.
    func checkEveryClass(_ lab: AcceptanceLab, sources: [String], bothPathsUp: Bool) throws {
        for site in ["east", "west"] {
            for (policy, proto, port) in [("voip", "udp", 5060), ("bulk", "tcp", 873), ("default", "udp", 9999)] {
                let answer = try explain(lab, site, proto: proto, port: port)
                #expect(answer.policy == policy, "\(proto) \(port) to \(site): class \(answer.policy ?? "-")")
                try expectCarried(lab, answer, "\(policy) to \(site)") {
                    try send(lab, to: site, proto: proto, port: port, from: lab.hostAddress("hq"))
                }
            }
            // The load-balanced class, flow by flow: each source's bucket names its path.
            var interfaces = Set<String>()
            for source in sources {
                let answer = try explain(lab, site, proto: "udp", port: 7000, from: source)
                #expect(answer.policy == "spread" && answer.bucket != nil, "udp 7000 from \(source): \(answer)")
                interfaces.insert(answer.interface ?? "?")
                try expectCarried(lab, answer, "spread from \(source) to \(site) (bucket \(answer.bucket ?? -1))", packets: 60) {
                    try send(lab, to: site, proto: "udp", port: 7000, from: source, count: 60)
                }
            }
            #expect(!bothPathsUp || interfaces.count == 2, "16 sources to \(site) all hashed onto \(interfaces): the hash went unchecked")
        }
    }

    /// `status --json`'s steering entries (read from hq's kernel); checks the count of disagreements agrees.
    func steering(_ lab: AcceptanceLab, _ common: [String]) throws -> [[String: Any]] {
        let result = try Subprocess.run([Binary.path, "status", "--json"] + common)
        guard result.succeeded, let json = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
              let entries = json["steering"] as? [[String: Any]]
        else { throw AcceptanceFailure("status --json: \(result.stdout) \(result.stderr)") }
        #expect(json["steering_disagreements"] as? Int == entries.count { $0["disagreement"] != nil })
        return entries
    }

    struct Answer: CustomStringConvertible {
        var policy: String?
        var pathChain: String?
        var interface: String?
        var localLabel: String?
        var pathID: Int?
        var bucket: Int?
        var description: String {
            "\(policy ?? "-") \(pathChain ?? "-") dev \(interface ?? "-") path \(pathID ?? -1) bucket \(bucket ?? -1)"
        }
    }

    func explain(_ lab: AcceptanceLab, _ site: String, proto: String, port: Int, from source: String? = nil) throws -> Answer {
        let result = try Subprocess.run([Binary.path, "explain", lab.hostAddress(site), proto, "\(port)",
                                         "--from", source ?? lab.hostAddress("hq"), "--database", lab.database("hq"),
                                         "--netns", lab.plan.routerNamespace("hq"), "--json"])
        guard result.succeeded, let json = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        else { throw AcceptanceFailure("explain to \(site) \(proto) \(port): \(result.stdout) \(result.stderr)") }
        let kernel = json["kernel"] as? [String: Any] ?? [:]
        let path = json["path"] as? [String: Any] ?? [:]
        // Every lab site has an index in the ct mark: the flow's later packets go by `flows`, to the same chain.
        #expect(kernel["flow_key"] is String && kernel["established_chain"] as? String == kernel["path_chain"] as? String,
                "explain to \(site) \(proto) \(port): later packets by \(kernel["established_chain"] ?? "none"), first by \(kernel["path_chain"] ?? "none")")
        return Answer(policy: json["policy"] as? String, pathChain: kernel["path_chain"] as? String,
                      interface: kernel["interface"] as? String, localLabel: path["local_label"] as? String,
                      pathID: path["id"] as? Int, bucket: kernel["bucket"] as? Int)
    }

    /// Runs `send` and checks: the named chain counted the bytes sent (packets of `size` bytes, or TCP segments
    /// carrying as many), the class's other path chains and the other tunnels not a tenth of them, and the
    /// named tunnel sent them.
    func expectCarried(_ lab: AcceptanceLab, _ answer: Answer, _ what: String, packets: Int = datagrams,
                       _ send: () throws -> Void) throws {
        let chain = try #require(answer.pathChain, "\(what): explain named no chain")
        let interface = try #require(answer.interface, "\(what): explain named no interface")
        let policy = try #require(answer.policy)
        let chainsBefore = try chainCounters(lab), tunnelsBefore = try tunnelBytes(lab)
        try send()
        usleep(300_000)
        let chainsAfter = try chainCounters(lab), tunnelsAfter = try tunnelBytes(lab)
        let bytes = Double(packets * Self.size)
        let moved = (chainsAfter[chain] ?? 0) - (chainsBefore[chain] ?? 0)
        #expect(moved >= bytes * 0.9, "\(what): \(chain) counted \(Int(moved)) of \(Int(bytes)) bytes")
        for (other, count) in chainsAfter where other != chain && other.hasPrefix(policy + "_path") {
            let delta = count - (chainsBefore[other] ?? 0)
            #expect(delta < bytes * 0.1, "\(what): \(other) counted \(Int(delta)) bytes too (explain said \(chain))")
        }
        let sent = (tunnelsAfter[interface] ?? 0) - (tunnelsBefore[interface] ?? 0)
        #expect(sent >= bytes * 0.8, "\(what): \(interface) sent \(Int(sent)) bytes of \(Int(bytes))")
        for (other, value) in tunnelsAfter where other != interface {
            let delta = value - (tunnelsBefore[other] ?? 0)
            #expect(delta < bytes * 0.1, "\(what): \(other) sent \(Int(delta)) bytes too (explain said \(interface))")
        }
    }

    /// `count` datagrams (or a TCP stream) of `size` bytes from hq's LAN host. Datagrams are paced, ten per
    /// 10 ms (8 Mbit/s) from one source port: the uplink shaper (shape=auto) keeps the realtime band's queue
    /// at 10 ms, so an unpaced burst of 300 kB marked VoIP is rightly dropped in part (CI saw 107 drops).
    func send(_ lab: AcceptanceLab, to site: String, proto: String, port: Int, from source: String,
              count: Int = datagrams) throws {
        let script: String
        if proto == "tcp" {
            let target = "TCP:\(lab.hostAddress(site)):\(port),bind=\(source),connect-timeout=3"
            script = "head -c \(count * Self.size) /dev/zero | socat -u -b \(Self.size) - \(target)"
        } else {
            let target = "UDP-SENDTO:\(lab.hostAddress(site)):\(port),bind=\(source):40999,reuseaddr"
            let chunks = (count + 9) / 10
            script = "for i in $(seq \(chunks)); do head -c \(10 * Self.size) /dev/zero | socat -u -b \(Self.size) - \(target); sleep 0.01; done"
        }
        let result = try lab.host("hq").run(["timeout", "20", "sh", "-c", script])
        #expect(result.succeeded, "\(script): \(result.stderr)")
    }

    /// Bytes counted per chain of hq's steering table (`nft -j`).
    func chainCounters(_ lab: AcceptanceLab) throws -> [String: Double] {
        let text = try lab.router("hq").check(["nft", "-j", "list", "table", "inet", "patronus"])
        let root = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        var out: [String: Double] = [:]
        for item in root?["nftables"] as? [[String: Any]] ?? [] {
            guard let rule = item["rule"] as? [String: Any], let chain = rule["chain"] as? String else { continue }
            for expression in rule["expr"] as? [[String: Any]] ?? [] {
                if let counter = expression["counter"] as? [String: Any], let bytes = (counter["bytes"] as? NSNumber)?.doubleValue {
                    out[chain, default: 0] += bytes
                }
            }
        }
        return out
    }

    /// Bytes sent by each of hq's tunnels (the interfaces of its paths).
    func tunnelBytes(_ lab: AcceptanceLab) throws -> [String: Double] {
        let tunnels = Set((try lab.status("hq")["paths"] as? [[String: Any]] ?? []).compactMap { $0["wg_interface"] as? String })
        let text = try lab.router("hq").check(["ip", "-s", "-j", "link", "show"])
        let links = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]] ?? []
        var out: [String: Double] = [:]
        for link in links {
            guard let name = link["ifname"] as? String, tunnels.contains(name),
                  let stats = link["stats64"] as? [String: Any], let tx = stats["tx"] as? [String: Any],
                  let bytes = (tx["bytes"] as? NSNumber)?.doubleValue else { continue }
            out[name] = bytes
        }
        return out
    }
}

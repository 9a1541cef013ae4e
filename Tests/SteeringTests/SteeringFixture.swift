import Foundation
import Glibc
import Lab
import Model
import Netlink
@testable import Steering

let isRoot = getuid() == 0

/// A router namespace with two paths (veth pairs to two peer namespaces) and a LAN client:
///
///   client(lan0 10.1.0.2) -- (lan 10.1.0.1) router (pa 192.0.2.1)    -- (pa-peer 192.0.2.2) peer1
///                                                  (pb 198.51.100.1) -- (pb-peer 198.51.100.2) peer2
///
/// The remote site "branch" has 10.20.0.0/16 behind both paths. The peers count what arrives with nft
/// named counters (voip = udp 5060, bulk = tcp 873, other = udp 9999; voipreply/otherreply = replies from
/// those udp ports), so a test can tell which path a
/// packet took. Everything lives in namespaces that are deleted when the fixture goes away.
/// Loads an nft script inside `ns` (tests only: the router itself never runs nft).
func loadNftScript(_ ns: NetworkNamespace, _ text: String) throws {
    let path = "/tmp/\(ns.name).nft"
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    defer { unlink(path) }
    try ns.check(["nft", "-f", path])
}

final class SteeringFixture {
    let router: NetworkNamespace
    let peer1: NetworkNamespace
    let peer2: NetworkNamespace
    let client: NetworkNamespace
    let site = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000b1")!)

    init() throws {
        router = try NetworkNamespace.create(label: "str")
        peer1 = try NetworkNamespace.create(label: "stp1")
        peer2 = try NetworkNamespace.create(label: "stp2")
        client = try NetworkNamespace.create(label: "stc")
        try router.addVeth("pa", peer: "pa-peer", in: peer1)
        try router.addVeth("pb", peer: "pb-peer", in: peer2)
        try router.addVeth("lan", peer: "lan0", in: client)
        try router.addAddress("192.0.2.1/24", to: "pa")
        try peer1.addAddress("192.0.2.2/24", to: "pa-peer")
        try router.addAddress("198.51.100.1/24", to: "pb")
        try peer2.addAddress("198.51.100.2/24", to: "pb-peer")
        try router.addAddress("10.1.0.1/24", to: "lan")
        try client.addAddress("10.1.0.2/24", to: "lan0")
        try client.addRoute("default", via: "10.1.0.1")
        try router.setSysctl("net.ipv4.ip_forward", "1")
        // Locally generated packets need a first route before the output hook can re-route them.
        try router.addRoute("10.20.0.0/16", via: "192.0.2.2")
        for peer in [peer1, peer2] {
            try nftScript(peer, """
                table inet count {
                  counter voip {}
                  counter bulk {}
                  counter other {}
                  counter voipreply {}
                  counter otherreply {}
                  chain in {
                    type filter hook prerouting priority 0; policy accept;
                    udp dport 5060 counter name voip
                    tcp dport 873 counter name bulk
                    udp dport 9999 counter name other
                    udp sport 5060 counter name voipreply
                    udp sport 9999 counter name otherreply
                  }
                }
                """)
        }
    }

    deinit {
        for ns in [router, peer1, peer2, client] { ns.delete() }
    }

    /// Three classes (voip, bulk, default) over two paths.
    func plan(voip: UInt16 = 1, bulk: UInt16 = 2, other: UInt16 = 1, otherTarget: SteeringPlan.Target? = nil) -> SteeringPlan {
        SteeringPlan(
            classes: [
                .init(id: 1, name: "voip", matches: [TrafficMatch(services: [ServiceMatch(.udp, [PortRange(5060, 5061), PortRange(16384, 32767)]),
                                                                           ServiceMatch(.tcp, [PortRange(5060, 5061)])])]),
                .init(id: 2, name: "bulk", matches: [TrafficMatch(services: [ServiceMatch(.tcp, [PortRange(20, 21), PortRange(873)])])]),
                .init(id: 3, name: "default", matches: [TrafficMatch()]),
            ],
            paths: [
                .init(slot: 1, interface: "pa", site: site, gateway: IPv4Address("192.0.2.2")),
                .init(slot: 2, interface: "pb", site: site, gateway: IPv4Address("198.51.100.2")),
            ],
            destinations: [.init(site: site, name: "branch", prefixes: [IPv4Prefix("10.20.0.0/16")!], index: 7)],
            choices: [
                .init(site: site, classID: 1, target: .path(voip)),
                .init(site: site, classID: 2, target: .path(bulk)),
                .init(site: site, classID: 3, target: otherTarget ?? .path(other)),
            ])
    }

    func nftScript(_ ns: NetworkNamespace, _ text: String) throws { try loadNftScript(ns, text) }

    func steering() throws -> Steering { try Steering(netns: router.name) }

    /// Value of named counter `name` in `peer` (packets), once it has stopped changing (packets still in
    /// flight on a loaded machine must not make a test flaky).
    func count(_ peer: NetworkNamespace, _ name: String) throws -> Int {
        var last = try readCount(peer, name)
        for _ in 0..<40 {
            usleep(50_000)
            let now = try readCount(peer, name)
            if now == last { return now }
            last = now
        }
        return last
    }

    private func readCount(_ peer: NetworkNamespace, _ name: String) throws -> Int {
        let out = try peer.check(["nft", "-j", "list", "counter", "inet", "count", name])
        let json = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
        let items = json?["nftables"] as? [[String: Any]] ?? []
        for item in items { if let c = item["counter"] as? [String: Any], let p = c["packets"] as? Int { return p } }
        return -1
    }

    /// Sends `count` UDP datagrams from `ns` to 10.20.0.5:port (or `destination`; from one socket: one flow).
    func sendUDP(from ns: NetworkNamespace, port: UInt16, count: Int = 5, mark: UInt32? = nil, source: String = "0.0.0.0",
                 to destination: String = "10.20.0.5") throws {
        let socket = try UDPSocket(in: ns, bindTo: source)
        if var mark {
            _ = setsockopt(socket.fd, SOL_SOCKET, SO_MARK, &mark, socklen_t(4))
        }
        for _ in 0..<count { _ = socket.send(Array(repeating: 0x55, count: 64), to: destination, port: port) }
        usleep(20_000)
    }

    /// Starts a TCP connection from `ns` to 10.20.0.5:port (its SYNs are what the peers count).
    func sendTCPSyn(from ns: NetworkNamespace, port: UInt16) throws {
        let fd = try ns.socket(domain: AF_INET, type: Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue))
        defer { close(fd) }
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = port.bigEndian
        sa.sin_addr.s_addr = IPv4Address("10.20.0.5")!.value.bigEndian
        _ = withUnsafePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        usleep(30_000)
    }
}

/// What `nft -j` / `ip -j` show, reduced to what the tests compare.
struct KernelView {
    var tables: [String] = []            // "family name"
    var chains: [String] = []            // chains of inet patronus
    var rulesPerChain: [String: Int] = [:]
    var sets: [String] = []              // sets and maps of inet patronus
    var mapElements: [String: [String]] = [:] // map -> "key:target"
    var ipRules: [[String: Any]] = []
    var routes: [Int: [[String: Any]]] = [:]

    static func read(_ ns: NetworkNamespace, tables routeTables: [Int]) throws -> KernelView {
        var v = KernelView()
        let json = try JSONSerialization.jsonObject(with: Data(try ns.check(["nft", "-j", "list", "ruleset"]).utf8)) as? [String: Any]
        for item in json?["nftables"] as? [[String: Any]] ?? [] {
            if let t = item["table"] as? [String: Any] { v.tables.append("\(t["family"]!) \(t["name"]!)") }
            let inOurs = { (o: [String: Any]) in o["table"] as? String == "patronus" && o["family"] as? String == "inet" }
            if let c = item["chain"] as? [String: Any], inOurs(c) { v.chains.append(c["name"] as! String) }
            if let r = item["rule"] as? [String: Any], inOurs(r) { v.rulesPerChain[r["chain"] as! String, default: 0] += 1 }
            for kind in ["set", "map"] {
                guard let s = item[kind] as? [String: Any], inOurs(s) else { continue }
                v.sets.append(s["name"] as! String)
                if kind == "map" {
                    v.mapElements[s["name"] as! String] = (s["elem"] as? [[Any]] ?? []).map { pair in
                        let target = ((pair[1] as? [String: Any])?["goto"] as? [String: Any])?["target"] ?? "?"
                        return "\(pair[0]):\(target)"
                    }
                }
            }
        }
        v.ipRules = try JSONSerialization.jsonObject(with: Data(try ns.check(["ip", "-j", "rule"]).utf8)) as? [[String: Any]] ?? []
        for t in routeTables {
            // A table that never held a route does not exist: iproute2 then fails ("Dump terminated").
            let result = try ns.run(["ip", "-j", "route", "show", "table", String(t)])
            let out = result.succeeded ? result.stdout : "[]"
            v.routes[t] = try JSONSerialization.jsonObject(with: Data((out.isEmpty ? "[]" : out).utf8)) as? [[String: Any]] ?? []
        }
        return v
    }

    /// Our rules (protocol 77) as "priority fwmark/mask table".
    /// Our path rules (`lookup`), as "priority fwmark/fwmask table".
    var ourRules: [String] {
        ipRules.filter { "\($0["protocol"] ?? "")" == "77" && $0["table"] != nil }
            .map { "\($0["priority"]!) \($0["fwmark"] ?? "")/\($0["fwmask"] ?? "") \($0["table"]!)" }.sorted()
    }

    /// Our other rules: the unsteered and group jumps ("priority fwmark/fwmask goto N") and the band's end ("6299 nop").
    var ourJumps: [String] {
        ipRules.filter { "\($0["protocol"] ?? "")" == "77" && $0["table"] == nil }.map { rule in
            let mark = rule["fwmark"].map { "\($0)/\(rule["fwmask"] ?? "") " } ?? ""
            return "\(rule["priority"]!) " + mark + (rule["goto"].map { "goto \($0)" } ?? "nop")
        }.sorted()
    }
}

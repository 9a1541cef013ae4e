// patronus-bench: measurements of the Steering layer, run inside a network namespace by bench/*.sh.
//   patronus-bench resteer [ITERATIONS]   one class moved between two paths, acked, ITERATIONS times,
//                                         then the nft CLI doing the same update; prints median/p99 in us
//   patronus-bench churn                  applies two different plans alternately forever (crash tests)
//   patronus-bench apply POLICIES ENTRIES [balanced|features|copies|relay]
//                                         applies a plan with POLICIES classes holding ENTRIES match
//                                         entries in total, then exits (datapath bench); balanced: the
//                                         default class is load balanced over paths 1 and 2 (16 buckets, 8 each);
//                                         features: voip duplicated and both paths shaped, as shipped;
//                                         copies: voip duplicated, nothing shaped
//                                         relay: the plan of a relay (no transit rule in the site chains)
//   patronus-bench stream-send HOST PORT PPS SECONDS [rtp SSRC] / stream-recv PORT SECONDS [rtp]
//                                         a sequenced UDP stream and the longest silence (bench/failover)
// Interfaces pbench1 and pbench2 (and pbench3 for churn) must exist in the namespace.
import Foundation
import Glibc
import Lab
import Model
import Netlink
import Steering

let site = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000b1")!)
let remote = IPv4Prefix("10.20.0.0/16")!

/// `features`: the shipped voip policy's duplication (voip copied from its path to the other) and shaping at
/// 10 Gbit/s on both paths (above anything the bench offers, so htb costs its work but never limits), with
/// the shipped policies' bands: what a site with two paths installs as shipped.
func plan(voip: UInt16, policies: Int = 3, entries: Int = 0, thirdPath: Bool = false, balanced: Bool = false,
          features: Bool = false, copies: Bool = false) -> SteeringPlan {
    var classes: [SteeringPlan.TrafficClass] = [
        .init(id: 1, name: "voip", matches: [TrafficMatch(services: [ServiceMatch(.udp, [PortRange(5060, 5061), PortRange(16384, 32767)]),
                                                                   ServiceMatch(.tcp, [PortRange(5060, 5061)])])],
              band: features ? .realtime : .standard, duplicate: features || copies),
        .init(id: 2, name: "bulk", matches: [TrafficMatch(services: [ServiceMatch(.tcp, [PortRange(20, 21), PortRange(873)])])],
              band: features ? .bulk : .standard),
    ]
    // Extra policies: each with a share of `entries` destination-port entries (udp 40000 + k), so the
    // classification sets hold `entries` elements in total.
    let extra = max(0, policies - 3)
    for i in 0..<extra {
        let share = extra == 0 ? 0 : entries / extra + (i < entries % extra ? 1 : 0)
        let base = 1024 + i * max(1, entries / max(1, extra) + 1)
        let ports = (0..<share).map { PortRange(UInt16(base + $0)) }
        classes.append(.init(id: UInt8(3 + i), name: "p\(i)", matches: [TrafficMatch(services: [ServiceMatch(.tcp, ports)])]))
    }
    classes.append(.init(id: UInt8(3 + extra), name: "default", matches: [TrafficMatch()]))
    var paths: [SteeringPlan.SteeringPath] = [.init(slot: 1, interface: "pbench1", site: site), .init(slot: 2, interface: "pbench2", site: site)]
    if thirdPath { paths.append(.init(slot: 3, interface: "pbench3", site: site)) }
    // Balanced: the buckets the routing engine gives two paths of equal score (its bucketCount is 64).
    let balancedTarget = SteeringPlan.Target.buckets(Array(repeating: 1, count: Int(Conventions.balanceBuckets / 2))
                                                          + Array(repeating: 2, count: Int(Conventions.balanceBuckets / 2)))
    let choices = classes.map { c in
        SteeringPlan.Choice(site: site, classID: c.id, target: c.name == "voip" ? .path(voip)
                            : c.name == "default" && balanced ? balancedTarget : .path(thirdPath ? 3 : 1))
    }
    return SteeringPlan(classes: classes, paths: paths,
                        destinations: [.init(site: site, name: "branch", prefixes: thirdPath ? [remote, IPv4Prefix("10.21.0.0/16")!] : [remote],
                                             index: UInt8(Conventions.preferredSiteIndex(site)))],
                        choices: choices,
                        shapers: features ? paths.map { .init(interface: $0.interface, rateBitsPerSecond: 10_000_000_000) } : [],
                        copies: features || copies ? [.init(site: site, classID: 1, from: voip, to: voip == 1 ? 2 : 1)] : [])
}

func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func summary(_ ns: [UInt64]) -> (median: Double, p99: Double) {
    let s = ns.sorted()
    return (Double(s[s.count / 2]) / 1000, Double(s[min(s.count - 1, Int(Double(s.count) * 0.99))]) / 1000)
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data((message + "\n").utf8))
    exit(1)
}

let args = CommandLine.arguments
switch args.count > 1 ? args[1] : "" {
case "stream-send":
    // stream-send HOST PORT PPS SECONDS
    guard args.count == 6 || (args.count == 8 && args[6] == "rtp" && UInt32(args[7]) != nil), let port = UInt16(args[3]),
          let pps = Int(args[4]), pps > 0, let seconds = Double(args[5]) else {
        fail("usage: patronus-bench stream-send HOST PORT PPS SECONDS [rtp SSRC]")
    }
    let ssrc = args.count == 8 ? UInt32(args[7]) : nil
    do { try Stream.send(host: args[2], port: port, pps: pps, seconds: seconds, rtpSSRC: ssrc) } catch { fail("stream-send: \(error)") }

case "stream-recv":
    // stream-recv PORT SECONDS
    guard args.count == 4 || (args.count == 5 && args[4] == "rtp"), let port = UInt16(args[2]), let seconds = Double(args[3]) else {
        fail("usage: patronus-bench stream-recv PORT SECONDS [rtp]")
    }
    do { try Stream.receive(port: port, seconds: seconds, rtp: args.count == 5) } catch { fail("stream-recv: \(error)") }

case "resteer":
    let n = args.count > 2 ? Int(args[2]) ?? 1000 : 1000
    do {
        let steering = try Steering(netns: nil)
        try steering.removeAll()
        try steering.apply(plan(voip: 1))
        var ours: [UInt64] = []
        for i in 0..<n {
            let t0 = now()
            let changes = try steering.apply(plan(voip: i % 2 == 0 ? 2 : 1))
            ours.append(now() - t0)
            // One element replaced in the site map and its twin in `flows`: a delete and an add for each.
            guard changes.elementsOnly, changes.batchMessages == 4 else { fail("re-steer was not an element change: \(changes)") }
        }
        // Reading counters: one rule dump of the whole table, decoded by libnftnl.
        var dumps: [UInt64] = []
        var rules = 0
        for _ in 0..<100 {
            let t0 = now()
            rules = try steering.nftables.rules(family: .inet, table: "patronus").count
            _ = try steering.counters()
            dumps.append((now() - t0) / 2)
        }
        // The same four messages sent directly (no compile, no diff): the kernel + syscall floor.
        let nft = try NFTablesClient(netns: nil)
        let voipClass = Conventions.classMark(id: 1)   // plan(voip:)'s class 1
        let flowKey = Conventions.siteMark(index: UInt8(Conventions.preferredSiteIndex(site))) | voipClass
        var raw: [UInt64] = []
        for i in 0..<n {
            let to = i % 2 == 0 ? "voip_path2" : "voip_path1" // after the loop above voip is on path 1 (n even)
            let t0 = now()
            try nft.commit([
                NetlinkRequest(NFTables.elements([NFTElement(key: voipClass.hostBytes)], family: .inet, table: "patronus", set: "site_branch", delete: true), "delete"),
                NetlinkRequest(NFTables.elements([NFTElement(key: flowKey.hostBytes)], family: .inet, table: "patronus", set: "flows", delete: true), "delete"),
                NetlinkRequest(NFTables.elements([NFTElement(key: voipClass.hostBytes, data: .verdict(.goto(to)))], family: .inet, table: "patronus", set: "site_branch"), "add"),
                NetlinkRequest(NFTables.elements([NFTElement(key: flowKey.hostBytes, data: .verdict(.goto(to)))], family: .inet, table: "patronus", set: "flows"), "add"),
            ])
            raw.append(now() - t0)
        }
        // The nft CLI doing the same update (one atomic `nft -f` with delete + add), same namespace.
        let dir = "/tmp/patronus-bench-\(getpid())"
        mkdir(dir, 0o700)
        defer { _ = try? FileManager.default.removeItem(atPath: dir) }
        let classText = String(format: "0x%08x", voipClass), flowText = String(format: "0x%08x", flowKey)
        for (name, to) in [("to2", "voip_path2"), ("to1", "voip_path1")] {
            try """
                delete element inet patronus site_branch { \(classText) }
                delete element inet patronus flows { \(flowText) }
                add element inet patronus site_branch { \(classText) : goto \(to) }
                add element inet patronus flows { \(flowText) : goto \(to) }

                """.write(toFile: "\(dir)/\(name).nft", atomically: true, encoding: .utf8)
        }
        var cli: [UInt64] = []
        let cliRuns = args.count > 3 ? Int(args[3]) ?? n : n
        for i in 0..<cliRuns {
            let t0 = now()
            let r = try Subprocess.run(["nft", "-f", "\(dir)/\(i % 2 == 0 ? "to2" : "to1").nft"])
            cli.append(now() - t0)
            guard r.succeeded else { fail("nft failed: \(r.stderr)") }
        }
        // Whatever nft left, Steering converges back from a fresh read of the kernel.
        try steering.reconcile()
        try steering.apply(plan(voip: 1))
        try steering.removeAll()
        let a = summary(ours), b = summary(cli), c = summary(raw)
        print(String(format: "re-steer (one class moved: its site map and flows elements, one batch, acked): n=%d median %.1f us  p99 %.1f us", n, a.median, a.p99))
        print(String(format: "  of which libnftnl build + kernel + syscalls (same 4 messages, no compile or diff): median %.1f us  p99 %.1f us", c.median, c.p99))
        let d = summary(dumps)
        print(String(format: "  rule dump of the table (%d rules, libnftnl decode, as counters() reads it): median %.1f us  p99 %.1f us", rules, d.median, d.p99))
        print(String(format: "nft -f (same deletes + adds):               n=%d median %.1f us  p99 %.1f us", cliRuns, b.median, b.p99))
        print(String(format: "ratio (nft median / ours median): %.0fx", b.median / a.median))
        print("targets: median <= 50 us: \(a.median <= 50 ? "met" : "MISSED"); >= 100x: \(b.median / a.median >= 100 ? "met" : "MISSED")")
    } catch { fail("resteer: \(error)") }

case "churn":
    do {
        let steering = try Steering(netns: nil)
        var i = 0
        while true {
            try steering.apply(i % 2 == 0 ? plan(voip: 1) : plan(voip: 2, policies: 5, entries: 50, thirdPath: true))
            i += 1
            if i == 1 { FileHandle.standardOutput.write(Data("applied\n".utf8)) }
        }
    } catch { fail("churn: \(error)") }

case "apply":
    let policies = args.count > 2 ? Int(args[2]) ?? 10 : 10
    let entries = args.count > 3 ? Int(args[3]) ?? 0 : 0
    let balanced = args.count > 4 && args[4] == "balanced"
    let features = args.count > 4 && args[4] == "features"
    let copies = args.count > 4 && args[4] == "copies"
    do {
        let steering = try Steering(netns: nil)
        var planned = plan(voip: 1, policies: policies, entries: entries, balanced: balanced, features: features, copies: copies)
        planned.relay = args.count > 4 && args[4] == "relay"
        let changes = try steering.apply(planned)
        print("applied \(policies) policies, \(entries) entries: \(changes.batchMessages) messages")
    } catch { fail("apply: \(error)") }

case "rawhash":
    // Floor of an element replace in a hash map (type mark : verdict), for comparison with the interval map.
    // Over the libmnl socket NFTablesClient uses, and over our plain NetlinkSocket, alternately.
    do {
        let mnl = try NFTablesClient(netns: nil)
        let plain = NFTablesClient(connection: NetlinkConnection(transport: try NetlinkSocket(.netfilter), firstSequence: 1 << 30))
        let n = args.count > 2 ? Int(args[2]) ?? 1000 : 1000
        try mnl.commit([
            NetlinkRequest(NFTables.newTable(NFTTable(family: .inet, name: "hb")), "t"),
            NetlinkRequest(NFTables.newChain(NFTChain(family: .inet, table: "hb", name: "a")), "a"),
            NetlinkRequest(NFTables.newChain(NFTChain(family: .inet, table: "hb", name: "b")), "b"),
            NetlinkRequest(NFTables.newSet(NFTSet(family: .inet, table: "hb", name: "m", flags: NFTSet.flagMap, keyType: .mark, keyLength: 4,
                                                  dataType: NFTSet.verdictDataType, dataLength: 0, id: 1)), "m"),
            NetlinkRequest(NFTables.elements([NFTElement(key: [0, 0, 1, 0], data: .verdict(.goto("a")))], family: .inet, table: "hb", set: "m"), "e"),
        ])
        var times: [[UInt64]] = [[], []]
        for i in 0..<(2 * n) {
            let requests = [
                NetlinkRequest(NFTables.elements([NFTElement(key: [0, 0, 1, 0])], family: .inet, table: "hb", set: "m", delete: true), "delete"),
                NetlinkRequest(NFTables.elements([NFTElement(key: [0, 0, 1, 0], data: .verdict(.goto(i % 4 < 2 ? "b" : "a")))], family: .inet, table: "hb", set: "m"), "add"),
            ]
            let t0 = now()
            try (i % 2 == 0 ? mnl : plain).commit(requests)
            times[i % 2].append(now() - t0)
        }
        try mnl.commit([NetlinkRequest(NFTables.deleteTable(family: .inet, name: "hb"), "delete table hb")])
        let m = summary(times[0]), p = summary(times[1])
        print(String(format: "hash map element replace, libmnl socket:    median %.1f us p99 %.1f us", m.median, m.p99))
        print(String(format: "hash map element replace, plain NetlinkSocket: median %.1f us p99 %.1f us", p.median, p.p99))
    } catch { fail("rawhash: \(error)") }

default:
    fail("usage: patronus-bench resteer [N [CLI_N]] | churn | apply POLICIES ENTRIES [balanced|features|copies|relay]")
}

import Foundation
import Glibc
import Lab
import Model
import Netlink
import Testing
@testable import Steering

/// Two routers joined by two links (two paths), each with a LAN host, both running our Steering with a
/// duplicated `voip` class:
///
///   sender(10.1.0.2) -- routerA (pa 192.0.2.1)    -- isp1 link -- (pa 192.0.2.2) routerB -- receiver(10.20.0.2)
///                               (pb 198.51.100.1) -- isp2 link -- (pb 198.51.100.2)
///
/// The "ISP side" is routerB's end of each link: an nft table there (not ours) counts what arrives per
/// link, before our de-duplication. The receiver counts RTP sequence numbers itself, outside the routers.
final class DuplicationFixture {
    let a: NetworkNamespace
    let b: NetworkNamespace
    let sender: NetworkNamespace
    let receiver: NetworkNamespace
    let siteA = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000a1")!)
    let siteB = SiteID(UUID(uuidString: "00000000-0000-0000-0000-0000000000b1")!)

    init() throws {
        a = try NetworkNamespace.create(label: "dpa")
        b = try NetworkNamespace.create(label: "dpb")
        sender = try NetworkNamespace.create(label: "dps")
        receiver = try NetworkNamespace.create(label: "dpr")
        try a.addVeth("pa", peer: "pa", in: b)
        try a.addVeth("pb", peer: "pb", in: b)
        try a.addVeth("lan", peer: "lan0", in: sender)
        try b.addVeth("lan", peer: "lan0", in: receiver)
        try a.addAddress("192.0.2.1/24", to: "pa")
        try b.addAddress("192.0.2.2/24", to: "pa")
        try a.addAddress("198.51.100.1/24", to: "pb")
        try b.addAddress("198.51.100.2/24", to: "pb")
        try a.addAddress("10.1.0.1/24", to: "lan")
        try sender.addAddress("10.1.0.2/24", to: "lan0")
        try b.addAddress("10.20.0.1/24", to: "lan")
        try receiver.addAddress("10.20.0.2/24", to: "lan0")
        try sender.addRoute("default", via: "10.1.0.1")
        try receiver.addRoute("default", via: "10.20.0.1")
        for ns in [a, b] {
            try ns.setSysctl("net.ipv4.ip_forward", "1")
            for dev in ["all", "default", "pa", "pb"] { try ns.setSysctl("net.ipv4.conf.\(dev).rp_filter", "0") }
        }
        try loadNftScript(b, """
            table inet isp {
              counter isp1 {}
              counter isp2 {}
              chain in {
                type filter hook prerouting priority -300; policy accept;
                iifname "pa" udp dport 16400 counter name isp1
                iifname "pb" udp dport 16400 counter name isp2
              }
            }
            """)
    }

    deinit {
        for ns in [a, b, sender, receiver] { ns.delete() }
    }

    /// One site's plan: voip (duplicated) and default, two paths to the other site; voip on `voip`, its copies
    /// on the other path unless `copies` is false.
    func plan(local: Bool, voip: UInt16 = 1, copies: Bool = true) -> SteeringPlan {
        let remote = local ? siteB : siteA
        let gateways = local ? ["192.0.2.2", "198.51.100.2"] : ["192.0.2.1", "198.51.100.1"]
        return SteeringPlan(
            classes: [
                .init(id: 1, name: "voip", matches: [TrafficMatch(services: [ServiceMatch(.udp, [PortRange(16384, 32767)])])], duplicate: true),
                .init(id: 2, name: "default", matches: [TrafficMatch()]),
            ],
            paths: [
                .init(id: 7, slot: 1, interface: "pa", site: remote, gateway: IPv4Address(gateways[0])),
                .init(id: 8, slot: 2, interface: "pb", site: remote, gateway: IPv4Address(gateways[1])),
            ],
            destinations: [.init(site: remote, name: local ? "branch" : "hq",
                                 prefixes: [IPv4Prefix(local ? "10.20.0.0/16" : "10.1.0.0/16")!])],
            choices: [
                .init(site: remote, classID: 1, target: .path(voip)),
                .init(site: remote, classID: 2, target: .path(1)),
            ],
            copies: copies ? [.init(site: remote, classID: 1, from: voip, to: voip == 1 ? 2 : 1)] : [])
    }

    func counter(_ name: String) throws -> Int {
        var last = -2
        for _ in 0..<40 {
            let out = try b.check(["nft", "-j", "list", "counter", "inet", "isp", name])
            let json = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
            var now = -1
            for item in json?["nftables"] as? [[String: Any]] ?? [] {
                if let c = item["counter"] as? [String: Any], let p = c["packets"] as? Int { now = p }
            }
            if now == last { return now }
            last = now
            usleep(50_000)
        }
        return last
    }

    /// An RTP-like stream (RTP v2 header: payload type 0, incrementing sequence and timestamp, one SSRC)
    /// from the sender to the receiver at `rate` packets/s for `seconds`; `during(t)` runs between packets
    /// with the elapsed time. Returns how many were sent and the sequence numbers received, with repeats.
    func stream(ssrc: UInt32 = 0x1234_5678, rate: Int = 50, seconds: Double, during: (Double) throws -> Void = { _ in })
        throws -> (sent: Int, received: [UInt16]) {
        let rx = try UDPSocket(in: receiver, bindTo: "10.20.0.2", port: 16400)
        let tx = try UDPSocket(in: sender, bindTo: "10.1.0.2", port: 16500)
        final class Box: @unchecked Sendable { var seqs: [UInt16] = []; var running = true }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        Thread {
            while true {
                guard let (bytes, _, _) = rx.receive(timeout: .milliseconds(300)) else {
                    if !box.running { break }
                    continue
                }
                if bytes.count >= 12 { box.seqs.append(UInt16(bytes[2]) << 8 | UInt16(bytes[3])) }
            }
            done.signal()
        }.start()
        let start = Date()
        var sent = 0
        let total = Int(Double(rate) * seconds)
        for i in 0..<total {
            let seq = UInt16(truncatingIfNeeded: i), ts = UInt32(truncatingIfNeeded: i * 160)
            var packet: [UInt8] = [0x80, 0x00, UInt8(seq >> 8), UInt8(seq & 0xff)]
            packet += [UInt8(ts >> 24), UInt8(ts >> 16 & 0xff), UInt8(ts >> 8 & 0xff), UInt8(ts & 0xff)]
            packet += [UInt8(ssrc >> 24), UInt8(ssrc >> 16 & 0xff), UInt8(ssrc >> 8 & 0xff), UInt8(ssrc & 0xff)]
            packet += [UInt8](repeating: 0xd5, count: 160)
            if tx.send(packet, to: "10.20.0.2", port: 16400) { sent += 1 }
            try during(Date().timeIntervalSince(start))
            let next = Double(i + 1) / Double(rate)
            let wait = next - Date().timeIntervalSince(start)
            if wait > 0 { usleep(UInt32(wait * 1_000_000)) }
        }
        usleep(500_000)
        box.running = false
        done.wait()
        return (sent, box.seqs)
    }
}

@Suite(.serialized) struct DuplicationRootTests {
    /// The whole behaviour from outside the routers: one copy per packet on the second link, none lost
    /// when the first link is cut under the stream, none delivered twice, counters on both sides.
    @Test(.enabled(if: isRoot)) func rootACutOfTheActivePathLosesNothingAndTheReceiverSeesNoDuplicate() throws {
        let f = try DuplicationFixture()
        let sa = try Steering(netns: f.a.name), sb = try Steering(netns: f.b.name)
        defer { _ = try? sa.removeAll(); _ = try? sb.removeAll() }
        try sa.apply(f.plan(local: true))
        try sb.apply(f.plan(local: false))
        for gw in ["192.0.2.2", "198.51.100.2"] { _ = try f.a.run(["ping", "-c1", "-W1", gw]) }
        for gw in ["192.0.2.1", "198.51.100.1"] { _ = try f.b.run(["ping", "-c1", "-W1", gw]) }

        // What nft shows of it (the router never runs nft; people do).
        let listingA = try f.a.check(["nft", "list", "table", "ip", Conventions.egressTable])
        #expect(listingA.contains("dup to 198.51.100.2 device \"pb\""), "\(listingA)")
        let listingB = try f.b.check(["nft", "list", "table", "inet", Conventions.nftTable])
        #expect(listingB.contains("add @copies_seen {") && listingB.contains("limit rate over 1/hour burst 1 packets }"), "\(listingB)")

        // 1. Two clean paths: every packet once on each link, once at the receiver.
        let clean = try f.stream(seconds: 3)
        #expect(clean.sent == 150)
        #expect(clean.received.count == clean.sent, "received \(clean.received.count) of \(clean.sent)")
        #expect(Set(clean.received).count == clean.received.count, "the receiver saw duplicates")
        #expect(try f.counter("isp1") == clean.sent)
        #expect(try f.counter("isp2") == clean.sent, "the second link carries exactly one copy of each packet")
        let ca = try sa.counters(), cb = try sb.counters()
        #expect(ca.copiesSent.first { $0.className == "voip" && $0.pathID == 8 }?.packets == UInt64(clean.sent))
        let dropped = cb.duplicatesDropped.filter { $0.className == "voip" }.map(\.packets).reduce(0, +)
        #expect(dropped == UInt64(clean.sent), "router B dropped \(dropped) second copies of \(clean.sent)")

        // 1b. The router's own packets of the class (no input interface) are steered but not copied. (A main
        // table route lets the socket send at all; the output chain's mark then re-routes by the path.)
        try f.a.addRoute("10.20.0.0/16", via: "192.0.2.2")
        let own = try UDPSocket(in: f.a, bindTo: "10.1.0.1", port: 16600)
        for _ in 0..<5 { #expect(own.send([0x80, 0, 0, 1] + [UInt8](repeating: 0, count: 40), to: "10.20.0.2", port: 16400)) }
        #expect(try f.counter("isp1") == clean.sent + 5, "the router's own voip packets take the voip path")
        #expect(try f.counter("isp2") == clean.sent, "the router's own packets were copied")

        // 2. The active path (isp1) is cut under the stream (no re-steer: the copies carry the call).
        let cut = try f.stream(ssrc: 0x0bad_cafe, seconds: 3) { t in
            if t >= 1.0, t < 1.05 { try f.b.check(["nft", "add", "rule", "inet", "isp", "in", "iifname", "pa", "drop"]) }
        }
        #expect(cut.received.count == cut.sent, "lost \(cut.sent - cut.received.count) of \(cut.sent) at the receiver")
        #expect(Set(cut.received).count == cut.received.count, "the receiver saw duplicates")

        // 3. One path left: the plan copies nothing; the copy table holds no copy element.
        let single = try sa.apply(f.plan(local: true, voip: 2, copies: false))
        #expect(single.elementsAdded + single.elementsDeleted > 0)
        let copyMap = try sa.nftables.elements(family: .ip, table: Conventions.egressTable, set: SteeringNames.copiesMap)
        #expect(copyMap.isEmpty)
        // 4. It comes back: copying resumes (an element change only).
        let resumed = try sa.apply(f.plan(local: true, voip: 2, copies: true))
        #expect(resumed.elementsOnly, "\(resumed)")
        #expect(try sa.nftables.elements(family: .ip, table: Conventions.egressTable, set: SteeringNames.copiesMap).count == 1)

        // 4b. The second path's tunnel is re-created under its name (a new interface index): a reconcile (the
        // daemon's reaction to its routes vanishing) points the copy rule at the new interface.
        _ = try f.a.ip("link", "del", "pb")
        try f.a.addVeth("pb", peer: "pb", in: f.b)
        try f.a.addAddress("198.51.100.1/24", to: "pb")
        try f.b.addAddress("198.51.100.2/24", to: "pb")
        try sa.reconcile()
        let index = try #require(Int(try f.a.check(["cat", "/sys/class/net/pb/ifindex"]).trimmingCharacters(in: .whitespacesAndNewlines)))
        let rule = try sa.nftables.rules(family: .ip, table: Conventions.egressTable).first { $0.chain == "copy_voip_path8" }
        #expect(rule?.expressions.contains(.immediate(dreg: .reg2, data: .value(UInt32(index).hostBytes))) == true,
                "the copy rule still names the old interface index: \(String(describing: rule?.expressions))")

        // 5. Stop removes the copy table with the rest.
        let stop = try sa.removeAll()
        #expect(stop.egressTableDeleted)
        #expect(try !sa.nftables.tables(family: .ip).contains { $0.name == Conventions.egressTable })
    }

    /// An earlier version's copy table (`table ip patronus_copy`, a prerouting hook that copies) is ours:
    /// the first apply removes it; foreign ip tables stay.
    @Test(.enabled(if: isRoot)) func rootAnEarlierVersionsCopyTableIsRemoved() throws {
        let f = try SteeringFixture()
        try loadNftScript(f.router, """
            table ip patronus_copy {
              chain prerouting { type filter hook prerouting priority -149; policy accept; }
            }
            table ip other {
              chain prerouting { type filter hook prerouting priority 0; policy accept; }
            }
            """)
        let steering = try f.steering()
        try steering.apply(f.plan(voip: 1))
        let tables = try f.router.check(["nft", "list", "tables"])
        #expect(!tables.contains("patronus_copy") && tables.contains("table ip other"), "\(tables)")
        #expect(try steering.repairDrift() == nil, "the removal is not taken for a foreign change")
        try steering.removeAll()
        #expect(try f.router.check(["nft", "list", "tables"]).contains("table ip other"))
    }
}

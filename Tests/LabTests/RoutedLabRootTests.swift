import Foundation
import Glibc
import Testing
@testable import Lab

/// The routed internet of the lab: uplinks on their own subnets behind ISP routers, an exchange between the
/// ISPs, carrier NAT, and the verbs that change uplinks. Everything is observed from outside the sites:
/// another site's sockets, the ISP's nft counters, the router namespace's links as `ip` shows them.
@Suite(.serialized) struct RoutedLabRootTests {
    /// One datagram from `from` to `address:port`; whether `receiver` got it within `timeout`, and from where.
    static func deliver(from namespace: NetworkNamespace, to address: String, receiver: UDPSocket,
                        timeout: Duration = .milliseconds(300)) throws -> (address: String, port: UInt16)? {
        let sender = try UDPSocket(in: namespace)
        let token = [UInt8]("probe-\(UInt32.random(in: 0 ... .max))".utf8)
        sender.send(token, to: address, port: receiver.port)
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard let got = receiver.receive(timeout: deadline - ContinuousClock.now) else { return nil }
            if got.bytes == token { return (got.address, got.port) }
        }
        return nil
    }

    /// Whether a multicast datagram sent by `sender` out of its `interface` (TTL 16, far beyond one hop)
    /// reaches a socket of `receiver` joined to the group on `receiverInterface`.
    static func multicastCrosses(from sender: NetworkNamespace, _ interface: String, to receiver: NetworkNamespace,
                                 _ receiverInterface: String) throws -> Bool {
        let group = "239.255.77.78"
        let listener = try UDPSocket(in: receiver, bindTo: "0.0.0.0", port: 0)
        var join = ip_mreqn()
        inet_pton(AF_INET, group, &join.imr_multiaddr)
        join.imr_ifindex = Int32(try #require(try receiver.links()[receiverInterface]))
        #expect(setsockopt(listener.fd, Int32(IPPROTO_IP), IP_ADD_MEMBERSHIP, &join, socklen_t(MemoryLayout<ip_mreqn>.size)) == 0)
        let source = try UDPSocket(in: sender)
        var out = ip_mreqn()
        out.imr_ifindex = Int32(try #require(try sender.links()[interface]))
        #expect(setsockopt(source.fd, Int32(IPPROTO_IP), IP_MULTICAST_IF, &out, socklen_t(MemoryLayout<ip_mreqn>.size)) == 0)
        var ttl: Int32 = 16
        #expect(setsockopt(source.fd, Int32(IPPROTO_IP), IP_MULTICAST_TTL, &ttl, socklen_t(MemoryLayout<Int32>.size)) == 0)
        let token = [UInt8]("multicast".utf8)
        for _ in 0..<3 { source.send(token, to: group, port: listener.port) }
        return listener.receive(timeout: .milliseconds(300))?.bytes == token
    }

    /// Every uplink address reaches every other site's uplink addresses, across ISPs too, by routing (each
    /// uplink on its own subnet, one hop more than its ISP): and no multicast crosses, where a bridged lab
    /// carries it.
    @Test(.enabled(if: isRoot)) func routedISPsRouteEveryUplinkAndStopMulticastRoot() throws {
        let lab = try LabTopology.build(sites: 3, uplinks: 2, wan: .routed, options: .init(emulation: .inProcess))
        defer { lab.teardown() }
        let plan = lab.plan
        #expect(NetworkNamespace.list(prefix: plan.namespacePrefix).count == 9)
        #expect(Set(plan.uplinks.map(\.subnet)).count == plan.uplinks.count, "every uplink has its own subnet")
        for site in plan.sites {
            for target in plan.uplinks where target.site != site.name {
                let receiver = try UDPSocket(in: lab.router(target.site), bindTo: target.address)
                let got = try Self.deliver(from: lab.router(site.name), to: target.address, receiver: receiver)
                // Sent by the main table's default route: out of the sender's isp-a uplink, unNATed.
                #expect(got?.address == plan.uplinks(of: site.name)[0].address, "\(site.name) -> \(target.id)")
            }
        }
        // The exchange routes: isp-a's customers reach isp-b's through it.
        let routes = try lab.isp("isp-a").ip("route", "show")
        #expect(routes.contains("100.66.0.0/16 via 100.64.0.2"), "\(routes)")
        #expect(try !Self.multicastCrosses(from: lab.router("hq"), "wan-a", to: lab.router("east"), "wan-a"))

        let bridged = try LabTopology.build(sites: 2, uplinks: 1, options: .init(emulation: .inProcess))
        defer { bridged.teardown() }
        #expect(try Self.multicastCrosses(from: bridged.router("hq"), "wan-a", to: bridged.router("east"), "wan-a"),
                "the same multicast crosses a bridged ISP: the test can fail")
    }

    /// east's isp-b uplink behind isp-b's carrier NAT: what leaves it carries isp-b's core address, replies
    /// to the mapping come back, and nothing from outside reaches the private address (the ISP's drop
    /// counter says it stopped them).
    @Test(.enabled(if: isRoot)) func carrierNATRewritesAndAdmitsOnlyRepliesRoot() throws {
        let nat = UplinkID(site: "east", uplink: "isp-b")
        let lab = try LabTopology.build(sites: 3, uplinks: 2, wan: .routed, nat: [nat],
                                        options: .init(emulation: .inProcess))
        defer { lab.teardown() }
        let plan = lab.plan
        let eastB = try plan.uplink(site: "east", named: "isp-b")
        let hqA = try plan.uplink(site: "hq", named: "isp-a")
        #expect(eastB.natted && eastB.address == "172.18.2.2")
        #expect(!plan.discoveryPeers(of: "hq").contains { $0.hasPrefix(eastB.address) })

        // east -> hq's isp-a address, out of wan-b (a host route stands in for the router's policy routing).
        try lab.router("east").ip("route", "add", "\(hqA.address)/32", "via", eastB.gateway, "dev", "wan-b")
        let atHQ = try UDPSocket(in: lab.router("hq"), bindTo: hqA.address)
        let eastSocket = try UDPSocket(in: lab.router("east"), bindTo: eastB.address)
        eastSocket.send(Array("hello".utf8), to: hqA.address, port: atHQ.port)
        let seen = try #require(atHQ.receive(timeout: .seconds(1)))
        #expect(seen.address == eastB.publicAddress, "the source is rewritten to the uplink's public address, not \(seen.address)")
        // The reply to the mapping reaches east's private socket.
        atHQ.send(Array("reply".utf8), to: seen.address, port: seen.port)
        #expect(eastSocket.receive(timeout: .seconds(1))?.bytes == Array("reply".utf8))

        // From outside: the private address is not routed, the public one has no mapping on another port,
        // and a site of the same ISP that routes to the private subnet is stopped by the ISP.
        #expect(try Self.deliver(from: lab.router("hq"), to: eastB.address, receiver: eastSocket) == nil)
        let unmapped = try UDPSocket(in: lab.router("east"), bindTo: eastB.address)
        #expect(try Self.deliver(from: lab.router("hq"), to: eastB.publicAddress, receiver: unmapped) == nil)
        let westB = try plan.uplink(site: "west", named: "isp-b")
        try lab.router("west").ip("route", "add", eastB.subnet, "via", westB.gateway, "dev", "wan-b")
        #expect(try Self.deliver(from: lab.router("west"), to: eastB.address, receiver: eastSocket) == nil)
        let rules = try lab.isp("isp-b").check(["nft", "list", "table", "ip", LabWiring.natTable])
        let dropped = rules.split(separator: "\n").first { $0.contains("drop") }.flatMap {
            $0.split(separator: " ").drop { $0 != "packets" }.dropFirst().first
        }
        #expect(Int(dropped ?? "") ?? 0 >= 1, "\(rules)")
    }

    /// Carrier down and up, a new address and gateway, an uplink plugged in after start and unplugged: each
    /// as the site's router sees it (its links, addresses, routes) and as another site reaches it.
    @Test(.enabled(if: isRoot)) func uplinkVerbsChangeWhatTheSiteSeesRoot() throws {
        let lab = try LabTopology.build(sites: 2, uplinks: 2, wan: .routed,
                                        unplugged: [UplinkID(site: "hq", uplink: "isp-b")],
                                        options: .init(emulation: .inProcess))
        defer { lab.teardown() }
        let hq = lab.router("hq"), east = lab.router("east")
        func hqFlags(_ device: String) throws -> [String]? {
            let links = Ops.json(try hq.ip("-j", "link", "show")) as? [[String: Any]] ?? []
            return links.first { $0["ifname"] as? String == device }?["flags"] as? [String]
        }
        func reachable(_ address: String) throws -> Bool {
            let receiver = try UDPSocket(in: hq, bindTo: address)
            return try Self.deliver(from: east, to: address, receiver: receiver) != nil
        }
        #expect(try hqFlags("wan-b") == nil, "unplugged at start")
        #expect(lab.plan.routerArgumentsInclude(site: "hq", "--uplink", "wan-b=isp-b"))

        try lab.plug(site: "hq", uplink: "isp-b")
        let hqB = try lab.plan.uplink(site: "hq", named: "isp-b")
        #expect(try hqFlags("wan-b")?.contains("LOWER_UP") == true)
        #expect(try hq.ip("route", "show", "default").contains("via \(hqB.gateway) dev wan-b metric 102"))
        #expect(try reachable(hqB.address))

        let hqA = try lab.plan.uplink(site: "hq", named: "isp-a")
        try lab.setCarrier(site: "hq", uplink: "isp-a", up: false)
        // The kernel's link watch brings the operational state along within milliseconds.
        #expect(try eventually { try hqFlags("wan-a")?.contains("NO-CARRIER") == true })
        #expect(try !reachable(hqA.address))
        try lab.setCarrier(site: "hq", uplink: "isp-a", up: true)
        #expect(try hqFlags("wan-a")?.contains("LOWER_UP") == true)
        #expect(try eventually { try reachable(hqA.address) }, "ARP again after the carrier came back")

        let moved = try lab.renumber(site: "hq", uplink: "isp-a")
        #expect(moved.address == "100.65.17.2" && moved.gateway == "100.65.17.1")
        let addresses = try hq.ip("-4", "-o", "addr", "show", "dev", "wan-a")
        #expect(addresses.contains("100.65.17.2/24") && !addresses.contains(hqA.address + "/"))
        #expect(try hq.ip("route", "show", "default").contains("via 100.65.17.1 dev wan-a metric 101"))
        #expect(try reachable(moved.address))
        #expect(try lab.isp("isp-a").ip("-4", "-o", "addr", "show", "dev", moved.bridgePort).contains("100.65.17.1/24"))

        try lab.unplug(site: "hq", uplink: "isp-b")
        #expect(try hqFlags("wan-b") == nil)
        #expect(throws: LabError.self) { try lab.unplug(site: "hq", uplink: "isp-b") }
        #expect(try !hq.ip("route", "show", "default").contains("wan-b"))
    }
}

/// Polls `condition` every 50 ms for up to `timeout`.
func eventually(_ timeout: Duration = .seconds(2), _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try condition() { return true }
        usleep(50_000)
    }
    return try condition()
}

extension LabPlan {
    /// Whether `site`'s router command line holds `flag value`.
    func routerArgumentsInclude(site: String, _ flag: String, _ value: String) -> Bool {
        let argv = routerArguments(site: site, executable: "x", stateDirectory: "/x")
        return zip(argv, argv.dropFirst()).contains { $0 == flag && $1 == value }
    }
}

/// JSON of `ip -j` output.
enum Ops {
    static func json(_ text: String) -> Any? { try? JSONSerialization.jsonObject(with: Data(text.utf8)) }
}

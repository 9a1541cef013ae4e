import Foundation
import Testing
@testable import Model

@Suite struct AddressTests {
    @Test func parsesDottedQuads() {
        #expect(IPv4Address("192.0.2.1")?.value == 0xC000_0201)
        #expect(IPv4Address("255.255.255.255")?.value == UInt32.max)
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.-4", "a.b.c.d", "1..2.3", " 1.2.3.4"] {
            #expect(IPv4Address(bad) == nil, "\(bad) must be rejected")
        }
        #expect(IPv4Address(10, 99, 0, 1).description == "10.99.0.1")
    }

    @Test func parsesPrefixesAndRejectsHostBits() throws {
        let pool = try #require(IPv4Prefix("10.99.0.0/16"))
        #expect(pool.contains(IPv4Address("10.99.200.3")!))
        #expect(!pool.contains(IPv4Address("10.98.0.1")!))
        #expect(pool.size == 65536)
        #expect(pool.last.description == "10.99.255.255")
        #expect(IPv4Prefix("10.1.2.3/24") == nil)
        #expect(IPv4Prefix("10.1.2.0/33") == nil)
        #expect(IPv4Prefix("10.1.2.3")?.length == 32)
        #expect(IPv4Prefix("0.0.0.0/0")?.contains(IPv4Address("8.8.8.8")!) == true)
        #expect(IPv4Prefix("10.0.0.0/8")!.overlaps(pool))
        #expect(!IPv4Prefix("10.98.0.0/16")!.overlaps(pool))
    }

    @Test func parsesSocketAddresses() {
        #expect(SocketAddress4("192.0.2.1:51820")?.port == 51820)
        #expect(SocketAddress4("192.0.2.1:0") == nil)
        #expect(SocketAddress4("192.0.2.1:65536") == nil)
        #expect(SocketAddress4("192.0.2.1") == nil)
    }
}

@Suite struct PolicyTests {
    @Test func parsesPortRanges() {
        #expect(PortRange("5060-5061") == PortRange(5060, 5061))
        #expect(PortRange("873") == PortRange(873))
        for bad in ["0", "65536", "10-5", "1-2-3", "", "-5", "x"] { #expect(PortRange(bad) == nil, "\(bad)") }
    }

    @Test func strategiesRoundTrip() {
        for name in ["lowest-latency", "highest-bandwidth", "lowest-loss", "best-score", "load-balance", "fixed:isp-a"] {
            #expect(Strategy(name)?.description == name)
        }
        #expect(Strategy("fastest") == nil)
        #expect(Strategy("fixed:") == nil)
    }

    @Test func decodesAndValidatesAPolicy() throws {
        let json = """
        {"name":"voip","priority":10,"strategy":"lowest-latency",
         "match":{"services":[{"protocol":"udp","ports":["5060-5061","16384-32767"]},{"protocol":"tcp","ports":[5060]}],
                  "dscp":[46]},
         "sla":{"maxLatencyMs":150}}
        """
        let policy = try JSONDecoder().decode(Policy.self, from: Data(json.utf8))
        #expect(policy.match.services.count == 2)
        #expect(policy.match.services[1].ports == [PortRange(5060)])
        #expect(policy.enabled)
        try policy.validate()
        let back = try JSONDecoder().decode(Policy.self, from: JSONEncoder().encode(policy))
        #expect(back == policy)
    }

    @Test func rejectsBadPolicies() {
        var policy = Policy(name: "ok", priority: 5, strategy: .bestScore)
        policy.name = "1bad"
        #expect(throws: PolicyError.invalidName("1bad")) { try policy.validate() }
        policy.name = "ok"
        policy.priority = 0
        #expect(throws: PolicyError.self) { try policy.validate() }
        policy.priority = 5
        policy.match.dscp = [64]
        #expect(throws: PolicyError.self) { try policy.validate() }
        policy.match.dscp = []
        policy.sla.maxLossPct = 101
        #expect(throws: PolicyError.self) { try policy.validate() }
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(Policy.self, from: Data(#"{"name":"x","priority":1,"strategy":"fast"}"#.utf8))
        }
    }

    @Test func slaChecksEveryLimitThatIsSet() {
        let sla = SLA(maxLatencyMs: 100, maxLossPct: 1)
        #expect(sla.isMet(by: PathMetrics(latencyMs: 50, jitterMs: 90, lossPct: 0.5, score: 90)))
        #expect(!sla.isMet(by: PathMetrics(latencyMs: 150, jitterMs: 1, lossPct: 0, score: 90)))
        #expect(!sla.isMet(by: PathMetrics(latencyMs: 10, jitterMs: 1, lossPct: 2, score: 90)))
    }
}

@Suite struct PathTypeTests {
    @Test func parsesUplinkArguments() {
        #expect(Uplink(argument: "eth0=ethernet") == Uplink(interface: "eth0", label: "ethernet"))
        #expect(Uplink(argument: "wwan0") == Uplink(interface: "wwan0", label: "wwan0"))
        #expect(Uplink(argument: "averyveryverylongname=x") == nil)
        #expect(Uplink(argument: "eth0=") == nil)
        #expect(Uplink(argument: "eth0=a=b") == nil)
    }

    @Test func shapingPairsAndTheirProblems() throws {
        #expect(ShapingMode.pair("20M/100M")! == (ShapingMode.fixed(bitsPerSecond: 20_000_000), ShapingMode.fixed(bitsPerSecond: 100_000_000)))
        #expect(ShapingMode.pair("off")! == (ShapingMode.off, ShapingMode.off))
        #expect(ShapingMode.pair("8M")! == (ShapingMode.fixed(bitsPerSecond: 8_000_000), ShapingMode.auto))
        for bad in ["", "/", "20M/", "/20M", "1M/2M/3M", "20M/10", "fast"] {
            #expect(ShapingMode.pair(bad) == nil, "\(bad)")
            #expect(ShapingMode.problem(bad) != nil, "\(bad)")
        }
        #expect(ShapingMode.problem("20M/auto") == nil)
        // An uplink stored before download shaping existed decodes with the download on auto.
        var stored = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(Uplink(interface: "eth0", label: "isp-a", shaping: .off)))
                                  as? [String: Any])
        stored["downloadShaping"] = nil
        let old = try JSONDecoder().decode(Uplink.self, from: JSONSerialization.data(withJSONObject: stored))
        #expect(old.shaping == .off && old.downloadShaping == .auto)
        let both = Uplink(interface: "eth0", label: "isp-a", shaping: .auto, downloadShaping: .fixed(bitsPerSecond: 50_000_000))
        #expect(try JSONDecoder().decode(Uplink.self, from: JSONEncoder().encode(both)) == both)
    }

    @Test func formatsAndParsesUTCTimes() throws {
        let date = Date(timeIntervalSince1970: 1_760_020_335)
        #expect(UTCTime.format(date) == "2025-10-09 14:32:15")
        #expect(UTCTime.parse("2025-10-09 14:32:15") == date)
        #expect(UTCTime.parse("2025-13-09 14:32:15") == nil)
        #expect(UTCTime.parse("2025-02-30 14:32:15") == nil)
        #expect(UTCTime.parse("2025-10-09T14:32:15") == nil)
    }

    @Test func siteIDsPrintLowercase() {
        let id = SiteID(UUID(uuidString: "550E8400-E29B-41D4-A716-446655440001")!)
        #expect(id.description == "550e8400-e29b-41d4-a716-446655440001")
        #expect(SiteID("not-a-uuid") == nil)
    }
}

@Suite struct UplinkSlotTests {
    /// Tunnels, uplink pinning and download shaping number uplinks from this one function.
    @Test func anUplinksSlotIsItsPositionPlusOneUpToFifteen() {
        #expect(Conventions.uplinkSlot(position: 0) == 1)
        #expect(Conventions.uplinkSlot(position: 14) == 15)
        #expect(Conventions.uplinkSlot(position: 15) == nil)
        #expect(Conventions.uplinkSlot(position: -1) == nil)
        #expect((0..<15).compactMap { Conventions.uplinkSlot(position: $0) } == Array(Conventions.uplinkSlots))
    }
}

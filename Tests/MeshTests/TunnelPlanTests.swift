import Foundation
import Model
import Testing
import WireGuard
@testable import Mesh

func remoteSite(_ n: UInt8, labels: [String], lan: [IPv4Prefix] = []) -> SiteDescription {
    SiteDescription(siteID: SiteID(UUID(uuidString: "00000000-0000-4000-8000-0000000000\(String(format: "%02x", n))")!),
                    name: "site\(n)", publicKey: WireGuardKey(bytes: [UInt8](repeating: n, count: 32))!,
                    overlay: IPv4Address(10, 99, 0, n), lanPrefixes: lan,
                    endpoints: labels.enumerated().map { index, label in
                        Endpoint(label: label, address: SocketAddress4(IPv4Address(192, 0, UInt8(index + 2), n), port: 51830 + 10 * UInt16(index)))
                    })
}

struct TunnelPlanTests {
    let uplinks = [Uplink(interface: "eth0", label: "isp"), Uplink(interface: "wwan0", label: "lte")]
    let settings = TunnelSettings(interfacePrefix: "wg-hq")
    var local: [Endpoint] {
        TunnelPlanner.localEndpoints(uplinks: uplinks, addresses: ["eth0": IPv4Address(198, 51, 100, 1), "wwan0": IPv4Address(203, 0, 113, 1)],
                                     settings: settings)
    }

    @Test func schemeNamesPortsAndMarks() {
        #expect(settings.interfaceName(slot: 1, remoteIndex: nil) == "wg-hq0")
        #expect(settings.interfaceName(slot: 2, remoteIndex: 3) == "wg-hq1x3")
        #expect(settings.listenPort(slot: 1) == 51820)
        #expect(settings.listenPort(slot: 2) == 51830)
        #expect(settings.listenPort(slot: 15) == 51960)
        var all = settings
        all.pairing = .allPairs
        #expect(all.listenPort(slot: 1) == 52020)
        #expect(!(51821...51823).contains(settings.listenPort(slot: 1)) && all.listenPort(slot: 15) + 7 < 52200)
        #expect(TunnelSettings.fwmark(slot: 2) == 0x2000_0000)
        #expect(TunnelSettings.fwmark(slot: 15) & ~Conventions.uplinkMarkMask == 0)
        #expect(TunnelSettings.fwmark(slot: 15) & Conventions.pathMarkMask == 0, "uplink and path fields never overlap")
        #expect(local == [Endpoint(label: "isp", address: SocketAddress4("198.51.100.1:51820")!),
                          Endpoint(label: "lte", address: SocketAddress4("203.0.113.1:51830")!)])
        // An uplink without an address is not announced.
        #expect(TunnelPlanner.localEndpoints(uplinks: uplinks, addresses: ["wwan0": IPv4Address(203, 0, 113, 1)], settings: settings).map(\.label) == ["lte"])
    }

    @Test func sameLabelPairing() throws {
        let east = remoteSite(1, labels: ["isp", "lte"], lan: [IPv4Prefix("192.168.20.0/24")!])
        let west = remoteSite(2, labels: ["isp"])
        let plan = try TunnelPlanner.plan(uplinks: uplinks, localEndpoints: local, remotes: [west, east], settings: settings)
        #expect(plan.interfaces.map(\.name) == ["wg-hq0", "wg-hq1"])
        let isp = plan.interfaces[0]
        #expect(isp.listenPort == 51820 && isp.fwmark == 0x1000_0000 && isp.slot == 1)
        #expect(isp.peers.map(\.publicKey) == [east.publicKey, west.publicKey])
        #expect(isp.peers[0].endpoint == east.endpoints[0].address)
        #expect(isp.peers[0].allowedIPs == [IPv4Prefix("10.99.0.1/32")!, IPv4Prefix("192.168.20.0/24")!])
        #expect(isp.peers[0].persistentKeepalive == 25)
        let lte = plan.interfaces[1]
        #expect(lte.peers.map(\.publicKey) == [east.publicKey])  // west has no lte endpoint
        #expect(lte.peers[0].endpoint == east.endpoints[1].address)
        #expect(plan.paths.count == 3)
        // Two paths to east never share an (interface, peer).
        let eastPaths = plan.paths.filter { $0.remoteSite == east.siteID }
        #expect(Set(eastPaths.map { "\($0.interface)/\($0.peer)" }).count == eastPaths.count)
        #expect(eastPaths.map(\.remoteEndpoint.label) == ["isp", "lte"])
    }

    @Test func allPairsGivesEveryCombinationItsOwnInterfaceAndBothSidesAgree() throws {
        var all = settings
        all.pairing = .allPairs
        let eastSettings = TunnelSettings(interfacePrefix: "wg-e", listenPort: 51820, pairing: .allPairs)
        let eastUplinks = [Uplink(interface: "a", label: "isp"), Uplink(interface: "b", label: "lte")]
        var east = remoteSite(1, labels: [])
        east.endpoints = TunnelPlanner.localEndpoints(uplinks: eastUplinks, addresses: ["a": IPv4Address(192, 0, 2, 1), "b": IPv4Address(192, 0, 3, 1)],
                                                      settings: eastSettings)
        let ourEndpoints = TunnelPlanner.localEndpoints(uplinks: uplinks, addresses: ["eth0": IPv4Address(198, 51, 100, 1),
                                                                                      "wwan0": IPv4Address(203, 0, 113, 1)], settings: all)
        #expect(ourEndpoints.map(\.address.port) == [52020, 52030])
        let plan = try TunnelPlanner.plan(uplinks: uplinks, localEndpoints: ourEndpoints, remotes: [east], settings: all)
        #expect(plan.interfaces.map(\.name) == ["wg-hq0x0", "wg-hq0x1", "wg-hq1x0", "wg-hq1x1"])
        #expect(plan.interfaces.map(\.listenPort) == [52020, 52021, 52030, 52031])
        #expect(plan.paths.count == 4)
        // East plans from our announcement; each of our interfaces must send where its east counterpart
        // listens, and listen where that counterpart sends.
        let hq = SiteDescription(siteID: SiteID(), name: "hq", publicKey: WireGuardKey(bytes: [UInt8](repeating: 99, count: 32))!,
                                 overlay: IPv4Address(10, 99, 0, 99), endpoints: ourEndpoints)
        let eastPlan = try TunnelPlanner.plan(uplinks: eastUplinks, localEndpoints: east.endpoints, remotes: [hq], settings: eastSettings)
        for ours in plan.interfaces {
            let target = try #require(ours.peers[0].endpoint)
            let eastAddress = try #require(east.endpoints.first { $0.address.address == target.address }).address.address
            let ourAddress = ourEndpoints[Int(ours.slot) - 1].address.address
            let theirs = try #require(eastPlan.interfaces.first {
                $0.listenPort == target.port && east.endpoints[Int($0.slot) - 1].address.address == eastAddress
            })
            #expect(theirs.peers[0].endpoint == SocketAddress4(ourAddress, port: ours.listenPort))
        }
    }

    @Test func uplinkWithoutAnnouncedEndpointHasAnInterfaceButNoPeers() throws {
        let plan = try TunnelPlanner.plan(uplinks: uplinks, localEndpoints: Array(local.prefix(1)),
                                          remotes: [remoteSite(1, labels: ["isp", "lte"])], settings: settings)
        #expect(plan.interfaces[1].peers.isEmpty)
        #expect(plan.paths.count == 1)
    }

    @Test func aFullPoolDoesNotLoopForever() {
        let pool = IPv4Prefix(IPv4Address(10, 99, 0, 0), length: 30)  // hosts .1 and .2
        let ids = (0..<3).map { _ in SiteID() }.sorted()
        let full: [SiteID: IPv4Address] = [ids[0]: IPv4Address(10, 99, 0, 1), ids[1]: IPv4Address(10, 99, 0, 2)]
        let chosen = OverlayAddressing.choose(for: ids[2], in: pool, known: full)
        #expect(pool.contains(chosen))
        #expect(OverlayAddressing.choose(for: ids[1], in: pool, known: [ids[0]: IPv4Address(10, 99, 0, 1)]) == IPv4Address(10, 99, 0, 2))
    }

    @Test func planErrors() {
        #expect(throws: TunnelPlanError.duplicateLabel("isp")) {
            try TunnelPlanner.plan(uplinks: [uplinks[0], Uplink(interface: "eth1", label: "isp")], localEndpoints: [], remotes: [], settings: settings)
        }
        #expect(throws: TunnelPlanError.interfaceNameTooLong("wg-too-long-pfx0")) {
            try TunnelPlanner.plan(uplinks: uplinks, localEndpoints: [], remotes: [], settings: TunnelSettings(interfacePrefix: "wg-too-long-pfx"))
        }
        let many = (0..<16).map { Uplink(interface: "eth\($0)", label: "l\($0)") }
        #expect(throws: TunnelPlanError.tooManyUplinks(16)) { try TunnelPlanner.plan(uplinks: many, localEndpoints: [], remotes: [], settings: settings) }
    }

    @Test func overlayAddressesAreStableDistinctAndTieBrokenByID() {
        let pool = OverlayAddressing.defaultPool
        let ids = (0..<300).map { _ in SiteID() }
        var known: [SiteID: IPv4Address] = [:]
        for id in ids { known[id] = OverlayAddressing.choose(for: id, known: known) }
        // Each re-evaluates against everyone else: all distinct after convergence.
        for _ in 0..<3 { for id in ids { known[id] = OverlayAddressing.choose(for: id, known: known.filter { $0.key != id }) } }
        #expect(Set(known.values).count == ids.count)
        for address in known.values {
            #expect(pool.contains(address) && address != pool.network && address != pool.last)
        }
        #expect(OverlayAddressing.choose(for: ids[0], known: [:]) == OverlayAddressing.candidate(for: ids[0], in: pool, attempt: 0))
        // A collision: the smaller id keeps the address, the larger moves on.
        let (small, large) = ids[0] < ids[1] ? (ids[0], ids[1]) : (ids[1], ids[0])
        let contested = OverlayAddressing.candidate(for: large, in: pool, attempt: 0)
        #expect(OverlayAddressing.choose(for: large, known: [small: contested]) == OverlayAddressing.candidate(for: large, in: pool, attempt: 1))
        #expect(OverlayAddressing.choose(for: small, known: [large: OverlayAddressing.candidate(for: small, in: pool, attempt: 0)])
                == OverlayAddressing.candidate(for: small, in: pool, attempt: 0))
    }
}

import Model
import Netlink
import Testing
@testable import Steering

/// The uplink tracker fed kernel notifications by hand: every transition the daemon reacts to.
@Suite struct UplinkTrackerTests {
    let uplinks = [Uplink(interface: "wan-a", label: "isp-a"), Uplink(interface: "wan-c", label: "lte")]
    let running = UInt32(1 | 0x10000)  // IFF_UP | IFF_LOWER_UP
    func wanA(flags: UInt32? = nil, operState: UInt8 = 6, index: Int32 = 3) -> Link {
        Link(index: index, name: "wan-a", flags: flags ?? running, operState: operState)
    }
    let address = InterfaceAddress(interfaceIndex: 3, address: 0x6441_0102, prefixLength: 24)   // 100.65.1.2
    let gateway = IPRoute(destination: 0, prefixLength: 0, table: 254, outputInterface: 3, gateway: 0x6441_0101)

    func started() -> UplinkTracker {
        var tracker = UplinkTracker(uplinks: uplinks)
        let changes = tracker.reset(links: [wanA(), Link(index: 1, name: "lo", flags: running)], addresses: [address],
                                    routes: [gateway])
        #expect(changes.count == 1 && changes[0].startedRunning && changes[0].endpointChanged)
        return tracker
    }

    @Test func aStartedUplinkHasItsAddressAndGatewayAndTheAbsentOneWaits() {
        let tracker = started()
        #expect(tracker.states[0] == UplinkState(uplink: uplinks[0], index: 3, running: true,
                                                 address: IPv4Address(100, 65, 1, 2), gateway: IPv4Address(100, 65, 1, 1)))
        #expect(tracker.states[1].index == nil && !tracker.states[1].running)
        #expect(tracker.addressesByInterface == ["wan-a": IPv4Address(100, 65, 1, 2)])
    }

    @Test func carrierLossStopsTheUplinkAndCarrierBackStartsItWithoutAnEndpointChange() throws {
        var tracker = started()
        let lost = tracker.apply(.link(wanA(flags: 1, operState: 2)))
        let change = try #require(lost.first)
        #expect(lost.count == 1 && change.stoppedRunning && !change.endpointChanged && change.needsPinning)
        #expect(tracker.apply(.link(wanA(flags: 1, operState: 2))).isEmpty, "the same state twice is no change")
        let back = try #require(tracker.apply(.link(wanA())).first)
        #expect(back.startedRunning && back.needsRebind && !back.endpointChanged)
    }

    @Test func aNewAddressAndGatewayAreChangesOfTheEndpointAndThePinning() throws {
        var tracker = started()
        let moved = InterfaceAddress(interfaceIndex: 3, address: 0x6441_1102, prefixLength: 24)  // 100.65.17.2
        let removed = try #require(tracker.apply(.addressRemoved(address)).first)
        #expect(removed.after.address == nil && !removed.endpointChanged, "the old address is announced until a new one")
        #expect(tracker.addressesByInterface == ["wan-a": IPv4Address(100, 65, 1, 2)])
        let renumbered = try #require(tracker.apply(.address(moved)).first)
        #expect(renumbered.endpointChanged && renumbered.needsRebind && renumbered.after.address == IPv4Address(100, 65, 17, 2))
        let newGateway = IPRoute(destination: 0, prefixLength: 0, table: 254, outputInterface: 3, gateway: 0x6441_1101)
        let routed = try #require(tracker.apply(.route(newGateway)).first)
        #expect(routed.needsPinning && !routed.endpointChanged && routed.after.gateway == IPv4Address(100, 65, 17, 1))
        // Routes of other tables and prefixes do not concern the uplinks.
        #expect(tracker.apply(.route(IPRoute(destination: 0, prefixLength: 0, table: 6101, outputInterface: 3))).isEmpty)
        #expect(tracker.apply(.route(IPRoute(destination: 0x0a00_0000, prefixLength: 8, table: 254, outputInterface: 3))).isEmpty)
        #expect(tracker.apply(.routeRemoved(newGateway)).first?.after.gateway == nil)
    }

    /// No `--uplink`: an interface becomes an uplink once it is up with a global address and a default route,
    /// in the next slot, reported as a change from absent; a LAN interface (no default route), loopback, our
    /// tunnels and other `wg*` interfaces never do; one that goes keeps its slot and comes back to it.
    @Test func withoutConfiguredUplinksAnInterfaceWithAnAddressAndADefaultRouteBecomesOneLater() throws {
        var tracker = UplinkTracker(uplinks: [], detection: UplinkDetection(tunnelPrefix: "wg-hq"))
        let lan = Link(index: 2, name: "lan0", flags: running)
        let lanAddress = InterfaceAddress(interfaceIndex: 2, address: 0x0a0a_0101, prefixLength: 24)  // 10.10.1.1
        let lanRoute = IPRoute(destination: 0x0a0a_0100, prefixLength: 24, table: 254, outputInterface: 2)
        let tunnel = Link(index: 5, name: "wg-hq0", flags: running)
        let tunnelAddress = InterfaceAddress(interfaceIndex: 5, address: 0x0a63_0001, prefixLength: 32)
        #expect(tracker.reset(links: [Link(index: 1, name: "lo", flags: running), lan, tunnel],
                              addresses: [lanAddress, tunnelAddress], routes: [lanRoute]).isEmpty)
        #expect(tracker.uplinks.isEmpty)
        // wan-a appears, gets its address: not yet (no default route); then its default route: an uplink.
        #expect(tracker.apply(.link(wanA())).isEmpty)
        #expect(tracker.apply(.address(address)).isEmpty)
        let detected = try #require(tracker.apply(.route(gateway)).first)
        #expect(tracker.uplinks == [Uplink(interface: "wan-a", label: "wan-a")])
        #expect(detected.before.index == nil && detected.startedRunning && detected.endpointChanged && detected.needsRebind)
        #expect(tracker.addressesByInterface == ["wan-a": IPv4Address(100, 65, 1, 2)])
        // A default route out of a wg interface makes no uplink of it.
        #expect(tracker.apply(.route(IPRoute(destination: 0, prefixLength: 0, table: 254, outputInterface: 5))).isEmpty)
        // Gone: absent, endpoint withdrawn, slot kept; back: the same uplink, no second one.
        let gone = try #require(tracker.apply(.linkRemoved(wanA())).first)
        #expect(gone.stoppedRunning && gone.endpointChanged && tracker.uplinks.count == 1)
        _ = tracker.apply(.link(wanA(index: 7)))
        _ = tracker.apply(.address(InterfaceAddress(interfaceIndex: 7, address: 0x6441_0102, prefixLength: 24)))
        let back = try #require(tracker.apply(.route(IPRoute(destination: 0, prefixLength: 0, table: 254, outputInterface: 7,
                                                             gateway: 0x6441_0101))).first)
        #expect(back.after.index == 7 && back.after.running && tracker.uplinks.count == 1)
    }

    @Test func theInventoryDetectsOnlyInterfacesWithADefaultRoute() {
        let inventory = InterfaceInventory(interfaces: [
            .init(name: "lo", index: 1, isUp: true, addresses: [IPv4Address(127, 0, 0, 1)], hasDefaultRoute: false),
            .init(name: "lan0", index: 2, isUp: true, addresses: [IPv4Address(10, 10, 1, 1)], hasDefaultRoute: false),
            .init(name: "wan-a", index: 3, isUp: true, addresses: [IPv4Address(100, 65, 1, 2)], hasDefaultRoute: true),
            .init(name: "wan-b", index: 4, isUp: false, addresses: [IPv4Address(100, 66, 1, 2)], hasDefaultRoute: true),
            .init(name: "wg-hq0", index: 5, isUp: true, addresses: [IPv4Address(10, 99, 0, 1)], hasDefaultRoute: true),
        ])
        #expect(inventory.uplinks(configured: [], tunnelPrefix: "wg-hq") == [Uplink(interface: "wan-a", label: "wan-a")])
        #expect(inventory.uplinks(configured: uplinks, tunnelPrefix: "wg-hq") == uplinks)
    }

    @Test func anUplinkAbsentAtStartIsUsedWhenItAppearsAndDroppedWhenItGoes() throws {
        var tracker = started()
        let modem = Link(index: 9, name: "wan-c", flags: running, operState: 0)  // a modem with no operstate
        let appeared = try #require(tracker.apply(.link(modem)).first)
        #expect(appeared.startedRunning && appeared.needsRebind && appeared.after.index == 9 && !appeared.endpointChanged)
        let lte = InterfaceAddress(interfaceIndex: 9, address: 0x0a40_0002, prefixLength: 24)
        #expect(tracker.apply(.address(lte)).first?.endpointChanged == true)
        #expect(tracker.addressesByInterface["wan-c"] == IPv4Address(10, 64, 0, 2))
        let gone = try #require(tracker.apply(.linkRemoved(modem)).first)
        #expect(gone.stoppedRunning && gone.endpointChanged && gone.after == UplinkState(uplink: uplinks[1]))
        // Plugged in again under a new index: known by its name.
        #expect(tracker.apply(.link(Link(index: 12, name: "wan-c", flags: running))).first?.after.index == 12)
        #expect(tracker.apply(.overrun).isEmpty)
    }

    @Test func aBatchIsOneChangePerUplinkFromItsFirstToItsLastState() {
        var tracker = started()
        var changes = tracker.apply(.link(wanA(flags: 1, operState: 2)))
        changes += tracker.apply(.link(wanA()))
        #expect(UplinkChange.merged(changes).isEmpty, "down and up again within one batch: nothing to do")
        changes = tracker.apply(.addressRemoved(address))
        changes += tracker.apply(.address(InterfaceAddress(interfaceIndex: 3, address: 0x6441_1102, prefixLength: 24)))
        let merged = UplinkChange.merged(changes)
        #expect(merged.count == 1 && merged[0].before.address == IPv4Address(100, 65, 1, 2)
                && merged[0].after.address == IPv4Address(100, 65, 17, 2))
    }
}

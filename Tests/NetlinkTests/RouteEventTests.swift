import CNetfilter
import Testing
@testable import Netlink

/// rtnetlink notifications as the kernel sends them, parsed into events (no root needed).
@Suite struct RouteEventTests {
    /// struct ifinfomsg (family, type, index, flags, change) and its attributes.
    func linkMessage(_ type: Int32, index: Int32, name: String, flags: UInt32, operState: UInt8) -> NetlinkMessage {
        var payload: [UInt8] = [UInt8(AF_UNSPEC), 0, 1, 0]  // family, pad, ARPHRD_ETHER
        payload.appendHost(index)
        payload.appendHost(flags)
        payload.appendHost(UInt32(0))
        var attributes = AttributeWriter()
        attributes.putString(UInt16(IFLA_IFNAME), name)
        attributes.putU8(UInt16(IFLA_OPERSTATE), operState)
        return NetlinkMessage(type: UInt16(type), flags: 0, payload: payload + attributes.bytes)
    }

    @Test func linkNotificationsCarryCarrierAndOperationalState() throws {
        let up = UInt32(IFF_UP) | UInt32(IFF_BROADCAST) | 0x10000  // IFF_LOWER_UP
        let running = try RouteNetlink.parseEvent(linkMessage(Int32(RTM_NEWLINK), index: 7, name: "wan-a", flags: up, operState: 6))
        #expect(running == .link(Link(index: 7, name: "wan-a", flags: up, operState: 6)))
        guard case .link(let link) = running else { return }
        #expect(link.isRunning)
        // Carrier lost: IFF_UP stays, IFF_LOWER_UP goes, operstate DOWN (2).
        let lost = try RouteNetlink.parseEvent(linkMessage(Int32(RTM_NEWLINK), index: 7, name: "wan-a",
                                                           flags: UInt32(IFF_UP), operState: 2))
        guard case .link(let noCarrier) = lost else { Issue.record("not a link event: \(String(describing: lost))"); return }
        #expect(!noCarrier.isRunning && noCarrier.isUp)
        // Lower layer up but operationally down (dormant) is not running either; unknown is.
        #expect(!Link(index: 1, name: "x", flags: up, operState: 5).isRunning)
        #expect(Link(index: 1, name: "x", flags: up, operState: 0).isRunning)
        let gone = try RouteNetlink.parseEvent(linkMessage(Int32(RTM_DELLINK), index: 7, name: "wan-a", flags: 0, operState: 2))
        #expect(gone == .linkRemoved(Link(index: 7, name: "wan-a", flags: 0, operState: 2)))
    }

    @Test func addressAndDefaultRouteNotificationsRoundTrip() throws {
        let address = InterfaceAddress(interfaceIndex: 7, address: 0x6441_0102, prefixLength: 24)
        var added = RouteNetlink.addressMessage(address)
        #expect(try RouteNetlink.parseEvent(added) == .address(address))
        added.type = UInt16(RTM_DELADDR)
        #expect(try RouteNetlink.parseEvent(added) == .addressRemoved(address))

        let route = IPRoute(destination: 0, prefixLength: 0, table: 254, outputInterface: 7, gateway: 0x6441_0101)
        var message = RouteNetlink.routeMessage(route, .replace)
        #expect(try RouteNetlink.parseEvent(message) == .route(route))
        message.type = UInt16(RTM_DELROUTE)  // the kernel's deletion notice: the same rtmsg, unicast
        #expect(try RouteNetlink.parseEvent(message) == .routeRemoved(route))
        // Other kinds (a rule, IPv6) are not ours.
        #expect(try RouteNetlink.parseEvent(RouteNetlink.ruleMessage(IPRule(priority: 1, table: 5))) == nil)
        var v6 = RouteNetlink.routeMessage(route, .add)
        v6.payload[0] = UInt8(AF_INET6)
        #expect(try RouteNetlink.parseEvent(v6) == nil)
    }

    @Test func truncatedAttributesAreAnErrorNotACrash() {
        var message = linkMessage(Int32(RTM_NEWLINK), index: 1, name: "wan-a", flags: 0, operState: 6)
        message.payload.append(contentsOf: [0xff, 0x00, 0x03, 0x00])  // an attribute claiming 255 bytes
        #expect(throws: NetlinkError.self) { try RouteNetlink.parseEvent(message) }
    }
}

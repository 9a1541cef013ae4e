import CNetfilter
import Foundation
import Model
import Netlink
import Testing
@testable import WireGuard

/// Golden bytes for every netlink message the WireGuard layer sends, annotated field by field. The rtnetlink
/// ones equal what `strace -e sendmsg ip link add wgx0 type wireguard` / `ip addr replace` send (apart from
/// the sequence number); the genetlink ones follow linux/wireguard.h and the layout `wg` (libmnl) produces.
struct NetlinkMessageTests {
    func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }
    func u16(_ v: UInt16) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }

    /// The bytes `NetlinkConnection` puts on the wire for `message`: REQUEST plus ACK (perform, get) or
    /// DUMP (dump), and the sequence number.
    func sent(_ message: NetlinkMessage, sequence: UInt32, dump: Bool = false) -> [UInt8] {
        var m = message
        m.sequence = sequence
        m.flags |= NetlinkFlag.request | (dump ? NetlinkFlag.dump : NetlinkFlag.ack)
        return m.encoded()
    }

    @Test func headerConstantsMatchTheUAPIHeader() {
        #expect(WG_GENL_NAME == "wireguard")
        #expect(WG_GENL_VERSION == 1)
        #expect(WG_CMD_SET_DEVICE.rawValue == 1)
        #expect(WGDEVICE_A_PEERS.rawValue == 8)
        #expect(WGPEER_A_ALLOWEDIPS.rawValue == 9)
        #expect(WGPEER_F_REPLACE_ALLOWEDIPS.rawValue == 2)
        #expect(GENL_ID_CTRL == 0x10)
    }

    @Test func createLinkMatchesIproute2() {
        let bytes = sent(WireGuardLinks.create(name: "wgx0"), sequence: 7)
        let expected: [UInt8] =
            u32(64) + u16(16 /* RTM_NEWLINK */) + u16(0x0001 | 0x0004 | 0x0200 | 0x0400 /* REQUEST|ACK|EXCL|CREATE */)
            + u32(7) + u32(0)
            + [0 /* AF_UNSPEC */, 0] + u16(0) + u32(0) /* index */ + u32(0) /* flags */ + u32(0) /* change */
            + u16(9) + u16(3 /* IFLA_IFNAME */) + Array("wgx0".utf8) + [0] + [0, 0, 0]
            + u16(20) + u16(18 /* IFLA_LINKINFO, no NESTED flag like ip */)
            + u16(13) + u16(1 /* IFLA_INFO_KIND, no NUL */) + Array("wireguard".utf8) + [0, 0, 0]
        #expect(bytes == expected)
    }

    @Test func deleteLink() {
        #expect(sent(WireGuardLinks.delete(name: "wgx0"), sequence: 2) ==
            u32(44) + u16(17 /* RTM_DELLINK */) + u16(0x0005) + u32(2) + u32(0) + [UInt8](repeating: 0, count: 16)
            + u16(9) + u16(3) + Array("wgx0".utf8) + [0, 0, 0, 0])
    }

    @Test func getFamily() {
        #expect(sent(WireGuardNetlink.getFamily(), sequence: 3) ==
            u32(36) + u16(0x10 /* GENL_ID_CTRL */) + u16(0x0005) + u32(3) + u32(0)
            + [3 /* CTRL_CMD_GETFAMILY */, 1 /* version */, 0, 0]
            + u16(14) + u16(2 /* CTRL_ATTR_FAMILY_NAME */) + Array("wireguard".utf8) + [0] + [0, 0])
    }

    @Test func getDeviceIsADumpByName() {
        #expect(sent(WireGuardNetlink.getDevice(family: 0x1d, interface: "wg-hq0"), sequence: 4, dump: true) ==
            u32(32) + u16(0x1d) + u16(0x0001 | 0x0300 /* REQUEST|DUMP */) + u32(4) + u32(0)
            + [0 /* WG_CMD_GET_DEVICE */, 1, 0, 0]
            + u16(11) + u16(2 /* WGDEVICE_A_IFNAME */) + Array("wg-hq0".utf8) + [0] + [0])
    }

    @Test func setDeviceWithOnePeer() throws {
        let key = try #require(WireGuardKey(bytes: [UInt8](repeating: 0xaa, count: 32)))
        let peerKey = try #require(WireGuardKey(bytes: [UInt8](repeating: 0xbb, count: 32)))
        let update = DeviceUpdate(privateKey: key, listenPort: 51830, fwmark: 0x0100_0000, replacePeers: true, peers: [
            PeerUpdate(publicKey: peerKey, endpoint: SocketAddress4("192.0.2.1:51831")!, persistentKeepalive: 25,
                       replaceAllowedIPs: true, allowedIPs: [IPv4Prefix("10.99.1.2/32")!]),
        ])
        let messages = WireGuardNetlink.setDevice(family: 0x1d, interface: "wg0", update: update)
        #expect(messages.count == 1)
        let allowedIP: [UInt8] = u16(28) + u16(0x8000 /* NESTED, index 0 */)
            + u16(6) + u16(1 /* FAMILY */) + u16(2 /* AF_INET */) + [0, 0]
            + u16(8) + u16(2 /* IPADDR */) + [10, 99, 1, 2]
            + u16(5) + u16(3 /* CIDR_MASK */) + [32, 0, 0, 0]
        let peer: [UInt8] = u16(36) + u16(1 /* WGPEER_A_PUBLIC_KEY */) + [UInt8](repeating: 0xbb, count: 32)
            + u16(8) + u16(3 /* WGPEER_A_FLAGS */) + u32(2 /* REPLACE_ALLOWEDIPS */)
            + u16(20) + u16(4 /* WGPEER_A_ENDPOINT */) + u16(2 /* AF_INET */) + [0xca, 0x77] /* 51831 BE */
            + [192, 0, 2, 1] + [UInt8](repeating: 0, count: 8)
            + u16(6) + u16(5 /* PERSISTENT_KEEPALIVE_INTERVAL */) + u16(25) + [0, 0]
            + u16(32) + u16(0x8000 | 9 /* NESTED ALLOWEDIPS */) + allowedIP
        let attributes: [UInt8] = u16(8) + u16(2 /* WGDEVICE_A_IFNAME */) + Array("wg0".utf8) + [0]
            + u16(36) + u16(3 /* PRIVATE_KEY */) + [UInt8](repeating: 0xaa, count: 32)
            + u16(6) + u16(6 /* LISTEN_PORT */) + u16(51830) + [0, 0]
            + u16(8) + u16(7 /* FWMARK */) + u32(0x0100_0000)
            + u16(8) + u16(5 /* FLAGS */) + u32(1 /* REPLACE_PEERS */)
            + u16(UInt16(8 + peer.count)) + u16(0x8000 | 8 /* NESTED PEERS */)
            + u16(UInt16(4 + peer.count)) + u16(0x8000 /* peer 0 */) + peer
        let expected = u32(UInt32(20 + attributes.count)) + u16(0x1d) + u16(0x0005) + u32(10) + u32(0)
            + [1 /* WG_CMD_SET_DEVICE */, 1, 0, 0] + attributes
        #expect(sent(messages[0], sequence: 10) == expected)
    }

    @Test func largeUpdatesSplitWithDeviceFieldsFirstOnly() throws {
        let peers = (0..<40).map { i in PeerUpdate.removing(WireGuardKey(bytes: [UInt8](repeating: UInt8(i), count: 32))!) }
        let messages = WireGuardNetlink.setDevice(family: 0x1d, interface: "wg0",
                                                  update: DeviceUpdate(listenPort: 1, replacePeers: true, peers: peers))
        #expect(messages.count == 3)
        // The listen port (6) and flags (5) attributes only appear in the first message.
        for (index, message) in messages.enumerated() {
            let attributes = try AttributeList(parsing: Array(message.payload.dropFirst(4)))
            #expect((attributes[UInt16(6)] != nil) == (index == 0))
            #expect((attributes[UInt16(5)] != nil) == (index == 0))
        }
    }

    @Test func parsesADeviceDumpAndMergesSplitPeers() throws {
        let key = WireGuardKey(bytes: [UInt8](repeating: 0xbb, count: 32))!
        func allowed(_ a: [UInt8], _ len: UInt8) -> [UInt8] {
            var w = AttributeWriter()
            w.nested(0) { e in
                e.put(1, u16(2))
                e.put(2, a)
                e.putU8(3, len)
            }
            return w.bytes
        }
        func message(first: Bool, allowedIPs: [UInt8]) -> NetlinkMessage {
            var w = AttributeWriter()
            if first {
                w.put(4, [UInt8](repeating: 0xcc, count: 32))
                w.put(6, u16(51830))
                w.putHostU32(7, 7)
            }
            w.nested(8) { list in
                list.nested(0) { p in
                    p.put(1, key.bytes)
                    if first {
                        p.put(4, WireGuardNetlink.sockaddrIn(SocketAddress4("192.0.2.9:4000")!))
                        p.put(6, u32(1_700_000_000) + u32(0) + u32(0) + u32(0))
                        p.put(7, withUnsafeBytes(of: UInt64(10)) { Array($0) })
                        p.put(8, withUnsafeBytes(of: UInt64(20)) { Array($0) })
                    }
                    p.put(9 | 0x8000, allowedIPs)
                }
            }
            return NetlinkMessage(type: 0x1d, flags: 0, payload: [1, 1, 0, 0] + w.bytes)
        }
        let state = try WireGuardNetlink.parseDevice([message(first: true, allowedIPs: allowed([10, 99, 0, 2], 32)),
                                                      message(first: false, allowedIPs: allowed([192, 168, 1, 0], 24))])
        #expect(state.listenPort == 51830 && state.fwmark == 7)
        #expect(state.publicKey == WireGuardKey(bytes: [UInt8](repeating: 0xcc, count: 32)))
        #expect(state.peers.count == 1)
        #expect(state.peers[0].endpoint == SocketAddress4("192.0.2.9:4000"))
        #expect(state.peers[0].allowedIPs == [IPv4Prefix("10.99.0.2/32")!, IPv4Prefix("192.168.1.0/24")!])
        #expect(state.peers[0].lastHandshake == Date(timeIntervalSince1970: 1_700_000_000))
        #expect(state.peers[0].rxBytes == 10 && state.peers[0].txBytes == 20)
    }

    @Test func truncatedDumpsAreRejected() {
        #expect(throws: WireGuardError.self) {
            try WireGuardNetlink.parseDevice([NetlinkMessage(type: 0x1d, flags: 0, payload: [1, 1, 0, 0, 200, 0, 1, 0, 1, 2])])
        }
        #expect(throws: WireGuardError.self) { try WireGuardNetlink.parseDevice([NetlinkMessage(type: 0x1d, flags: 0, payload: [1, 1])]) }
        // A peer without its key.
        #expect(throws: WireGuardError.malformedNetlink(detail: "peer without a public key")) {
            try WireGuardNetlink.parseDevice([NetlinkMessage(type: 0x1d, flags: 0,
                                                             payload: [1, 1, 0, 0] + u16(12) + u16(0x8008) + u16(8) + u16(0x8000) + u16(4) + u16(5))])
        }
    }

    @Test func autoFallsBackToUserspaceWithoutTheKernelModule() throws {
        // Here (no module) the probe fails; where the module exists, auto must pick the kernel.
        let kernel = try? KernelWireGuard()
        let chosen = try WireGuardBackendSelector.make(.auto)
        #expect(chosen.kind == (kernel == nil ? .userspace : .kernel))
        if kernel == nil {
            #expect(throws: WireGuardError.kernelUnsupported) { try WireGuardBackendSelector.make(.kernel) }
        }
    }
}

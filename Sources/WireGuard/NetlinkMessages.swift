import CNetfilter
import Foundation
import Model
import Netlink

/// The WireGuard generic netlink messages (linux/wireguard.h) and the two rtnetlink link messages of a
/// wireguard link (built by the Netlink layer), as `Netlink.NetlinkMessage`
/// values for a `NetlinkConnection` (which adds REQUEST, ACK and the sequence). Pure; golden-byte tested.
enum WireGuardNetlink {
    /// CTRL_CMD_GETFAMILY for "wireguard" to the generic netlink controller: how the family id is found and how
    /// the backend selector learns whether the kernel has WireGuard at all.
    static func getFamily() -> NetlinkMessage {
        var attributes = AttributeWriter()
        attributes.putString(UInt16(CTRL_ATTR_FAMILY_NAME), WG_GENL_NAME)
        return NetlinkMessage(type: UInt16(GENL_ID_CTRL), flags: 0,
                              payload: genericHeader(command: UInt8(CTRL_CMD_GETFAMILY), version: 1) + attributes.bytes)
    }

    /// WG_CMD_GET_DEVICE by interface name; sent as a dump, as `wg` does.
    static func getDevice(family: UInt16, interface: String) -> NetlinkMessage {
        var attributes = AttributeWriter()
        attributes.putString(UInt16(WGDEVICE_A_IFNAME.rawValue), interface)
        return NetlinkMessage(type: family, flags: 0,
                              payload: genericHeader(command: UInt8(WG_CMD_GET_DEVICE.rawValue), version: UInt8(WG_GENL_VERSION))
                                  + attributes.bytes)
    }

    /// Peers per WG_CMD_SET_DEVICE message: keeps each message far below the socket buffer even with the
    /// announcement's maximum of LAN prefixes per peer.
    static let peersPerMessage = 16

    /// WG_CMD_SET_DEVICE messages for `update`. Device fields and REPLACE_PEERS go in the first message only,
    /// the way `wg` splits large configurations.
    static func setDevice(family: UInt16, interface: String, update: DeviceUpdate) -> [NetlinkMessage] {
        var chunks: [[PeerUpdate]] = stride(from: 0, to: update.peers.count, by: peersPerMessage).map {
            Array(update.peers[$0..<min($0 + peersPerMessage, update.peers.count)])
        }
        if chunks.isEmpty { chunks = [[]] }
        return chunks.enumerated().map { index, peers in
            var attributes = AttributeWriter()
            attributes.putString(UInt16(WGDEVICE_A_IFNAME.rawValue), interface)
            if index == 0 {
                if let key = update.privateKey { attributes.put(UInt16(WGDEVICE_A_PRIVATE_KEY.rawValue), key.bytes) }
                if let port = update.listenPort { attributes.put(UInt16(WGDEVICE_A_LISTEN_PORT.rawValue), hostBytes(port)) }
                if let mark = update.fwmark { attributes.putHostU32(UInt16(WGDEVICE_A_FWMARK.rawValue), mark) }
                if update.replacePeers {
                    attributes.putHostU32(UInt16(WGDEVICE_A_FLAGS.rawValue), WGDEVICE_F_REPLACE_PEERS.rawValue)
                }
            }
            if !peers.isEmpty {
                attributes.nested(UInt16(WGDEVICE_A_PEERS.rawValue)) { list in
                    for peer in peers { list.nested(0) { encodePeer(peer, into: &$0) } }
                }
            }
            return NetlinkMessage(type: family, flags: 0,
                                  payload: genericHeader(command: UInt8(WG_CMD_SET_DEVICE.rawValue), version: UInt8(WG_GENL_VERSION))
                                      + attributes.bytes)
        }
    }

    private static func encodePeer(_ peer: PeerUpdate, into writer: inout AttributeWriter) {
        writer.put(UInt16(WGPEER_A_PUBLIC_KEY.rawValue), peer.publicKey.bytes)
        var flags: UInt32 = 0
        if peer.remove { flags |= WGPEER_F_REMOVE_ME.rawValue }
        if peer.replaceAllowedIPs && !peer.remove { flags |= WGPEER_F_REPLACE_ALLOWEDIPS.rawValue }
        if flags != 0 { writer.putHostU32(UInt16(WGPEER_A_FLAGS.rawValue), flags) }
        guard !peer.remove else { return }
        if let endpoint = peer.endpoint { writer.put(UInt16(WGPEER_A_ENDPOINT.rawValue), sockaddrIn(endpoint)) }
        if let keepalive = peer.persistentKeepalive {
            writer.put(UInt16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL.rawValue), hostBytes(keepalive))
        }
        if !peer.allowedIPs.isEmpty {
            writer.nested(UInt16(WGPEER_A_ALLOWEDIPS.rawValue)) { list in
                for prefix in peer.allowedIPs {
                    list.nested(0) { entry in
                        entry.put(UInt16(WGALLOWEDIP_A_FAMILY.rawValue), hostBytes(UInt16(AF_INET)))
                        entry.put(UInt16(WGALLOWEDIP_A_IPADDR.rawValue), prefix.network.bytes)
                        entry.putU8(UInt16(WGALLOWEDIP_A_CIDR_MASK.rawValue), prefix.length)
                    }
                }
            }
        }
    }

    /// struct genlmsghdr: cmd, version, reserved.
    static func genericHeader(command: UInt8, version: UInt8) -> [UInt8] { [command, version, 0, 0] }

    /// struct sockaddr_in: family (host order), port and address (network order), 8 zero bytes.
    static func sockaddrIn(_ address: SocketAddress4) -> [UInt8] {
        hostBytes(UInt16(AF_INET)) + [UInt8(address.port >> 8), UInt8(address.port & 0xff)] + address.address.bytes
            + [UInt8](repeating: 0, count: 8)
    }

    /// The family id in a CTRL_CMD_GETFAMILY reply.
    static func familyID(from replies: [NetlinkMessage]) throws(WireGuardError) -> UInt16 {
        for reply in replies where reply.payload.count >= 4 {
            let attributes = try parse(Array(reply.payload.dropFirst(4)))
            if let id = attributes[UInt16(CTRL_ATTR_FAMILY_ID)], id.value.count >= 2 { return hostU16(id.value) }
        }
        throw .malformedNetlink(detail: "family reply without CTRL_ATTR_FAMILY_ID")
    }

    /// Folds the messages of a GET_DEVICE dump into a state. A peer split across messages (same public key
    /// as the last one) is merged, as linux/wireguard.h asks receivers to do.
    static func parseDevice(_ messages: [NetlinkMessage]) throws(WireGuardError) -> InterfaceState {
        var state = InterfaceState(publicKey: nil, listenPort: 0, fwmark: 0, peers: [])
        for message in messages {
            guard message.payload.count >= 4 else { throw .malformedNetlink(detail: "generic netlink header missing") }
            for attribute in try parse(Array(message.payload.dropFirst(4))).attributes {
                switch UInt32(attribute.type) {
                case WGDEVICE_A_PUBLIC_KEY.rawValue: state.publicKey = WireGuardKey(bytes: attribute.value)
                case WGDEVICE_A_LISTEN_PORT.rawValue: state.listenPort = hostU16(attribute.value)
                case WGDEVICE_A_FWMARK.rawValue: state.fwmark = attribute.hostU32 ?? 0
                case WGDEVICE_A_PEERS.rawValue:
                    for entry in try parse(attribute.value).attributes {
                        let peer = try parsePeer(entry.value)
                        if let last = state.peers.last, last.publicKey == peer.publicKey {
                            state.peers[state.peers.count - 1].allowedIPs += peer.allowedIPs
                        } else {
                            state.peers.append(peer)
                        }
                    }
                default: continue
                }
            }
        }
        return state
    }

    private static func parsePeer(_ bytes: [UInt8]) throws(WireGuardError) -> PeerState {
        var key: WireGuardKey?
        var peer = PeerState(publicKey: WireGuardKey(bytes: [UInt8](repeating: 0, count: 32))!)
        for attribute in try parse(bytes).attributes {
            let raw = attribute.value
            switch UInt32(attribute.type) {
            case WGPEER_A_PUBLIC_KEY.rawValue: key = WireGuardKey(bytes: raw)
            case WGPEER_A_ENDPOINT.rawValue:
                if raw.count >= 8, hostU16(raw) == UInt16(AF_INET), let address = IPv4Address(bytes: raw[4..<8]) {
                    peer.endpoint = SocketAddress4(address, port: UInt16(raw[2]) << 8 | UInt16(raw[3]))
                }
            case WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL.rawValue: peer.persistentKeepalive = hostU16(raw)
            case WGPEER_A_LAST_HANDSHAKE_TIME.rawValue:
                // struct __kernel_timespec: two s64.
                guard raw.count == 16 else { throw .malformedNetlink(detail: "handshake time of \(raw.count) bytes") }
                let seconds = Int64(bitPattern: hostU64(Array(raw[0..<8])))
                let nanoseconds = hostU64(Array(raw[8..<16]))
                if seconds != 0 || nanoseconds != 0 {
                    peer.lastHandshake = Date(timeIntervalSince1970: Double(seconds) + Double(nanoseconds) / 1e9)
                }
            case WGPEER_A_RX_BYTES.rawValue: peer.rxBytes = hostU64(raw)
            case WGPEER_A_TX_BYTES.rawValue: peer.txBytes = hostU64(raw)
            case WGPEER_A_ALLOWEDIPS.rawValue:
                for entry in try parse(raw).attributes {
                    let fields = try parse(entry.value)
                    guard let family = fields[UInt16(WGALLOWEDIP_A_FAMILY.rawValue)], hostU16(family.value) == UInt16(AF_INET),
                          let address = fields[UInt16(WGALLOWEDIP_A_IPADDR.rawValue)].flatMap({ IPv4Address(bytes: $0.value) }),
                          let length = fields[UInt16(WGALLOWEDIP_A_CIDR_MASK.rawValue)]?.u8, length <= 32 else { continue }
                    peer.allowedIPs.append(IPv4Prefix(address, length: length))
                }
            default: continue
            }
        }
        guard let key else { throw .malformedNetlink(detail: "peer without a public key") }
        peer.publicKey = key
        return peer
    }

    private static func parse(_ bytes: [UInt8]) throws(WireGuardError) -> AttributeList {
        do {
            return try AttributeList(parsing: bytes)
        } catch {
            throw .netlink(error)
        }
    }
}

/// The rtnetlink link messages of the WireGuard layer (addresses and link state come from `Netlink`).
enum WireGuardLinks {
    /// RTM_NEWLINK, CREATE|EXCL, kind "wireguard": what `ip link add NAME type wireguard` sends.
    static func create(name: String) -> NetlinkMessage { RouteNetlink.createLinkMessage(name: name, kind: "wireguard") }

    /// RTM_DELLINK by name: `ip link del NAME`.
    static func delete(name: String) -> NetlinkMessage { RouteNetlink.deleteLinkMessage(name: name) }

    /// Deletes a link by name over a fresh rtnetlink socket; no error when it is already gone.
    static func deleteLink(named name: String) throws(WireGuardError) {
        do {
            try NetlinkConnection(.route).perform([NetlinkRequest(delete(name: name), "delete link \(name)")])
        } catch where error.errno == ENODEV {
            return
        } catch {
            throw .netlink(error)
        }
    }
}

func hostBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value) { Array($0) }
}

func hostU16(_ bytes: [UInt8]) -> UInt16 {
    bytes.count >= 2 ? UInt16(bytes[0]) | UInt16(bytes[1]) << 8 : 0
}

func hostU64(_ bytes: [UInt8]) -> UInt64 {
    bytes.count >= 8 ? bytes[0..<8].reversed().reduce(0) { $0 << 8 | UInt64($1) } : 0
}

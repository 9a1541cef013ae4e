import CNetfilter
import Foundation
import Model

/// Builds netlink attribute streams (struct nlattr: u16 length, u16 type, payload padded to 4 bytes).
/// Host byte order, as netlink wants, except where a field says network order.
struct AttributeWriter {
    var bytes: [UInt8] = []

    mutating func append(_ type: UInt16, _ payload: [UInt8]) {
        appendHost(UInt16(4 + payload.count))
        appendHost(type)
        bytes += payload
        bytes += [UInt8](repeating: 0, count: NetlinkMessage.padding(payload.count))
    }

    mutating func append(_ type: UInt16, u8 value: UInt8) { append(type, [value]) }
    mutating func append(_ type: UInt16, u16 value: UInt16) { append(type, hostBytes(value)) }
    mutating func append(_ type: UInt16, u32 value: UInt32) { append(type, hostBytes(value)) }
    /// A NUL-terminated string (NLA_NUL_STRING / NLA_STRING as iproute2 sends it).
    mutating func append(_ type: UInt16, string: String) { append(type, Array(string.utf8) + [0]) }

    /// A nested attribute. NLA_F_NESTED is set by default, as libmnl (and so `wg`) does; iproute2 leaves it
    /// off for rtnetlink, and we match it there byte for byte.
    mutating func nest(_ type: UInt16, flagged: Bool = true, _ body: (inout AttributeWriter) -> Void) {
        var inner = AttributeWriter()
        body(&inner)
        append(flagged ? type | UInt16(NLA_F_NESTED) : type, inner.bytes)
    }

    private mutating func appendHost<T: FixedWidthInteger>(_ value: T) { bytes += hostBytes(value) }
}

func hostBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value) { Array($0) }
}

/// One netlink message: header (struct nlmsghdr), a fixed family header, attributes.
enum NetlinkMessage {
    static let headerLength = 16

    static func padding(_ count: Int) -> Int { (4 - count % 4) % 4 }

    static func build(type: UInt16, flags: UInt16, sequence: UInt32, header: [UInt8], attributes: [UInt8]) -> [UInt8] {
        var body = header
        body += [UInt8](repeating: 0, count: padding(header.count))
        body += attributes
        var message = hostBytes(UInt32(headerLength + body.count))
        message += hostBytes(type)
        message += hostBytes(flags)
        message += hostBytes(sequence)
        message += hostBytes(UInt32(0))
        return message + body
    }

    /// struct genlmsghdr: cmd, version, reserved.
    static func genericHeader(command: UInt8, version: UInt8) -> [UInt8] { [command, version, 0, 0] }
}

/// A parsed attribute: its type (without the NESTED/BYTEORDER bits) and payload.
struct Attribute {
    let type: UInt16
    let payload: ArraySlice<UInt8>

    var u8: UInt8? { payload.count >= 1 ? payload[payload.startIndex] : nil }
    var u16: UInt16? { readHost(UInt16.self) }
    var u32: UInt32? { readHost(UInt32.self) }
    var u64: UInt64? { readHost(UInt64.self) }
    var string: String? {
        let bytes = payload.prefix { $0 != 0 }
        return String(validating: bytes, as: UTF8.self)
    }

    private func readHost<T: FixedWidthInteger>(_: T.Type) -> T? {
        guard payload.count >= MemoryLayout<T>.size else { return nil }
        var value: T = 0
        withUnsafeMutableBytes(of: &value) { $0.copyBytes(from: payload.prefix(MemoryLayout<T>.size)) }
        return value
    }

    /// Parses an attribute stream; every length is checked against what remains.
    static func parse(_ bytes: ArraySlice<UInt8>) throws(WireGuardError) -> [Attribute] {
        var result: [Attribute] = []
        var index = bytes.startIndex
        while bytes.endIndex - index >= 4 {
            let length = Int(UInt16(bytes[index]) | UInt16(bytes[index + 1]) << 8)
            let type = (UInt16(bytes[index + 2]) | UInt16(bytes[index + 3]) << 8) & 0x3fff  // NLA_TYPE_MASK: drop NLA_F_NESTED and NLA_F_NET_BYTEORDER
            guard length >= 4, length <= bytes.endIndex - index else {
                throw .malformedNetlink(detail: "attribute length \(length) exceeds the message")
            }
            result.append(Attribute(type: type, payload: bytes[(index + 4)..<(index + length)]))
            index += min(length + NetlinkMessage.padding(length), bytes.endIndex - index)
        }
        return result
    }
}

/// The WireGuard generic netlink messages (linux/wireguard.h), built as bytes. Pure; golden-byte tested.
enum WireGuardNetlink {
    /// CTRL_CMD_GETFAMILY for "wireguard" to the generic netlink controller: how the family id is found and how
    /// the backend selector learns whether the kernel has WireGuard at all.
    static func getFamily(sequence: UInt32) -> [UInt8] {
        var attributes = AttributeWriter()
        attributes.append(UInt16(CTRL_ATTR_FAMILY_NAME), string: WG_GENL_NAME)
        return NetlinkMessage.build(type: UInt16(GENL_ID_CTRL), flags: UInt16(NLM_F_REQUEST | NLM_F_ACK),
                                    sequence: sequence,
                                    header: NetlinkMessage.genericHeader(command: UInt8(CTRL_CMD_GETFAMILY), version: 1),
                                    attributes: attributes.bytes)
    }

    /// WG_CMD_GET_DEVICE as a dump by interface name.
    static func getDevice(family: UInt16, interface: String, sequence: UInt32) -> [UInt8] {
        var attributes = AttributeWriter()
        attributes.append(UInt16(WGDEVICE_A_IFNAME.rawValue), string: interface)
        return NetlinkMessage.build(type: family, flags: UInt16(NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP),
                                    sequence: sequence,
                                    header: NetlinkMessage.genericHeader(command: UInt8(WG_CMD_GET_DEVICE.rawValue),
                                                                         version: UInt8(WG_GENL_VERSION)),
                                    attributes: attributes.bytes)
    }

    /// Peers per WG_CMD_SET_DEVICE message: keeps each message far below the socket buffer even with the
    /// announcement's maximum of LAN prefixes per peer.
    static let peersPerMessage = 16

    /// WG_CMD_SET_DEVICE messages for `update`. Device fields and REPLACE_PEERS go in the first message only,
    /// the way `wg` splits large configurations.
    static func setDevice(family: UInt16, interface: String, update: DeviceUpdate, firstSequence: UInt32) -> [[UInt8]] {
        var chunks: [[PeerUpdate]] = stride(from: 0, to: update.peers.count, by: peersPerMessage).map {
            Array(update.peers[$0..<min($0 + peersPerMessage, update.peers.count)])
        }
        if chunks.isEmpty { chunks = [[]] }
        return chunks.enumerated().map { index, peers in
            var attributes = AttributeWriter()
            attributes.append(UInt16(WGDEVICE_A_IFNAME.rawValue), string: interface)
            if index == 0 {
                if let key = update.privateKey { attributes.append(UInt16(WGDEVICE_A_PRIVATE_KEY.rawValue), key.bytes) }
                if let port = update.listenPort { attributes.append(UInt16(WGDEVICE_A_LISTEN_PORT.rawValue), u16: port) }
                if let mark = update.fwmark { attributes.append(UInt16(WGDEVICE_A_FWMARK.rawValue), u32: mark) }
                if update.replacePeers {
                    attributes.append(UInt16(WGDEVICE_A_FLAGS.rawValue), u32: WGDEVICE_F_REPLACE_PEERS.rawValue)
                }
            }
            if !peers.isEmpty {
                attributes.nest(UInt16(WGDEVICE_A_PEERS.rawValue)) { list in
                    for peer in peers { list.nest(0) { encodePeer(peer, into: &$0) } }
                }
            }
            return NetlinkMessage.build(type: family, flags: UInt16(NLM_F_REQUEST | NLM_F_ACK),
                                        sequence: firstSequence &+ UInt32(index),
                                        header: NetlinkMessage.genericHeader(command: UInt8(WG_CMD_SET_DEVICE.rawValue),
                                                                             version: UInt8(WG_GENL_VERSION)),
                                        attributes: attributes.bytes)
        }
    }

    private static func encodePeer(_ peer: PeerUpdate, into writer: inout AttributeWriter) {
        writer.append(UInt16(WGPEER_A_PUBLIC_KEY.rawValue), peer.publicKey.bytes)
        var flags: UInt32 = 0
        if peer.remove { flags |= WGPEER_F_REMOVE_ME.rawValue }
        if peer.replaceAllowedIPs && !peer.remove { flags |= WGPEER_F_REPLACE_ALLOWEDIPS.rawValue }
        if flags != 0 { writer.append(UInt16(WGPEER_A_FLAGS.rawValue), u32: flags) }
        guard !peer.remove else { return }
        if let endpoint = peer.endpoint { writer.append(UInt16(WGPEER_A_ENDPOINT.rawValue), sockaddrIn(endpoint)) }
        if let keepalive = peer.persistentKeepalive {
            writer.append(UInt16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL.rawValue), u16: keepalive)
        }
        if !peer.allowedIPs.isEmpty {
            writer.nest(UInt16(WGPEER_A_ALLOWEDIPS.rawValue)) { list in
                for prefix in peer.allowedIPs {
                    list.nest(0) { entry in
                        entry.append(UInt16(WGALLOWEDIP_A_FAMILY.rawValue), u16: UInt16(AF_INET))
                        entry.append(UInt16(WGALLOWEDIP_A_IPADDR.rawValue), prefix.network.bytes)
                        entry.append(UInt16(WGALLOWEDIP_A_CIDR_MASK.rawValue), u8: prefix.length)
                    }
                }
            }
        }
    }

    /// struct sockaddr_in: family (host order), port and address (network order), 8 zero bytes.
    static func sockaddrIn(_ address: SocketAddress4) -> [UInt8] {
        hostBytes(UInt16(AF_INET)) + [UInt8(address.port >> 8), UInt8(address.port & 0xff)] + address.address.bytes
            + [UInt8](repeating: 0, count: 8)
    }

    /// Folds the attributes of a GET_DEVICE dump (one or more messages) into a state. A peer split across
    /// messages (same public key as the last one) is merged, as linux/wireguard.h asks receivers to do.
    static func parseDevice(_ messages: [ArraySlice<UInt8>]) throws(WireGuardError) -> InterfaceState {
        var state = InterfaceState(publicKey: nil, listenPort: 0, fwmark: 0, peers: [])
        for payload in messages {
            guard payload.count >= 4 else { throw .malformedNetlink(detail: "generic netlink header missing") }
            for attribute in try Attribute.parse(payload.dropFirst(4)) {
                switch UInt32(attribute.type) {
                case WGDEVICE_A_PUBLIC_KEY.rawValue: state.publicKey = WireGuardKey(bytes: attribute.payload)
                case WGDEVICE_A_LISTEN_PORT.rawValue: state.listenPort = attribute.u16 ?? 0
                case WGDEVICE_A_FWMARK.rawValue: state.fwmark = attribute.u32 ?? 0
                case WGDEVICE_A_PEERS.rawValue:
                    for entry in try Attribute.parse(attribute.payload) {
                        let peer = try parsePeer(entry.payload)
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

    private static func parsePeer(_ bytes: ArraySlice<UInt8>) throws(WireGuardError) -> PeerState {
        var key: WireGuardKey?
        var peer = PeerState(publicKey: WireGuardKey(bytes: [UInt8](repeating: 0, count: 32))!)
        for attribute in try Attribute.parse(bytes) {
            switch UInt32(attribute.type) {
            case WGPEER_A_PUBLIC_KEY.rawValue: key = WireGuardKey(bytes: attribute.payload)
            case WGPEER_A_ENDPOINT.rawValue:
                let raw = Array(attribute.payload)
                if raw.count >= 8, UInt16(raw[0]) | UInt16(raw[1]) << 8 == UInt16(AF_INET),
                   let address = IPv4Address(bytes: raw[4..<8]) {
                    peer.endpoint = SocketAddress4(address, port: UInt16(raw[2]) << 8 | UInt16(raw[3]))
                }
            case WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL.rawValue: peer.persistentKeepalive = attribute.u16 ?? 0
            case WGPEER_A_LAST_HANDSHAKE_TIME.rawValue:
                // struct __kernel_timespec: two s64.
                let raw = Array(attribute.payload)
                guard raw.count == 16 else { throw .malformedNetlink(detail: "handshake time of \(raw.count) bytes") }
                let seconds = Attribute(type: 0, payload: raw[0..<8]).u64 ?? 0
                let nanoseconds = Attribute(type: 0, payload: raw[8..<16]).u64 ?? 0
                if seconds != 0 || nanoseconds != 0 {
                    peer.lastHandshake = Date(timeIntervalSince1970: Double(Int64(bitPattern: seconds))
                                              + Double(nanoseconds) / 1e9)
                }
            case WGPEER_A_RX_BYTES.rawValue: peer.rxBytes = attribute.u64 ?? 0
            case WGPEER_A_TX_BYTES.rawValue: peer.txBytes = attribute.u64 ?? 0
            case WGPEER_A_ALLOWEDIPS.rawValue:
                for entry in try Attribute.parse(attribute.payload) {
                    var family: UInt16?, address: IPv4Address?, length: UInt8?
                    for field in try Attribute.parse(entry.payload) {
                        switch UInt32(field.type) {
                        case WGALLOWEDIP_A_FAMILY.rawValue: family = field.u16
                        case WGALLOWEDIP_A_IPADDR.rawValue: address = IPv4Address(bytes: field.payload)
                        case WGALLOWEDIP_A_CIDR_MASK.rawValue: length = field.u8
                        default: continue
                        }
                    }
                    if family == UInt16(AF_INET), let address, let length, length <= 32 {
                        peer.allowedIPs.append(IPv4Prefix(address, length: length))
                    }
                }
            default: continue
            }
        }
        guard let key else { throw .malformedNetlink(detail: "peer without a public key") }
        peer.publicKey = key
        return peer
    }
}

/// The rtnetlink messages the WireGuard layer needs: create/delete a link, bring it up, add an address.
enum RouteNetlink {
    /// struct ifinfomsg: family, pad, type, index, flags, change.
    static func ifinfo(index: Int32 = 0, flags: UInt32 = 0, change: UInt32 = 0) -> [UInt8] {
        [UInt8(AF_UNSPEC), 0] + hostBytes(UInt16(0)) + hostBytes(index) + hostBytes(flags) + hostBytes(change)
    }

    /// RTM_NEWLINK, CREATE|EXCL, kind "wireguard": `ip link add NAME type wireguard`.
    static func createWireGuardLink(name: String, sequence: UInt32) -> [UInt8] {
        var attributes = AttributeWriter()
        attributes.append(UInt16(IFLA_IFNAME), string: name)
        attributes.nest(UInt16(IFLA_LINKINFO), flagged: false) {
            // iproute2 sends the kind without a terminating NUL.
            $0.append(UInt16(IFLA_INFO_KIND), Array("wireguard".utf8))
        }
        return NetlinkMessage.build(type: UInt16(RTM_NEWLINK),
                                    flags: UInt16(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL),
                                    sequence: sequence, header: ifinfo(), attributes: attributes.bytes)
    }

    /// RTM_DELLINK by name: `ip link del NAME`.
    static func deleteLink(name: String, sequence: UInt32) -> [UInt8] {
        var attributes = AttributeWriter()
        attributes.append(UInt16(IFLA_IFNAME), string: name)
        return NetlinkMessage.build(type: UInt16(RTM_DELLINK), flags: UInt16(NLM_F_REQUEST | NLM_F_ACK),
                                    sequence: sequence, header: ifinfo(), attributes: attributes.bytes)
    }

    /// RTM_NEWLINK setting IFF_UP: `ip link set NAME up`.
    static func setUp(index: Int32, sequence: UInt32) -> [UInt8] {
        NetlinkMessage.build(type: UInt16(RTM_NEWLINK), flags: UInt16(NLM_F_REQUEST | NLM_F_ACK), sequence: sequence,
                             header: ifinfo(index: index, flags: UInt32(IFF_UP), change: UInt32(IFF_UP)),
                             attributes: [])
    }

    /// RTM_NEWADDR, CREATE|REPLACE (idempotent): `ip addr replace ADDR/LEN dev NAME`.
    static func addAddress(_ address: IPv4Address, prefixLength: UInt8, index: Int32, sequence: UInt32) -> [UInt8] {
        // struct ifaddrmsg: family, prefixlen, flags, scope, index.
        let header: [UInt8] = [UInt8(AF_INET), prefixLength, 0, UInt8(RT_SCOPE_UNIVERSE.rawValue)] + hostBytes(UInt32(bitPattern: index))
        var attributes = AttributeWriter()
        attributes.append(UInt16(IFA_LOCAL), address.bytes)
        attributes.append(UInt16(IFA_ADDRESS), address.bytes)
        return NetlinkMessage.build(type: UInt16(RTM_NEWADDR),
                                    flags: UInt16(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE),
                                    sequence: sequence, header: header, attributes: attributes.bytes)
    }
}

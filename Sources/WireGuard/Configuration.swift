import Foundation
import Model

/// What we want a WireGuard interface to be. Both backends take this same value.
///
/// Only IPv4 endpoints and allowed IPs: the overlay and every LAN prefix are IPv4 (see DESIGN.md).
public struct InterfaceConfiguration: Hashable, Sendable {
    public var privateKey: WireGuardKey
    public var listenPort: UInt16
    /// The socket mark of the encrypted UDP (0 = none). Mesh puts the uplink slot in it (`Conventions.uplinkMark`).
    public var fwmark: UInt32
    public var peers: [PeerConfiguration]

    public init(privateKey: WireGuardKey, listenPort: UInt16, fwmark: UInt32 = 0, peers: [PeerConfiguration] = []) {
        self.privateKey = privateKey
        self.listenPort = listenPort
        self.fwmark = fwmark
        self.peers = peers
    }
}

/// One peer as we configure it.
public struct PeerConfiguration: Hashable, Sendable {
    public var publicKey: WireGuardKey
    public var endpoint: SocketAddress4?
    public var allowedIPs: [IPv4Prefix]
    /// Seconds between keepalives; 0 disables them.
    public var persistentKeepalive: UInt16

    public init(publicKey: WireGuardKey, endpoint: SocketAddress4?, allowedIPs: [IPv4Prefix],
                persistentKeepalive: UInt16 = 25) {
        self.publicKey = publicKey
        self.endpoint = endpoint
        self.allowedIPs = allowedIPs
        self.persistentKeepalive = persistentKeepalive
    }
}

/// What an interface reports: configuration plus liveness (handshake time, byte counters).
public struct InterfaceState: Hashable, Sendable {
    public var publicKey: WireGuardKey?
    public var listenPort: UInt16
    public var fwmark: UInt32
    public var peers: [PeerState]

    public init(publicKey: WireGuardKey?, listenPort: UInt16, fwmark: UInt32, peers: [PeerState]) {
        self.publicKey = publicKey
        self.listenPort = listenPort
        self.fwmark = fwmark
        self.peers = peers
    }

    public func peer(_ key: WireGuardKey) -> PeerState? { peers.first { $0.publicKey == key } }
}

/// One peer as the interface reports it. IPv6 endpoints and allowed IPs are not represented.
public struct PeerState: Hashable, Sendable {
    public var publicKey: WireGuardKey
    public var endpoint: SocketAddress4?
    public var allowedIPs: [IPv4Prefix]
    public var persistentKeepalive: UInt16
    /// nil until a handshake has completed.
    public var lastHandshake: Date?
    public var rxBytes: UInt64
    public var txBytes: UInt64

    public init(publicKey: WireGuardKey, endpoint: SocketAddress4? = nil, allowedIPs: [IPv4Prefix] = [],
                persistentKeepalive: UInt16 = 0, lastHandshake: Date? = nil, rxBytes: UInt64 = 0,
                txBytes: UInt64 = 0) {
        self.publicKey = publicKey
        self.endpoint = endpoint
        self.allowedIPs = allowedIPs
        self.persistentKeepalive = persistentKeepalive
        self.lastHandshake = lastHandshake
        self.rxBytes = rxBytes
        self.txBytes = txBytes
    }
}

/// A change to apply to an interface, in the vocabulary both WireGuard configuration protocols share
/// (UAPI `set=1` and genetlink WG_CMD_SET_DEVICE). Fields left nil are not touched.
public struct DeviceUpdate: Hashable, Sendable {
    public var privateKey: WireGuardKey?
    public var listenPort: UInt16?
    public var fwmark: UInt32?
    /// Remove every peer not listed below.
    public var replacePeers: Bool
    public var peers: [PeerUpdate]

    public init(privateKey: WireGuardKey? = nil, listenPort: UInt16? = nil, fwmark: UInt32? = nil,
                replacePeers: Bool = false, peers: [PeerUpdate] = []) {
        self.privateKey = privateKey
        self.listenPort = listenPort
        self.fwmark = fwmark
        self.replacePeers = replacePeers
        self.peers = peers
    }

    /// The full configuration, replacing whatever the interface had.
    public init(replacingWith config: InterfaceConfiguration) {
        self.init(privateKey: config.privateKey, listenPort: config.listenPort, fwmark: config.fwmark,
                  replacePeers: true, peers: config.peers.map { PeerUpdate(setting: $0) })
    }
}

/// A change to one peer. Listing the same key first with `remove` and then with a configuration creates a
/// fresh peer in one operation, which clears wireguard-go's 5 s handshake rate limit after an endpoint change.
public struct PeerUpdate: Hashable, Sendable {
    public var publicKey: WireGuardKey
    public var remove: Bool
    public var endpoint: SocketAddress4?
    public var persistentKeepalive: UInt16?
    /// Replace the peer's allowed IPs with `allowedIPs` (otherwise they are added).
    public var replaceAllowedIPs: Bool
    public var allowedIPs: [IPv4Prefix]

    public init(publicKey: WireGuardKey, remove: Bool = false, endpoint: SocketAddress4? = nil,
                persistentKeepalive: UInt16? = nil, replaceAllowedIPs: Bool = false, allowedIPs: [IPv4Prefix] = []) {
        self.publicKey = publicKey
        self.remove = remove
        self.endpoint = endpoint
        self.persistentKeepalive = persistentKeepalive
        self.replaceAllowedIPs = replaceAllowedIPs
        self.allowedIPs = allowedIPs
    }

    /// Sets the peer to exactly `config` (allowed IPs replaced).
    public init(setting config: PeerConfiguration) {
        self.init(publicKey: config.publicKey, endpoint: config.endpoint,
                  persistentKeepalive: config.persistentKeepalive, replaceAllowedIPs: true,
                  allowedIPs: config.allowedIPs)
    }

    public static func removing(_ key: WireGuardKey) -> PeerUpdate { PeerUpdate(publicKey: key, remove: true) }
}

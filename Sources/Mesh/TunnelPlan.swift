import Foundation
import Model
import WireGuard

/// Which local uplink talks to which remote endpoint.
public enum PathPairing: String, Sendable, CaseIterable {
    /// Local uplink i pairs with each remote site's endpoint of the same label. One interface per uplink.
    case sameLabel = "same-label"
    /// Every local uplink pairs with every remote endpoint. One interface per (local uplink, remote endpoint
    /// index). All sites of a mesh must use the same pairing.
    case allPairs = "all-pairs"
}

/// The naming and numbering scheme of tunnels (docs/MESH.md "Interfaces, ports and marks").
public struct TunnelSettings: Sendable, Equatable {
    /// `--interface`: interface names are this prefix plus a suffix; unique per site machine-wide
    /// (wireguard-go's UAPI sockets are global).
    public var interfacePrefix: String
    /// `--listen-port`: the first tunnel's port. Same-label: uplink slot s (1-based) listens on
    /// listenPort + 10 (s - 1): 51820, 51830, ... 51960. All-pairs: slot s owns the block starting at
    /// listenPort + 200 + 10 (s - 1) (52020, 52030, ...), pair j listening on block + j. Either way the
    /// ports 51821-51823 (discovery, probes, bandwidth tests) stay free.
    public var listenPort: UInt16
    public var pairing: PathPairing
    public var persistentKeepalive: UInt16

    public init(interfacePrefix: String = "wg-sdwan", listenPort: UInt16 = Conventions.wireGuardPort, pairing: PathPairing = .sameLabel,
                persistentKeepalive: UInt16 = 25) {
        self.interfacePrefix = interfacePrefix
        self.listenPort = listenPort
        self.pairing = pairing
        self.persistentKeepalive = persistentKeepalive
    }

    /// Uplink slots are 1...15 (`Conventions.uplinkSlots`: the mark field has 4 bits).
    public static let maxUplinks = Conventions.uplinkSlots.count

    /// The socket mark of the tunnels of uplink `slot`: the steering layer routes it by that uplink
    /// (`Conventions.uplinkMark`).
    public static func fwmark(slot: UInt8) -> UInt32 { Conventions.uplinkMark(slot: slot) }

    /// The port uplink `slot` announces: its interface's (same-label) or its block's base (all-pairs).
    public func listenPort(slot: UInt8) -> UInt16 {
        listenPort &+ (pairing == .allPairs ? 200 : 0) &+ 10 &* UInt16(slot - 1)
    }

    /// `<prefix><slot-1>` (same-label) or `<prefix><slot-1>x<remote endpoint index>` (all-pairs).
    public func interfaceName(slot: UInt8, remoteIndex: Int?) -> String {
        remoteIndex.map { "\(interfacePrefix)\(slot - 1)x\($0)" } ?? "\(interfacePrefix)\(slot - 1)"
    }
}

/// Why a plan could not be made. Each names the input and the fix.
public enum TunnelPlanError: Error, Hashable, CustomStringConvertible {
    case tooManyUplinks(Int)
    case interfaceNameTooLong(String)
    case duplicateLabel(String)

    public var description: String {
        switch self {
        case .tooManyUplinks(let count):
            "\(count) uplinks: at most \(TunnelSettings.maxUplinks) are supported"
        case .interfaceNameTooLong(let name):
            "interface name '\(name)' would be over 15 characters; choose a shorter --interface prefix"
        case .duplicateLabel(let label):
            "two uplinks share the label '\(label)'; give each uplink its own label (--uplink IFACE=LABEL)"
        }
    }
}

/// One WireGuard interface as the plan wants it.
public struct PlannedInterface: Hashable, Sendable {
    public var name: String
    public var uplink: Uplink
    /// 1...15, the uplink's position in `--uplink` order.
    public var slot: UInt8
    public var listenPort: UInt16
    public var fwmark: UInt32
    /// Sorted by public key.
    public var peers: [PeerConfiguration]
}

/// One path: a local uplink, a remote site's endpoint, and the (interface, peer) that carries it.
public struct PlannedPath: Hashable, Sendable {
    public var uplink: Uplink
    public var slot: UInt8
    public var remoteSite: SiteID
    public var remoteName: String
    public var remoteEndpoint: Endpoint
    public var interface: String
    public var peer: WireGuardKey
    /// What the path's routing table should send into `interface`: the remote overlay /32 and LAN prefixes.
    public var destinations: [IPv4Prefix]
    /// Relayed (`RelayPlanner`): the site whose peer on `interface` carries this path's traffic (nil: direct).
    public var relay: SiteID? = nil
    public var relayName: String? = nil

    /// The path's stable name (site, local label, remote label), as the store and steering key paths.
    public var key: PathKey { PathKey(site: remoteSite, localLabel: uplink.label, remoteLabel: remoteEndpoint.label) }
}

/// Desired tunnels: interfaces (with their peers) and the paths they carry. A value: print it, diff it.
public struct TunnelPlan: Hashable, Sendable {
    public var interfaces: [PlannedInterface]
    public var paths: [PlannedPath]

    public init(interfaces: [PlannedInterface], paths: [PlannedPath]) {
        self.interfaces = interfaces
        self.paths = paths
    }
}

/// Local uplinks x remote sites' endpoints -> tunnels. Pure.
///
/// A WireGuard peer has one endpoint at a time, so two paths to one site never share an (interface, peer):
/// each path has its own interface on our side (one per uplink, or per uplink and remote endpoint index
/// with all-pairs), listening on its own port and marked with its uplink's slot.
public enum TunnelPlanner {
    /// The endpoints this site announces: one per uplink with a known address, in slot order. With
    /// all-pairs, the port is the base of the uplink's block (pair interface j listens on port + j).
    public static func localEndpoints(uplinks: [Uplink], addresses: [String: IPv4Address],
                                      settings: TunnelSettings) -> [Endpoint] {
        uplinks.enumerated().compactMap { index, uplink in
            guard let slot = Conventions.uplinkSlot(position: index) else { return nil }
            return addresses[uplink.interface].map {
                Endpoint(label: uplink.label, address: SocketAddress4($0, port: settings.listenPort(slot: slot)))
            }
        }
    }

    /// `remotes` must not overlap each other (`DiscoveryService.sites` are settled by `PrefixClaims`): WireGuard
    /// allows one peer per allowed IP on an interface, and steering refuses overlapping destinations.
    /// `localEndpoints` is what this site announces (from `localEndpoints(...)`): an uplink without an
    /// announced endpoint gets its interface but no peers, since remote sites only add a peer for us on an
    /// endpoint we announce.
    public static func plan(uplinks: [Uplink], localEndpoints: [Endpoint], remotes: [SiteDescription],
                            settings: TunnelSettings) throws(TunnelPlanError) -> TunnelPlan {
        guard uplinks.count <= TunnelSettings.maxUplinks else { throw .tooManyUplinks(uplinks.count) }
        var labels = Set<String>()
        for uplink in uplinks where !labels.insert(uplink.label).inserted { throw .duplicateLabel(uplink.label) }
        let sortedRemotes = remotes.sorted { $0.siteID < $1.siteID }
        var interfaces: [PlannedInterface] = []
        var paths: [PlannedPath] = []

        for (index, uplink) in uplinks.enumerated() {
            guard let slot = Conventions.uplinkSlot(position: index) else { break } // at most maxUplinks: checked above
            // Interfaces of this uplink: key nil = same-label, else the remote endpoint index.
            var byRemoteIndex: [Int?: [PeerConfiguration]] = [:]
            let announcedIndex = localEndpoints.firstIndex { $0.label == uplink.label }
            switch settings.pairing {
            case .sameLabel:
                byRemoteIndex[nil] = []
                for remote in sortedRemotes where announcedIndex != nil {
                    guard let endpoint = remote.endpoints.first(where: { $0.label == uplink.label }) else { continue }
                    let peer = peerConfiguration(remote, endpoint: endpoint.address, settings: settings)
                    byRemoteIndex[nil]!.append(peer)
                    paths.append(path(uplink, slot, remote, endpoint, settings.interfaceName(slot: slot, remoteIndex: nil), peer))
                }
            case .allPairs:
                guard let announcedIndex else { break }
                for remote in sortedRemotes {
                    for (remoteIndex, endpoint) in remote.endpoints.enumerated()
                    where remoteIndex < AnnouncementCodec.maxEndpoints {
                        // Their pair interface for our endpoint listens on their block base + our endpoint's
                        // index in our announcement; ours for theirs on our base + their index.
                        let target = SocketAddress4(endpoint.address.address,
                                                    port: endpoint.address.port &+ UInt16(announcedIndex))
                        let peer = peerConfiguration(remote, endpoint: target, settings: settings)
                        byRemoteIndex[remoteIndex, default: []].append(peer)
                        paths.append(path(uplink, slot, remote, Endpoint(label: endpoint.label, address: target),
                                          settings.interfaceName(slot: slot, remoteIndex: remoteIndex), peer))
                    }
                }
            }
            for (remoteIndex, peers) in byRemoteIndex {
                let name = settings.interfaceName(slot: slot, remoteIndex: remoteIndex)
                guard Uplink.isValidInterfaceName(name) else { throw .interfaceNameTooLong(name) }
                interfaces.append(PlannedInterface(
                    name: name, uplink: uplink, slot: slot,
                    listenPort: settings.listenPort(slot: slot) &+ UInt16(remoteIndex ?? 0),
                    fwmark: TunnelSettings.fwmark(slot: slot),
                    peers: peers.sorted { $0.publicKey.base64 < $1.publicKey.base64 }))
            }
        }
        interfaces.sort { $0.name < $1.name }
        paths.sort { ($0.interface, $0.remoteSite) < ($1.interface, $1.remoteSite) }
        return TunnelPlan(interfaces: interfaces, paths: paths)
    }

    private static func peerConfiguration(_ remote: SiteDescription, endpoint: SocketAddress4,
                                          settings: TunnelSettings) -> PeerConfiguration {
        PeerConfiguration(publicKey: remote.publicKey, endpoint: endpoint, allowedIPs: destinations(remote),
                          persistentKeepalive: settings.persistentKeepalive)
    }

    private static func destinations(_ remote: SiteDescription) -> [IPv4Prefix] {
        [IPv4Prefix(remote.overlay, length: 32)] + remote.lanPrefixes
    }

    private static func path(_ uplink: Uplink, _ slot: UInt8, _ remote: SiteDescription, _ endpoint: Endpoint,
                             _ interface: String, _ peer: PeerConfiguration) -> PlannedPath {
        PlannedPath(uplink: uplink, slot: slot, remoteSite: remote.siteID, remoteName: remote.name,
                    remoteEndpoint: endpoint, interface: interface, peer: remote.publicKey,
                    destinations: destinations(remote))
    }
}

import Foundation
import Mesh
import Model
import Routing
import Store

/// The paths of the current tunnel plan: each path's key, probe name, steering slot and tunnel, and the rows
/// the database keeps of them. A value owned by `SiteRuntime`; no I/O.
struct PathRegistry {
    struct PlannedRoute: Hashable {
        var key: PathKey
        var binding: PathBinding
        var path: PlannedPath
    }

    private var slots = StableNumbering<PathKey>(range: 1...254)  // 255 is the reserved "pinned" mark
    /// The routes steering accepted, by probe name.
    private(set) var paths: [String: PlannedRoute] = [:]

    static func key(of path: PlannedPath) -> PathKey {
        PathKey(site: path.remoteSite, localLabel: path.uplink.label, remoteLabel: path.remoteEndpoint.label)
    }

    /// Every path of `plan` with its slot, by probe name; `unslotted` are the paths no slot was left for.
    mutating func routes(of plan: TunnelPlan) -> (routes: [String: PlannedRoute], unslotted: [PathKey]) {
        let numbers = slots.update(plan.paths.map(Self.key(of:)))
        var routes: [String: PlannedRoute] = [:]
        var unslotted: [PathKey] = []
        for path in plan.paths {
            let key = Self.key(of: path)
            guard let slot = numbers[key] else {
                unslotted.append(key)
                continue
            }
            let name = key.name(siteName: path.remoteName)
            routes[name] = PlannedRoute(key: key, binding: PathBinding(key: key, slot: slot, interface: path.interface),
                                        path: path)
        }
        return (routes, unslotted)
    }

    /// Makes `routes` the current paths; returns the rows that records them: every current path's row, and
    /// a down status for each path that left (its history stays).
    mutating func adopt(_ routes: [String: PlannedRoute], at now: Date = Date()) -> [StoreWrite] {
        var rows: [StoreWrite] = routes.values.sorted { $0.binding.slot < $1.binding.slot }.map { route in
            .path(destination: route.key.site, uplink: route.path.uplink, endpoint: route.path.remoteEndpoint,
                  wgInterface: route.path.interface, at: now)
        }
        for (name, route) in paths.sorted(by: { $0.key < $1.key }) where routes[name] == nil {
            rows.append(.pathState(PathStateWrite(key: route.key, status: .down, score: 0, metrics: nil, at: now)))
        }
        paths = routes
        return rows
    }

    subscript(name: String) -> PlannedRoute? { paths[name] }

    /// The probe names of the paths by local uplink label.
    var namesByUplink: [String: Set<String>] {
        Dictionary(grouping: paths.keys) { paths[$0]!.key.localLabel }.mapValues(Set.init)
    }

    /// The other paths whose probes leave by the same local uplink as `name`.
    func sharingUplink(with name: String) -> [String] {
        guard let label = paths[name]?.key.localLabel else { return [] }
        return paths.filter { $0.key != name && $0.value.key.localLabel == label }.map(\.key).sorted()
    }

    /// Every path leaving by the uplink that carries tunnel `interface`.
    func leavingBy(interface: String) -> [String] {
        guard let label = paths.values.first(where: { $0.binding.interface == interface })?.key.localLabel else { return [] }
        return paths.filter { $0.value.key.localLabel == label }.map(\.key)
    }
}

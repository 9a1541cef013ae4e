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

    private var slots = StableNumbering<PathKey, UInt16>(range: Int(Conventions.pathSlots.lowerBound)...Int(Conventions.pathSlots.upperBound))
    /// The routes steering accepted, by probe name.
    private(set) var paths: [String: PlannedRoute] = [:]
    /// Every path's `paths.id`: the ones the database had at start, and those numbered since (after the
    /// largest). The daemon is the only writer of `paths` (DatabaseLock), so it numbers new paths itself and
    /// never waits for the database to learn an id.
    private var ids: [PathKey: PathID]
    private var nextID: PathID

    init(ids: [PathKey: PathID] = [:]) {
        self.ids = ids
        nextID = (ids.values.max() ?? 0) + 1
    }

    static func key(of path: PlannedPath) -> PathKey {
        PathKey(site: path.remoteSite, localLabel: path.uplink.label, remoteLabel: path.remoteEndpoint.label)
    }

    /// Every path of `plan` with its id and slot, by probe name; `unslotted` are the paths no slot was left for.
    mutating func routes(of plan: TunnelPlan) -> (routes: [String: PlannedRoute], unslotted: [PathKey]) {
        // A path's id names it everywhere (chains, status, metrics), and its slot is the id whenever that slot
        // is free.
        for path in plan.paths where ids[Self.key(of: path)] == nil {
            ids[Self.key(of: path)] = nextID
            nextID += 1
        }
        let ids = self.ids
        let numbers = slots.update(plan.paths.map(Self.key(of:))) { key in ids[key].map(Int.init) }
        var routes: [String: PlannedRoute] = [:]
        var unslotted: [PathKey] = []
        for path in plan.paths {
            let key = Self.key(of: path)
            guard let slot = numbers[key] else {
                unslotted.append(key)
                continue
            }
            let name = key.name(siteName: path.remoteName)
            let summary = "\(path.remoteName) via \(path.uplink.label) (\(path.uplink.interface)) to \(path.remoteEndpoint.label) \(path.remoteEndpoint.address)"
            routes[name] = PlannedRoute(key: key, binding: PathBinding(key: key, id: ids[key], slot: slot,
                                                                       interface: path.interface, summary: summary),
                                        path: path)
        }
        return (routes, unslotted)
    }

    /// Makes `routes` (of `plan`) the current paths; returns the rows that record them: every path of the
    /// plan (with its id), the slots of the routed ones, and a down status for each path that left (its
    /// history stays).
    mutating func adopt(_ routes: [String: PlannedRoute], of plan: TunnelPlan, at now: Date = Date()) -> [StoreWrite] {
        var rows: [StoreWrite] = plan.paths.compactMap { path in
            ids[Self.key(of: path)].map { id in
                .path(id: id, destination: path.remoteSite, uplink: path.uplink, endpoint: path.remoteEndpoint,
                      wgInterface: path.interface, relayVia: path.relayName, at: now)
            }
        }
        rows.append(.pathSlots(Dictionary(routes.values.map { ($0.binding.id, $0.binding.slot) },
                                          uniquingKeysWith: { a, _ in a })))
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

    /// The path to `site` that tunnel `interface` carries (one peer per site on an interface), if any.
    func arriving(through interface: String, from site: SiteID) -> String? {
        paths.filter { $0.value.binding.interface == interface && $0.value.key.site == site }.map(\.key).min()
    }

    /// Every path leaving by the uplink that carries tunnel `interface`.
    func leavingBy(interface: String) -> [String] {
        guard let label = paths.values.first(where: { $0.binding.interface == interface })?.key.localLabel else { return [] }
        return paths.filter { $0.value.key.localLabel == label }.map(\.key)
    }
}

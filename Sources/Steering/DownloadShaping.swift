#if canImport(Glibc)
import Glibc
#endif
import Model
import Netlink

/// The redirect half of download shaping (docs/SHAPING.md, "Download"), over rtnetlink: per shaped uplink an
/// ifb (`patronus-dl<slot>`, no IPv6 addresses, up) and, on every LAN device (an address in one of the
/// plan's LAN prefixes), a clsact egress filter at the uplink's preference whose classic BPF program matches
/// the uplink's mark and redirects to the ifb. The ifb's htb is a `Shaper` like a tunnel's (ShaperInstaller).
/// Never fails steering: problems are reported and the download stays unshaped.
final class DownloadRedirects {
    private let routing: RouteNetlinkClient
    private var wanted: [SteeringPlan.DownloadShaper] = []
    /// LAN devices on which we added the clsact: removed with our last filter.
    private var clsactAdded: Set<Int32> = []

    init(routing: RouteNetlinkClient) { self.routing = routing }

    /// The filter uplink `slot`'s download takes on a LAN device, towards the ifb with index `target`.
    static func filter(slot: UInt8, target: Int32) -> RedirectFilter {
        RedirectFilter(preference: Conventions.downloadFilterPreference(slot: slot),
                       program: ClassicBPFInstruction.markEquals(Conventions.uplinkMark(slot: slot), mask: Conventions.uplinkMarkMask),
                       target: target)
    }

    /// The devices the download leaves by: those with an IPv4 address inside one of `prefixes` (not our
    /// ifbs, not the tunnels).
    static func lanDevices(prefixes: [IPv4Prefix], addresses: [InterfaceAddress], links: [Link], excluding: Set<String>) -> [Link] {
        let indexes = Set(addresses.filter { a in prefixes.contains { $0.contains(IPv4Address(a.address)) } }.map(\.interfaceIndex))
        return links.filter { indexes.contains($0.index) && !excluding.contains($0.name) && !$0.name.hasPrefix(Conventions.downloadDevicePrefix) }
            .sorted { $0.index < $1.index }
    }

    /// What is missing or wrong (empty: intact): the ifbs, and our filters on the LAN devices.
    func differences() throws(NetlinkError) -> [String] {
        try plan().problems
    }

    private struct Work {
        var createIfb: [String] = []
        var raiseIfb: [Int32] = []
        var addClsact: [Int32] = []
        /// (device, preference): delete first (missing target, other program, or not wanted).
        var deleteFilters: [(Int32, UInt16)] = []
        var addFilters: [(Int32, RedirectFilter)] = []
        var deleteIfb: [String] = []
        var problems: [String] = []
    }

    /// Compares the kernel with `wanted` (reads links, addresses, qdiscs and the LAN devices' filters).
    private func plan() throws(NetlinkError) -> Work {
        var w = Work()
        let links = try routing.links()
        let byName = Dictionary(links.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let wantedDevices = Set(wanted.map(\.device))
        for d in wanted {
            guard let ifb = byName[d.device] else {
                w.createIfb.append(d.device)
                w.problems.append("\(d.device) missing")
                continue
            }
            if !ifb.isUp {
                w.raiseIfb.append(ifb.index)
                w.problems.append("\(d.device) down")
            }
        }
        for link in links where link.name.hasPrefix(Conventions.downloadDevicePrefix) && !wantedDevices.contains(link.name) {
            w.deleteIfb.append(link.name)
        }
        let tunnels = Set(wanted.flatMap(\.tunnels))
        let prefixes = Array(Set(wanted.flatMap(\.lanPrefixes)))
        let lans = prefixes.isEmpty ? [] : Self.lanDevices(prefixes: prefixes, addresses: try routing.addresses(), links: links, excluding: tunnels)
        let qdiscs = try routing.qdiscs()
        let withClsact = Set(qdiscs.filter { $0.kind == "clsact" }.map(\.interfaceIndex))
        // Our filters wherever a clsact is (LAN devices that stopped being LAN devices keep none).
        for index in withClsact.sorted() {
            let present: [TCFilterObject]
            do { present = try routing.filters(interface: index).filter { $0.handle != 0 } } catch where error.errno == ENODEV { continue }
            let isLAN = lans.contains { $0.index == index }
            for pref in Set(present.map(\.preference)) where Conventions.downloadFilterPreferences.contains(pref) {
                let slot = UInt8(pref - Conventions.downloadFilterPreferenceBase)
                guard isLAN, let d = wanted.first(where: { $0.slot == slot }), let ifb = byName[d.device] else {
                    w.deleteFilters.append((index, pref))
                    continue
                }
                let want = Self.filter(slot: slot, target: ifb.index)
                let mine = present.filter { $0.preference == pref }
                if mine.count != 1 || mine[0].program != want.program || mine[0].redirectTarget != ifb.index {
                    w.deleteFilters.append((index, pref))
                    w.problems.append("filter \(pref) on #\(index) changed")
                }
            }
        }
        for lan in lans {
            if !withClsact.contains(lan.index) {
                w.addClsact.append(lan.index)
            }
            let present = withClsact.contains(lan.index) ? (try? routing.filters(interface: lan.index)) ?? [] : []
            for d in wanted {
                let pref = Conventions.downloadFilterPreference(slot: d.slot)
                let intact = present.contains { $0.preference == pref && $0.handle != 0 }
                    && !w.deleteFilters.contains { $0.0 == lan.index && $0.1 == pref }
                guard !intact else { continue }
                // The ifb's index is known once it exists; a new one is filtered after its creation.
                w.addFilters.append((lan.index, Self.filter(slot: d.slot, target: byName[d.device]?.index ?? 0)))
                w.problems.append("filter \(pref) missing on \(lan.name)")
            }
        }
        if !wanted.isEmpty && lans.isEmpty {
            w.problems.append("no LAN device (an address in \(prefixes.map(\.description).joined(separator: ", "))) to shape the download towards")
        }
        return w
    }

    /// Makes the kernel hold the ifbs and filters of `downloads`, and none of ours else.
    func converge(_ downloads: [SteeringPlan.DownloadShaper], changes: inout SteeringChanges) {
        wanted = downloads
        do {
            var w = try plan()
            for name in w.createIfb {
                do {
                    try routing.createLink(named: name, kind: "ifb")
                    let link = try routing.link(named: name)
                    try routing.setNoIPv6Addresses(index: link.index)
                    try routing.setLink(index: link.index, up: true)
                    changes.shapersInstalled.append(name)
                } catch {
                    changes.shaperProblems.append("creating \(name): \(error) (does this kernel have ifb, CONFIG_IFB? The download stays unshaped)")
                }
            }
            for index in w.raiseIfb { try routing.setLink(index: index, up: true) }
            if !w.createIfb.isEmpty { w = try plan() } // the new ifbs' indexes for the filters
            for (index, pref) in w.deleteFilters {
                do { try routing.deleteFilters(interface: index, preference: pref) } catch where error.errno == ENOENT || error.errno == ENODEV {}
            }
            for index in w.addClsact {
                do {
                    try routing.qdisc(Qdisc(handle: .clsactHandle, parent: .clsact, kind: .clsact), interface: index, .add)
                    clsactAdded.insert(index)
                } catch where error.errno == EEXIST {}
            }
            for (index, f) in w.addFilters where f.target != 0 {
                do {
                    try routing.trafficControl([NetlinkRequest(TrafficControl.filterMessage(f, interface: index, .replace), "\(f) on #\(index)")])
                } catch {
                    changes.shaperProblems.append("redirecting the download on interface #\(index): \(error) (does this kernel have clsact, cls_bpf and act_mirred? The download stays unshaped)")
                }
            }
            for name in w.deleteIfb {
                do { try routing.deleteLink(named: name) } catch where error.errno == ENODEV {}
                changes.shapersRemoved.append(name)
            }
            // A clsact we added that holds no filter any more goes too.
            for index in clsactAdded.sorted() {
                let left = (try? routing.filters(interface: index)) ?? []
                if left.isEmpty {
                    try? routing.deleteClsact(interface: index)
                    clsactAdded.remove(index)
                }
            }
            if w.problems.contains(where: { $0.hasPrefix("no LAN device") }) {
                changes.shaperProblems += w.problems.filter { $0.hasPrefix("no LAN device") }
            }
        } catch {
            changes.shaperProblems.append("download shaping: \(error) (the download stays unshaped)")
        }
    }
}

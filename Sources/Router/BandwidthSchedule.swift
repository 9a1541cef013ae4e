/// Which path's bandwidth is measured next: each path once when it first comes up, again when a test got no
/// report (at most twice per round), and every path on each re-measurement round. Tests run one at a time
/// per site: trains on several paths at once would share the uplinks and measure each other. A value owned
/// by `SiteRuntime`; paths are named by their probe names.
struct BandwidthSchedule {
    private var measured: Set<String> = []
    private var queue: [String] = []
    private var failures: [String: Int] = [:]

    /// A path came up: queued if it was never measured.
    mutating func pathCameUp(_ name: String) {
        guard !measured.contains(name) else { return }
        measured.insert(name)
        queue.append(name)
    }

    /// A path left the plan: measured again if it comes back.
    mutating func pathRemoved(_ name: String) {
        measured.remove(name)
    }

    /// The next queued path that `exists`, if any.
    mutating func next(exists: (String) -> Bool) -> String? {
        while !queue.isEmpty {
            let name = queue.removeFirst()
            if exists(name) { return name }
        }
        return nil
    }

    /// A test that got no report (its trains or the report lost, e.g. in the burst of start-up tests) is
    /// queued again, at most twice per round, so a path does not wait a whole `--bandwidth-interval` for its
    /// first estimate.
    mutating func testFailed(_ name: String, exists: Bool) {
        let count = failures[name, default: 0] + 1
        failures[name] = count
        if count <= 2, exists, !queue.contains(name) { queue.append(name) }
    }

    /// A new round: every path in `names` is queued (those not queued already).
    mutating func remeasure(_ names: [String]) {
        failures.removeAll()
        for name in names where !queue.contains(name) { queue.append(name) }
    }
}

import Logging
import Model
import Probing
import Routing
import ServiceLifecycle
import Steering
import Synchronization

/// One shaped path as metrics show it.
public struct ShaperSample: Hashable, Sendable {
    public var pathID: Int64
    public var path: String
    public var uplink: String
    public var interface: String
    /// "auto" or the fixed rate ("20M").
    public var mode: String
    /// "upload" (the tunnel's egress) or "download" (the uplink's ifb; no path: `pathID` 0, `path` empty).
    public var direction = "upload"
    public var rateBitsPerSecond: UInt64
    public var queueDelayMs: Double
    public var bands: [ShaperStatistics.Band]
}

/// The shaping service's latest view, shared with the metrics sample (read every 5 s).
public final class ShapingState: Sendable {
    private let samples = Mutex<[ShaperSample]>([])
    public init() {}
    public var current: [ShaperSample] { samples.withLock { $0 } }
    func set(_ value: [ShaperSample]) { samples.withLock { $0 = value } }
}

/// Egress shaping of every tunnel and download shaping of every uplink (docs/SHAPING.md): every `interval`,
/// for each path whose uplink is shaped, the rate comes from `--uplink ...,shape=RATE`, or (auto) from a
/// `ShaperRateController` fed with the path's bandwidth estimate, its probes' recent RTT and what the
/// shaper sent; an uplink's download likewise, from the highest download measured over its paths.
/// `KernelSteering` installs the shapers and changes their rates in place. A shaper without an estimate yet
/// stays off (logged once), as does one that cannot be installed: routing never waits for shaping.
struct ShapingService: Service {
    let steering: KernelSteering
    let runtime: SiteRuntime
    let probes: PathProbeSet
    /// By uplink label; labels not listed are `auto`.
    let modes: [String: ShapingMode]
    /// By uplink label: the download's mode and the uplink's download slot (docs/SHAPING.md, "Download").
    let downloads: [String: ShapingLoop.DownloadSetting]
    /// Where downloads leave to (`--lan`).
    let lanPrefixes: [IPv4Prefix]
    let state: ShapingState
    let logger: Logger
    static let interval = Duration.milliseconds(200)

    func run() async throws {
        try await untilShutdown {
            var loop = ShapingLoop(modes: modes, downloads: downloads, lanPrefixes: lanPrefixes)
            let start = ContinuousClock.now
            while !Task.isCancelled {
                try await Task.sleep(for: Self.interval)
                let elapsed = ContinuousClock.now - start
                let now = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
                let statistics = (try? await steering.shaperStatistics()) ?? []
                let step = loop.step(now: now, bindings: await runtime.pathBindings(), snapshot: probes.snapshot(),
                                     statistics: statistics)
                for line in step.log { logger.notice("shaping: \(line)") }
                for line in step.decisions { logger.debug("shaping: \(line)") }
                do { try await steering.setShapers(step.shapers, downloads: step.downloadShapers) } catch {
                    logger.error("shaping: applying the shapers failed, tunnels stay as they were: \(error)")
                }
                state.set(step.samples)
            }
        }
    }
}

/// The shaping service's decisions, without I/O: which tunnels get which rate, from the bindings, the
/// probers' snapshot and the shapers' statistics. Unit-tested.
struct ShapingLoop {
    let modes: [String: ShapingMode]
    /// The download of one uplink: its mode, and the slot that names its ifb and mark (its position among
    /// `--uplink`, 1-based).
    struct DownloadSetting: Sendable, Hashable {
        var slot: UInt8
        var mode: ShapingMode
    }
    let downloads: [String: DownloadSetting]
    let lanPrefixes: [IPv4Prefix]

    /// The download settings of the `--uplink` list: slot = position (1-based; at most the mark's 15).
    static func downloadSettings(_ uplinks: [Uplink]) -> [String: DownloadSetting] {
        var out: [String: DownloadSetting] = [:]
        for (i, u) in uplinks.enumerated() where out[u.label] == nil {
            guard let slot = Conventions.uplinkSlot(position: i) else { break }
            out[u.label] = DownloadSetting(slot: slot, mode: u.downloadShaping)
        }
        return out
    }
    private var downloadNotices: Set<String> = []
    /// A shaper the loop drives in `auto`: a tunnel's egress, keyed by the path that drives it, or an
    /// uplink's download (its ifb).
    enum ShaperKey: Hashable {
        case upload(path: String)
        case download(uplink: String)
    }
    private var controllers: [ShaperKey: ShaperRateController] = [:]
    private var lastSent: [ShaperKey: (bytes: UInt64, at: Double)] = [:]
    private var lastReplies: [ShaperKey: UInt64] = [:]
    private var waiting: Set<ShaperKey> = []
    /// Per tunnel interface, the path whose measurements drive its one shaper.
    private var drivers: [String: String] = [:]
    /// Per uplink label, the path whose probes give its download shaper the delay signal.
    private var downloadDrivers: [String: String] = [:]
    /// A path's measurement of one direction.
    struct EstimateKey: Hashable {
        var path: String
        var download: Bool
    }
    /// Per path and direction, its bandwidth measurements of the last `estimateWindow` seconds (time, bit/s).
    private var estimates: [EstimateKey: [(at: Double, bps: UInt64)]] = [:]
    /// The ceiling follows the highest measurement of this window, not the latest: a bandwidth test that
    /// ran while the bottleneck was briefly lower (a busy LTE cell) must not cap the rate after it recovers;
    /// the delay signal is what keeps the rate down while the bottleneck is low.
    static let estimateWindow = 600.0

    /// The estimate the shaper of path `name` (its upload, or its share of the uplink's download) works
    /// from: the highest measurement of the window.
    mutating func windowedEstimate(_ name: String, download: Bool = false, measured: UInt64, now: Double) -> UInt64 {
        let key = EstimateKey(path: name, download: download)
        var kept = (estimates[key] ?? []).filter { now - $0.at <= Self.estimateWindow }
        if kept.last?.bps != measured { kept.append((now, measured)) }
        estimates[key] = kept
        return kept.map(\.bps).max() ?? measured
    }

    init(modes: [String: ShapingMode], downloads: [String: DownloadSetting] = [:], lanPrefixes: [IPv4Prefix] = []) {
        self.modes = modes
        self.downloads = downloads
        self.lanPrefixes = lanPrefixes
    }

    /// One shaper per tunnel interface, but an interface carries one path per remote site reached over its
    /// uplink (same-label pairing: `wg-…0` holds the peers of every site for uplink 0). They share the
    /// uplink's upload, and each path's estimate is a lower bound of it: the path with the highest estimate
    /// drives the interface's shaper, and keeps driving it while it is there and measured (no flapping
    /// between paths of similar estimates). Unmeasured interfaces take their first path by name.
    mutating func chooseDrivers(_ bindings: [String: PathBinding], _ snapshot: [String: PathProbeSet.Snapshot]) {
        drivers = Self.drivers(groups: bindings.mapValues(\.interface), kept: drivers) { snapshot[$0]?.metrics.bandwidthMbps ?? 0 }
    }

    /// Per group, the path with the highest `estimate`; a path kept from before stays while it is in the
    /// group and measured. `groups`: each path's group.
    static func drivers(groups: [String: String], kept: [String: String], estimate: (String) -> Double) -> [String: String] {
        var chosen: [String: String] = [:]
        for (name, group) in groups.sorted(by: { $0.key < $1.key }) {
            if let old = kept[group], groups[old] == group, estimate(old) > 0 {
                chosen[group] = old
                continue
            }
            if let current = chosen[group], estimate(current) >= estimate(name) { continue }
            chosen[group] = name
        }
        return chosen
    }

    struct Step {
        var shapers: [SteeringPlan.Shaper] = []
        var downloadShapers: [SteeringPlan.DownloadShaper] = []
        var samples: [ShaperSample] = []
        var log: [String] = []
        /// Rate changes (debug level: under load they come every second or so).
        var decisions: [String] = []
    }

    mutating func step(now: Double, bindings: [String: PathBinding], snapshot: [String: PathProbeSet.Snapshot],
                       statistics: [ShaperStatistics]) -> Step {
        var out = Step()
        var live: Set<ShaperKey> = []
        let stats = Dictionary(statistics.map { ($0.interface, $0) }, uniquingKeysWith: { a, _ in a })
        chooseDrivers(bindings, snapshot)
        for (name, binding) in bindings.sorted(by: { $0.key < $1.key }) where drivers[binding.interface] == name {
            let mode = modes[binding.key.localLabel] ?? .auto
            let rate: UInt64
            switch mode {
            case .off:
                continue
            case .fixed(let bps):
                rate = bps
            case .auto:
                let measured = snapshot[name]?.metrics.bandwidthMbps.flatMap { $0 > 0 ? UInt64($0 * 1e6) : nil }
                guard let auto = autoRate(.upload(path: name), "path \(binding.id) (\(name))", "its bandwidth is measured",
                                          estimate: measured.map { windowedEstimate(name, measured: $0, now: now) },
                                          device: binding.interface, probe: name, now: now, snapshot: snapshot,
                                          stats: stats, live: &live, out: &out) else { continue }
                rate = auto
            }
            out.shapers.append(SteeringPlan.Shaper(interface: binding.interface, rateBitsPerSecond: rate))
            let s = stats[binding.interface]
            out.samples.append(ShaperSample(pathID: binding.id, path: name, uplink: binding.key.localLabel,
                                            interface: binding.interface, mode: "\(mode)",
                                            rateBitsPerSecond: rate, queueDelayMs: s?.queueDelayMs ?? 0,
                                            bands: s?.bands ?? []))
        }
        downloadStep(now: now, bindings: bindings, snapshot: snapshot, stats: stats, live: &live, into: &out)
        for key in estimates.keys where bindings[key.path] == nil { estimates[key] = nil }
        for key in controllers.keys where !live.contains(key) {
            controllers[key] = nil
            lastSent[key] = nil
            lastReplies[key] = nil
        }
        return out
    }

    /// One step of an `auto` shaper (`subject` names it in the log): its controller starts at 90 % of
    /// `estimate` and is fed what the shaper on `device` sent since the last step and the recent RTT of the
    /// probes of path `probe` when a reply came meanwhile. nil (unshaped, said once: until `until`) without
    /// an estimate.
    private mutating func autoRate(_ key: ShaperKey, _ subject: String, _ until: String, estimate: UInt64?, device: String,
                                   probe: String?, now: Double, snapshot: [String: PathProbeSet.Snapshot],
                                   stats: [String: ShaperStatistics], live: inout Set<ShaperKey>, out: inout Step) -> UInt64? {
        guard let estimate else {
            if waiting.insert(key).inserted { out.log.append("\(subject) stays unshaped until \(until)") }
            return nil
        }
        live.insert(key)
        if waiting.remove(key) != nil || controllers[key] == nil {
            controllers[key] = ShaperRateController(estimate: estimate)
            out.log.append("\(subject) shaped from its measured \(ShapingMode.rateText(estimate))bit/s: starting at \(ShapingMode.rateText(controllers[key]!.rate))bit/s")
        }
        controllers[key]!.updateEstimate(estimate)
        // What the shaper sent since the last step, and whether a probe reply came meanwhile.
        let sentBytes = stats[device]?.sentBytes
        var sentBps = 0.0
        if let sentBytes, let last = lastSent[key], now > last.at, sentBytes >= last.bytes {
            sentBps = Double(sentBytes - last.bytes) * 8 / (now - last.at)
        }
        if let sentBytes { lastSent[key] = (sentBytes, now) }
        let probed = probe.flatMap { snapshot[$0] }
        let replies = probed?.counters.repliesOnTime ?? 0
        let answered = replies > (lastReplies[key] ?? 0)
        lastReplies[key] = replies
        let rtt = answered ? probed?.metrics.recentLatencyMs : nil
        let decision = controllers[key]!.observe(now: now, rttMs: rtt, sentBitsPerSecond: sentBps)
        if decision != .hold { out.decisions.append("\(subject): \(decision)") }
        return controllers[key]!.rate
    }

    /// The download shapers: one per uplink whose download is shaped and that has tunnels now, over all of
    /// them. A fixed rate is taken as it is; `auto` is the same controller as a tunnel's egress, driven by
    /// the uplink's download estimate: the highest download measured over its paths (each is the far site's
    /// trains as they arrived, min(far upload, our download): when the far upload is the lower, the queue
    /// builds at the far site, not in our downstream buffer), with the delay of the probes of the path
    /// measured highest (a full downstream buffer delays them as much as a full upstream one).
    private mutating func downloadStep(now: Double, bindings: [String: PathBinding], snapshot: [String: PathProbeSet.Snapshot],
                                       stats: [String: ShaperStatistics], live: inout Set<ShaperKey>, into out: inout Step) {
        func measured(_ name: String) -> UInt64? {
            snapshot[name]?.metrics.downloadBandwidthMbps.flatMap { $0 > 0 ? UInt64($0 * 1e6) : nil }
        }
        downloadDrivers = Self.drivers(groups: bindings.mapValues(\.key.localLabel), kept: downloadDrivers) {
            Double(measured($0) ?? 0)
        }
        for (label, setting) in downloads.sorted(by: { $0.key < $1.key }) {
            let paths = bindings.filter { $0.value.key.localLabel == label }.keys.sorted()
            let tunnels = Set(paths.compactMap { bindings[$0]?.interface }).sorted()
            guard !tunnels.isEmpty, setting.mode != .off else { continue }
            guard !lanPrefixes.isEmpty else {
                if downloadNotices.insert(label).inserted {
                    let line = "the download of uplink \(label) stays unshaped: no --lan prefix says where downloads leave to"
                    if setting.mode == .auto { out.decisions.append(line) } else { out.log.append(line) }
                }
                continue
            }
            let device = Conventions.downloadDevice(slot: setting.slot)
            let bps: UInt64
            switch setting.mode {
            case .off:
                continue
            case .auto:
                let estimate = paths.compactMap { name in
                    measured(name).map { windowedEstimate(name, download: true, measured: $0, now: now) }
                }.max()
                guard let auto = autoRate(.download(uplink: label), "the download of uplink \(label)",
                                          "its download is measured (the far sites' bandwidth trains over its paths; shape=UP/DOWN gives it a fixed rate)",
                                          estimate: estimate, device: device, probe: downloadDrivers[label], now: now,
                                          snapshot: snapshot, stats: stats, live: &live, out: &out) else { continue }
                bps = auto
            case .fixed(let rate):
                bps = rate
            }
            let d = SteeringPlan.DownloadShaper(slot: setting.slot, tunnels: tunnels, lanPrefixes: lanPrefixes, rateBitsPerSecond: bps)
            out.downloadShapers.append(d)
            let s = stats[d.device]
            out.samples.append(ShaperSample(pathID: 0, path: "", uplink: label, interface: d.device, mode: "\(setting.mode)",
                                            direction: "download", rateBitsPerSecond: bps, queueDelayMs: s?.queueDelayMs ?? 0,
                                            bands: s?.bands ?? []))
        }
    }
}

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

/// Egress shaping of every tunnel (docs/SHAPING.md): every `interval`, for each path whose uplink is shaped,
/// the rate comes from `--uplink ...,shape=RATE`, or (auto) from a `ShaperRateController` fed with the
/// path's bandwidth estimate, its probes' recent RTT and what the shaper sent; `KernelSteering` installs
/// the shapers and changes their rates in place. A path without a bandwidth estimate yet stays unshaped
/// (logged once), as does one whose shaper cannot be installed: routing never waits for shaping.
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
        for (i, u) in uplinks.prefix(Conventions.uplinkSlots.count).enumerated() where out[u.label] == nil {
            out[u.label] = DownloadSetting(slot: UInt8(i + 1), mode: u.downloadShaping)
        }
        return out
    }
    private var downloadNotices: Set<String> = []
    private var controllers: [String: ShaperRateController] = [:]
    private var lastSent: [String: (bytes: UInt64, at: Double)] = [:]
    private var lastReplies: [String: UInt64] = [:]
    private var waiting: Set<String> = []
    /// Per tunnel interface, the path whose measurements drive its one shaper.
    private var drivers: [String: String] = [:]
    /// Per path, its bandwidth measurements of the last `estimateWindow` seconds (time, bit/s).
    private var estimates: [String: [(at: Double, bps: UInt64)]] = [:]
    /// The ceiling follows the highest measurement of this window, not the latest: a bandwidth test that
    /// ran while the bottleneck was briefly lower (a busy LTE cell) must not cap the rate after it recovers;
    /// the delay signal is what keeps the rate down while the bottleneck is low.
    static let estimateWindow = 600.0

    /// The estimate the shaper of path `name` works from: the highest measurement of the window.
    mutating func windowedEstimate(_ name: String, measured: UInt64, now: Double) -> UInt64 {
        var kept = (estimates[name] ?? []).filter { now - $0.at <= Self.estimateWindow }
        if kept.last?.bps != measured { kept.append((now, measured)) }
        estimates[name] = kept
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
        func estimate(_ name: String) -> Double { snapshot[name]?.metrics.bandwidthMbps ?? 0 }
        var chosen: [String: String] = [:]
        for (name, binding) in bindings.sorted(by: { $0.key < $1.key }) {
            let interface = binding.interface
            if let kept = drivers[interface], bindings[kept]?.interface == interface, estimate(kept) > 0 {
                chosen[interface] = kept
                continue
            }
            if let current = chosen[interface], estimate(current) >= estimate(name) { continue }
            chosen[interface] = name
        }
        drivers = chosen
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
        let stats = Dictionary(statistics.map { ($0.interface, $0) }, uniquingKeysWith: { a, _ in a })
        chooseDrivers(bindings, snapshot)
        for (name, binding) in bindings.sorted(by: { $0.key < $1.key }) where drivers[binding.interface] == name {
            let mode = modes[binding.key.localLabel] ?? .auto
            let rate: UInt64
            switch mode {
            case .off:
                controllers[name] = nil
                continue
            case .fixed(let bps):
                rate = bps
            case .auto:
                guard let mbps = snapshot[name]?.metrics.bandwidthMbps, mbps > 0 else {
                    if waiting.insert(name).inserted {
                        out.log.append("path \(binding.id) (\(name)) stays unshaped until its bandwidth is measured")
                    }
                    continue
                }
                let estimate = windowedEstimate(name, measured: UInt64(mbps * 1e6), now: now)
                if waiting.remove(name) != nil || controllers[name] == nil {
                    controllers[name] = ShaperRateController(estimate: estimate)
                    out.log.append("path \(binding.id) (\(name)) shaped from its measured \(ShapingMode.rateText(estimate))bit/s: starting at \(ShapingMode.rateText(controllers[name]!.rate))bit/s")
                }
                controllers[name]!.updateEstimate(estimate)
                // What the shaper sent since the last step, and whether a probe reply came meanwhile.
                let sentBytes = stats[binding.interface]?.sentBytes
                var sentBps = 0.0
                if let sentBytes, let last = lastSent[name], now > last.at, sentBytes >= last.bytes {
                    sentBps = Double(sentBytes - last.bytes) * 8 / (now - last.at)
                }
                if let sentBytes { lastSent[name] = (sentBytes, now) }
                let replies = snapshot[name]?.counters.repliesOnTime ?? 0
                let answered = replies > (lastReplies[name] ?? 0)
                lastReplies[name] = replies
                let rtt = answered ? snapshot[name]?.metrics.recentLatencyMs : nil
                let decision = controllers[name]!.observe(now: now, rttMs: rtt, sentBitsPerSecond: sentBps)
                if decision != .hold { out.decisions.append("path \(binding.id) (\(name)): \(decision)") }
                rate = controllers[name]!.rate
            }
            out.shapers.append(SteeringPlan.Shaper(interface: binding.interface, rateBitsPerSecond: rate))
            let s = stats[binding.interface]
            out.samples.append(ShaperSample(pathID: binding.id, path: name, uplink: binding.key.localLabel,
                                            interface: binding.interface, mode: "\(mode)",
                                            rateBitsPerSecond: rate, queueDelayMs: s?.queueDelayMs ?? 0,
                                            bands: s?.bands ?? []))
        }
        downloadStep(bindings: bindings, stats: stats, into: &out)
        for name in estimates.keys where bindings[name] == nil { estimates[name] = nil }
        for name in controllers.keys where bindings[name] == nil || drivers[bindings[name]!.interface] != name {
            controllers[name] = nil
            lastSent[name] = nil
            lastReplies[name] = nil
        }
        return out
    }

    /// The download shapers: one per uplink whose download has a fixed rate and tunnels now. `auto` needs
    /// a download estimate, which is not measured yet: such a download stays unshaped (said once, debug).
    private mutating func downloadStep(bindings: [String: PathBinding], stats: [String: ShaperStatistics], into out: inout Step) {
        for (label, setting) in downloads.sorted(by: { $0.key < $1.key }) {
            let tunnels = Set(bindings.values.filter { $0.key.localLabel == label }.map(\.interface)).sorted()
            guard !tunnels.isEmpty else { continue }
            let bps: UInt64
            switch setting.mode {
            case .off:
                continue
            case .auto:
                if downloadNotices.insert(label).inserted {
                    out.decisions.append("the download of uplink \(label) stays unshaped: auto needs a download estimate, which is not measured yet (shape=UP/DOWN gives it a rate)")
                }
                continue
            case .fixed(let rate):
                bps = rate
            }
            guard !lanPrefixes.isEmpty else {
                if downloadNotices.insert(label).inserted {
                    out.log.append("the download of uplink \(label) stays unshaped: no --lan prefix says where downloads leave to")
                }
                continue
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

import Foundation

/// How impairments reach the frames: the userspace emulator (this kernel has no netem) or tc netem.
public enum WANBackend: String, Codable, Sendable {
    case userspace
    case netem

    /// Whether this kernel has the netem qdisc, tried in a scratch namespace (never on a real interface).
    public static func kernelHasNetem() -> Bool {
        guard let scratch = try? NetworkNamespace.create(label: "probe") else { return false }
        defer { scratch.delete() }
        let result = try? scratch.run(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
        return result?.succeeded ?? false
    }
}

/// Changes and reports a lab's WAN impairments, wherever the emulation runs (in this process, in the
/// `lab wan-emulator` daemon, or in the kernel's netem).
public protocol WANControl: AnyObject, Sendable {
    func apply(_ change: ImpairmentChange, to id: UplinkID, directions: Set<TrafficDirection>) throws
    func status() throws -> [EmulatedLinkStatus]
    /// Ends the emulation (for the in-process emulator: stops its threads and closes its sockets).
    func stop()
}

extension WANEmulator: WANControl {}

/// Impairments through tc netem, for kernels that have it: inbound on the egress of `s-<site>`,
/// outbound on the egress of `e-<site>`, the two bridged by `u-<site>` (see `LabPlan.Uplink`). netem's
/// own model applies (its jitter is normal with `distribution normal`; it may reorder when jitter exceeds
/// the packet spacing, unlike the userspace emulator).
public final class NetemControl: WANControl, @unchecked Sendable {
    private let plan: LabPlan
    private let lock = NSLock()
    private var settings: [UplinkID: [TrafficDirection: Impairment]]

    public init(plan: LabPlan, settings: [UplinkID: [TrafficDirection: Impairment]] = [:]) {
        self.plan = plan
        self.settings = settings
    }

    public func apply(_ change: ImpairmentChange, to id: UplinkID, directions: Set<TrafficDirection>) throws {
        try change.validate()
        let uplink = try plan.uplink(site: id.site, named: id.uplink)
        let namespace = NetworkNamespace(existing: plan.ispNamespace(uplink.isp))
        lock.lock()
        defer { lock.unlock() }
        for direction in directions.sorted(by: { $0.rawValue < $1.rawValue }) {
            let next = change.applied(to: settings[id]?[direction] ?? .none)
            let device = direction == .inbound ? uplink.siteFacing : uplink.emulatorFacing
            if next.isNone {
                _ = try namespace.run(["tc", "qdisc", "del", "dev", device, "root"])
            } else {
                try namespace.check(["tc", "qdisc", "replace", "dev", device, "root"] + Self.netemArguments(next))
            }
            settings[id, default: [:]][direction] = next
        }
    }

    /// netem's arguments for `impairment` (a cut is 100% loss).
    static func netemArguments(_ impairment: Impairment) -> [String] {
        var args = ["netem", "limit", "100000"]
        if impairment.delayMs > 0 || impairment.jitterMs > 0 {
            args += ["delay", "\(impairment.delayMs)ms"]
            if impairment.jitterMs > 0 { args += ["\(impairment.jitterMs)ms", "distribution", "normal"] }
        }
        let loss = impairment.cut ? 100 : impairment.lossPercent
        if loss > 0 { args += ["loss", "\(loss)%"] }
        if let rate = impairment.rateMbit { args += ["rate", "\(Int((rate * 1000).rounded()))kbit"] }
        return args
    }

    public func status() throws -> [EmulatedLinkStatus] {
        lock.lock()
        defer { lock.unlock() }
        return plan.uplinks.map { uplink in
            EmulatedLinkStatus(id: uplink.id, inbound: settings[uplink.id]?[.inbound] ?? .none,
                               outbound: settings[uplink.id]?[.outbound] ?? .none,
                               inboundCounters: PipeCounters(), outboundCounters: PipeCounters())
        }
    }

    public var currentSettings: [UplinkID: [TrafficDirection: Impairment]] {
        lock.lock()
        defer { lock.unlock() }
        return settings
    }

    public func stop() {}
}

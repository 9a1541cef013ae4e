import Foundation

/// A /proc/sys value the router needs, written as a file (no `sysctl` subprocess) and put back on stop.
/// A router must forward: `net.ipv4.ip_forward` is turned on for the namespace the daemon runs in.
public struct KernelSetting: Sendable {
    public let path: String
    public let previous: String

    /// Sets net.ipv4.ip_forward=1; returns the setting to restore, or nil when it was already on (then
    /// nothing is restored: someone else wanted it).
    public static func enableIPv4Forwarding() throws -> KernelSetting? {
        try set("/proc/sys/net/ipv4/ip_forward", to: "1")
    }

    static func set(_ path: String, to value: String) throws -> KernelSetting? {
        let current: String
        do {
            current = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
            throw KernelSettingError(path: path, detail: "cannot read it (\(error.localizedDescription))")
        }
        guard current != value else { return nil }
        do {
            try Data((value + "\n").utf8).write(to: URL(fileURLWithPath: path))
        } catch {
            throw KernelSettingError(path: path, detail: "cannot write \(value) (\(error.localizedDescription)); is /proc/sys read-only here?")
        }
        return KernelSetting(path: path, previous: current)
    }

    /// Puts the value back; failures are ignored (the daemon is stopping).
    public func restore() {
        try? Data((previous + "\n").utf8).write(to: URL(fileURLWithPath: path))
    }
}

public struct KernelSettingError: Error, CustomStringConvertible {
    public var path: String
    public var detail: String
    public var description: String { "\(path): \(detail)" }
}

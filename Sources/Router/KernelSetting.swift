import Foundation

/// A /proc/sys value the router needs, written as a file (no `sysctl` subprocess) and put back on stop.
/// A router must forward: `net.ipv4.ip_forward` is turned on for the namespace the daemon runs in.
///
/// With a `journal` file, the value found before the change is written there first and removed by
/// `restore()`: a daemon killed with SIGKILL cannot restore, so the next start reads the journal and later
/// restores what was there before the dead run, not the "1" the dead run left behind.
public struct KernelSetting: Sendable {
    public let path: String
    public let previous: String
    public let journal: String?

    /// Sets net.ipv4.ip_forward=1; returns the setting to restore, or nil when it was already on (then
    /// nothing is restored: someone else wanted it) and no journal says that a crashed run turned it on.
    public static func enableIPv4Forwarding(journal: String? = nil) throws -> KernelSetting? {
        try set("/proc/sys/net/ipv4/ip_forward", to: "1", journal: journal)
    }

    static func set(_ path: String, to value: String, journal: String? = nil) throws -> KernelSetting? {
        let current: String
        do {
            current = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
            throw KernelSettingError(path: path, detail: "cannot read it (\(error.localizedDescription))")
        }
        if let journal, let left = try? String(contentsOfFile: journal, encoding: .utf8) {
            let recorded = left.trimmingCharacters(in: .whitespacesAndNewlines)
            if !recorded.isEmpty, recorded != value {
                // A previous run died before restoring: what it found is the value to put back.
                if current != value { try write(value, to: path) }
                return KernelSetting(path: path, previous: recorded, journal: journal)
            }
            unlink(journal)
        }
        guard current != value else { return nil }
        if let journal {
            do {
                try Data((current + "\n").utf8).write(to: URL(fileURLWithPath: journal), options: .atomic)
            } catch {
                throw KernelSettingError(path: journal, detail: "cannot record the value of \(path) before changing it (\(error.localizedDescription)); is the database directory writable?")
            }
        }
        try write(value, to: path)
        return KernelSetting(path: path, previous: current, journal: journal)
    }

    private static func write(_ value: String, to path: String) throws {
        do {
            try Data((value + "\n").utf8).write(to: URL(fileURLWithPath: path))
        } catch {
            throw KernelSettingError(path: path, detail: "cannot write \(value) (\(error.localizedDescription)); is /proc/sys read-only here?")
        }
    }

    /// Puts the value back and drops the journal; failures are ignored (the daemon is stopping).
    public func restore() {
        try? Data((previous + "\n").utf8).write(to: URL(fileURLWithPath: path))
        if let journal { unlink(journal) }
    }
}

public struct KernelSettingError: Error, CustomStringConvertible {
    public var path: String
    public var detail: String
    public var description: String { "\(path): \(detail)" }
}

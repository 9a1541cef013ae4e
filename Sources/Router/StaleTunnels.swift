import Foundation
import Logging
import WireGuard
#if canImport(Glibc)
import Glibc
#endif

/// Tunnel interfaces that a previous run left behind (it died with SIGKILL or a crash) and that this run's
/// configuration can never plan, e.g. an uplink removed between the crash and the restart. The tunnel
/// reconciler adopts a leftover interface only when it plans the same name, so without this such an
/// interface and its wireguard-go process would outlive every later run.
///
/// Ours means: named by our scheme under the configured prefix (`<prefix><n>` or `<prefix><n>x<m>`, see
/// `TunnelSettings.interfaceName`) AND answering as a WireGuard interface. Costs one `if_nameindex` and one
/// state query per candidate, once at start.
enum StaleTunnels {
    /// The uplink index (`slot - 1`) of an interface named by our scheme under `prefix`, or nil if the name
    /// is not one of ours. Pure.
    static func uplinkIndex(of name: String, prefix: String) -> Int? {
        guard !prefix.isEmpty, name.hasPrefix(prefix) else { return nil }
        let rest = name.dropFirst(prefix.count)
        let parts = rest.split(separator: "x", maxSplits: 1, omittingEmptySubsequences: false)
        guard let first = parts.first, !first.isEmpty, first.allSatisfy(\.isASCII), let index = Int(first),
              first.allSatisfy(\.isNumber) else { return nil }
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        }
        return index
    }

    /// The names `prefix` could have produced for an uplink index at or beyond `uplinkCount`. Pure.
    static func stale(_ names: [String], prefix: String, uplinkCount: Int) -> [String] {
        names.filter { name in uplinkIndex(of: name, prefix: prefix).map { $0 >= uplinkCount } ?? false }.sorted()
    }

    /// Interface names in this network namespace.
    static func interfaceNames() -> [String] {
        guard let list = if_nameindex() else { return [] }
        defer { if_freenameindex(list) }
        var names: [String] = []
        var entry = list
        while entry.pointee.if_index != 0, let name = entry.pointee.if_name {
            names.append(String(cString: name))
            entry = entry.advanced(by: 1)
        }
        return names
    }

    /// Deletes the stale WireGuard interfaces of `prefix` (their wireguard-go exits with its TUN device).
    /// Returns the names removed; failures are logged and left for the operator (nothing else depends on them).
    @discardableResult
    static func remove(prefix: String, uplinkCount: Int, backend: any WireGuardBackend, logger: Logger) async -> [String] {
        var removed: [String] = []
        for name in stale(interfaceNames(), prefix: prefix, uplinkCount: uplinkCount) {
            guard (try? await backend.state(of: name)) != nil else { continue }  // not WireGuard: not ours
            do {
                try await backend.deleteInterface(named: name)
                removed.append(name)
                logger.info("removed a tunnel interface a previous run left", metadata: ["interface": "\(name)"])
            } catch {
                logger.warning("cannot remove a tunnel interface a previous run left", metadata: [
                    "interface": "\(name)", "error": "\(error)",
                ])
            }
        }
        return removed
    }
}

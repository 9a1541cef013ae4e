import Foundation
import Glibc
import Lab

/// Helpers for the operations root tests: the built binary, JSON from `nft -j` / `ip -j`, Prometheus text,
/// and snapshots of a namespace's kernel state.
enum Ops {
    /// The `patronus-router` that `swift build --build-tests` put beside this test bundle.
    static let binary: String? = {
        // bench scripts run these tests against the release build.
        if let chosen = ProcessInfo.processInfo.environment["PATRONUS_ROUTER_BINARY"],
           FileManager.default.isExecutableFile(atPath: chosen) {
            return chosen
        }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        var candidates = [(exe as NSString).deletingLastPathComponent + "/patronus-router"]
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        candidates.append(root.appendingPathComponent(".build/debug/patronus-router").path)
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()
    static let canRun = getuid() == 0 && binary != nil
        && FileManager.default.isExecutableFile(atPath: "/usr/bin/wireguard-go")

    static func json(_ text: String) -> Any? {
        try? JSONSerialization.jsonObject(with: Data(text.utf8))
    }

    static func canonical(_ value: Any) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .fragmentsAllowed])
        else { return "\(value)" }
        return String(decoding: data, as: UTF8.self)
    }

    /// Removes `keys` at every depth.
    static func stripping(_ value: Any, keys: Set<String>) -> Any {
        if let object = value as? [String: Any] {
            var out: [String: Any] = [:]
            for (k, v) in object where !keys.contains(k) { out[k] = stripping(v, keys: keys) }
            return out
        }
        if let array = value as? [Any] { return array.map { stripping($0, keys: keys) } }
        return value
    }

    /// `nft -j` objects (each `{"table": {...}}`, `{"rule": {...}}`, ...) without metainfo.
    static func nftObjects(_ text: String) -> [[String: Any]] {
        guard let root = json(text) as? [String: Any], let list = root["nftables"] as? [[String: Any]] else { return [] }
        return list.filter { $0["metainfo"] == nil }
    }

    /// Time since `start`, in milliseconds.
    static func milliseconds(since start: ContinuousClock.Instant) -> Double {
        let d = ContinuousClock.now - start
        return Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
    }

    /// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
    @discardableResult
    static func waitUntil(timeout: Duration, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try condition() { return true }
            usleep(50_000)
        }
        return try condition()
    }

    /// Starts the router in `namespace` (`ip netns exec` execs, so the pid is the router's), in its own
    /// session, appending to `log`.
    static func startRouter(in namespace: String, _ arguments: [String], log: String,
                            notifySocket: String? = nil) throws -> pid_t {
        // `env` and `ip netns exec` both exec, so the pid stays the router's.
        let environment = notifySocket.map { ["env", "NOTIFY_SOCKET=\($0)"] } ?? []
        return try Subprocess.spawn(environment + ["ip", "netns", "exec", namespace, binary!] + arguments, logPath: log,
                                    newSession: true)
    }

    /// Waits up to `timeout` for our child `pid` to exit; its status, or nil if it still runs.
    static func waitForExit(_ pid: pid_t, timeout: Duration) -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = Subprocess.exitStatusIfExited(pid) { return status }
            usleep(10_000)
        }
        return Subprocess.exitStatusIfExited(pid)
    }

    /// Pids of the processes in namespace `name` whose command is `command`.
    static func processes(named command: String, inNamespace name: String) -> [pid_t] {
        let pids = (try? Subprocess.run(["ip", "netns", "pids", name]))?.stdout
            .split(whereSeparator: \.isWhitespace).compactMap { pid_t($0) } ?? []
        return pids.filter { pid in
            let comm = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? ""
            return comm.trimmingCharacters(in: .whitespacesAndNewlines) == command
                && !ProcessTermination.isZombieProcess(pid)
        }.sorted()
    }

    /// `patronus-router status --json` of a database, parsed.
    /// With `netns`, the steering entries are read from that namespace's kernel.
    static func status(database: String, netns: String? = nil) -> [String: Any]? {
        guard let result = try? Subprocess.run([binary!, "status", "--json", "--database", database]
                                                   + (netns.map { ["--netns", $0] } ?? [])),
              result.succeeded else { return nil }
        return json(result.stdout) as? [String: Any]
    }

    /// `sqlite3 DATABASE 'SELECT name, status, last_seen FROM sites'`, one line per row (read-only, as a user would).
    static func sitesTable(database: String) throws -> [String] {
        try Subprocess.check(["sqlite3", "-readonly", database, "SELECT name, status, last_seen FROM sites"])
            .split(separator: "\n").map(String.init)
    }

    static func lineCount(_ path: String) -> Int {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n", omittingEmptySubsequences: false)
            .count - 1
    }
}

extension ProcessTermination {
    static func isZombieProcess(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return true }
        return stat[stat.index(after: close)...].drop(while: { $0 == " " }).first == "Z"
    }
}

/// A systemd-style notify socket (AF_UNIX datagrams) to learn when the daemon says READY=1.
final class NotifyListener {
    let path: String
    let fd: Int32

    init() throws {
        path = "/tmp/pt-notify-\(getpid())-\(UInt32.random(in: 0 ... .max)).sock"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard fd >= 0, bound == 0 else { throw LabError.systemCall("bind \(path)", errno: errno) }
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// Waits up to `timeout` for a datagram containing `state`.
    func wait(for state: String, timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 512)
        while ContinuousClock.now < deadline {
            let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if n > 0, String(decoding: buffer[0..<n], as: UTF8.self).contains(state) { return true }
            usleep(5_000)
        }
        return false
    }
}

/// The Prometheus text exposition, parsed: series (`name{a="1",b="2"}`, labels sorted) -> value.
struct Exposition {
    var series: [String: Double] = [:]

    init(_ text: String) {
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let key = line[..<space]
            guard let brace = key.firstIndex(of: "{") else {
                series[String(key)] = value
                continue
            }
            let name = key[..<brace]
            let body = key[key.index(after: brace)..<key.index(before: key.endIndex)]
            series[Self.key(String(name), Self.labels(String(body)))] = value
        }
    }

    static func labels(_ body: String) -> [String: String] {
        var out: [String: String] = [:]
        var rest = Substring(body)
        while let eq = rest.firstIndex(of: "=") {
            let name = rest[..<eq].trimmingCharacters(in: CharacterSet(charactersIn: ","))
            guard let afterQuote = rest.index(eq, offsetBy: 2, limitedBy: rest.endIndex),
                  let close = rest[afterQuote...].firstIndex(of: "\"") else { break }
            out[name] = String(rest[afterQuote..<close])
            rest = rest[rest.index(after: close)...]
        }
        return out
    }

    static func key(_ name: String, _ labels: [String: String]) -> String {
        name + "{" + labels.sorted { $0.key < $1.key }.map { "\($0.key)=\"\($0.value)\"" }.joined(separator: ",") + "}"
    }

    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        labels.isEmpty ? series[name] ?? series[name + "{}"] : series[Self.key(name, labels)]
    }

    /// Every series of `name`, as (labels, value).
    func all(_ name: String) -> [([String: String], Double)] {
        series.compactMap { key, value in
            guard key.hasPrefix(name + "{") else { return nil }
            return (Self.labels(String(key.dropFirst(name.count + 1).dropLast())), value)
        }
    }
}

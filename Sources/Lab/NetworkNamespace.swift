import Foundation
import CNetfilter
import Glibc

/// A named network namespace (`/run/netns/<name>`, the same as `ip netns add`), and the few operations a
/// test or the lab needs inside one: run a command, open a socket, make veths, addresses, routes, bridges.
///
/// Ownership: a namespace made by `create(label:)` or `init(creatingNamed:)` is *owned*: it is deleted
/// (processes in it killed first) by `delete()`, by deinit, and by `LabCleanup` on exit, SIGINT or SIGTERM,
/// whichever comes first. `persist()` hands it over (the `lab up` state file then owns it). A namespace
/// attached with `init(existing:)` is never deleted by this object.
///
/// Cost: setup helpers run `ip` (about 1-2 ms each); this is harness code, never the router's runtime path.
/// `perform(_:)` costs one short-lived thread.
public final class NetworkNamespace: @unchecked Sendable, CustomStringConvertible {
    /// The namespace's name, as `ip netns list` shows it.
    public let name: String
    private let cleanup: CleanupHandle

    /// Where iproute2 keeps named namespaces.
    public static let directory = "/run/netns"

    public var description: String { name }
    /// The bind-mounted namespace file.
    public var path: String { "\(Self.directory)/\(name)" }

    /// Creates a namespace with a unique name `pt<label>-<8 hex>` (label: lowercase letters, digits, '-').
    /// Loopback is brought up.
    public static func create(label: String) throws(LabError) -> NetworkNamespace {
        guard !label.isEmpty, label.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }) else {
            throw .invalidArgument("namespace label '\(label)' must be lowercase letters, digits or '-'")
        }
        for _ in 0..<8 {
            let candidate = "pt\(label)-\(String(UInt32.random(in: .min ... .max), radix: 16))"
            if !Self.exists(candidate) { return try NetworkNamespace(creatingNamed: candidate) }
        }
        throw .invalidArgument("could not find a free namespace name for label '\(label)'")
    }

    /// Creates the namespace `name` (failing if it exists) and brings loopback up. Owned.
    public init(creatingNamed name: String) throws(LabError) {
        guard Self.isValidName(name) else { throw .invalidArgument("bad namespace name '\(name)'") }
        self.name = name
        cleanup = try LabCleanup.shared.creating { () throws(LabError) -> CleanupHandle in
            try Subprocess.check(["ip", "netns", "add", name])
            return CleanupHandle("netns \(name)") { NetworkNamespace.remove(named: name) }
        }
        do {
            try ip("link", "set", "lo", "up")
        } catch {
            delete()
            throw error
        }
    }

    /// Attaches to an existing namespace without taking ownership.
    public init(existing name: String) {
        self.name = name
        cleanup = CleanupHandle()
    }

    deinit { cleanup.release() }

    /// True when `/run/netns/<name>` exists.
    public static func exists(_ name: String) -> Bool {
        access("\(directory)/\(name)", F_OK) == 0
    }

    /// Names of all named namespaces starting with `prefix` (for leak checks and `lab down`).
    public static func list(prefix: String = "") -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix(prefix) }.sorted()
    }

    private static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 200 && !name.contains("/") && name != "." && name != ".."
    }

    /// Kills every process in the namespace, then deletes it. Idempotent; safe to call on a
    /// namespace that is already gone. Does nothing for attached (not owned) namespaces.
    public func delete() { cleanup.release() }

    /// Stops owning the namespace: it survives this object and this process.
    public func persist() { cleanup.handOver() }

    /// Kills every process in namespace `name` (SIGTERM, then SIGKILL after `grace`) and deletes it.
    /// Best effort and idempotent: used by teardown paths that must not stop half-way.
    public static func remove(named name: String, grace: Duration = .milliseconds(1500)) {
        guard exists(name) else { return }
        let pids = (try? Subprocess.run(["ip", "netns", "pids", name]))?.stdout
            .split(whereSeparator: \.isWhitespace).compactMap { pid_t($0) } ?? []
        ProcessTermination.terminate(pids, grace: grace)
        var failure = ""
        for attempt in 0..<3 {
            if attempt > 0 { usleep(50_000) }
            guard let result = try? Subprocess.run(["ip", "netns", "delete", name]) else { continue }
            if result.succeeded || !exists(name) { return }
            failure = result.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        // Teardown must not stop half-way, so this does not throw; but a leak is said out loud.
        FileHandle.standardError.write(Data("lab: could not delete namespace \(name): \(failure)\n".utf8))
    }

    // MARK: Commands

    /// Runs `argv` inside the namespace (`ip netns exec`). Does not throw on a non-zero exit.
    public func run(_ argv: [String]) throws(LabError) -> CommandResult {
        try Subprocess.run(["ip", "netns", "exec", name] + argv)
    }

    /// Runs `argv` inside the namespace; throws unless it exits 0. Returns stdout.
    @discardableResult
    public func check(_ argv: [String]) throws(LabError) -> String {
        try Subprocess.check(["ip", "netns", "exec", name] + argv)
    }

    /// `ip -n <name> <args>`: iproute2 acting on this namespace (no exec, no /sys remount).
    @discardableResult
    public func ip(_ args: String...) throws(LabError) -> String {
        try Subprocess.check(["ip", "-n", name] + args)
    }

    /// Starts `argv` in the background inside the namespace, and returns once it is inside (so deleting
    /// the namespace right after finds and kills it). The returned process is killed by its `terminate()`,
    /// its deinit, `LabCleanup`, and in any case when the namespace is deleted.
    public func spawn(_ argv: [String], logPath: String? = nil) throws(LabError) -> LabProcess {
        let process = try LabCleanup.shared.creating { () throws(LabError) -> LabProcess in
            let pid = try Subprocess.spawn(["ip", "netns", "exec", name] + argv, logPath: logPath)
            return LabProcess(pid: pid, label: "\(argv.first ?? "?") in \(name)")
        }
        var target = stat()
        guard stat(path, &target) == 0 else { return process }
        let deadline = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < deadline {
            var current = stat()
            if stat("/proc/\(process.pid)/ns/net", &current) != 0 { break } // exited already
            if current.st_ino == target.st_ino && current.st_dev == target.st_dev { break }
            usleep(1_000)
        }
        return process
    }

    /// Runs `body` on a fresh thread that has joined this namespace, and returns its result. Sockets
    /// opened in `body` stay bound to this namespace for their whole life, wherever they are used
    /// later: this is how tests and the WAN emulator talk inside namespaces without `ip netns exec`.
    public func perform<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw LabError.systemCall("open \(path)", errno: errno) }
        defer { close(fd) }
        let box = ResultBox<T>()
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            if cnf_setns_net(fd) != 0 {
                box.result = .failure(LabError.systemCall("setns \(self.name)", errno: errno))
            } else {
                box.result = Result { try body() }
            }
            done.signal()
        }
        thread.start()
        done.wait()
        return try box.result!.get()
    }

    /// Opens a socket inside the namespace (CLOEXEC). The caller owns the descriptor.
    public func socket(domain: Int32, type: Int32, protocol proto: Int32 = 0) throws -> Int32 {
        try perform {
            let fd = Glibc.socket(domain, type | Int32(SOCK_CLOEXEC.rawValue), proto)
            guard fd >= 0 else { throw LabError.systemCall("socket", errno: errno) }
            return fd
        }
    }

    // MARK: Links, addresses, routes

    /// Creates a veth pair: `name` here and `peerName` in `peer` (both brought up). Names <= 15 chars.
    /// Nothing is created in the root namespace, even transiently.
    public func addVeth(_ name: String, peer peerName: String, in peer: NetworkNamespace, mtu: Int = 1500) throws(LabError) {
        for n in [name, peerName] where n.utf8.count > 15 || n.isEmpty {
            throw .invalidArgument("interface name '\(n)' must be 1-15 bytes")
        }
        try ip("link", "add", name, "mtu", String(mtu), "type", "veth",
               "peer", "name", peerName, "mtu", String(mtu), "netns", peer.name)
        try setUp(name)
        try peer.setUp(peerName)
    }

    /// `ip link set <dev> up`.
    public func setUp(_ device: String) throws(LabError) {
        try ip("link", "set", device, "up")
    }

    /// Adds `cidr` (e.g. "10.10.1.1/24") to `device`.
    public func addAddress(_ cidr: String, to device: String) throws(LabError) {
        try ip("addr", "add", cidr, "dev", device)
    }

    /// Adds a route; `destination` may be "default". At least one of `via`/`device` must be given.
    public func addRoute(_ destination: String, via gateway: String? = nil, device: String? = nil,
                         metric: Int? = nil, table: Int? = nil) throws(LabError) {
        var args = ["route", "add", destination]
        if let gateway { args += ["via", gateway] }
        if let device { args += ["dev", device] }
        if let metric { args += ["metric", String(metric)] }
        if let table { args += ["table", String(table)] }
        try Subprocess.check(["ip", "-n", name] + args)
    }

    /// Creates a bridge (STP off, forward delay 0: ports forward at once) and brings it up.
    public func addBridge(_ bridge: String) throws(LabError) {
        try ip("link", "add", bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0")
        try setUp(bridge)
    }

    /// Enslaves `device` to `bridge`.
    public func attach(_ device: String, toBridge bridge: String) throws(LabError) {
        try ip("link", "set", device, "master", bridge)
    }

    /// Sets a sysctl inside the namespace (e.g. "net.ipv4.ip_forward", "1").
    public func setSysctl(_ key: String, _ value: String) throws(LabError) {
        try check(["sysctl", "-q", "-w", "\(key)=\(value)"])
    }

    /// Turns IPv4 forwarding on (a router namespace).
    public func enableForwarding() throws(LabError) {
        try setSysctl("net.ipv4.ip_forward", "1")
    }

    /// The namespace's links as `ip -j link` reports them: name -> ifindex.
    public func links() throws(LabError) -> [String: Int] {
        let json = try ip("-j", "link", "show")
        guard let data = json.data(using: .utf8),
              let array = (try? JSONSerialization.jsonObject(with: data)) as? [[String: Any]] else { return [:] }
        var result: [String: Int] = [:]
        for link in array {
            if let name = link["ifname"] as? String, let index = link["ifindex"] as? Int { result[name] = index }
        }
        return result
    }
}

private final class ResultBox<T>: @unchecked Sendable {
    var result: Result<T, any Error>?
}

/// A background process the lab started. Terminated (SIGTERM, then SIGKILL) by `terminate()`, deinit or
/// `LabCleanup`, and reaped, so it leaves no zombie.
public final class LabProcess: @unchecked Sendable {
    public let pid: pid_t
    private let cleanup: CleanupHandle

    init(pid: pid_t, label: String) {
        self.pid = pid
        cleanup = CleanupHandle("process \(pid) \(label)") {
            ProcessTermination.terminate([pid], grace: .seconds(2))
        }
    }

    deinit { terminate() }

    /// True while the process runs (and is still owned).
    public var isRunning: Bool {
        cleanup.isArmed && !ProcessTermination.gone(pid)
    }

    /// Stops the process and reaps it. Idempotent.
    public func terminate() { cleanup.release() }

    /// Stops owning the process: it keeps running after this object and this process are gone.
    public func persist() { cleanup.handOver() }
}

/// Stopping processes that may or may not be our children.
public enum ProcessTermination {
    /// SIGTERM, wait up to `grace` (reaping children), then SIGKILL whatever is left and reap it.
    public static func terminate(_ pids: [pid_t], grace: Duration) {
        let targets = pids.filter { $0 > 1 && $0 != getpid() }
        guard !targets.isEmpty else { return }
        for pid in targets { kill(pid, SIGTERM) }
        let deadline = ContinuousClock.now + grace
        var alive = targets
        while !alive.isEmpty && ContinuousClock.now < deadline {
            alive = alive.filter { !gone($0) }
            if !alive.isEmpty { usleep(10_000) }
        }
        for pid in alive { kill(pid, SIGKILL) }
        for pid in alive {
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
        }
    }

    /// True when `pid` no longer runs (reaping it if it is our child).
    static func gone(_ pid: pid_t) -> Bool {
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid { return true }
        if kill(pid, 0) != 0 && errno == ESRCH { return true }
        return isZombie(pid)
    }

    /// True when /proc says `pid` is a zombie (dead, not yet reaped by its parent).
    static func isZombie(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let rest = stat[stat.index(after: close)...].drop(while: { $0 == " " })
        return rest.first == "Z"
    }
}

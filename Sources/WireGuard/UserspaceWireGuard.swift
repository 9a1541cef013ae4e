import CNetfilter
import Foundation
import Synchronization

/// WireGuard in userspace: one `wireguard-go -f NAME` process per interface (started with posix_spawn, the
/// only subprocess the router runs), configured over its UAPI socket, links handled over rtnetlink.
///
/// UAPI sockets live in one machine-wide directory, so interface names must be unique across network
/// namespaces. An interface whose socket already answers is adopted, not restarted. Deleting stops the
/// process (SIGTERM, then SIGKILL after `stopTimeout`) and reaps it; wireguard-go removes its TUN on exit.
public final class UserspaceWireGuard: LinkBackedBackend {
    public static let defaultExecutable = "/usr/bin/wireguard-go"

    public var kind: WireGuardBackendKind { .userspace }
    public let executable: String
    public let runDirectory: String
    let links: any LinkControl
    private let children = Mutex<[String: pid_t]>([:])
    public let startTimeout: Duration
    public let stopTimeout: Duration

    public init(executable: String = UserspaceWireGuard.defaultExecutable,
                runDirectory: String = UAPIClient.defaultRunDirectory, links: any LinkControl = RouteNetlinkLinks(),
                startTimeout: Duration = .seconds(5), stopTimeout: Duration = .seconds(2)) {
        self.executable = executable
        self.runDirectory = runDirectory
        self.links = links
        self.startTimeout = startTimeout
        self.stopTimeout = stopTimeout
    }

    deinit {
        // Children still running when the backend goes away would be orphaned: stop them.
        for pid in children.withLock({ Array($0.values) }) {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
    }

    private func client(_ name: String) -> UAPIClient { UAPIClient(interface: name, runDirectory: runDirectory) }

    /// The process id of the wireguard-go we started for `name`, if any.
    public func processID(of name: String) -> pid_t? { children.withLock { $0[name] } }

    public func createInterface(named name: String) async throws(WireGuardError) {
        try validateInterfaceName(name)
        reapIfExited(name)
        if client(name).isReachable() { return }
        let pid = try spawn(name)
        children.withLock { $0[name] = pid }
        let clock = ContinuousClock()
        let deadline = clock.now + startTimeout
        while clock.now < deadline {
            if client(name).isReachable() { return }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                children.withLock { _ = $0.removeValue(forKey: name) }
                throw .processExited(interface: name, status: status)
            }
            try? await Task.sleep(for: .milliseconds(5))
        }
        stopChild(name)
        let (seconds, attoseconds) = startTimeout.components
        throw .notReady(interface: name, waitedMilliseconds: Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000))
    }

    public func configure(_ name: String, _ update: DeviceUpdate) async throws(WireGuardError) {
        try client(name).set(update)
    }

    public func state(of name: String) async throws(WireGuardError) -> InterfaceState {
        try client(name).get()
    }

    public func deleteInterface(named name: String) async throws(WireGuardError) {
        if children.withLock({ $0[name] }) != nil {
            stopChild(name)
            return
        }
        // Not ours (adopted after a restart): removing the TUN link makes wireguard-go exit.
        guard if_nametoindex(name) != 0 else { return }
        try WireGuardLinks.deleteLink(named: name)
    }

    /// UAPI sockets in the run directory (machine-wide) whose interface also exists in this namespace.
    public func interfaces(withPrefix prefix: String) async throws(WireGuardError) -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: runDirectory)) ?? []
        return entries.filter { $0.hasSuffix(".sock") }.map { String($0.dropLast(5)) }
            .filter { $0.hasPrefix(prefix) && if_nametoindex($0) != 0 }.sorted()
    }

    private func reapIfExited(_ name: String) {
        guard let pid = children.withLock({ $0[name] }) else { return }
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid { children.withLock { _ = $0.removeValue(forKey: name) } }
    }

    /// SIGTERM, wait up to `stopTimeout`, then SIGKILL; always reaps.
    private func stopChild(_ name: String) {
        guard let pid = children.withLock({ $0.removeValue(forKey: name) }) else { return }
        var status: Int32 = 0
        kill(pid, SIGTERM)
        let clock = ContinuousClock()
        let deadline = clock.now + stopTimeout
        while clock.now < deadline {
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid || (result < 0 && errno == ECHILD) { return }
            usleep(2_000)
        }
        kill(pid, SIGKILL)
        waitpid(pid, &status, 0)
    }

    private func spawn(_ name: String) throws(WireGuardError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The daemon ignores or blocks signals for its own handling; the child must get the defaults so
        // SIGTERM stops it. Its own process group keeps a terminal's Ctrl-C from killing it before we clean up.
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGUSR1, SIGUSR2] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let arguments = [executable, "-f", name]
        let environment = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LOG_LEVEL=error"]
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else { throw .spawnFailed(executable: executable, errno: result) }
        return pid
    }
}

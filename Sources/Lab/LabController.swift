import Foundation
import Glibc

/// A process the lab left running, identified beyond its pid (pids are reused): the start time from
/// /proc/<pid>/stat must still match before `lab down` signals it.
public struct RecordedProcess: Codable, Equatable, Sendable {
    public var pid: Int32
    public var startTime: UInt64
    public var role: String

    init(pid: pid_t, role: String) {
        self.pid = pid
        self.role = role
        startTime = Self.startTime(of: pid) ?? 0
    }

    /// True while the very process we started runs.
    public var isAlive: Bool {
        guard let now = Self.startTime(of: pid) else { return false }
        return now == startTime && !ProcessTermination.isZombie(pid)
    }

    /// Field 22 of /proc/<pid>/stat (clock ticks after boot), read after the command name, which may
    /// contain spaces and parentheses.
    static func startTime(of pid: pid_t) -> UInt64? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After ")": field 3 (state) is fields[0], so field 22 is fields[19].
        return fields.count > 19 ? UInt64(fields[19]) : nil
    }
}

/// What `lab up` made, written to `<stateRoot>/<instance>/state.json` so that `lab down`, `status` and
/// `impair` (separate processes) find it.
public struct LabState: Codable, Equatable, Sendable {
    public var plan: LabPlan
    public var backend: WANBackend
    public var createdAt: String
    public var emulator: RecordedProcess?
    public var controlSocket: String?
    public var routers: [String: RecordedProcess] = [:]
    /// Current impairments when the backend is netem (the userspace daemon holds its own).
    public var netemSettings: [String: [String: Impairment]] = [:]
    public var staticRoutes: Bool
}

/// `lab up`, `lab down`, `lab status` and `lab impair`: the lab as a user runs it, across processes.
///
/// Guarantees: `up` leaves either a complete lab with its state file or nothing (any failure, SIGINT or
/// SIGTERM during `up` rolls back). `down` removes every namespace of the instance (also ones the state file
/// does not list), every process it started, the control socket and the state directory, and succeeds if
/// anything was left to remove.
public struct LabController: Sendable {
    /// Whether `lab up` starts `patronus-router run` in each site. Off until the router daemon exists; the
    /// lead turns it on (or `lab up --routers` does) and `routerArguments` gives each site's command line.
    public static let routersByDefault = true

    public var instance: String
    public var stateRoot: String
    /// The binary to run for the emulator daemon and the routers (this program).
    public var executable: String

    public init(instance: String = "lab", stateRoot: String = "/run/patronus-lab",
                executable: String = LabController.currentExecutable()) {
        self.instance = instance
        self.stateRoot = stateRoot
        self.executable = executable
    }

    public var stateDirectory: String { "\(stateRoot)/\(instance)" }
    var statePath: String { "\(stateDirectory)/state.json" }
    var controlPath: String { "\(stateDirectory)/wan.sock" }

    /// This process's executable (`/proc/self/exe`).
    public static func currentExecutable() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    static func requireRoot() throws(LabError) {
        guard geteuid() == 0 else { throw .notRoot }
    }

    // MARK: up

    /// Builds the lab, starts the WAN emulator daemon (or uses netem) and, with `routers`, the routers.
    /// `extraRouterArguments` are appended to every router's command line (tests: `--metrics-listen`,
    /// `--debug`); the default lab passes none.
    /// `shaping`: per ISP label, every site's `--uplink ...,shape=` for it (tests: shaped vs unshaped uplinks).
    @discardableResult
    public func up(sites: Int = 3, uplinks: Int = 2, wan: LabPlan.WANMode = .bridged, nat: [UplinkID] = [],
                   symmetricNAT: [UplinkID] = [], unplugged: [UplinkID] = [], hub: String? = nil, detecting: [String] = [],
                   routers: Bool = LabController.routersByDefault,
                   emulation: LabTopology.Emulation = .automatic, extraRouterArguments: [String] = [],
                   shaping: [String: String] = [:], noCopies: [UplinkID] = []) throws -> LabState {
        try Self.requireRoot()
        let plan = try LabPlan.make(instance: instance, sites: sites, uplinks: uplinks, wan: wan, nat: nat,
                                    symmetricNAT: symmetricNAT, unplugged: unplugged, hub: hub, detecting: detecting, noCopies: noCopies)
        mkdir(stateRoot, 0o755)
        let directory = stateDirectory
        let undoDirectory = try LabCleanup.shared.creating { () throws(LabError) -> CleanupHandle in
            // The state directory is the lock: a second `lab up` fails here before touching anything.
            guard mkdir(directory, 0o700) == 0 else {
                if errno == EEXIST { throw LabError.alreadyRunning(instance: instance) }
                throw LabError.systemCall("mkdir \(directory)", errno: errno)
            }
            return CleanupHandle("lab state \(directory)") { try? FileManager.default.removeItem(atPath: directory) }
        }
        var started: [LabProcess] = []
        do {
            let choice: LabTopology.Emulation = emulation == .automatic
                ? (WANBackend.kernelHasNetem() ? .netem : .external) : emulation
            // Static routes between the LANs only over a bridged ISP: routed ISPs carry no LAN prefixes.
            let staticRoutes = !routers && plan.wan == .bridged
            let topology = try LabTopology.build(plan, options: .init(emulation: choice, staticRoutes: staticRoutes))
            var state = LabState(plan: plan, backend: topology.backend, createdAt: Self.timestamp(),
                                 staticRoutes: staticRoutes)
            if topology.backend == .userspace {
                let daemon = try startEmulator(plan)
                started.append(daemon)
                state.emulator = RecordedProcess(pid: daemon.pid, role: "wan-emulator")
                state.controlSocket = controlPath
            }
            if routers {
                // One mesh key for the whole lab, in the state directory (0600, removed by `lab down`).
                let meshKey = "\(directory)/mesh.key"
                try Subprocess.check([executable, "mesh-key", "generate", "--output", meshKey])
                for site in plan.sites {
                    let argv = plan.routerArguments(site: site.name, executable: executable, stateDirectory: directory,
                                                    meshKey: meshKey, shaping: shaping) + extraRouterArguments
                    let router = try startRouter(argv, in: topology.router(site.name), log: "\(directory)/\(site.name).log")
                    started.append(router)
                    state.routers[site.name] = RecordedProcess(pid: router.pid, role: "router \(site.name)")
                }
            }
            try write(state)
            // Everything is recorded: hand it over to the state file.
            for process in started { process.persist() }
            topology.persist()
            undoDirectory.handOver()
            return state
        } catch {
            for process in started { process.terminate() }
            undoDirectory.release()
            throw error
        }
    }

    private func startEmulator(_ plan: LabPlan) throws -> LabProcess {
        let argv = [executable, "lab", "wan-emulator", "--control", controlPath]
            + EmulatedLinkSpec.all(of: plan).flatMap { ["--link", $0.description] }
        let process = try LabCleanup.shared.creating { () throws(LabError) -> LabProcess in
            let pid = try Subprocess.spawn(argv, logPath: "\(stateDirectory)/wan-emulator.log", newSession: true)
            return LabProcess(pid: pid, label: "wan-emulator")
        }
        let pid = process.pid
        let client = WANEmulatorClient(controlPath: controlPath)
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if (try? client.status()) != nil { return process }
            if let status = Subprocess.exitStatusIfExited(pid) {
                let last = Self.lastLine(of: "\(stateDirectory)/wan-emulator.log")
                throw LabError.emulator("the emulator daemon exited with status \(status): \(last)")
            }
            usleep(20_000)
        }
        process.terminate()
        throw LabError.emulator("the emulator daemon did not answer within 10 s (see its log)")
    }

    /// The hook for the router daemon: `argv` (from `LabPlan.routerArguments`) runs inside the site's
    /// namespace, in its own session, logging to `log`; `lab down` kills it.
    private func startRouter(_ argv: [String], in namespace: NetworkNamespace, log: String) throws -> LabProcess {
        let process = try LabCleanup.shared.creating { () throws(LabError) -> LabProcess in
            let pid = try Subprocess.spawn(["ip", "netns", "exec", namespace.name] + argv, logPath: log, newSession: true)
            return LabProcess(pid: pid, label: "router in \(namespace.name)")
        }
        let pid = process.pid
        usleep(200_000)
        if let status = Subprocess.exitStatusIfExited(pid) {
            // The log goes with the rollback: quote its last line.
            throw LabError.commandFailed(argv: argv, status: status, stderr: Self.lastLine(of: log))
        }
        return process
    }

    static func lastLine(of path: String) -> String {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").last.map(String.init) ?? ""
    }

    // MARK: down

    /// What `down` removed.
    public struct Removal: Equatable, Sendable {
        public var namespaces: [String] = []
        public var processes: [String] = []
        public var stateDirectory = false
        public var isEmpty: Bool { namespaces.isEmpty && processes.isEmpty && !stateDirectory }
    }

    /// Removes the lab. Throws `notRunning` when there was nothing at all to remove.
    @discardableResult
    public func down() throws -> Removal {
        try Self.requireRoot()
        var removal = Removal()
        let state = try? read()
        var processes = Array((state?.routers ?? [:]).values)
        if let emulator = state?.emulator { processes.append(emulator) }
        let alive = processes.filter(\.isAlive)
        ProcessTermination.terminate(alive.map(\.pid), grace: .seconds(2))
        removal.processes = alive.map { "\($0.role) (pid \($0.pid))" }
        let prefix = state?.plan.namespacePrefix ?? "pt\(instance)-"
        let names = Set((state?.plan.namespaceNames ?? []) + NetworkNamespace.list(prefix: prefix))
            .filter(NetworkNamespace.exists).sorted()
        for name in names { NetworkNamespace.remove(named: name) }
        removal.namespaces = names
        if FileManager.default.fileExists(atPath: stateDirectory) {
            try? FileManager.default.removeItem(atPath: stateDirectory)
            removal.stateDirectory = true
        }
        if removal.isEmpty { throw LabError.notRunning(instance: instance) }
        return removal
    }

    // MARK: status and impair

    /// The state file, or `notRunning`.
    public func read() throws -> LabState {
        guard let data = FileManager.default.contents(atPath: statePath) else {
            throw LabError.notRunning(instance: instance)
        }
        do {
            return try JSONDecoder().decode(LabState.self, from: data)
        } catch {
            throw LabError.invalidArgument("\(statePath) is unreadable (\(error)): run `patronus-router lab down` to clean up")
        }
    }

    private func write(_ state: LabState) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(state)
        let temporary = statePath + ".tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600]),
              rename(temporary, statePath) == 0 else {
            throw LabError.systemCall("write \(statePath)", errno: errno)
        }
    }

    /// The impairment control of the running lab.
    func control(for state: LabState) -> any WANControl {
        switch state.backend {
        case .userspace:
            return WANEmulatorClient(controlPath: state.controlSocket ?? controlPath)
        case .netem:
            var settings: [UplinkID: [TrafficDirection: Impairment]] = [:]
            for (key, directions) in state.netemSettings {
                let parts = key.split(separator: "/")
                guard parts.count == 2 else { continue }
                let id = UplinkID(site: String(parts[0]), uplink: String(parts[1]))
                for (direction, impairment) in directions {
                    if let direction = TrafficDirection(rawValue: direction) { settings[id, default: [:]][direction] = impairment }
                }
            }
            return NetemControl(plan: state.plan, settings: settings)
        }
    }

    /// Changes `site`'s `uplink` (label, letter or interface) in `directions`; returns the new status.
    @discardableResult
    public func impair(site: String, uplink: String, _ change: ImpairmentChange,
                       directions: Set<TrafficDirection>) throws -> [EmulatedLinkStatus] {
        try Self.requireRoot()
        try change.validate()
        guard !change.isEmpty else {
            throw LabError.invalidArgument("nothing to change: give --delay, --jitter, --loss, --rate, --queue, --cut, --restore or --clear")
        }
        var state = try read()
        let resolved = try state.plan.uplink(site: site, named: uplink)
        let control = control(for: state)
        try control.apply(change, to: resolved.id, directions: directions)
        if let netem = control as? NetemControl {
            state.netemSettings = Dictionary(uniqueKeysWithValues: netem.currentSettings.map { id, directions in
                (id.description, Dictionary(uniqueKeysWithValues: directions.map { ($0.key.rawValue, $0.value) }))
            })
            try write(state)
        }
        return try control.status()
    }

    // MARK: changing uplinks

    /// Takes the carrier of `site`'s `uplink` (label, letter or interface) away or gives it back: the ISP's
    /// end of the cable goes down or up, so the router sees its `wan-x` lose or regain carrier.
    public func setCarrier(site: String, uplink: String, up: Bool) throws {
        try Self.requireRoot()
        let plan = try read().plan
        try LabWiring.setCarrier(plan, try plan.uplink(site: site, named: uplink), up: up, NetworkNamespace.init(existing:))
    }

    /// Gives `site`'s `uplink` its next address (routed: new subnet and gateway), as DHCP or PPPoE
    /// renumbering would; returns the uplink as it is now.
    @discardableResult
    public func renumber(site: String, uplink: String) throws -> LabPlan.Uplink {
        try changePlan { plan in
            let id = try plan.uplink(site: site, named: uplink).id
            let next = try plan.renumbered(id)
            try LabWiring.renumber(from: plan, to: next, id, NetworkNamespace.init(existing:))
            return next
        }.uplink(site: site, named: uplink)
    }

    /// Plugs an unplugged uplink in: `wan-x` appears in the router namespace with its address and route.
    public func plug(site: String, uplink: String) throws { try setPlugged(site: site, uplink: uplink, true) }

    /// Unplugs an uplink: `wan-x` leaves the router namespace (it waits in the ISP's, down).
    public func unplug(site: String, uplink: String) throws { try setPlugged(site: site, uplink: uplink, false) }

    private func setPlugged(site: String, uplink: String, _ plugged: Bool) throws {
        try changePlan { plan in
            let next = try plan.plugging(try plan.uplink(site: site, named: uplink).id, plugged)
            try LabWiring.setPlugged(next, try next.uplink(site: site, named: uplink), plugged,
                                     NetworkNamespace.init(existing:))
            return next
        }
    }

    /// Applies `change` to the lab's plan and records the plan it returns (only when it went through).
    @discardableResult
    private func changePlan(_ change: (LabPlan) throws -> LabPlan) throws -> LabPlan {
        try Self.requireRoot()
        var state = try read()
        state.plan = try change(state.plan)
        try write(state)
        return state.plan
    }

    /// Current impairments and counters of every uplink.
    public func impairmentStatus() throws -> [EmulatedLinkStatus] {
        try control(for: read()).status()
    }

    /// A human report of the running lab.
    public func statusReport() throws -> String {
        let state = try read()
        let plan = state.plan
        var lines: [String] = []
        let missing = plan.namespaceNames.filter { !NetworkNamespace.exists($0) }
        lines.append("lab '\(plan.instance)' up since \(state.createdAt) UTC: \(plan.sites.count) sites, \(plan.isps.count) uplinks each, WAN: \(plan.wan.rawValue), emulation: \(state.backend.rawValue)")
        if !missing.isEmpty { lines.append("WARNING: namespaces missing: \(missing.joined(separator: ", ")) (run `lab down`, then `lab up`)") }
        if let emulator = state.emulator {
            lines.append("emulator: pid \(emulator.pid) \(emulator.isAlive ? "running" : "NOT RUNNING")")
        }
        if state.routers.isEmpty {
            lines.append("routers: not started (the topology alone\(state.staticRoutes ? ", static routes between the LANs over \(plan.isps[0].label)" : ""))")
        } else {
            for (site, router) in state.routers.sorted(by: { $0.key < $1.key }) {
                lines.append("router \(site): pid \(router.pid) \(router.isAlive ? "running" : "NOT RUNNING")")
            }
        }
        lines.append("")
        lines.append("SITE      NAMESPACE              LAN             UPLINKS")
        for site in plan.sites {
            let uplinks = plan.uplinks(of: site.name).map { uplink in
                let notes = (uplink.natted ? (plan.isSymmetricNAT(uplink.id) ? " NAT (symmetric)" : " NAT") : "") + (plan.isPlugged(uplink.id) ? "" : " unplugged")
                return "\(uplink.routerInterface) \(uplink.address) (\(uplink.isp)\(notes))"
            }
            lines.append("\(pad(site.name, 9)) \(pad(plan.routerNamespace(site.name), 22)) \(pad(site.lanPrefix, 15)) \(uplinks.joined(separator: ", "))")
        }
        lines.append("")
        lines.append("UPLINK          IN (isp -> site)                 OUT (site -> isp)                DROPPED in/out")
        let status = (try? control(for: state).status()) ?? []
        if status.isEmpty { lines.append("(the emulator did not answer)") }
        for link in status {
            let dropped = [link.inboundCounters.dropped, link.outboundCounters.dropped]
            lines.append("\(pad(link.id.description, 15)) \(pad(link.inbound.description, 32)) \(pad(link.outbound.description, 32)) \(dropped[0])/\(dropped[1])")
        }
        lines.append("")
        lines.append("look inside: sudo ip netns exec \(plan.routerNamespace(plan.sites[0].name)) ip addr")
        return lines.joined(separator: "\n")
    }

    private func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }

    static func timestamp() -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
        return formatter.string(from: Date())
    }
}

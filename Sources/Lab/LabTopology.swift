import Foundation
import Glibc

/// A whole SD-WAN on one machine: the namespaces, veths, bridges and addresses of a `LabPlan`, plus the
/// WAN emulation between every site and its ISPs. One implementation for `lab up`, the tests and bench/.
///
/// Guarantees: `build` either returns a complete lab or throws having removed everything it made. The
/// namespaces are owned (deleted by `teardown()`, deinit, and on exit/SIGINT/SIGTERM via `LabCleanup`)
/// until `persist()` hands them over. Names are unique per `plan.instance`, so parallel labs never collide.
///
/// Cost: about 15 `ip` calls per uplink and per site; a 3-site, 2-uplink lab builds in well under a second.
public final class LabTopology: @unchecked Sendable {
    /// Where the WAN emulation runs.
    public enum Emulation: Sendable {
        /// Pick netem when the kernel has it, else the userspace emulator in this process.
        case automatic
        /// The userspace emulator, as threads of this process (tests, bench).
        case inProcess
        /// Nothing is started: the caller runs the `lab wan-emulator` daemon (`lab up`).
        case external
        /// tc netem (fails to build on a kernel without it).
        case netem
    }

    public struct Options: Sendable {
        public var emulation: Emulation = .automatic
        /// Routes between the sites' LANs over the first ISP, for a lab without routers (`lab up` before
        /// the router runs). Off when the routers install their own.
        public var staticRoutes: Bool = false
        /// Tests: throw when the build reaches this step, to check the rollback.
        var failAt: BuildStep?
        public init(emulation: Emulation = .automatic, staticRoutes: Bool = false) {
            self.emulation = emulation
            self.staticRoutes = staticRoutes
        }
    }

    enum BuildStep: Sendable { case isps, sites, uplinks, routes }

    /// The plan as the lab is now (the uplink verbs change it).
    public var plan: LabPlan {
        lock.lock()
        defer { lock.unlock() }
        return current
    }
    private var current: LabPlan
    private let lock = NSLock()
    public let backend: WANBackend
    /// The impairment control of this lab (nil with `.external` emulation until `attach(_:)`).
    public private(set) var wan: (any WANControl)?
    private let namespaces: [String: NetworkNamespace]

    private init(plan: LabPlan, backend: WANBackend, namespaces: [String: NetworkNamespace]) {
        self.current = plan
        self.backend = backend
        self.namespaces = namespaces
    }

    deinit { teardown() }

    /// A lab with a unique instance name `t<pid>x<random>` (base 36; for tests): `LabTopology.build(sites: 2)`,
    /// `LabTopology.build(sites: 2, wan: .routed, nat: [UplinkID(site: "east", uplink: "isp-b")])`.
    public static func build(sites: Int = 3, uplinks: Int = 2, wan: LabPlan.WANMode = .bridged, nat: [UplinkID] = [],
                             symmetricNAT: [UplinkID] = [], unplugged: [UplinkID] = [],
                             options: Options = Options()) throws -> LabTopology {
        try build(LabPlan.make(instance: uniqueInstance(), sites: sites, uplinks: uplinks, wan: wan, nat: nat,
                               symmetricNAT: symmetricNAT, unplugged: unplugged), options: options)
    }

    /// `t<pid>x<random>`: the pid in the name tells, in `ip netns list`, which process a lab belongs to.
    public static func uniqueInstance() -> String {
        "t" + String(getpid(), radix: 36) + "x" + String(UInt32.random(in: 0 ... 0xFF_FFFF), radix: 36)
    }

    /// Builds `plan`. On any failure everything already made is removed before the error is thrown.
    public static func build(_ plan: LabPlan, options: Options = Options()) throws -> LabTopology {
        for name in plan.namespaceNames where NetworkNamespace.exists(name) {
            throw LabError.alreadyRunning(instance: plan.instance)
        }
        let backend: WANBackend
        switch options.emulation {
        case .netem: backend = .netem
        case .inProcess, .external: backend = .userspace
        case .automatic: backend = WANBackend.kernelHasNetem() ? .netem : .userspace
        }
        var made: [String: NetworkNamespace] = [:]
        var emulator: WANEmulator?
        func reached(_ step: BuildStep) throws {
            if options.failAt == step { throw LabError.invalidArgument("injected failure at \(step)") }
        }
        do {
            for name in plan.namespaceNames { made[name] = try NetworkNamespace(creatingNamed: name) }
            try reached(.isps)
            try LabWiring.buildISPs(plan) { made[$0]! }
            try reached(.sites)
            for site in plan.sites {
                let router = made[plan.routerNamespace(site.name)]!
                let host = made[plan.hostNamespace(site.name)]!
                try router.enableForwarding()
                // Several uplinks and policy routing: strict reverse-path filtering would drop replies.
                try router.setSysctl("net.ipv4.conf.all.rp_filter", "0")
                try router.setSysctl("net.ipv4.conf.default.rp_filter", "0")
                try router.addVeth(LabPlan.lanInterface, peer: LabPlan.hostInterface, in: host)
                try router.addAddress("\(site.routerLANAddress)/24", to: LabPlan.lanInterface)
                try host.addAddress("\(site.hostAddress)/24", to: LabPlan.hostInterface)
                try host.addRoute("default", via: site.routerLANAddress)
            }
            if backend == .userspace && options.emulation != .external { emulator = WANEmulator() }
            try reached(.uplinks)
            for uplink in plan.uplinks {
                let isp = made[plan.ispNamespace(uplink.isp)]!
                try LabWiring.cable(plan, uplink) { made[$0]! }
                switch backend {
                case .netem:
                    try isp.addBridge(uplink.netemBridge)
                    try isp.attach(uplink.siteFacing, toBridge: uplink.netemBridge)
                    try isp.attach(uplink.emulatorFacing, toBridge: uplink.netemBridge)
                case .userspace:
                    try emulator?.addLink(uplink.id, in: isp, siteInterface: uplink.siteFacing,
                                          bridgeInterface: uplink.emulatorFacing)
                }
            }
            for isp in plan.isps { try LabWiring.installNAT(plan, isp: isp.label) { made[$0]! } }
            try reached(.routes)
            // Bridged only: routed ISPs carry no LAN prefixes (the routers' tunnels do).
            if options.staticRoutes, plan.wan == .bridged {
                for site in plan.sites {
                    let router = made[plan.routerNamespace(site.name)]!
                    for other in plan.sites where other != site {
                        guard let via = plan.uplinks(of: other.name).first, plan.isPlugged(via.id) else { continue }
                        try router.addRoute(other.lanPrefix, via: via.address)
                    }
                }
            }
        } catch {
            emulator?.stop()
            for ns in made.values { ns.delete() }
            throw error
        }
        let topology = LabTopology(plan: plan, backend: backend, namespaces: made)
        topology.wan = backend == .netem ? NetemControl(plan: plan) : emulator
        return topology
    }

    /// The router namespace of `site`.
    public func router(_ site: String) -> NetworkNamespace { namespace(plan.routerNamespace(site)) }
    /// The LAN host namespace behind `site`.
    public func host(_ site: String) -> NetworkNamespace { namespace(plan.hostNamespace(site)) }
    /// The namespace of ISP `label` (`isp-a`).
    public func isp(_ label: String) -> NetworkNamespace { namespace(plan.ispNamespace(label)) }
    /// Routed mode: the internet exchange between the ISPs.
    public func internet() -> NetworkNamespace { namespace(plan.internetNamespace) }

    private func namespace(_ name: String) -> NetworkNamespace {
        guard let ns = namespaces[name] else { preconditionFailure("no namespace \(name) in lab \(plan.instance)") }
        return ns
    }

    /// Sets the control for `.external` emulation (the daemon's client).
    public func attach(_ control: any WANControl) { wan = control }

    /// Changes the impairment of `site`'s `uplink` (label, letter or interface name) in `directions`.
    public func impair(site: String, uplink: String, _ change: ImpairmentChange,
                       directions: Set<TrafficDirection> = Set(TrafficDirection.allCases)) throws {
        let resolved = try plan.uplink(site: site, named: uplink)
        guard let wan else { throw LabError.emulator("no WAN emulation is attached to lab \(plan.instance)") }
        try wan.apply(change, to: resolved.id, directions: directions)
    }

    // MARK: changing uplinks (the same steps as `lab carrier`, `renumber`, `plug`, `unplug`)

    /// Takes the carrier of `site`'s `uplink` away (`up: false`: the ISP's end goes down) or gives it back.
    public func setCarrier(site: String, uplink: String, up: Bool) throws {
        let plan = plan
        try LabWiring.setCarrier(plan, try plan.uplink(site: site, named: uplink), up: up, namespace)
    }

    /// Gives `site`'s `uplink` its next address (routed: a new subnet and gateway too), as a DHCP or PPPoE
    /// renumbering would. Returns the uplink as it is now.
    @discardableResult
    public func renumber(site: String, uplink: String) throws -> LabPlan.Uplink {
        try changePlan { plan in
            let id = try plan.uplink(site: site, named: uplink).id
            let next = try plan.renumbered(id)
            try LabWiring.renumber(from: plan, to: next, id, namespace)
            return next
        }
        return try plan.uplink(site: site, named: uplink)
    }

    /// Plugs `site`'s `uplink` in (it was unplugged at build or by `unplug`): the router sees `wan-x` appear.
    public func plug(site: String, uplink: String) throws { try setPlugged(site: site, uplink: uplink, true) }

    /// Unplugs `site`'s `uplink`: `wan-x` leaves the router namespace.
    public func unplug(site: String, uplink: String) throws { try setPlugged(site: site, uplink: uplink, false) }

    private func setPlugged(site: String, uplink: String, _ plugged: Bool) throws {
        try changePlan { plan in
            let next = try plan.plugging(try plan.uplink(site: site, named: uplink).id, plugged)
            try LabWiring.setPlugged(next, try next.uplink(site: site, named: uplink), plugged, namespace)
            return next
        }
    }

    /// One uplink change at a time; the plan follows only a change that went through.
    private func changePlan(_ change: (LabPlan) throws -> LabPlan) throws {
        lock.lock()
        defer { lock.unlock() }
        current = try change(current)
    }

    /// Stops the emulation and deletes every namespace of the lab (processes inside are killed first).
    /// Idempotent. Does nothing to namespaces handed over by `persist()`.
    public func teardown() {
        wan?.stop()
        for ns in namespaces.values { ns.delete() }
    }

    /// Hands the namespaces over: they outlive this object and process (`lab up`; `lab down` removes them).
    public func persist() {
        for ns in namespaces.values { ns.persist() }
    }
}

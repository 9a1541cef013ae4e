/// How the lab wires its ISPs and every uplink, for `LabTopology.build` and for the verbs that change an
/// uplink of a running lab (`lab carrier`, `lab renumber`, `lab plug`, `lab unplug`), so that a lab built
/// with an uplink renumbered or unplugged and one changed later look the same. Every step is an `ip`/`nft`
/// call in the lab's namespaces (never in the root namespace); `namespace` maps a namespace name to its
/// handle.
enum LabWiring {
    typealias Namespaces = (String) -> NetworkNamespace

    /// The nft table of an ISP's carrier NAT (routed mode).
    static let natTable = "lab_nat"

    /// The default route's metric over `uplink`: the first ISP is preferred, as on a multi-homed site.
    static func metric(_ uplink: LabPlan.Uplink) -> Int { 100 + uplink.ispIndex }

    /// Bridged: each ISP's bridge and its address. Routed: the internet exchange (a bridge holding
    /// 100.64.0.254) and each ISP's `core` interface on it, with routes to the other ISPs' blocks.
    static func buildISPs(_ plan: LabPlan, _ namespace: Namespaces) throws {
        switch plan.wan {
        case .bridged:
            for isp in plan.isps {
                let ns = namespace(plan.ispNamespace(isp.label))
                try ns.addBridge(LabPlan.bridge)
                try ns.addAddress("\(isp.gateway)/24", to: LabPlan.bridge)
                try Offloads.disable(on: LabPlan.bridge, in: ns)
            }
        case .routed:
            let internet = namespace(plan.internetNamespace)
            try internet.addBridge(LabPlan.bridge)
            try internet.addAddress("\(LabPlan.internetAddress)/24", to: LabPlan.bridge)
            // The exchange also routes (each ISP's block to it): a customer behind an ISP's NAT reaching another
            // customer's public mapping at the same ISP goes out and comes back in by it (hairpinning).
            try internet.enableForwarding()
            try internet.setSysctl("net.ipv4.conf.all.send_redirects", "0")
            try internet.setSysctl("net.ipv4.conf.\(LabPlan.bridge).send_redirects", "0")
            for isp in plan.isps { try internet.addRoute(isp.block, via: isp.coreAddress) }
            for isp in plan.isps {
                let ns = namespace(plan.ispNamespace(isp.label))
                let port = "i-\(isp.label)"
                try ns.addVeth(LabPlan.coreInterface, peer: port, in: internet)
                try internet.attach(port, toBridge: LabPlan.bridge)
                try ns.addAddress("\(isp.coreAddress)/24", to: LabPlan.coreInterface)
                try ns.enableForwarding()
                for other in plan.isps where other != isp {
                    try ns.addRoute(other.block, via: other.coreAddress)
                }
            }
        }
    }

    /// The veths of `uplink` (the router's end parked in the ISP namespace when unplugged) and the ISP's
    /// end of it: a bridge port (bridged) or the site's gateway (routed). The WAN emulation between
    /// `s-<site>` and `e-<site>` is the caller's.
    static func cable(_ plan: LabPlan, _ uplink: LabPlan.Uplink, _ namespace: Namespaces) throws {
        let router = namespace(plan.routerNamespace(uplink.site))
        let isp = namespace(plan.ispNamespace(uplink.isp))
        if plan.isPlugged(uplink.id) {
            try router.addVeth(uplink.routerInterface, peer: uplink.siteFacing, in: isp)
            try Offloads.disable(on: uplink.routerInterface, in: router)
        } else {
            try isp.addVeth(uplink.parked, peer: uplink.siteFacing, in: isp)
            try Offloads.disable(on: uplink.parked, in: isp)
        }
        try isp.addVeth(uplink.emulatorFacing, peer: uplink.bridgePort, in: isp)
        switch plan.wan {
        case .bridged: try isp.attach(uplink.bridgePort, toBridge: LabPlan.bridge)
        case .routed: try isp.addAddress("\(uplink.gateway)/\(uplink.prefixLength)", to: uplink.bridgePort)
        }
        for device in [uplink.siteFacing, uplink.emulatorFacing, uplink.bridgePort] {
            try Offloads.disable(on: device, in: isp)
        }
        if plan.isPlugged(uplink.id) { try configureRouterSide(plan, uplink, namespace) }
    }

    /// The site's address on `uplink` and its default route over it (what DHCP would give it).
    static func configureRouterSide(_ plan: LabPlan, _ uplink: LabPlan.Uplink, _ namespace: Namespaces) throws {
        let router = namespace(plan.routerNamespace(uplink.site))
        try router.addAddress("\(uplink.address)/\(uplink.prefixLength)", to: uplink.routerInterface)
        try router.ip("route", "replace", "default", "via", uplink.gateway, "dev", uplink.routerInterface,
                      "metric", String(metric(uplink)))
    }

    /// Routed mode: the carrier NAT of `isp` rebuilt from the plan: every natted uplink's private subnet is
    /// source-NATed (port-preserving where it can, or symmetric: a random port per destination) to the uplink's own public address, and nothing outside may open a connection into it (only
    /// replies of a mapping pass).
    static func installNAT(_ plan: LabPlan, isp label: String, _ namespace: Namespaces) throws {
        guard plan.wan == .routed, let isp = plan.isps.first(where: { $0.label == label }) else { return }
        let ns = namespace(plan.ispNamespace(isp.label))
        _ = try ns.run(["nft", "delete", "table", "ip", natTable])
        let natted = plan.uplinks.filter { $0.isp == isp.label && $0.natted }
        guard !natted.isEmpty else { return }
        try ns.check(["nft", "add", "table", "ip", natTable])
        try ns.check(["nft", "add", "chain", "ip", natTable, "postrouting",
                      "{", "type", "nat", "hook", "postrouting", "priority", "srcnat", ";", "}"])
        try ns.check(["nft", "add", "chain", "ip", natTable, "forward",
                      "{", "type", "filter", "hook", "forward", "priority", "filter", ";", "}"])
        for uplink in natted {
            // Symmetric (endpoint-dependent mapping): a random public port for every new conntrack entry, so
            // each destination sees the uplink at another port, and a port learned by one site is useless to
            // another. Otherwise port-preserving where it can (endpoint-independent, like most CPE).
            try ns.check(["nft", "add", "rule", "ip", natTable, "postrouting", "ip", "saddr", uplink.subnet,
                          "ip", "daddr", "!=", uplink.subnet, "snat", "to", uplink.publicAddress]
                         + (plan.isSymmetricNAT(uplink.id) ? ["fully-random"] : []))
            try ns.check(["nft", "add", "rule", "ip", natTable, "forward", "ip", "daddr", uplink.subnet,
                          "ct", "direction", "original", "counter", "drop"])
            // Unsolicited packets to the public address are dropped before conntrack keeps them (a kept one
            // would take the tuple a later mapping needs, and the NAT would then change the port: real CPEs
            // drop them too). Hairpinning (one customer to another's public address) goes by the exchange:
            // out SNATed, back in as a reply to the other customer's mapping.
            try ns.check(["nft", "add", "rule", "ip", natTable, "forward", "iifname", LabPlan.coreInterface,
                          "ip", "daddr", uplink.publicAddress, "ct", "direction", "original", "counter", "drop"])
            try ns.ip("route", "replace", "\(uplink.publicAddress)/32", "via", LabPlan.internetAddress)
        }
    }

    /// Carrier of `uplink` as the site sees it: the ISP's end (`s-<site>`) goes down or up.
    static func setCarrier(_ plan: LabPlan, _ uplink: LabPlan.Uplink, up: Bool, _ namespace: Namespaces) throws {
        try namespace(plan.ispNamespace(uplink.isp)).ip("link", "set", uplink.siteFacing, up ? "up" : "down")
    }

    /// Moves `uplink` from `old` to `new` numbering: the ISP's gateway first (routed), then the site's
    /// address and default route (if plugged in), then the old gateway goes; the NAT follows.
    static func renumber(from oldPlan: LabPlan, to newPlan: LabPlan, _ id: UplinkID, _ namespace: Namespaces) throws {
        let old = try oldPlan.uplink(site: id.site, named: id.uplink)
        let new = try newPlan.uplink(site: id.site, named: id.uplink)
        let isp = namespace(newPlan.ispNamespace(new.isp))
        if newPlan.wan == .routed {
            try isp.addAddress("\(new.gateway)/\(new.prefixLength)", to: new.bridgePort)
        }
        if newPlan.isPlugged(id) {
            let router = namespace(newPlan.routerNamespace(new.site))
            try router.ip("addr", "del", "\(old.address)/\(old.prefixLength)", "dev", old.routerInterface)
            try configureRouterSide(newPlan, new, namespace)
        }
        if newPlan.wan == .routed {
            try isp.ip("addr", "del", "\(old.gateway)/\(old.prefixLength)", "dev", old.bridgePort)
            if new.natted { try installNAT(newPlan, isp: new.isp, namespace) }
        }
    }

    /// Plugs `uplink` in: its parked end moves into the router namespace as `wan-x` (the router sees a
    /// new link appear, as a USB modem would), comes up and gets its address and default route. Unplugs
    /// it (`plugged: false`): `wan-x` leaves the router namespace (the router sees the link go away) and
    /// waits, down, in the ISP namespace.
    static func setPlugged(_ plan: LabPlan, _ uplink: LabPlan.Uplink, _ plugged: Bool, _ namespace: Namespaces) throws {
        let isp = namespace(plan.ispNamespace(uplink.isp))
        let router = namespace(plan.routerNamespace(uplink.site))
        guard plugged else {
            try router.ip("link", "set", uplink.routerInterface, "netns", isp.name, "name", uplink.parked)
            return
        }
        try isp.ip("link", "set", uplink.parked, "netns", router.name, "name", uplink.routerInterface)
        try router.setUp(uplink.routerInterface)
        try configureRouterSide(plan, uplink, namespace)
    }
}

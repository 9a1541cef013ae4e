import Foundation
import Model
import Testing
import WireGuard
@testable import Mesh

/// The relayed fallback's pure decision (`RelayPlanner`): when a site goes through a relay, through which,
/// never over a working direct session, never through or for a site that is not a member.
struct RelayPlannerTests {
    let uplinks = [Uplink(interface: "wan-a", label: "isp-a"), Uplink(interface: "wan-b", label: "isp-b")]
    let settings = TunnelSettings(interfacePrefix: "wg-east")
    let start = Date(timeIntervalSince1970: 1_800_000_000)
    var local: [Endpoint] {
        TunnelPlanner.localEndpoints(uplinks: uplinks, addresses: ["wan-a": IPv4Address(172, 17, 2, 2), "wan-b": IPv4Address(172, 18, 2, 2)],
                                     settings: settings)
    }
    /// hq (relay), west (behind a NAT we cannot cross), north (relay too, larger id).
    var hq: SiteDescription {
        var site = remoteSite(1, labels: ["isp-a", "isp-b"], lan: [IPv4Prefix("10.1.0.0/24")!])
        site.relay = true
        return site
    }
    var west: SiteDescription { remoteSite(3, labels: ["isp-a", "isp-b"], lan: [IPv4Prefix("10.3.0.0/24")!]) }
    var north: SiteDescription {
        var site = remoteSite(4, labels: ["isp-a"], lan: [IPv4Prefix("10.4.0.0/24")!])
        site.relay = true
        return site
    }

    func plan(_ sites: [SiteDescription]) throws -> TunnelPlan {
        try TunnelPlanner.plan(uplinks: uplinks, localEndpoints: local, remotes: sites, settings: settings)
    }

    /// Handshakes: `working` sites have handshaken on every interface just now; the rest never.
    func inputs(_ members: [SiteDescription], working: Set<SiteID>, plan: TunnelPlan, after seconds: Double) -> RelayInputs {
        var handshakes: [TunnelSession: Date?] = [:]
        for path in plan.paths {
            handshakes[TunnelSession(interface: path.interface, peer: path.peer)] =
                working.contains(path.remoteSite) ? start.addingTimeInterval(seconds - 1) : nil
        }
        return RelayInputs(members: members, knownSince: Dictionary(uniqueKeysWithValues: members.map { ($0.siteID, start) }),
                           handshakes: handshakes, now: start.addingTimeInterval(seconds))
    }

    @Test func aSiteWithoutADirectSessionGoesThroughTheRelayAfterTheGrace() throws {
        let sites = [hq, west]
        let plan = try plan(sites)
        // Within the grace NAT traversal may still succeed: nothing relayed.
        let early = RelayPlanner.decide(inputs(sites, working: [hq.siteID], plan: plan, after: Conventions.relayDirectGrace - 1),
                                        plan: plan, current: [:])
        #expect(early.isEmpty)
        let decision = RelayPlanner.decide(inputs(sites, working: [hq.siteID], plan: plan, after: Conventions.relayDirectGrace + 1),
                                           plan: plan, current: [:])
        #expect(decision == [west.siteID: hq.siteID])

        // Applied: on both interfaces west's overlay and LAN move to hq's peer; west's peer stays (it keeps
        // trying its handshake) without allowed IPs; west's paths say relayed via hq; routing is unchanged.
        let relayed = RelayPlanner.apply(decision, to: plan)
        for interface in relayed.interfaces {
            let hqPeer = try #require(interface.peers.first { $0.publicKey == hq.publicKey })
            let westPeer = try #require(interface.peers.first { $0.publicKey == west.publicKey })
            #expect(hqPeer.allowedIPs == [IPv4Prefix("10.99.0.1/32")!, IPv4Prefix("10.1.0.0/24")!,
                                          IPv4Prefix("10.99.0.3/32")!, IPv4Prefix("10.3.0.0/24")!])
            #expect(westPeer.allowedIPs.isEmpty)
            #expect(westPeer.endpoint == plan.interfaces.first { $0.name == interface.name }?.peers.first { $0.publicKey == west.publicKey }?.endpoint)
        }
        for path in relayed.paths {
            #expect(path.relay == (path.remoteSite == west.siteID ? hq.siteID : nil))
            #expect(path.relayName == (path.remoteSite == west.siteID ? "site1" : nil))
        }
        #expect(relayed.paths.map(\.destinations) == plan.paths.map(\.destinations))
        #expect(relayed.paths.map(\.interface) == plan.paths.map(\.interface))
    }

    @Test func aWorkingDirectSessionIsNeverReplacedByARelay() throws {
        let sites = [hq, west]
        let plan = try plan(sites)
        // West handshakes directly (on any interface): direct, even while a relay was in use.
        let decision = RelayPlanner.decide(inputs(sites, working: [hq.siteID, west.siteID], plan: plan, after: 60),
                                           plan: plan, current: [west.siteID: hq.siteID])
        #expect(decision.isEmpty)
        #expect(RelayPlanner.apply(decision, to: plan) == plan)
        // One direct session on one interface is enough.
        var one = inputs(sites, working: [hq.siteID], plan: plan, after: 60)
        let westOnB = try #require(plan.paths.first { $0.remoteSite == west.siteID && $0.uplink.label == "isp-b" })
        one.handshakes[TunnelSession(interface: westOnB.interface, peer: westOnB.peer)] = one.now.addingTimeInterval(-10)
        #expect(RelayPlanner.decide(one, plan: plan, current: [:]).isEmpty)
        // A handshake older than a working session's age does not count: relayed.
        one.handshakes[TunnelSession(interface: westOnB.interface, peer: westOnB.peer)] =
            one.now.addingTimeInterval(-TunnelReconciler.workingSessionAge - 1)
        #expect(RelayPlanner.decide(one, plan: plan, current: [:]) == [west.siteID: hq.siteID])
    }

    @Test func onlyAMemberThatRelaysAndHasAWorkingSessionIsChosen() throws {
        var plainHQ = hq
        plainHQ.relay = false
        let plan1 = try plan([plainHQ, west])
        // hq does not relay: nobody to go through.
        #expect(RelayPlanner.decide(inputs([plainHQ, west], working: [plainHQ.siteID], plan: plan1, after: 60),
                                    plan: plan1, current: [:]).isEmpty)
        // hq relays but we have no working session with it: not a relay.
        let plan2 = try plan([hq, west])
        #expect(RelayPlanner.decide(inputs([hq, west], working: [], plan: plan2, after: 60), plan: plan2, current: [:]).isEmpty)
        // Two relays: the one with more working sessions (hq: both interfaces; north: isp-a only), then the one
        // in use is kept while it qualifies.
        let sites = [hq, west, north]
        let plan3 = try plan(sites)
        let both = inputs(sites, working: [hq.siteID, north.siteID], plan: plan3, after: 60)
        #expect(RelayPlanner.decide(both, plan: plan3, current: [:]) == [west.siteID: hq.siteID])
        #expect(RelayPlanner.decide(both, plan: plan3, current: [west.siteID: north.siteID]) == [west.siteID: north.siteID])
        // The relay in use stops qualifying (no session any more): the other one takes over, for hq too.
        let hqGone = inputs(sites, working: [north.siteID], plan: plan3, after: 60)
        #expect(RelayPlanner.decide(hqGone, plan: plan3, current: [west.siteID: hq.siteID])
                == [west.siteID: north.siteID, hq.siteID: north.siteID])
    }

    /// Bad input: a relay (or a relayed site) that is not an authenticated member changes nothing.
    @Test func nonMembersAreNeverRelayedToOrThrough() throws {
        let sites = [hq, west]
        let plan = try plan(sites)
        // A relay decision naming a stranger (not a member): dropped, and a stranger's plan entry is ignored.
        let stranger = remoteSite(9, labels: ["isp-a", "isp-b"])
        let membersOnly = inputs([west], working: [hq.siteID], plan: plan, after: 60)
        #expect(RelayPlanner.decide(membersOnly, plan: plan, current: [west.siteID: hq.siteID]).isEmpty,
                "hq is in the plan but not (any more) a member: never a relay")
        #expect(RelayPlanner.decide(inputs(sites, working: [hq.siteID], plan: plan, after: 60), plan: plan,
                                    current: [west.siteID: stranger.siteID]) == [west.siteID: hq.siteID])
        // Applying a decision through or for a site the plan does not have changes nothing.
        #expect(RelayPlanner.apply([west.siteID: stranger.siteID], to: plan) == plan)
        #expect(RelayPlanner.apply([stranger.siteID: hq.siteID], to: plan) == plan)
        // A relay is never its own relay.
        #expect(RelayPlanner.apply([hq.siteID: hq.siteID], to: plan) == plan)
    }

    /// Liveness for every path of `site`: its path down or not, and the last packet from the peer `silent`
    /// seconds before `inputs.now`.
    func liveness(_ inputs: RelayInputs, _ site: SiteDescription, plan: TunnelPlan, pathDown: Bool, silent: Double,
                  onlyInterface: String? = nil) -> RelayInputs {
        var out = inputs
        for path in plan.paths where path.remoteSite == site.siteID && (onlyInterface == nil || path.interface == onlyInterface) {
            out.liveness[TunnelSession(interface: path.interface, peer: path.peer)] =
                SessionLiveness(pathDown: pathDown, lastReceived: inputs.now.addingTimeInterval(-silent))
        }
        return out
    }

    @Test func aDirectSessionWhosePathIsDownAndSilentGoesToTheRelayAtOnce() throws {
        let sites = [hq, west]
        let plan = try plan(sites)
        // West handshook 60 s ago (WireGuard counts the session for 180 s), but every probe fails and west
        // has sent nothing for the dead silence: relayed now, not 120 s later, and both sessions restarted.
        let base = inputs(sites, working: [hq.siteID, west.siteID], plan: plan, after: 60)
        let dead = liveness(base, west, plan: plan, pathDown: true, silent: Conventions.relayDeadSilence)
        #expect(RelayPlanner.decide(dead, plan: plan, current: [:]) == [west.siteID: hq.siteID])
        let westSessions = Set(plan.paths.filter { $0.remoteSite == west.siteID }.map { TunnelSession(interface: $0.interface, peer: $0.peer) })
        #expect(RelayPlanner.deadSessions(dead, plan: plan) == westSessions)
        // hq, the relay, is alive: its sessions are never restarted.
        #expect(RelayPlanner.deadSessions(dead, plan: plan).allSatisfy { $0.peer == west.publicKey })
    }

    @Test func aPathThatOnlyLosesProbesOrIsOnlyQuietStaysDirect() throws {
        let sites = [hq, west]
        let plan = try plan(sites)
        let base = inputs(sites, working: [hq.siteID, west.siteID], plan: plan, after: 60)
        // Down, but a packet came through within the dead silence (a lossy path, or one just cut): direct.
        let lossy = liveness(base, west, plan: plan, pathDown: true, silent: Conventions.relayDeadSilence - 0.5)
        #expect(RelayPlanner.decide(lossy, plan: plan, current: [:]).isEmpty)
        #expect(RelayPlanner.deadSessions(lossy, plan: plan).isEmpty)
        // Silent for long, but the probes get through (the prober says up): direct.
        let quiet = liveness(base, west, plan: plan, pathDown: false, silent: 100)
        #expect(RelayPlanner.decide(quiet, plan: plan, current: [:]).isEmpty)
        #expect(RelayPlanner.deadSessions(quiet, plan: plan).isEmpty)
        // One interface dead, the other alive: west has a working direct session, so it stays direct; only the
        // dead one is restarted.
        let half = liveness(base, west, plan: plan, pathDown: true, silent: 30, onlyInterface: plan.interfaces[0].name)
        #expect(RelayPlanner.decide(half, plan: plan, current: [:]).isEmpty)
        #expect(RelayPlanner.deadSessions(half, plan: plan).map(\.interface) == [plan.interfaces[0].name])
        // A dead session that WireGuard no longer counts (no handshake: restarted, or never up) is not
        // restarted again: the first-handshake maintenance handles it.
        let never = liveness(inputs(sites, working: [hq.siteID], plan: plan, after: 60), west, plan: plan, pathDown: true, silent: 30)
        #expect(RelayPlanner.deadSessions(never, plan: plan).isEmpty)
        #expect(RelayPlanner.decide(never, plan: plan, current: [:]) == [west.siteID: hq.siteID])
    }

    @Test func deadNeedsBothTheDownPathAndTheSilence() {
        let now = start
        #expect(!RelayPlanner.isDead(nil, now: now))
        #expect(RelayPlanner.isDead(SessionLiveness(pathDown: true, lastReceived: now.addingTimeInterval(-Conventions.relayDeadSilence)), now: now))
        #expect(!RelayPlanner.isDead(SessionLiveness(pathDown: true, lastReceived: now.addingTimeInterval(-Conventions.relayDeadSilence + 0.1)), now: now))
        #expect(!RelayPlanner.isDead(SessionLiveness(pathDown: false, lastReceived: now.addingTimeInterval(-1000)), now: now))
        #expect(Conventions.relayDeadSilence >= 10, "no shorter than WireGuard's handshake retry and a loss burst")
    }
}

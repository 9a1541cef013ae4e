import Foundation
import Glibc
import Lab
import Testing

/// Issue 13 in a lab with an internet: routed ISPs (no shared L2, discovery by `--peer` only), an uplink behind
/// carrier NAT, and a hub that two branches know alone. Evidence from outside the routers: a stream's gaps
/// at the receiving LAN host, and every router's own status only to know when to measure.
@Suite(.serialized, .enabled(if: acceptanceCanRun, "needs root, wireguard-go and the built binaries"))
struct InternetRootTests {
    /// Routed ISPs, east's isp-b behind carrier NAT. Every path, the NATed one included, comes up; cutting
    /// east's public uplink under a 200 packets/s VoIP-class stream moves it to the NATed path, the stream
    /// keeps flowing for 30 s, and neither site expires the other (the control plane survives through the
    /// tunnel of the surviving path).
    @Test func aNATedUplinkCarriesThePathAndACutOfThePublicOneExpiresNobodyRoot() throws {
        let lab = try AcceptanceLab(sites: 2, wan: .routed, nat: [UplinkID(site: "east", uplink: "isp-b")])
        defer { lab.down() }
        try lab.waitForMesh(timeout: 20)
        let upAfter = monotonicSeconds() - lab.started
        print("routed + NAT: every path up \(String(format: "%.2f", upAfter)) s after the routers started")
        #expect(upAfter < 10, "measured \(upAfter) s; issue 13 asks for 3 s (bench/results/internet.md)")
        // VoIP takes the lowest latency: make it east's public isp-a, the one we cut.
        try lab.impair("east", "isp-b", .init(delayMs: 10))
        try lab.wait("hq's VoIP on isp-a", timeout: 15) {
            (try lab.metric("hq", to: "east", isp: "isp-b", "latency_ms") ?? 0) > 15
        }
        sleep(2)  // the hold-down: a better path is adopted after 1 s of being better
        let result = try lab.stream(from: "hq", to: "east", pps: 200, seconds: 33, after: 2) {
            try lab.impair("east", "isp-a", .init(cut: true))
        }
        print("routed + NAT, cut of east's public uplink: \(result)")
        #expect(result.blackoutMs <= 1000, "\(result)")  // budget 300 ms: bench/results/internet.md
        #expect(result.lost <= 200, "\(result)")          // the stream kept flowing for the 30 s after the cut
        for site in ["hq", "east"] {
            #expect(!lab.log(site).contains("site expired"), "\(site) expired its peer:\n\(lab.log(site))")
            let active = try lab.status(site)["active_sites"] as? [[String: Any]] ?? []
            #expect(active.count == 1, "\(site): \(active)")
        }
    }

    /// Routed ISPs; east and west behind NAT on both uplinks (each mapped to its own public address by its
    /// ISP's carrier NAT, port-preserving), given only hq (`--peer`). hq observes where their tunnels come from
    /// and tells each through its tunnel; each announces its public mapping; east and west initiate to each
    /// other's mappings and the NATs let the crossing handshakes through. Evidence from outside: a stream from
    /// east's LAN host reaches west's, leaving east's uplinks, and hq's uplinks send none of it (nothing goes
    /// through hq); time to first packet from the routers' start by a ping every 100 ms.
    @Test func twoBranchesBothBehindNATReachEachOtherDirectlyRoot() throws {
        let nat = ["east", "west"].flatMap { site in ["isp-a", "isp-b"].map { UplinkID(site: site, uplink: $0) } }
        let lab = try AcceptanceLab(sites: 3, wan: .routed, nat: nat, hub: "hq")
        defer { lab.down() }
        let ping = try EastWestPing(lab, seconds: 40)
        defer { ping.process.terminate() }
        try lab.waitForMesh(timeout: 30)
        let upAfter = monotonicSeconds() - lab.started
        print("both behind NAT: all 12 paths up \(String(format: "%.2f", upAfter)) s after the routers started")
        try lab.wait("a ping reply", timeout: 10) {
            ping.text.contains("icmp_seq=")
        }
        print("both behind NAT: east LAN -> west LAN first ping reply for the ping sent \(String(format: "%.1f", try ping.firstReply())) s after the routers started")

        // The status is written every 5 s.
        try lab.wait("east's and west's public mappings in their status", timeout: 15) {
            try ["east", "west"].allSatisfy { site in
                let local = try lab.status(site)["local_site"] as? [String: Any]
                let endpoints = local?["endpoints"] as? [[String: Any]] ?? []
                return endpoints.count == 2 && endpoints.allSatisfy { $0["public_endpoint"] != nil }
            }
        }
        for (site, other) in [("east", "west"), ("west", "east")] {
            let status = try lab.status(site)
            let local = try #require(status["local_site"] as? [String: Any])
            let endpoints = local["endpoints"] as? [[String: Any]] ?? []
            for isp in lab.ispLabels {
                let uplink = try lab.plan.uplink(site: site, named: isp)
                let endpoint = try #require(endpoints.first { $0["label"] as? String == isp }, "\(site): \(endpoints)")
                #expect(endpoint["address"] as? String == uplink.address)
                #expect((endpoint["public_endpoint"] as? String)?.hasPrefix(uplink.publicAddress + ":") == true, "\(site): \(endpoint)")
                #expect((endpoint["observed_by"] as? [String])?.contains("hq") == true, "\(site): \(endpoint)")
                let path = try #require(lab.paths(site, to: other)[isp])
                let remote = try lab.plan.uplink(site: other, named: isp)
                #expect((path["remote_endpoint"] as? String)?.hasPrefix(remote.publicAddress + ":") == true, "\(path)")
            }
            #expect(lab.log(site).contains("uplink behind NAT: announcing its public mapping"))
        }
        #expect(try (lab.status("hq")["local_site"] as? [String: Any])?["endpoints"].map { endpoints in
            (endpoints as? [[String: Any]] ?? []).allSatisfy { $0["public_endpoint"] == nil }
        } == true, "hq is public: no mapping")

        let (result, fromEast, fromHQ) = try streamEastToWest(lab)
        print("both behind NAT, east -> west stream: \(result)")
        #expect(result.received >= 270, "\(result)")
        #expect(fromEast >= 270, "the stream left east's uplinks: \(fromEast)")
        #expect(fromHQ == 0, "hq sent \(fromHQ) stream-sized packets: the stream went through it")
        // hq relays (the lab's hub runs with --relay), but a working direct path is never replaced by a relay.
        for (site, other) in [("east", "west"), ("west", "east")] {
            for (isp, path) in try lab.paths(site, to: other) {
                #expect(path["relay_via"] == nil, "\(site) -> \(other) over \(isp) is direct: \(path)")
            }
            #expect(!lab.log(site).contains("reaching the site through a relay"), "\(site) relayed:\n\(lab.log(site))")
        }
    }

    /// Routed ISPs; east and west behind symmetric NATs on both uplinks (every new destination gets a new
    /// random public port, so the mapping hq observes is useless to the other branch), given only hq, which
    /// relays (`--relay`, the lab's hub). No direct path between them can come up; after the grace for NAT
    /// traversal each sends the other's traffic into its tunnel to hq, and hq forwards it into its tunnel to
    /// the other. Evidence from outside: east's LAN host reaches west's, and the stream's packets leave hq's
    /// uplinks (counted on the ISP side) as many as left east's; every status says relayed via hq.
    @Test func twoBranchesBehindSymmetricNATTalkRelayedThroughTheHubRoot() throws {
        let nat = ["east", "west"].flatMap { site in ["isp-a", "isp-b"].map { UplinkID(site: site, uplink: $0) } }
        let lab = try AcceptanceLab(sites: 3, wan: .routed, symmetricNAT: nat, hub: "hq")
        defer { lab.down() }
        let ping = try EastWestPing(lab, seconds: 40)
        defer { ping.process.terminate() }
        try lab.wait("a ping reply east LAN -> west LAN", timeout: 30) {
            ping.text.contains("bytes from")
        }
        print("symmetric NAT both sides: east LAN -> west LAN first reply \(String(format: "%.1f", monotonicSeconds() - lab.started)) s after the routers started")
        // The status is written every 5 s: every path between the branches relayed via hq and up; hq's direct.
        try lab.wait("east's and west's paths to each other up, relayed via hq", timeout: 20) {
            try [("east", "west"), ("west", "east")].allSatisfy { site, other in
                let paths = try lab.paths(site, to: other)
                return paths.count == 2 && paths.values.allSatisfy { $0["relay_via"] as? String == "hq" && $0["status"] as? String == "up" }
            }
        }
        for site in ["east", "west"] {
            for (isp, path) in try lab.paths(site, to: "hq") {
                #expect(path["relay_via"] == nil && path["status"] as? String == "up", "\(site) -> hq over \(isp): \(path)")
            }
            #expect(lab.log(site).contains("reaching the site through a relay"))
        }
        let report = try Subprocess.run([Binary.path, "status", "--database", lab.database("east")])
        #expect(report.stdout.contains("relayed via hq"), "\(report.stdout)")
        // Only the relay forwards between its tunnels: east (no --relay) refuses transit, hq does not (read
        // from each router's kernel).
        for (site, policy) in [("east", "refused"), ("hq", "forwarded")] {
            let json = try Subprocess.run([Binary.path, "status", "--json", "--database", lab.database(site),
                                           "--netns", lab.plan.routerNamespace(site)])
            let status = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
            let transit = status?["transit"] as? [String: Any]
            #expect(transit?["policy"] as? String == policy, "\(site): \(transit.map { "\($0)" } ?? json.stdout + json.stderr)")
            #expect((transit?["refused_packets"] != nil) == (policy == "refused"), "\(site): \(String(describing: transit))")
        }

        let (result, fromEast, fromHQ) = try streamEastToWest(lab)
        print("symmetric NAT both sides, east -> west stream relayed: \(result)")
        #expect(result.received >= 270, "\(result)")
        #expect(fromEast >= 270, "the stream left east's uplinks: \(fromEast)")
        #expect(fromHQ >= 270, "the stream went through hq: hq sent \(fromHQ) stream-sized packets")
    }

    /// Bench only (`sudo bench/relay`, PATRONUS_BENCH_RELAY set): east and west behind symmetric NAT, relayed via
    /// hq. The time from the routers' start to the first packet east LAN -> west LAN and to every path between
    /// them up (relayed); then a 200 packets/s stream east -> west across a cut of hq's isp-a (the relay's
    /// uplink that carries it: east's isp-b is 10 ms slower): the blackout until steering moved to the relayed
    /// path over isp-b.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["PATRONUS_BENCH_RELAY"] != nil))
    func benchRelayedStartAndACutOfTheRelaysUplinkRoot() throws {
        let nat = ["east", "west"].flatMap { site in ["isp-a", "isp-b"].map { UplinkID(site: site, uplink: $0) } }
        let lab = try AcceptanceLab(sites: 3, wan: .routed, symmetricNAT: nat, hub: "hq")
        defer { lab.down() }
        let ping = try EastWestPing(lab, seconds: 30)
        defer { ping.process.terminate() }
        try lab.wait("east's paths to west up, relayed via hq", timeout: 30) {
            let paths = try lab.paths("east", to: "west")
            return paths.count == 2 && paths.values.allSatisfy { $0["relay_via"] as? String == "hq" && $0["status"] as? String == "up" }
        }
        // The status is written every 5 s: the time is when this bench saw it, an upper bound.
        print("relay: east's relayed paths to west seen up (status) \(String(format: "%.1f", monotonicSeconds() - lab.started)) s after the routers started")
        try lab.wait("a ping reply", timeout: 10) {
            ping.text.contains("bytes from")
        }
        print("relay: east LAN -> west LAN first ping reply for the ping sent \(String(format: "%.1f", try ping.firstReply())) s after the routers started")
        try lab.impair("east", "isp-b", .init(delayMs: 10))
        try lab.wait("east's relayed isp-b path measured slower", timeout: 30) {
            let a = try lab.metric("east", to: "west", isp: "isp-a", "latency_ms") ?? 1000
            return (try lab.metric("east", to: "west", isp: "isp-b", "latency_ms") ?? 0) > a + 5
        }
        sleep(2)  // the hold-down: a better path is adopted after 1 s of being better
        // VoIP as shipped: lowest latency, every packet copied over the best other path (both relayed here).
        let voip = try lab.stream(from: "east", to: "west", pps: 200, seconds: 13, after: 3) {
            try lab.impair("hq", "isp-a", .init(cut: true))
        }
        print("relay: cut of hq's isp-a (the relay's uplink) under a 200 packets/s VoIP stream east -> west (duplicated): \(voip)")
        // Which of east's paths to west went down (and back up) around the cut: evidence for a long blackout.
        let changes = lab.log("east").split(separator: "\n").filter {
            ($0.contains("path down") || $0.contains("path up") || $0.contains("path degraded")) && $0.contains("west")
        }
        print("relay: east's path changes to west after the VoIP cut: \(changes.suffix(6).joined(separator: " | "))")
        let voipEvents = try Subprocess.run(["sqlite3", lab.database("east"),
            "SELECT s.name, f.from_path, f.to_path, f.reason, f.detection_ms, f.switch_ms, f.time FROM failover_events f "
            + "LEFT JOIN sites s ON s.id = f.dst_site WHERE f.policy = 'voip' ORDER BY f.id DESC LIMIT 4"])
        print("relay: east's last failovers of voip (site|from|to|reason|detection ms|switch ms|time): \(voipEvents.stdout.split(separator: "\n").joined(separator: "; "))")
        #expect(voip.lost <= 400, "\(voip)")
        // The same without copies: the `default` class (best score), failing over from the dead relayed path.
        try lab.impair("hq", "isp-a", .init(cut: false))
        try lab.wait("east's relayed isp-a path to west up again", timeout: 30) {
            try lab.paths("east", to: "west")["isp-a"]?["status"] as? String == "up"
        }
        sleep(6)  // the status lags up to 5 s; then the hold-down
        let plain = try lab.stream(from: "east", to: "west", pps: 200, seconds: 13, after: 3, port: 40000) {
            try lab.impair("hq", "isp-a", .init(cut: true))
        }
        let events = try Subprocess.run(["sqlite3", lab.database("east"),
            "SELECT s.name, f.from_path, f.to_path, f.reason, f.detection_ms, f.switch_ms FROM failover_events f "
            + "LEFT JOIN sites s ON s.id = f.dst_site WHERE f.policy = 'default' ORDER BY f.id DESC LIMIT 4"])
        print("relay: cut of hq's isp-a under a 200 packets/s default-class stream east -> west (no copies): \(plain); east's last failovers of default (site|from|to|reason|detection ms|switch ms): \(events.stdout.split(separator: "\n").joined(separator: "; "))")
        #expect(plain.lost <= 400, "\(plain)")
    }

    /// Bench only (`sudo bench/relay RUNS dead-direct`, PATRONUS_BENCH_RELAY set): routed ISPs, every uplink
    /// public, hq the relay. East and west are direct; then every ISP drops the UDP between east's and west's
    /// uplinks (nft in the ISP namespaces; hq stays reachable for both): the direct sessions die while
    /// WireGuard still counts them (handshake within 180 s). The blackout of a 100 packets/s stream east ->
    /// west is the time from the block to the first packet relayed through hq.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["PATRONUS_BENCH_RELAY"] != nil))
    func benchADeadDirectPathMovesToTheRelayRoot() throws {
        let lab = try AcceptanceLab(sites: 3, wan: .routed, hub: "hq")
        defer { lab.down() }
        try lab.waitForMesh(timeout: 30)
        try lab.wait("east's paths to west up and direct", timeout: 20) {
            let paths = try lab.paths("east", to: "west")
            return paths.count == 2 && paths.values.allSatisfy { $0["relay_via"] == nil && $0["status"] as? String == "up" }
        }
        let branches = try ["east", "west"].flatMap { site in try lab.ispLabels.map { try lab.plan.uplink(site: site, named: $0).address } }
        let set = "{ " + branches.joined(separator: ", ") + " }"
        let result = try lab.stream(from: "east", to: "west", pps: 100, seconds: 30, after: 3) {
            for isp in lab.ispLabels {
                try lab.isp(isp).check(["nft", "add table inet block; add chain inet block cut { type filter hook forward priority -10; }; "
                                        + "add rule inet block cut ip saddr \(set) ip daddr \(set) meta l4proto udp counter drop"])
            }
        }
        let log = lab.log("east").split(separator: "\n").filter { $0.contains("direct session dead") || $0.contains("through a relay") }
        print("dead direct: east -> west stream across a block of the direct UDP (hq reachable): \(result); east: \(log.count) lines: \(log.prefix(3).joined(separator: " | "))")
        #expect(result.received > 0 && result.lost < 30 * 100, "\(result)")
        let paths = try lab.paths("east", to: "west")
        #expect(paths.values.allSatisfy { $0["relay_via"] as? String == "hq" }, "\(paths)")
    }

    /// A 3 s, 100 packets/s stream from east's LAN host to west's, and the stream-sized WireGuard data packets
    /// that east's and hq's uplinks sent meanwhile (counted on the ISP side).
    func streamEastToWest(_ lab: AcceptanceLab) throws -> (result: StreamResult, fromEast: Double, fromHQ: Double) {
        try lab.installClassCounters([("stream", 245...260)])
        let before = try lab.classCounters()
        let result = try lab.stream(from: "east", to: "west", pps: 100, seconds: 3, after: 0) {}
        let after = try lab.classCounters()
        return (result, lab.ispLabels.map { delta(after, before, isp: $0, "stream_east") }.reduce(0, +),
                lab.ispLabels.map { delta(after, before, isp: $0, "stream_hq") }.reduce(0, +))
    }

    /// Routed ISPs; east and west are given only hq (`--peer` hq's addresses), hq nobody. hq relays; all three
    /// learn each other and every path between every pair comes up.
    @Test func twoBranchesThatKnowOnlyTheHubBuildEveryPathRoot() throws {
        let lab = try AcceptanceLab(sites: 3, wan: .routed, hub: "hq")
        defer { lab.down() }
        try lab.waitForMesh(timeout: 20)
        print("routed + hub: all 12 paths up \(String(format: "%.2f", monotonicSeconds() - lab.started)) s after the routers started")
        #expect(lab.log("east").contains("via=relay"), "east learnt west other than relayed:\n\(lab.log("east"))")
    }
}

/// A ping every 100 ms from east's LAN host to west's, from the routers' start, logged to a file.
struct EastWestPing {
    let log: String
    let process: LabProcess

    init(_ lab: AcceptanceLab, seconds: Int) throws {
        log = "\(lab.controller.stateDirectory)/ping-east-west.log"
        process = try lab.host("east").spawn(["ping", "-n", "-i", "0.1", "-W", "1", "-w", "\(seconds)", lab.hostAddress("west")],
                                             logPath: log)
    }

    var text: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    /// When the ping that got the first reply was sent, in seconds from the start.
    func firstReply() throws -> Double {
        let pings = text
        let firstReply = pings.split(separator: "\n").first { $0.contains("bytes from") }
            .flatMap { $0.split(separator: " ").first { $0.hasPrefix("icmp_seq=") } }
            .flatMap { Int($0.dropFirst("icmp_seq=".count)) }
        let firstSeq = try #require(firstReply, "no reply in:\n\(pings)")
        return Double(firstSeq - 1) * 0.1
    }
}

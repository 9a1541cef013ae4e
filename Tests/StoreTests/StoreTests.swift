import Foundation
import GRDB
import Testing
@testable import Model
@testable import Store

@Suite struct SiteAndPathTests {
    @Test func localSiteIdentityIsCreatedOnceAndSurvivesReopenAndRename() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/id.db"
            let first = try Store.open(path: path).ensureLocalSite(name: "hq")
            let store = try Store.open(path: path)
            #expect(try store.ensureLocalSite(name: "headquarters") == first)
            #expect(try store.localSite()?.name == "headquarters")
            #expect(try store.sites().count == 1)
            try store.updateLocalSite(overlayAddress: IPv4Address("10.99.0.1"), publicKey: "key",
                                      lanPrefixes: [IPv4Prefix("192.168.1.0/24")!])
            #expect(try store.localSite()?.lanPrefixes == [IPv4Prefix("192.168.1.0/24")!])
            #expect(throws: StoreError.self) {
                try store.upsertRemoteSite(SiteRecord(id: first, name: "impostor"))
            }
        }
    }

    @Test func remoteSitesEndpointsAndPathsUpsert() throws {
        try withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            let store = fixture.store
            #expect(try store.sites().map(\.name) == ["hq", "east"])
            #expect(try store.endpoints(of: fixture.east).map(\.endpoint.label) == ["ethernet", "lte"])
            // Re-announcing without lte drops it and refreshes ethernet's address.
            let moved = Endpoint(label: "ethernet", address: SocketAddress4("192.168.2.11:51820")!)
            try store.replaceEndpoints(of: fixture.east, with: [moved])
            #expect(try store.endpoints(of: fixture.east).map(\.endpoint) == [moved])
            // The same (destination, uplink, remote label) is the same path id.
            let again = try store.upsertPath(to: fixture.east, uplink: Uplink(interface: "eth0", label: "ethernet"),
                                             endpoint: moved, wgInterface: "wg-hq0")
            #expect(again == fixture.paths[0])
            let paths = try store.paths()
            #expect(paths.count == 2)
            #expect(paths[0].status == .up && paths[0].score == 98 && paths[0].remoteEndpoint == moved)
            try store.setSiteStatus(fixture.east, .inactive)
            #expect(try store.statusSnapshot().inactiveSites == 1)
            // Removing a path cascades to its metrics.
            try store.removePath(fixture.paths[1])
            #expect(try store.metrics(of: fixture.paths[1]).isEmpty)
            #expect(try store.paths().count == 1)
        }
    }

    @Test func pathsNeedALocalSiteAndAKnownDestination() throws {
        try withTemporaryDirectory { dir in
            let store = try Store.open(path: dir + "/p.db")
            let endpoint = Endpoint(label: "x", address: SocketAddress4("192.0.2.1:1")!)
            #expect(throws: StoreError.noLocalSite(path: dir + "/p.db")) {
                try store.upsertPath(to: SiteID(), uplink: Uplink(interface: "eth0", label: "x"), endpoint: endpoint,
                                     wgInterface: "wg0")
            }
            _ = try store.ensureLocalSite(name: "hq")
            // Foreign keys are enforced: no path to a site we never recorded.
            #expect(throws: StoreError.self) {
                try store.upsertPath(to: SiteID(), uplink: Uplink(interface: "eth0", label: "x"), endpoint: endpoint,
                                     wgInterface: "wg0")
            }
        }
    }
}

@Suite struct MetricsTests {
    @Test func aBatchIsOneTransactionAndRetentionPrunesOldRows() throws {
        try withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            let store = fixture.store
            let now = Fixture.now
            let sample = PathMetrics(latencyMs: 10, jitterMs: 1, lossPct: 0, score: 90)
            var batch: [MetricsSample] = []
            for age: TimeInterval in [0, 3600, 6 * 86400, 8 * 86400, 30 * 86400] {
                batch.append(MetricsSample(path: fixture.paths[0], metrics: sample, measuredAt: now.addingTimeInterval(-age)))
            }
            let before = try store.metricsCount()
            try store.insertMetrics(batch)
            #expect(try store.metricsCount() == before + 5)
            #expect(try store.pruneMetrics(now: now, chunk: 1) == 2)
            #expect(try store.pruneMetrics(retention: 3600, now: now) == 1)
            #expect(try store.metrics(of: fixture.paths[0]).allSatisfy { $0.measuredAt >= now.addingTimeInterval(-3600) })

            // A batch with one bad row (unknown path) leaves nothing behind.
            let count = try store.metricsCount()
            let bad = batch + [MetricsSample(path: 9999, metrics: sample, measuredAt: now)]
            #expect(throws: StoreError.self) { try store.insertMetrics(bad) }
            #expect(try store.metricsCount() == count)
        }
    }

    @Test func latestMetricsPicksTheNewestRowPerPath() throws {
        try withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            try fixture.store.insertMetrics([MetricsSample(
                path: fixture.paths[0], metrics: PathMetrics(latencyMs: 30, jitterMs: 1, lossPct: 1, score: 50),
                measuredAt: Fixture.now.addingTimeInterval(60))])
            let latest = try fixture.store.latestMetrics()
            #expect(latest[fixture.paths[0]]?.metrics.latencyMs == 30)
            #expect(latest[fixture.paths[1]]?.metrics.latencyMs == 45.3)
        }
    }

    @Test func passiveThroughputAndTheDownloadAreStoredBesideTheMeasuredBandwidth() throws {
        try withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            try fixture.store.insertMetrics([MetricsSample(
                path: fixture.paths[0], metrics: PathMetrics(latencyMs: 30, jitterMs: 1, lossPct: 1, bandwidthMbps: 80,
                                                             score: 50, throughputTxMbps: 12.5, throughputRxMbps: 0.25,
                                                             downloadBandwidthMbps: 18.5),
                measuredAt: Fixture.now.addingTimeInterval(60))])
            let latest = try fixture.store.latestMetrics()
            #expect(latest[fixture.paths[0]]?.metrics.throughputTxMbps == 12.5)
            #expect(latest[fixture.paths[0]]?.metrics.throughputRxMbps == 0.25)
            #expect(latest[fixture.paths[0]]?.metrics.bandwidthMbps == 80)
            #expect(latest[fixture.paths[0]]?.metrics.downloadBandwidthMbps == 18.5)
            #expect(latest[fixture.paths[1]]?.metrics.throughputTxMbps == nil)
            #expect(latest[fixture.paths[1]]?.metrics.downloadBandwidthMbps == nil)
            let snapshot = try fixture.store.statusSnapshot(now: Fixture.now)
            let json = snapshot.json()
            #expect(json.contains("\"throughput_tx_mbps\" : 12.5") && json.contains("\"throughput_rx_mbps\" : 0.25"))
            #expect(json.contains("\"download_bandwidth_mbps\" : 18.5"))
            #expect(snapshot.report().contains("bandwidth up 80, down 18.5 Mbit/s"), "\(snapshot.report())")
        }
    }

    @Test func failoverEventsAreKept() throws {
        try withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            let event = FailoverEvent(time: Fixture.now, policy: "voip", destination: fixture.east,
                                      fromPath: fixture.paths[0], toPath: fixture.paths[1], reason: "loss 100%",
                                      detectionMs: 120, switchMs: 0.05)
            try fixture.store.recordFailover(event)
            #expect(try fixture.store.failoverEvents() == [event])
            let ethernet = PathKey(site: fixture.east, localLabel: "ethernet", remoteLabel: "ethernet")
            let lte = PathKey(site: fixture.east, localLabel: "lte", remoteLabel: "lte")
            #expect(try fixture.store.pathIDs() == [ethernet: fixture.paths[0], lte: fixture.paths[1]])
            let byKey = FailoverEvent(time: Fixture.now.addingTimeInterval(1), policy: "bulk", fromPath: nil, toPath: nil,
                                      reason: "sla", switchMs: 0.04)
            let gone = PathKey(site: fixture.east, localLabel: "gone", remoteLabel: "gone")
            try fixture.store.recordFailovers([(byKey, lte, ethernet), (byKey, gone, nil)])
            let events = try fixture.store.failoverEvents()
            #expect(events.count == 3)
            #expect(events[1].fromPath == fixture.paths[1] && events[1].toPath == fixture.paths[0])
            #expect(events[1].destination == fixture.east)
            #expect(events[0].fromPath == nil && events[0].toPath == nil)
            #expect(try fixture.store.failoverEvents(since: Fixture.now.addingTimeInterval(1)).count == 2)
            #expect(try fixture.store.failoverEvents(limit: 1, since: Fixture.now).count == 1)
            try fixture.store.removePath(fixture.paths[0])
            #expect(try fixture.store.failoverEvents().last?.fromPath == nil)
        }
    }
}

@Suite struct PolicyStoreTests {
    @Test func embeddedDefaultsEqualTheRulesFile() throws {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("rules/default-policies.json")
        let text = try String(contentsOf: file, encoding: .utf8)
        #expect(text == Policy.defaultPoliciesJSON + "\n",
                "rules/default-policies.json changed: run scripts/gen-default-policies")
        let defaults = try Policy.defaults()
        #expect(defaults.map(\.name) == ["voip", "bulk", "default"])
        let voip = defaults[0]
        #expect(voip.strategy == .lowestLatency)
        #expect(voip.match.services == [ServiceMatch(.udp, [PortRange(5060, 5061), PortRange(16384, 32767)]),
                                        ServiceMatch(.tcp, [PortRange(5060, 5061)])])
        #expect(defaults[1].match.services == [ServiceMatch(.tcp, [PortRange(20), PortRange(21), PortRange(873)])])
        #expect(defaults[1].strategy == .highestBandwidth)
        #expect(defaults[2].match.matchesEverything && defaults[2].strategy == .bestScore)
        #expect(defaults[0].priority < defaults[1].priority && defaults[1].priority < defaults[2].priority)
    }

    @Test func defaultsLoadOnceIntoANewDatabase() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/d.db"
            let store = try Store.open(path: path)
            #expect(try store.loadDefaultPoliciesIfNew(Policy.defaults()))
            #expect(try store.policies().map(\.policy) == Policy.defaults())
            try store.removePolicy(named: "default")
            #expect(try !Store.open(path: path).loadDefaultPoliciesIfNew(Policy.defaults()))
            #expect(try store.policies().map(\.policy.name) == ["voip", "bulk"])
        }
    }

    @Test func addRemoveEnableDisableRoundTripEveryField() throws {
        try withTemporaryDirectory { dir in
            let store = try Store.open(path: dir + "/p.db")
            let policy = Policy(
                name: "video", priority: 50,
                match: TrafficMatch(services: [ServiceMatch(.udp, [PortRange(3478, 3481)]), ServiceMatch(.tcp)],
                                    dscp: [34, 46], sources: [IPv4Prefix("192.168.1.0/24")!],
                                    destinations: [IPv4Prefix("10.0.0.0/8")!, IPv4Prefix("172.16.0.0/12")!]),
                strategy: .fixed(uplinkLabel: "isp-a"),
                sla: SLA(maxLatencyMs: 150, maxJitterMs: 30, maxLossPct: 1.5), description: "calls")
            try store.addPolicy(policy)
            try store.addPolicy(Policy(name: "lb", priority: 10, strategy: .loadBalance))
            #expect(try store.policies().map(\.policy) == [Policy(name: "lb", priority: 10, strategy: .loadBalance), policy])
            #expect(throws: StoreError.invalidPolicy(.duplicateName("video"))) { try store.addPolicy(policy) }
            #expect(throws: StoreError.invalidPolicy(.invalidDSCP(name: "bad", 64))) {
                try store.addPolicy(Policy(name: "bad", priority: 1, match: TrafficMatch(dscp: [64]), strategy: .bestScore))
            }
            try store.setPolicyEnabled(named: "video", false)
            #expect(try store.policies().first { $0.policy.name == "video" }?.policy.enabled == false)
            #expect(throws: StoreError.noSuchPolicy("nope")) { try store.setPolicyEnabled(named: "nope", true) }
            #expect(try store.removePolicy(named: "lb").name == "lb")
            #expect(throws: StoreError.noSuchPolicy("lb")) { try store.removePolicy(named: "lb") }
        }
    }

    @Test func generationNoticesEditsByAnotherConnection() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/g.db"
            let daemon = try Store.open(path: path)
            let start = try daemon.policyGeneration()
            try Store.open(path: path).addPolicy(Policy(name: "a", priority: 1, strategy: .bestScore))
            let afterAdd = try daemon.policyGeneration()
            #expect(afterAdd > start)
            // A hand edit through plain SQL is noticed too (triggers, not application code).
            let queue = try DatabaseQueue(path: path)
            try queue.write { db in try db.execute(sql: "UPDATE policies SET priority = 2 WHERE name = 'a'") }
            #expect(try daemon.policyGeneration() > afterAdd)
            // ...and a hand edit that breaks a row is reported with its row and column.
            try queue.write { db in try db.execute(sql: "UPDATE policies SET strategy = 'fastest' WHERE name = 'a'") }
            #expect(throws: StoreError.malformedRow(table: "policies", row: "a", column: "strategy", value: "fastest")) {
                try daemon.policies()
            }
        }
    }
}

@Suite struct SecretFileTests {
    @Test func createdOnceWithMode0600AndNeverOverwritten() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/hq.db.wg-key"
            let (bytes, created) = try SecretFile.loadOrCreate(at: path)
            #expect(created && bytes.count == 32)
            #expect(fileMode(path) == 0o600)
            let again = try SecretFile.loadOrCreate(at: path)
            #expect(!again.created && again.bytes == bytes)
            #expect(throws: SecretFileError.exists(path: path)) { try SecretFile.generate(at: path) }
            #expect(try SecretFile.read(at: path) == bytes)
            let replaced = try SecretFile.generate(at: path, force: true)
            #expect(replaced != bytes && fileMode(path) == 0o600)
            // The text is what `wg genkey` writes: 44 base64 characters and a newline.
            #expect(String(decoding: fileBytes(path)!, as: UTF8.self).count == 45)
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["hq.db.wg-key"])
        }
    }

    @Test func refusesOpenModesAndMalformedContent() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/key"
            try SecretFile.generate(at: path)
            chmod(path, 0o644)
            #expect(throws: SecretFileError.tooOpen(path: path, mode: 0o644)) { try SecretFile.read(at: path) }
            let bad = dir + "/bad"
            _ = FileManager.default.createFile(atPath: bad, contents: Data("short\n".utf8), attributes: [.posixPermissions: 0o600])
            #expect(throws: SecretFileError.malformed(path: bad)) { try SecretFile.loadOrCreate(at: bad) }
            #expect(fileBytes(bad) == Data("short\n".utf8))
        }
    }
}

@Suite struct StatusTests {
    @Test func reportFollowsTheSeedLayout() throws {
        try withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            let snapshot = try fixture.store.statusSnapshot(now: Fixture.now)
            let report = snapshot.report()
            #expect(report.contains("Network Status Report"))
            #expect(report.contains("Active sites: 1\n  • east (ID: 550e8400-e29b-41d4-a716-446655440002)\n"
                                    + "    - Endpoint: 192.168.2.10:51820 (ethernet)\n"
                                    + "    - Endpoint: 198.51.100.7:51821 (lte)\n"))
            #expect(report.contains("Active paths: 2 (Up: 1, Degraded: 1, Down: 0)"))
            #expect(report.contains("  Best path: hq → east via ethernet (score: 98, latency: 12.5ms, loss: 0.05%)"))
            #expect(report.contains("  Worst path: hq → east via lte (score: 72, latency: 45.3ms, loss: 0.8%)"))
        }
    }

    @Test func jsonIsStableAndRoundTrips() throws {
        try withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            let snapshot = try fixture.store.statusSnapshot(now: Fixture.now)
            let json = snapshot.json()
            #expect(json.contains(#""schema_version" : 1"#))
            #expect(json.contains(#""packet_loss_pct" : 0.05"#))
            #expect(json.contains(#""path_counts" : {"#))
            #expect(try StatusSnapshot.decode(json: Data(json.utf8)) == snapshot)
        }
    }

    /// Issue 17: `status` says which classes are duplicated and onto which second path, with the copies sent, and
    /// that nothing is copied when no second path may carry copies; `--json` carries it as `copies`.
    @Test func theSteeringReportShowsWhereADuplicatedClassIsCopied() throws {
        try withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            var snapshot = try fixture.store.statusSnapshot(now: Fixture.now)
            let path1 = StatusSnapshot.SteeredPath(pathId: 1, name: "ethernet->east", chain: "voip_path1", mark: "0x00010000",
                                                   table: 101, interface: "wg-hq0")
            var voip = StatusSnapshot.ClassSteering(site: fixture.east.description, siteName: "east", policy: "voip",
                                                    strategy: "lowest-latency", paths: [path1], winner: nil, runnerUp: nil,
                                                    reason: "lowest-latency: the lowest latency", disagreement: nil)
            voip.copies = [.init(fromPathId: 1, pathId: 2, name: "lte->east", chain: "copy_voip_path2", copiesSent: 1234)]
            var video = voip
            video.policy = "video"
            video.copies = []
            var bulk = voip
            bulk.policy = "bulk"
            bulk.copies = nil
            snapshot.steering = [voip, video, bulk]
            snapshot.steeringDisagreements = 0
            let lines = snapshot.report().split(separator: "\n").map(String.init)
            let at = try #require(lines.firstIndex { $0.hasPrefix("    voip -> path 1 ethernet->east") })
            #expect(lines[at + 1] == "      duplicated: each packet also by path 2 lte->east (copy_voip_path2, 1234 copies sent)")
            let videoAt = try #require(lines.firstIndex { $0.hasPrefix("    video -> ") })
            #expect(lines[videoAt + 1] == "      duplicated: nothing copied now (no second usable path may carry copies)")
            let bulkAt = try #require(lines.firstIndex { $0.hasPrefix("    bulk -> ") })
            #expect(bulkAt + 1 == lines.count || !lines[bulkAt + 1].contains("duplicated"))
            let json = snapshot.json()
            #expect(json.contains(#""copies" : ["#) && json.contains(#""copies_sent" : 1234"#) && json.contains(#""from_path_id" : 1"#))
            #expect(try StatusSnapshot.decode(json: Data(json.utf8)) == snapshot)
        }
    }

    /// Issue 18: a path that went down and up was printed as the best, scored 98.5, at 100 % loss: its status
    /// and score came from `paths` (the up event), its loss from the older metrics row of the outage. The
    /// report now judges and prints each path by one row, and a status is written with its measurements.
    @Test func bestAndWorstAgreeWithThePrintedStatusScoreAndLoss() throws {
        try withTemporaryDirectory { dir in
            let fixture = try Fixture(dir)
            let later = Fixture.now.addingTimeInterval(5)
            // What the old daemon wrote: the outage's metrics row, then the up event's status and score alone.
            try fixture.store.insertMetrics([MetricsSample(
                path: fixture.paths[0], metrics: PathMetrics(latencyMs: 12, jitterMs: 1, lossPct: 100, score: 0),
                measuredAt: later)])
            try fixture.store.setPathStatus(fixture.paths[0], status: .up, score: 98.5, now: later)
            var snapshot = try fixture.store.statusSnapshot(now: later)
            var report = snapshot.report()
            #expect(snapshot.bestPath == fixture.paths[1], "a path losing every probe is never the best")
            #expect(report.contains("  Best path: hq → east via lte (score: 72, latency: 45.3ms, loss: 0.8%)"))
            #expect(report.contains("  Worst path: hq → east via ethernet (score: 0, latency: 12ms, loss: 100%)"))
            #expect(!report.contains("score: 98.5"))

            // Now: status, score and loss in one transaction.
            try fixture.store.recordPathStates(
                [(fixture.paths[0], .up, PathMetrics(latencyMs: 11, jitterMs: 1, lossPct: 0, score: 98.5)),
                 (fixture.paths[1], .down, PathMetrics(latencyMs: 40, jitterMs: 2, lossPct: 100, score: 0))],
                now: later.addingTimeInterval(1))
            snapshot = try fixture.store.statusSnapshot(now: later)
            report = snapshot.report()
            #expect(snapshot.bestPath == fixture.paths[0] && snapshot.worstPath == fixture.paths[1])
            #expect(report.contains("  Best path: hq → east via ethernet (score: 98.5, latency: 11ms, loss: 0%)"))
            #expect(report.contains("  Worst path: hq → east via lte (down, score: 0, latency: 40ms, loss: 100%)"))
            #expect(try fixture.store.paths().map(\.status) == [.up, .down])

            // A down path is the worst even when its last score was high; a down path is never the best.
            try fixture.store.recordPathStates(
                [(fixture.paths[0], .down, PathMetrics(latencyMs: 11, jitterMs: 1, lossPct: 0, score: 98.5)),
                 (fixture.paths[1], .up, PathMetrics(latencyMs: 40, jitterMs: 2, lossPct: 1, score: 60))],
                now: later.addingTimeInterval(2))
            snapshot = try fixture.store.statusSnapshot(now: later)
            #expect(snapshot.bestPath == fixture.paths[1] && snapshot.worstPath == fixture.paths[0])
            #expect(snapshot.paths.map(\.name) == ["ethernet->east", "lte->east"])
        }
    }

    @Test func emptyDatabaseReportsNothingMeasured() throws {
        try withTemporaryDirectory { dir in
            let store = try Store.open(path: dir + "/e.db")
            let report = try store.statusSnapshot().report()
            #expect(report.contains("Active sites: 0"))
            #expect(report.contains("Active paths: 0 (Up: 0, Degraded: 0, Down: 0)"))
            #expect(!report.contains("Best path"))
        }
    }
}

@Suite struct DatabaseLockTests {
    @Test func oneHolderAtATimeAndReleasedOnClose() throws {
        try withTemporaryDirectory { dir in
            let files = StoreFiles(database: dir + "/hq.db")
            #expect(!DatabaseLock.isHeld(for: files))
            var lock: DatabaseLock? = try DatabaseLock.acquire(for: files)
            #expect(DatabaseLock.isHeld(for: files))
            #expect(fileMode(files.lock) == 0o600)
            // flock conflicts between open file descriptions, so a second acquire in this process is refused too.
            #expect(throws: DatabaseLockError.held(database: files.database, lockPath: files.lock, pid: getpid())) {
                try DatabaseLock.acquire(for: files)
            }
            withExtendedLifetime(lock) {}
            lock = nil
            #expect(!DatabaseLock.isHeld(for: files))
            #expect(try DatabaseLock.acquire(for: files).path == files.lock)
            let nowhere = StoreFiles(database: dir + "/missing/hq.db")
            #expect(throws: DatabaseLockError.cannotOpen(path: nowhere.lock,
                                                         reason: "directory \(dir)/missing does not exist: create it first")) {
                try DatabaseLock.acquire(for: nowhere)
            }
        }
    }
}

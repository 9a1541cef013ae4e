import Foundation
import Glibc
import Testing
import Lab
import Model
import Netlink
@testable import Steering

@Suite(.serialized) struct SteeringRootTests {
    @Test(.enabled(if: isRoot)) func smokeRootApplyListsTable() throws {
        let f = try SteeringFixture()
        let steering = try f.steering()
        let changes = try steering.apply(f.plan())
        print(changes)
        print(try f.router.check(["nft", "list", "ruleset"]))
        print(try f.router.check(["ip", "rule"]))
        print(try f.router.check(["ip", "route", "show", "table", "6201"]))
        try f.sendUDP(from: f.router, port: 5060)
        try f.sendUDP(from: f.client, port: 5060)
        try f.sendTCPSyn(from: f.client, port: 873)
        try f.sendUDP(from: f.client, port: 9999)
        print(try f.count(f.peer1, "voip"), try f.count(f.peer2, "voip"), try f.count(f.peer1, "bulk"), try f.count(f.peer2, "bulk"), try f.count(f.peer1, "other"), try f.count(f.peer2, "other"))
        print(try f.router.check(["nft", "list", "ruleset"]))
        let again = try steering.apply(f.plan())
        print("again:", again)
        let moved = try steering.apply(f.plan(voip: 2))
        print("moved:", moved)
        let fresh = try f.steering()
        print("fresh:", try fresh.apply(f.plan(voip: 2)))
        print("remove:", try fresh.removeAll())
        print(try f.router.check(["nft", "list", "ruleset"]))
    }
}

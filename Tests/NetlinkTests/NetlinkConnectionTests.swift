import Testing
import CNetfilter
@testable import Netlink

/// Records what is sent; replays scripted datagrams.
final class MockTransport: NetlinkTransport {
    var sent: [[UInt8]] = []
    var replies: [[UInt8]] = []
    func send(_ datagram: [UInt8]) throws(NetlinkError) { sent.append(datagram) }
    func receive() throws(NetlinkError) -> [UInt8] {
        guard !replies.isEmpty else { throw NetlinkError(errno: 110, operation: "mock receive") }
        return replies.removeFirst()
    }
}

/// An NLMSG_ERROR for `sequence` with `code` (0 = ack), capped (no echoed request), as the kernel sends it.
func ack(_ sequence: UInt32, _ code: Int32, text: String? = nil) -> [UInt8] {
    var payload: [UInt8] = []
    payload.appendHost(UInt32(bitPattern: -code))
    NetlinkMessage(type: 0, flags: 0, sequence: sequence).encode(into: &payload) // echoed header
    var flags = NetlinkFlag.capped
    if let text {
        var a = AttributeWriter()
        a.putString(1, text) // NLMSGERR_ATTR_MSG
        payload += a.bytes
        flags |= NetlinkFlag.ackTLVs
    }
    return NetlinkMessage(type: NetlinkMessageType.error, flags: flags, sequence: sequence, payload: payload).encoded()
}

@Suite struct NetlinkConnectionTests {
    @Test func batchWaitsForEveryAckEvenWhenTheyArriveSeparately() throws {
        let mock = MockTransport()
        let c = NetlinkConnection(transport: mock, firstSequence: 10)
        mock.replies = [ack(11, 0), ack(12, 0), ack(13, 0)]
        try c.performBatch((0..<3).map { NetlinkRequest(NFTables.deleteTable(family: .inet, name: "t\($0)"), "op \($0)") })
        #expect(mock.replies.isEmpty)
    }

    @Test func anEarlyAckDoesNotHideALaterError() {
        let mock = MockTransport()
        let c = NetlinkConnection(transport: mock, firstSequence: 10)
        // First message acked, second fails: the kernel aborts the whole batch; we must report the failure.
        mock.replies = [ack(11, 0), ack(12, 2, text: "no such set") + ack(13, 0)]
        #expect(throws: NetlinkError(errno: 2, operation: "delete b", kernelMessage: "no such set")) {
            try c.performBatch([NetlinkRequest(NFTables.deleteTable(family: .inet, name: "a"), "delete a"),
                                NetlinkRequest(NFTables.deleteTable(family: .inet, name: "b"), "delete b"),
                                NetlinkRequest(NFTables.deleteTable(family: .inet, name: "c"), "delete c")])
        }
        #expect(mock.replies.isEmpty) // every ack was consumed, none is left to confuse the next call
    }

    @Test func commitFailureOnTheBeginSequenceIsReported() {
        let mock = MockTransport()
        let c = NetlinkConnection(transport: mock, firstSequence: 10)
        mock.replies = [ack(10, 12) + ack(11, 0)]
        #expect(throws: NetlinkError.self) {
            try c.performBatch([NetlinkRequest(NFTables.deleteTable(family: .inet, name: "a"), "delete a")])
        }
    }

    @Test func staleAcksFromAnEarlierCallAreSkipped() throws {
        let mock = MockTransport()
        let c = NetlinkConnection(transport: mock, firstSequence: 50)
        mock.replies = [ack(7, 1) + ack(50, 0)]
        try c.perform([NetlinkRequest(RouteNetlink.listRulesMessage(), "x")])
    }

    @Test func errorsNameTheOperationErrnoAndAFix() {
        let e = NetlinkError(errno: 1, operation: "add ip rule priority 6210")
        #expect(e.description.contains("add ip rule priority 6210 failed"))
        #expect(e.description.contains("errno 1"))
        #expect(e.description.contains("CAP_NET_ADMIN"))
    }

    @Test func dumpCollectsUntilDone() throws {
        let mock = MockTransport()
        let c = NetlinkConnection(transport: mock, firstSequence: 5)
        let rule = RouteNetlink.ruleMessage(IPRule(priority: 6210, fwmark: 0x10000, fwmask: 0xff0000, table: 6201, protocolTag: 77))
        var r1 = rule; r1.sequence = 5; r1.flags = NetlinkFlag.multi
        let done = NetlinkMessage(type: NetlinkMessageType.done, flags: NetlinkFlag.multi, sequence: 5, payload: [0, 0, 0, 0])
        mock.replies = [r1.encoded(), done.encoded()]
        let rules = try c.dump(NetlinkRequest(RouteNetlink.listRulesMessage(), "list"))
        #expect(try rules.compactMap { try RouteNetlink.parseRule($0) } == [IPRule(priority: 6210, fwmark: 0x10000, fwmask: 0xff0000, table: 6201, protocolTag: 77)])
    }

    @Test func hostileInputNeverTraps() {
        // Truncated header, absurd lengths, attribute running past the end.
        #expect(throws: NetlinkError.self) { try NetlinkMessage.parse([255, 255, 0, 0] + [UInt8](repeating: 0, count: 12)) }
        #expect(throws: NetlinkError.self) { try AttributeList(parsing: [200, 0, 1, 0, 1, 2]) }
        #expect((try? NetlinkMessage.parse([1, 2, 3])) == [])
        for seed in 0..<2000 {
            var g = SystemRandomNumberGenerator()
            let bytes = (0..<(seed % 64)).map { _ in UInt8.random(in: 0...255, using: &g) }
            _ = try? NetlinkMessage.parse(bytes)
            _ = try? AttributeList(parsing: bytes)
            if let ms = try? NetlinkMessage.parse(bytes) { for m in ms { _ = try? NFTables.parseElements(m); _ = try? NFTables.parseSet(m) } }
            // The same bytes as the payload of each dump reply type libnftnl decodes for us.
            for command in [NFT_MSG_NEWTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_MSG_NEWRULE] {
                let m = NetlinkMessage(type: NFTables.type(command), flags: 0, payload: [1, 0, 0, 0] + bytes)
                _ = try? NFTables.parseTable(m); _ = try? NFTables.parseChain(m); _ = try? NFTables.parseSet(m)
                _ = try? NFTables.parseElements(m); _ = try? NFTables.parseRule(m)
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
import CNetfilter

/// One message to send plus what it does, in words, for error reports.
public struct NetlinkRequest: Equatable, Sendable {
    public var message: NetlinkMessage
    public var operation: String

    public init(_ message: NetlinkMessage, _ operation: String) {
        self.message = message
        self.operation = operation
    }
}

/// Sequence numbers, acks and dumps over one transport.
///
/// Guarantees: every request it sends carries NLM_F_ACK and a distinct sequence number; a call returns only
/// once the kernel has acked or failed EVERY one of them (for nf_tables the acks come after commit or
/// abort, and an early ack does not mean the batch committed). Replies that belong to no outstanding
/// request (a late ack of an earlier, timed-out call) are skipped, not misattributed.
/// Not thread-safe: one owner at a time.
public final class NetlinkConnection {
    public let transport: NetlinkTransport
    private var nextSequence: UInt32

    public init(transport: NetlinkTransport, firstSequence: UInt32 = 1) {
        self.transport = transport
        nextSequence = firstSequence
    }

    /// Convenience: a real socket in the current or a named namespace.
    public convenience init(_ netlinkProtocol: NetlinkProtocol, netns: String? = nil) throws(NetlinkError) {
        let now = UInt32(truncatingIfNeeded: time(nil))
        self.init(transport: try NetlinkSocket(netlinkProtocol, netns: netns), firstSequence: now)
    }

    private func takeSequence() -> UInt32 {
        defer { nextSequence &+= 1; if nextSequence == 0 { nextSequence = 1 } }
        return nextSequence
    }

    /// Sends the requests in one datagram, each with ACK and its own sequence number, and waits for all
    /// of their acks. The kernel executes rtnetlink messages one by one (not atomically): on errors,
    /// every error is collected and the first (in send order) is thrown.
    public func perform(_ requests: [NetlinkRequest]) throws(NetlinkError) {
        guard !requests.isEmpty else { return }
        var datagram: [UInt8] = []
        var pending: [UInt32: Int] = [:]
        for (index, request) in requests.enumerated() {
            var m = request.message
            m.sequence = takeSequence()
            m.flags |= NetlinkFlag.request | NetlinkFlag.ack
            pending[m.sequence] = index
            m.encode(into: &datagram)
        }
        let errors = try collectAcks(send: datagram, pending: pending, operations: requests.map(\.operation))
        if let first = errors.min(by: { $0.key < $1.key }) { throw first.value }
    }

    /// Sends nf_tables messages as ONE atomic batch (BATCH_BEGIN ... BATCH_END) in one datagram and waits
    /// for every inner ack. The batch committed only if no inner message and no commit failed.
    ///
    /// Cost: one sendto and as many recvs as the kernel needs to deliver the acks (usually one).
    public func performBatch(_ requests: [NetlinkRequest]) throws(NetlinkError) {
        guard !requests.isEmpty else { return }
        var datagram: [UInt8] = []
        let begin = takeSequence()
        NFTables.batchMarker(begin: true, sequence: begin).encode(into: &datagram)
        var pending: [UInt32: Int] = [:]
        for (index, request) in requests.enumerated() {
            var m = request.message
            m.sequence = takeSequence()
            m.flags |= NetlinkFlag.request | NetlinkFlag.ack
            pending[m.sequence] = index
            m.encode(into: &datagram)
        }
        NFTables.batchMarker(begin: false, sequence: takeSequence()).encode(into: &datagram)
        var operations = requests.map(\.operation)
        operations.append("commit nf_tables batch")
        let errors = try collectAcks(send: datagram, pending: pending, operations: operations,
                                     commitSequence: begin, commitIndex: requests.count)
        if let first = errors.min(by: { $0.key < $1.key }) { throw first.value }
    }

    private func collectAcks(send datagram: [UInt8], pending start: [UInt32: Int], operations: [String],
                             commitSequence: UInt32? = nil, commitIndex: Int = 0) throws(NetlinkError) -> [Int: NetlinkError] {
        try transport.send(datagram)
        var pending = start
        var errors: [Int: NetlinkError] = [:]
        while !pending.isEmpty {
            let reply = try transport.receive()
            for message in try NetlinkMessage.parse(reply) where message.type == NetlinkMessageType.error {
                let (code, text) = try Self.parseError(message)
                if let index = pending.removeValue(forKey: message.sequence) {
                    if code != 0 { errors[index] = NetlinkError(errno: code, operation: operations[index], kernelMessage: text) }
                } else if let commitSequence, message.sequence == commitSequence, code != 0 {
                    // The commit itself failed: the kernel answers on the BATCH_BEGIN's sequence number.
                    errors[commitIndex] = NetlinkError(errno: code, operation: operations[commitIndex], kernelMessage: text)
                }
            }
        }
        return errors
    }

    /// Sends a dump request and returns every reply message until NLMSG_DONE. Retries (up to 3 times)
    /// when the kernel flags the dump as interrupted by a concurrent change.
    public func dump(_ request: NetlinkRequest) throws(NetlinkError) -> [NetlinkMessage] {
        var attempt = 0
        while true {
            attempt += 1
            var m = request.message
            m.sequence = takeSequence()
            m.flags |= NetlinkFlag.request | NetlinkFlag.dump
            try transport.send(m.encoded())
            var results: [NetlinkMessage] = []
            var interrupted = false
            receiving: while true {
                let reply = try transport.receive()
                for message in try NetlinkMessage.parse(reply) where message.sequence == m.sequence {
                    if message.flags & NetlinkFlag.dumpInterrupted != 0 { interrupted = true }
                    switch message.type {
                    case NetlinkMessageType.done:
                        break receiving
                    case NetlinkMessageType.error:
                        let (code, text) = try Self.parseError(message)
                        if code == 0 { break receiving }
                        throw NetlinkError(errno: code, operation: request.operation, kernelMessage: text)
                    case NetlinkMessageType.noop, NetlinkMessageType.overrun:
                        continue
                    default:
                        results.append(message)
                    }
                }
            }
            if interrupted && attempt < 3 { continue }
            return results
        }
    }

    /// Sends one request that expects data back (e.g. a GET without DUMP) and returns its replies.
    public func get(_ request: NetlinkRequest) throws(NetlinkError) -> [NetlinkMessage] {
        var m = request.message
        m.sequence = takeSequence()
        m.flags |= NetlinkFlag.request | NetlinkFlag.ack
        try transport.send(m.encoded())
        var results: [NetlinkMessage] = []
        while true {
            let reply = try transport.receive()
            for message in try NetlinkMessage.parse(reply) where message.sequence == m.sequence {
                if message.type == NetlinkMessageType.error {
                    let (code, text) = try Self.parseError(message)
                    if code != 0 { throw NetlinkError(errno: code, operation: request.operation, kernelMessage: text) }
                    return results
                }
                results.append(message)
            }
        }
    }

    /// An NLMSG_ERROR payload: a negative errno (0 = ack), the original header, and with NLM_F_ACK_TLVS
    /// extended-ack attributes (NLMSGERR_ATTR_MSG is the human text).
    static func parseError(_ message: NetlinkMessage) throws(NetlinkError) -> (Int32, String?) {
        let p = message.payload
        guard p.count >= 4 + NetlinkMessage.headerLength else {
            throw .malformed("parse netlink ack", "error payload of \(p.count) bytes")
        }
        let code = -Int32(bitPattern: p.readHostU32(at: 0))
        var text: String?
        if message.flags & NetlinkFlag.ackTLVs != 0 {
            var offset = 4 + NetlinkMessage.headerLength
            if message.flags & NetlinkFlag.capped == 0 {
                offset = 4 + Int(p.readHostU32(at: 4)) // the full original message was echoed
            }
            if offset <= p.count, let tlvs = try? AttributeList(parsing: Array(p[offset...])),
               let msg = tlvs[t(NLMSGERR_ATTR_MSG.rawValue)] {
                text = msg.string
            }
        }
        return (code, text)
    }
}

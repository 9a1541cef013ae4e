import Foundation
import Logging
import Model
import Testing
@testable import Probing

@Suite struct ProbePacketTests {
    @Test func goldenBytesOfARequest() {
        let packet = ProbePacket(kind: .request, session: 0xDEAD_BEEF, sequence: 0x0102_0304,
                                 senderStamp: 0xA0B0_C0D0)
        #expect(packet.encoded() == [
            0x50, 0x52,             // magic "PR"
            0x01,                   // version 1
            0x01,                   // kind request, no flags
            0xDE, 0xAD, 0xBE, 0xEF, // session
            0x01, 0x02, 0x03, 0x04, // sequence
            0xA0, 0xB0, 0xC0, 0xD0, // sender stamp (low 32 bits of monotonic ns)
            0x00, 0x00, 0x00, 0x00, // responder hold (0 in a request)
        ])
    }

    @Test func goldenBytesOfACopyReply() throws {
        let request = ProbePacket(kind: .request, session: 7, sequence: UInt32.max, senderStamp: 9, isCopy: true)
        let reply = request.reply(holdNanoseconds: 0x1_0000_0000) // saturates
        #expect(reply.encoded() == [0x50, 0x52, 0x01, 0x12, 0, 0, 0, 7, 0xFF, 0xFF, 0xFF, 0xFF,
                                    0, 0, 0, 9, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(try ProbePacket.decode(reply.encoded()) == reply)
    }

    @Test(arguments: ProbePacket.Kind.allCases)
    func roundTripsEveryKind(kind: ProbePacket.Kind) throws {
        let packet = ProbePacket(kind: kind, session: 1, sequence: 2, senderStamp: 3, responderHold: 4,
                                 isEndOfTrain: kind == .train)
        #expect(try ProbePacket.decode(packet.encoded()) == packet)
    }

    @Test func rejectsWithReasons() {
        let good = ProbePacket(kind: .request, session: 1, sequence: 2).encoded()
        func reason(_ bytes: [UInt8], padding: Bool = false) -> ProbePacket.Rejection? {
            do { _ = try ProbePacket.decode(bytes, allowPadding: padding); return nil } catch { return error }
        }
        #expect(reason([]) == .truncated)
        #expect(reason(Array(good.prefix(19))) == .truncated)
        #expect(reason(good + [0]) == .truncated)
        #expect(reason(good + [0], padding: true) == nil)
        var bytes = good; bytes[0] = 0x51
        #expect(reason(bytes) == .badMagic)
        bytes = good; bytes[2] = 2
        #expect(reason(bytes) == .badVersion)
        bytes = good; bytes[3] = 0x05
        #expect(reason(bytes) == .badKind)
        bytes = good; bytes[3] = 0x00
        #expect(reason(bytes) == .badKind)
        bytes = good; bytes[3] = 0x41
        #expect(reason(bytes) == .badFlags)
        bytes = good; bytes[3] = 0x21 // end-of-train on a request
        #expect(reason(bytes) == .badFlags)
        bytes = good; bytes[3] = 0x13 // copy on a train
        #expect(reason(bytes) == .badFlags)
    }

    @Test func everyTruncationAndEveryByteFlipIsHandledWithoutCrashing() {
        let good = ProbePacket(kind: .reply, session: 0x1234, sequence: 99, senderStamp: 5).encoded()
        for length in 0...40 {
            let bytes = (good + good).prefix(length)
            _ = try? ProbePacket.decode(Array(bytes))
            _ = try? ProbePacket.decode(Array(bytes), allowPadding: true)
        }
        for index in good.indices {
            for value in [UInt8(0), 0xFF, good[index] ^ 0x80] {
                var bytes = good
                bytes[index] = value
                if let packet = try? ProbePacket.decode(bytes) { #expect(packet.encoded() == bytes) }
            }
        }
    }

    @Test func dropCountersCountByReason() {
        var drops = ProbeDrops()
        #expect(drops.description == "none")
        drops.count(.badMagic)
        drops.count(.badMagic)
        drops.count(.replyToNothing)
        #expect(drops[.badMagic] == 2)
        #expect(drops[.unknownSession] == 0)
        #expect(drops.total == 3)
        #expect(drops.description == "badMagic=2 replyToNothing=1")
    }
}

@Suite struct DropLogTests {
    /// Collects log lines.
    final class Lines: @unchecked Sendable {
        let lock = NSLock()
        var lines: [String] = []
    }

    struct Capture: LogHandler {
        let lines: Lines
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            lines.lock.withLock { lines.lines.append(event.message.description) }
        }
    }

    @Test func oneLinePerPeriodWithTheSums() {
        let lines = Lines()
        let log = DropLog(logger: Logger(label: "test") { _ in Capture(lines: lines) }, component: "probe responder",
                          every: .seconds(60))
        let source = SocketAddress4(IPv4Address(10, 99, 0, 7), port: 4000)
        for _ in 0..<1000 { log.dropped(.badMagic, from: source) }
        #expect(lines.lines == ["probe responder dropped 1 datagram(s): badMagic=1; last from 10.99.0.7:4000"])
    }
}

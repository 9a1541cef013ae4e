import Foundation
import Logging
import Model
import Testing
@testable import Probing

@Suite struct ProbePacketTests {
    @Test func goldenBytesOfARequest() {
        let packet = ProbePacket(kind: .request, sequence: 0x0A_0B0C)
        #expect(packet.encoded() == [
            0x50,             // version 1 (bits 7-6), kind request 1 (bits 5-4), no copy, reserved 0
            0x0A, 0x0B, 0x0C, // 24-bit sequence
        ])
    }

    @Test func goldenBytesOfACopyReply() throws {
        let request = ProbePacket(kind: .request, sequence: 0xFF_FFFF, isCopy: true)
        let reply = request.reply()
        #expect(request.encoded() == [0x58, 0xFF, 0xFF, 0xFF])
        #expect(reply.encoded() == [0x68, 0xFF, 0xFF, 0xFF])
        #expect(try ProbePacket.decode(reply.encoded()) == reply)
    }

    @Test func sequencesKeepTheirLow24Bits() {
        #expect(ProbePacket(kind: .request, sequence: 0x1234_5678).sequence == 0x34_5678)
        #expect(ProbePacket(kind: .request, sequence: UInt32.max).encoded() == [0x50, 0xFF, 0xFF, 0xFF])
    }

    @Test(arguments: ProbePacket.Kind.allCases, [false, true])
    func roundTripsEveryKind(kind: ProbePacket.Kind, copy: Bool) throws {
        let packet = ProbePacket(kind: kind, sequence: 0x80_0001, isCopy: copy)
        #expect(packet.encoded().count == ProbePacket.size)
        #expect(try ProbePacket.decode(packet.encoded()) == packet)
    }

    @Test func rejectsWithReasons() {
        let good = ProbePacket(kind: .request, sequence: 2).encoded()
        func reason(_ bytes: [UInt8]) -> ProbeRejection? {
            do { _ = try ProbePacket.decode(bytes); return nil } catch { return error }
        }
        #expect(reason(good) == nil)
        #expect(reason([]) == .truncated)
        #expect(reason(Array(good.prefix(3))) == .truncated)
        #expect(reason(good + [0]) == .truncated)
        // The old 20-byte probe (magic "PR", whose first byte reads as version 1) is refused by its length.
        #expect(reason([0x50, 0x52, 0x01, 0x01] + [UInt8](repeating: 0, count: 16)) == .truncated)
        for version: UInt8 in [0, 2, 3] {
            var bytes = good; bytes[0] = version << 6 | 0x10
            #expect(reason(bytes) == .badVersion)
        }
        var bytes = good; bytes[0] = 0x40 // kind 0
        #expect(reason(bytes) == .badKind)
        bytes = good; bytes[0] = 0x70 // kind 3
        #expect(reason(bytes) == .badKind)
        for reserved: UInt8 in [0x01, 0x02, 0x04] {
            bytes = good; bytes[0] = 0x50 | reserved
            #expect(reason(bytes) == .badFlags)
        }
    }

    @Test func everyHeadByteAndLengthIsHandledWithoutCrashing() throws {
        var accepted = 0
        for head in UInt8.min...UInt8.max {
            let bytes = [head, 0xAB, 0xCD, 0xEF]
            if let packet = try? ProbePacket.decode(bytes) {
                #expect(packet.encoded() == bytes)
                accepted += 1
            }
        }
        #expect(accepted == 4) // request / reply, copy or not
        var random = SeededRandom(seed: 6)
        for length in 0...40 {
            for _ in 0..<50 {
                let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
                if let packet = try? ProbePacket.decode(bytes) { #expect(packet.encoded() == bytes) }
            }
        }
    }

    @Test func sequenceArithmeticWrapsAt24Bits() {
        #expect(ProbeSequence.next(0xFF_FFFF) == 0)
        #expect(ProbeSequence.next(7) == 8)
        #expect(ProbeSequence.distance(from: 0xFF_FFFE, to: 1) == 3)
        #expect(ProbeSequence.distance(from: 5, to: 5) == 0)
        // "after" the newest is a huge distance, outside any window
        #expect(ProbeSequence.distance(from: 2, to: 1) == 0xFF_FFFF)
        for _ in 0..<100 { #expect(ProbeSequence.random() <= ProbeSequence.mask) }
    }

    @Test func dropCountersCountByReason() {
        var drops = ProbeDrops()
        #expect(drops.description == "none")
        drops.count(.badVersion)
        drops.count(.badVersion)
        drops.count(.replyToNothing)
        #expect(drops[.badVersion] == 2)
        #expect(drops[.badKind] == 0)
        #expect(drops.total == 3)
        #expect(drops.description == "badVersion=2 replyToNothing=1")
    }
}

@Suite struct TrainPacketTests {
    @Test func goldenBytesOfATrainPacket() throws {
        let packet = TrainPacket(kind: .train, session: 0xDEAD_BEEF, train: 2, length: 100, index: 7)
        let bytes = packet.encoded(padTo: 40)
        #expect(bytes.count == 40)
        #expect(Array(bytes[0..<16]) == [
            0x50, 0x52,             // magic "PR"
            0x02,                   // version 2
            0x03,                   // kind train, no flags
            0xDE, 0xAD, 0xBE, 0xEF, // session
            0x00, 0x02,             // train
            0x00, 0x64,             // length
            0x00, 0x00, 0x00, 0x07, // index
        ])
        #expect(bytes[16...].allSatisfy { $0 == 0 })
        #expect(try TrainPacket.decode(bytes) == packet)
        let end = TrainPacket(kind: .train, session: 1, train: 0, length: 100, index: 100, isEndOfTrain: true)
        #expect(end.encoded()[3] == 0x23)
        #expect(try TrainPacket.decode(end.encoded()) == end)
    }

    @Test func rejectsWithReasons() {
        let good = TrainPacket(kind: .train, session: 1, train: 0, length: 10, index: 3).encoded()
        func reason(_ bytes: [UInt8]) -> ProbeRejection? {
            do { _ = try TrainPacket.decode(bytes); return nil } catch { return error }
        }
        #expect(reason(good) == nil)
        #expect(reason(Array(good.prefix(15))) == .truncated)
        #expect(reason(ProbePacket(kind: .request, sequence: 1).encoded()) == .truncated)
        var bytes = good; bytes[1] = 0x53
        #expect(reason(bytes) == .badMagic)
        bytes = good; bytes[2] = 1 // the old shared 20-byte header
        #expect(reason(bytes) == .badVersion)
        bytes = good; bytes[3] = 0x01
        #expect(reason(bytes) == .badKind)
        bytes = good; bytes[3] = 0x13
        #expect(reason(bytes) == .badFlags)
        bytes = good; bytes[3] = 0x24 // end of train on a report
        #expect(reason(bytes) == .badFlags)
        bytes = good; bytes[15] = 10 // index == length without the end flag
        #expect(reason(bytes) == .badFlags)
        bytes = good; bytes[10] = 0; bytes[11] = 0 // length 0
        #expect(reason(bytes) == .badFlags)
        bytes = good; bytes[3] = 0x23 // end flag with index != length
        #expect(reason(bytes) == .badFlags)
    }

    @Test func everyTruncationAndByteFlipIsHandledWithoutCrashing() {
        let good = TrainPacket(kind: .train, session: 0x1234, train: 1, length: 99, index: 5).encoded(padTo: 24)
        for length in 0...40 { _ = try? TrainPacket.decode(Array((good + good).prefix(length))) }
        for index in good.indices {
            for value in [UInt8(0), 0xFF, good[index] ^ 0x80] {
                var bytes = good
                bytes[index] = value
                if let packet = try? TrainPacket.decode(bytes), index < TrainPacket.headerSize {
                    #expect(packet.encoded(padTo: bytes.count) == bytes)
                }
            }
        }
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
        for _ in 0..<1000 { log.dropped(.badVersion, from: source) }
        #expect(lines.lines == ["probe responder dropped 1 datagram(s): badVersion=1; last from 10.99.0.7:4000"])
    }
}

import Foundation
import Model
import Testing
import WireGuard
@testable import Mesh

/// SplitMix64: a tiny deterministic generator, so a failing case can be reproduced from its seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

struct AnnouncementFuzzTests {
    let key = MeshKey(bytes: Array(100..<132))!

    func seeds() throws -> [[UInt8]] {
        let codec = AnnouncementCodec(authentication: .key(key))
        var list: [[UInt8]] = []
        list.append(try codec.encode(sampleAnnouncement()))
        var minimal = sampleAnnouncement(name: "x")
        minimal.lanPrefixes = []
        minimal.endpoints = []
        list.append(try codec.encode(minimal))
        var large = sampleAnnouncement(name: String(repeating: "n", count: 63))
        large.lanPrefixes = (0..<32).map { IPv4Prefix(IPv4Address(10, UInt8($0), 0, 0), length: 16) }
        large.endpoints = (0..<8).map { Endpoint(label: "uplink\($0)", address: SocketAddress4(IPv4Address(192, 0, 2, UInt8($0)), port: 51830)) }
        list.append(try codec.encode(large))
        return list
    }

    static func mutate(_ input: [UInt8], _ rng: inout SplitMix64, splice: [UInt8]) -> [UInt8] {
        var bytes = input
        for _ in 0...Int.random(in: 0...3, using: &rng) {
            switch Int.random(in: 0..<9, using: &rng) {
            case 0 where !bytes.isEmpty:  // flip bits
                let index = Int.random(in: 0..<bytes.count, using: &rng)
                bytes[index] ^= UInt8(1) << UInt8.random(in: 0...7, using: &rng)
            case 1 where !bytes.isEmpty:  // interesting byte values
                let index = Int.random(in: 0..<bytes.count, using: &rng)
                bytes[index] = [0, 1, 0x7f, 0x80, 0xff, 32, 33, 63, 64, 9].randomElement(using: &rng)!
            case 2 where !bytes.isEmpty:  // truncate
                bytes.removeLast(Int.random(in: 1...bytes.count, using: &rng))
            case 3:  // extend
                bytes += (0..<Int.random(in: 1...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            case 4 where !bytes.isEmpty:  // delete a run
                let start = Int.random(in: 0..<bytes.count, using: &rng)
                bytes.removeSubrange(start..<min(bytes.count, start + Int.random(in: 1...8, using: &rng)))
            case 5:  // insert a run
                let at = Int.random(in: 0...bytes.count, using: &rng)
                bytes.insert(contentsOf: (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }, at: at)
            case 6:  // splice with another datagram
                let cut = Int.random(in: 0...min(bytes.count, splice.count), using: &rng)
                bytes = Array(bytes.prefix(cut)) + Array(splice.dropFirst(cut))
            case 7 where bytes.count >= 10:  // make the length field agree, to get past the header checks
                bytes[8] = UInt8(truncatingIfNeeded: bytes.count >> 8)
                bytes[9] = UInt8(truncatingIfNeeded: bytes.count)
            case 8 where bytes.count > 80:  // a count or length byte in the body or certificate
                let index = Int.random(in: 78..<bytes.count, using: &rng)
                bytes[index] = UInt8.random(in: 0...40, using: &rng)
            default:
                bytes.append(UInt8.random(in: 0...255, using: &rng))
            }
        }
        return bytes
    }

    /// At least 100,000 mutated and random datagrams against the authenticated decoder: none is accepted and
    /// nothing traps (a trap would kill the test process).
    @Test func hostileDatagramsAreNeverAccepted() async throws {
        let codec = AnnouncementCodec(authentication: .key(key))
        let seeds = try seeds()
        var rng = SplitMix64(state: 0x5eed_0001)
        var reasons: [AnnouncementRejection: Int] = [:]
        var tried = 0
        var accepted = 0
        while tried < 120_000 {
            if tried % 2000 == 0 { await Task.yield() }  // CPU-bound: let the other tests' tasks run
            let datagram: [UInt8]
            if tried % 4 == 3 {
                // Random, half of them with a plausible header.
                var random = (0..<Int.random(in: 0...1100, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                if tried % 8 == 7, random.count >= 10 {
                    random.replaceSubrange(0..<8, with: AnnouncementCodec.magic + [2, 0, 1, 0])
                    random[8] = UInt8(truncatingIfNeeded: random.count >> 8)
                    random[9] = UInt8(truncatingIfNeeded: random.count)
                }
                datagram = random
            } else {
                let seed = seeds[tried % seeds.count]
                datagram = Self.mutate(seed, &rng, splice: seeds[(tried + 1) % seeds.count])
                if seeds.contains(datagram) { continue }  // a mutation that undid itself is not hostile
            }
            tried += 1
            do {
                _ = try codec.decode(datagram)
                accepted += 1
            } catch {
                reasons[error, default: 0] += 1
            }
        }
        #expect(accepted == 0)
        #expect(reasons.values.reduce(0, +) == tried)
        print("fuzz rejections:", reasons.sorted { $0.value > $1.value }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
    }

    /// Mutations re-signed with the right key reach the body parser: it must never trap, and whatever it
    /// accepts must be canonical (re-encoding gives the same bytes), so no two encodings mean one thing.
    @Test func resignedMutationsExerciseTheBodyParser() async throws {
        let codec = AnnouncementCodec(authentication: .key(key))
        let insecure = AnnouncementCodec(authentication: .insecure)
        let seeds = try seeds().map { Array($0.dropLast(32)) }
        var rng = SplitMix64(state: 0x5eed_0002)
        var accepted = 0
        var reasons: [AnnouncementRejection: Int] = [:]
        for round in 0..<100_000 {
            if round % 2000 == 0 { await Task.yield() }
            var body = Self.mutate(seeds[round % seeds.count], &rng, splice: seeds[(round + 1) % seeds.count])
            guard body.count >= 10 else { continue }
            body[0..<8] = (AnnouncementCodec.magic + [2, 0, 1, 0])[...]
            let total = body.count + 32
            body[8] = UInt8(truncatingIfNeeded: total >> 8)
            body[9] = UInt8(truncatingIfNeeded: total)
            let datagram = body + hmac(body, key: key)
            let announcement: Announcement
            do {
                announcement = try codec.decode(datagram)
            } catch {
                reasons[error, default: 0] += 1
                continue
            }
            accepted += 1
            #expect(try codec.encode(announcement) == datagram)
            #expect(try insecure.encode(announcement).count + 32 == datagram.count)
        }
        print("re-signed fuzz: accepted \(accepted);", reasons.sorted { $0.value > $1.value }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
    }
}

/// The signed format: mutations of certified announcements and revocation lists, re-MACed with the right
/// mesh key (the attacker holds it), against a receiver that requires certificates: none accepted, no trap.
struct SignedAnnouncementFuzzTests {
    @Test func mutatedSignedMessagesAreNeverAccepted() async throws {
        let mesh = CertifiedMesh()
        let receiver = mesh.receiver
        var seeds = [try mesh.signedSample().bytes]
        var large = sampleAnnouncement(name: String(repeating: "n", count: 63), timestamp: 1_700_000_000_000)
        large.lanPrefixes = (0..<32).map { IPv4Prefix(IPv4Address(10, UInt8($0), 0, 0), length: 16) }
        large.endpoints = (0..<8).map { Endpoint(label: "uplink\($0)", address: SocketAddress4(IPv4Address(192, 0, 2, UInt8($0)), port: 51830)) }
        let certificate = try mesh.certificate(for: large, key: mesh.identity(5))
        seeds.append(try mesh.codec(signing: mesh.identity(5), certificate).encode(large))
        var list = RevocationList(issuer: [], number: 1, issued: 1_700_000_000, serials: [1, 2, 3])
        try list.sign(with: mesh.ca)
        seeds.append(try receiver.encode(list))
        for seed in seeds { _ = try receiver.decodeMessage(seed, now: CertifiedMesh.now) }  // the seeds are valid
        let bodies = seeds.map { Array($0.dropLast(32)) }
        var rng = SplitMix64(state: 0x5eed_0022)
        var reasons: [AnnouncementRejection: Int] = [:]
        var tried = 0
        while tried < 100_000 {
            if tried % 2000 == 0 { await Task.yield() }
            var body = AnnouncementFuzzTests.mutate(bodies[tried % bodies.count], &rng, splice: bodies[(tried + 1) % bodies.count])
            if body.count >= 10, tried % 2 == 0 {  // half with a consistent length field
                let total = body.count + 32
                body[8] = UInt8(truncatingIfNeeded: total >> 8)
                body[9] = UInt8(truncatingIfNeeded: total)
            }
            if bodies.contains(body) { continue }  // a mutation that undid itself is not hostile
            tried += 1
            do {
                let message = try receiver.decodeMessage(body + hmac(body, key: mesh.meshKey), now: CertifiedMesh.now)
                Issue.record("accepted a mutation: \(message)")
            } catch {
                reasons[error, default: 0] += 1
            }
        }
        #expect(reasons.values.reduce(0, +) == tried)
        print("signed fuzz (\(tried)):", reasons.sorted { $0.value > $1.value }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
    }
}

import Foundation
import Testing
@testable import WireGuard

struct KeyTests {
    // RFC 7748 section 6.1, Alice's key pair.
    let alicePrivateHex = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
    let alicePublicHex = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"

    @Test func publicKeyFromKnownPrivateKey() throws {
        let secret = try #require(WireGuardKey(hex: alicePrivateHex))
        let key = try #require(WireGuardPrivateKey(secret))
        #expect(key.publicKey.hex == alicePublicHex)
        #expect(WireGuardPrivateKey(bytes: secret.bytes)?.publicKey == key.publicKey)
        #expect(WireGuardPrivateKey(bytes: [1, 2, 3]) == nil)
        #expect(!key.description.contains(secret.base64))
    }

    @Test func hexAndBase64RoundTrip() throws {
        let key = try #require(WireGuardKey(hex: alicePublicHex))
        #expect(key.base64 == "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=")
        #expect(WireGuardKey(base64: key.base64) == key)
        #expect(WireGuardKey(hex: alicePublicHex.uppercased()) == key)
    }

    @Test func rejectsMalformedText() {
        #expect(WireGuardKey(hex: String(alicePublicHex.dropLast())) == nil)
        #expect(WireGuardKey(hex: String(alicePublicHex.dropLast()) + "g") == nil)
        #expect(WireGuardKey(base64: "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTm=") == nil)
        #expect(WireGuardKey(base64: "") == nil)
        #expect(WireGuardKey(bytes: [UInt8](repeating: 1, count: 31)) == nil)
    }

    @Test func generatedKeysAreClampedAndDistinct() {
        let a = WireGuardPrivateKey(), b = WireGuardPrivateKey()
        #expect(a.publicKey != b.publicKey)
        #expect(a.secret.bytes[0] & 7 == 0)
        #expect(a.secret.bytes[31] & 0xc0 == 0x40)
    }
}

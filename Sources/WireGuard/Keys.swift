import Crypto
import Foundation

/// A 32-byte WireGuard key (public or pre-shared form) with the two text forms WireGuard uses:
/// base64 (the `wg` tool, config files) and lowercase hex (the UAPI protocol of wireguard-go).
public struct WireGuardKey: Hashable, Sendable, CustomStringConvertible {
    public static let length = 32

    /// Always exactly 32 bytes.
    public let bytes: [UInt8]

    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == WireGuardKey.length else { return nil }
        self.bytes = Array(bytes)
    }

    /// Parses the 44-character base64 form ("...=").
    public init?(base64 text: some StringProtocol) {
        guard text.utf8.count == 44, let data = Data(base64Encoded: String(text)) else { return nil }
        self.init(bytes: data)
    }

    /// Parses the 64-character hex form used by UAPI; either case is accepted.
    public init?(hex text: some StringProtocol) {
        let utf8 = Array(text.utf8)
        guard utf8.count == 64 else { return nil }
        var result = [UInt8]()
        result.reserveCapacity(32)
        var index = 0
        while index < 64 {
            guard let high = hexValue(utf8[index]), let low = hexValue(utf8[index + 1]) else { return nil }
            result.append(high << 4 | low)
            index += 2
        }
        self.bytes = result
    }

    public var base64: String { Data(bytes).base64EncodedString() }

    public var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(64)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The base64 form, as `wg show` prints it.
    public var description: String { base64 }

    /// All zeros: the value WireGuard uses to mean "no key".
    public var isZero: Bool { bytes.allSatisfy { $0 == 0 } }
}

private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
    default: nil
    }
}

/// An X25519 private key for a WireGuard interface. Its description never shows the secret.
public struct WireGuardPrivateKey: Sendable, CustomStringConvertible {
    /// The secret bytes; handle with care (UAPI and genetlink need them).
    public let secret: WireGuardKey
    /// The matching public key, as peers configure it.
    public let publicKey: WireGuardKey

    /// A fresh random key, clamped the way `wg genkey` stores it, so the stored bytes are canonical.
    public init() {
        var raw = Array(Curve25519.KeyAgreement.PrivateKey().rawRepresentation)
        raw[0] &= 248
        raw[31] = (raw[31] & 127) | 64
        // Clamped random bytes are always a valid X25519 scalar.
        self.init(WireGuardKey(bytes: raw)!)!
    }

    /// The raw 32 bytes, as `Store.SecretFile` reads them from the key file (the `wg genkey` format).
    public init?(bytes: [UInt8]) {
        guard let key = WireGuardKey(bytes: bytes) else { return nil }
        self.init(key)
    }

    public init?(_ key: WireGuardKey) {
        guard let parsed = try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: key.bytes) else {
            return nil
        }
        secret = key
        publicKey = WireGuardKey(bytes: parsed.publicKey.rawRepresentation)!
    }

    public var description: String { "private key for \(publicKey)" }
}

import Model

/// The flow hash of the load-balancing chains (`jhash ip saddr . ip daddr mod N seed S`), computed the way
/// the kernel does, so a reader can tell which bucket (and so which path) a flow takes without sending it.
///
/// nf_tables' hash expression (net/netfilter/nft_hash.c) is `reciprocal_scale(jhash(data, len, seed), N)`:
/// Bob Jenkins' lookup3 over the register bytes (here saddr then daddr, both in network order), scaled by
/// `(h * N) >> 32` rather than a remainder. `include/linux/jhash.h` is lookup3's `hashlittle`: words are
/// read little-endian, the last 1-12 bytes are added byte by byte.
public enum FlowHash {
    /// The bucket of the flow from `source` to `destination` among `modulus` buckets.
    public static func bucket(source: IPv4Address, destination: IPv4Address, modulus: UInt32,
                              seed: UInt32 = SteeringNames.hashSeed) -> UInt32 {
        scale(jhash(source.bytes + destination.bytes, seed: seed), modulus)
    }

    /// `reciprocal_scale`: maps a 32-bit hash onto 0..<modulus.
    public static func scale(_ hash: UInt32, _ modulus: UInt32) -> UInt32 {
        UInt32((UInt64(hash) * UInt64(modulus)) >> 32)
    }

    /// The kernel's `jhash(key, length, initval)`.
    public static func jhash(_ key: [UInt8], seed: UInt32) -> UInt32 {
        var a = 0xdead_beef &+ UInt32(truncatingIfNeeded: key.count) &+ seed
        var b = a, c = a
        var k = key[...]
        func word(_ bytes: ArraySlice<UInt8>) -> UInt32 {
            bytes.enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) }
        }
        while k.count > 12 {
            a &+= word(k.prefix(4))
            b &+= word(k.dropFirst(4).prefix(4))
            c &+= word(k.dropFirst(8).prefix(4))
            mix(&a, &b, &c)
            k = k.dropFirst(12)
        }
        guard !k.isEmpty else { return c }
        // The tail, 1-12 bytes, each added at its byte position (the switch with fall-through in C).
        a &+= word(k.prefix(4))
        b &+= word(k.dropFirst(4).prefix(4))
        c &+= word(k.dropFirst(8).prefix(4))
        final(&a, &b, &c)
        return c
    }

    private static func rol(_ x: UInt32, _ n: UInt32) -> UInt32 { x << n | x >> (32 - n) }

    private static func mix(_ a: inout UInt32, _ b: inout UInt32, _ c: inout UInt32) {
        a &-= c; a ^= rol(c, 4); c &+= b
        b &-= a; b ^= rol(a, 6); a &+= c
        c &-= b; c ^= rol(b, 8); b &+= a
        a &-= c; a ^= rol(c, 16); c &+= b
        b &-= a; b ^= rol(a, 19); a &+= c
        c &-= b; c ^= rol(b, 4); b &+= a
    }

    private static func final(_ a: inout UInt32, _ b: inout UInt32, _ c: inout UInt32) {
        c ^= b; c &-= rol(b, 14)
        a ^= c; a &-= rol(c, 11)
        b ^= a; b &-= rol(a, 25)
        c ^= b; c &-= rol(b, 16)
        a ^= c; a &-= rol(c, 4)
        b ^= a; b &-= rol(a, 14)
        c ^= b; c &-= rol(b, 24)
    }
}

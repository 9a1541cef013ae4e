import Model
import Netlink

/// Everything Steering wants in the kernel for one plan: the nft table (chains, rules, sets, maps), the ip
/// rules and the routes. A pure value: `SteeringCompiler` makes it, `SteeringDiff` compares it with what is
/// installed.
public struct SteeringRuleset: Sendable, Equatable {
    public var table: NFTTable
    /// Chains in creation order; base chains last so nothing hooks before its targets exist.
    public var chains: [NFTChain]
    /// Rules per chain, in order. Each carries a fingerprint in its userdata (see `SteeringCompiler`).
    public var rules: [String: [NFTRule]]
    /// Class match sets: rebuilt whole when a policy changes (their content is in the rule fingerprint).
    public var staticSets: [StaticSet]
    /// Maps whose elements move traffic (`steer`, `lb_*`): diffed element by element.
    public var maps: [Map]
    public var ipRules: [IPRule]
    public var routes: [Route]

    public struct StaticSet: Sendable, Equatable {
        public var set: NFTSet
        public var elements: [NFTElement]
        /// The chains whose rules look the set up: when all of them are reloaded the set is rebuilt with
        /// them (a set still referenced by a rule cannot be deleted).
        public var owners: [String]
    }

    public struct Map: Sendable, Equatable {
        public var set: NFTSet
        public var elements: [NFTElement]
    }

    /// A route by interface name; the index is resolved when applied.
    public struct Route: Sendable, Hashable {
        public var prefix: IPv4Prefix
        public var table: UInt32
        public var interface: String
        public var gateway: IPv4Address?
    }
}

/// Names and numbers of the kernel objects Steering owns (documented in docs/STEERING.md).
public enum SteeringNames {
    public static let table = "patronus"
    public static let family = NFTFamily.inet
    public static let sitesMap = "sites"
    public static let classifyChain = "classify"
    public static let classifyReplyChain = "classify_reply"
    public static let preroutingChain = "prerouting"
    public static let outputChain = "output"
    /// rtnetlink protocol number on our ip rules and routes, so we recognise ours among foreign ones.
    public static let protocolTag: UInt8 = 77
    /// Our slice of the shared 6200-6299 rule band: Steering owns only rules tagged with `protocolTag` here.
    public static let ruleBand: ClosedRange<UInt32> = 6200...6299
    public static let tableRange: ClosedRange<UInt32> = 6201...6455
    /// Seed of the load-balancing flow hash: fixed, so a re-created chain hashes flows the same way.
    public static let hashSeed: UInt32 = 0x7061_7472

    public static func classPathChain(_ className: String, _ slot: UInt8) -> String { "\(className)_path\(slot)" }
    /// The comment on a class's rules in `classify` and `classify_reply`, and its inverse (nil for the
    /// "no policy matched" rule and anything not ours).
    public static func classifyComment(_ className: String) -> String { "class \(className)" }
    public static func className(inClassifyComment comment: String?) -> String? {
        guard let comment, comment.hasPrefix("class ") else { return nil }
        let name = comment.dropFirst("class ".count)
        return Policy.isValidName(name) ? String(name) : nil
    }
    public static func siteChain(_ siteName: String) -> String { "site_\(siteName)" }
    public static func balanceChain(_ className: String, _ siteName: String) -> String { "lb_\(className)_\(siteName)" }
}

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
    /// Maps whose elements move traffic (`site_*`, `buckets`): diffed element by element.
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

/// The main table's routes out of each pinned uplink (by interface name): what its uplink table copies.
public typealias UplinkRoutes = [String: [UplinkRoute]]

public struct UplinkRoute: Hashable, Sendable {
    public var prefix: IPv4Prefix
    public var gateway: IPv4Address?

    public init(prefix: IPv4Prefix, gateway: IPv4Address?) {
        self.prefix = prefix
        self.gateway = gateway
    }
}

/// Names of the nftables objects Steering owns (docs/STEERING.md); every number is in `Conventions`.
public enum SteeringNames {
    public static let table = Conventions.nftTable
    public static let family = NFTFamily.inet
    public static let sitesMap = "sites"
    public static let flowsMap = "flows"
    public static let classifyChain = "classify"
    public static let classifyReplyChain = "classify_reply"
    public static let preroutingChain = "prerouting"
    public static let outputChain = "output"
    /// Class -> htb class (`meta priority`) of the classes outside the standard band; looked up by `shape`.
    public static let bandsMap = "class_bands"
    /// Our own control traffic (to an overlay address): probes, their replies, announcements, bandwidth trains.
    public static let shapeControlChain = "shape_control"
    /// The tunnel interfaces (every path's interface), by name: a site that does not relay drops what arrives
    /// by one of them bound for a remote site (the site chains' transit rule, docs/STEERING.md "Transit").
    public static let tunnelsSet = "tunnels"
    /// Seed of the load-balancing flow hash: fixed, so a re-created chain hashes flows the same way.
    public static let hashSeed: UInt32 = 0x7061_7472

    /// `<class>_path<id>`: sets the mark of path `id` (the `paths.id`) for the class.
    public static func classPathChain(_ className: String, _ pathID: Int64) -> String { "\(className)_path\(pathID)" }
    /// The class name and path id of a `classPathChain` name, given the class names (a class name may
    /// itself contain "_path").
    public static func parseClassPathChain(_ chain: String, classNames: [String]) -> (className: String, pathID: Int64)? {
        for name in classNames where chain.hasPrefix(name + "_path") {
            if let id = Int64(chain.dropFirst(name.count + "_path".count)), id > 0 { return (name, id) }
        }
        return nil
    }
    /// The comment on a class's rules in `classify` and `classify_reply`, and its inverse (nil for the
    /// "no policy matched" rule and anything not ours).
    public static func classifyComment(_ className: String) -> String { "class \(className)" }
    public static func className(inClassifyComment comment: String?) -> String? {
        guard let comment, comment.hasPrefix("class ") else { return nil }
        let name = comment.dropFirst("class ".count)
        return Policy.isValidName(name) ? String(name) : nil
    }
    public static func siteChain(_ siteName: String) -> String { "site_\(siteName)" }

    // The egress table (`Conventions.egressTable`): copies (docs/STEERING.md "Duplication") and the shapers'
    // bands (docs/SHAPING.md), one base chain.
    public static let egressFamily = NFTFamily.ip
    public static let egressTable = Conventions.egressTable
    /// Its one base chain (postrouting, mangle), while a class duplicates or something is shaped.
    public static let egressChain = "postrouting"
    /// In the egress table: class . path -> `copy_<class>_path<id>`.
    public static let copiesMap = "copies"
    /// `copy_<class>_path<id>`: sends a copy of the class's packet by path `id`, counts it.
    public static func copyChain(_ className: String, _ pathID: Int64) -> String { "copy_\(className)_path\(pathID)" }
    /// In our inet table: UDP from remote sites goes to `dedup`; its class map leads to `<class>_dedup`.
    public static let dedupChain = "dedup"
    public static let dedupClassesMap = "dedup_classes"
    public static let copySourcesSet = "copy_sources"
    public static let copiesSeenSet = "copies_seen"
    public static func dedupClassChain(_ className: String) -> String { "\(className)_dedup" }
    /// Input interface -> `<class>_dup<id>`, the counter of second copies by path.
    public static func arrivalsMap(_ className: String) -> String { "\(className)_arrivals" }
    public static func duplicateChain(_ className: String, _ pathID: Int64) -> String { "\(className)_dup\(pathID)" }
    /// The class name and path id of a chain named by `make` (`copyChain`, `duplicateChain`).
    public static func parse(_ chain: String, classNames: [String], _ make: (String, Int64) -> String) -> (className: String, pathID: Int64)? {
        for name in classNames {
            let prefix = make(name, 0).dropLast()
            if chain.hasPrefix(prefix), let id = Int64(chain.dropFirst(prefix.count)), id > 0, make(name, id) == chain { return (name, id) }
        }
        return nil
    }
    public static func balanceChain(_ className: String, _ siteName: String) -> String { "lb_\(className)_\(siteName)" }
    /// Flow hash -> `bucket_<n>` (present while a class is load balanced).
    public static let bucketsMap = "buckets"
    public static func bucketChain(_ bucket: UInt32) -> String { "bucket_\(bucket)" }

    /// Whether an ip rule is ours: one of our protocol tags, inside our band.
    public static func isOurs(_ rule: IPRule) -> Bool {
        (rule.protocolTag == Conventions.steeringProtocol || rule.protocolTag == Conventions.uplinkProtocol)
            && Conventions.ruleBand.contains(rule.priority)
    }

    /// Whether a route is ours: in a path table with the steering tag, or an uplink table with the uplink tag.
    public static func isOurs(_ route: IPRoute) -> Bool {
        (route.protocolTag == Conventions.steeringProtocol && Conventions.pathTables.contains(route.table))
            || (route.protocolTag == Conventions.uplinkProtocol && Conventions.uplinkTables.contains(route.table))
    }

    /// The protocol tag our route in `table` carries.
    public static func protocolTag(forTable table: UInt32) -> UInt8 {
        Conventions.uplinkTables.contains(table) ? Conventions.uplinkProtocol : Conventions.steeringProtocol
    }
}

import Model
import Netlink

/// What of ours is in the kernel right now, as far as diffing needs to know: our table's chains, rule
/// fingerprints, sets and map elements, our ip rules and our routes. Read once (at start, or after a
/// failure) and then kept up to date from the batches we commit, so a re-steer costs no dump.
public struct InstalledState: Sendable, Equatable {
    public var tableExists = false
    public var chains: [String: NFTChain] = [:]
    /// Per chain: fingerprints of its rules in order (nil for a rule that carries none: not ours, or damaged).
    public var ruleFingerprints: [String: [[UInt8]?]] = [:]
    public var ruleHandles: [String: [UInt64]] = [:]
    public var sets: [String: NFTSet] = [:]
    /// Elements of the maps (not of the static class sets, which are tracked through rule fingerprints).
    public var mapElements: [String: [NFTElement]] = [:]
    public var ipRules: [IPRule] = []
    public var routes: [SteeringRuleset.Route] = []

    public init() {}

    /// Reads our objects from the kernel. Foreign tables, rules and routes are not even parsed beyond
    /// the fields that tell they are not ours.
    static func read(nft: NFTablesClient, rtnl: RouteNetlinkClient) throws(NetlinkError) -> InstalledState {
        var s = try read(nft: nft, family: SteeringNames.family, table: SteeringNames.table)
        s.ipRules = try rtnl.rules().filter(SteeringNames.isOurs)
        let names = Dictionary(try rtnl.links().map { ($0.index, $0.name) }, uniquingKeysWith: { a, _ in a })
        s.routes = try rtnl.routes().filter(SteeringNames.isOurs).map {
            SteeringRuleset.Route(prefix: IPv4Prefix(IPv4Address($0.destination), length: $0.prefixLength), table: $0.table,
                                  interface: names[$0.outputInterface] ?? "#\($0.outputInterface)",
                                  gateway: $0.gateway.map(IPv4Address.init))
        }
        return s
    }

    /// One table of ours (chains, rule fingerprints, sets, map elements); no rules or routes.
    static func read(nft: NFTablesClient, family: NFTFamily, table: String) throws(NetlinkError) -> InstalledState {
        var s = InstalledState()
        s.tableExists = try nft.tables(family: family).contains { $0.name == table }
        if s.tableExists {
            for c in try nft.chains(family: family, table: table) { s.chains[c.name] = c }
            for r in try nft.rules(family: family, table: table) {
                s.ruleFingerprints[r.chain, default: []].append(fingerprint(r.userdata))
                s.ruleHandles[r.chain, default: []].append(r.handle)
            }
            for set in try nft.sets(family: family, table: table) {
                s.sets[set.name] = set
                if set.flags & NFTSet.flagMap != 0 {
                    s.mapElements[set.name] = try nft.elements(family: family, table: table, set: set.name)
                }
            }
        }
        return s
    }

    static func fingerprint(_ userdata: [UInt8]?) -> [UInt8]? {
        guard let userdata else { return nil }
        return NFTUserdata.parse(userdata).first { $0.0 == SteeringCompiler.fingerprintUserdataType }?.1
    }
}

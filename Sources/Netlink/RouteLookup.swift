import CNetfilter

/// What the kernel's routing answers for one packet (`ip route get`): the table whose route matched (after
/// the ip rules chose it), the interface the packet leaves by, the next hop and the source address.
public struct RouteLookup: Hashable, Sendable, CustomStringConvertible {
    /// The table the matching route is in (RTM_F_LOOKUP_TABLE asks the kernel for it).
    public var table: UInt32
    /// RTN_* route type: 1 unicast, 2 local, 7 unreachable, ...
    public var type: UInt8
    public var outputInterface: Int32?
    public var gateway: UInt32?
    /// The source address the kernel picks for locally generated packets (RTA_PREFSRC).
    public var preferredSource: UInt32?

    public init(table: UInt32, type: UInt8, outputInterface: Int32? = nil, gateway: UInt32? = nil,
                preferredSource: UInt32? = nil) {
        self.table = table
        self.type = type
        self.outputInterface = outputInterface
        self.gateway = gateway
        self.preferredSource = preferredSource
    }

    public var isLocal: Bool { type == UInt8(RTN_LOCAL) }

    public var description: String {
        var s = "table \(table) type \(type)"
        if let outputInterface { s += " dev #\(outputInterface)" }
        if let gateway { s += " via \(dotted(gateway))" }
        if let preferredSource { s += " src \(dotted(preferredSource))" }
        return s
    }
}

extension RouteNetlink {
    /// RTM_GETROUTE for one IPv4 destination, as `ip route get DST [from SRC] [iif DEV] [mark M]` sends it,
    /// plus RTM_F_LOOKUP_TABLE so the reply names the table the ip rules led to (without it the kernel
    /// reports the main table whatever matched). With `inputInterface` the kernel routes the packet as if it
    /// arrived there (forwarding, with `source` a foreign address); without it, as if this host sent it.
    public static func routeLookupMessage(destination: UInt32, source: UInt32? = nil, inputInterface: Int32? = nil,
                                          mark: UInt32? = nil) -> NetlinkMessage {
        var p: [UInt8] = [UInt8(AF_INET), 32, source == nil ? 0 : 32, 0] // family, dst_len, src_len, tos
        p += [0, 0, 0, 0] // table, protocol, scope, type
        p.appendHost(UInt32(RTM_F_LOOKUP_TABLE)) // flags
        var a = AttributeWriter()
        a.put(t(RTA_DST.rawValue), destination.bigEndianBytes)
        if let source { a.put(t(RTA_SRC.rawValue), source.bigEndianBytes) }
        if let inputInterface { a.putHostU32(t(RTA_IIF.rawValue), UInt32(bitPattern: inputInterface)) }
        if let mark { a.putHostU32(t(RTA_MARK.rawValue), mark) }
        return NetlinkMessage(type: UInt16(RTM_GETROUTE), flags: 0, payload: p + a.bytes)
    }

    /// The answer to `routeLookupMessage`: the RTM_NEWROUTE the kernel sends back.
    public static func parseRouteLookup(_ m: NetlinkMessage) throws(NetlinkError) -> RouteLookup? {
        guard m.type == UInt16(RTM_NEWROUTE), m.payload.count >= 12, m.payload[0] == UInt8(AF_INET) else { return nil }
        let attrs = try AttributeList(parsing: Array(m.payload[12...]))
        return RouteLookup(table: attrs[RTA_TABLE.rawValue]?.hostU32 ?? UInt32(m.payload[4]), type: m.payload[7],
                           outputInterface: attrs[RTA_OIF.rawValue]?.hostU32.map { Int32(bitPattern: $0) },
                           gateway: attrs[RTA_GATEWAY.rawValue]?.bigU32, preferredSource: attrs[RTA_PREFSRC.rawValue]?.bigU32)
    }
}

extension RouteNetlinkClient {
    /// Asks the kernel how it routes a packet to `destination` carrying `mark` (RTM_GETROUTE): the real ip
    /// rules and tables answer. Read-only. Throws the kernel's errno (ENETUNREACH: no route).
    public func lookup(destination: UInt32, source: UInt32? = nil, inputInterface: Int32? = nil,
                       mark: UInt32? = nil) throws(NetlinkError) -> RouteLookup {
        var operation = "look up the route to \(dotted(destination))"
        if let source { operation += " from \(dotted(source))" }
        if let inputInterface { operation += " arriving on #\(inputInterface)" }
        if let mark { operation += " with mark \(hex(mark))" }
        let replies = try connection.get(NetlinkRequest(
            RouteNetlink.routeLookupMessage(destination: destination, source: source, inputInterface: inputInterface,
                                            mark: mark), operation))
        for m in replies { if let answer = try RouteNetlink.parseRouteLookup(m) { return answer } }
        throw NetlinkError(errno: ENETUNREACH, operation: operation)
    }
}

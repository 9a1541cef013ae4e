#if canImport(Glibc)
import Glibc
#endif
import CNetfilter

/// A policy-routing rule (`ip rule`), IPv4. Verbs map to netlink flags one to one:
/// add = RTM_NEWRULE CREATE|EXCL, delete = RTM_DELRULE (matched on every field we set).
public struct IPRule: Hashable, Sendable, CustomStringConvertible {
    /// What a matching packet does: look a table up, jump to the rules of a later priority, or nothing
    /// (a `nop` rule is a `goto` target).
    public enum Action: Hashable, Sendable {
        case lookup(UInt32)
        case goto(UInt32)
        case nop
    }

    public var priority: UInt32
    public var fwmark: UInt32?
    public var fwmask: UInt32?
    public var action: Action
    /// rtnetlink protocol tag (FRA_PROTOCOL); lets an owner recognise its rules among foreign ones.
    public var protocolTag: UInt8

    public init(priority: UInt32, fwmark: UInt32? = nil, fwmask: UInt32? = nil, action: Action, protocolTag: UInt8 = 0) {
        self.priority = priority
        self.fwmark = fwmark
        self.fwmask = fwmask
        self.action = action
        self.protocolTag = protocolTag
    }

    public init(priority: UInt32, fwmark: UInt32? = nil, fwmask: UInt32? = nil, table: UInt32, protocolTag: UInt8 = 0) {
        self.init(priority: priority, fwmark: fwmark, fwmask: fwmask, action: .lookup(table), protocolTag: protocolTag)
    }

    /// The table a `lookup` rule names; nil for `goto` and `nop`.
    public var table: UInt32? {
        if case .lookup(let table) = action { table } else { nil }
    }

    public var description: String {
        var s = "priority \(priority)"
        if let fwmark { s += " fwmark " + hex(fwmark) + (fwmask.map { "/" + hex($0) } ?? "") }
        switch action {
        case .lookup(let table): s += " table \(table)"
        case .goto(let target): s += " goto \(target)"
        case .nop: s += " nop"
        }
        return s + " protocol \(protocolTag)"
    }
}

/// A unicast IPv4 route in one table (`ip route ... table N`).
/// add = RTM_NEWROUTE CREATE|EXCL, replace = CREATE|REPLACE, delete = RTM_DELROUTE.
public struct IPRoute: Hashable, Sendable, CustomStringConvertible {
    /// Destination network address, host-order value (10.20.0.0 = 0x0a140000).
    public var destination: UInt32
    public var prefixLength: UInt8
    public var table: UInt32
    public var outputInterface: Int32
    public var gateway: UInt32?
    public var protocolTag: UInt8

    public init(destination: UInt32, prefixLength: UInt8, table: UInt32, outputInterface: Int32,
                gateway: UInt32? = nil, protocolTag: UInt8 = 0) {
        self.destination = destination
        self.prefixLength = prefixLength
        self.table = table
        self.outputInterface = outputInterface
        self.gateway = gateway
        self.protocolTag = protocolTag
    }

    public var description: String {
        var s = "\(dotted(destination))/\(prefixLength)"
        if let gateway { s += " via \(dotted(gateway))" }
        return s + " dev #\(outputInterface) table \(table) proto \(protocolTag)"
    }
}

/// A network interface as listed by RTM_GETLINK or announced by RTM_NEWLINK / RTM_DELLINK.
public struct Link: Hashable, Sendable {
    public var index: Int32
    public var name: String
    public var flags: UInt32
    /// IFLA_OPERSTATE (RFC 2863: 0 unknown, 2 down, 5 dormant, 6 up, ...); nil when not sent.
    public var operState: UInt8?

    public init(index: Int32, name: String, flags: UInt32, operState: UInt8? = nil) {
        self.index = index
        self.name = name
        self.flags = flags
        self.operState = operState
    }

    public var isUp: Bool { flags & UInt32(IFF_UP) != 0 }
    /// Administratively up, with carrier (IFF_LOWER_UP), and not operationally down, dormant or absent:
    /// what can carry traffic. Operational state "unknown" (drivers that do not report it) counts as up.
    public var isRunning: Bool {
        let lowerUp = UInt32(0x10000) // IFF_LOWER_UP (linux/if.h; not in glibc's net/if.h)
        guard isUp, flags & lowerUp != 0 else { return false }
        guard let operState else { return true }
        return operState == Self.operUp || operState == Self.operUnknown
    }

    public static let operUnknown: UInt8 = 0
    public static let operUp: UInt8 = 6
}

/// An IPv4 address on an interface.
public struct InterfaceAddress: Hashable, Sendable {
    public var interfaceIndex: Int32
    public var address: UInt32
    public var prefixLength: UInt8

    public init(interfaceIndex: Int32, address: UInt32, prefixLength: UInt8) {
        self.interfaceIndex = interfaceIndex
        self.address = address
        self.prefixLength = prefixLength
    }
}

func hex(_ v: UInt32) -> String {
    let digits = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}

func dotted(_ v: UInt32) -> String { "\(v >> 24).\(v >> 16 & 0xff).\(v >> 8 & 0xff).\(v & 0xff)" }

/// Message builders and parsers for rtnetlink (NETLINK_ROUTE). Pure: no I/O, so every message is
/// golden-tested; `RouteNetlinkClient` sends them.
public enum RouteNetlink {
    // MARK: rules

    /// RTM_NEWRULE / RTM_DELRULE with struct fib_rule_hdr. Tables >= 256 go in FRA_TABLE with
    /// hdr.table = RT_TABLE_UNSPEC, as iproute2 does.
    public static func ruleMessage(_ rule: IPRule, delete: Bool = false) -> NetlinkMessage {
        var p: [UInt8] = [UInt8(AF_INET), 0, 0, 0] // family, dst_len, src_len, tos
        let table = rule.table ?? 0
        p.append(table < 256 ? UInt8(table) : 0) // table
        p.append(0); p.append(0) // res1, res2
        let action: Int
        switch rule.action {
        case .lookup: action = FR_ACT_TO_TBL
        case .goto: action = FR_ACT_GOTO
        case .nop: action = FR_ACT_NOP
        }
        // A delete of a lookup rule matches by attributes (action 0, as iproute2 sends it); the kernel
        // refuses FRA_GOTO without the goto action.
        p.append(delete && action == FR_ACT_TO_TBL ? 0 : UInt8(action))
        p.appendHost(UInt32(0)) // flags
        var a = AttributeWriter()
        if let fwmark = rule.fwmark { a.putHostU32(t(FRA_FWMARK), fwmark) }
        if let fwmask = rule.fwmask { a.putHostU32(t(FRA_FWMASK), fwmask) }
        if rule.table != nil { a.putHostU32(t(FRA_TABLE), table) }
        if case .goto(let target) = rule.action { a.putHostU32(t(FRA_GOTO), target) }
        a.putHostU32(t(FRA_PRIORITY), rule.priority)
        if rule.protocolTag != 0 { a.putU8(t(FRA_PROTOCOL), rule.protocolTag) }
        return NetlinkMessage(type: UInt16(delete ? RTM_DELRULE : RTM_NEWRULE),
                              flags: delete ? 0 : NetlinkFlag.create | NetlinkFlag.exclusive,
                              payload: p + a.bytes)
    }

    public static func listRulesMessage() -> NetlinkMessage {
        NetlinkMessage(type: UInt16(RTM_GETRULE), flags: 0, payload: [UInt8(AF_INET), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    }

    /// Parses one RTM_NEWRULE dump entry; returns nil for rules that are not `lookup`, `goto` or `nop` rules.
    public static func parseRule(_ m: NetlinkMessage) throws(NetlinkError) -> IPRule? {
        guard m.type == UInt16(RTM_NEWRULE), m.payload.count >= 12, m.payload[0] == UInt8(AF_INET) else { return nil }
        let attrs = try AttributeList(parsing: Array(m.payload[12...]))
        let action: IPRule.Action
        switch Int(m.payload[7]) {
        case FR_ACT_TO_TBL: action = .lookup(attrs[FRA_TABLE]?.hostU32 ?? UInt32(m.payload[4]))
        case FR_ACT_GOTO:
            guard let target = attrs[FRA_GOTO]?.hostU32 else { return nil }
            action = .goto(target)
        case FR_ACT_NOP: action = .nop
        default: return nil
        }
        // The kernel leaves FRA_FWMARK out when the mark is 0, even under a mask (`fwmark 0/0xfff0000`).
        let fwmask = attrs[FRA_FWMASK]?.hostU32
        return IPRule(priority: attrs[FRA_PRIORITY]?.hostU32 ?? 0, fwmark: attrs[FRA_FWMARK]?.hostU32 ?? fwmask.map { _ in 0 },
                      fwmask: fwmask, action: action, protocolTag: attrs[FRA_PROTOCOL]?.u8 ?? 0)
    }

    // MARK: routes

    public enum RouteVerb: Sendable { case add, replace, delete }

    /// RTM_NEWROUTE / RTM_DELROUTE with struct rtmsg; fields and attribute order as iproute2 sends them.
    public static func routeMessage(_ route: IPRoute, _ verb: RouteVerb) -> NetlinkMessage {
        var p: [UInt8] = [UInt8(AF_INET), route.prefixLength, 0, 0]
        p.append(route.table < 256 ? UInt8(route.table) : 0)
        p.append(route.protocolTag)
        p.append(verb == .delete ? UInt8(RT_SCOPE_NOWHERE.rawValue)
                 : route.gateway == nil ? UInt8(RT_SCOPE_LINK.rawValue) : UInt8(RT_SCOPE_UNIVERSE.rawValue))
        // A delete matches any route type, as iproute2 sends it (RTN_UNSPEC).
        p.append(verb == .delete ? UInt8(RTN_UNSPEC) : UInt8(RTN_UNICAST))
        p.appendHost(UInt32(0))
        var a = AttributeWriter()
        a.put(t(RTA_DST.rawValue), route.destination.bigEndianBytes)
        if let gateway = route.gateway { a.put(t(RTA_GATEWAY.rawValue), gateway.bigEndianBytes) }
        a.putHostU32(t(RTA_TABLE.rawValue), route.table)
        a.putHostU32(t(RTA_OIF.rawValue), UInt32(bitPattern: route.outputInterface))
        let flags: UInt16
        switch verb {
        case .add: flags = NetlinkFlag.create | NetlinkFlag.exclusive
        case .replace: flags = NetlinkFlag.create | NetlinkFlag.replace
        case .delete: flags = 0
        }
        return NetlinkMessage(type: UInt16(verb == .delete ? RTM_DELROUTE : RTM_NEWROUTE), flags: flags, payload: p + a.bytes)
    }

    public static func listRoutesMessage() -> NetlinkMessage {
        NetlinkMessage(type: UInt16(RTM_GETROUTE), flags: 0, payload: [UInt8(AF_INET), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    }

    /// Parses one RTM_NEWROUTE dump entry; nil for non-unicast or multipath routes (never ours).
    public static func parseRoute(_ m: NetlinkMessage) throws(NetlinkError) -> IPRoute? {
        guard m.type == UInt16(RTM_NEWROUTE) else { return nil }
        return try routeFields(m)
    }

    /// The route in an RTM_NEWROUTE or RTM_DELROUTE message (same layout).
    static func routeFields(_ m: NetlinkMessage) throws(NetlinkError) -> IPRoute? {
        guard m.payload.count >= 12, m.payload[0] == UInt8(AF_INET),
              m.payload[7] == UInt8(RTN_UNICAST) else { return nil }
        let attrs = try AttributeList(parsing: Array(m.payload[12...]))
        guard let oif = attrs[RTA_OIF.rawValue]?.hostU32 else { return nil }
        return IPRoute(destination: attrs[RTA_DST.rawValue]?.bigU32 ?? 0, prefixLength: m.payload[1],
                       table: attrs[RTA_TABLE.rawValue]?.hostU32 ?? UInt32(m.payload[4]),
                       outputInterface: Int32(bitPattern: oif), gateway: attrs[RTA_GATEWAY.rawValue]?.bigU32,
                       protocolTag: m.payload[5])
    }

    // MARK: links and addresses

    public static func listLinksMessage() -> NetlinkMessage {
        NetlinkMessage(type: UInt16(RTM_GETLINK), flags: 0, payload: [UInt8](repeating: 0, count: 16))
    }

    /// RTM_GETLINK for one name (IFLA_IFNAME), answered with one RTM_NEWLINK or ENODEV.
    public static func getLinkMessage(name: String) -> NetlinkMessage {
        var a = AttributeWriter()
        a.putString(t(IFLA_IFNAME), name)
        return NetlinkMessage(type: UInt16(RTM_GETLINK), flags: 0, payload: [UInt8](repeating: 0, count: 16) + a.bytes)
    }

    /// RTM_GETLINK for one index (ifi_index), answered with one RTM_NEWLINK or ENODEV.
    public static func getLinkMessage(index: Int32) -> NetlinkMessage {
        var p: [UInt8] = [UInt8(AF_UNSPEC), 0, 0, 0]
        p.appendHost(index)
        p += [UInt8](repeating: 0, count: 8)
        return NetlinkMessage(type: UInt16(RTM_GETLINK), flags: 0, payload: p)
    }

    /// RTM_NEWLINK changing only IFF_UP (ifi_change = IFF_UP), as `ip link set dev X up|down`.
    public static func setLinkUpMessage(index: Int32, up: Bool) -> NetlinkMessage {
        var p: [UInt8] = [UInt8(AF_UNSPEC), 0]
        p.append(contentsOf: [0, 0]) // ifi_type
        p.appendHost(index)
        p.appendHost(up ? UInt32(IFF_UP) : 0)
        p.appendHost(UInt32(IFF_UP))
        return NetlinkMessage(type: UInt16(RTM_NEWLINK), flags: 0, payload: p)
    }

    public static func parseLink(_ m: NetlinkMessage) throws(NetlinkError) -> Link? {
        guard m.type == UInt16(RTM_NEWLINK) else { return nil }
        return try linkFields(m)
    }

    /// The link in an RTM_NEWLINK or RTM_DELLINK message (same layout: struct ifinfomsg, attributes).
    static func linkFields(_ m: NetlinkMessage) throws(NetlinkError) -> Link? {
        guard m.payload.count >= 16 else { return nil }
        let attrs = try AttributeList(parsing: Array(m.payload[16...]))
        return Link(index: Int32(bitPattern: m.payload.readHostU32(at: 4)), name: attrs[IFLA_IFNAME]?.string ?? "",
                    flags: m.payload.readHostU32(at: 8), operState: attrs[IFLA_OPERSTATE]?.u8)
    }

    /// RTM_NEWADDR (CREATE|EXCL) / RTM_DELADDR with IFA_LOCAL and IFA_ADDRESS, as `ip addr add A/N dev X`.
    public static func addressMessage(_ address: InterfaceAddress, delete: Bool = false) -> NetlinkMessage {
        var p: [UInt8] = [UInt8(AF_INET), address.prefixLength, 0, UInt8(RT_SCOPE_UNIVERSE.rawValue)]
        p.appendHost(UInt32(bitPattern: address.interfaceIndex))
        var a = AttributeWriter()
        a.put(t(IFA_LOCAL), address.address.bigEndianBytes)
        a.put(t(IFA_ADDRESS), address.address.bigEndianBytes)
        return NetlinkMessage(type: UInt16(delete ? RTM_DELADDR : RTM_NEWADDR),
                              flags: delete ? 0 : NetlinkFlag.create | NetlinkFlag.exclusive, payload: p + a.bytes)
    }

    public static func listAddressesMessage() -> NetlinkMessage {
        NetlinkMessage(type: UInt16(RTM_GETADDR), flags: 0, payload: [UInt8(AF_INET), 0, 0, 0, 0, 0, 0, 0])
    }

    public static func parseAddress(_ m: NetlinkMessage) throws(NetlinkError) -> InterfaceAddress? {
        guard m.type == UInt16(RTM_NEWADDR) else { return nil }
        return try addressFields(m)
    }

    /// The IPv4 address in an RTM_NEWADDR or RTM_DELADDR message (same layout).
    static func addressFields(_ m: NetlinkMessage) throws(NetlinkError) -> InterfaceAddress? {
        guard m.payload.count >= 8, m.payload[0] == UInt8(AF_INET) else { return nil }
        let attrs = try AttributeList(parsing: Array(m.payload[8...]))
        guard let a = attrs[IFA_LOCAL]?.bigU32 ?? attrs[IFA_ADDRESS]?.bigU32 else { return nil }
        return InterfaceAddress(interfaceIndex: Int32(bitPattern: m.payload.readHostU32(at: 4)), address: a, prefixLength: m.payload[1])
    }
}

/// rtnetlink verbs over a connection. Each call is one datagram; every message is acked.
public final class RouteNetlinkClient {
    public let connection: NetlinkConnection

    public init(connection: NetlinkConnection) { self.connection = connection }

    public convenience init(netns: String? = nil) throws(NetlinkError) {
        self.init(connection: try NetlinkConnection(.route, netns: netns))
    }

    public func rules() throws(NetlinkError) -> [IPRule] {
        try connection.dump(NetlinkRequest(RouteNetlink.listRulesMessage(), "list ip rules")).parsed(RouteNetlink.parseRule)
    }
    public func addRule(_ rule: IPRule) throws(NetlinkError) {
        try connection.perform([NetlinkRequest(RouteNetlink.ruleMessage(rule), "add ip rule \(rule)")])
    }
    public func deleteRule(_ rule: IPRule) throws(NetlinkError) {
        try connection.perform([NetlinkRequest(RouteNetlink.ruleMessage(rule, delete: true), "delete ip rule \(rule)")])
    }
    public func routes(table: UInt32? = nil) throws(NetlinkError) -> [IPRoute] {
        let all = try connection.dump(NetlinkRequest(RouteNetlink.listRoutesMessage(), "list routes"))
            .parsed(RouteNetlink.parseRoute)
        guard let table else { return all }
        return all.filter { $0.table == table }
    }
    public func route(_ route: IPRoute, _ verb: RouteNetlink.RouteVerb) throws(NetlinkError) {
        try connection.perform([NetlinkRequest(RouteNetlink.routeMessage(route, verb), "\(verb) route \(route)")])
    }
    public func links() throws(NetlinkError) -> [Link] {
        try connection.dump(NetlinkRequest(RouteNetlink.listLinksMessage(), "list links")).parsed(RouteNetlink.parseLink)
    }
    /// The interface called `name`; throws ENODEV with the name when it does not exist.
    public func link(named name: String) throws(NetlinkError) -> Link {
        let replies = try connection.get(NetlinkRequest(RouteNetlink.getLinkMessage(name: name), "look up interface \(name)"))
        for m in replies { if let link = try RouteNetlink.parseLink(m) { return link } }
        throw NetlinkError(errno: ENODEV, operation: "look up interface \(name)")
    }
    /// The interface with `index`; throws ENODEV when there is none.
    public func link(index: Int32) throws(NetlinkError) -> Link {
        let replies = try connection.get(NetlinkRequest(RouteNetlink.getLinkMessage(index: index), "look up interface #\(index)"))
        for m in replies { if let link = try RouteNetlink.parseLink(m) { return link } }
        throw NetlinkError(errno: ENODEV, operation: "look up interface #\(index)")
    }

    public func setLink(index: Int32, up: Bool) throws(NetlinkError) {
        try connection.perform([NetlinkRequest(RouteNetlink.setLinkUpMessage(index: index, up: up), "set link #\(index) \(up ? "up" : "down")")])
    }
    public func addresses() throws(NetlinkError) -> [InterfaceAddress] {
        try connection.dump(NetlinkRequest(RouteNetlink.listAddressesMessage(), "list addresses")).parsed(RouteNetlink.parseAddress)
    }
    public func addAddress(_ address: InterfaceAddress) throws(NetlinkError) {
        try connection.perform([NetlinkRequest(RouteNetlink.addressMessage(address), "add address \(dotted(address.address))/\(address.prefixLength)")])
    }
}

extension Array where Element == NetlinkMessage {
    /// Typed-throws compactMap (the standard one rethrows `any Error`).
    func parsed<T>(_ parse: (NetlinkMessage) throws(NetlinkError) -> T?) throws(NetlinkError) -> [T] {
        var out: [T] = []
        for m in self { if let v = try parse(m) { out.append(v) } }
        return out
    }
}

extension RouteNetlink {
    /// RTM_NEWLINK, CREATE|EXCL, of a link of `kind` with no other attributes: what `ip link add NAME type
    /// KIND` sends (iproute2 nests IFLA_LINKINFO without NLA_F_NESTED and sends the kind without a NUL).
    public static func createLinkMessage(name: String, kind: String) -> NetlinkMessage {
        var a = AttributeWriter()
        a.putString(t(IFLA_IFNAME), name)
        var info = AttributeWriter()
        info.put(t(IFLA_INFO_KIND), Array(kind.utf8))
        a.put(t(IFLA_LINKINFO), info.bytes)
        return NetlinkMessage(type: UInt16(RTM_NEWLINK), flags: NetlinkFlag.create | NetlinkFlag.exclusive,
                              payload: [UInt8](repeating: 0, count: 16) + a.bytes)
    }

    /// RTM_NEWLINK setting IPv6 address generation to none (`ip link set NAME addrgenmode none`): the link
    /// gets no link-local address, so the kernel sends nothing of its own on it (router solicitations, MLD,
    /// DAD). An ifb needs it: what the kernel sends on it would go through its shaper and be dropped.
    /// Not accepted at creation: the IPv6 state of the link does not exist before.
    public static func setNoIPv6AddressesMessage(index: Int32) -> NetlinkMessage {
        var p: [UInt8] = [UInt8(AF_UNSPEC), 0, 0, 0]
        p.appendHost(index)
        p += [UInt8](repeating: 0, count: 8)
        var a = AttributeWriter()
        var inet6 = AttributeWriter()
        inet6.put(8, [1]) // IFLA_INET6_ADDR_GEN_MODE: IN6_ADDR_GEN_MODE_NONE
        var spec = AttributeWriter()
        spec.put(UInt16(AF_INET6), inet6.bytes)
        a.put(t(IFLA_AF_SPEC), spec.bytes)
        return NetlinkMessage(type: UInt16(RTM_NEWLINK), flags: 0, payload: p + a.bytes)
    }

    /// RTM_DELLINK by name: `ip link del NAME`.
    public static func deleteLinkMessage(name: String) -> NetlinkMessage {
        var a = AttributeWriter()
        a.putString(t(IFLA_IFNAME), name)
        return NetlinkMessage(type: UInt16(RTM_DELLINK), flags: 0, payload: [UInt8](repeating: 0, count: 16) + a.bytes)
    }
}

extension RouteNetlinkClient {
    public func createLink(named name: String, kind: String) throws(NetlinkError) {
        try connection.perform([NetlinkRequest(RouteNetlink.createLinkMessage(name: name, kind: kind), "create \(kind) link \(name)")])
    }
    public func setNoIPv6Addresses(index: Int32) throws(NetlinkError) {
        try connection.perform([NetlinkRequest(RouteNetlink.setNoIPv6AddressesMessage(index: index), "set addrgenmode none on interface #\(index)")])
    }
    public func deleteLink(named name: String) throws(NetlinkError) {
        try connection.perform([NetlinkRequest(RouteNetlink.deleteLinkMessage(name: name), "delete link \(name)")])
    }
}

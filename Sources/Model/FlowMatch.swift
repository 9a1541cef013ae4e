/// One flow as the classifier sees its first packet in the original direction: addresses, the transport
/// protocol and destination port (nil for traffic without ports, such as ICMP), and the DSCP.
public struct Flow: Hashable, Sendable, CustomStringConvertible {
    public var source: IPv4Address
    public var destination: IPv4Address
    public var proto: TransportProtocol?
    public var port: UInt16?
    public var dscp: UInt8

    public init(source: IPv4Address, destination: IPv4Address, proto: TransportProtocol? = nil, port: UInt16? = nil,
                dscp: UInt8 = 0) {
        self.source = source
        self.destination = destination
        self.proto = proto
        self.port = port
        self.dscp = dscp
    }

    public var description: String {
        let service = proto.map { p in port.map { "\(p) \($0)" } ?? "\(p)" } ?? "no ports"
        return "\(source) -> \(destination) \(service)\(dscp == 0 ? "" : " dscp \(dscp)")"
    }
}

extension ServiceMatch {
    /// The port ranges the entry stands for: an entry without ports is every port of its protocol, 0-65535
    /// (the kernel set gets exactly these ranges, `SteeringCompiler.serviceElements`).
    public var effectivePorts: [PortRange] { ports.isEmpty ? [PortRange(0, 65535)] : ports.sorted() }

    public func matches(proto flowProto: TransportProtocol?, port: UInt16?) -> Bool {
        guard flowProto == proto, let port else { return false }
        return effectivePorts.contains { $0.contains(port) }
    }
}

extension TrafficMatch {
    /// Whether the classifier's rule for this match selects `flow`: every non-empty field must match (the
    /// rule's set lookups, one per field), any entry of a field will do (the set's elements).
    public func matches(_ flow: Flow) -> Bool {
        (services.isEmpty || services.contains { $0.matches(proto: flow.proto, port: flow.port) })
            && (dscp.isEmpty || dscp.contains(flow.dscp))
            && (sources.isEmpty || sources.contains { $0.contains(flow.source) })
            && (destinations.isEmpty || destinations.contains { $0.contains(flow.destination) })
    }
}

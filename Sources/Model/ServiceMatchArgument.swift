extension ServiceMatch {
    /// Parses the one-word form the CLI (`--match`) and the `policies.match_services` column use:
    /// "udp:5060-5061,16384-32767", "tcp:873" or a bare "udp" for every port of the protocol.
    /// Nil when the protocol, any port range, or the separators are malformed.
    public init?(argument: some StringProtocol) {
        let parts = argument.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        guard let proto = TransportProtocol(name: parts[0]) else { return nil }
        guard parts.count == 2 else {
            self.init(proto)
            return
        }
        var ports: [PortRange] = []
        for text in parts[1].split(separator: ",", omittingEmptySubsequences: false) {
            guard let range = PortRange(text) else { return nil }
            ports.append(range)
        }
        self.init(proto, ports)
    }

    /// The inverse of `init(argument:)`: no spaces, so a list of them can be joined with spaces.
    public var argument: String {
        ports.isEmpty ? proto.description : "\(proto):\(ports.map(\.description).joined(separator: ","))"
    }
}

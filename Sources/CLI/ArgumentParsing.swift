import ArgumentParser
import Model

/// Parsers for `@Option(transform:)`: each failure says what the value should look like.
enum ArgumentParsing {
    static func uplink(_ text: String) throws -> Uplink {
        guard let uplink = Uplink(argument: text) else {
            if let shape = text.split(separator: ",").first(where: { $0.hasPrefix("shape=") }),
               let problem = ShapingMode.problem(shape.dropFirst("shape=".count)) {
                throw ValidationError("'\(text)': \(problem)")
            }
            throw ValidationError("'\(text)' is not IFACE[=LABEL][,shape=MODE[/MODE]][,no-copies] (an interface name of 1-15 characters; a label of 1-32 letters, digits, '-' or '_'; MODE auto, off or a rate of 64k...1000G bit/s such as 20M, UP/DOWN for upload and download; no-copies: the uplink never carries copies of duplicated classes)")
        }
        return uplink
    }

    static func prefix(_ text: String) throws -> IPv4Prefix {
        guard let prefix = IPv4Prefix(text) else { throw ValidationError("'\(text)' is not \(IPv4Prefix.textForm)") }
        return prefix
    }

    static func socketAddress(_ text: String) throws -> SocketAddress4 {
        guard let address = SocketAddress4(text) else { throw ValidationError("'\(text)' is not \(SocketAddress4.textForm)") }
        return address
    }

    /// One of a fixed set of words (an enum's raw values); the error lists them.
    static func choice<T: RawRepresentable & CaseIterable & SendableMetatype>(_ flag: String) -> @Sendable (String) throws -> T
        where T.RawValue == String {
        { text in
            guard let value = T(rawValue: text) else {
                let words = T.allCases.map(\.rawValue)
                throw ValidationError("\(flag): '\(text)' is not \(words.dropLast().joined(separator: ", ")) or \(words.last ?? "")")
            }
            return value
        }
    }

    static func strategy(_ text: String) throws -> Strategy {
        guard let strategy = Strategy(text) else { throw ValidationError("'\(text)' is not \(Strategy.textForm)") }
        return strategy
    }

    static func service(_ text: String) throws -> ServiceMatch {
        guard let service = ServiceMatch(argument: text) else {
            throw ValidationError("'\(text)' is not PROTO[:PORTS] (tcp or udp; ports like 5060-5061,16384-32767)")
        }
        return service
    }

    /// One or more DSCP code points, comma-separated ("46" or "34,46").
    static func dscp(_ text: String) throws -> [UInt8] {
        try text.split(separator: ",", omittingEmptySubsequences: false).map { part in
            guard part.allSatisfy({ $0.isASCII && $0.isNumber }), let code = UInt8(part), code <= 63 else {
                throw ValidationError("'\(text)' is not a DSCP code point 0-63 (or a comma-separated list)")
            }
            return code
        }
    }
}

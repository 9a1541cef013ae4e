import Foundation
import CNetfilter // SOCK_DGRAM: bits/socket_type.h belongs to the shim's module once it includes libmnl
import Glibc
import Model

/// Why a `--peer HOST:PORT` value was refused.
public enum PeerAddressError: Error, Hashable, CustomStringConvertible {
    case malformed(String)
    case unresolvable(String, detail: String)

    public var description: String {
        switch self {
        case .malformed(let text):
            "--peer '\(text)' is not HOST:PORT (an IPv4 address or host name, and a port 1-65535)"
        case .unresolvable(let host, let detail):
            "--peer host '\(host)' has no IPv4 address: \(detail); check the name or use an address"
        }
    }
}

extension DiscoverySettings {
    /// Parses `--peer HOST:PORT`; a host name is resolved once (getaddrinfo, IPv4, first answer), so call
    /// it at start, not per announcement.
    public static func resolvePeer(_ text: String) throws(PeerAddressError) -> SocketAddress4 {
        if let literal = SocketAddress4(text) { return literal }
        guard let colon = text.lastIndex(of: ":") else { throw .malformed(text) }
        let host = String(text[..<colon])
        let portText = text[text.index(after: colon)...]
        guard !host.isEmpty, host.utf8.count <= 253, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let port = UInt16(portText), port != 0 else { throw .malformed(text) }
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, nil, &hints, &result)
        guard status == 0, let first = result else {
            throw .unresolvable(host, detail: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(result) }
        let address = first.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr.s_addr }
        return SocketAddress4(IPv4Address(UInt32(bigEndian: address)), port: port)
    }
}

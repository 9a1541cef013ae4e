import Foundation
import Netlink

/// The error code a WireGuard configuration protocol answered with (UAPI `errno=N`, netlink error).
public enum ConfigurationErrno: Hashable, Sendable, CustomStringConvertible {
    /// EINVAL: a value was refused (bad key, port, address).
    case invalid
    /// EADDRINUSE: the listen port is taken by another socket.
    case portInUse
    /// EPROTO: the request did not follow the protocol (a bug on our side).
    case protocolViolation
    /// EIO: the daemon failed internally.
    case io
    case other(Int32)

    public init(code: Int64) {
        // wireguard-go writes negative codes; the kernel's netlink errors are negative too.
        let positive = Int32(truncatingIfNeeded: code < 0 ? -code : code)
        switch positive {
        case EINVAL: self = .invalid
        case EADDRINUSE: self = .portInUse
        case EPROTO: self = .protocolViolation
        case EIO: self = .io
        default: self = .other(positive)
        }
    }

    public var description: String {
        switch self {
        case .invalid: "a value was refused (EINVAL)"
        case .portInUse: "the listen port is already in use (EADDRINUSE); choose another port or stop what holds it"
        case .protocolViolation: "the request broke the protocol (EPROTO); this is a bug in patronus-router"
        case .io: "the WireGuard daemon failed internally (EIO)"
        case .other(let code): "error \(code) (\(String(cString: strerror(code))))"
        }
    }
}

/// Why a WireGuard operation failed. Each case names the interface or socket and says what to check.
public enum WireGuardError: Error, Equatable, CustomStringConvertible {
    case socketUnavailable(path: String, errno: Int32)
    case io(path: String, operation: String, errno: Int32)
    case timedOut(path: String)
    case responseTooLarge(path: String, limit: Int)
    case malformedResponse(path: String, detail: String)
    case rejected(interface: String, ConfigurationErrno)
    case invalidInterfaceName(String)
    case spawnFailed(executable: String, errno: Int32)
    case processExited(interface: String, status: Int32)
    case notReady(interface: String, waitedMilliseconds: Int)
    /// A netlink exchange failed; the Netlink layer's error names the operation, errno and fix.
    case netlink(NetlinkError)
    case malformedNetlink(detail: String)
    case kernelUnsupported
    case noSuchInterface(String)

    public var description: String {
        switch self {
        case .socketUnavailable(let path, let code):
            "cannot connect to the WireGuard UAPI socket \(path): \(String(cString: strerror(code))); is wireguard-go running for this interface?"
        case .io(let path, let operation, let code):
            "\(operation) on \(path) failed: \(String(cString: strerror(code)))"
        case .timedOut(let path):
            "the WireGuard UAPI socket \(path) did not answer in time; the wireguard-go process may be stuck"
        case .responseTooLarge(let path, let limit):
            "the WireGuard UAPI socket \(path) answered with more than \(limit) bytes; refusing it"
        case .malformedResponse(let path, let detail):
            "the WireGuard UAPI socket \(path) answered something malformed: \(detail)"
        case .rejected(let interface, let code):
            "WireGuard interface \(interface) refused the configuration: \(code)"
        case .invalidInterfaceName(let name):
            "'\(name)' is not a usable interface name: use 1-15 characters without '/', ':' or spaces"
        case .spawnFailed(let executable, let code):
            "cannot start \(executable): \(String(cString: strerror(code))); install the wireguard-go package or pass --wireguard kernel"
        case .processExited(let interface, let status):
            "wireguard-go for \(interface) exited with status \(status); is the TUN device (/dev/net/tun) available and the name free?"
        case .notReady(let interface, let waited):
            "wireguard-go for \(interface) did not open its UAPI socket within \(waited) ms"
        case .netlink(let error):
            error.description
        case .malformedNetlink(let detail):
            "the kernel answered a malformed netlink message: \(detail)"
        case .kernelUnsupported:
            "this kernel has no WireGuard support (no 'wireguard' generic netlink family); use --wireguard userspace"
        case .noSuchInterface(let name):
            "there is no WireGuard interface named \(name)"
        }
    }
}

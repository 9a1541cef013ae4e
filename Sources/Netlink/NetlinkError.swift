#if canImport(Glibc)
import Glibc
#endif

/// What failed in a netlink exchange, with the kernel's errno and a hint on how to fix it.
///
/// Every error names the operation in human terms ("add element to map inet patronus steer"), so a log
/// line is enough to act on without a packet capture.
public struct NetlinkError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The positive errno (`EPERM`, `ENOENT`, ...) reported by the kernel or by a system call.
    public var errno: Int32
    /// What we were doing, e.g. "add rule to chain inet patronus classify".
    public var operation: String
    /// The kernel's extended ack message, if it sent one.
    public var kernelMessage: String?
    /// How to fix it.
    public var hint: String

    public init(errno: Int32, operation: String, kernelMessage: String? = nil, hint: String? = nil) {
        self.errno = errno
        self.operation = operation
        self.kernelMessage = kernelMessage
        self.hint = hint ?? NetlinkError.defaultHint(errno)
    }

    /// A reply did not parse: the kernel (or a mock) sent something we do not understand.
    static func malformed(_ operation: String, _ detail: String) -> NetlinkError {
        NetlinkError(errno: EPROTO, operation: operation, kernelMessage: detail,
                     hint: "malformed netlink reply; this is a bug in patronus or an unexpected kernel version")
    }

    public var description: String {
        let name = String(cString: strerror(errno))
        var text = "\(operation) failed: \(name) (errno \(errno))"
        if let kernelMessage, !kernelMessage.isEmpty { text += " [kernel: \(kernelMessage)]" }
        return text + ". " + hint
    }

    static func defaultHint(_ errno: Int32) -> String {
        switch errno {
        case EPERM, EACCES: return "run as root or grant CAP_NET_ADMIN"
        case ENOENT: return "the object (or its table/chain/set) does not exist; it was removed behind our back or never installed"
        case EEXIST: return "the object already exists; reconcile (adopt or remove leftovers) before adding"
        case EBUSY: return "the object is still referenced (a rule uses the set/chain); remove the references first"
        case EPROTONOSUPPORT, EAFNOSUPPORT, EOPNOTSUPP:
            return "the kernel lacks a needed feature: load nf_tables/nft_* modules (modprobe nf_tables) or use a newer kernel"
        case EINVAL: return "the kernel rejected the message as invalid; check the kernel message and the kernel version"
        case ENOBUFS: return "the netlink receive buffer overran; retry (the socket buffer will be enlarged)"
        case EMSGSIZE: return "the message is too large; split the batch"
        case ETIMEDOUT: return "no reply from the kernel in time; the kernel may be overloaded"
        case ENODEV: return "the network interface does not exist; create it first"
        case ESRCH: return "no such rule or route"
        default: return "see the errno"
        }
    }
}

import CNetfilter
#if canImport(Glibc)
import Glibc
#endif

/// Tells systemd (Type=notify) how the daemon is doing: "READY=1" once the kernel state is installed,
/// "STOPPING=1" when shutdown starts, "STATUS=..." for `systemctl status`. A no-op outside systemd
/// (no NOTIFY_SOCKET), so the daemon calls it unconditionally.
public enum SystemdNotify {
    /// Sends one notification; returns false when there is no notify socket or the send failed.
    @discardableResult
    public static func send(_ state: String) -> Bool {
        guard let path = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !path.isEmpty else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        // A leading '@' names a socket in the abstract namespace: the kernel wants a NUL there instead.
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let sent = Array(state.utf8).withUnsafeBytes { message in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, message.baseAddress, message.count, 0, $0, length)
                }
            }
        }
        return sent == state.utf8.count
    }
}

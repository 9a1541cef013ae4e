import Foundation
import Glibc
import Model

/// A socket operation that failed, with the errno and what to do about it.
public struct ProbeSocketError: Error, Equatable, CustomStringConvertible, Sendable {
    public var operation: String
    public var errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String {
        var text = "\(operation) failed: \(String(cString: strerror(errno))) (errno \(errno))"
        switch errno {
        case EPERM, EACCES: text += "; SO_BINDTODEVICE and SO_MARK need CAP_NET_ADMIN / CAP_NET_RAW: run as root"
        case EADDRINUSE: text += "; another process (or responder) already listens on that port"
        case ENODEV: text += "; the interface does not exist (yet): create the tunnel before its prober"
        default: break
        }
        return text
    }
}

/// One received datagram with where it came from and on which interface it arrived.
struct Datagram: Sendable {
    var bytes: [UInt8]
    var source: SocketAddress4
    /// The interface it came in on and the address it was sent to (IP_PKTINFO; 0 / nil when not enabled).
    var interfaceIndex: Int32
    var destination: IPv4Address?
    var receivedAt: MonotonicInstant
}

/// An IPv4 UDP socket with the few options probing needs. The descriptor is closed by `close()` (idempotent)
/// or deinit. Blocking reads are woken by `shutdownReads()`, which makes the receive loop end.
final class DatagramSocket: @unchecked Sendable {
    let fd: Int32
    private let lock = NSLock()
    private var closed = false
    private var shutDown = false

    /// SO_TIMESTAMPNS on 64-bit Linux (the header picks _OLD or _NEW by sizeof(time_t), a macro Swift cannot
    /// import): 35, and the control message of the same type carries a struct timespec (CLOCK_REALTIME).
    static let timestampOption: Int32 = 35

    /// Opens a UDP socket bound to `address:port` (port 0: ephemeral).
    /// `device` pins it with SO_BINDTODEVICE, `mark` sets SO_MARK, `packetInfo` enables IP_PKTINFO.
    /// Kernel receive timestamps (SO_TIMESTAMPNS) are always on: a datagram's arrival time is when the kernel
    /// got it, not when a (possibly descheduled) thread read it, so a busy CPU does not turn into latency
    /// or into replies that look late.
    init(bindTo address: IPv4Address = IPv4Address(0), port: UInt16 = 0, device: String? = nil,
         mark: UInt32? = nil, packetInfo: Bool = false, receiveBuffer: Int? = nil) throws(ProbeSocketError) {
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ProbeSocketError("socket(AF_INET, SOCK_DGRAM)", errno: errno) }
        do throws(ProbeSocketError) {
            if let device {
                let rc = device.withCString { name in
                    setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, name, socklen_t(strlen(name) + 1))
                }
                guard rc == 0 else { throw ProbeSocketError("SO_BINDTODEVICE \(device)", errno: errno) }
            }
            if let mark { try setOption(SOL_SOCKET, SO_MARK, Int32(bitPattern: mark), "SO_MARK \(mark)") }
            if packetInfo { try setOption(Int32(IPPROTO_IP), IP_PKTINFO, 1, "IP_PKTINFO") }
            try setOption(SOL_SOCKET, DatagramSocket.timestampOption, 1, "SO_TIMESTAMPNS")
            if let receiveBuffer { try setOption(SOL_SOCKET, SO_RCVBUF, Int32(receiveBuffer), "SO_RCVBUF") }
            var sa = DatagramSocket.socketAddress(SocketAddress4(address, port: port))
            let rc = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard rc == 0 else { throw ProbeSocketError("bind \(address):\(port)", errno: errno) }
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    deinit { close() }

    private func setOption(_ level: Int32, _ name: Int32, _ value: Int32, _ label: String) throws(ProbeSocketError) {
        var value = value
        guard setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw ProbeSocketError(label, errno: errno)
        }
    }

    func close() {
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }

    /// Wakes a thread blocked in `receive()`; it then returns nil.
    func shutdownReads() {
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { return }
        shutDown = true
        _ = shutdown(fd, Int32(SHUT_RDWR))
    }

    var localPort: UInt16 {
        var sa = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return UInt16(bigEndian: sa.sin_port)
    }

    static func socketAddress(_ address: SocketAddress4) -> sockaddr_in {
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = address.port.bigEndian
        sa.sin_addr.s_addr = address.address.value.bigEndian
        return sa
    }

    /// Sends one datagram; returns the errno when the kernel refuses it.
    func send(_ bytes: [UInt8], to destination: SocketAddress4) -> Int32? {
        var sa = DatagramSocket.socketAddress(destination)
        let sent = bytes.withUnsafeBytes { buffer in
            withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, buffer.baseAddress, buffer.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        return sent == bytes.count ? nil : (sent < 0 ? errno : EMSGSIZE)
    }

    // Control-message layout, computed here because the CMSG_* macros do not import into Swift:
    // a cmsghdr (16 bytes on LP64) followed by the data, each aligned to sizeof(size_t).
    private static let alignment = MemoryLayout<Int>.size
    private static func aligned(_ length: Int) -> Int { (length + alignment - 1) & ~(alignment - 1) }
    private static let headerLength = aligned(MemoryLayout<cmsghdr>.size)
    private static let pktinfoSpace = headerLength + aligned(MemoryLayout<in_pktinfo>.size)
    private static let timestampSpace = headerLength + aligned(MemoryLayout<timespec>.size)

    /// Sends one datagram that leaves by interface `interfaceIndex` with source address `source`
    /// (IP_PKTINFO on sendmsg), so a reply takes the tunnel its request came in by.
    func send(_ bytes: [UInt8], to destination: SocketAddress4, viaInterface interfaceIndex: Int32,
              from source: IPv4Address?) -> Int32? {
        var sa = DatagramSocket.socketAddress(destination)
        var control = [UInt8](repeating: 0, count: DatagramSocket.pktinfoSpace)
        control.withUnsafeMutableBytes { raw in
            var header = cmsghdr()
            header.cmsg_len = DatagramSocket.headerLength + MemoryLayout<in_pktinfo>.size
            header.cmsg_level = Int32(IPPROTO_IP)
            header.cmsg_type = IP_PKTINFO
            raw.storeBytes(of: header, as: cmsghdr.self)
            var info = in_pktinfo()
            info.ipi_ifindex = interfaceIndex
            info.ipi_spec_dst.s_addr = (source?.value ?? 0).bigEndian
            raw.baseAddress!.advanced(by: DatagramSocket.headerLength)
                .copyMemory(from: &info, byteCount: MemoryLayout<in_pktinfo>.size)
        }
        var payload = bytes
        let sent = Self.withMessage(payload: &payload, control: &control, address: &sa) { sendmsg(fd, &$0, 0) }
        return sent == bytes.count ? nil : (sent < 0 ? errno : EMSGSIZE)
    }

    /// One msghdr over a payload, a control buffer and an IPv4 address, for sendmsg and recvmsg alike.
    private static func withMessage<R>(payload: inout [UInt8], control: inout [UInt8], address: inout sockaddr_in,
                                       _ body: (inout msghdr) -> R) -> R {
        payload.withUnsafeMutableBytes { buffer in
            control.withUnsafeMutableBytes { controlBuffer in
                withUnsafeMutablePointer(to: &address) { addressPointer in
                    var vector = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
                    return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                        var message = msghdr()
                        message.msg_name = UnsafeMutableRawPointer(addressPointer)
                        message.msg_namelen = socklen_t(MemoryLayout<sockaddr_in>.size)
                        message.msg_iov = vectorPointer
                        message.msg_iovlen = 1
                        message.msg_control = controlBuffer.baseAddress
                        message.msg_controllen = controlBuffer.count
                        return body(&message)
                    }
                }
            }
        }
    }

    /// Blocks for one datagram (or, with `wait` false, returns nil when none is queued). Returns nil once the
    /// socket is shut down or closed. Datagrams longer than `maximumSize` arrive truncated to
    /// `maximumSize + 1` bytes, so strict decoders reject them.
    func receive(maximumSize: Int, wait: Bool = true) -> Datagram? {
        var buffer = [UInt8](repeating: 0, count: maximumSize + 1)
        var control = [UInt8](repeating: 0, count: DatagramSocket.pktinfoSpace + DatagramSocket.timestampSpace + 64)
        var sa = sockaddr_in()
        while true {
            let (count, controlLength) = Self.withMessage(payload: &buffer, control: &control, address: &sa) { message in
                let count = recvmsg(fd, &message, wait ? 0 : Int32(MSG_DONTWAIT))
                return (count, Int(message.msg_controllen))
            }
            // Wall clock first, then the monotonic one: the gap between the two reads can only make a mapped
            // kernel stamp later than the truth, never earlier than the probe's send time.
            var realtimeNow = timespec()
            clock_gettime(CLOCK_REALTIME, &realtimeNow)
            let receivedAt = MonotonicInstant.now()
            if count < 0 {
                if errno == EINTR && wait { continue }
                return nil
            }
            // A zero-length read is how a shut-down socket wakes us (or an empty datagram, which the
            // decoders reject).
            if count == 0 && isShutDown { return nil }
            let source = SocketAddress4(IPv4Address(UInt32(bigEndian: sa.sin_addr.s_addr)),
                                        port: UInt16(bigEndian: sa.sin_port))
            var datagram = Datagram(bytes: Array(buffer[0..<count]), source: source, interfaceIndex: 0,
                                    destination: nil, receivedAt: receivedAt)
            DatagramSocket.parseControl(control, length: controlLength, realtimeNow: realtimeNow, into: &datagram)
            return datagram
        }
    }

    private var isShutDown: Bool {
        lock.lock()
        defer { lock.unlock() }
        return closed || shutDown
    }

    private static func parseControl(_ control: [UInt8], length: Int, realtimeNow: timespec,
                                     into datagram: inout Datagram) {
        var offset = 0
        let limit = min(length, control.count)
        control.withUnsafeBytes { raw in
            while offset + headerLength <= limit {
                let header = raw.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self)
                let cmsgLength = Int(header.cmsg_len)
                guard cmsgLength >= headerLength, offset + cmsgLength <= limit else { return }
                if header.cmsg_level == SOL_SOCKET, header.cmsg_type == timestampOption,
                   cmsgLength >= headerLength + MemoryLayout<timespec>.size {
                    let stamp = raw.loadUnaligned(fromByteOffset: offset + headerLength, as: timespec.self)
                    datagram.receivedAt = monotonic(fromRealtime: stamp, realtimeNow: realtimeNow,
                                                    readAt: datagram.receivedAt)
                }
                if header.cmsg_level == Int32(IPPROTO_IP), header.cmsg_type == IP_PKTINFO,
                   cmsgLength >= headerLength + MemoryLayout<in_pktinfo>.size {
                    let info = raw.loadUnaligned(fromByteOffset: offset + headerLength, as: in_pktinfo.self)
                    datagram.interfaceIndex = info.ipi_ifindex
                    datagram.destination = IPv4Address(UInt32(bigEndian: info.ipi_addr.s_addr))
                }
                offset += aligned(cmsgLength)
            }
        }
    }
}

extension DatagramSocket {
    /// Maps a kernel CLOCK_REALTIME arrival stamp onto the monotonic clock: the arrival was
    /// (`realtimeNow` - stamp) before `readAt`. A stamp in the future or over 10 s old means the wall clock
    /// stepped in between; then the read time is the best we have.
    static func monotonic(fromRealtime stamp: timespec, realtimeNow now: timespec,
                          readAt: MonotonicInstant) -> MonotonicInstant {
        let age = (Int64(now.tv_sec) - Int64(stamp.tv_sec)) * 1_000_000_000 + (Int64(now.tv_nsec) - Int64(stamp.tv_nsec))
        guard age >= 0, age < 10_000_000_000 else { return readAt }
        return readAt + .nanoseconds(-age)
    }
}

/// Runs a blocking receive loop on its own thread (one thread per socket, woken by the kernel, no polling)
/// and hands each datagram to `handler`. `run()` returns when its task is cancelled and the thread has left
/// the socket. The owner closes the socket once nothing else uses it: closing it here could let another
/// task send through a reused descriptor number.
struct ReceiveLoop: Sendable {
    let socket: DatagramSocket
    let name: String
    let maximumSize: Int
    /// The thread's nice value (-20...19) if the kernel allows it; nil: inherit.
    let niceness: Int32?
    let handler: @Sendable (Datagram) -> Void

    init(socket: DatagramSocket, name: String, maximumSize: Int, niceness: Int32? = nil,
         handler: @escaping @Sendable (Datagram) -> Void) {
        self.socket = socket
        self.name = name
        self.maximumSize = maximumSize
        self.niceness = niceness
        self.handler = handler
    }

    func run() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                let thread = Thread {
                    if let niceness {
                        // Per thread on Linux (who = 0 is the calling thread). Best effort: without CAP_SYS_NICE the
                        // thread keeps its priority. Not SCHED_FIFO: a flood must not starve the machine.
                        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0,
                                        min(max(niceness, -20), 19))
                    }
                    while let datagram = socket.receive(maximumSize: maximumSize) { handler(datagram) }
                    done.resume()
                }
                thread.name = name
                thread.start()
            }
        } onCancel: {
            socket.shutdownReads()
        }
    }
}

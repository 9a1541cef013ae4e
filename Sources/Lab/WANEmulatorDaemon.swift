import CNetfilter
import Foundation
import Glibc

/// One uplink the daemon emulates: `hq/isp-a=ptlab-isp-a:s-hq:e-hq` on its command line.
public struct EmulatedLinkSpec: Equatable, Sendable, CustomStringConvertible {
    public var id: UplinkID
    public var namespace: String
    public var siteInterface: String
    public var bridgeInterface: String

    public init(id: UplinkID, namespace: String, siteInterface: String, bridgeInterface: String) {
        self.id = id
        self.namespace = namespace
        self.siteInterface = siteInterface
        self.bridgeInterface = bridgeInterface
    }

    public init(parsing text: String) throws(LabError) {
        let halves = text.split(separator: "=", omittingEmptySubsequences: false)
        let idParts = halves.first?.split(separator: "/") ?? []
        let where_ = halves.count == 2 ? halves[1].split(separator: ":", omittingEmptySubsequences: false) : []
        guard halves.count == 2, idParts.count == 2, where_.count == 3, where_.allSatisfy({ !$0.isEmpty }) else {
            throw .invalidArgument("bad --link '\(text)': expected SITE/UPLINK=NAMESPACE:SITE_IF:BRIDGE_IF")
        }
        self.init(id: UplinkID(site: String(idParts[0]), uplink: String(idParts[1])), namespace: String(where_[0]),
                  siteInterface: String(where_[1]), bridgeInterface: String(where_[2]))
    }

    public var description: String { "\(id)=\(namespace):\(siteInterface):\(bridgeInterface)" }

    public static func all(of plan: LabPlan) -> [EmulatedLinkSpec] {
        plan.uplinks.map {
            EmulatedLinkSpec(id: $0.id, namespace: plan.ispNamespace($0.isp), siteInterface: $0.siteFacing,
                             bridgeInterface: $0.emulatorFacing)
        }
    }
}

/// The control protocol of the `lab wan-emulator` daemon: one JSON request per SOCK_SEQPACKET message on a
/// root-only unix socket, one JSON response back. Requests are bounded (64 KB); a malformed one gets an
/// error response, never a crash.
enum WANRequest: Codable {
    case status
    case apply(id: UplinkID, directions: [TrafficDirection], change: ImpairmentChange)
}

struct WANResponse: Codable {
    var error: String?
    var links: [EmulatedLinkStatus] = []
}

/// The process `lab up` leaves running when the kernel has no netem: hosts a `WANEmulator` for every
/// uplink of the lab and serves the control socket. SIGTERM/SIGINT stop the pipes, close the sockets and
/// remove the control socket file.
public enum WANEmulatorDaemon {
    static let maxMessage = 65536

    /// Never returns normally; throws if setup fails (the caller exits non-zero).
    public static func run(controlPath: String, links: [EmulatedLinkSpec]) throws -> Never {
        let emulator = WANEmulator()
        for link in links {
            try emulator.addLink(link.id, in: NetworkNamespace(existing: link.namespace),
                                 siteInterface: link.siteInterface, bridgeInterface: link.bridgeInterface)
        }
        let listener = try listen(at: controlPath)
        LabCleanup.shared.register("wan-emulator") {
            emulator.stop()
            close(listener)
            unlink(controlPath)
        }
        while true {
            // The daemon spawns nothing, so accept's descriptor cannot leak into a child: no accept4 needed.
            let connection = accept(listener, nil, nil)
            if connection < 0 { continue } // EINTR, or a client that went away: keep serving
            serve(connection, emulator)
            close(connection)
        }
    }

    private static func serve(_ connection: Int32, _ emulator: WANEmulator) {
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: maxMessage)
        let n = recv(connection, &buffer, buffer.count, 0)
        guard n > 0 else { return }
        var response = WANResponse()
        do {
            switch try JSONDecoder().decode(WANRequest.self, from: Data(buffer[0..<n])) {
            case .status:
                break
            case let .apply(id, directions, change):
                try emulator.apply(change, to: id, directions: Set(directions))
            }
        } catch let error as LabError {
            response.error = error.description
        } catch {
            response.error = "malformed request: \(error)"
        }
        response.links = emulator.status()
        if let data = try? JSONEncoder().encode(response) {
            _ = data.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
    }

    private static func listen(at path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw LabError.systemCall("socket(AF_UNIX)", errno: errno) }
        unlink(path)
        var address = try unixAddress(path)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0, chmod(path, 0o600) == 0, Glibc.listen(fd, 8) == 0 else {
            let code = errno
            close(fd)
            throw LabError.systemCall("bind/listen \(path)", errno: code)
        }
        return fd
    }

    static func unixAddress(_ path: String) throws -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw LabError.invalidArgument("control socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }
}

/// Talks to a running `lab wan-emulator` daemon.
public final class WANEmulatorClient: WANControl, @unchecked Sendable {
    public let controlPath: String

    public init(controlPath: String) {
        self.controlPath = controlPath
    }

    public func apply(_ change: ImpairmentChange, to id: UplinkID, directions: Set<TrafficDirection>) throws {
        try change.validate()
        let directions = directions.sorted { $0.rawValue < $1.rawValue }
        let response = try exchange(.apply(id: id, directions: directions, change: change))
        if let error = response.error { throw LabError.emulator(error) }
    }

    public func status() throws -> [EmulatedLinkStatus] {
        let response = try exchange(.status)
        if let error = response.error { throw LabError.emulator(error) }
        return response.links
    }

    /// The daemon is stopped by `lab down` (by pid), not through the socket.
    public func stop() {}

    private func exchange(_ request: WANRequest) throws -> WANResponse {
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw LabError.systemCall("socket(AF_UNIX)", errno: errno) }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = try WANEmulatorDaemon.unixAddress(controlPath)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            throw LabError.emulator("cannot reach \(controlPath) (\(String(cString: strerror(errno)))): is the lab up? `patronus-router lab status`")
        }
        let data = try JSONEncoder().encode(request)
        let sent = data.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == data.count else { throw LabError.systemCall("send to \(controlPath)", errno: errno) }
        var buffer = [UInt8](repeating: 0, count: WANEmulatorDaemon.maxMessage * 4)
        let n = recv(fd, &buffer, buffer.count, 0)
        guard n > 0 else { throw LabError.emulator("no answer from \(controlPath)") }
        return try JSONDecoder().decode(WANResponse.self, from: Data(buffer[0..<n]))
    }
}

/// Waiting for a datagram from async code (tests run many at once on a small cooperative pool).
extension UDPSocket {
    /// Waits up to `timeout` for one datagram without holding a cooperative-pool thread: polls without
    /// blocking and sleeps 5 ms between tries, so other tasks keep running while it waits.
    public func nextDatagram(within timeout: Duration, maxSize: Int = 65535) async
        -> (bytes: [UInt8], address: String, port: UInt16)?
    {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let datagram = receive(timeout: .zero, maxSize: maxSize) { return datagram }
            if ContinuousClock.now >= deadline { return nil }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }
}

import CNetfilter
import Foundation
import Glibc

/// Counters of one direction of one emulated link. Monotonic for the pipe's life.
public struct PipeCounters: Codable, Equatable, Sendable {
    public var received: UInt64 = 0
    public var forwarded: UInt64 = 0
    public var droppedLoss: UInt64 = 0
    public var droppedCut: UInt64 = 0
    /// Rate limiter queue full, or the pipe's own frame ring full.
    public var droppedQueue: UInt64 = 0
    /// Larger than a slot (should not happen with offloads off) or failed to send.
    public var droppedOther: UInt64 = 0
    /// Dropped by the kernel before the emulator read them: its AF_PACKET receive buffer was full, i.e.
    /// the emulator could not keep up (PACKET_STATISTICS). Not an impairment: a measurement artefact.
    public var droppedKernel: UInt64 = 0

    public var dropped: UInt64 { droppedLoss + droppedCut + droppedQueue + droppedOther + droppedKernel }

    public init() {}
}

/// One direction of one emulated link: frames read from `rx` are held per `Impairment` and written to `tx`
/// in arrival order. One thread per pipe, which blocks in ppoll while there is nothing to do (no timer
/// ticks, no spinning): its timeout is the exit time of the frame at the head of the queue.
///
/// Frames live in a fixed ring of slots; recvmmsg writes straight into free slots and sendmmsg reads
/// straight from due ones (no per-frame allocation or copy, except to close a gap left by a dropped frame
/// in the middle of a received batch). A frame's exit time never precedes the previous frame's, so a FIFO
/// ring is the whole scheduler and order within the direction is kept by construction.
final class FramePipe: @unchecked Sendable {
    static let slotSize = 2048
    static let batch = 64

    let name: String
    private let rx: Int32
    private let tx: Int32
    private let capacity: Int

    // Shared with the control side, under `lock`.
    private let lock = NSLock()
    private var requested = Impairment.none
    private var requestedGeneration: UInt64 = 0
    private var sharedCounters = PipeCounters()
    private var kernelDrops: UInt64 = 0
    private var stopping = false

    // Owned by the pipe thread.
    private var model: LinkModel
    private var generation: UInt64 = 0
    private var counters = PipeCounters()
    private let slots: UnsafeMutableRawPointer
    private let lengths: UnsafeMutablePointer<Int>
    private let exitTimes: UnsafeMutablePointer<UInt64>
    private var head = 0
    private var count = 0
    private let messages: UnsafeMutablePointer<MultipleMessageHeader>
    private let vectors: UnsafeMutablePointer<iovec>
    private let addresses: UnsafeMutablePointer<sockaddr_ll>
    private let scratch: UnsafeMutableRawPointer

    private let wake: (read: Int32, write: Int32)
    private let finished = DispatchSemaphore(value: 0)

    /// `rx`/`tx` stay owned by the caller. `capacity` frames may be held at once (about 2 KB each, touched
    /// only when used).
    init(name: String, rx: Int32, tx: Int32, capacity: Int = 4096, seed: UInt64 = UInt64.random(in: .min ... .max)) throws {
        precondition(MemoryLayout<MultipleMessageHeader>.stride == Int(cnf_mmsghdr_size()), "struct mmsghdr layout")
        var fds: [Int32] = [-1, -1]
        guard cnf_pipe_cloexec(&fds) == 0 else { throw LabError.systemCall("pipe2", errno: errno) }
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        _ = fcntl(fds[1], F_SETFL, O_NONBLOCK)
        wake = (fds[0], fds[1])
        self.name = name
        self.rx = rx
        self.tx = tx
        self.capacity = capacity
        model = LinkModel(seed: seed)
        slots = UnsafeMutableRawPointer.allocate(byteCount: capacity * Self.slotSize, alignment: 64)
        lengths = .allocate(capacity: capacity)
        exitTimes = .allocate(capacity: capacity)
        messages = .allocate(capacity: Self.batch)
        messages.initialize(repeating: MultipleMessageHeader(), count: Self.batch)
        vectors = .allocate(capacity: Self.batch)
        vectors.initialize(repeating: iovec(), count: Self.batch)
        addresses = .allocate(capacity: Self.batch)
        addresses.initialize(repeating: sockaddr_ll(), count: Self.batch)
        scratch = .allocate(byteCount: Self.slotSize, alignment: 64)
    }

    deinit {
        slots.deallocate(); lengths.deallocate(); exitTimes.deallocate()
        messages.deallocate(); vectors.deallocate(); addresses.deallocate(); scratch.deallocate()
        close(wake.read); close(wake.write)
    }

    func start() {
        let thread = Thread { [self] in
            run()
            finished.signal()
        }
        thread.name = "wan \(name)"
        thread.start()
    }

    /// Stops the thread and waits for it. Frames still held are discarded.
    func stop() {
        lock.lock()
        stopping = true
        lock.unlock()
        poke()
        finished.wait()
    }

    func set(_ impairment: Impairment) {
        lock.lock()
        requested = impairment
        requestedGeneration &+= 1
        lock.unlock()
        poke()
    }

    var current: Impairment {
        lock.lock()
        defer { lock.unlock() }
        return requested
    }

    var statistics: PipeCounters {
        lock.lock()
        defer { lock.unlock() }
        // Reading PACKET_STATISTICS resets the kernel's counters, so they are summed here, under the lock.
        var kernel = tpacket_stats()
        var length = socklen_t(MemoryLayout<tpacket_stats>.size)
        if getsockopt(rx, Int32(SOL_PACKET), PACKET_STATISTICS, &kernel, &length) == 0 {
            kernelDrops += UInt64(kernel.tp_drops)
        }
        var counters = sharedCounters
        counters.droppedKernel = kernelDrops
        return counters
    }

    private func poke() {
        var byte: UInt8 = 1
        _ = write(wake.write, &byte, 1)
    }

    // MARK: The pipe thread

    private func run() {
        var fds = [pollfd(fd: rx, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
        while synchronize() {
            transmitDue(now: Self.monotonicNanoseconds())
            publishCounters() // before sleeping, so status never lags behind an idle pipe
            // Sleep until a frame arrives, a control change pokes us, or the head frame is due; with
            // nothing held, sleep without a timeout.
            let ready: Int32
            if count > 0 {
                let now = Self.monotonicNanoseconds()
                let wait = exitTimes[head] > now ? exitTimes[head] - now : 0
                var timeout = timespec(tv_sec: Int(wait / 1_000_000_000), tv_nsec: Int(wait % 1_000_000_000))
                ready = cnf_ppoll(&fds, 2, &timeout)
            } else {
                ready = cnf_ppoll(&fds, 2, nil)
            }
            if ready < 0 {
                if errno != EINTR { usleep(10_000) } // ENOMEM and the like: back off, never spin
                continue
            }
            if fds[1].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                while read(wake.read, &drain, drain.count) > 0 {}
            }
            if fds[0].revents & Int16(POLLIN) != 0 {
                receiveBatch(now: Self.monotonicNanoseconds())
            } else if fds[0].revents & Int16(POLLERR) != 0 {
                // E.g. ENETDOWN when the interface goes away: reading SO_ERROR clears it, so the next
                // ppoll sleeps again instead of returning at once forever.
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(rx, SOL_SOCKET, SO_ERROR, &error, &length)
                counters.droppedOther += 1
            } else if fds[0].revents & Int16(POLLNVAL | POLLHUP) != 0 {
                usleep(10_000) // cannot happen while the pipe owns an open socket; never spin if it does
            }
        }
        count = 0
    }

    private func publishCounters() {
        lock.lock()
        sharedCounters = counters
        lock.unlock()
    }

    /// Picks up a new impairment. Returns false when asked to stop.
    private func synchronize() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if requestedGeneration != generation {
            generation = requestedGeneration
            model.impairment = requested
        }
        return !stopping
    }

    private func slot(_ index: Int) -> UnsafeMutableRawPointer {
        slots + (index % capacity) * Self.slotSize
    }

    private func receiveBatch(now: UInt64) {
        let tail = (head + count) % capacity
        let free = min(capacity - count, capacity - tail, Self.batch)
        let ringFull = free == 0
        let wanted = ringFull ? Self.batch : free
        for j in 0..<wanted {
            vectors[j] = iovec(iov_base: ringFull ? scratch : slot(tail + j), iov_len: Self.slotSize)
            messages[j].msg_hdr = msghdr(
                msg_name: UnsafeMutableRawPointer(addresses + j), msg_namelen: socklen_t(MemoryLayout<sockaddr_ll>.size),
                msg_iov: vectors + j, msg_iovlen: 1, msg_control: nil, msg_controllen: 0, msg_flags: 0)
            messages[j].msg_len = 0
        }
        let received = cnf_recvmmsg(rx, messages, UInt32(wanted), Int32(MSG_DONTWAIT))
        guard received > 0 else { return }
        counters.received += UInt64(received)
        if ringFull {
            counters.droppedQueue += UInt64(received)
            return
        }
        var kept = 0
        for j in 0..<Int(received) {
            let length = Int(messages[j].msg_len)
            if addresses[j].sll_pkttype == UInt8(PACKET_OUTGOING) {
                counters.received -= 1
                continue
            }
            if messages[j].msg_hdr.msg_flags & Int32(MSG_TRUNC) != 0 {
                counters.droppedOther += 1
                continue
            }
            guard let exit = admit(length: length, now: now) else { continue }
            if kept != j { memmove(slot(tail + kept), slot(tail + j), length) }
            lengths[(tail + kept) % capacity] = length
            exitTimes[(tail + kept) % capacity] = exit
            kept += 1
        }
        count += kept
    }

    /// Counts a frame the model dropped; returns its exit time otherwise.
    private func admit(length: Int, now: UInt64) -> UInt64? {
        switch model.admit(length: length, now: now) {
        case let .leaves(at): return at
        case .dropped(.cut): counters.droppedCut += 1
        case .dropped(.loss): counters.droppedLoss += 1
        case .dropped(.queue): counters.droppedQueue += 1
        }
        return nil
    }

    private func transmitDue(now: UInt64) {
        while count > 0 && exitTimes[head] <= now {
            // One sendmmsg covers the due frames up to the ring's end.
            var n = 0
            while n < min(count, Self.batch, capacity - head) && exitTimes[head + n] <= now { n += 1 }
            if model.impairment.cut {
                counters.droppedCut += UInt64(n)
                head = (head + n) % capacity
                count -= n
                continue
            }
            for j in 0..<n {
                vectors[j] = iovec(iov_base: slot(head + j), iov_len: lengths[head + j])
                messages[j].msg_hdr = msghdr(
                    msg_name: nil, msg_namelen: 0, msg_iov: vectors + j, msg_iovlen: 1,
                    msg_control: nil, msg_controllen: 0, msg_flags: 0)
            }
            var done = 0
            while done < n {
                let sent = cnf_sendmmsg(tx, messages + done, UInt32(n - done), 0)
                if sent > 0 {
                    done += Int(sent)
                    counters.forwarded += UInt64(sent)
                } else if sent < 0 && errno == EINTR {
                    continue
                } else {
                    // The first frame of the rest was refused (link down, too big): drop it, go on.
                    done += 1
                    counters.droppedOther += 1
                }
            }
            head = (head + n) % capacity
            count -= n
        }
    }

    static func monotonicNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}

/// The fate of frames on one direction of an emulated link: the model of `Impairment`, as a value with no
/// I/O (times are CLOCK_MONOTONIC nanoseconds), so it is unit-tested without root or packets.
struct LinkModel {
    enum DropReason: Equatable { case cut, loss, queue }
    enum Fate: Equatable {
        case leaves(at: UInt64)
        case dropped(DropReason)
    }

    var impairment = Impairment.none {
        didSet {
            // A new rate starts with an idle bottleneck; frames already held keep their exit times.
            if impairment.rateMbit != oldValue.rateMbit { linkFreeAt = 0 }
        }
    }
    private var random: SplitMix64
    /// When the rate limiter's bottleneck has finished the last admitted frame.
    private var linkFreeAt: UInt64 = 0
    /// Exit time of the last admitted frame: nobody leaves before it (order is kept).
    private var lastExit: UInt64 = 0

    init(seed: UInt64) {
        random = SplitMix64(seed: seed)
    }

    /// Decides the fate of a frame of `length` bytes (the whole Ethernet frame) arriving at `now`.
    mutating func admit(length: Int, now: UInt64) -> Fate {
        if impairment.cut { return .dropped(.cut) }
        if impairment.lossPercent > 0 && random.nextUnit() * 100 < impairment.lossPercent {
            return .dropped(.loss)
        }
        var leaves = now
        if let rate = impairment.rateMbit {
            let start = max(now, linkFreeAt)
            if Double(start - now) > impairment.queueLimitMs * 1e6 { return .dropped(.queue) }
            // bits / (rate x 10^6 bit/s), in nanoseconds.
            linkFreeAt = start + UInt64(Double(length * 8) * 1000 / rate)
            leaves = linkFreeAt
        }
        var delay = impairment.delayMs
        if impairment.jitterMs > 0 { delay += impairment.jitterMs * random.nextNormal() }
        let exit = max(leaves + UInt64(max(0, delay) * 1e6), lastExit)
        lastExit = exit
        return .leaves(at: exit)
    }
}

/// struct mmsghdr, which Swift cannot import (glibc hides it without _GNU_SOURCE). Same layout: checked
/// against the C size when a pipe is made.
struct MultipleMessageHeader {
    var msg_hdr = msghdr()
    var msg_len: UInt32 = 0
}

/// A small, fast, seedable generator (SplitMix64): plenty for loss and jitter draws.
struct SplitMix64 {
    private var state: UInt64
    private var spareNormal: Double?

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    mutating func nextUnit() -> Double {
        Double(next() >> 11) * 0x1.0p-53
    }

    /// Standard normal (Box-Muller; the second value of each pair is kept for the next call).
    mutating func nextNormal() -> Double {
        if let spare = spareNormal {
            spareNormal = nil
            return spare
        }
        var u = nextUnit()
        while u == 0 { u = nextUnit() }
        let v = nextUnit()
        let radius = (-2 * log(u)).squareRoot()
        spareNormal = radius * sin(2 * .pi * v)
        return radius * cos(2 * .pi * v)
    }
}

// Traffic-control messages against what `tc` (iproute2 6.1) sends for the same object, recorded with
//   scripts/capture-netlink.py 'ip link add d0 type veth peer name d1
//   ip link set d0 up [+ the objects the command needs]' -- tc ...
// (d0 is ifindex 3 in the throwaway namespace). One deliberate difference: tc appends rate tables
// (TCA_HTB_RTAB/CTAB, 1 KiB each) to an htb class for kernels older than 3.11; with the ethernet linklayer
// in the ratespec the kernel computes transmission times itself and ignores them, so we send none and
// compare everything else byte for byte.
import Testing
import CNetfilter
@testable import Netlink

@Suite struct TrafficControlGoldenTests {
    // tc qdisc add dev d0 root handle 62: htb default 20 r2q 10 direct_qlen 100   -> 0x0024 (RTM_NEWQDISC)
    @Test func rootHTB() {
        let q = Qdisc(handle: TCHandle(major: 0x62, minor: 0), parent: .root, kind: .htb(defaultClass: 0x20, directQueueLength: 100))
        let m = TrafficControl.qdiscMessage(q, interface: 3, .add)
        #expect(m.type == 0x0024)
        #expect(m.flags == NetlinkFlag.create | NetlinkFlag.exclusive) // tc: 0x0605 = REQUEST|ACK|EXCL|CREATE
        #expect(hex(m.payload) == golden("""
            00000000 03000000 00006200 ffffffff 00000000   # tcmsg: ifindex 3, handle 62:, parent root
            08000100 68746200                              # TCA_KIND "htb"
            24000200                                       # TCA_OPTIONS
              18000200 03000000 0a000000 20000000 00000000 00000000   # TCA_HTB_INIT: v3, r2q 10, default 0x20
              08000500 64000000                            # TCA_HTB_DIRECT_QLEN 100
            """))
    }

    // tc class add dev d0 parent 62: classid 62:1 htb rate 20mbit ceil 20mbit burst 3000 cburst 3000
    //    quantum 1600 prio 0 overhead 74 linklayer ethernet                   -> 0x0028 (RTM_NEWTCLASS)
    @Test func htbClassWithOverheadAndNoRateTables() {
        let rate = TCRate(bitsPerSecond: 20_000_000, overhead: 74)
        let c = HTBClass(handle: TCHandle(major: 0x62, minor: 1), parent: TCHandle(major: 0x62, minor: 0), rate: rate,
                         ceil: rate, burst: 3000, cburst: 3000, quantum: 1600, prio: 0)
        let m = TrafficControl.classMessage(c, interface: 3, .add)
        #expect(m.type == 0x0028)
        #expect(hex(m.payload) == golden("""
            00000000 03000000 01006200 00006200 00000000   # tcmsg: ifindex 3, classid 62:1, parent 62:
            08000100 68746200                              # TCA_KIND "htb"
            34000200                                       # TCA_OPTIONS (tc: 0x083c with the two tables)
              30000100                                     # TCA_HTB_PARMS
                03 01 4a00 ffff 0000 a0252600              # rate: cell_log 3, ethernet, overhead 74, 2,500,000 B/s
                03 01 4a00 ffff 0000 a0252600              # ceil
                3e490000 3e490000                          # buffer, cbuffer: 3000 B at 20 Mbit/s = 18750 ticks
                40060000 00000000 00000000                 # quantum 1600, level, prio 0
            """))
    }

    // Above 2^32 bytes/s the ratespec saturates and TCA_HTB_RATE64 / CEIL64 carry the rate, before PARMS
    // (tc 6.1's order: `tc class add ... htb rate 40gbit ceil 40gbit`).
    @Test func rate64AboveThirtyFourGigabit() throws {
        let rate = TCRate(bitsPerSecond: 40_000_000_000)
        let c = HTBClass(handle: TCHandle(major: 0x62, minor: 1), parent: TCHandle(major: 0x62, minor: 0), rate: rate,
                         ceil: rate, burst: 1_000_000, cburst: 1_000_000, quantum: 1600, prio: 0)
        let m = TrafficControl.classMessage(c, interface: 3, .replace)
        #expect(m.flags == NetlinkFlag.create | NetlinkFlag.replace)
        let options = try #require(try AttributeList(parsing: Array(m.payload[20...]))[TCA_OPTIONS]).nested()
        #expect(options.attributes.map(\.type) == [UInt16(TCA_HTB_RATE64), UInt16(TCA_HTB_CEIL64), UInt16(TCA_HTB_PARMS)])
        #expect(options[TCA_HTB_RATE64]?.value == UInt64(5_000_000_000).hostBytes)
        #expect(options[TCA_HTB_PARMS]?.value[8..<12] == [0xff, 0xff, 0xff, 0xff])
    }

    // tc qdisc add dev d0 parent 62:20 handle 20: bfifo limit 50000              -> 0x0024
    @Test func leafBFIFO() {
        let q = Qdisc(handle: TCHandle(major: 0x20, minor: 0), parent: TCHandle(major: 0x62, minor: 0x20), kind: .bfifo(limitBytes: 50_000))
        #expect(hex(TrafficControl.qdiscMessage(q, interface: 3, .add).payload) == golden("""
            00000000 03000000 00002000 20006200 00000000   # tcmsg: handle 20:, parent 62:20
            0a000100 626669666f000000                      # TCA_KIND "bfifo"
            08000200 50c30000                              # TCA_OPTIONS: struct tc_fifo_qopt { limit 50000 }
            """))
    }

    // tc qdisc del dev d0 root                                                   -> 0x0025 (RTM_DELQDISC)
    @Test func deleteRoot() {
        let m = TrafficControl.deleteRootQdiscMessage(interface: 3)
        #expect(m.type == 0x0025)
        #expect(m.flags == 0)
        #expect(hex(m.payload) == "000000000300000000000000ffffffff00000000")
    }

    @Test func ticksAreTcsXmitTime() {
        #expect(TrafficControl.ticks(bytes: 3000, rate: 2_500_000) == 18_750)
        #expect(TrafficControl.ticks(bytes: 1, rate: 0) == UInt32.max)
    }

    @Test func aClassDumpEntryParsesRatesAndStatistics() throws {
        // An RTM_NEWTCLASS as the kernel dumps it: tcmsg, kind, options (PARMS), TCA_STATS2 {BASIC, QUEUE}.
        let rate = TCRate(bitsPerSecond: 20_000_000, overhead: 82)
        let c = HTBClass(handle: TCHandle(major: 0x62, minor: 0x10), parent: TCHandle(major: 0x62, minor: 1), rate: rate,
                         ceil: rate, burst: 3200, cburst: 3200, quantum: 1600, prio: 0)
        var message = TrafficControl.classMessage(c, interface: 7, .add)
        var stats = AttributeWriter()
        stats.nested(t(TCA_STATS2)) { s in
            s.put(t(TCA_STATS_BASIC), UInt64(123_456).hostBytes + UInt32(99).hostBytes + [0, 0, 0, 0])
            s.put(t(TCA_STATS_QUEUE), UInt32(2).hostBytes + UInt32(3000).hostBytes + UInt32(5).hostBytes
                  + UInt32(0).hostBytes + UInt32(17).hostBytes)
        }
        message.payload += stats.bytes
        let o = try #require(try TrafficControl.parse(message))
        #expect(o.interfaceIndex == 7 && o.handle == TCHandle(major: 0x62, minor: 0x10) && o.kind == "htb")
        #expect(o.rateBytesPerSecond == 2_500_000 && o.ceilBytesPerSecond == 2_500_000 && o.overhead == 82 && o.prio == 0)
        #expect(o.statistics.bytes == 123_456 && o.statistics.packets == 99)
        #expect(o.statistics.queueLength == 2 && o.statistics.backlog == 3000 && o.statistics.drops == 5 && o.statistics.overlimits == 17)
        // Truncated statistics are ignored, not read past their end.
        var short = TrafficControl.classMessage(c, interface: 7, .add)
        var bad = AttributeWriter()
        bad.nested(t(TCA_STATS2)) { s in s.put(t(TCA_STATS_QUEUE), [1, 2, 3]) }
        short.payload += bad.bytes
        #expect(try TrafficControl.parse(short)?.statistics == TCStatistics())
    }
}

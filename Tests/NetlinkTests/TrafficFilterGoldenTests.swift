// Download-shaping messages (ifb link, clsact, cls_bpf + mirred redirect) against what iproute2 6.1 sends,
// recorded with
//   scripts/capture-netlink.py 'ip link add d0 type veth peer name d1
//   ip link set d0 up
//   ip link add ifb9 type ifb [+ tc qdisc add dev d0 clsact]' -- tc ...
// (d0 is ifindex 3 and ifb9 ifindex 4 in the throwaway namespace). `ip link add` was recorded with strace
// directly (the script skips message type 0x10, which is RTM_NEWLINK as well as nfnetlink's batch begin).
import Testing
import CNetfilter
@testable import Netlink

@Suite struct TrafficFilterGoldenTests {
    // ip link add ifb7 type ifb                                                   -> 0x0010 0x0605
    @Test func ifbLink() {
        let m = RouteNetlink.createLinkMessage(name: "ifb7", kind: "ifb")
        #expect(m.type == 0x0010)
        #expect(m.flags == NetlinkFlag.create | NetlinkFlag.exclusive)
        #expect(hex(m.payload) == golden("""
            00000000 00000000 00000000 00000000            # ifinfomsg, all zero
            09000300 69666237 00000000                     # IFLA_IFNAME "ifb7"
            0c001200 07000100 69666200                     # IFLA_LINKINFO { IFLA_INFO_KIND "ifb" (no NUL) }
            """))
        // ip link del ifb9                                                        -> 0x0011
        #expect(hex(RouteNetlink.deleteLinkMessage(name: "ifb9").payload)
                == "00000000000000000000000000000000090003006966623900000000")
    }

    // ip link set ifb7 addrgenmode none (ifb7 is ifindex 2 here)                 -> 0x0010 0x0005
    @Test func noIPv6Addresses() {
        let m = RouteNetlink.setNoIPv6AddressesMessage(index: 2)
        #expect(m.type == 0x0010 && m.flags == 0)
        #expect(hex(m.payload) == golden("""
            00000000 02000000 00000000 00000000            # ifinfomsg: index 2
            10001a00 0c000a00 05000800 01000000            # IFLA_AF_SPEC { AF_INET6 { IFLA_INET6_ADDR_GEN_MODE none } }
            """))
    }

    // tc qdisc add dev d0 clsact                                                  -> 0x0024 0x0605
    @Test func clsact() {
        let q = Qdisc(handle: .clsactHandle, parent: .clsact, kind: .clsact)
        let m = TrafficControl.qdiscMessage(q, interface: 3, .add)
        #expect(m.type == 0x0024)
        #expect(hex(m.payload) == golden("""
            00000000 03000000 0000ffff f1ffffff 00000000   # tcmsg: handle ffff:, parent clsact
            0b000100 636c7361 63740000                     # TCA_KIND "clsact"
            """))
        // tc qdisc del dev d0 clsact                                              -> 0x0025: the same payload
        let d = TrafficControl.deleteClsactMessage(interface: 3)
        #expect(d.type == 0x0025 && d.payload == m.payload)
    }

    // tc filter add dev d0 egress pref 10 handle 1 bpf
    //   bytecode '5,32 0 0 4294963220,84 0 0 4026531840,21 0 1 268435456,6 0 0 4294967295,6 0 0 0'
    //   action mirred egress redirect dev ifb9                                    -> 0x002c 0x0605
    @Test func markRedirectFilter() throws {
        let f = RedirectFilter(preference: 10, handle: 1, program: ClassicBPFInstruction.markEquals(0x1000_0000, mask: 0xf000_0000), target: 4)
        let m = TrafficControl.filterMessage(f, interface: 3, .add)
        #expect(m.type == 0x002c)
        #expect(m.flags == NetlinkFlag.create | NetlinkFlag.exclusive)
        #expect(hex(m.payload) == golden("""
            00000000 03000000 01000000 f3ffffff 00030a00   # tcmsg: handle 1, parent clsact egress, pref 10, ETH_P_ALL
            08000100 62706600                              # TCA_KIND "bpf"
            70000200                                       # TCA_OPTIONS
              38000100                                     # TCA_BPF_ACT
                34000100                                   # action 1
                  0b000100 6d697272 65640000               # TCA_ACT_KIND "mirred"
                  24000280                                 # TCA_ACT_OPTIONS (NLA_F_NESTED)
                    20000200 00000000 00000000 04000000 00000000 00000000 01000000 04000000
                                                           # TCA_MIRRED_PARMS: stolen, egress redirect, ifindex 4
              06000400 05000000                            # TCA_BPF_OPS_LEN 5
              2c000500                                     # TCA_BPF_OPS
                2000 00 00 14f0ffff                        # ld skb->mark
                5400 00 00 000000f0                        # and 0xf0000000
                1500 00 01 00000010                        # jeq 0x10000000, else skip 1
                0600 00 00 ffffffff                        # ret -1: match
                0600 00 00 00000000                        # ret 0
            """))
        // The kernel lists it back with the same options: program and target are read from a dump entry.
        let parsed = try #require(try TrafficControl.parseFilter(m))
        #expect(parsed.interfaceIndex == 3 && parsed.preference == 10 && parsed.handle == 1 && parsed.kind == "bpf")
        #expect(parsed.program == f.program && parsed.redirectTarget == 4)
    }

    // tc filter del dev d0 egress pref 10                                         -> 0x002d 0x0005
    @Test func deleteFilter() {
        let m = TrafficControl.deleteFilterMessage(interface: 3, preference: 10)
        #expect(m.type == 0x002d)
        #expect(hex(m.payload) == "000000000300000000000000f3ffffff00000a00")
    }

    @Test func truncatedFilterOptionsAreIgnored() throws {
        var m = TrafficControl.deleteFilterMessage(interface: 3, preference: 10)
        m.type = 44
        var a = AttributeWriter()
        a.putString(t(TCA_KIND), "bpf")
        a.plainNested(t(TCA_OPTIONS)) { o in o.put(5, [1, 2, 3]) }
        m.payload += a.bytes
        let f = try #require(try TrafficControl.parseFilter(m))
        #expect(f.program == nil && f.redirectTarget == nil && f.preference == 10)
    }
}

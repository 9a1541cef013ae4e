// Netlink against the real kernel (root): sockets in the current and a named namespace, generic netlink,
// and a cross-check of our nf_tables bytes against libnftnl's own builders (through the CNetfilter shim).
import Glibc
import Testing
import CNetfilter
@testable import Netlink

let isRoot = getuid() == 0

@Suite struct NetlinkRootTests {
    @Test(.enabled(if: isRoot)) func rootGenericNetlinkResolvesTheController() throws {
        let c = try NetlinkConnection(.generic)
        #expect(try c.genericFamilyID("nlctrl") == 0x10) // GENL_ID_CTRL resolves to itself
        #expect(throws: NetlinkError.self) { try c.genericFamilyID("no-such-family") }
    }

    @Test(.enabled(if: isRoot)) func rootLinksAreListedAndLoopbackIsUp() throws {
        let rtnl = try RouteNetlinkClient()
        let lo = try rtnl.link(named: "lo")
        #expect(lo.index == 1 && lo.isUp)
        #expect(try rtnl.link(index: 1).name == "lo")
        #expect(try rtnl.links().contains { $0.name == "lo" })
        #expect(throws: NetlinkError.self) { try rtnl.link(named: "nonexistent0") }
    }

    @Test(.enabled(if: isRoot)) func rootLinkUpDownAddressAndRoutesInANamedNamespace() throws {
        let ns = "ptnl\(getpid())"
        #expect(system("ip netns add \(ns) && ip -n \(ns) link add vt0 type veth peer name vt1") == 0)
        defer { _ = system("ip netns del \(ns)") }
        let rtnl = try RouteNetlinkClient(netns: ns)
        let vt0 = try rtnl.link(named: "vt0")
        #expect(!vt0.isUp)
        try rtnl.setLink(index: vt0.index, up: true)
        #expect(try rtnl.link(index: vt0.index).isUp)
        try rtnl.addAddress(InterfaceAddress(interfaceIndex: vt0.index, address: 0xc000_0201, prefixLength: 24))
        #expect(try rtnl.addresses().contains(InterfaceAddress(interfaceIndex: vt0.index, address: 0xc000_0201, prefixLength: 24)))
        let route = IPRoute(destination: 0x0a14_0000, prefixLength: 16, table: 6201, outputInterface: vt0.index, gateway: 0xc000_0202, protocolTag: 77)
        try rtnl.route(route, .add)
        #expect(throws: NetlinkError.self) { try rtnl.route(route, .add) } // EXCL: EEXIST
        try rtnl.route(route, .replace)
        #expect(try rtnl.routes(table: 6201) == [route])
        let rule = IPRule(priority: 6210, fwmark: 0x10000, fwmask: 0xff0000, table: 6201, protocolTag: 77)
        try rtnl.addRule(rule)
        #expect(try rtnl.rules().filter { $0.protocolTag == 77 } == [rule])
        try rtnl.deleteRule(rule)
        try rtnl.route(route, .delete)
        #expect(try rtnl.routes(table: 6201).isEmpty)
        try rtnl.setLink(index: vt0.index, up: false)
        #expect(try !rtnl.link(index: vt0.index).isUp)
    }

    @Test func aMissingNamespaceIsATypedErrorWithAFix() {
        do {
            _ = try NetlinkSocket(.route, netns: "pt-no-such-namespace")
            Issue.record("opened a socket in a namespace that does not exist")
        } catch {
            #expect(error.errno == ENOENT)
            #expect(error.description.contains("ip netns add pt-no-such-namespace"))
        }
    }
}

/// Runs a libnftnl builder into a scratch buffer and returns the payload after the 16-byte nlmsghdr.
func libnftnlPayload(_ build: (UnsafeMutablePointer<CChar>) -> UnsafeMutablePointer<nlmsghdr>) -> [UInt8] {
    var buffer = [CChar](repeating: 0, count: 4096)
    let length = buffer.withUnsafeMutableBufferPointer { Int(build($0.baseAddress!).pointee.nlmsg_len) }
    return buffer[16..<length].map { UInt8(bitPattern: $0) }
}

@Suite struct LibnftnlCrossCheckTests {
    /// libnftnl (what nft uses) builds the same NEWTABLE payload as `NFTables.newTable`.
    @Test func tableMatchesLibnftnl() throws {
        let table = nftnl_table_alloc()!
        defer { nftnl_table_free(table) }
        nftnl_table_set_str(table, UInt16(NFTNL_TABLE_NAME.rawValue), "patronus")
        nftnl_table_set_u32(table, UInt16(NFTNL_TABLE_FLAGS.rawValue), 0)
        let theirs = libnftnlPayload { buffer in
            let nlh = cnf_nftnl_table_nlmsg_build_hdr(buffer, UInt16(NFT_MSG_NEWTABLE.rawValue), UInt16(NFPROTO_INET), 0, 1)!
            nftnl_table_nlmsg_build_payload(nlh, table)
            return nlh
        }
        #expect(theirs == NFTables.newTable(NFTTable(family: .inet, name: "patronus")).payload)
    }

    /// libnftnl builds the same NEWCHAIN attributes for a `type route` base chain at output. (Its order is
    /// HOOK, POLICY, TYPE; nft 1.0.6 sends TYPE, POLICY, HOOK, which we follow; the kernel ignores order.)
    @Test func baseChainMatchesLibnftnl() throws {
        let chain = nftnl_chain_alloc()!
        defer { nftnl_chain_free(chain) }
        nftnl_chain_set_str(chain, UInt16(NFTNL_CHAIN_TABLE.rawValue), "patronus")
        nftnl_chain_set_str(chain, UInt16(NFTNL_CHAIN_NAME.rawValue), "output")
        nftnl_chain_set_str(chain, UInt16(NFTNL_CHAIN_TYPE.rawValue), "route")
        nftnl_chain_set_u32(chain, UInt16(NFTNL_CHAIN_POLICY.rawValue), UInt32(NF_ACCEPT))
        nftnl_chain_set_u32(chain, UInt16(NFTNL_CHAIN_HOOKNUM.rawValue), UInt32(NF_INET_LOCAL_OUT.rawValue))
        nftnl_chain_set_s32(chain, UInt16(NFTNL_CHAIN_PRIO.rawValue), -150)
        let theirs = libnftnlPayload { buffer in
            let nlh = cnf_nftnl_chain_nlmsg_build_hdr(buffer, UInt16(NFT_MSG_NEWCHAIN.rawValue), UInt16(NFPROTO_INET), 0, 1)!
            nftnl_chain_nlmsg_build_payload(nlh, chain)
            return nlh
        }
        let ours = NFTables.newChain(NFTChain(family: .inet, table: "patronus", name: "output",
                                              hook: NFTHook(hook: NFTHook.output, priority: -150, type: "route"))).payload
        func attributes(_ payload: [UInt8]) throws -> [String] {
            try AttributeList(parsing: Array(payload[4...])).attributes.map { "\($0.type):\($0.value)" }.sorted()
        }
        #expect(Array(theirs[0..<4]) == Array(ours[0..<4]))
        #expect(try attributes(theirs) == attributes(ours))
    }

    @Test func socketBufferSizeMacroIsWrapped() {
        #expect(cnf_mnl_socket_buffer_size() >= 4096) // min(page size, 8192)
    }
}

import Foundation

/// Every number the router shares with the kernel, the wire and the other sites, in one place. Nothing else
/// in the code base spells these values; docs/STEERING.md ("What we own") and docs/MESH.md point here.
///
/// Mark layout (32-bit packet mark and conntrack mark; every other bit is preserved for other software):
///
///     bits 31-28  uplink slot 1...15 on WireGuard's own (outer) packets    0xf0000000
///     bits 27-16  path slot 1...4094 on a steered packet                    0x0fff0000
///                 (ct mark, bits 23-16: class id 1...254, 255 = no policy)  0x00ff0000
///                 (ct mark, bits 12-8: flow hash bucket 1...16 of a flow
///                  of a load-balanced class; 0 = not hashed)                 0x00001f00
///     ct mark bits 31-24: the site index 1...255 of a flow classified by a packet
///                 of its original direction (0: none)                       0xff000000
public enum Conventions {
    // MARK: Paths

    /// The packet-mark field that selects a path: `slot << 16` under this mask.
    public static let pathMarkMask: UInt32 = 0x0fff_0000
    public static let pathMarkShift: UInt32 = 16
    /// Path slots are 1...4094: a site can have at most this many paths at once.
    public static let pathSlots: ClosedRange<UInt16> = 1...4094
    /// Slot 4095 marks a packet that its sender already pinned to a path (SO_MARK): not steered again, and
    /// no ip rule matches it, so the main table and the socket's interface decide. Probe replies carry it.
    public static let pinnedPathSlot: UInt16 = 4095
    public static var pinnedMark: UInt32 { pathMark(slot: pinnedPathSlot) }

    /// The packet mark of path `slot` (its ip rule sends it to `pathTable(slot:)`).
    public static func pathMark(slot: UInt16) -> UInt32 { UInt32(slot) << pathMarkShift & pathMarkMask }
    /// The slot a packet mark selects (0: none).
    public static func pathSlot(mark: UInt32) -> UInt16 { UInt16((mark & pathMarkMask) >> pathMarkShift) }

    /// Per-path routing tables: 6200 + slot (6201...10294), routes tagged `steeringProtocol`.
    public static let pathTableBase: UInt32 = 6200
    public static func pathTable(slot: UInt16) -> UInt32 { pathTableBase + UInt32(slot) }
    public static let pathTables: ClosedRange<UInt32> = pathTableBase + 1...pathTableBase + UInt32(pathSlots.upperBound)

    // MARK: Classes (conntrack mark)

    public static let classMarkMask: UInt32 = 0x00ff_0000
    public static let classMarkShift: UInt32 = 16
    /// Class ids 1...254; 255 marks a flow no policy matched (classified once, never steered).
    public static let classIDs: ClosedRange<UInt8> = 1...254
    public static let unclassifiedClassID: UInt8 = 255
    public static func classMark(id: UInt8) -> UInt32 { UInt32(id) << classMarkShift }

    // MARK: Flow's site (conntrack mark)

    /// A flow classified by a packet of its original direction also gets its destination site's index in
    /// the ct mark, so every later packet of that direction finds its site by the ct mark (one hash lookup,
    /// `flows`) instead of by its destination address (the `sites` interval map: about 4 % of a forwarded
    /// packet's cost here, bench/results/datapath.txt). The index of a site is stable while it is planned
    /// and, preferably, across restarts (`preferredSiteIndex`); 0 means "no index": the `sites` lookup.
    public static let siteMarkMask: UInt32 = 0xff00_0000
    public static let siteMarkShift: UInt32 = 24
    public static let siteIndexes: ClosedRange<UInt8> = 1...255
    public static func siteMark(index: UInt8) -> UInt32 { UInt32(index) << siteMarkShift & siteMarkMask }
    /// The index a site asks for: a fold of its id's bytes into `siteIndexes`, the same in every run (a flow
    /// that outlives a restart keeps finding its own site), unless another site took it first.
    public static func preferredSiteIndex(_ site: SiteID) -> Int {
        let u = site.uuid.uuid
        let bytes = [u.0, u.1, u.2, u.3, u.4, u.5, u.6, u.7, u.8, u.9, u.10, u.11, u.12, u.13, u.14, u.15]
        let folded = bytes.reduce(UInt32(2_166_136_261)) { ($0 ^ UInt32($1)) &* 16_777_619 }   // FNV-1a
        return Int(siteIndexes.lowerBound) + Int(folded % UInt32(siteIndexes.count))
    }

    // MARK: Load balancing (conntrack mark)

    /// A load-balanced class spreads flows over its paths by a flow hash into this many buckets; a path's
    /// weight is the number of buckets it holds. The bucket is hashed once per flow and kept in the ct mark,
    /// so a packet of an established flow costs one map lookup whether its class is balanced or not.
    public static let balanceBuckets: UInt32 = 16
    /// The ct mark field holding a flow's bucket, 1...`balanceBuckets` (0: the flow was never hashed).
    public static let bucketMarkMask: UInt32 = 0x0000_1f00
    public static let bucketMarkShift: UInt32 = 8
    public static func bucketMark(_ bucket: UInt32) -> UInt32 { bucket << bucketMarkShift & bucketMarkMask }

    // MARK: Uplinks (WireGuard's socket mark)

    /// Each tunnel interface of uplink slot s sets the socket mark `s << 28`; an ip rule sends it to the
    /// uplink's table, which copies the main table's routes out of that uplink.
    public static let uplinkMarkMask: UInt32 = 0xf000_0000
    public static let uplinkMarkShift: UInt32 = 28
    /// Uplink slots are 1...15 (the mark field has 4 bits).
    public static let uplinkSlots: ClosedRange<UInt8> = 1...15
    /// An uplink's slot: its position in the `--uplink` list (0-based) + 1; nil past the 15th (no slot:
    /// neither pinned, nor given a listen port, nor download-shaped). The one place that says so: tunnels,
    /// uplink pinning and download shaping all take it from here.
    public static func uplinkSlot(position: Int) -> UInt8? {
        position >= 0 && position < uplinkSlots.count ? uplinkSlots.lowerBound + UInt8(position) : nil
    }
    public static func uplinkMark(slot: UInt8) -> UInt32 { UInt32(slot) << uplinkMarkShift & uplinkMarkMask }
    /// Per-uplink routing tables: 6100 + uplink slot (6101...6115), routes tagged `uplinkProtocol`.
    public static let uplinkTableBase: UInt32 = 6100
    public static func uplinkTable(slot: UInt8) -> UInt32 { uplinkTableBase + UInt32(slot) }
    public static let uplinkTables: ClosedRange<UInt32> = uplinkTableBase + 1...uplinkTableBase + UInt32(uplinkSlots.upperBound)

    // MARK: ip rules

    /// Our priority band: we install rules only here, and only rules carrying one of our protocol tags in
    /// this band are ours.
    public static let ruleBand: ClosedRange<UInt32> = 6200...6299
    /// Uplink pinning: `fwmark s<<28/0xf0000000 lookup 6100+s`.
    public static let uplinkRulePriority: UInt32 = 6205
    /// Packets without path bits (everything not steered) leave the band here with one rule check:
    /// `fwmark 0/0x0fff0000 goto 6299`.
    public static let unsteeredRulePriority: UInt32 = 6206
    /// Path rules, two levels so that no packet checks more than 64 + 64 rules whatever the number of
    /// paths: at 6210 one rule per group of 64 slots present, `fwmark g<<22/0x0fc00000 goto 6211+g` (only
    /// when the paths span two groups or more); at 6211+g one rule per slot of that group,
    /// `fwmark slot<<16/0x0fff0000 lookup 6200+slot`.
    public static let pathGroupRulePriority: UInt32 = 6210
    public static let pathGroupSize: UInt16 = 64
    public static let pathGroupMask: UInt32 = 0x0fc0_0000
    public static func pathGroup(slot: UInt16) -> UInt16 { slot / pathGroupSize }
    public static func pathRulePriority(slot: UInt16) -> UInt32 { pathGroupRulePriority + 1 + UInt32(pathGroup(slot: slot)) }
    public static func pathGroupMark(group: UInt16) -> UInt32 { UInt32(group) << 22 }
    /// The end of the band: a `nop` rule, the target of the unsteered jump.
    public static let bandEndPriority: UInt32 = 6299

    /// rtnetlink protocol numbers on our ip rules and routes, so ours are told from foreign ones.
    public static let steeringProtocol: UInt8 = 77
    public static let uplinkProtocol: UInt8 = 78
    /// Linux's main routing table.
    public static let mainTable: UInt32 = 254

    // MARK: Shaping (docs/SHAPING.md)

    /// The htb qdisc we put at the root of every shaped tunnel interface: handle `62:`. Its classes:
    /// `62:1` (the whole rate), under it one leaf per band (`ShapingBand.classMinor`), each with a bfifo
    /// whose handle major is `shaperLeafMajorBase + minor` (`6210:`, `6220:`, `6230:`).
    public static let shaperMajor: UInt16 = 0x62
    public static let shaperRootClassMinor: UInt16 = 0x1
    public static let shaperLeafMajorBase: UInt16 = 0x6200
    /// `meta priority` = `shaperMajor:0` (the qdisc's own handle): htb sends the packet unshaped from its
    /// direct queue. Our bandwidth trains take it, so a test measures the path, not our own shaper.
    public static var shaperDirectPriority: UInt32 { UInt32(shaperMajor) << 16 }
    /// The `meta priority` that puts a packet into `band`'s htb class.
    public static func shaperPriority(_ band: ShapingBand) -> UInt32 { UInt32(shaperMajor) << 16 | UInt32(band.classMinor) }

    /// What WireGuard adds to every inner packet on the wire, in bytes: outer IPv4 header 20, UDP 8,
    /// WireGuard's data header 16 and authentication tag 16 (IPv6 outer: 80). The payload is also padded to a
    /// multiple of 16 bytes (0-15, 8 on average), and the uplink's Ethernet header adds 14. The shaper counts
    /// inner bytes, so it adds this much per packet: 60 + 8 + 14.
    public static let wireGuardOverheadIPv4: UInt16 = 60
    public static let wireGuardOverheadIPv6: UInt16 = 80
    public static let wireGuardPaddingAverage: UInt16 = 8
    public static let ethernetHeader: UInt16 = 14
    public static var shaperOverhead: UInt16 { wireGuardOverheadIPv4 + wireGuardPaddingAverage + ethernetHeader }
    /// A download shaper's overhead: the packets it sees were redirected from a LAN device's egress with
    /// their Ethernet header already on (in their length), so that header is not added again.
    public static var downloadShaperOverhead: UInt16 { shaperOverhead - ethernetHeader }
    /// Queue bounds, in milliseconds of transmission at the shaper's rate (never txqueuelen packets):
    /// the realtime band holds little (voice is small and served first), the others enough for TCP.
    public static let shaperRealtimeQueueMs: Double = 10
    public static let shaperQueueMs: Double = 50
    /// No queue holds fewer bytes than this (a few full-size packets).
    public static let shaperMinimumQueueBytes: UInt32 = 6_000
    /// The htb direct queue (our bandwidth trains), in packets.
    public static let shaperDirectQueuePackets: UInt32 = 512

    /// Download shaping (docs/SHAPING.md, "Download"): the ifb of uplink slot s, `patronus-dl<s>`. A packet
    /// that arrived over one of the uplink's tunnels and leaves to the LAN gets the uplink's mark
    /// (`uplinkMark(slot:)`, in postrouting) and the htb class of its band (`shaperPriority`); on each LAN
    /// device a clsact egress filter at preference `downloadFilterPreference(slot:)` redirects it to the ifb.
    public static let downloadDevicePrefix = "patronus-dl"
    public static func downloadDevice(slot: UInt8) -> String { downloadDevicePrefix + String(slot) }
    public static let downloadFilterPreferenceBase: UInt16 = 6200
    public static func downloadFilterPreference(slot: UInt8) -> UInt16 { downloadFilterPreferenceBase + UInt16(slot) }
    /// Our filters' preferences: those in this range on a clsact egress are ours.
    public static var downloadFilterPreferences: ClosedRange<UInt16> {
        downloadFilterPreference(slot: uplinkSlots.lowerBound)...downloadFilterPreference(slot: uplinkSlots.upperBound)
    }

    // MARK: nftables

    public static let nftTable = "patronus"

    /// The small `ip` table of what is done to packets on their way out (hook postrouting): the copies of
    /// duplicated classes (nft's `dup` exists only in ip and ip6 tables, not in inet) and the shapers' htb
    /// band (`meta priority`), in one base chain so a packet pays one hook for both. Owned by Steering like
    /// `nftTable`; present while a class duplicates or something is shaped.
    public static let egressTable = "patronus_egress"
    /// `ip` tables of ours under the names earlier versions gave them: removed at start. `patronus_copy`
    /// held the copies, with its own prerouting hook, until 2026-12-04.
    public static let legacyTables = ["patronus_copy"]

    // MARK: Duplication (docs/STEERING.md, "Duplication")

    /// The receiver remembers each duplicated packet this long (ms): a copy arriving later than this after
    /// the first one (a path-latency difference over 2 s) is delivered, not dropped.
    public static let copySeenTimeoutMs: UInt64 = 2000
    /// At most this many remembered packets (50 packets/s for 2 s = 100 per call: 650 calls); when full, new
    /// packets are not remembered and their copies are delivered (never a false drop).
    public static let copySeenSize: UInt32 = 65536

    // MARK: Relayed paths (docs/MESH.md "Relayed paths")

    /// A site with no working direct session this long after we first planned it is reached through a relay
    /// (NAT traversal through observed mappings needs about 2.6 s in the lab).
    public static let relayDirectGrace: Double = 5

    /// A direct session WireGuard still counts (handshake within 180 s) is dead when its path is down (its
    /// probes, every 50 ms, all fail) and nothing at all came from the peer for this long: the site is then
    /// relayed and the session restarted (docs/MESH.md "Relayed paths"). 200 probe intervals, longer than
    /// WireGuard's own 5 s handshake retry and any loss burst of a working path; a shorter outage (an uplink
    /// flap) stays direct.
    public static let relayDeadSilence: Double = 10

    // MARK: Ports and addresses

    /// The first tunnel's WireGuard port (`--listen-port`); the mesh layer derives the others from it.
    public static let wireGuardPort: UInt16 = 51820
    /// Discovery announcements (multicast and unicast).
    public static let discoveryPort: UInt16 = 51821
    /// Path probes (each site's responder, on its overlay address).
    public static let probePort: UInt16 = 51822
    /// Bandwidth tests (each site's receiver, on its overlay address).
    public static let bandwidthPort: UInt16 = 51823
    /// The discovery multicast group (site-local scope).
    public static let multicastGroup = IPv4Address(239, 255, 77, 77)
    /// The overlay pool: each site's tunnel address is chosen from it (`OverlayAddressing`).
    public static let overlayPool = IPv4Prefix(IPv4Address(10, 99, 0, 0), length: 16)
}

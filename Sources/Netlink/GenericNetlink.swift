import CNetfilter

/// Generic netlink (NETLINK_GENERIC): resolving a family name ("wireguard", "nlctrl") to its id, which
/// every later request of that family carries as its message type.
public enum GenericNetlink {
    /// CTRL_CMD_GETFAMILY to the controller (GENL_ID_CTRL) with CTRL_ATTR_FAMILY_NAME.
    public static func getFamilyMessage(name: String) -> NetlinkMessage {
        var a = AttributeWriter()
        a.putString(t(CTRL_ATTR_FAMILY_NAME), name)
        // struct genlmsghdr: cmd, version, reserved
        return NetlinkMessage(type: UInt16(GENL_ID_CTRL), flags: 0,
                              payload: [UInt8(CTRL_CMD_GETFAMILY), 1, 0, 0] + a.bytes)
    }

    public static func parseFamilyID(_ m: NetlinkMessage) throws(NetlinkError) -> UInt16? {
        guard m.type == UInt16(GENL_ID_CTRL), m.payload.count >= 4 else { return nil }
        let attrs = try AttributeList(parsing: Array(m.payload[4...]))
        return attrs[CTRL_ATTR_FAMILY_ID]?.value.readHostU16(at: 0)
    }
}

extension NetlinkConnection {
    /// The id of generic netlink family `name`; ENOENT (with a hint) when the kernel does not have it.
    public func genericFamilyID(_ name: String) throws(NetlinkError) -> UInt16 {
        let operation = "resolve generic netlink family \(name)"
        do {
            for m in try get(NetlinkRequest(GenericNetlink.getFamilyMessage(name: name), operation)) {
                if let id = try GenericNetlink.parseFamilyID(m) { return id }
            }
        } catch where error.errno == 2 {
            throw NetlinkError(errno: 2, operation: operation, hint: "the kernel has no '\(name)' family (module not loaded or not built)")
        }
        throw NetlinkError(errno: 2, operation: operation, hint: "the kernel has no '\(name)' family (module not loaded or not built)")
    }
}

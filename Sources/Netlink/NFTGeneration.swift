import CNetfilter

/// The nf_tables ruleset generation: the kernel bumps it on every committed batch, whoever sends it. An
/// owner that remembers the generation its own last commit produced knows, with one small request, whether
/// anybody else changed the ruleset since.
extension NFTables {
    /// NFT_MSG_GETGEN (no dump): answered by one NFT_MSG_NEWGEN carrying NFTA_GEN_ID.
    public static func getGeneration() -> NetlinkMessage { NFTNLGeneration.request() }

    /// The generation id of a NFT_MSG_NEWGEN message (decoded by libnftnl); nil for any other message.
    public static func parseGeneration(_ m: NetlinkMessage) throws(NetlinkError) -> UInt32? {
        m.type == type(NFT_MSG_NEWGEN) ? try NFTNLGeneration.parse(m) : nil
    }
}

extension NFTablesClient {
    /// The current ruleset generation (one request, no dump).
    public func generation() throws(NetlinkError) -> UInt32 {
        let replies = try connection.get(NetlinkRequest(NFTables.getGeneration(), "get the nf_tables generation"))
        for reply in replies {
            if let id = try NFTables.parseGeneration(reply) { return id }
        }
        throw NetlinkError(errno: 71 /* EPROTO */, operation: "get the nf_tables generation",
                           kernelMessage: "no NFT_MSG_NEWGEN in the answer")
    }
}

/// The files a router keeps beside its database. Names derive from the database path so several routers
/// (e.g. hq.db and east.db in one folder, as in the lab) never share a key or a lock.
public struct StoreFiles: Hashable, Sendable {
    public let database: String

    public init(database: String) { self.database = database }

    /// Held with flock by the running daemon: one writer per database.
    public var lock: String { database + ".lock" }
    /// The WireGuard private key (base64, 0600), created on first start.
    public var privateKey: String { database + ".wg-key" }
    /// The mesh key that authenticates announcements (base64, 0600), created on first start unless
    /// `--mesh-key` names a shared one.
    public var meshKey: String { database + ".mesh-key" }
    /// The site's Ed25519 identity key (base64 seed, 0600), created by `identity request`.
    public var identityKey: String { database + ".identity-key" }
    /// The site's certificate, used when present (or `--certificate`).
    public var certificate: String { database + ".crt" }
    /// The newest revocation list: given to this site by hand or received from another; kept across restarts.
    public var revocationList: String { database + ".crl" }
    public var wal: String { database + "-wal" }
    public var sharedMemory: String { database + "-shm" }
}

import Netlink

/// Why steering could not be applied, with what to do about it.
public enum SteeringError: Error, Equatable, CustomStringConvertible {
    /// The plan contradicts itself; nothing was sent to the kernel.
    case invalidPlan([String])
    /// A route's interface (a path's tunnel, a pinned uplink) does not exist in the namespace; `table` is
    /// the routing table the route belongs in.
    case missingInterface(table: UInt32, interface: String)
    /// The kernel refused a change; the nft part of a plan is atomic, so nothing of that batch was applied.
    case kernel(NetlinkError)

    public var description: String {
        switch self {
        case .invalidPlan(let problems):
            "steering plan rejected: " + problems.joined(separator: "; ") + ". Fix the policies/paths that produce it"
        case .missingInterface(let table, let name):
            "routing table \(table): interface \(name) does not exist. Bring the tunnel or uplink up before steering onto it"
        case .kernel(let e):
            e.description
        }
    }
}

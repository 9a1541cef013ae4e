import Foundation

/// The JSON document of `rules/default-policies.json`: `{"comment": "...", "policies": [Policy, ...]}`.
public struct PolicyFile: Codable, Sendable {
    public var comment: String?
    public var policies: [Policy]

    public init(comment: String? = nil, policies: [Policy]) {
        self.comment = comment
        self.policies = policies
    }

    /// Decodes and validates a policies document: every policy passes `validate()` and names are unique.
    public static func decode(_ data: Data) throws -> [Policy] {
        let file = try JSONDecoder().decode(PolicyFile.self, from: data)
        var seen = Set<String>()
        for policy in file.policies {
            try policy.validate()
            guard seen.insert(policy.name).inserted else { throw PolicyError.duplicateName(policy.name) }
        }
        return file.policies
    }
}

extension Policy {
    /// The policies a new database starts with (voip, bulk, default), from the embedded copy of
    /// rules/default-policies.json. Tests pin that copy to the file, so this cannot fail in a built binary.
    public static func defaults() throws -> [Policy] {
        try PolicyFile.decode(Data(defaultPoliciesJSON.utf8))
    }
}

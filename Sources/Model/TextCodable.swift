/// A value whose JSON form is its text form ("10.99.0.0/16", "5060-5061", "udp"), so the policies file and
/// `status --json` read the way an operator writes them. One conformance gives both directions.
public protocol TextCodable: Codable, CustomStringConvertible {
    /// Parses the text form; nil when it is malformed.
    init?(text: String)
    /// What the text should look like, for the decoding error.
    static var textForm: String { get }
}

extension TextCodable {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text: String
        if let number = try? container.decode(Int.self) { text = String(number) } else {
            text = try container.decode(String.self)
        }
        guard let value = Self(text: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                    debugDescription: "'\(text)' is not \(Self.textForm)"))
        }
        self = value
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

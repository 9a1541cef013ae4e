import Foundation
import Testing
@testable import Model

@Suite struct PolicyTextTests {
    @Test func serviceArgumentsRoundTrip() {
        for text in ["udp:5060-5061,16384-32767", "tcp:20,21,873", "udp", "tcp:443"] {
            #expect(ServiceMatch(argument: text)?.argument == text, "\(text)")
        }
        #expect(ServiceMatch(argument: "UDP:53") == ServiceMatch(.udp, [PortRange(53)]))
        for bad in ["", "icmp", "udp:", "udp:0", "udp:5-1", "udp:1,,2", "udp:1:2", "tcp 80", ":80"] {
            #expect(ServiceMatch(argument: bad) == nil, "\(bad)")
        }
    }

    @Test func policyFilesAreValidatedWhole() throws {
        let duplicate = #"{"policies":[{"name":"a","priority":1,"strategy":"best-score"},{"name":"a","priority":2,"strategy":"best-score"}]}"#
        #expect(throws: PolicyError.duplicateName("a")) { try PolicyFile.decode(Data(duplicate.utf8)) }
        let invalid = #"{"policies":[{"name":"a","priority":0,"strategy":"best-score"}]}"#
        #expect(throws: PolicyError.invalidPriority(name: "a", 0)) { try PolicyFile.decode(Data(invalid.utf8)) }
        #expect(try Policy.defaults().count == 3)
    }
}

/// SIPp (Debian package sip-tester, installed by scripts/deps.sh) calls for the lab's root tests: a UAC
/// scenario whose RTP is the pcap SIPp ships, played to the media address the UAS answers with.
public enum SIPpScenario {
    /// The shipped g711a pcap: 236 RTP packets (PCMA, one SSRC, consecutive sequence numbers) of 252 bytes
    /// (a 12-byte header and 240 bytes of audio) over 7.05 s.
    public static let audio = "/usr/share/sip-tester/g711a.pcap"
    public static let audioPackets = 236

    /// A UAC call: INVITE with SDP (PCMA on the media port), ACK, `plays` x the g711a pcap as RTP (each play
    /// followed by a 7.2 s pause, the audio's length), BYE. Every request carries a 500-byte padding header so
    /// that its size tells it apart from RTP on the wire (ACK ~850 bytes, INVITE ~1,050; RTP 280 inside).
    public static func uac(plays: Int) -> String {
        let play = """
              <nop><action><exec play_pcap_audio="\(audio)"/></action></nop>
              <pause milliseconds="7200"/>

            """
        let sdp = """
            Content-Type: application/sdp
            Content-Length: [len]

            v=0
            o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
            s=-
            c=IN IP[media_ip_type] [media_ip]
            t=0 0
            m=audio [media_port] RTP/AVP 8
            a=rtpmap:8 PCMA/8000
            """
        return """
            <?xml version="1.0" encoding="ISO-8859-1" ?>
            <scenario name="patronus acceptance call">
            \(request("INVITE", cseq: 1, toTag: false, body: sdp, retransmit: true))
              <recv response="100" optional="true"/>
              <recv response="180" optional="true"/>
              <recv response="200" rtd="true"/>
            \(request("ACK", cseq: 1, toTag: true, body: "Content-Length: 0\n", retransmit: false))
            \(String(repeating: play, count: plays))
            \(request("BYE", cseq: 2, toTag: true, body: "Content-Length: 0\n", retransmit: true))
              <recv response="200" crlf="true"/>
            </scenario>

            """
    }

    static func request(_ method: String, cseq: Int, toTag: Bool, body: String, retransmit: Bool) -> String {
        """
          <send\(retransmit ? " retrans=\"500\"" : "")>
            <![CDATA[
              \(method) sip:[service]@[remote_ip]:[remote_port] SIP/2.0
              Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
              From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
              To: [service] <sip:[service]@[remote_ip]:[remote_port]>\(toTag ? "[peer_tag_param]" : "")
              Call-ID: [call_id]
              CSeq: \(cseq) \(method)
              Contact: sip:sipp@[local_ip]:[local_port]
              Max-Forwards: 70
              X-Padding: \(String(repeating: "p", count: 500))
              \(body.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\n      "))
            ]]>
          </send>
        """
    }
}

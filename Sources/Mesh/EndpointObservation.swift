import Foundation
import Model

/// What one site (the observer) sees of another site's (the subject's) tunnels: for each of the subject's
/// uplinks it has a working session with, the address and port the subject's packets come from (behind a NAT:
/// the NAT's public mapping, learned by WireGuard from authenticated packets). Sent every interval, only
/// through a tunnel to the subject, so that the subject can announce the mapping itself (docs/MESH.md, "NAT").
///
/// Wire format (version 2 header, kind 3), then:
///
/// | size | field |
/// |---|---|
/// | 16 | observer site id |
/// | 16 | subject site id |
/// | 8 | timestamp, ms since 1970 |
/// | 1 + ... | count E (1..8), each: label (1 + K); the endpoint the subject announced for it, as the observer uses it: IPv4 (4), port (2, non-zero); where the observer sees it: IPv4 (4), port (2, non-zero) |
/// | 32 | MAC (flags bit 0) |
public struct EndpointObservation: Hashable, Sendable {
    /// One of the subject's uplinks: what it announced for it (as the observer uses it) and where the
    /// observer sees it from.
    public struct Sighting: Hashable, Sendable {
        public var label: String
        public var announced: SocketAddress4
        public var observed: SocketAddress4

        public init(label: String, announced: SocketAddress4, observed: SocketAddress4) {
            self.label = label
            self.announced = announced
            self.observed = observed
        }
    }

    public var observer: SiteID
    public var subject: SiteID
    public var timestampMilliseconds: UInt64
    public var sightings: [Sighting]

    public init(observer: SiteID, subject: SiteID, timestampMilliseconds: UInt64, sightings: [Sighting]) {
        self.observer = observer
        self.subject = subject
        self.timestampMilliseconds = timestampMilliseconds
        self.sightings = sightings
    }

    var body: [UInt8] {
        var out = withUnsafeBytes(of: observer.uuid.uuid) { Array($0) }
        out += withUnsafeBytes(of: subject.uuid.uuid) { Array($0) }
        out += bigEndian(timestampMilliseconds)
        out.append(UInt8(sightings.count))
        for sighting in sightings {
            out.append(UInt8(sighting.label.utf8.count))
            out += Array(sighting.label.utf8)
            for address in [sighting.announced, sighting.observed] {
                out += address.address.bytes
                out += bigEndian(address.port)
            }
        }
        return out
    }

    static func read(_ reader: inout ByteReader) throws(AnnouncementRejection) -> EndpointObservation {
        let observer = try reader.siteID()
        let subject = try reader.siteID()
        let timestamp = try reader.u64()
        let count = Int(try reader.u8())
        guard (1...AnnouncementCodec.maxEndpoints).contains(count) else { throw .malformed }
        var sightings: [Sighting] = []
        for _ in 0..<count {
            let label = try reader.string(maxBytes: AnnouncementCodec.maxLabelBytes)
            guard Policy.isValidName(label) else { throw .malformed }
            let announced = try reader.socketAddress()
            let observed = try reader.socketAddress()
            sightings.append(Sighting(label: label, announced: announced, observed: observed))
        }
        return EndpointObservation(observer: observer, subject: subject, timestampMilliseconds: timestamp,
                                   sightings: sightings)
    }
}

/// The public mappings of our own uplinks as other sites observe them, and what we announce from them. Pure.
///
/// Each observation is kept per (label, observer) for `maxAge`; an uplink whose observers see it at an
/// address other than its own (it is behind NAT) is announced at what most of them see (ties: the observer
/// with the smallest id), so sites that cannot reach its private address reach it through the NAT's mapping
/// (both sides behind NAT: simultaneous initiation through the mappings). A new local address for the uplink
/// forgets what was observed of the old one.
public struct PublicEndpoints: Sendable, Equatable {
    public struct Sighting: Sendable, Equatable {
        public var address: SocketAddress4
        public var at: Date
    }

    /// What an observation may say of one uplink, kept this long without being repeated (observers repeat
    /// every interval; 30 s outlasts a short outage of the observer's path, and is far within a NAT's mapping
    /// lifetime).
    public static let maxAge: TimeInterval = 30
    /// Observers kept per label (the most recent).
    public static let maxObservers = 16

    /// label -> observer -> latest sighting.
    public private(set) var sightings: [String: [SiteID: Sighting]] = [:]
    /// The local endpoint each label's sightings are of.
    private var basis: [String: SocketAddress4] = [:]

    public init() {}

    /// Records `observation`'s sightings of the labels we announce (`local`). A sighting counts only when
    /// the observer uses what we announce now for that uplink (our own address or the mapping we announce):
    /// one of an address we had before (the observer has not heard of a renumbering yet) says nothing about
    /// the new one. Returns true when what we announce changes.
    public mutating func record(_ observation: EndpointObservation, local: [Endpoint], now: Date) -> Bool {
        let before = announced(local, now: now)
        forgetMoved(local)
        for seen in observation.sightings {
            guard let own = local.first(where: { $0.label == seen.label }),
                  seen.announced == own.address || seen.announced == before.first(where: { $0.label == seen.label })?.address
            else { continue }
            basis[seen.label] = own.address
            var byObserver = sightings[seen.label, default: [:]]
            byObserver[observation.observer] = Sighting(address: seen.observed, at: now)
            if byObserver.count > Self.maxObservers,
               let oldest = byObserver.min(by: { $0.value.at < $1.value.at })?.key {
                byObserver[oldest] = nil
            }
            sightings[seen.label] = byObserver
        }
        return announced(local, now: now) != before
    }

    /// Drops what is older than `maxAge` and what was seen of an address we no longer have (what is
    /// announced already ignores both; this bounds the memory).
    public mutating func expire(local: [Endpoint], now: Date) {
        forgetMoved(local)
        for (label, byObserver) in sightings {
            let kept = byObserver.filter { now.timeIntervalSince($0.value.at) <= Self.maxAge }
            sightings[label] = kept.isEmpty ? nil : kept
        }
    }

    private mutating func forgetMoved(_ local: [Endpoint]) {
        for (label, address) in basis where local.first(where: { $0.label == label })?.address != address {
            basis[label] = nil
            sightings[label] = nil
        }
    }

    /// The public mapping of `label`'s uplink, when observers see it elsewhere than at its own address.
    public func mapping(of label: String, local: [Endpoint], now: Date) -> (address: SocketAddress4, observers: [SiteID])? {
        guard let own = local.first(where: { $0.label == label }), basis[label] == own.address else { return nil }
        let fresh = (sightings[label] ?? [:]).filter { now.timeIntervalSince($0.value.at) <= Self.maxAge }
        var votes: [SocketAddress4: [SiteID]] = [:]
        for (observer, sighting) in fresh { votes[sighting.address, default: []].append(observer) }
        guard let best = votes.max(by: { a, b in
            a.value.count != b.value.count ? a.value.count < b.value.count : a.value.min()! > b.value.min()!
        }), best.key != own.address else { return nil }
        return (best.key, best.value.sorted())
    }

    /// `local` with each uplink behind NAT replaced by its public mapping.
    public func announced(_ local: [Endpoint], now: Date) -> [Endpoint] {
        local.map { endpoint in
            mapping(of: endpoint.label, local: local, now: now)
                .map { Endpoint(label: endpoint.label, address: $0.address) } ?? endpoint
        }
    }
}

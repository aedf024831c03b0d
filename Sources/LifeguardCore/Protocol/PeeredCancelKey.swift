/// Cancel keys of a peering group, in PgBouncer's layout so that Lifeguard and PgBouncer processes can peer:
/// the second and third bytes of the key (bits 16-23 and 8-15 of the process id half) hold the issuing
/// process's `peer_id`, and the two low bits of the last byte a TTL, the forwards the request may still take
/// (3 when issued). A process that receives a cancel request for another peer's key forwards it there with
/// the TTL one lower, so a request can cross up to three load-balancer hops and never loops.
public enum PeeredCancelKey {
    static let ttlMask: Int32 = 0x03

    /// A random key (`processID`, `secretKey`) stamped with `peerID` and a full TTL.
    public static func stamp(processID: Int32, secretKey: Int32, peerID: Int) -> (processID: Int32, secretKey: Int32) {
        let idBits = Int32(peerID & 0xFF) << 16 | Int32((peerID >> 8) & 0xFF) << 8
        return ((processID & ~0x00FF_FF00) | idBits, secretKey | ttlMask)
    }

    public static func peerID(of processID: Int32) -> Int {
        Int((processID >> 16) & 0xFF) | Int((processID >> 8) & 0xFF) << 8
    }

    public static func ttl(of secretKey: Int32) -> Int {
        Int(secretKey & ttlMask)
    }

    /// The secret as it was issued (full TTL), whatever forwards it has taken: the form keys are looked up by.
    public static func asIssued(secretKey: Int32) -> Int32 {
        secretKey | ttlMask
    }

    /// The secret with one forward used up; only for a TTL above 0.
    public static func forwarded(secretKey: Int32) -> Int32 {
        secretKey &- 1
    }
}

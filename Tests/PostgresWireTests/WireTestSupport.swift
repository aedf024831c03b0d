/// Helpers shared by the wire tests: a reproducible random generator, message encoding and random cuts.

/// A small deterministic generator (SplitMix64) so random splits are reproducible from a seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func encode(_ messages: [(UInt8, [UInt8])]) -> [UInt8] {
    var out: [UInt8] = []
    for (id, body) in messages {
        out.append(id)
        let length = UInt32(body.count + 4)
        out += [UInt8(length >> 24), UInt8(truncatingIfNeeded: length >> 16), UInt8(truncatingIfNeeded: length >> 8),
                UInt8(truncatingIfNeeded: length)]
        out += body
    }
    return out
}

func randomCuts(seed: UInt64, count: Int, maxPiece: Int) -> [Int] {
    var rng = SplitMix64(seed: seed)
    var cuts: [Int] = []
    var position = 0
    while true {
        position += Int.random(in: 1...maxPiece, using: &rng)
        if position >= count { break }
        cuts.append(position)
    }
    return cuts
}

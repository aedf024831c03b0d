import SplitMix

/// Helpers shared by the wire tests: a reproducible random generator, message encoding and random cuts.

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

/// One round function of a Merkle–Damgård hash over 64-byte blocks: MD5 and SHA-256 differ only here and
/// in the byte order of the length they end with.
protocol BlockCompression {
    init()
    mutating func compress(_ block: UnsafeRawBufferPointer)
    /// The length at the end of the padding is big-endian (SHA-256) or little-endian (MD5).
    static var lengthIsBigEndian: Bool { get }
    var digest: [UInt8] { get }
}

/// The buffering and padding MD5 and SHA-256 share (RFC 1321 section 3.1, FIPS 180-4 section 5.1.1).
///
/// Lifeguard's own, small implementations: they hash passwords and SCRAM messages at login, and linking a
/// cryptography package for that cost the daemon 4 MB of resident memory at start. Checked against the
/// published test vectors (Tests/LifeguardCoreTests/DigestTests.swift).
struct BlockHash<Compression: BlockCompression> {
    private var compression = Compression()
    /// Bytes of an unfinished block.
    private var pending: [UInt8] = []
    private var byteCount: UInt64 = 0

    init() {}

    mutating func update(_ bytes: some Sequence<UInt8>) {
        let done: Void? = bytes.withContiguousStorageIfAvailable { update(UnsafeRawBufferPointer($0)) }
        if done == nil { Array(bytes).withUnsafeBytes { update($0) } }
    }

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        byteCount &+= UInt64(bytes.count)
        var offset = 0
        if !pending.isEmpty {
            let taken = min(64 - pending.count, bytes.count)
            pending += bytes[0..<taken]
            offset = taken
            guard pending.count == 64 else { return }
            pending.withUnsafeBytes { compression.compress($0) }
            pending.removeAll(keepingCapacity: true)
        }
        while bytes.count - offset >= 64 {
            compression.compress(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + 64]))
            offset += 64
        }
        if offset < bytes.count { pending += bytes[offset...] }
    }

    /// The digest; the hasher is spent.
    mutating func finalize() -> [UInt8] {
        let bitCount = byteCount &* 8
        var padding: [UInt8] = [0x80]
        padding += repeatElement(0, count: (55 &- pending.count) & 63)
        for index in 0..<8 {
            let shift = Compression.lengthIsBigEndian ? UInt64(56 - 8 * index) : UInt64(8 * index)
            padding.append(UInt8(truncatingIfNeeded: bitCount >> shift))
        }
        update(padding)
        return compression.digest
    }

    static func hash(_ bytes: some Sequence<UInt8>) -> [UInt8] {
        var hasher = BlockHash()
        hasher.update(bytes)
        return hasher.finalize()
    }
}

import NIOCore
import SplitMix

/// Invariant checks that crash, so libFuzzer records the input. Kept in release builds too (unlike assert).
@inline(__always)
func check(_ condition: Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
    if !condition { fatalError("invariant violated: \(message())", file: file, line: line) }
}

/// Reads fuzz input as a stream of decisions; past the end every read is zero, so any input is valid.
struct FuzzInput {
    let bytes: [UInt8]
    private(set) var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }
    init<S: Sequence<UInt8>>(_ bytes: S) { self.bytes = Array(bytes) }

    var isAtEnd: Bool { index >= bytes.count }
    var remaining: Int { max(0, bytes.count - index) }

    mutating func byte() -> UInt8 {
        guard index < bytes.count else { return 0 }
        defer { index += 1 }
        return bytes[index]
    }

    mutating func bool() -> Bool { byte() & 1 == 1 }

    /// A value in `range` from one or two bytes, depending on the range's size.
    mutating func int(in range: ClosedRange<Int>) -> Int {
        let span = UInt64(range.upperBound - range.lowerBound) + 1
        let raw = span <= 256 ? UInt64(byte()) : UInt64(byte()) << 8 | UInt64(byte())
        return range.lowerBound + Int(raw % span)
    }

    mutating func bytes(_ count: Int) -> [UInt8] {
        let count = min(count, remaining)
        defer { index += count }
        return Array(bytes[index..<index + count])
    }

    /// A length-prefixed field (one length byte).
    mutating func field() -> [UInt8] { bytes(Int(byte())) }

    mutating func rest() -> [UInt8] { bytes(remaining) }
}

/// Chunk sizes covering `total` bytes: one read, byte by byte, or pseudo-random cuts from `seed`.
func splitPlans(total: Int, seed: UInt8) -> [[Int]] {
    var plans: [[Int]] = [[total], Array(repeating: 1, count: total)]
    var random = SplitMix64(seed: UInt64(seed) &* 0x1000_0001 &+ UInt64(total))
    for _ in 0..<2 {
        var plan: [Int] = []
        var left = total
        while left > 0 {
            // Mostly small cuts, sometimes large: headers straddle reads either way.
            let size = random.next(below: 4) == 0 ? 1 + random.next(below: left) : 1 + random.next(below: min(left, 9))
            plan.append(size)
            left -= size
        }
        plans.append(plan)
    }
    return plans
}

/// A read as a channel hands it over: sometimes with consumed bytes before the reader index, so code that
/// mixes absolute and relative indexes shows up.
func makeRead(_ bytes: ArraySlice<UInt8>, junk: Int) -> ByteBuffer {
    var buffer = ByteBufferAllocator().buffer(capacity: junk + bytes.count)
    buffer.writeRepeatingByte(0xEE, count: junk)
    buffer.writeBytes(bytes)
    buffer.moveReaderIndex(forwardBy: junk)
    return buffer
}

extension ByteBuffer {
    var bytes: [UInt8] { Array(readableBytesView) }
}

/// One message of a typed stream as a plain header walk sees it: the reference the scanners are held to.
struct ReferenceMessage: Equatable {
    var id: UInt8
    var start: Int
    /// The length field: the message spans `1 + length` bytes.
    var length: Int
    var end: Int { start + 1 + length }
}

enum ReferenceOutcome: Equatable {
    /// The last message is incomplete or the stream ends between messages; `next` is where it starts.
    case open(next: Int)
    /// The header at `at` is invalid (length below 4 or above the limit).
    case invalid(at: Int, length: Int)
}

/// Walks `stream` header by header, with the same limits the scanners apply.
func referenceWalk(_ stream: ArraySlice<UInt8>, maxLength: Int) -> ([ReferenceMessage], ReferenceOutcome) {
    var messages: [ReferenceMessage] = []
    let base = stream.startIndex
    var offset = 0
    let count = stream.count
    while count - offset >= 5 {
        let id = stream[base + offset]
        var raw: UInt32 = 0
        for index in 1...4 { raw = raw << 8 | UInt32(stream[base + offset + index]) }
        let length = Int(Int32(bitPattern: raw))
        if length < 4 || length > maxLength { return (messages, .invalid(at: offset, length: length)) }
        guard count - offset >= 1 + length else { break }
        messages.append(ReferenceMessage(id: id, start: offset, length: length))
        offset += 1 + length
    }
    return (messages, .open(next: offset))
}

func hex(_ bytes: some Sequence<UInt8>) -> String {
    bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
}

import NIOCore

/// Errors found while walking message headers. The pooler turns each into PgBouncer's error and a close.
public enum WireError: Error, Equatable, Sendable {
    /// A length field below 4: no valid message has one.
    case invalidLength(Int)
    /// A message longer than `max_packet_size`.
    case messageTooLarge(Int)
    /// A startup packet that cannot be read.
    case malformedStartup(String)
}

/// A set of message ids, stored as a 256-bit mask so a lookup costs one shift on the hot path.
public struct MessageIDSet: Sendable {
    private var bits: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    public init(_ ids: [UInt8] = []) {
        for id in ids { insert(id) }
    }

    public static let all: MessageIDSet = {
        var set = MessageIDSet()
        set.bits = (.max, .max, .max, .max)
        return set
    }()

    public mutating func insert(_ id: UInt8) {
        let bit = UInt64(1) << UInt64(id & 63)
        switch id >> 6 {
        case 0: bits.0 |= bit
        case 1: bits.1 |= bit
        case 2: bits.2 |= bit
        default: bits.3 |= bit
        }
    }

    @inline(__always)
    public func contains(_ id: UInt8) -> Bool {
        let bit = UInt64(1) << UInt64(id & 63)
        switch id >> 6 {
        case 0: return bits.0 & bit != 0
        case 1: return bits.1 & bit != 0
        case 2: return bits.2 & bit != 0
        default: return bits.3 & bit != 0
        }
    }
}

/// Walks the 5-byte headers (type byte + big-endian Int32 length that counts itself) of a stream of
/// typed messages, read by read, without copying bodies.
///
/// Between reads it keeps only a partial header and the number of body bytes still to come. Bodies of the
/// message ids in `capturedIDs` are handed to the visitor whole: as a slice when the message lies in one read
/// (no copy), or assembled from several reads (these are small control messages).
public struct FrameScanner: Sendable {
    public var capturedIDs: MessageIDSet
    public var maxMessageLength: Int

    private var partialHeader: UInt64 = 0
    private var partialHeaderCount = 0
    private var remainingBody = 0
    private var currentID: UInt8 = 0
    private var currentLength = 0
    private var assembledBody: ByteBuffer?

    public init(capturedIDs: MessageIDSet = MessageIDSet(), maxMessageLength: Int = Int(Int32.max)) {
        self.capturedIDs = capturedIDs
        self.maxMessageLength = maxMessageLength
    }

    /// True between messages: no header or body is half-read.
    public var isAtMessageBoundary: Bool {
        partialHeaderCount == 0 && remainingBody == 0
    }

    /// The message the last scan stopped inside: its id (once its first byte has arrived) and how many of
    /// its bytes, header included, have arrived so far.
    public var partialMessage: (id: UInt8, bytesSeen: Int)? {
        if partialHeaderCount > 0 {
            return (UInt8(truncatingIfNeeded: partialHeader >> (8 * UInt64(partialHeaderCount - 1))), partialHeaderCount)
        }
        if remainingBody > 0 { return (currentID, 1 + currentLength - remainingBody) }
        return nil
    }

    /// Scans `buffer` (from its reader index) and calls `visit(id, body)` as each message completes; `body` is
    /// nil for ids that are not captured. When `visit` returns false the scan stops right after that message
    /// and the offset of the first unscanned byte (an absolute index into `buffer`) is returned; otherwise nil.
    public mutating func scan(
        _ buffer: ByteBuffer,
        _ visit: (UInt8, ByteBuffer?) throws -> Bool
    ) throws -> Int? {
        try scan(buffer, from: buffer.readerIndex) { id, body, _, _ in try visit(id, body) }
    }

    public mutating func scan(
        _ buffer: ByteBuffer,
        from start: Int,
        _ visit: (UInt8, ByteBuffer?) throws -> Bool
    ) throws -> Int? {
        try scan(buffer, from: start) { id, body, _, _ in try visit(id, body) }
    }

    /// As `scan`, and `visit` also gets where the message ends in `buffer` (an absolute index) and its whole
    /// length, header included, so a caller can cut it out of what it forwards.
    public mutating func scan(
        _ buffer: ByteBuffer,
        from start: Int,
        _ visit: (_ id: UInt8, _ body: ByteBuffer?, _ end: Int, _ length: Int) throws -> Bool
    ) throws -> Int? {
        var offset = start
        let end = buffer.writerIndex
        while offset < end {
            if remainingBody > 0 {
                let available = min(remainingBody, end - offset)
                if assembledBody != nil {
                    var chunk = buffer.getSlice(at: offset, length: available)!
                    assembledBody!.writeBuffer(&chunk)
                }
                offset += available
                remainingBody -= available
                if remainingBody == 0 {
                    let body = assembledBody
                    assembledBody = nil
                    if try !visit(currentID, body, offset, 1 + currentLength) { return offset }
                }
                continue
            }

            let id: UInt8
            let length: Int
            if partialHeaderCount == 0, end - offset >= 5 {
                // One read of the whole header (getInteger checks bounds on each call; five bytes are there).
                (id, length) = buffer.withUnsafeReadableBytes { bytes in
                    let at = offset - buffer.readerIndex
                    return (bytes[at], Int(Int32(bigEndian: bytes.loadUnaligned(fromByteOffset: at + 1, as: Int32.self))))
                }
                offset += 5
            } else {
                while partialHeaderCount < 5, offset < end {
                    partialHeader = partialHeader << 8 | UInt64(buffer.getInteger(at: offset, as: UInt8.self)!)
                    partialHeaderCount += 1
                    offset += 1
                }
                if partialHeaderCount < 5 { return nil }
                id = UInt8(truncatingIfNeeded: partialHeader >> 32)
                length = Int(Int32(truncatingIfNeeded: partialHeader & 0xFFFF_FFFF))
                partialHeader = 0
                partialHeaderCount = 0
            }
            guard length >= 4 else { throw WireError.invalidLength(length) }
            guard length <= maxMessageLength else { throw WireError.messageTooLarge(length) }

            let bodyLength = length - 4
            let captured = capturedIDs.contains(id)
            if end - offset >= bodyLength {
                let body = captured ? buffer.getSlice(at: offset, length: bodyLength) : nil
                offset += bodyLength
                if try !visit(id, body, offset, 1 + length) { return offset }
            } else {
                currentID = id
                currentLength = length
                remainingBody = bodyLength
                if captured {
                    // Grows as the body arrives, so a lying length field reserves nothing up front.
                    var assembled = ByteBufferAllocator().buffer(capacity: min(bodyLength, 4096))
                    var chunk = buffer.getSlice(at: offset, length: end - offset)!
                    assembled.writeBuffer(&chunk)
                    assembledBody = assembled
                } else {
                    assembledBody = nil
                }
                remainingBody -= end - offset
                offset = end
            }
        }
        return nil
    }
}

import NIOCore

/// Cuts a client's byte stream into what a pooler that rewrites some messages needs: messages whose ids are
/// in `wholeIDs` come out whole (header included, so they can be replaced), every other byte comes out in raw
/// runs as soon as it arrives, so a 100 MB CopyData streams through without being held.
///
/// Between reads it keeps only an incomplete header or an incomplete whole message (`carry`) and the count
/// of raw body bytes still to come.
public struct MessageSplitter: Sendable {
    public enum Piece {
        /// Bytes to pass on unchanged: any number of messages, possibly a part of one.
        case raw(ByteBuffer)
        /// A complete message of one of `wholeIDs`, header included: the visitor gives its verdict.
        case whole(id: UInt8, message: ByteBuffer)
        /// The first bytes of a message of one of `wholeIDs` that is not complete yet, header included: the
        /// visitor gives its verdict if it can already tell (`take` holds it and offers it again as more
        /// arrives).
        case incomplete(id: UInt8, partial: ByteBuffer)
        /// A whole message the visitor took, after the raw run that precedes it: send it (or its replacement) now.
        case taken(id: UInt8, message: ByteBuffer)
        /// The first bytes of a message the visitor rewrites (`replaceHead`), after the raw run that precedes
        /// it: send their replacement now. The rest of the message follows as raw bytes.
        case head(id: UInt8, head: ByteBuffer)
        /// The last byte of a message that went out in raw runs (after an `incomplete` that passed, or after
        /// its `head`) has been seen.
        case ended(id: UInt8)
    }

    /// What the visitor does with a message of one of `wholeIDs`.
    public enum Verdict: Equatable {
        /// It passes unchanged, in the raw run around it; an incomplete one streams and ends with `ended`.
        case pass
        /// It is left out of the raw runs and comes back whole as `taken` in its place.
        case take
        /// Its first `count` bytes come back as `head` to be replaced (the header is rewritten, so the
        /// replacement carries the length); the rest streams as raw bytes, then `ended`.
        case replaceHead(count: Int)
        /// Splitting stops before it: it and the rest of the read are dropped (Terminate).
        case stop
    }

    public var wholeIDs: MessageIDSet
    public var maxMessageLength: Int
    private var carry = ByteBuffer()
    private var passingBody = 0
    private var passingID: UInt8 = 0

    public init(wholeIDs: MessageIDSet, maxMessageLength: Int = Int(Int32.max)) {
        self.wholeIDs = wholeIDs
        self.maxMessageLength = maxMessageLength
    }

    /// True between messages: no header, whole message or raw body is half-read.
    public var isAtMessageBoundary: Bool {
        carry.readableBytes == 0 && passingBody == 0
    }

    /// Splits `read` and hands the pieces to `visit` in stream order (an `ended` may come before the raw run
    /// holding that message's last bytes, never after a later piece). `visit`'s verdict matters only for
    /// whole messages.
    public mutating func split(_ read: ByteBuffer, _ visit: (Piece) throws -> Verdict) throws {
        var offset = read.readerIndex
        let end = read.writerIndex
        if carry.readableBytes > 0 {
            guard let resumed = try resumeCarry(read, at: &offset, visit) else { return }
            if !resumed { return }
        }
        var runStart = offset
        while offset < end {
            if passingBody > 0 {
                let available = min(passingBody, end - offset)
                offset += available
                passingBody -= available
                if passingBody == 0 { _ = try visit(.ended(id: passingID)) }
                continue
            }
            guard end - offset >= 5 else {
                try emitRun(read, from: runStart, to: offset, visit)
                carry = read.getSlice(at: offset, length: end - offset)!
                return
            }
            let id: UInt8 = read.getInteger(at: offset)!
            let length = try validLength(Int(read.getInteger(at: offset + 1, as: Int32.self)!))
            if wholeIDs.contains(id) {
                let isComplete = end - offset >= 1 + length
                let available = read.getSlice(at: offset, length: isComplete ? 1 + length : end - offset)!
                let verdict = try visit(
                    isComplete ? .whole(id: id, message: available) : .incomplete(id: id, partial: available))
                switch verdict {
                case .pass:
                    // An incomplete one streams: a 1 MB Bind of an unnamed statement is never held.
                    offset += isComplete ? 1 + length : 0
                    if !isComplete { try startPassing(id, bodyLeft: 1 + length, visit) }
                case .replaceHead(let count):
                    try emitRun(read, from: runStart, to: offset, visit)
                    _ = try visit(.head(id: id, head: available.getSlice(at: available.readerIndex, length: count)!))
                    offset += count
                    runStart = offset
                    try startPassing(id, bodyLeft: 1 + length - count, visit)
                case .take where isComplete:
                    try emitRun(read, from: runStart, to: offset, visit)
                    _ = try visit(.taken(id: id, message: available))
                    offset += 1 + length
                    runStart = offset
                case .take:
                    try emitRun(read, from: runStart, to: offset, visit)
                    // Kept as a copy: it grows as the rest arrives, so a lying length reserves nothing.
                    carry = ByteBuffer()
                    carry.writeImmutableBuffer(available)
                    return
                case .stop:
                    try emitRun(read, from: runStart, to: offset, visit)
                    return
                }
            } else {
                offset += 5
                try startPassing(id, bodyLeft: length - 4, visit)
            }
        }
        try emitRun(read, from: runStart, to: offset, visit)
    }

    /// The next `bodyLeft` bytes belong to a message `id` going out raw; a message already over ends now.
    private mutating func startPassing(_ id: UInt8, bodyLeft: Int, _ visit: (Piece) throws -> Verdict) throws {
        passingID = id
        passingBody = bodyLeft
        if bodyLeft == 0 { _ = try visit(.ended(id: id)) }
    }

    /// Completes the carried header or whole message from the start of `read`. Returns nil when the read
    /// was used up, false when `visit` asked to stop, true to go on splitting at `offset`.
    private mutating func resumeCarry(
        _ read: ByteBuffer, at offset: inout Int, _ visit: (Piece) throws -> Verdict
    ) throws -> Bool? {
        let end = read.writerIndex
        if carry.readableBytes < 5 {
            let take = min(5 - carry.readableBytes, end - offset)
            carry.writeImmutableBuffer(read.getSlice(at: offset, length: take)!)
            offset += take
            if carry.readableBytes < 5 { return nil }
        }
        let id: UInt8 = carry.getInteger(at: carry.readerIndex)!
        let length = try validLength(Int(carry.getInteger(at: carry.readerIndex + 1, as: Int32.self)!))
        guard wholeIDs.contains(id) else {
            // Only a header was carried: it leads the raw run of its message.
            let header = carry
            carry = ByteBuffer()
            passingID = id
            passingBody = length - 4
            _ = try visit(.raw(header))
            if passingBody == 0 { _ = try visit(.ended(id: id)) }
            return offset < end ? true : nil
        }
        let take = min(1 + length - carry.readableBytes, end - offset)
        carry.writeImmutableBuffer(read.getSlice(at: offset, length: take)!)
        offset += take
        let isComplete = carry.readableBytes == 1 + length
        let message = carry
        let verdict = try visit(isComplete ? .whole(id: id, message: message) : .incomplete(id: id, partial: message))
        switch verdict {
        case .pass:
            carry = ByteBuffer()
            _ = try visit(.raw(message))
            if !isComplete { try startPassing(id, bodyLeft: 1 + length - message.readableBytes, visit) }
        case .replaceHead(let count):
            carry = ByteBuffer()
            _ = try visit(.head(id: id, head: message.getSlice(at: message.readerIndex, length: count)!))
            if message.readableBytes > count {
                _ = try visit(.raw(message.getSlice(at: message.readerIndex + count, length: message.readableBytes - count)!))
            }
            try startPassing(id, bodyLeft: 1 + length - message.readableBytes, visit)
        case .take where isComplete:
            carry = ByteBuffer()
            _ = try visit(.taken(id: id, message: message))
        case .take:
            return nil  // still held; the read was used up
        case .stop:
            carry = ByteBuffer()
            return false
        }
        return offset < end ? true : nil
    }

    private func emitRun(_ read: ByteBuffer, from start: Int, to end: Int, _ visit: (Piece) throws -> Verdict) throws {
        if end > start { _ = try visit(.raw(read.getSlice(at: start, length: end - start)!)) }
    }

    private func validLength(_ length: Int) throws -> Int {
        guard length >= 4 else { throw WireError.invalidLength(length) }
        guard length <= maxMessageLength else { throw WireError.messageTooLarge(length) }
        return length
    }
}

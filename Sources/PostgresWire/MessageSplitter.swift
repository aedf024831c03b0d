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
        /// A complete message of one of `wholeIDs`, header included: the visitor decides whether it passes.
        case whole(id: UInt8, message: ByteBuffer)
        /// A whole message the visitor took, after the raw run that precedes it: send it (or its replacement) now.
        case taken(id: UInt8, message: ByteBuffer)
        /// The first bytes of a message of one of `wholeIDs` that is not complete yet. If the visitor can
        /// already tell it passes unchanged (`pass`), it streams as raw bytes and ends with `ended`; otherwise
        /// it is held and offered again as more arrives.
        case incomplete(id: UInt8, partial: ByteBuffer)
        /// The last byte of a message passed as raw bytes has been seen.
        case ended(id: UInt8)
    }

    /// What the visitor does with a whole message.
    public enum Verdict {
        /// It passes unchanged: it stays in the raw run around it.
        case pass
        /// It is left out of the raw runs and comes back as `taken` in its place.
        case take
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
                guard end - offset >= 1 + length else {
                    let partial = read.getSlice(at: offset, length: end - offset)!
                    if try visit(.incomplete(id: id, partial: partial)) == .pass {
                        // It streams: a 1 MB Bind of an unnamed statement is never held.
                        offset += 5
                        passingID = id
                        passingBody = length - 4
                        continue
                    }
                    try emitRun(read, from: runStart, to: offset, visit)
                    // Kept as a copy: it grows as the rest arrives, so a lying length reserves nothing.
                    carry = ByteBuffer()
                    carry.writeImmutableBuffer(read.getSlice(at: offset, length: end - offset)!)
                    return
                }
                let message = read.getSlice(at: offset, length: 1 + length)!
                let messageStart = offset
                offset += 1 + length
                switch try visit(.whole(id: id, message: message)) {
                case .pass:
                    continue
                case .take:
                    try emitRun(read, from: runStart, to: messageStart, visit)
                    _ = try visit(.taken(id: id, message: message))
                    runStart = offset
                case .stop:
                    try emitRun(read, from: runStart, to: messageStart, visit)
                    return
                }
            } else {
                offset += 5
                passingID = id
                passingBody = length - 4
                if passingBody == 0 { _ = try visit(.ended(id: id)) }
            }
        }
        try emitRun(read, from: runStart, to: offset, visit)
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
        guard carry.readableBytes == 1 + length else {
            if try visit(.incomplete(id: id, partial: carry)) == .pass {
                passingID = id
                passingBody = 1 + length - carry.readableBytes
                _ = try visit(.raw(carry))
                carry = ByteBuffer()
            }
            return nil
        }
        let message = carry
        carry = ByteBuffer()
        switch try visit(.whole(id: id, message: message)) {
        case .pass: _ = try visit(.raw(message))
        case .take: _ = try visit(.taken(id: id, message: message))
        case .stop: return false
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

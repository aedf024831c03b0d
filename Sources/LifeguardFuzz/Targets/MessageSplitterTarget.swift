import NIOCore
import PostgresWire

/// MessageSplitter with verdicts drawn from the input: the pieces it hands out are the input bytes in order
/// (a `head` is the original prefix it would replace), every message completes exactly once and in order,
/// it holds back at most the message in progress, its boundary flag matches the bytes fed, and it fails
/// exactly at the first invalid header. Input: flags, seed, verdict-bytes count, verdict bytes, stream.
func fuzzMessageSplitter(_ data: [UInt8]) {
    var input = FuzzInput(data)
    let flags = input.byte()
    let seed = input.byte()
    let verdictBytes = input.bytes(Int(input.byte() % 32))
    let stream = input.rest()[...]

    let wholeIDs: MessageIDSet
    switch flags & 3 {
    case 0: wholeIDs = MessageIDSet([FrontendID.parse, FrontendID.bind, FrontendID.describe, FrontendID.close, FrontendID.terminate])
    case 1: wholeIDs = .all
    case 2: wholeIDs = MessageIDSet()
    default: wholeIDs = MessageIDSet([seed, FrontendID.bind])
    }
    let maxLength = flags & 4 == 0 ? Int(Int32.max) : 4 + Int(seed)
    let (expected, outcome) = referenceWalk(stream, maxLength: maxLength)

    for (planIndex, plan) in splitPlans(total: stream.count, seed: seed).enumerated() {
        var verdicts = FuzzInput(verdictBytes.isEmpty ? [0] : verdictBytes + [UInt8(planIndex)])
        var model = SplitterOracle(stream: stream, expected: expected)
        var splitter = MessageSplitter(wholeIDs: wholeIDs, maxMessageLength: maxLength)
        var fed = 0
        run: for size in plan {
            let read = makeRead(stream[stream.startIndex + fed..<stream.startIndex + fed + size], junk: planIndex & 1)
            fed += size
            model.fed = fed
            do {
                try splitter.split(read) { piece in
                    model.verdict(for: piece) { partial in
                        // Cycle through the verdict bytes, a little differently each round.
                        if verdicts.isAtEnd { verdicts = FuzzInput(verdictBytes + [UInt8(truncatingIfNeeded: fed)]) }
                        return chooseVerdict(partial, &verdicts)
                    }
                }
            } catch let error as WireError {
                guard case .invalid(let at, let length) = outcome else { fatalError("unexpected \(error)") }
                check(error == (length < 4 ? .invalidLength(length) : .messageTooLarge(length)), "error \(error)")
                check(fed >= at + 5 && fed - size < at + 5, "error at \(fed), the bad header ends at \(at + 5)")
                check(model.completed.count == expected.count, "messages before the bad header not all complete")
                break run
            } catch {
                fatalError("unexpected error type \(error)")
            }
            if model.stopped { break run }
            model.checkAfterRead(boundary: splitter.isAtMessageBoundary)
            if case .invalid(let at, _) = outcome {
                check(fed < at + 5, "no error after the bad header arrived")
            }
        }
    }
}

/// Pass, take, stop, or a head replacement of the length `bindHead` measures (the only count callers use).
private func chooseVerdict(_ message: ByteBuffer, _ verdicts: inout FuzzInput) -> MessageSplitter.Verdict {
    switch verdicts.byte() % 8 {
    case 0, 1, 2: return .pass
    case 3, 4: return .take
    case 5, 6:
        if let head = ExtendedQueryMessage.bindHead(message) { return .replaceHead(count: head.length) }
        return .pass
    default: return verdicts.byte() % 4 == 0 ? .stop : .take
    }
}

/// What the splitter's pieces must add up to, checked piece by piece.
struct SplitterOracle {
    var stream: ArraySlice<UInt8>
    var expected: [ReferenceMessage]
    var fed = 0
    /// Bytes handed out as raw, taken or head pieces: always a prefix of the stream.
    var emitted = 0
    var completed: [UInt8] = []
    var stopped = false
    /// How many messages of `expected` have wholly arrived (fed only grows).
    var arrived = 0

    init(stream: ArraySlice<UInt8>, expected: [ReferenceMessage]) {
        self.stream = stream
        self.expected = expected
    }

    func slice(_ start: Int, _ end: Int) -> [UInt8] {
        Array(stream[stream.startIndex + start..<stream.startIndex + end])
    }

    /// The message starting at the first byte not yet handed out (or completed), if the walk knows it.
    var next: ReferenceMessage? { completed.count < expected.count ? expected[completed.count] : nil }

    mutating func complete(_ id: UInt8) {
        guard let message = next else { fatalError("message completed past the end: \(completed.count)") }
        check(message.id == id, "completed id \(id), expected \(message.id) at \(message.start)")
        check(message.end <= fed, "message at \(message.start) completed before its last byte arrived")
        completed.append(id)
    }

    mutating func emit(_ bytes: ByteBuffer) {
        let content = bytes.bytes
        check(emitted + content.count <= fed, "emitted \(emitted + content.count) of \(fed) fed bytes")
        check(content == slice(emitted, emitted + content.count), "piece at \(emitted) differs from the input")
        emitted += content.count
    }

    /// Checks one piece; for `whole`/`incomplete` asks `choose` for the verdict and records its effect.
    mutating func verdict(
        for piece: MessageSplitter.Piece, _ choose: (ByteBuffer) -> MessageSplitter.Verdict
    ) -> MessageSplitter.Verdict {
        switch piece {
        case .raw(let bytes):
            check(bytes.readableBytes > 0, "empty raw run")
            emit(bytes)
        case .whole(let id, let message), .incomplete(let id, let message):
            let isWhole: Bool
            if case .whole = piece { isWhole = true } else { isWhole = false }
            // The offered message follows the last completed one; the raw run before it may still be unsent.
            let start = completed.count < expected.count ? expected[completed.count].start : messageStartOfTail()
            check(emitted <= start, "offered a message at \(start) with \(emitted) bytes handed out")
            if isWhole {
                guard let reference = next else { fatalError("whole message beyond the walk") }
                check(reference.id == id && message.bytes == slice(reference.start, reference.end), "whole message bytes")
            } else {
                check(next.map { $0.end > fed } ?? true, "incomplete offered for a complete message")
                check(message.readableBytes == fed - start && id == stream[stream.startIndex + start], "incomplete message size")
                // Offered again on every read while held: compare its ends only when it is big (quadratic otherwise).
                let bytes = message.readableBytesView
                check(bytes.count <= 256 ? Array(bytes) == slice(start, fed)
                      : Array(bytes.prefix(16)) == slice(start, start + 16) && Array(bytes.suffix(64)) == slice(fed - 64, fed),
                      "incomplete message bytes")
            }
            let verdict = choose(message)
            switch verdict {
            case .pass where isWhole: complete(id)
            case .stop: stopped = true
            default: break
            }
            return verdict
        case .taken(let id, let message):
            guard let reference = next else { fatalError("taken beyond the walk") }
            check(message.bytes == slice(reference.start, reference.end), "taken message bytes")
            emit(message)
            complete(id)
        case .head(let id, let head):
            guard let reference = next else {
                // Its message is incomplete: the head still has to be its first bytes.
                check(id == stream[stream.startIndex + emitted], "head id")
                emit(head)
                return .pass
            }
            check(id == reference.id && emitted == reference.start, "head at \(emitted)")
            emit(head)
        case .ended(let id):
            complete(id)
        }
        return .pass
    }

    /// Start of the incomplete message after all complete ones.
    func messageStartOfTail() -> Int {
        expected.last?.end ?? 0
    }

    /// After a read: nothing complete is held back, at most the message in progress is, and the boundary
    /// flag says whether one is.
    mutating func checkAfterRead(boundary: Bool) {
        while arrived < expected.count, expected[arrived].end <= fed { arrived += 1 }
        let complete = arrived
        check(completed.count == complete, "\(completed.count) messages completed, \(complete) have arrived")
        let tailStart = complete < expected.count ? expected[complete].start : messageStartOfTail()
        check(emitted >= tailStart, "held back \(fed - emitted) bytes, more than the message in progress")
        check(boundary == (tailStart == fed), "boundary flag \(boundary) with \(fed - tailStart) bytes of a message in")
        if boundary { check(emitted == fed, "bytes held at a boundary") }
    }
}

extension SplitterOracle {
    /// A longer stream (the client wrote more): the walk of what was already there cannot change.
    mutating func refresh(stream: ArraySlice<UInt8>, expected: [ReferenceMessage], fed: Int) {
        check(expected.starts(with: self.expected), "reference walk changed")
        self.stream = stream
        self.expected = expected
        self.fed = fed
    }

    /// Start of the first message not wholly fed.
    var tailStart: Int {
        let complete = expected.prefix { $0.end <= fed }.count
        return complete < expected.count ? expected[complete].start : messageStartOfTail()
    }

    var isAtMessageBoundary: Bool { tailStart == fed }
}

import NIOCore
import Testing

@testable import PostgresWire

/// One message seen by the scanner: its id and its body (nil when the id is not captured).
private struct Event: Equatable, CustomStringConvertible {
    var id: UInt8
    var body: [UInt8]?

    var description: String {
        "\(Character(Unicode.Scalar(id)))(\(body.map { "\($0.count) bytes" } ?? "nil"))"
    }
}

private let allocator = ByteBufferAllocator()

/// The test stream: (id, body) pairs of several types and lengths, including empty bodies and a 100 KB body.
private let messages: [(UInt8, [UInt8])] = {
    let big = (0..<100 * 1024).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
    return [
        (UInt8(ascii: "Q"), Array("SELECT 1\0".utf8)),
        (UInt8(ascii: "S"), []),
        (UInt8(ascii: "P"), Array("\0SELECT $1\0\0\0".utf8)),
        (UInt8(ascii: "d"), big),
        (UInt8(ascii: "H"), []),
        (UInt8(ascii: "Z"), [UInt8(ascii: "I")]),
        (UInt8(ascii: "D"), Array(repeating: 0xAB, count: 4000)),
        (UInt8(ascii: "X"), []),
        (UInt8(ascii: "p"), Array("secret\0".utf8)),
        (UInt8(ascii: "C"), Array("SELECT 1\0".utf8)),
        (UInt8(ascii: "S"), []),
    ]
}()


private let stream = encode(messages)

/// Offsets in `stream` where a message ends (and the next begins), excluding 0.
private let boundaries: Set<Int> = {
    var set: Set<Int> = []
    var offset = 0
    for (_, body) in messages {
        offset += 5 + body.count
        set.insert(offset)
    }
    return set
}()

/// Captures Q, Z, p, S and d (the 100 KB body, so assembly across reads is exercised); not P, H, D, X, C.
private let captured = MessageIDSet([
    UInt8(ascii: "Q"), UInt8(ascii: "Z"), UInt8(ascii: "p"), UInt8(ascii: "S"), UInt8(ascii: "d"),
])

private func expectedEvents(_ messages: [(UInt8, [UInt8])], capturing ids: MessageIDSet) -> [Event] {
    messages.map { Event(id: $0.0, body: ids.contains($0.0) ? $0.1 : nil) }
}

/// A buffer holding `bytes` behind `junk` already-read bytes, so absolute offsets differ from relative ones.
private func chunkBuffer(_ bytes: ArraySlice<UInt8>, junk: Int = 0) -> ByteBuffer {
    var buffer = allocator.buffer(capacity: junk + bytes.count)
    buffer.writeBytes(Array(repeating: 0xEE, count: junk))
    buffer.writeBytes(bytes)
    buffer.moveReaderIndex(forwardBy: junk)
    return buffer
}

/// Feeds `stream` cut at `cuts` (sorted offsets) and records events; checks `isAtMessageBoundary` after each read.
private func feed(
    _ bytes: [UInt8], cuts: [Int], capturing ids: MessageIDSet = captured, junk: Int = 0,
    stopEveryMessage: Bool = false, sourceLocation: SourceLocation = #_sourceLocation
) throws -> [Event] {
    var scanner = FrameScanner(capturedIDs: ids)
    var events: [Event] = []
    var start = 0
    for end in cuts + [bytes.count] {
        let chunk = chunkBuffer(bytes[start..<end], junk: junk)
        if stopEveryMessage {
            var from = chunk.readerIndex
            while let stoppedAt = try scanner.scan(chunk, from: from, { id, body in
                events.append(Event(id: id, body: body.map { Array($0.readableBytesView) }))
                return false
            }) {
                // Stopped right after a message: the absolute offset maps to a message boundary of the stream.
                #expect(stoppedAt > from, sourceLocation: sourceLocation)
                #expect(boundaries.contains(start + stoppedAt - chunk.readerIndex), sourceLocation: sourceLocation)
                #expect(scanner.isAtMessageBoundary, sourceLocation: sourceLocation)
                from = stoppedAt
            }
        } else {
            let result = try scanner.scan(chunk) { id, body in
                events.append(Event(id: id, body: body.map { Array($0.readableBytesView) }))
                return true
            }
            #expect(result == nil, sourceLocation: sourceLocation)
        }
        #expect(
            scanner.isAtMessageBoundary == boundaries.contains(end), "after read ending at \(end)",
            sourceLocation: sourceLocation)
        start = end
    }
    return events
}


@Suite struct FrameScannerTests {
    private let expected = expectedEvents(messages, capturing: captured)

    @Test func wholeStreamAtOnce() throws {
        let events = try feed(stream, cuts: [])
        #expect(events == expected)
        #expect(events.count == messages.count)
        // Empty captured body is an empty buffer, not nil.
        #expect(events[1] == Event(id: UInt8(ascii: "S"), body: []))
        #expect(events[3].body?.count == 100 * 1024)
    }

    @Test func wholeStreamWithReaderIndexAfterJunk() throws {
        #expect(try feed(stream, cuts: [], junk: 13) == expected)
    }

    @Test func captureNothingAndEverything() throws {
        #expect(try feed(stream, cuts: [], capturing: MessageIDSet()) == expectedEvents(messages, capturing: MessageIDSet()))
        #expect(try feed(stream, cuts: [], capturing: .all) == expectedEvents(messages, capturing: .all))
        #expect(try feed(stream, cuts: [7, 100, 5000], capturing: .all) == expectedEvents(messages, capturing: .all))
    }

    @Test func byteByByte() throws {
        let events = try feed(stream, cuts: Array(1..<stream.count))
        #expect(events == expected)
    }

    @Test(arguments: 0..<40)
    func randomSplits(seed: Int) throws {
        // Small pieces for some seeds (many headers split), large for others (bodies spanning reads).
        let maxPiece = [3, 17, 257, 9000][seed % 4]
        let cuts = randomCuts(seed: UInt64(seed) &+ 0xC0FFEE, count: stream.count, maxPiece: maxPiece)
        #expect(try feed(stream, cuts: cuts, junk: seed % 3) == expected, "seed \(seed)")
    }

    @Test(arguments: 0..<10)
    func randomSplitsStoppingAfterEveryMessage(seed: Int) throws {
        let maxPiece = [5, 300, 20000][seed % 3]
        let cuts = randomCuts(seed: UInt64(seed) &+ 77, count: stream.count, maxPiece: maxPiece)
        #expect(try feed(stream, cuts: cuts, junk: 5, stopEveryMessage: true) == expected, "seed \(seed)")
    }

    @Test func stopAtEveryMessageInOneRead() throws {
        #expect(try feed(stream, cuts: [], junk: 9, stopEveryMessage: true) == expected)
    }

    @Test func stopReturnsOffsetRightAfterThatMessageAndResumes() throws {
        let buffer = chunkBuffer(stream[...], junk: 20)
        var scanner = FrameScanner(capturedIDs: captured)
        var seen: [Event] = []
        // Stop after the third message (P).
        let stop = try scanner.scan(buffer) { id, body in
            seen.append(Event(id: id, body: body.map { Array($0.readableBytesView) }))
            return seen.count < 3
        }
        let expectedStop = 20 + 5 + messages[0].1.count + 5 + messages[1].1.count + 5 + messages[2].1.count
        #expect(stop == expectedStop)
        #expect(seen == Array(expected.prefix(3)))
        #expect(scanner.isAtMessageBoundary)

        let rest = try scanner.scan(buffer, from: try #require(stop)) { id, body in
            seen.append(Event(id: id, body: body.map { Array($0.readableBytesView) }))
            return true
        }
        #expect(rest == nil)
        #expect(seen == expected)
    }

    @Test func stopOnMessageCompletedFromAnEarlierRead() throws {
        // The 100 KB 'd' body starts in the first read and finishes in the second, followed by more messages.
        let dStart = 5 + messages[0].1.count + 5 + 5 + messages[2].1.count
        let dEnd = dStart + 5 + messages[3].1.count
        let cut = dStart + 1000
        var scanner = FrameScanner(capturedIDs: captured)
        var seen: [Event] = []
        let first = chunkBuffer(stream[..<cut])
        #expect(try scanner.scan(first) { id, body in
            seen.append(Event(id: id, body: body.map { Array($0.readableBytesView) }))
            return true
        } == nil)
        #expect(!scanner.isAtMessageBoundary)
        let second = chunkBuffer(stream[cut...], junk: 3)
        let stop = try scanner.scan(second) { id, body in
            seen.append(Event(id: id, body: body.map { Array($0.readableBytesView) }))
            return id != UInt8(ascii: "d")
        }
        #expect(stop == 3 + (dEnd - cut))
        #expect(seen.last == Event(id: UInt8(ascii: "d"), body: messages[3].1))
        #expect(scanner.isAtMessageBoundary)
        _ = try scanner.scan(second, from: try #require(stop)) { id, body in
            seen.append(Event(id: id, body: body.map { Array($0.readableBytesView) }))
            return true
        }
        #expect(seen == expected)
    }

    @Test func stopOnLastMessageReturnsEndAndResumingFromThereDoesNothing() throws {
        let buffer = chunkBuffer(stream[...])
        var scanner = FrameScanner()
        var count = 0
        let stop = try scanner.scan(buffer) { _, _ in
            count += 1
            return count < messages.count
        }
        #expect(stop == buffer.writerIndex)
        var more = 0
        #expect(try scanner.scan(buffer, from: buffer.writerIndex) { _, _ in more += 1; return true } == nil)
        #expect(more == 0)
    }

    @Test func emptyBufferYieldsNothing() throws {
        var scanner = FrameScanner()
        var calls = 0
        #expect(try scanner.scan(allocator.buffer(capacity: 0)) { _, _ in calls += 1; return true } == nil)
        #expect(calls == 0)
        #expect(scanner.isAtMessageBoundary)
    }

    @Test func headerSplitAtEveryPosition() throws {
        // Two messages; cut once anywhere in the first header, the first body, or the second header.
        let pair: [(UInt8, [UInt8])] = [(UInt8(ascii: "Q"), Array("SELECT 42\0".utf8)), (UInt8(ascii: "S"), [])]
        let bytes = encode(pair)
        let wanted = expectedEvents(pair, capturing: .all)
        for cut in 1..<bytes.count {
            var scanner = FrameScanner(capturedIDs: .all)
            var events: [Event] = []
            for piece in [bytes[..<cut], bytes[cut...]] {
                _ = try scanner.scan(chunkBuffer(piece, junk: 2)) { id, body in
                    events.append(Event(id: id, body: body.map { Array($0.readableBytesView) }))
                    return true
                }
                if piece.endIndex == cut {
                    #expect(scanner.isAtMessageBoundary == (cut == 15), "cut \(cut)")
                }
            }
            #expect(events == wanted, "cut \(cut)")
            #expect(scanner.isAtMessageBoundary)
        }
    }

    @Test func headerSplitIntoThreeReads() throws {
        let bytes = encode([(UInt8(ascii: "Z"), [UInt8(ascii: "T")])])
        for a in 1..<5 {
            for b in (a + 1)..<6 {
                var scanner = FrameScanner(capturedIDs: .all)
                var events: [Event] = []
                for piece in [bytes[..<a], bytes[a..<b], bytes[b...]] {
                    _ = try scanner.scan(chunkBuffer(piece)) { id, body in
                        events.append(Event(id: id, body: body.map { Array($0.readableBytesView) }))
                        return true
                    }
                }
                #expect(events == [Event(id: UInt8(ascii: "Z"), body: [UInt8(ascii: "T")])], "cuts \(a), \(b)")
            }
        }
    }

    // MARK: Invalid lengths

    private func header(_ id: UInt8, _ length: UInt32) -> [UInt8] {
        [id, UInt8(length >> 24), UInt8(truncatingIfNeeded: length >> 16), UInt8(truncatingIfNeeded: length >> 8),
         UInt8(truncatingIfNeeded: length)]
    }

    private func scanError(_ bytes: [UInt8], max: Int = Int(Int32.max), cut: Int? = nil) -> WireError? {
        var scanner = FrameScanner(maxMessageLength: max)
        do {
            if let cut {
                _ = try scanner.scan(chunkBuffer(bytes[..<cut])) { _, _ in true }
                _ = try scanner.scan(chunkBuffer(bytes[cut...])) { _, _ in true }
            } else {
                _ = try scanner.scan(chunkBuffer(bytes[...])) { _, _ in true }
            }
            return nil
        } catch let error as WireError {
            return error
        } catch {
            return nil
        }
    }

    @Test(arguments: [0, 1, 2, 3] as [UInt32])
    func lengthBelowFourThrows(length: UInt32) {
        let bytes = header(UInt8(ascii: "Q"), length) + [0, 0, 0, 0]
        #expect(scanError(bytes) == .invalidLength(Int(length)))
        for cut in 1..<5 {
            #expect(scanError(bytes, cut: cut) == .invalidLength(Int(length)), "cut \(cut)")
        }
    }

    @Test func lengthFourIsAnEmptyMessage() throws {
        var scanner = FrameScanner(capturedIDs: .all)
        var events: [Event] = []
        _ = try scanner.scan(chunkBuffer(header(UInt8(ascii: "S"), 4)[...])) { id, body in
            events.append(Event(id: id, body: body.map { Array($0.readableBytesView) }))
            return true
        }
        #expect(events == [Event(id: UInt8(ascii: "S"), body: [])])
    }

    @Test func negativeLengthsThrowInvalidLength() {
        // A "4 GB" header reads as a negative Int32.
        #expect(scanError(header(UInt8(ascii: "d"), 0xFFFF_FFFF)) == .invalidLength(-1))
        #expect(scanError(header(UInt8(ascii: "d"), 0x8000_0000)) == .invalidLength(Int(Int32.min)))
        for cut in 1..<5 {
            #expect(scanError(header(UInt8(ascii: "d"), 0xFFFF_FFFF), cut: cut) == .invalidLength(-1), "cut \(cut)")
        }
    }

    @Test func lengthOverMaximumThrowsTooLarge() {
        #expect(scanError(header(UInt8(ascii: "Q"), 0x7FFF_FFFF), max: 8192) == .messageTooLarge(0x7FFF_FFFF))
        #expect(scanError(header(UInt8(ascii: "Q"), 8193), max: 8192) == .messageTooLarge(8193))
        for cut in 1..<5 {
            #expect(scanError(header(UInt8(ascii: "Q"), 8193), max: 8192, cut: cut) == .messageTooLarge(8193))
        }
        // Exactly the maximum is fine (length counts itself).
        #expect(scanError(header(UInt8(ascii: "Q"), 8192) + Array(repeating: 0, count: 8188), max: 8192) == nil)
    }

    @Test func defaultMaximumAcceptsLargestInt32Header() throws {
        // With the default limit, a 2 GB message is legal: the scanner just waits for its body.
        var scanner = FrameScanner(capturedIDs: .all)
        var calls = 0
        let result = try scanner.scan(chunkBuffer((header(UInt8(ascii: "d"), 0x7FFF_FFFF) + [1, 2, 3])[...])) { _, _ in
            calls += 1
            return true
        }
        #expect(result == nil)
        #expect(calls == 0)
        #expect(!scanner.isAtMessageBoundary)
    }

    @Test func errorAfterValidMessagesReportsThoseFirst() {
        let bytes = encode([(UInt8(ascii: "Q"), Array("x\0".utf8))]) + header(UInt8(ascii: "Q"), 2)
        var scanner = FrameScanner(capturedIDs: .all)
        var ids: [UInt8] = []
        #expect(throws: WireError.invalidLength(2)) {
            _ = try scanner.scan(chunkBuffer(bytes[...])) { id, _ in ids.append(id); return true }
        }
        #expect(ids == [UInt8(ascii: "Q")])
    }

    @Test func messageIDSetMembership() {
        let set = MessageIDSet([0, 63, 64, 127, 128, 191, 192, 255, UInt8(ascii: "Q")])
        for id in 0...255 {
            let expectedMember = [0, 63, 64, 127, 128, 191, 192, 255, 81].contains(id)
            #expect(set.contains(UInt8(id)) == expectedMember, "id \(id)")
            #expect(MessageIDSet.all.contains(UInt8(id)))
            #expect(!MessageIDSet().contains(UInt8(id)))
        }
    }
}

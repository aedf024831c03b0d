import NIOCore
import Testing

@testable import PostgresWire

/// The client stream as the prepared-statement path cuts it: Parse/Bind/Describe/Close whole, the rest raw.
private let stream: [(UInt8, [UInt8])] = [
    (UInt8(ascii: "Q"), Array("SELECT 1\0".utf8)),
    (UInt8(ascii: "P"), Array("s1\0SELECT $1\0\0\u{1}\0\0\0\u{17}".utf8)),
    (UInt8(ascii: "B"), Array("\0s1\0".utf8) + [0, 0, 0, 1, 0, 0, 0, 2] + Array("42".utf8) + [0, 0]),
    (UInt8(ascii: "E"), [0, 0, 0, 0, 0]),
    (UInt8(ascii: "S"), []),
    (UInt8(ascii: "d"), (0..<50_000).map { UInt8(truncatingIfNeeded: $0) }),
    (UInt8(ascii: "c"), []),
    (UInt8(ascii: "D"), Array("Ss1\0".utf8)),
    (UInt8(ascii: "H"), []),
    (UInt8(ascii: "C"), Array("Ss1\0".utf8)),
    (UInt8(ascii: "S"), []),
]
private let wholeIDs: Set<UInt8> = [UInt8(ascii: "P"), UInt8(ascii: "B"), UInt8(ascii: "D"), UInt8(ascii: "C")]

/// What came out of the splitter: the bytes in order (raw and whole alike), the whole messages and every
/// message end.
private struct Output {
    var bytes: [UInt8] = []
    var whole: [[UInt8]] = []
    var ended: [UInt8] = []
}

private func split(_ bytes: [UInt8], cuts: [Int], sourceLocation: SourceLocation = #_sourceLocation) throws -> Output {
    var splitter = MessageSplitter(wholeIDs: MessageIDSet(Array(wholeIDs)))
    var output = Output()
    var start = 0
    for end in cuts + [bytes.count] {
        try splitter.split(ByteBuffer(bytes: bytes[start..<end])) { piece in
            switch piece {
            case .raw(let run):
                output.bytes += Array(run.readableBytesView)
            case .whole(let id, let message):
                output.whole.append(Array(message.readableBytesView))
                // Describe passes in the raw run, Bind has its head replaced, the others are taken and come
                // back in their place.
                switch id {
                case UInt8(ascii: "D"): output.ended.append(id)
                case UInt8(ascii: "B"): return .replaceHead(count: ExtendedQueryMessage.bindHead(message)!.length)
                default:
                    output.ended.append(id)
                    return .take
                }
            case .taken(_, let message):
                output.bytes += Array(message.readableBytesView)
            case .head(_, let head):
                output.bytes += Array(head.readableBytesView)
            case .incomplete:
                return .take
            case .ended(let id):
                output.ended.append(id)
            }
            return .pass
        }
        start = end
    }
    #expect(splitter.isAtMessageBoundary, sourceLocation: sourceLocation)
    return output
}

@Suite struct MessageSplitterTests {
    private let bytes = encode(stream)
    private var expectedWhole: [[UInt8]] { stream.filter { wholeIDs.contains($0.0) }.map { encode([$0]) } }

    private func check(cuts: [Int], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let output = try split(bytes, cuts: cuts, sourceLocation: sourceLocation)
        #expect(output.bytes == bytes, "every byte comes out once, in order", sourceLocation: sourceLocation)
        #expect(output.whole == expectedWhole, sourceLocation: sourceLocation)
        #expect(output.ended == stream.map(\.0), sourceLocation: sourceLocation)
    }

    @Test func wholeStreamAtOnce() throws {
        try check(cuts: [])
    }

    @Test func byteByByte() throws {
        try check(cuts: Array(1..<bytes.count))
    }

    @Test(arguments: 0..<20)
    func randomSplits(seed: Int) throws {
        try check(cuts: randomCuts(seed: UInt64(seed) &+ 4242, count: bytes.count, maxPiece: seed % 2 == 0 ? 7 : 3000))
    }

    /// The 50 KB CopyData streams: a read in its middle yields raw bytes at once, nothing is held.
    @Test func largeRawMessageIsNotHeld() throws {
        let copyStart = encode(Array(stream.prefix(5))).count
        var splitter = MessageSplitter(wholeIDs: MessageIDSet(Array(wholeIDs)))
        try splitter.split(ByteBuffer(bytes: bytes[..<copyStart])) { _ in .take }
        var passed = 0
        try splitter.split(ByteBuffer(bytes: bytes[copyStart..<(copyStart + 20_000)])) { piece in
            if case .raw(let run) = piece { passed += run.readableBytes }
            return .take
        }
        #expect(passed == 20_000)
    }

    /// A whole-kind message the visitor can already pass from its first bytes (a Bind of the unnamed
    /// statement) streams like any other: 1 MB of parameters are never held.
    @Test func incompleteMessageKnownToPassStreams() throws {
        let bind = encode([(UInt8(ascii: "B"), [0, 0] + Array(repeating: 7, count: 1 << 20))])
        for firstRead in [3, 6, 7, 100] {  // header split, names split, names whole, more
            var splitter = MessageSplitter(wholeIDs: MessageIDSet([UInt8(ascii: "B")]))
            var raw: [UInt8] = []
            var ended: [UInt8] = []
            var held = 0
            let visit: (MessageSplitter.Piece) throws -> MessageSplitter.Verdict = { piece in
                switch piece {
                case .raw(let run): raw += Array(run.readableBytesView)
                case .ended(let id): ended.append(id)
                case .incomplete(_, let partial):
                    guard let head = ExtendedQueryMessage.bindHead(partial) else {
                        held += 1
                        return .take
                    }
                    return head.statement.isEmpty ? .pass : .take
                case .whole, .taken, .head: Issue.record("the Bind was held whole")
                }
                return .pass
            }
            try splitter.split(ByteBuffer(bytes: bind[..<firstRead]), visit)
            try splitter.split(ByteBuffer(bytes: bind[firstRead..<(firstRead + 4096)]), visit)
            #expect(raw.count == firstRead + 4096, "streamed as it came (first read \(firstRead))")
            try splitter.split(ByteBuffer(bytes: bind[(firstRead + 4096)...]), visit)
            #expect(raw == bind)
            #expect(ended == [UInt8(ascii: "B")])
            #expect(held == (firstRead == 6 ? 1 : 0), "undecided only while the names are cut")
        }
    }

    /// A Bind of a named statement has only its head rewritten: its parameters stream as they arrive, and
    /// what comes out is the new head followed by the untouched rest.
    @Test func bindOfANamedStatementStreamsAfterItsHead() throws {
        let parameters = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let bind = encode([(UInt8(ascii: "B"), Array("\0stmt\0".utf8) + parameters)])
        let sync = encode([(UInt8(ascii: "S"), [])])
        let headLength = 5 + 1 + 5
        for firstRead in [3, 8, headLength, 100, bind.count + 2] {  // header cut, name cut, head only, more, all
            var splitter = MessageSplitter(wholeIDs: MessageIDSet([UInt8(ascii: "B")]))
            var out: [UInt8] = []
            var heads = 0
            var ended: [UInt8] = []
            let visit: (MessageSplitter.Piece) throws -> MessageSplitter.Verdict = { piece in
                switch piece {
                case .raw(let run): out += Array(run.readableBytesView)
                case .ended(let id): ended.append(id)
                case .head(_, let head):
                    heads += 1
                    #expect(head.readableBytes == headLength)
                    var renamed = ByteBuffer()
                    renamed.writeBindHead(head, renamingStatementTo: "LIFEGUARD_12")
                    out += Array(renamed.readableBytesView)
                case .incomplete(_, let partial), .whole(_, let partial):
                    return ExtendedQueryMessage.bindHead(partial).map { .replaceHead(count: $0.length) } ?? .take
                case .taken: Issue.record("the Bind was held whole")
                }
                return .pass
            }
            let stream = bind + sync
            try splitter.split(ByteBuffer(bytes: stream[..<firstRead]), visit)
            let second = min(stream.count, firstRead + 4096)
            try splitter.split(ByteBuffer(bytes: stream[firstRead..<second]), visit)
            if firstRead < headLength + 4096 {
                #expect(out.count == second + "LIFEGUARD_12".count - "stmt".count, "streamed as it came (first read \(firstRead))")
            }
            try splitter.split(ByteBuffer(bytes: stream[second...]), visit)
            let expected = encode([(UInt8(ascii: "B"), Array("\0LIFEGUARD_12\0".utf8) + parameters)]) + sync
            #expect(out == expected, "first read \(firstRead)")
            #expect(heads == 1)
            #expect(ended == [UInt8(ascii: "B"), UInt8(ascii: "S")])
            #expect(splitter.isAtMessageBoundary)
        }
    }

    @Test func stoppingAtAWholeMessageDropsTheRest() throws {
        var splitter = MessageSplitter(wholeIDs: MessageIDSet([UInt8(ascii: "X")]))
        var seen: [UInt8] = []
        try splitter.split(ByteBuffer(bytes: encode([(UInt8(ascii: "Q"), [0]), (UInt8(ascii: "X"), []), (UInt8(ascii: "Q"), [0])]))) {
            piece in
            switch piece {
            case .whole(let id, _): seen.append(id); return .stop
            case .ended(let id): seen.append(id)
            case .raw, .taken, .incomplete, .head: break
            }
            return .pass
        }
        #expect(seen == [UInt8(ascii: "Q"), UInt8(ascii: "X")])
    }

    @Test func lengthsAreChecked() {
        var splitter = MessageSplitter(wholeIDs: MessageIDSet(), maxMessageLength: 1000)
        #expect(throws: WireError.invalidLength(3)) {
            try splitter.split(ByteBuffer(bytes: [UInt8(ascii: "Q"), 0, 0, 0, 3])) { _ in .pass }
        }
        var bounded = MessageSplitter(wholeIDs: MessageIDSet(), maxMessageLength: 1000)
        #expect(throws: WireError.messageTooLarge(5000)) {
            try bounded.split(ByteBuffer(bytes: [UInt8(ascii: "P"), 0, 0, 0x13, 0x88])) { _ in .pass }
        }
    }
}

@Suite struct ExtendedQueryMessageTests {
    @Test func parseNameAndDefinition() throws {
        let message = ByteBuffer(bytes: encode([stream[1]]))
        let (name, definition) = try #require(ExtendedQueryMessage.parse(message))
        #expect(name == "s1")
        var rebuilt = ByteBuffer()
        rebuilt.writeParse(name: "s1", definition: definition)
        #expect(rebuilt == message)
    }

    @Test func bindHeadIsRenamedKeepingPortalAndLength() throws {
        let message = ByteBuffer(bytes: encode([(UInt8(ascii: "B"), Array("portal\0s1\0".utf8) + [0, 0, 0, 0, 0, 0])]))
        let head = try #require(ExtendedQueryMessage.bindHead(message))
        #expect(head.statement == "s1" && head.length == 5 + 7 + 3)
        #expect(ExtendedQueryMessage.bindHead(message.getSlice(at: 0, length: 14)!) == nil)
        var renamed = ByteBuffer()
        renamed.writeBindHead(message.getSlice(at: 0, length: head.length)!, renamingStatementTo: "LIFEGUARD_7")
        renamed.writeImmutableBuffer(message.getSlice(at: head.length, length: message.readableBytes - head.length)!)
        let expected = encode([(UInt8(ascii: "B"), Array("portal\0LIFEGUARD_7\0".utf8) + [0, 0, 0, 0, 0, 0])])
        #expect(Array(renamed.readableBytesView) == expected)
    }

    @Test func statementReferences() {
        let parse = ByteBuffer(bytes: encode([stream[1]]))
        #expect(ExtendedQueryMessage.statementReference(parse, id: UInt8(ascii: "P")) == .statement("s1"))
        #expect(ExtendedQueryMessage.statementReference(parse.getSlice(at: 0, length: 6)!, id: UInt8(ascii: "P"))
            == .undecided)
        let portal = ByteBuffer(bytes: encode([(UInt8(ascii: "D"), Array("P\0".utf8))]))
        #expect(ExtendedQueryMessage.statementReference(portal, id: UInt8(ascii: "D")) == .portal)
        let unnamed = ByteBuffer(bytes: encode([(UInt8(ascii: "C"), Array("S\0".utf8))]))
        #expect(ExtendedQueryMessage.statementReference(unnamed, id: UInt8(ascii: "C")) == .statement(""))
    }

    @Test func describeAndCloseTargets() throws {
        let describe = ByteBuffer(bytes: encode([stream[7]]))
        let target = try #require(ExtendedQueryMessage.target(describe))
        #expect(target.kind == UInt8(ascii: "S") && target.name == "s1")
        var close = ByteBuffer()
        close.writeCloseStatement(name: "LIFEGUARD_1")
        #expect(Array(close.readableBytesView) == encode([(UInt8(ascii: "C"), Array("SLIFEGUARD_1\0".utf8))]))
    }
}

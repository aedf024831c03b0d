import NIOCore
import PostgresWire

/// ExtendedQueryMessage's readers on any bytes, and the writers that rename statements (long names, Bind
/// length fields up to the largest max_packet_size allows) read back by the same readers.
/// Input: flags, name field, repeat count, length byte, then a message.
func fuzzExtendedQuery(_ data: [UInt8]) {
    var input = FuzzInput(data)
    let flags = input.byte()
    let nameUnit = input.field()
    let repeats = flags & 0x80 != 0 ? input.int(in: 0...65_535) : Int(input.byte() % 4)
    let lengthByte = input.byte()
    var message = input.rest()

    // Up to 64 KB: long enough to matter, short enough to keep executions fast.
    var nameBytes: [UInt8] = []
    if !nameUnit.isEmpty {
        for _ in 0..<min(repeats, 65_536 / nameUnit.count) { nameBytes += nameUnit }
    }
    let name = String(decoding: nameBytes, as: UTF8.self)

    readers(message)

    // A Bind head as the splitter hands it over: 'B', a length field it validated (4 ... Int32.max, at least
    // the head), portal and statement names.
    if flags & 1 != 0, !message.isEmpty { message[0] = FrontendID.bind }
    guard let head = ExtendedQueryMessage.bindHead(ByteBuffer(bytes: message)) else { return }
    var headBytes = Array(message[0..<head.length])
    let minimum = max(4, head.length - 1)
    var length = Int(readInt32(headBytes, at: 1))
    if flags & 2 != 0 {
        length = Int(Int32.max) - Int(lengthByte)
    } else if length < minimum {
        length = minimum + Int(lengthByte)
    }
    length = max(length, minimum)
    withUnsafeBytes(of: Int32(length).bigEndian) { headBytes.replaceSubrange(1..<5, with: $0) }

    let portalEnd = headBytes[5...].firstIndex(of: 0)!
    let oldNameLength = headBytes.count - portalEnd - 2
    let newLength = length - oldNameLength + name.utf8.count
    var out = ByteBuffer()
    let renamed = out.writeBindHead(ByteBuffer(bytes: headBytes), renamingStatementTo: name)
    let fits = headBytes[0] == FrontendID.bind && newLength <= Int(Int32.max)
    check(renamed == fits, "writeBindHead returned \(renamed), new length \(newLength)")
    // ClientSession asks this first, to refuse the client before anything reaches the server.
    let predicted = ExtendedQueryMessage.renamedBindLength(ByteBuffer(bytes: headBytes), statementName: name)
    check(predicted.map(Int.init) == (fits ? newLength : nil), "renamedBindLength \(String(describing: predicted))")
    guard fits else {
        check(out.readableBytes == 0, "a refused rename wrote bytes")
        return
    }
    let written = out.bytes
    check(written.count == headBytes.count - oldNameLength + name.utf8.count, "renamed head size \(written.count)")
    check(written[0] == FrontendID.bind && Int(readInt32(written, at: 1)) == newLength, "renamed head length field")
    check(written[5...portalEnd] == headBytes[5...portalEnd], "portal name changed")
    if !name.utf8.contains(0) {
        let reread = ExtendedQueryMessage.bindHead(out)
        check(reread?.statement == name && reread?.length == written.count, "renamed head reads back differently")
    }

    // The other writers, read back.
    if !name.utf8.contains(0), message.count < 65_536 {
        let definition = ByteBuffer(bytes: message)
        var parse = ByteBuffer()
        parse.writeParse(name: name, definition: definition)
        let reread = ExtendedQueryMessage.parse(parse)
        check(reread?.name == name && reread?.definition.bytes == message, "Parse round trip")
        check(ExtendedQueryMessage.statementReference(parse, id: FrontendID.parse) == .statement(name), "Parse reference")
        for close in [false, true] {
            var buffer = ByteBuffer()
            if close { buffer.writeCloseStatement(name: name) } else { buffer.writeDescribeStatement(name: name) }
            let target = ExtendedQueryMessage.target(buffer)
            check(target?.kind == ExtendedQueryMessage.statementKind && target?.name == name, "Describe/Close round trip")
            check(ExtendedQueryMessage.statementReference(buffer, id: close ? FrontendID.close : FrontendID.describe)
                  == .statement(name), "Describe/Close reference")
        }
    }
}

/// The readers on arbitrary bytes; their answers must not depend on where the buffer's reader index is.
private func readers(_ message: [UInt8]) {
    let plain = ByteBuffer(bytes: message)
    let shifted = makeRead(message[...], junk: 3)
    let head = ExtendedQueryMessage.bindHead(plain)
    let shiftedHead = ExtendedQueryMessage.bindHead(shifted)
    check(head?.statement == shiftedHead?.statement && head?.length == shiftedHead?.length, "bindHead depends on readerIndex")
    let drops = FrontendMessage.dropsAllStatements(plain)
    check(drops == FrontendMessage.dropsAllStatements(shifted), "dropsAllStatements depends on readerIndex")
    if drops == true { check(readInt32(message, at: 1) <= 84, "dropsAllStatements read a long message") }
    if let head {
        check(head.length >= 7 && head.length <= message.count && message[head.length - 1] == 0, "bindHead length \(head.length)")
    }
    // Parse, Describe and Close are whole messages (five bytes at least) when these are called.
    guard message.count >= 5 else { return }
    let parse = ExtendedQueryMessage.parse(shifted)
    check(parse?.name == ExtendedQueryMessage.parse(plain)?.name, "parse depends on readerIndex")
    let target = ExtendedQueryMessage.target(shifted)
    let parseReference = ExtendedQueryMessage.statementReference(shifted, id: FrontendID.parse)
    check(parseReference == (parse.map { .statement($0.name) } ?? .undecided), "Parse reference and parse disagree")
    let describeReference = ExtendedQueryMessage.statementReference(shifted, id: FrontendID.describe)
    let expected: ExtendedQueryMessage.StatementReference = target.map {
        $0.kind == ExtendedQueryMessage.statementKind ? .statement($0.name) : .portal
    } ?? .undecided
    check(describeReference == expected, "Describe reference and target disagree")
    if let parse { check(parse.definition.readableBytes <= message.count - 6, "Parse definition size") }
}

func readInt32(_ bytes: [UInt8], at index: Int) -> Int32 {
    var raw: UInt32 = 0
    for offset in 0..<4 { raw = raw << 8 | UInt32(bytes[index + offset]) }
    return Int32(bitPattern: raw)
}

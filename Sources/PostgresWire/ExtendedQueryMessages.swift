import NIOCore

/// The extended-query messages a pooler must read and rename to share prepared statements between clients:
/// Parse, Describe and Close taken whole (header included) as MessageSplitter delivers them, and Bind by its
/// head alone, so its parameters can stream.
public enum ExtendedQueryMessage {
    /// Parse: the statement's name and its definition (query text and parameter types: everything after
    /// the name), which identifies the statement whatever a client calls it.
    public static func parse(_ message: ByteBuffer) -> (name: String, definition: ByteBuffer)? {
        var body = message
        body.moveReaderIndex(forwardBy: 5)
        guard let name = body.readNullTerminatedString() else { return nil }
        return (name, body)
    }

    /// Bind: the name of the statement it binds, and the length of the head that ends with that name (type,
    /// length, portal name, statement name). Only the head is needed to rename the statement, so the
    /// parameters after it can stream. Nil until the head is complete.
    public static func bindHead(_ message: ByteBuffer) -> (statement: String, length: Int)? {
        message.withUnsafeReadableBytes { bytes in
            guard bytes.count > 5, let portalEnd = bytes[5...].firstIndex(of: 0),
                let nameEnd = bytes[(portalEnd + 1)...].firstIndex(of: 0)
            else { return nil }
            let name = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[(portalEnd + 1)..<nameEnd]), as: UTF8.self)
            return (name, nameEnd + 1)
        }
    }

    /// The length field of a Bind whose head (as `bindHead` measures it) is renamed to `statementName`, or
    /// nil when the head is malformed or the new length does not fit the Int32 field.
    public static func renamedBindLength(_ head: ByteBuffer, statementName: String) -> Int32? {
        guard head.readableBytes > 6, head.getInteger(at: head.readerIndex, as: UInt8.self) == FrontendID.bind,
            let length = head.getInteger(at: head.readerIndex + 1, as: Int32.self), length >= 4,
            let portalEnd = head.readableBytesView.dropFirst(5).firstIndex(of: 0)
        else { return nil }
        // The old name lies between the portal's terminator and the head's last byte (its terminator).
        let oldNameLength = head.readableBytesView.endIndex - portalEnd - 2
        guard oldNameLength >= 0 else { return nil }
        return Int32(exactly: Int(length) - oldNameLength + statementName.utf8.count)
    }

    /// Describe or Close: `S` (statement) or `P` (portal), and the name.
    public static func target(_ message: ByteBuffer) -> (kind: UInt8, name: String)? {
        var body = message
        body.moveReaderIndex(forwardBy: 5)
        guard let kind = body.readInteger(as: UInt8.self), let name = body.readNullTerminatedString() else {
            return nil
        }
        return (kind, name)
    }

    public static let statementKind = UInt8(ascii: "S")

    /// The statement a Parse, Describe or Close (`id`) refers to (a Bind's is read by `bindHead`): its name, "" for the unnamed
    /// statement, nil for a portal's Describe or Close. `.undecided` when the bytes so far (header included)
    /// do not tell yet.
    public enum StatementReference: Equatable {
        case statement(String)
        case portal
        case undecided
    }

    public static func statementReference(_ message: ByteBuffer, id: UInt8) -> StatementReference {
        switch id {
        case FrontendID.parse:
            var body = message
            body.moveReaderIndex(forwardBy: 5)
            return body.readNullTerminatedString().map { .statement($0) } ?? .undecided
        default:
            guard let (kind, name) = target(message) else { return .undecided }
            return kind == statementKind ? .statement(name) : .portal
        }
    }
}

extension ByteBuffer {
    /// Parse of `definition` (query text and parameter types, as `ExtendedQueryMessage.parse` returns them)
    /// under the statement name `name`.
    public mutating func writeParse(name: String, definition: ByteBuffer) {
        writeMessage(FrontendID.parse) {
            $0.writeNullTerminatedString(name)
            $0.writeImmutableBuffer(definition)
        }
    }

    /// The head of a Bind (as `ExtendedQueryMessage.bindHead` measures it) naming `statementName` instead,
    /// its length field adjusted for the whole message: the parameters that follow the head stay as they are.
    /// Returns false, writing nothing, when the head is malformed or the renamed message's length would not
    /// fit its Int32 field (a hostile length near 2^31 and a longer name).
    @discardableResult
    public mutating func writeBindHead(_ head: ByteBuffer, renamingStatementTo statementName: String) -> Bool {
        guard let length = ExtendedQueryMessage.renamedBindLength(head, statementName: statementName) else {
            return false
        }
        return head.withUnsafeReadableBytes { bytes in
            guard let portalEnd = bytes[5...].firstIndex(of: 0) else { return false }
            writeInteger(FrontendID.bind)
            writeInteger(length)
            writeBytes(UnsafeRawBufferPointer(rebasing: bytes[5...portalEnd]))
            writeString(statementName)
            writeInteger(UInt8(0))
            return true
        }
    }

    /// Describe of the statement `name`.
    public mutating func writeDescribeStatement(name: String) {
        writeMessage(FrontendID.describe) {
            $0.writeInteger(ExtendedQueryMessage.statementKind)
            $0.writeNullTerminatedString(name)
        }
    }

    /// Close of the statement `name`.
    public mutating func writeCloseStatement(name: String) {
        writeMessage(FrontendID.close) {
            $0.writeInteger(ExtendedQueryMessage.statementKind)
            $0.writeNullTerminatedString(name)
        }
    }

    /// A message with an empty body, such as ParseComplete or CloseComplete.
    public static func emptyMessage(_ id: UInt8) -> ByteBuffer {
        var message = ByteBuffer()
        message.writeInteger(id)
        message.writeInteger(Int32(4))
        return message
    }
}

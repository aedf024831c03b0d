import NIOCore

/// The extended-query messages a pooler must read and rename to share prepared statements between clients:
/// Parse, Bind, Describe and Close, each taken whole (header included) as MessageSplitter delivers them.
public enum ExtendedQueryMessage {
    /// Parse: the statement's name and its definition (query text and parameter types: everything after
    /// the name), which identifies the statement whatever a client calls it.
    public static func parse(_ message: ByteBuffer) -> (name: String, definition: ByteBuffer)? {
        var body = message
        body.moveReaderIndex(forwardBy: 5)
        guard let name = body.readNullTerminatedString() else { return nil }
        return (name, body)
    }

    /// Bind: the name of the statement it binds. Its portal name precedes it.
    public static func bindStatementName(_ message: ByteBuffer) -> String? {
        var body = message
        body.moveReaderIndex(forwardBy: 5)
        guard body.readNullTerminatedString() != nil else { return nil }
        return body.readNullTerminatedString()
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

    /// The statement a Parse, Bind, Describe or Close (`id`) refers to: its name, "" for the unnamed
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
        case FrontendID.bind:
            return bindStatementName(message).map { .statement($0) } ?? .undecided
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

    /// `bind` with its statement name replaced by `statementName`; portal and parameters are copied as they are.
    public mutating func writeBind(_ bind: ByteBuffer, renamingStatementTo statementName: String) {
        var body = bind
        body.moveReaderIndex(forwardBy: 5)
        guard let portal = body.readNullTerminatedString(), body.readNullTerminatedString() != nil else { return }
        writeMessage(FrontendID.bind) {
            $0.writeNullTerminatedString(portal)
            $0.writeNullTerminatedString(statementName)
            $0.writeImmutableBuffer(body)
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

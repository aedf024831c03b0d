import NIOCore

/// Readers for the few message bodies the pooler needs to understand. Each takes the body only (no header).
public enum BackendMessage {
    /// `R`: the authentication code and what follows it.
    public static func authentication(_ body: ByteBuffer) -> (code: Int32, data: ByteBuffer)? {
        var body = body
        guard let code = body.readInteger(as: Int32.self) else { return nil }
        return (code, body)
    }

    /// `S`: name and value.
    public static func parameterStatus(_ body: ByteBuffer) -> (name: String, value: String)? {
        var body = body
        guard let name = body.readNullTerminatedString(), let value = body.readNullTerminatedString() else {
            return nil
        }
        return (name, value)
    }

    /// `K`: process id and secret key.
    public static func backendKeyData(_ body: ByteBuffer) -> (processID: Int32, secretKey: Int32)? {
        var body = body
        guard let pid = body.readInteger(as: Int32.self), let key = body.readInteger(as: Int32.self) else {
            return nil
        }
        return (pid, key)
    }

    /// `Z`: the transaction status.
    /// CommandComplete's tag, such as `SELECT 1` or `DISCARD ALL`.
    public static func commandTag(_ body: ByteBuffer) -> String? {
        var body = body
        return body.readNullTerminatedString()
    }

    public static func readyForQuery(_ body: ByteBuffer) -> TransactionStatus? {
        body.getInteger(at: body.readerIndex, as: UInt8.self).flatMap(TransactionStatus.init(rawValue:))
    }

    /// `E` / `N`: the fields keyed by their one-byte codes (S, V, C, M, ...).
    public static func errorFields(_ body: ByteBuffer) -> [UInt8: String] {
        var body = body
        var fields: [UInt8: String] = [:]
        while let code = body.readInteger(as: UInt8.self), code != 0 {
            guard let value = body.readNullTerminatedString() else { break }
            fields[code] = value
        }
        return fields
    }
}

public enum FrontendMessage {
    /// `p` as SASLInitialResponse: mechanism name and the client-first-message.
    public static func saslInitialResponse(_ body: ByteBuffer) -> (mechanism: String, data: [UInt8])? {
        var body = body
        guard let mechanism = body.readNullTerminatedString(), let length = body.readInteger(as: Int32.self) else {
            return nil
        }
        if length < 0 { return (mechanism, []) }
        guard let data = body.readBytes(length: Int(length)) else { return nil }
        return (mechanism, data)
    }

    /// `p` as PasswordMessage: a null-terminated string.
    public static func password(_ body: ByteBuffer) -> String? {
        var body = body
        return body.readNullTerminatedString()
    }

    /// Moves `buffer` past the whole Flush messages it starts with.
    public static func skipLeadingFlushes(_ buffer: inout ByteBuffer) {
        while buffer.readableBytes >= 5,
            buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == FrontendID.flush,
            buffer.getInteger(at: buffer.readerIndex + 1, as: Int32.self) == 4
        {
            buffer.moveReaderIndex(forwardBy: 5)
        }
    }
}

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

    /// Whether `message` (header included, as MessageSplitter hands it over, maybe still incomplete) is a
    /// Query, or a Parse of the unnamed statement (libpq's pipeline mode sends queries so), whose text drops
    /// every prepared statement of the session, as drivers send it: `DEALLOCATE ALL`, `DEALLOCATE PREPARE
    /// ALL` or `DISCARD ALL`, in any case and spacing, with an optional `;`. Nil while too little of a
    /// short message has arrived to tell.
    public static func dropsAllStatements(_ message: ByteBuffer) -> Bool? {
        let longest = 80
        guard let id = message.getInteger(at: message.readerIndex, as: UInt8.self),
            let length = message.getInteger(at: message.readerIndex + 1, as: Int32.self)
        else { return nil }
        guard Int(length) - 4 <= longest else { return false }
        guard message.readableBytes >= 1 + Int(length) else { return nil }
        return message.withUnsafeReadableBytes { bytes -> Bool in
            var start = 5
            let end = 1 + Int(length)
            if id == FrontendID.parse {
                // The unnamed statement's name is the empty string: its text starts after one zero byte.
                guard start < end, bytes[start] == 0 else { return false }
                start += 1
            }
            // Most queries are told apart by their first letter, without building any string.
            while start < end, bytes[start] <= 0x20, bytes[start] != 0 { start += 1 }
            guard start < end, bytes[start] | 0x20 == UInt8(ascii: "d") else { return false }
            var words: [String] = []
            var word = ""
            for index in start..<end {
                let byte = bytes[index]
                if byte == 0 { break }  // the end of a Parse's query text
                switch byte {
                case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: ";"):
                    if !word.isEmpty { words.append(word) }
                    word = ""
                default:
                    word.unicodeScalars.append(Unicode.Scalar(byte >= 0x61 && byte <= 0x7A ? byte - 0x20 : byte))
                }
            }
            if !word.isEmpty { words.append(word) }
            switch words {
            case ["DEALLOCATE", "ALL"], ["DEALLOCATE", "PREPARE", "ALL"], ["DISCARD", "ALL"]: return true
            default: return false
            }
        }
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

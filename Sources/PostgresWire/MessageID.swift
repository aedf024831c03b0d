/// One-byte message identifiers of the PostgreSQL v3 protocol that the pooler looks at.
/// Everything else is forwarded without being named.
///
/// Computed and inlinable, so that other modules fold them to constants: a stored `static let` is reached
/// through a lazy-initialisation accessor at every use, and the data path compares ids on every message.
public enum FrontendID {
    @inlinable public static var query: UInt8 { UInt8(ascii: "Q") }
    @inlinable public static var parse: UInt8 { UInt8(ascii: "P") }
    @inlinable public static var bind: UInt8 { UInt8(ascii: "B") }
    @inlinable public static var describe: UInt8 { UInt8(ascii: "D") }
    @inlinable public static var execute: UInt8 { UInt8(ascii: "E") }
    @inlinable public static var close: UInt8 { UInt8(ascii: "C") }
    @inlinable public static var sync: UInt8 { UInt8(ascii: "S") }
    @inlinable public static var flush: UInt8 { UInt8(ascii: "H") }
    @inlinable public static var functionCall: UInt8 { UInt8(ascii: "F") }
    @inlinable public static var copyData: UInt8 { UInt8(ascii: "d") }
    @inlinable public static var copyDone: UInt8 { UInt8(ascii: "c") }
    @inlinable public static var copyFail: UInt8 { UInt8(ascii: "f") }
    /// PasswordMessage, SASLInitialResponse and SASLResponse all share this id.
    @inlinable public static var password: UInt8 { UInt8(ascii: "p") }
    @inlinable public static var terminate: UInt8 { UInt8(ascii: "X") }
}

public enum BackendID {
    @inlinable public static var authentication: UInt8 { UInt8(ascii: "R") }
    @inlinable public static var backendKeyData: UInt8 { UInt8(ascii: "K") }
    @inlinable public static var parameterStatus: UInt8 { UInt8(ascii: "S") }
    @inlinable public static var readyForQuery: UInt8 { UInt8(ascii: "Z") }
    @inlinable public static var errorResponse: UInt8 { UInt8(ascii: "E") }
    @inlinable public static var noticeResponse: UInt8 { UInt8(ascii: "N") }
    @inlinable public static var notification: UInt8 { UInt8(ascii: "A") }
    @inlinable public static var commandComplete: UInt8 { UInt8(ascii: "C") }
    @inlinable public static var emptyQueryResponse: UInt8 { UInt8(ascii: "I") }
    @inlinable public static var rowDescription: UInt8 { UInt8(ascii: "T") }
    @inlinable public static var dataRow: UInt8 { UInt8(ascii: "D") }
    @inlinable public static var copyInResponse: UInt8 { UInt8(ascii: "G") }
    @inlinable public static var copyOutResponse: UInt8 { UInt8(ascii: "H") }
    @inlinable public static var copyBothResponse: UInt8 { UInt8(ascii: "W") }
    @inlinable public static var negotiateProtocolVersion: UInt8 { UInt8(ascii: "v") }
    @inlinable public static var parseComplete: UInt8 { UInt8(ascii: "1") }
    @inlinable public static var bindComplete: UInt8 { UInt8(ascii: "2") }
    @inlinable public static var closeComplete: UInt8 { UInt8(ascii: "3") }
    @inlinable public static var noData: UInt8 { UInt8(ascii: "n") }
    @inlinable public static var parameterDescription: UInt8 { UInt8(ascii: "t") }
    @inlinable public static var portalSuspended: UInt8 { UInt8(ascii: "s") }
    @inlinable public static var functionCallResponse: UInt8 { UInt8(ascii: "V") }
}

/// Authentication request codes carried in an `R` message.
public enum AuthenticationCode {
    public static let ok: Int32 = 0
    public static let cleartextPassword: Int32 = 3
    public static let md5Password: Int32 = 5
    public static let sasl: Int32 = 10
    public static let saslContinue: Int32 = 11
    public static let saslFinal: Int32 = 12
}

/// Transaction status reported by ReadyForQuery.
public enum TransactionStatus: UInt8, Sendable {
    case idle = 73          // 'I'
    case inTransaction = 84 // 'T'
    case failed = 69        // 'E'
}

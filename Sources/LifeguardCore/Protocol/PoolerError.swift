/// An error Lifeguard itself reports to a client, with PgBouncer's wording and SQLSTATE.
public struct PoolerError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    /// PgBouncer uses 08P01 (protocol violation) for nearly everything it generates itself.
    public var sqlState: String

    public init(_ message: String, sqlState: String = "08P01") {
        self.message = message
        self.sqlState = sqlState
    }

    public var description: String { message }

    public static let maxClientConnections = PoolerError("no more connections allowed (max_client_conn)")
    public static let passwordFailed = PoolerError("password authentication failed")
    public static let saslFailed = PoolerError("SASL authentication failed")
    public static let trustFailed = PoolerError("\"trust\" authentication failed")
    public static let noUsername = PoolerError("no username supplied")
    public static let oldProtocol = PoolerError("old V2 protocol not supported")
    public static let statementModeTransaction = PoolerError(
        "transaction blocks not allowed in statement pooling mode")
    public static let serverCrashed = PoolerError("server conn crashed?")
    public static let badPacket = PoolerError("bad packet header")
    public static let shuttingDown = PoolerError("pooler is shutting down")
    /// SHUTDOWN WAIT_FOR_SERVERS: a client that waits for a server, or would start to.
    public static let serverShuttingDown = PoolerError("server shutting down")
    /// PgBouncer's words (the name is the client's: the log handler escapes what it logs).
    public static func preparedStatementInUse(_ name: String) -> PoolerError {
        PoolerError("prepared statement '\(name)' was already prepared")
    }
    public static let preparedStatementMissing = PoolerError("prepared statement did not exist")
    public static let pqexecDisallowed = PoolerError("PQexec disallowed")
    public static let tooManyPreparedStatements = PoolerError("too many prepared statements for one client")

    public static func noSuchDatabase(_ name: String) -> PoolerError {
        PoolerError("no such database: \(name)")
    }

    public static func unsupportedStartupParameter(_ name: String) -> PoolerError {
        PoolerError("unsupported startup parameter: \(name)")
    }

    /// PostgreSQL's own words for a `replication` value it would not take either.
    public static func invalidReplicationValue(_ value: String) -> PoolerError {
        PoolerError("invalid value for parameter \"replication\": \"\(value)\"", sqlState: "22023")
    }

    public static func unsupportedOptionsParameter(_ name: String) -> PoolerError {
        PoolerError("unsupported startup parameter in options: \(name)")
    }

    public static let unsupportedOptionsSyntax = PoolerError(
        "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed")

    public static func packetTooLarge(_ length: Int) -> PoolerError {
        PoolerError("packet too large: \(length) bytes (max_packet_size)")
    }

    /// A password or SASL message over the small limit that applies before login.
    public static func loginPacketTooLarge(_ length: Int) -> PoolerError {
        PoolerError("login packet too large: \(length) bytes")
    }
}

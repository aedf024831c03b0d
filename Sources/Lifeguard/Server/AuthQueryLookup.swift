import LifeguardCore
import LifeguardEngine
import NIOCore
import PostgresWire

/// `auth_query`: finds the password of a user missing from auth_file by asking PostgreSQL. It logs in to the
/// auth database as `auth_user` on a connection of its own, runs the query with the user name as its one
/// parameter (extended protocol, so no quoting is involved), and closes.
///
/// The answer is PgBouncer's: a row with a password, a row whose password is NULL (the role may not log in,
/// e.g. `VALID UNTIL` passed), or no row (no such user).
final class AuthQueryLookup: ConnectionDelegate {
    enum Outcome {
        case found(PasswordSecret)
        case passwordIsNull
        case noSuchUser
        /// Connecting or logging in to the auth database failed (the server's error when it sent one).
        case loginFailed(PoolerError)
        /// The query itself failed or timed out.
        case queryFailed(PoolerError)
    }

    /// Password lookups wait no longer than this (seconds) for the auth database.
    static let timeout = 15.0

    /// The auth pool, which also bounds how many lookups run at once.
    let pool: Pool
    private let query: String
    private let user: String
    /// False once the client that asked has gone: a lookup still queued is then dropped unrun.
    let isWanted: () -> Bool
    private var completion: ((Outcome) -> Void)?
    private var connection: Connection?
    private var authentication: ServerAuthentication
    private var scanner = FrameScanner(capturedIDs: .all, maxMessageLength: 1 << 20)
    private var queried = false
    private var row: String??
    private var timer: EngineLoop.TimerID?

    /// `pool` is the auth database's pool for `auth_user`: its address and login credentials.
    init(
        pool: Pool, query: String, user: String, isWanted: @escaping () -> Bool,
        completion: @escaping (Outcome) -> Void
    ) {
        self.pool = pool
        self.query = query
        self.user = user
        self.isWanted = isWanted
        self.completion = completion
        self.authentication = ServerAuthentication(
            user: pool.key.user, secret: pool.serverSecret, scramKeys: nil, random: pool.shard.randomBytes)
    }

    /// Called by the pool when a lookup slot is free (Pool.runAuthLookup).
    func start() {
        let loop = pool.shard.loop
        timer = loop.schedule(after: Self.timeout) { [self] in
            timer = nil
            finish(.queryFailed(PoolerError("auth query timed out")))
        }
        pool.nextServerAddress().resolve(with: pool.shard.resolver) { [self] result in
            guard completion != nil else { return }
            do {
                guard let address = try result.get().first else { throw PoolerError("no address") }
                connection = try Connection.connect(to: address, options: [], on: loop, delegate: self)
            } catch {
                finish(.loginFailed(PoolerError("server connection failed: \(error)")))
            }
        }
    }

    // MARK: Connection events

    func connectionConnected(_ connection: Connection) {
        let database = pool.database
        var packet = ByteBufferAllocator().buffer(capacity: 96)
        packet.writeStartupMessage(parameters: [
            ("user", pool.key.user), ("database", database.dbname ?? pool.key.database),
        ])
        connection.writeAndFlush(packet)
    }

    func connectionFailed(_ connection: Connection, error: SocketError) {
        finish(.loginFailed(PoolerError("server connection failed: \(error)")))
    }

    func connectionRead(_ connection: Connection, _ bytes: ByteBuffer) {
        do {
            _ = try scanner.scan(bytes) { id, body in
                guard let body, completion != nil else { return false }
                try receive(id, body)
                return completion != nil
            }
        } catch let error as PoolerError {
            finish(queried ? .queryFailed(error) : .loginFailed(error))
        } catch {
            finish(.queryFailed(PoolerError("auth query: bad packet from the server: \(error)")))
        }
    }

    func connectionReadComplete(_ connection: Connection) {}

    func connectionClosed(_ connection: Connection, error: SocketError?) {
        self.connection = nil
        let error = PoolerError("server closed the connection during the auth query")
        finish(queried ? .queryFailed(error) : .loginFailed(error))
    }

    // MARK: Protocol

    private func receive(_ id: UInt8, _ body: ByteBuffer) throws {
        switch id {
        case BackendID.authentication:
            guard !queried, let (code, data) = BackendMessage.authentication(body) else {
                throw PoolerError("auth query: unexpected authentication message")
            }
            var reply = ByteBuffer()
            switch try authentication.receive(code: code, data: data, into: &reply) {
            case .authenticated:
                break
            case .continueLogin:
                if reply.readableBytes > 0 { connection?.writeAndFlush(reply) }
            case .deriveSaltedPassword(let request):
                pool.shard.loop.offload({ request.derive() }) { [self] salted in
                    guard let connection, completion != nil else { return }
                    var reply = ByteBuffer()
                    authentication.receiveSaltedPassword(salted, into: &reply)
                    connection.writeAndFlush(reply)
                }
            }
        case BackendID.errorResponse:
            let fields = BackendMessage.errorFields(body)
            if !queried {
                // PgBouncer's line for a refused login, which log watchers match.
                let severity = fields[UInt8(ascii: "V")] ?? fields[UInt8(ascii: "S")] ?? "ERROR"
                pool.logger.warning(
                    "S-\(pointerText(self)): \(pool.logPrefix) server login failed: \(severity) \(fields[UInt8(ascii: "M")] ?? "")")
            }
            throw PoolerError(fields[UInt8(ascii: "M")] ?? "server error", sqlState: fields[UInt8(ascii: "C")] ?? "08P01")
        case BackendID.dataRow:
            row = Self.password(inRow: body)
        case BackendID.readyForQuery:
            if queried {
                switch row {
                case nil: finish(.noSuchUser)
                case .some(nil): finish(.passwordIsNull)
                case .some(.some(let password)): finish(.found(PasswordSecret(parsing: password)))
                }
            } else {
                queried = true
                connection?.writeAndFlush(queryMessages())
            }
        default:
            break  // ParameterStatus, BackendKeyData, ParseComplete, BindComplete, CommandComplete, notices
        }
    }

    /// Parse, Bind with the user name, Execute, Sync.
    private func queryMessages() -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: query.utf8.count + user.utf8.count + 64)
        buffer.writeMessage(FrontendID.parse) {
            $0.writeNullTerminatedString("")
            $0.writeNullTerminatedString(query)
            $0.writeInteger(Int16(0))
        }
        buffer.writeMessage(FrontendID.bind) {
            $0.writeNullTerminatedString("")
            $0.writeNullTerminatedString("")
            $0.writeInteger(Int16(0))
            $0.writeInteger(Int16(1))
            $0.writeInteger(Int32(user.utf8.count))
            $0.writeString(user)
            $0.writeInteger(Int16(0))
        }
        buffer.writeMessage(FrontendID.execute) {
            $0.writeNullTerminatedString("")
            $0.writeInteger(Int32(0))
        }
        buffer.writeMessage(FrontendID.sync) { _ in }
        return buffer
    }

    /// The second column of the query's row (user name, password): nil for NULL. Bounds are checked, as the
    /// row comes from the network.
    static func password(inRow body: ByteBuffer) -> String?? {
        var body = body
        guard let columns = body.readInteger(as: Int16.self), columns >= 2,
            let firstLength = body.readInteger(as: Int32.self)
        else { return .none }
        if firstLength > 0 { guard body.readSlice(length: Int(firstLength)) != nil else { return .none } }
        guard let length = body.readInteger(as: Int32.self) else { return .none }
        if length < 0 { return .some(nil) }
        guard let password = body.readString(length: Int(length)) else { return .none }
        return .some(password)
    }

    private func finish(_ outcome: Outcome) {
        guard let completion else { return }
        self.completion = nil
        pool.authLookupFinished()
        if let timer { pool.shard.loop.cancel(timer) }
        timer = nil
        if let connection {
            var terminate = ByteBuffer()
            terminate.writeMessage(FrontendID.terminate) { _ in }
            connection.writeAndFlush(terminate)
            connection.close()
        }
        completion(outcome)
    }
}

import LifeguardCore
import LifeguardEngine
import Logging
import NIOCore
import PostgresWire

/// One connection to PostgreSQL: logs in, then carries the transactions of whichever client it is lent to.
///
/// Server-to-client bytes are forwarded as the slices they arrived in; only message headers are read, plus
/// the bodies of ReadyForQuery (it decides when the server is free again), ParameterStatus (it keeps the
/// client's tracked settings current) and ErrorResponse.
final class ServerConnection: ConnectionDelegate {
    /// The pool (this thread's part of it) the server serves; it changes when the server moves to another
    /// thread.
    private(set) var pool: Pool
    /// The lifecycle: login, idle, syncing a client's parameters, linked, reset or check, closed.
    private var machine = ServerStateMachine<ClientSession>()
    /// Nil until the address is resolved and the connect started.
    private var connection: Connection?
    private var scanner: FrameScanner
    private var authentication: ServerAuthentication
    private var closeReason: String?
    private var clientNeedsFlush = false
    let connectedAt = NIODeadline.now()

    /// Every ParameterStatus of the login, in order: the welcome the pool replays to its clients.
    private(set) var reportedParameters: [(String, String)] = []
    /// Current values of the tracked parameters on this server.
    private(set) var parameters = ParameterSet()
    private(set) var backendKey: (processID: Int32, secretKey: Int32)?
    let address: ServerAddress
    /// For SHOW SERVERS: the connection's id, and wall-clock seconds of its connect and its latest read.
    let id: Int
    let connectTime = WallClock.seconds()
    private(set) var requestTime = WallClock.seconds()
    /// Set by RECONNECT or a RELOAD that changed the database: closed when next released.
    var closeNeeded = false
    /// Cancel requests on their way to this server, and whether it waits for them before serving again.
    private(set) var cancelsInFlight = 0
    private var parkedForCancel = false

    /// Message bodies read while linked. Not ErrorResponse: it goes to the client as it streams, so a
    /// huge error text is never copied.
    private static let linkedCapturedIDs = MessageIDSet([BackendID.readyForQuery, BackendID.parameterStatus])
    /// While statements are shared, CommandComplete too: its tag tells what SQL did to prepared statements.
    private static let sharingCapturedIDs = MessageIDSet([
        BackendID.readyForQuery, BackendID.parameterStatus, BackendID.commandComplete,
    ])
    /// An idle server's error is read for the log line that closes it.
    private static let idleCapturedIDs = MessageIDSet([
        BackendID.readyForQuery, BackendID.parameterStatus, BackendID.errorResponse,
    ])

    /// While a client shares prepared statements: the requests this server still owes replies for, and the
    /// shared statements prepared on it (made on first use).
    private let replies = ReplyQueue()
    private var statementCache: ServerStatementCache?
    private static let parseComplete = ByteBuffer.emptyMessage(BackendID.parseComplete)
    private static let closeComplete = ByteBuffer.emptyMessage(BackendID.closeComplete)
    private static let flushMessage = ByteBuffer.emptyMessage(FrontendID.flush)

    /// The encoded reply Lifeguard gives in the server's place: ParseComplete or CloseComplete.
    private static func emptyReply(_ id: UInt8) -> ByteBuffer {
        id == BackendID.parseComplete ? parseComplete : closeComplete
    }

    /// False until the first client gets the server: `server_lifetime` (0: use each server once) is
    /// checked when a client is done with it, never on its way to the first client.
    private(set) var hasServedAClient = false

    /// A replication server: opened for one replication client, with its startup parameters; it greets
    /// that client, serves it alone and closes when it leaves.
    struct Replication {
        let mode: ReplicationMode
        /// The client's own startup parameters and its `options`, for the server's startup packet.
        let parameters: [(String, String)]
        weak var client: ClientSession?
    }

    private(set) var replication: Replication?

    private init(pool: Pool, replicationClient: ClientSession?) {
        self.pool = pool
        self.replication = replicationClient.map {
            Replication(mode: $0.replication, parameters: $0.replicationStartupParameters, client: $0)
        }
        self.address = pool.nextServerAddress()
        self.scanner = FrameScanner(capturedIDs: .all, maxMessageLength: Int(Int32.max))
        self.id = pool.shard.nextConnectionID()
        self.authentication = ServerAuthentication(
            user: pool.key.user, secret: pool.serverSecret, scramKeys: pool.scramPassThroughKeys)
    }

    /// PgBouncer's `S-0x...: db/user@host:port` prefix of every log line about this server.
    private var logPrefix: String {
        "S-\(pointerText(self)): \(pool.logPrefix)@\(address)"
    }

    /// Opens a new server connection for `pool` (a replication server when `replicationClient` is given);
    /// the pool hears back through `serverLoggedIn`, `serverLoginFailed` and `serverClosed`.
    static func launch(for pool: Pool, replicationClient: ClientSession? = nil) {
        let server = ServerConnection(pool: pool, replicationClient: replicationClient)
        pool.shard.register(server)
        server.address.resolve(with: pool.shard.resolver) { result in
            switch result {
            case .success(let addresses): server.connect(to: addresses[...])
            case .failure(let error): server.connectFailed(reason: "server DNS lookup failed: \(error)")
            }
        }
    }

    /// Like libpq, tries each address of the name in turn until one connects.
    private func connect(to addresses: ArraySlice<SocketAddress>) {
        // The pool may have given up on this server while its name was being resolved.
        guard case .connecting = machine.state, let address = addresses.first else { return }
        remainingAddresses = addresses.dropFirst()
        let options = address.protocol == .unix ? [] : TCPTuning.connectionOptions(pool.shard.settings)
        do {
            connection = try Connection.connect(to: address, options: options, on: pool.shard.loop, delegate: self)
        } catch {
            tryNextAddress(after: error)
        }
    }

    /// A connect failed, at once or later: the next address, or the pool hears that none worked.
    private func tryNextAddress(after error: Error) {
        if remainingAddresses.isEmpty {
            connectFailed(reason: "connect failed", cause: error)
        } else {
            connect(to: remainingAddresses)
        }
    }

    /// Addresses still to try should the current connect fail.
    private var remainingAddresses: ArraySlice<SocketAddress> = []

    private var logger: Logger { pool.logger }

    // MARK: Connection events

    func connectionConnected(_ connection: Connection) {
        remainingAddresses = []
        machine.connected()
        if pool.shard.settings.logConnections, let local = connection.localAddress {
            // PgBouncer's form: IPv6 addresses in brackets.
            let ip = local.ipAddress.map { $0.contains(":") ? "[\($0)]" : $0 } ?? "unix"
            logger.info("\(logPrefix) new connection to server (from \(ip):\(local.port ?? 0))")
        }
        // As PgBouncer, TLS is asked for over TCP only: a Unix socket is local already.
        if case .tcp = address, pool.shard.settings.serverTLS.sslMode != .disable {
            awaitingTLSAnswer = true
            var request = ByteBuffer()
            request.writeSSLRequest()
            connection.writeAndFlush(request)
            return
        }
        sendStartup(on: connection)
    }

    /// Set between the SSLRequest and PostgreSQL's one-byte answer.
    private var awaitingTLSAnswer = false

    /// PostgreSQL answered the SSLRequest: `S` starts TLS (the startup packet follows the handshake), `N`
    /// goes on in plain text unless `server_tls_sslmode` requires TLS.
    private func receiveTLSAnswer(_ buffer: ByteBuffer, on connection: Connection) {
        awaitingTLSAnswer = false
        let mode = pool.shard.settings.serverTLS.sslMode
        // Bytes after the answer, before any handshake, cannot be trusted to come from the server
        // (CVE-2021-23222).
        guard buffer.readableBytes == 1, let answer = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else {
            _ = failLogin("server sent unencrypted data after its SSL answer")
            return
        }
        switch answer {
        case UInt8(ascii: "S"):
            guard let context = pool.shard.serverTLS, case .tcp(let host, _) = address else {
                _ = failLogin("server TLS setup failed")
                return
            }
            do {
                try connection.startTLS(TLSSession(context: context, serverName: host, verifyHost: mode == .verifyFull))
            } catch {
                close(reason: "TLS: \(error)")
                return
            }
            sendStartup(on: connection)
        case UInt8(ascii: "N") where mode < .require:
            sendStartup(on: connection)
        case UInt8(ascii: "N"):
            _ = failLogin("server refused SSL")
        default:
            _ = failLogin("server sent a bad SSL answer")
        }
    }

    /// The negotiated TLS version and cipher of the connection to PostgreSQL (SHOW SERVERS `tls`).
    var tlsSummary: String? { connection?.tlsSummary }

    private func sendStartup(on connection: Connection) {
        let database = pool.database
        var startup: [(String, String)] = [
            ("user", pool.key.user), ("database", database.dbname ?? pool.key.database),
        ]
        if let value = database.clientEncoding { startup.append(("client_encoding", value)) }
        if let value = database.datestyle { startup.append(("datestyle", value)) }
        if let value = database.timezone { startup.append(("timezone", value)) }
        if let value = database.applicationName { startup.append(("application_name", value)) }
        if let replication, let value = replication.mode.parameterValue {
            // The client's own values win over the database's.
            let clientNames = Set(replication.parameters.map { $0.0.lowercased() })
            startup.removeAll { $0.0 != "user" && $0.0 != "database" && clientNames.contains($0.0.lowercased()) }
            startup.append(("replication", value))
            startup += replication.parameters
        }
        var packet = ByteBufferAllocator().buffer(capacity: 128)
        packet.writeStartupMessage(parameters: startup)
        connection.writeAndFlush(packet)
    }

    func connectionFailed(_ connection: Connection, error: SocketError) {
        tryNextAddress(after: error)
    }

    /// No connection: the pool keeps `reason` (PgBouncer's words first: "connect failed", "server DNS lookup
    /// failed") as the error new clients get during `server_login_retry`; the log line gives the cause too.
    private func connectFailed(reason: String, cause: Error? = nil) {
        guard machine.connectFailed() else { return }
        pool.serverAddressFailed(address)
        let detail = cause.map { " (\($0))" } ?? ""
        logger.warning("\(logPrefix) closing because: \(reason)\(detail) (age=\(ageSeconds)s)")
        reportLoginFailure(PoolerError(reason), failsWaitingClients: false)
        pool.serverClosed(self, duringLogin: true)
    }

    func connectionRead(_ connection: Connection, _ buffer: ByteBuffer) {
        requestTime = pool.shard.clockSeconds
        if awaitingTLSAnswer { return receiveTLSAnswer(buffer, on: connection) }
        do {
            try receive(buffer)
        } catch let error as WireError {
            close(reason: "server sent a bad packet: \(error)")
        } catch {
            close(reason: "\(error)")
        }
    }

    func connectionReadComplete(_ connection: Connection) {
        if clientNeedsFlush {
            clientNeedsFlush = false
            if case .linked(let client) = machine.state { client.flushToClient() }
        }
        if flushRequested, !owesTooManyReplies {
            flushRequested = false
            if case .linked(let client) = machine.state { client.resumeReads() }
        }
        if shouldHoldReads { connection.readsHeld = true }
    }

    func connectionClosed(_ connection: Connection, error: SocketError?) {
        if closeReason == nil, let error { closeReason = "server socket error: \(error)" }
        let reason = closeReason ?? (pool.shard.isShuttingDown ? "pooler is shutting down" : "server conn crashed?")
        if pool.shard.settings.logDisconnections {
            logger.info("\(logPrefix) closing because: \(reason) (age=\(ageSeconds)s)")
        }
        switch machine.closed() {
        case .duringLogin:
            if closeReason == nil || replication != nil {
                reportLoginFailure(PoolerError("server conn crashed?"), failsWaitingClients: false)
            }
            pool.serverClosed(self, duringLogin: true)
        case .whileLinked(let client):
            client.serverClosed(reason: reason)
            pool.serverClosed(self, duringLogin: false)
        case .whileIdle:
            pool.serverClosed(self, duringLogin: false)
        case .duringCheck(let client):
            // The check failed or the server died: the client goes back to the head of the queue.
            pool.serverClosed(self, duringLogin: false)
            pool.requeueFirst(client)
        case .alreadyClosed:
            break
        }
    }

    func connectionWritable(_ connection: Connection) {
        if case .linked(let client) = machine.state {
            client.resumeReads()
        }
    }

    /// Reads are held while the linked client cannot take more, so a slow reader never makes Lifeguard
    /// buffer a large result: the server's socket fills and PostgreSQL waits.
    private var shouldHoldReads: Bool {
        if pool.shard.isSuspended { return true }
        if case .linked(let client) = machine.state, !client.isWritable { return true }
        return false
    }

    func resumeReads() {
        guard let connection, connection.readsHeld, !shouldHoldReads else { return }
        connection.readsHeld = false
    }

    var isWritable: Bool { connection?.isWritable ?? false }

    // MARK: Admin console views

    /// PgBouncer's state word for SHOW SERVERS and SHOW POOLS; nil once closed.
    var listState: String? {
        switch machine.state {
        case .connecting, .authenticating, .loggingIn, .runningConnectQuery: return "new"
        case .idle where parkedForCancel:
            return "being_canceled"
        case .idle:
            // PgBouncer lists servers unused for server_check_delay as "used": checked before reuse.
            let settings = pool.shard.settings
            let checked = settings.serverCheckQuery != nil && idleNanoseconds >= Int64(settings.serverCheckDelay * 1e9)
            return checked ? "used" : "idle"
        case .syncingParameters, .linked: return "active"
        case .resetting, .checking: return "tested"
        case .closed: return nil
        }
    }

    var linkedClient: ClientSession? { machine.linkedClient }

    /// Lent to a client (PgBouncer's "active"), its parameters being synced or its traffic flowing.
    var isLinked: Bool { linkedClient != nil }

    var remoteAddress: SocketAddress? { connection?.remoteAddress }
    var localAddress: SocketAddress? { connection?.localAddress }

    private var ageSeconds: Int {
        Int((NIODeadline.now() - connectedAt).nanoseconds / 1_000_000_000)
    }

    // MARK: Messages from the server

    private func receive(_ buffer: ByteBuffer) throws {
        switch machine.state {
        case .linked(let client):
            try forward(buffer, to: client)
        default:
            var offset = buffer.readerIndex
            while offset < buffer.writerIndex {
                // A login or internal query step can change the state mid-read: rescan the rest under the new one.
                if case .linked(let client) = machine.state {
                    try forward(buffer.getSlice(at: offset, length: buffer.writerIndex - offset)!, to: client)
                    return
                }
                // Nothing may touch the scanner while it scans, so the bodies it keeps are chosen here.
                scanner.capturedIDs = machine.isIdle ? Self.idleCapturedIDs : .all
                var stateChanged = false
                let stop = try scanner.scan(buffer, from: offset) { id, body in
                    stateChanged = try handleControlMessage(id, body ?? ByteBuffer())
                    return !stateChanged
                }
                guard let stop else { return }
                offset = stop
                if case .closed = machine.state { return }
            }
        }
    }

    /// The hot path: forward the read to the client, stopping only where the transaction ends.
    private func forward(_ buffer: ByteBuffer, to client: ClientSession) throws {
        let sharing = client.sharesStatements
        scanner.capturedIDs = sharing ? Self.sharingCapturedIDs : Self.linkedCapturedIDs
        var decision = TransactionTracker.Decision.keep
        // Where the bytes still to forward begin: replies to Lifeguard's own messages are cut out.
        var runStart = buffer.readerIndex
        let stop = try scanner.scan(buffer, from: buffer.readerIndex) { id, body, end, length in
            if sharing {
                runStart = followReply(id, body, end: end, length: length, of: buffer, runStart: runStart, to: client)
            }
            switch id {
            case BackendID.readyForQuery:
                guard let status = body.flatMap(BackendMessage.readyForQuery) else { return true }
                decision = client.serverReady(status)
                return decision == .keep
            case BackendID.parameterStatus:
                if let body, let (name, value) = BackendMessage.parameterStatus(body) {
                    parameters.update(name: name, value: value)
                    client.parameters.update(name: name, value: value)
                }
                return true
            case BackendID.copyInResponse:
                client.serverStartedCopyIn()
                return true
            default:
                return true
            }
        }
        var end = stop ?? buffer.writerIndex
        if decision == .transactionBlockInStatementMode {
            // The client gets the FATAL error instead of this ReadyForQuery (6 bytes), as with PgBouncer.
            end = max(runStart, end - 6)
        }
        if sharing, stop == nil, let partial = scanner.partialMessage, replies.wouldDrop(partial.id) {
            // The read ends inside a reply to be dropped: keep its first bytes back too.
            end = max(runStart, end - min(partial.bytesSeen, end - buffer.readerIndex))
        }
        if end > runStart {
            client.forwardFromServer(buffer.getSlice(at: runStart, length: end - runStart)!)
        }
        clientNeedsFlush = true
        switch decision {
        case .keep:
            return
        case .release:
            client.flushToClient()
            clientNeedsFlush = false
            machine.becomeIdle()
            client.serverReleased()
            // What follows the ReadyForQuery in this read belongs to no client (a NOTICE, or the FATAL of a
            // terminated backend): it is read as the idle server's before the server goes to anyone, so the
            // next client is not handed a server that is about to close.
            if end < buffer.writerIndex {
                try receive(buffer.getSlice(at: end, length: buffer.writerIndex - end)!)
                guard machine.isIdle, isOpen else { return }
            }
            pool.release(self, clientDisconnected: false)
        case .transactionBlockInStatementMode:
            clientNeedsFlush = false
            client.closeWithError(.statementModeTransaction, reason: PoolerError.statementModeTransaction.message)
            close(reason: PoolerError.statementModeTransaction.message)
        }
    }

    // MARK: Shared prepared statements

    /// Follows one server message through the reply queue: drops replies to Lifeguard's own Parse and
    /// Close, writes the replies Lifeguard gives in the server's place, and undoes what failed. Returns
    /// where the bytes still to forward begin.
    private func followReply(
        _ id: UInt8, _ body: ByteBuffer?, end: Int, length: Int, of buffer: ByteBuffer, runStart: Int,
        to client: ClientSession
    ) -> Int {
        var runStart = runStart
        if replies.receive(id) == .drop {
            let start = max(buffer.readerIndex, end - length)
            if start > runStart { client.forwardFromServer(buffer.getSlice(at: runStart, length: start - runStart)!) }
            runStart = end
        }
        while let event = replies.nextEvent() {
            switch event {
            case .synthesize(let reply):
                if end > runStart { client.forwardFromServer(buffer.getSlice(at: runStart, length: end - runStart)!) }
                runStart = end
                client.forwardFromServer(Self.emptyReply(reply))
            case .undone(.clientParse(let statement, let name), let skipped):
                statementCache?.parseUndone(statement, skipped: skipped)
                client.forgetStatement(named: name, statement)
            case .undone(.hidden(.parse, let statement), let skipped):
                statementCache?.parseUndone(statement, skipped: skipped)
            case .undone(.hidden(_, let statement), let skipped):
                if skipped { statementCache?.closeSkipped(statement) }
            case .undone:
                break
            }
        }
        if id == BackendID.readyForQuery { statementCache?.readyForQuery() }
        if id == BackendID.commandComplete, let body {
            switch Self.statementEffect(of: body) {
            case .droppedAll where dropAllRepliesDue > 0:
                dropAllRepliesDue -= 1  // applied when it was sent
            case .droppedAll:
                // A form Lifeguard did not see coming (inside a longer query or a function).
                statementCache?.removeAll()
                client.forgetAllStatements()
            case .changedSome:
                // SQL named statements on this server: they may have dropped or replaced a shared one (a client
                // can read the names in pg_prepared_statements), so no other client may rely on its cache.
                sqlChangedStatements = true
            case nil:
                break
            }
        }
        return runStart
    }

    /// What a command did to the session's prepared statements, judged by its CommandComplete tag.
    private enum StatementEffect {
        /// DEALLOCATE ALL, DISCARD ALL: none are left.
        case droppedAll
        /// PREPARE or DEALLOCATE of a name the tag does not tell.
        case changedSome
    }

    private static func statementEffect(of commandComplete: ByteBuffer) -> StatementEffect? {
        let first = commandComplete.getInteger(at: commandComplete.readerIndex, as: UInt8.self)
        guard first == UInt8(ascii: "D") || first == UInt8(ascii: "P"),
            let tag = BackendMessage.commandTag(commandComplete)
        else { return nil }
        switch tag {
        case "DEALLOCATE ALL", "DISCARD ALL": return .droppedAll
        case "DEALLOCATE", "PREPARE": return .changedSome
        default: return nil
        }
    }

    /// The server is closed when released instead of serving another client from a cache that may lie: a
    /// client ran SQL PREPARE or DEALLOCATE here, or a DEALLOCATE ALL the cache was emptied for never
    /// completed (it failed, so the statements may still be there).
    var statementCacheUntrusted: Bool { sqlChangedStatements || dropAllRepliesDue != 0 }
    private var sqlChangedStatements = false
    /// DEALLOCATE ALL / DISCARD ALL queries the cache was emptied for when they were sent, not yet answered.
    private var dropAllRepliesDue = 0

    /// Shared statements prepared on this server, for SHOW SERVERS.
    var preparedStatementCount: Int { statementCache?.count ?? 0 }

    /// A piece of the linked client's traffic, while it shares prepared statements.
    func send(_ piece: OutboundPiece, for client: ClientSession) {
        switch piece {
        case .bytes(let bytes):
            forwardFromClient(bytes)
        case .request(let request):
            _ = replies.push(.client(request))
        case .parse(let statement, let name):
            if statementCache?.use(statement) == true {
                answer(BackendID.parseComplete, for: client)
            } else if replies.isSkippingUntilSync {
                client.forgetStatement(named: name, statement)  // the server will not run it
            } else {
                prepare(statement, as: .clientParse(statement, clientName: name))
            }
        case .describe(let statement):
            prepareIfMissing(statement)
            gather { $0.writeDescribeStatement(name: statement.serverName) }
        case .bindHead(let head, let statement):
            prepareIfMissing(statement)
            var renamed = true
            gather { renamed = $0.writeBindHead(head, renamingStatementTo: statement.serverName) }
            // The client checks the renamed length first; should a head still not fit, nothing half-written stays.
            if !renamed { close(reason: "Bind head could not be renamed") }
        case .closeStatement:
            answer(BackendID.closeComplete, for: client)
        case .dropAllStatements:
            statementCache?.removeAll()
            dropAllRepliesDue += 1
        }
    }

    /// A client's message uses `statement`: the server gets its Parse first if it lacks it (unless it is
    /// skipping to Sync after an error, and would skip the Parse too).
    private func prepareIfMissing(_ statement: PreparedStatement) {
        if statementCache?.use(statement) != true, !replies.isSkippingUntilSync {
            prepare(statement, as: .hidden(.parse, statement))
        }
    }

    /// Sends the shared statement's Parse, first closing the least recently used one when the cache is full.
    private func prepare(_ statement: PreparedStatement, as entry: ReplyQueue.Entry) {
        if statementCache == nil { statementCache = ServerStatementCache() }
        for evicted in statementCache!.insert(statement, capacity: pool.shard.settings.maxPreparedStatements) {
            gather { $0.writeCloseStatement(name: evicted.serverName) }
            _ = replies.push(.hidden(.close, evicted))
        }
        forwardFromClient(statement.parseMessage)
        pool.stats.serverParses &+= 1
        _ = replies.push(entry)
    }

    /// A reply Lifeguard gives itself, in the order PostgreSQL would have given it.
    private func answer(_ reply: UInt8, for client: ClientSession) {
        if replies.push(.synthetic(reply)) == .answerNow {
            client.answerLocally(Self.emptyReply(reply))
        } else if replies.count >= Self.owedRepliesLimit, !flushRequested {
            // Local answers queue behind replies the server holds until a Flush or Sync the client may
            // never send: ask for them, and stop reading the client meanwhile (owesTooManyReplies).
            flushRequested = true
            gather { $0.writeImmutableBuffer(Self.flushMessage) }
        }
    }

    /// Past this many owed replies the client is not read until the server has answered some, so a
    /// client that sends without Sync cannot make Lifeguard queue local answers without end.
    static let owedRepliesLimit = 4096
    private var flushRequested = false
    var owesTooManyReplies: Bool { replies.count >= Self.owedRepliesLimit }

    /// Login, connect_query, parameter sync and reset: everything that is not a client's own traffic.
    /// Returns true when the state changed, so the caller rescans what is left of the read.
    private func handleControlMessage(_ id: UInt8, _ body: ByteBuffer) throws -> Bool {
        switch id {
        case BackendID.errorResponse:
            let fields = BackendMessage.errorFields(body)
            let error = PoolerError(fields[UInt8(ascii: "M")] ?? "server error", sqlState: fields[UInt8(ascii: "C")] ?? "08P01")
            return handleServerError(error, severity: fields[UInt8(ascii: "V")] ?? fields[UInt8(ascii: "S")] ?? "ERROR")
        case BackendID.noticeResponse, BackendID.notification:
            return false
        case BackendID.parameterStatus:
            if let (name, value) = BackendMessage.parameterStatus(body) {
                parameters.update(name: name, value: value)
                if case .loggingIn = machine.state { reportedParameters.append((name, value)) }
            }
            return false
        case BackendID.backendKeyData:
            if let key = BackendMessage.backendKeyData(body) { backendKey = key }
            return false
        case BackendID.authentication:
            guard case .authenticating = machine.state, let (code, data) = BackendMessage.authentication(body) else {
                close(reason: "unexpected authentication message")
                return true
            }
            return authenticate(code: code, data: data)
        case BackendID.readyForQuery:
            return readyForQuery()
        default:
            if id == BackendID.commandComplete, Self.statementEffect(of: body) == .droppedAll { statementCache?.removeAll() }
            if machine.isRunningOwnQuery { return false }  // results of our own queries, swallowed
            close(reason: "idle server got unexpected data")
            return true
        }
    }

    private func handleServerError(_ error: PoolerError, severity: String) -> Bool {
        switch machine.serverError(error) {
        case .loginFailed:
            // PgBouncer's words, which log watchers match.
            logger.warning("\(logPrefix) server login failed: \(severity) \(error.message) (SQLSTATE \(error.sqlState))")
            // 57P03: the server is starting up or shutting down; clients wait for the retry.
            closeReason = replication == nil ? error.message : Self.replicationLoginFailed.message
            connection?.close()
            reportLoginFailure(error, failsWaitingClients: error.sqlState != "57P03")
            pool.serverClosed(self, duringLogin: true)
            return true
        case .connectQueryFailed:
            logger.warning("\(logPrefix) connect_query failed: \(error.message)")
            return false
        case .noted:
            return false
        case .close(let reason):
            close(reason: reason)
            return true
        }
    }

    private func readyForQuery() -> Bool {
        switch machine.readyForQuery(connectQuery: pool.database.connectQuery, clientLeft: { !$0.isLoggedIn }) {
        case .runConnectQuery(let query):
            sendQuery(query)
        case .loggedIn:
            pool.serverLoggedIn(self)
        case .failParameterSync(let client, let error):
            client.closeWithError(error, reason: "invalid server parameter")
            close(reason: "invalid server parameter")
        case .link(let client):
            client.adoptServerParameters(parameters)
            client.serverLinkReady()
            resumeReads()
        case .available:
            pool.serverAvailable(self)
        case .lend(let client):
            assign(to: client)
        case .close(let reason):
            close(reason: reason)
        }
        return true
    }

    // MARK: Server authentication

    private func authenticate(code: Int32, data: ByteBuffer) -> Bool {
        var reply = ByteBuffer()
        do {
            switch try authentication.receive(code: code, data: data, into: &reply) {
            case .authenticated:
                machine.authenticated()
                return true
            case .continueLogin:
                if reply.readableBytes > 0 { connection?.writeAndFlush(reply) }
                return false
            case .deriveSaltedPassword(let request):
                deriveOffLoop(request)
                return false
            }
        } catch {
            return failLogin(error.message)
        }
    }

    /// SCRAM's PBKDF2 (thousands of HMACs, as many as the server asks up to a limit) runs on a thread pool, so
    /// the event loop keeps serving every other connection meanwhile.
    private func deriveOffLoop(_ request: SCRAMClientExchange.SaltedPasswordRequest) {
        pool.shard.loop.offload({ request.derive() }) { salted in
            // The server may have gone (or timed out) meanwhile.
            guard case .authenticating = self.machine.state, let connection = self.connection else { return }
            var reply = ByteBuffer()
            self.authentication.receiveSaltedPassword(salted, into: &reply)
            connection.writeAndFlush(reply)
        }
    }

    /// Lifeguard itself cannot log in: tell the waiting clients and close.
    private func failLogin(_ message: String) -> Bool {
        logger.warning("\(logPrefix) \(message)")
        close(reason: message)
        reportLoginFailure(PoolerError(message), failsWaitingClients: true)
        return true
    }

    /// A failed login fails the pool's waiting clients as PoolState rules, or, for a replication server,
    /// only the client it was opened for: with PgBouncer's words, whatever the server said (it is logged).
    /// That client hears it after the current event, once the server's close (asked for first) is logged:
    /// PgBouncer logs the server's close before the client's, and log watchers read on the client's error.
    private func reportLoginFailure(_ error: PoolerError, failsWaitingClients: Bool) {
        guard let replication else {
            pool.serverLoginFailed(error, failsWaitingClients: failsWaitingClients)
            return
        }
        let client = replication.client
        pool.shard.loop.deferTask {
            client?.closeWithError(Self.replicationLoginFailed, reason: Self.replicationLoginFailed.message)
        }
    }

    private static let replicationLoginFailed = PoolerError("login failed", sqlState: "08P01")

    // MARK: Lending to clients

    /// Lends this server to `client`; if the client's tracked parameters differ, they are set first.
    func assign(to client: ClientSession) {
        hasServedAClient = true
        let changes = client.parameters.changes(toMatch: parameters)
        if let statement = ParameterSet.setStatement(for: changes) {
            logger.debug("\(logPrefix) varcache_apply: \(ParameterSet.describe(changes))")
            // A parameter the server reports keeps its value until its ParameterStatus: PostgreSQL sends
            // none when the new value is only another spelling of the current one ("ISO" for "ISO, MDY"),
            // and the client then takes the server's spelling when linked (adoptServerParameters). Those it
            // does not report are taken as done (a failing SET closes the server), or they would never be known.
            for change in changes where !reportedParameters.contains(where: { $0.0.lowercased() == change.name.lowercased() }) {
                parameters[change.name] = change.value
            }
            machine.lend(to: client, syncingParameters: true)
            sendQuery(statement)
            client.serverAssigned(self, ready: false)
        } else {
            // Equal already: sharing the client's storage (one per pool's usual set, see
            // Pool.welcomeMessages) lets the next check end on identity.
            parameters = client.parameters
            machine.lend(to: client, syncingParameters: false)
            client.serverAssigned(self, ready: true)
            resumeReads()
        }
    }

    /// Client bytes for PostgreSQL, as they arrived. Small pieces are gathered into one buffer: a read often
    /// yields several (a renamed Bind head, then Execute and Sync), each a slice that would cost an iovec.
    func forwardFromClient(_ buffer: ByteBuffer) {
        if buffer.readableBytes <= Self.gatherLimit {
            gather { $0.writeImmutableBuffer(buffer) }
            return
        }
        writeGathered()
        connection?.write(buffer)
    }

    /// Appends a small message to the next write.
    private func gather(_ write: (inout ByteBuffer) -> Void) {
        // Cleared once written: reused when the write queue has let go of it, reallocated if it has not.
        if gathered.readableBytes == 0 { gathered.clear() }
        write(&gathered)
    }

    func flush() {
        writeGathered()
        connection?.flush()
    }

    private static let gatherLimit = 4096
    private var gathered = ByteBuffer()

    private func writeGathered() {
        guard gathered.readableBytes > 0 else { return }
        connection?.write(gathered)
        gathered.moveReaderIndex(to: gathered.writerIndex)
    }

    /// The linked client went away. A server between transactions goes back to the pool; one with a
    /// transaction or query in flight is closed, so no other client ever inherits it.
    func clientGone(_ leaving: ServerStateMachine<ClientSession>.LeavingClient) {
        switch machine.clientGone(leaving) {
        case .release where replication != nil: terminate(reason: "replication client was closed")
        case .release: pool.release(self, clientDisconnected: true)
        case .close(let reason): close(reason: reason)
        }
    }

    func becomeIdle() {
        machine.becomeIdle()
        idleSince = .now()
        resumeReads()
    }

    /// When this server went idle in its pool, for server_idle_timeout.
    private var idleSince: NIODeadline?

    /// The clocks the timeout sweep judges this server by: (logging in since, idle since).
    var timeoutClocks: (loggingInSince: Int64?, idleSince: Int64?) {
        if machine.isLoggingIn { return (Int64(connectedAt.uptimeNanoseconds), nil) }
        if machine.isIdle { return (nil, idleSince.map { Int64($0.uptimeNanoseconds) }) }
        return (nil, nil)
    }

    /// server_connect_timeout: the login did not finish in time.
    func loginTimedOut() {
        logger.warning("\(logPrefix) closing because: connect timeout")
        reportLoginFailure(PoolerError("connect timeout"), failsWaitingClients: false)
        close(reason: "connect timeout")
    }

    // MARK: Cancels

    /// A cancel for this server's client is being delivered.
    func cancelStarted() {
        cancelsInFlight += 1
    }

    /// The cancel connection is done (delivered and closed by PostgreSQL, or given up).
    func cancelFinished() {
        cancelsInFlight -= 1
        guard cancelsInFlight == 0, parkedForCancel else { return }
        parkedForCancel = false
        if machine.isIdle { pool.serverAvailable(self) }
    }

    /// Released while a cancel is in flight: out of circulation until `cancelFinished`.
    func parkUntilCancelsFinish() {
        machine.becomeIdle()
        idleSince = nil
        parkedForCancel = true
        resumeReads()
    }

    /// How long this server has been idle in its pool, for server_check_delay.
    var idleNanoseconds: Int64 {
        guard machine.isIdle, let idleSince else { return 0 }
        return (NIODeadline.now() - idleSince).nanoseconds
    }

    /// Runs server_check_query, then lends the server to `client` (or closes it if the check fails).
    func runCheck(_ query: String, for client: ClientSession) {
        machine.startCheck(for: client)
        sendQuery(query)
    }

    func runResetQuery(_ query: String) {
        machine.startReset()
        sendQuery(query)
    }

    private func sendQuery(_ sql: String) {
        guard let connection else { return }
        var buffer = ByteBufferAllocator().buffer(capacity: sql.utf8.count + 6)
        buffer.writeQuery(sql)
        writeGathered()
        connection.writeAndFlush(buffer)
    }

    func close(reason: String) {
        if closeReason == nil { closeReason = reason }
        if let connection {
            connection.close()
        } else if case .connecting = machine.state {
            // Still resolving its host name: nothing to close but the bookkeeping.
            connectFailed(reason: reason)
        }
    }

    // MARK: Moving to another thread

    /// Whether the server can move to another thread's part of its pool: idle, nothing queued, no cancel
    /// on its way.
    var canMove: Bool {
        machine.isIdle && cancelsInFlight == 0 && gathered.readableBytes == 0 && connection?.canMove == true
    }

    var isOpen: Bool { connection?.isOpen == true }

    /// On its thread, between events: leaves it (no longer watched or listed there); `moveIn` adopts it on
    /// the other.
    func moveOut() {
        connection?.detach()
        pool.shard.unregister(self)
    }

    /// On `newPool`'s thread: joins that part of the pool. False when its socket could not be watched there
    /// (it is closing then, and its pool hears of it as usual).
    func moveIn(to newPool: Pool) -> Bool {
        pool = newPool
        newPool.shard.register(self)
        guard let connection else { return false }
        do {
            try connection.attach(to: newPool.shard.loop)
            return true
        } catch {
            return false
        }
    }

    /// On the thread it was sent to, when nothing there can take it (its database was removed by a
    /// reload, or the daemon is stopping): closes its socket without a word to any pool.
    func abandonAfterMove() {
        connection?.abandon()
    }

    /// A clean goodbye at shutdown: Terminate, then close.
    func terminate(reason: String) {
        guard let connection else {
            close(reason: reason)
            return
        }
        if closeReason == nil { closeReason = reason }
        writeGathered()
        connection.writeAndFlush(Self.terminateMessage)
        connection.close()
    }

    private static let terminateMessage = ByteBuffer.emptyMessage(FrontendID.terminate)
}

/// A connection's address in PgBouncer's `%p` style (`0x55d5c1a2b3c0`), for log lines and SHOW lists.
func pointerText(_ object: AnyObject) -> String {
    "0x" + String(UInt(bitPattern: ObjectIdentifier(object)), radix: 16)
}

import Glibc
import LifeguardCore
import LifeguardEngine
import Logging
import NIOCore
import PostgresWire

/// One client connection: startup and authentication, then its traffic relayed to whichever server the
/// pool lends it for each transaction (or for the whole session).
final class ClientSession: ConnectionDelegate {
    /// Messages kept whole while prepared statements are shared: the ones that name a statement, Terminate,
    /// and short Queries (one may be DEALLOCATE ALL; longer ones stream).
    private static let wholeIDs = MessageIDSet([
        FrontendID.parse, FrontendID.bind, FrontendID.describe, FrontendID.close, FrontendID.terminate,
        FrontendID.query,
    ])

    /// Client message ids a pooler accepts after login; anything else is a protocol violation.
    private static let acceptedIDs = MessageIDSet([
        FrontendID.query, FrontendID.parse, FrontendID.bind, FrontendID.describe, FrontendID.execute,
        FrontendID.close, FrontendID.sync, FrontendID.flush, FrontendID.functionCall, FrontendID.copyData,
        FrontendID.copyDone, FrontendID.copyFail, FrontendID.terminate, FrontendID.password,
    ])

    /// Before login every message (password, SASL) is bounded, so an unauthenticated client cannot make
    /// Lifeguard hold a large buffer. The bound is PgBouncer's: a password of up to MAX_PASSWORD (65531)
    /// bytes, which long tokens used as passwords need, plus its terminator and the length field.
    static let maxLoginMessageLength = 65_536

    /// The answers to SSLRequest and GSSENCRequest: go on in plain text, or start TLS (GSSAPI is refused).
    private static let encryptionRefused = ByteBuffer(integer: UInt8(ascii: "N"))
    private static let encryptionAccepted = ByteBuffer(integer: UInt8(ascii: "S"))

    /// The shard lives as long as the daemon: an unchecked reference, as a checked one costs atomic
    /// reference counting on every use on the hot path.
    private unowned(unsafe) let shard: PoolShard
    /// Where the session is in its login, and whether it holds, waits for or has no server.
    private var machine = ClientStateMachine<ServerConnection>()
    /// The password exchange, while authenticating (kept apart from the machine's phase, which is read on
    /// every read and would copy it).
    private var authentication: ClientAuthentication?
    private let connection: Connection
    private var startupBuffer = ByteBuffer()
    /// SSLRequest and GSSENCRequest were answered.
    private var sslRequestAnswered = false
    private var gssRequestAnswered = false
    private var scanner: FrameScanner
    private(set) var pool: Pool?
    private var tracker = TransactionTracker(poolMode: .session)
    var server: ServerConnection? { machine.server }
    /// Client bytes received while no server was ready for them; already scanned and counted.
    private var pendingData: ByteBuffer?
    /// While prepared statements are shared (transaction and statement mode): the splitter that keeps the
    /// messages naming a statement whole, the client's statements by its own names, and the pieces
    /// waiting for a server (in place of `pendingData`).
    private var splitter: MessageSplitter?
    /// share_unnamed_statements: the unnamed statement is mapped like a named one.
    private var sharesUnnamed = false
    private(set) var statements: [String: PreparedStatement] = [:]
    /// The query text and parameter types `statements` hold, in bytes. Both are bounded, so one client
    /// cannot make Lifeguard hold unbounded statement definitions (each may be up to max_packet_size).
    private var statementBytes = 0
    static let maxStatementsPerClient = 10_000
    static let maxStatementBytesPerClient = 64 << 20
    private var pendingPieces: [OutboundPiece] = []
    /// The statement a Bind names, read when its head was judged: the splitter hands the head over next.
    private var headStatementName = ""
    /// Replies Lifeguard wrote to the client itself (ParseComplete, CloseComplete), not yet flushed.
    private var localRepliesNeedFlush = false
    private var serverNeedsFlush = false
    /// Between a read and its completion: what is written meanwhile is flushed once, at the end.
    private var handlingRead = false
    private var loggedIn = false
    private var cancelKey: CancelKey?
    private var closeReason: String?
    private let connectedAt = NIODeadline.now()
    /// For SHOW CLIENTS: the connection's id, and wall-clock seconds of its connect and its latest request.
    let id: Int
    let connectTime = WallClock.seconds()
    private(set) var requestTime = WallClock.seconds()
    /// "db/user", once the startup packet named them.
    private var logTarget = "(nodb)/(nouser)"
    /// Empty until login; starts as a shared empty set, so that a connection does not allocate one.
    var parameters = ClientSession.noParameters
    private static let noParameters = ParameterSet()
    /// Console rights decided at startup for a login to the `pgbouncer` database.
    private var adminRole: AdminRole?
    /// The login counted against the per-database and per-user client limits, released at close.
    private var clientLogin: SharedState.ClientLogin?
    /// Set once a console login handed the connection to an AdminSession; this session then leaves.
    private var adminSuccessor: AdminSession?
    /// The peer's user id, for Unix-socket clients (the daemon's own user may enter the console as `pgbouncer`).
    private var peerUID: uid_t?
    private var peerPID: Int32?
    /// When the running query and transaction began, for the query and transaction times of SHOW STATS.
    private var queryStart: NIODeadline?
    private var transactionStart: NIODeadline?
    /// The last ReadyForQuery that ended a query (or the welcome): the start of an idle period.
    private var lastReady: NIODeadline?

    init(connection: Connection, shard: PoolShard) {
        self.connection = connection
        self.shard = shard
        self.scanner = FrameScanner(capturedIDs: .all, maxMessageLength: Self.maxLoginMessageLength)
        self.id = shard.nextConnectionID()
    }

    private var logger: Logger { shard.logger }

    // MARK: Connection events

    /// The connection was accepted: from here on this session hears of it.
    func start() {
        connection.delegate = self
        shard.register(self)
        if connection.isUnixDomainSocket, let credentials = connection.peerCredentials {
            peerUID = credentials.uid
            peerPID = credentials.pid
        }
    }

    /// The peer as PgBouncer prints it: "addr:port", or "unix(pid)" for a Unix-socket client. Built only when
    /// needed (logging, application_name_add_host), not for every connection.
    private var peerDescription: String {
        guard let remote = connection.remoteAddress else { return "unknown" }
        if let ip = remote.ipAddress { return "\(ip):\(remote.port ?? 0)" }
        return peerPID.map { "unix(\($0))" } ?? "unix"
    }

    /// PgBouncer's `C-0x...: db/user@addr:port` prefix of every log line about this client.
    private var logPrefix: String {
        "C-\(pointerText(self)): \(logTarget)@\(peerDescription)"
    }

    func connectionRead(_ connection: Connection, _ buffer: ByteBuffer) {
        handlingRead = true
        requestTime = shard.clockSeconds
        handlingErrors {
            switch machine.phase {
            case .startup:
                if startupBuffer.readableBytes == 0 {
                    // Packets usually arrive whole: read them in place, and copy only an incomplete rest,
                    // since a slice would keep the loop's whole read buffer for a client that sends slowly.
                    startupBuffer = buffer
                    try readStartup()
                    startupBuffer =
                        machine.phase == .startup ? ByteBuffer(bytes: startupBuffer.readableBytesView) : ByteBuffer()
                } else {
                    var buffer = buffer
                    startupBuffer.writeBuffer(&buffer)
                    try readStartup()
                }
            case .authenticating:
                try receiveAuthentication(buffer)
            case .awaitingWelcome, .active:
                try receiveTraffic(buffer)
            case .closed:
                return
            }
        }
    }

    /// Closes the client with the error a failed step throws, as PgBouncer words it.
    private func handlingErrors(_ body: () throws -> Void) {
        do {
            try body()
        } catch let error as PoolerError {
            closeWithError(error, reason: error.message)
        } catch WireError.messageTooLarge(let length) {
            if loggedIn {
                closeWithError(.packetTooLarge(length), reason: "max_packet_size exceeded")
            } else {
                closeWithError(.loginPacketTooLarge(length), reason: "login packet too large")
            }
        } catch {
            closeWithError(.badPacket, reason: "bad packet: \(error)")
        }
    }

    func connectionReadComplete(_ connection: Connection) {
        handlingRead = false
        flushPendingWrites()
        if shouldHoldReads { connection.readsHeld = true }
    }

    /// One flush per batch of work, towards the server and towards the client.
    private func flushPendingWrites() {
        if serverNeedsFlush {
            serverNeedsFlush = false
            server?.flush()
        }
        flushLocalReplies()
    }

    func connectionClosed(_ connection: Connection, error: SocketError?) {
        if closeReason == nil, let error { closeReason = "client socket error: \(error)" }
        let wasLoggedIn = loggedIn
        if let (server, ready) = machine.detachServer() {
            let inTransaction = !(ready && tracker.isIdle)
            let everythingSent = isBetweenMessages && !hasUnsentTraffic
            server.clientGone(
                inTransaction ? .serverNotReady : everythingSent ? .betweenTransactions : .unsentData)
        }
        if let pool {
            pool.removeWaiting(self)
            if wasLoggedIn { pool.clientLoggedOut() }
        }
        if let clientLogin {
            shard.shared.clientLoggedOut(clientLogin)
            self.clientLogin = nil
        }
        shard.unregister(self)
        if let cancelKey { shard.unregisterCancelKey(cancelKey) }
        if !closingLogged, shard.settings.logDisconnections, wasLoggedIn || closeReason != nil {
            logClosing(closeReason ?? (shard.isShuttingDown ? "pooler is shutting down" : "client unexpected eof"))
        }
    }

    /// Set once the `closing because` line is out: a close on an error logs it before the error is sent.
    private var closingLogged = false

    private func logClosing(_ reason: String) {
        closingLogged = true
        logger.info("\(logPrefix) closing because: \(reason) (age=\(ageSeconds)s)")
    }

    func connectionWritable(_ connection: Connection) {
        server?.resumeReads()
        resumeReads()
    }

    /// Reads are held while the server cannot take more bytes, or while bytes wait for a server.
    private var shouldHoldReads: Bool {
        if hasUnsentTraffic || (loggedIn && shard.isSuspended) || passwordCheckLeftover != nil { return true }
        // Replies Lifeguard gives itself (ParseComplete, CloseComplete, errors) must not pile up for a
        // client that sends without reading: its next requests wait until it has read what is queued.
        if !connection.isWritable { return true }
        if let server = machine.readyServer, !server.isWritable || server.owesTooManyReplies { return true }
        return false
    }

    func resumeReads() {
        guard connection.readsHeld, !shouldHoldReads else { return }
        if machine.isClosed { return }
        connection.readsHeld = false
    }

    var isWritable: Bool { connection.isWritable }

    // MARK: Admin console views

    /// PgBouncer's state word for SHOW CLIENTS; nil while logging in or once closed.
    var listState: String? { machine.stateWord }
    var isLoggedIn: Bool { machine.isLoggedIn }
    var isWaitingForServer: Bool { machine.isWaitingForServer }
    var isLoggingIn: Bool { machine.isLoggingIn }

    /// Time since the current query began (PgBouncer's `wait`), in microseconds.
    var waitMicroseconds: Int {
        queryStart.map { Int((NIODeadline.now() - $0).nanoseconds / 1000) } ?? 0
    }

    var loginUser: String? { loggedIn ? logTarget.split(separator: "/", maxSplits: 1).last.map(String.init) : nil }
    var remoteAddress: SocketAddress? { connection.remoteAddress }
    var localAddress: SocketAddress? { connection.localAddress }

    /// Between transactions with nothing in flight: its server could be closed without losing work.
    var isBetweenTransactions: Bool {
        tracker.isIdle && isBetweenMessages && !hasUnsentTraffic && queryStart == nil
    }

    /// The clocks the timeout sweep judges this client by.
    var timeoutClocks: Timeouts.ClientClocks {
        var clocks = Timeouts.ClientClocks()
        switch machine.phase {
        case .startup, .authenticating:
            clocks.loginStartedAt = Int64(connectedAt.uptimeNanoseconds)
        case .active:
            clocks.queryStartedAt = queryStart.map { Int64($0.uptimeNanoseconds) }
            clocks.transactionStartedAt = transactionStart.map { Int64($0.uptimeNanoseconds) }
            if server != nil, queryStart == nil, tracker.status != .idle {
                clocks.idleInTransactionSince = lastReady.map { Int64($0.uptimeNanoseconds) }
            } else if server == nil, !machine.isQueued, !hasUnsentTraffic, queryStart == nil {
                clocks.idleSince = lastReady.map { Int64($0.uptimeNanoseconds) }
            }
        case .awaitingWelcome:
            clocks.awaitingWelcomeSince = Int64(connectedAt.uptimeNanoseconds)
        case .closed:
            break
        }
        return clocks
    }

    /// Sends a NoticeResponse (query_wait_notify).
    func sendNotice(_ message: String) {
        var buffer = ByteBuffer()
        buffer.writeErrorResponse(severity: "NOTICE", code: "00000", message: message, notice: true)
        connection.writeAndFlush(buffer)
    }

    /// Disconnects the client with `error` (KILL, KILL_CLIENT).
    func kill(_ error: PoolerError) {
        closeWithError(error, reason: error.message)
    }

    /// At an immediate exit. A client waiting for an answer (logging in, queued, or with a query out) is told
    /// why none comes; an idle one is closed without a word, as PgBouncer's exit leaves it, so its next query
    /// fails with "server closed the connection unexpectedly" as scripts written for PgBouncer expect.
    func closeForExit() {
        let awaitsAnswer = machine.phase != .active || machine.isQueued || queryStart != nil || hasUnsentTraffic
        guard !awaitsAnswer else { return kill(.shuttingDown) }
        if machine.isClosed { return }
        closeReason = PoolerError.shuttingDown.message
        connection.close()
    }

    private var ageSeconds: Int {
        Int((NIODeadline.now() - connectedAt).nanoseconds / 1_000_000_000)
    }

    /// The client began with a TLS hello instead of an SSLRequest (PostgreSQL 17's `sslnegotiation=direct`).
    private var directTLS = false

    /// A first byte of 0x16 is a TLS handshake record, never the start of a startup packet's length: with
    /// client TLS on, the hello (and what follows it) goes to TLS, after this read is done with.
    private func startsDirectTLS() -> Bool {
        guard !sslRequestAnswered, !directTLS, let context = shard.clientTLS,
            startupBuffer.getInteger(at: startupBuffer.readerIndex, as: UInt8.self) == 0x16
        else { return false }
        directTLS = true
        sslRequestAnswered = true
        let hello = startupBuffer
        startupBuffer = ByteBuffer()
        let connection = self.connection
        shard.loop.deferTask { [weak self] in
            guard let self, connection.isOpen else { return }
            do {
                connection.startTLS(try TLSSession(context: context), received: hello)
            } catch {
                closeReason = "TLS: \(error)"
                connection.close()
            }
        }
        return true
    }

    /// The negotiated TLS version and cipher (PgBouncer's `tls` in SHOW CLIENTS); nil in plain text.
    var tlsSummary: String? { connection.tlsSummary }

    // MARK: Startup

    private func readStartup() throws {
        if startsDirectTLS() { return }
        while machine.phase == .startup {
            let unread = startupBuffer
            guard let packet = try StartupPacket.read(from: &startupBuffer) else { break }
            switch packet {
            case .sslRequest, .gssEncryptionRequest:
                // One of each per connection, as in PostgreSQL: a client repeating them is answered no more.
                let isSSL = packet == .sslRequest
                guard !(isSSL ? sslRequestAnswered : gssRequestAnswered) else {
                    throw WireError.malformedStartup("repeated encryption request")
                }
                if isSSL { sslRequestAnswered = true } else { gssRequestAnswered = true }
                if isSSL, let context = shard.clientTLS {
                    // Bytes sent after the request but before the handshake were never encrypted: a
                    // man in the middle may have put them there (CVE-2021-23214), so they end the connection.
                    guard startupBuffer.readableBytes == 0 else {
                        throw PoolerError("received unencrypted data after SSL request")
                    }
                    connection.writeAndFlush(Self.encryptionAccepted)
                    try connection.startTLS(TLSSession(context: context))
                } else {
                    connection.writeAndFlush(Self.encryptionRefused)
                }
            case .cancel(let processID, let secretKey):
                closeReason = nil
                machine.close()
                // As in PgBouncer, the requesting connection stays open until the cancel has been delivered
                // (or cancel_wait_timeout has passed), then closes without a reply.
                let connection = self.connection
                connection.readsHeld = true
                if !forwardCancel(CancelKey(processID: processID, secretKey: secretKey), then: { connection.close() }) {
                    connection.close()
                }
                return
            case .startup(let version, let raw):
                if directTLS, !connection.tlsNegotiatedPostgreSQLProtocol {
                    // PostgreSQL 17's rule: ALPN is what tells a direct TLS client from some other protocol's.
                    throw PoolerError("received direct SSL connection request without ALPN protocol negotiation extension")
                }
                // As PgBouncer: require and stronger are not enforced on Unix sockets.
                if shard.clientTLSRequired, !connection.isUnixDomainSocket, connection.tlsSummary == nil {
                    throw PoolerError("SSL required")
                }
                let startup = try ClientStartup(
                    protocolVersion: version, parameters: raw, ignored: shard.ignoredStartupParameters)
                if !otherLoopsCaughtUp, meetsAClientLimit(startup) {
                    startupBuffer = unread
                    readStartupAgainAfterOtherLoopsCatchUp()
                    return
                }
                logTarget = "\(startup.database)/\(startup.user)"
                if startup.database == AdminAccess.databaseName {
                    // The console is exempt from max_client_conn; its rights are settled before any password.
                    if startup.user == AdminAccess.databaseName, peerUID == getuid() {
                        if shard.settings.logConnections { logger.info("\(logPrefix) pgbouncer access from unix socket") }
                        try handOverToAdmin(role: .admin, user: startup.user)
                        completeAdminHandover(leftover: startupBuffer)
                        return
                    }
                    guard let role = AdminAccess.role(for: startup.user, settings: shard.settings) else {
                        throw AdminAccess.notAllowed
                    }
                    adminRole = role
                } else if shard.isShuttingDown {
                    throw PoolerError.shuttingDown
                } else if shard.shared.clientCount > shard.settings.maxClientConn {
                    throw PoolerError.maxClientConnections
                }
                try beginAuthentication(startup)
                if adminSuccessor != nil {
                    completeAdminHandover(leftover: startupBuffer)
                    return
                }
            }
        }
        if machine.phase == .startup { return }
        let rest = startupBuffer
        startupBuffer = ByteBuffer()
        guard rest.readableBytes > 0 else { return }
        // Bytes after the startup packet, from a client that does not wait: its password, or (when the login
        // needed none) its first query.
        switch machine.phase {
        case .authenticating: try receiveAuthentication(rest)
        case .awaitingWelcome, .active: try receiveTraffic(rest)
        case .startup, .closed: break
        }
    }

    /// Sends the cancel on to the server running the key's client, calling `then` once it is delivered or
    /// given up; false when there is nothing to cancel.
    private func forwardCancel(_ key: CancelKey, then: @escaping () -> Void) -> Bool {
        var issuedKey = key
        // A request a peer forwarded here has a lower TTL than the key this process gave out.
        if shard.settings.peerID > 0 { issuedKey.secretKey = PeeredCancelKey.asIssued(secretKey: key.secretKey) }
        switch shard.shared.cancelTarget(for: issuedKey) {
        case .console(let console, _):
            // ^C on a console session waiting in PAUSE or SUSPEND resumes, as in PgBouncer.
            let group = shard.group
            group.acrossShards(from: shard) {
                if console.isWaitingForReply, !group.isShuttingDown, group.control.pauseMode != .running {
                    group.resume(database: nil)
                }
            }
            return false
        case .client(let target, let owner) where owner === shard:
            return Self.deliverCancel(to: target, on: owner, then: then)
        case .client(let target, let owner):
            // The target's session belongs to another loop: the cancel is sent from there, and this
            // connection is finished on its own loop.
            let here = shard.loop
            owner.loop.execute {
                let finish = { here.execute { then() } }
                if !Self.deliverCancel(to: target, on: owner, then: finish) { finish() }
            }
            return true
        case nil:
            // Unknown keys are dropped silently, as PostgreSQL and PgBouncer do, unless a peer gave them out.
            return forwardCancelToPeer(key, then: then)
        }
    }

    /// With peering, a key that names another peer (see PeeredCancelKey) goes on to that process, its TTL
    /// one lower, on a connection of its own; `then` runs when the peer has closed it (it has acted on the
    /// request) or after cancel_wait_timeout. False when the request is not forwarded.
    private func forwardCancelToPeer(_ key: CancelKey, then: @escaping () -> Void) -> Bool {
        let settings = shard.settings
        let peerID = PeeredCancelKey.peerID(of: key.processID)
        guard settings.peerID > 0, peerID != settings.peerID else { return false }
        guard let peer = shard.configuration.peers[peerID] else {
            logger.debug("could not find peer \(peerID) to forward a cancel request to")
            return false
        }
        guard PeeredCancelKey.ttl(of: key.secretKey) > 0 else {
            logger.debug("failed to forward cancel request because its TTL was exhausted")
            return false
        }
        logger.debug("forwarding cancellation request to peer \(peerID)")
        let loop = shard.loop
        let timeout = settings.cancelWaitTimeout
        ServerAddress.peer(peer, settings: settings).resolve(with: shard.resolver) { result in
            guard case .success(let addresses) = result, let address = addresses.first else { return then() }
            CancelDelivery.send(
                to: address, processID: key.processID, secretKey: PeeredCancelKey.forwarded(secretKey: key.secretKey),
                timeout: timeout, on: loop, completion: then)
        }
        return true
    }

    /// On `owner`'s loop: sends the cancel to the server `target` is running on; false when it has none.
    private static func deliverCancel(to target: ClientSession, on owner: PoolShard, then: @escaping () -> Void)
        -> Bool
    {
        guard let server = target.server, let backend = server.backendKey, let address = server.remoteAddress
        else { return false }
        server.cancelStarted()
        CancelDelivery.send(
            to: address, processID: backend.processID, secretKey: backend.secretKey,
            timeout: owner.settings.cancelWaitTimeout, on: owner.loop
        ) {
            server.cancelFinished()
            then()
        }
        return true
    }

    // MARK: Authentication

    private func beginAuthentication(_ startup: ClientStartup) throws {
        switch shard.settings.authType {
        case .hba:
            authType = try hostBasedAuthType(for: startup)
        case .cert:
            try checkCertificate(user: startup.user, map: nil)
            authType = .any
        default:
            break
        }
        let secret = shard.secret(for: startup.user)
        if secret == nil, let lookup = try authQueryLookup(for: startup) {
            // Reads wait for the answer; the client sends nothing before its authentication request anyway.
            connection.readsHeld = true
            lookup.pool.runAuthLookup(lookup)
            return
        }
        try continueAuthentication(startup, secret: secret)
    }

    /// For a user missing from auth_file, when the database (or `[pgbouncer]`) names an `auth_user`: the
    /// lookup of the user's password with `auth_query` in the auth database (`auth_dbname`, else the
    /// database asked for), which then goes on with the login.
    private func authQueryLookup(for startup: ClientStartup) throws -> AuthQueryLookup? {
        // Most configurations have no auth_user: their logins pay for no lookup of the database here.
        guard shard.authUserConfigured else { return nil }
        let settings = shard.settings
        let isConsole = startup.database == AdminAccess.databaseName
        let database = isConsole ? nil : shard.database(named: startup.database)
        guard let authUser = database?.authUser ?? settings.authUser else { return nil }
        // An unknown database fails after the (mock) password exchange, as without auth_query.
        guard let authDatabaseName = database?.authDbname ?? settings.authDbname
            ?? (database != nil || isConsole ? startup.database : nil)
        else { return nil }
        if authDatabaseName == AdminAccess.databaseName {
            logger.warning("\(logPrefix) cannot use the reserved \"\(authDatabaseName)\" database as an auth_dbname")
            throw PoolerError("bouncer config error")
        }
        if shard.control.disabledDatabases.contains(authDatabaseName) {
            throw PoolerError("authentication database \"\(authDatabaseName)\" is disabled")
        }
        guard let authDatabase = shard.database(named: authDatabaseName) else {
            logger.warning("\(logPrefix) authentication database \"\(authDatabaseName)\" is not configured")
            throw PoolerError("bouncer config error")
        }
        let authPool = shard.pool(for: authDatabase, clientDatabase: authDatabaseName, clientUser: authUser)
        let query = database?.authQuery ?? settings.authQuery
        return AuthQueryLookup(
            pool: authPool, query: query, user: startup.user,
            // Reads are held meanwhile, so a client that left is found by asking its socket.
            isWanted: { [weak self] in self.map { $0.machine.phase == .startup && !$0.connection.peerHasGone } ?? false }
        ) { [self] outcome in
            guard machine.phase == .startup, connection.isOpen else { return }
            handlingErrors {
                switch outcome {
                case .found(let secret):
                    authQuerySecret = secret
                    try continueAuthentication(startup, secret: secret, userExists: true)
                case .passwordIsNull:
                    // No password to check: `trust` lets the user in, every other method refuses it like a
                    // wrong password.
                    try continueAuthentication(startup, secret: nil, userExists: authType == .trust)
                case .noSuchUser:
                    throw PoolerError("no such user", sqlState: "28P01")
                case .loginFailed(let error):
                    // The auth database refused auth_user: the client gets the server's own error.
                    throw error
                case .queryFailed(let error):
                    logger.warning("\(logPrefix) auth query failed: \(error.message)")
                    throw PoolerError("bouncer config error")
                }
            }
            flushPendingWrites()
            resumeReads()
        }
    }

    /// auth_type, or with `hba` the method of the rule that fits this login.
    private lazy var authType = shard.settings.authType

    /// auth_type = hba: the method of the first rule that fits this login. The methods that exchange no
    /// password with the client are settled here: reject refuses, cert checks the client's certificate and
    /// peer the Unix-socket peer's system user, and the login goes on without a password.
    private func hostBasedAuthType(for startup: ClientStartup) throws -> AuthType {
        let transport: HostBasedAccess.Login.Transport
        switch connection.remoteAddress {
        case .v4(let address)?:
            transport = .tcp(address: withUnsafeBytes(of: address.address.sin_addr) { Array($0) })
        case .v6(let address)?:
            let bytes = withUnsafeBytes(of: address.address.sin6_addr) { Array($0) }
            // An IPv4 client on a dual-stack listener is judged by its IPv4 address.
            let isMappedV4 = bytes.prefix(10).allSatisfy { $0 == 0 } && bytes[10] == 0xFF && bytes[11] == 0xFF
            transport = .tcp(address: isMappedV4 ? Array(bytes.suffix(4)) : bytes)
        case .unixDomainSocket?, nil:
            transport = .unixSocket
        }
        let decision = shard.access.decide(HostBasedAccess.Login(
            transport: transport, tls: connection.tlsSummary != nil, database: startup.database, user: startup.user,
            physicalReplication: startup.replication == .physical))
        switch decision.method {
        case .trust: return .trust
        case .md5: return .md5
        case .password: return .plain
        case .scramSHA256: return .scramSHA256
        case .reject:
            throw PoolerError("login rejected")
        case .cert:
            // As PgBouncer, the certificate is the proof: the user need not be in auth_file.
            try checkCertificate(user: startup.user, map: decision.identMap)
            return .any
        case .peer:
            try checkPeer(user: startup.user, map: decision.identMap)
            return .trust
        }
    }

    /// `cert`: the client's verified TLS certificate names the database user in its common name, or a name
    /// the rule's ident map maps to it.
    private func checkCertificate(user: String, map: String?) throws {
        let failed = PoolerError("certificate authentication failed")
        guard let commonName = connection.tlsPeerCommonName else {
            logger.warning("\(logPrefix) certificate authentication needs a verified client certificate over TLS")
            throw failed
        }
        try checkIdentity(commonName, isUser: user, map: map, failed: failed, mismatch: "the certificate is for")
    }

    /// `peer`: the Unix-socket client's system user must be the database user, or be mapped to it by the
    /// rule's ident map.
    private func checkPeer(user: String, map: String?) throws {
        let failed = PoolerError("peer authentication failed")
        guard connection.isUnixDomainSocket, let peerUID else {
            logger.warning("\(logPrefix) peer authentication is only for Unix-socket connections")
            throw failed
        }
        guard let systemUser = Self.systemUserName(uid: peerUID) else {
            logger.warning("\(logPrefix) peer authentication failed: no system user has uid \(peerUID)")
            throw failed
        }
        try checkIdentity(systemUser, isUser: user, map: map, failed: failed, mismatch: "the system user is")
    }

    /// `identity` (a system user, a certificate's name) is the database user, or is mapped to it by the ident
    /// map `map`; otherwise the login fails with `failed`.
    private func checkIdentity(_ identity: String, isUser user: String, map: String?, failed: PoolerError, mismatch: String) throws {
        if let map {
            guard shard.identMaps.permits(map: map, systemUser: identity, user: user) else {
                logger.warning("\(logPrefix) ident map \(map) cannot be matched")
                throw failed
            }
        } else if identity != user {
            logger.warning("\(logPrefix) \(failed.message): \(mismatch) \(identity)")
            throw failed
        }
    }

    /// The login name of `uid` (from the password database: a local file read, once per peer login).
    private static func systemUserName(uid: uid_t) -> String? {
        var entry = passwd()
        var found: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getpwuid_r(uid, &entry, &buffer, buffer.count, &found) == 0, found != nil, let name = entry.pw_name
        else { return nil }
        return String(cString: name)
    }

    /// The password auth_query found, which this client's pool logs in to the server with.
    private var authQuerySecret: PasswordSecret?

    /// `userExists`: auth_query found the user, so a missing password does not make it unknown.
    private func continueAuthentication(
        _ startup: ClientStartup, secret: PasswordSecret?, userExists: Bool = false
    ) throws {
        // Fields read one by one: copying `settings` whole costs a retain per string and list in it.
        var authentication = ClientAuthentication(
            startup: startup, authType: authType, secret: secret,
            requireUserListEntry: !userExists && (shard.settings.authFile != nil || shard.settings.authUser != nil),
            mockKey: shard.mockAuthenticationKey, derivations: shard.plainPasswords, random: shard.randomBytes,
            channelBinding: connection.tlsServerEndPoint)
        var reply = ByteBuffer()
        if startup.minorProtocolVersion > 0 || !startup.unsupportedProtocolOptions.isEmpty {
            reply.writeMessage(BackendID.negotiateProtocolVersion) {
                $0.writeInteger(Int32(StartupPacket.protocolVersion3))
                $0.writeInteger(Int32(startup.unsupportedProtocolOptions.count))
                for option in startup.unsupportedProtocolOptions { $0.writeNullTerminatedString(option) }
            }
        }
        let step = try authentication.start(into: &reply)
        if reply.readableBytes > 0 { connection.writeAndFlush(reply) }
        if step == .authenticated {
            try finishLogin(authentication)
        } else {
            self.authentication = authentication
            machine.startAuthentication()
        }
    }

    private func receiveAuthentication(_ buffer: ByteBuffer) throws {
        if passwordCheckLeftover != nil {
            // Read while a password check runs: it follows the password message.
            var buffer = buffer
            passwordCheckLeftover!.writeBuffer(&buffer)
            return
        }
        var authenticated: ClientAuthentication?
        var check: ClientAuthentication.PasswordCheck?
        let stop = try scanner.scan(buffer) { id, body in
            guard machine.phase == .authenticating, var authentication else { return false }
            guard id == FrontendID.password, let body else {
                throw PoolerError("expected password packet, got '\(Character(Unicode.Scalar(id)))'")
            }
            var reply = ByteBuffer()
            let step = try authentication.receive(body, into: &reply)
            if reply.readableBytes > 0 { connection.writeAndFlush(reply) }
            self.authentication = authentication
            switch step {
            case .awaitingPassword:
                return true
            case .authenticated:
                authenticated = authentication
            case .checkPassword(let asked):
                check = asked
            }
            return false
        }
        let rest = stop.flatMap { buffer.getSlice(at: $0, length: buffer.writerIndex - $0) } ?? ByteBuffer()
        if let check {
            checkPasswordOffLoop(check, leftover: rest)
        } else if let authenticated {
            // The scanner is replaced at login, so login happens after the scan, never inside it.
            try completeLogin(authenticated, leftover: rest)
        }
    }

    private func completeLogin(_ authentication: ClientAuthentication, leftover: ByteBuffer) throws {
        try finishLogin(authentication)
        if adminSuccessor != nil {
            completeAdminHandover(leftover: leftover.readableBytes > 0 ? leftover : nil)
        } else if leftover.readableBytes > 0 {
            try receiveTraffic(leftover)
        }
    }

    /// Bytes read after a clear-text password that is being checked off the loop; nil when none is.
    private var passwordCheckLeftover: ByteBuffer?

    /// A clear-text password against a SCRAM secret costs a PBKDF2 (thousands of HMACs, as many as the
    /// userlist says): it runs on a thread pool, and the client is not read meanwhile.
    private func checkPasswordOffLoop(_ check: ClientAuthentication.PasswordCheck, leftover: ByteBuffer) {
        passwordCheckLeftover = leftover
        shard.loop.offload({ check.run() }) { matches in
            guard let leftover = self.passwordCheckLeftover else { return }
            self.passwordCheckLeftover = nil
            // The client may have gone meanwhile.
            guard self.machine.phase == .authenticating, var authentication = self.authentication else { return }
            self.handlingErrors {
                let step = try authentication.receivePasswordCheck(matches)
                self.authentication = authentication
                if step == .authenticated { try self.completeLogin(authentication, leftover: leftover) }
            }
            self.flushPendingWrites()
            self.resumeReads()
        }
    }

    private func finishLogin(_ authentication: ClientAuthentication) throws {
        self.authentication = nil
        let startup = authentication.startup
        if let adminRole {
            try handOverToAdmin(role: adminRole, user: startup.user)
            return
        }
        if shard.control.disabledDatabases.contains(startup.database) {
            throw PoolerError("database \"\(startup.database)\" is disabled")
        }
        guard let database = shard.database(named: startup.database) else {
            throw PoolerError.noSuchDatabase(startup.database)
        }
        let pool = shard.pool(for: database, clientDatabase: startup.database, clientUser: startup.user)
        try countClientLogin(database: startup.database, definition: database, user: startup.user)
        if database.user == nil, let keys = authentication.scramKeys {
            pool.scramPassThroughKeys = keys
        }
        if database.user == nil, let authQuerySecret { pool.authQuerySecret = authQuerySecret }
        self.pool = pool
        pool.clientLoggedIn()
        pool.stats.clientLogins += 1
        loggedIn = true
        replication = startup.replication
        replicationOptions = startup.replicationOptions
        // A replication connection is session-pooled whatever the pool's mode: its server is its own.
        let mode = replication == .none ? pool.mode : .session
        tracker = TransactionTracker(poolMode: mode)
        scanner = FrameScanner(capturedIDs: MessageIDSet(), maxMessageLength: shard.settings.maxPacketSize)
        if mode != .session, shard.settings.maxPreparedStatements > 0 {
            splitter = MessageSplitter(wholeIDs: Self.wholeIDs, maxMessageLength: shard.settings.maxPacketSize)
            sharesUnnamed = shard.settings.shareUnnamedStatements
        }
        parameters = startup.parameters
        if shard.settings.applicationNameAddHost {
            let name = parameters["application_name"] ?? ""
            parameters["application_name"] = name + " - " + peerDescription
        }
        cancelKey = shard.registerCancelKey(for: self)
        machine.loggedIn()
        if shard.settings.logConnections {
            logger.info("\(logPrefix) login attempt: db=\(startup.database) user=\(startup.user) tls=\(tlsSummary ?? "no")")
        }
        if replication == .none {
            pool.welcome(self)
        } else {
            pool.replicationClientLoggedIn(self)
        }
    }

    // MARK: Replication

    /// `replication` from the startup packet: such a client gets a server of its own (see Pool).
    private(set) var replication = ReplicationMode.none
    private var replicationOptions: String?

    /// What the client's server is opened with besides user, database and `replication`: the tracked
    /// parameters the client set, then its `options` as it sent them.
    var replicationStartupParameters: [(String, String)] {
        var result: [(String, String)] = []
        for (index, name) in TrackedParameter.names.enumerated() {
            if let value = parameters.value(at: index) { result.append((name, value)) }
        }
        if let replicationOptions { result.append(("options", replicationOptions)) }
        return result
    }

    /// Still waiting for the server opened for it (it may have left meanwhile).
    var isAwaitingReplicationServer: Bool {
        replication != .none && machine.phase == .awaitingWelcome && connection.isOpen
    }

    /// The server opened for this replication client has logged in: the client is greeted with that
    /// server's own parameters, and keeps it until it leaves.
    func startReplication(on server: ServerConnection) {
        guard let cancelKey else { return }
        var welcome = ByteBuffer()
        welcome.writeAuthenticationOK()
        for (name, value) in server.reportedParameters { welcome.writeParameterStatus(name: name, value: value) }
        welcome.writeBackendKeyData(processID: cancelKey.processID, secretKey: cancelKey.secretKey)
        welcome.writeReadyForQuery(.idle)
        connection.writeAndFlush(welcome)
        _ = machine.welcome()
        lastReady = .now()
        // Its values are the server's, so linking sets nothing.
        parameters = server.parameters
        server.assign(to: self)
    }

    /// max_db_client_connections and max_user_client_connections (per-database/per-user value, else global),
    /// counted across all shards by the database asked for and the login user; the login is counted when it
    /// passes. Admin users on the console are counted but never refused, so they can always get in to fix
    /// things.
    private func countClientLogin(
        database: String, definition: DatabaseDefinition?, user: String, exempt: Bool = false
    ) throws {
        let login = SharedState.ClientLogin(database: database, user: user)
        let limits = exempt ? (database: 0, user: 0) : clientLimits(definition: definition, user: user)
        if let limit = shard.shared.clientLoggingIn(login, databaseLimit: limits.database, userLimit: limits.user) {
            throw limit.error
        }
        clientLogin = login
    }

    /// The per-database and per-user client limits in effect (0: none): the database's or user's own value,
    /// else the global one.
    private func clientLimits(definition: DatabaseDefinition?, user: String) -> (database: Int, user: Int) {
        (definition?.maxDBClientConnections ?? shard.settings.maxDBClientConnections,
         shard.configuration.users[user]?.maxUserClientConnections ?? shard.settings.maxUserClientConnections)
    }

    // MARK: Admin console

    /// Set once the other engine loops have caught up for this login (see `meetsAClientLimit`).
    private var otherLoopsCaughtUp = false

    /// Whether a client limit (max_client_conn, max_db_client_connections, max_user_client_connections)
    /// would refuse `startup` as the counts stand. With several loops, a client that hung up on another
    /// loop just before this one connected may not have been counted out yet; a login at a limit waits for
    /// the other loops to catch up, then is judged again, so a client reconnecting at the limit gets in as
    /// it would with one thread.
    private func meetsAClientLimit(_ startup: ClientStartup) -> Bool {
        guard shard.group.loops.loops.count > 1 else { return false }
        let isConsole = startup.database == AdminAccess.databaseName
        if !isConsole, shard.shared.clientCount > shard.settings.maxClientConn { return true }
        let definition = isConsole ? nil : shard.database(named: startup.database)
        let limits = clientLimits(definition: definition, user: startup.user)
        return shard.shared.clientLimitReached(
            SharedState.ClientLogin(database: startup.database, user: startup.user),
            databaseLimit: limits.database, userLimit: limits.user) != nil
    }

    private func readStartupAgainAfterOtherLoopsCatchUp() {
        otherLoopsCaughtUp = true
        connection.readsHeld = true
        shard.group.loops.afterOtherLoopsCatchUp(from: shard.loop) { [weak self] in
            guard let self, machine.phase == .startup, connection.isOpen else { return }
            handlingErrors { try self.readStartup() }
            // Still in startup: an auth_query lookup holds the reads until it answers.
            guard machine.phase != .startup else { return }
            flushPendingWrites()
            resumeReads()
        }
    }

    /// Makes an AdminSession for this connection; `completeAdminHandover` then hands it over.
    private func handOverToAdmin(role: AdminRole, user: String) throws {
        try countClientLogin(database: AdminAccess.databaseName, definition: nil, user: user, exempt: role == .admin)
        machine.close()
        // The console does not count against max_client_conn: it leaves the client registry.
        shard.unregister(self)
        adminSuccessor = AdminSession(
            connection: connection, shard: shard, role: role, user: user, id: id, connectTime: connectTime,
            peer: peerDescription, clientLogin: clientLogin)
        clientLogin = nil
    }

    /// Gives the connection to the console session, with the bytes that arrived with the login.
    private func completeAdminHandover(leftover: ByteBuffer?) {
        guard let session = adminSuccessor else { return }
        session.start()
        // A read this session held (during an off-loop password check) now goes to the console.
        connection.readsHeld = false
        if let leftover, leftover.readableBytes > 0 {
            session.connectionRead(connection, leftover)
            session.connectionReadComplete(connection)
        }
    }

    /// AuthenticationOk, the pool's ParameterStatus set with this client's own values, a Lifeguard
    /// BackendKeyData and ReadyForQuery: the whole greeting, without touching a server.
    func sendWelcome() {
        guard machine.phase == .awaitingWelcome, let cancelKey, let pool else { return }
        parameters.fillUnset(from: pool.defaultParameters)
        guard let welcome = pool.welcomeMessages(for: &parameters) else { return }
        // The pool's cached messages go out as they are (appending to them would copy them); this
        // client's own tail follows in the same sendmsg.
        connection.write(welcome)
        var tail = ByteBuffer()
        tail.reserveCapacity(64)
        tail.writeBackendKeyData(processID: cancelKey.processID, secretKey: cancelKey.secretKey)
        if !shard.settings.loginNotifyMessage.isEmpty {
            tail.writeErrorResponse(
                severity: "NOTICE", code: "00000", message: shard.settings.loginNotifyMessage, notice: true)
        }
        tail.writeReadyForQuery(.idle)
        connection.writeAndFlush(tail)
        _ = machine.welcome()
        lastReady = .now()
        if hasUnsentTraffic { requestServerIfNeeded() }
    }

    // MARK: Traffic

    /// Named prepared statements are shared through the shard's registry (transaction and statement mode).
    var sharesStatements: Bool { splitter != nil }

    /// True between client messages, so a server can be let go without a half-sent message on it.
    private var isBetweenMessages: Bool {
        splitter?.isAtMessageBoundary ?? scanner.isAtMessageBoundary
    }

    /// Client traffic received and not yet handed to a server.
    private var hasUnsentTraffic: Bool {
        pendingData != nil || !pendingPieces.isEmpty
    }

    private func receiveTraffic(_ buffer: ByteBuffer) throws {
        var buffer = buffer
        if server == nil, !hasUnsentTraffic, isBetweenMessages {
            // With no server and nothing sent, a Flush has nothing to deliver. psycopg ends each pipeline with
            // Sync then Flush, and the Flush may arrive after the ReadyForQuery released the server: taking a
            // server for it would leave that server linked, as nothing would ever answer with ReadyForQuery.
            FrontendMessage.skipLeadingFlushes(&buffer)
            if buffer.readableBytes == 0 { return }
        }
        if splitter != nil {
            try receiveSharingStatements(buffer)
            return
        }
        var terminated = false
        let stop = try scanner.scan(buffer) { id, _ in
            if id == FrontendID.terminate {
                terminated = true
                return false
            }
            try accept(id)
            return true
        }

        var data = buffer
        if terminated, let stop {
            // Terminate is only for Lifeguard: the server stays open for the next client.
            let start = max(buffer.readerIndex, stop - 5)
            data = buffer.getSlice(at: buffer.readerIndex, length: start - buffer.readerIndex)!
        }
        if data.readableBytes > 0 {
            countRequest(bytes: data.readableBytes)
            if server == nil, pendingData == nil { requestServerIfNeeded() }
            if let server = machine.readyServer, pendingData == nil {
                server.forwardFromClient(data)
                serverNeedsFlush = true
            } else {
                if pendingData == nil {
                    pendingData = data
                } else {
                    pendingData!.writeImmutableBuffer(data)
                }
                requestServerIfNeeded()
            }
        }
        if terminated { closeOnTerminate() }
    }

    private func closeOnTerminate() {
        closeReason = "client close request"
        if serverNeedsFlush {
            serverNeedsFlush = false
            server?.flush()
        }
        connection.close()
    }

    /// Transaction and statement mode with max_prepared_statements: the messages that name a prepared
    /// statement are mapped to the shared statements (a Bind only in its head, so its parameters stream);
    /// all other bytes pass as they came.
    private func receiveSharingStatements(_ buffer: ByteBuffer) throws {
        var terminated = false
        try splitter!.split(buffer) { piece in
            switch piece {
            case .raw(let bytes):
                countRequest(bytes: bytes.readableBytes)
                send(.bytes(bytes))
            case .ended(let id):
                try accept(id)
                if let request = ReplyQueue.Request(messageID: id) { send(.request(request)) }
            case .whole(let id, let message):
                if id == FrontendID.terminate {
                    terminated = true
                    return .stop
                }
                guard let verdict = verdict(on: message, id: id) else { throw PoolerError.badPacket }
                if verdict == .pass {
                    // Unchanged: it stays in the raw run, so the read still goes out in one write.
                    try accept(id)
                    if let request = ReplyQueue.Request(messageID: id) { send(.request(request)) }
                }
                return verdict
            case .incomplete(let id, let partial):
                // Held until its statement name is known.
                return verdict(on: partial, id: id) ?? .take
            case .taken(let id, let message):
                try accept(id)
                countRequest(bytes: message.readableBytes)
                try sendTaken(id, message)
            case .head(_, let head):
                countRequest(bytes: head.readableBytes)
                try sendBindHead(head)
            }
            return .pass
        }
        if terminated { closeOnTerminate() }
    }

    /// What becomes of a Parse, Bind, Describe or Close (nil: the bytes so far do not tell). Messages that
    /// name a statement are mapped (the unnamed one too with share_unnamed_statements, once the client has
    /// parsed it): a Bind by its head, the others whole.
    private func verdict(on message: ByteBuffer, id: UInt8) -> MessageSplitter.Verdict? {
        if id == FrontendID.query || (id == FrontendID.parse && !sharesUnnamed && isUnnamedParse(message)) {
            guard let dropsAll = FrontendMessage.dropsAllStatements(message) else { return nil }
            if dropsAll {
                // Applied where it stands in the stream, so Parses pipelined after it are kept.
                forgetAllStatements()
                send(.dropAllStatements)
            }
            return .pass
        }
        if id == FrontendID.bind {
            guard let head = ExtendedQueryMessage.bindHead(message) else { return nil }
            guard mapsStatement(named: head.statement, id: id) else { return .pass }
            headStatementName = head.statement
            return .replaceHead(count: head.length)
        }
        switch ExtendedQueryMessage.statementReference(message, id: id) {
        case .undecided: return nil
        case .portal: return .pass
        case .statement(let name): return mapsStatement(named: name, id: id) ? .take : .pass
        }
    }

    private func isUnnamedParse(_ message: ByteBuffer) -> Bool {
        message.getInteger(at: message.readerIndex + 5, as: UInt8.self) == 0
    }

    /// A console SET max_prepared_statements = 0 turns the mapping off at once: names then reach the server
    /// as the client wrote them (PgBouncer does the same; statements already shared stay on the servers).
    private func mapsStatement(named name: String, id: UInt8) -> Bool {
        guard shard.settings.maxPreparedStatements > 0 else { return false }
        return !name.isEmpty || (sharesUnnamed && (id == FrontendID.parse || statements[""] != nil))
    }

    /// A complete client message of type `id` (not Terminate) after login.
    private func accept(_ id: UInt8) throws {
        guard Self.acceptedIDs.contains(id) else {
            throw PoolerError("unknown pkt from client: '\(Character(Unicode.Scalar(id)))'")
        }
        if id == FrontendID.query {
            if shard.settings.disablePQExec { throw PoolerError.pqexecDisallowed }
            // PostgreSQL drops the unnamed statement at every simple Query.
            if sharesUnnamed { forget("") }
        }
        tracker.clientSent(id)
    }

    /// Maps a whole Parse, Describe or Close that names a statement to the client's statements.
    private func sendTaken(_ id: UInt8, _ message: ByteBuffer) throws {
        switch id {
        case FrontendID.parse:
            guard let (name, definition) = ExtendedQueryMessage.parse(message) else { throw PoolerError.badPacket }
            pool?.stats.clientParses &+= 1
            // The unnamed statement is replaced by each Parse, as in PostgreSQL.
            guard name.isEmpty || statements[name] == nil else { throw PoolerError.preparedStatementInUse(name) }
            let replaced = statements[name]?.definition.readableBytes ?? 0
            guard statements.count < Self.maxStatementsPerClient || statements[name] != nil,
                statementBytes - replaced + definition.readableBytes <= Self.maxStatementBytesPerClient
            else { throw PoolerError.tooManyPreparedStatements }
            let statement = shard.preparedStatements.statement(for: definition)
            statementBytes += definition.readableBytes - replaced
            statements[name] = statement
            send(.parse(statement, clientName: name))
        case FrontendID.close:
            guard let (_, name) = ExtendedQueryMessage.target(message) else { throw PoolerError.badPacket }
            // Only this client's name goes: other clients may share the statement.
            forget(name)
            send(.closeStatement)
        default:
            guard let (_, name) = ExtendedQueryMessage.target(message) else { throw PoolerError.badPacket }
            guard let statement = statements[name] else { throw PoolerError.preparedStatementMissing }
            send(.describe(statement))
            send(.request(.describe))
        }
    }

    /// The head of a Bind of the statement `headStatementName` names; its parameters follow raw.
    private func sendBindHead(_ head: ByteBuffer) throws {
        pool?.stats.binds &+= 1
        guard let statement = statements[headStatementName] else { throw PoolerError.preparedStatementMissing }
        // A length field near 2^31 plus the longer server name would not fit the renamed message's header.
        guard ExtendedQueryMessage.renamedBindLength(head, statementName: statement.serverName) != nil else {
            throw PoolerError.packetTooLarge(Int(head.getInteger(at: head.readerIndex + 1, as: Int32.self) ?? 0))
        }
        send(.bindHead(head, statement))
    }

    /// Hands a piece to the ready server, or keeps it until one is.
    private func send(_ piece: OutboundPiece) {
        // Usually the pool lends an idle server at once: the piece then goes straight to it, unqueued.
        if server == nil, pendingPieces.isEmpty { requestServerIfNeeded() }
        if let server = machine.readyServer, pendingPieces.isEmpty {
            server.send(piece, for: self)
            serverNeedsFlush = true
        } else {
            pendingPieces.append(piece)
            requestServerIfNeeded()
        }
    }

    /// A reply Lifeguard gives in the server's place (ParseComplete, CloseComplete).
    func answerLocally(_ reply: ByteBuffer) {
        connection.write(reply)
        localRepliesNeedFlush = true
    }

    private func flushLocalReplies() {
        guard localRepliesNeedFlush else { return }
        localRepliesNeedFlush = false
        connection.flush()
    }

    /// The server could not keep the client's statement `name` (its Parse failed or was skipped).
    func forgetStatement(named name: String, _ statement: PreparedStatement) {
        if statements[name] === statement { forget(name) }
    }

    private func forget(_ name: String) {
        guard let statement = statements.removeValue(forKey: name) else { return }
        statementBytes -= statement.definition.readableBytes
    }

    /// DEALLOCATE ALL or DISCARD ALL ran for this client.
    func forgetAllStatements() {
        statements = [:]
        statementBytes = 0
    }

    /// PgBouncer's counting: a transaction and a query start with the first client bytes after the previous
    /// one ended (a pipelined batch is one query).
    @inline(__always)
    private func countRequest(bytes: Int) {
        guard let pool else { return }
        pool.stats.bytesReceived &+= bytes
        if queryStart == nil {
            let now = NIODeadline.now()
            queryStart = now
            pool.stats.queries &+= 1
            if transactionStart == nil {
                transactionStart = now
                pool.stats.transactions &+= 1
            }
        }
    }

    /// A ReadyForQuery ended the query (nothing outstanding) and, when idle, the transaction.
    private func countCompletion(_ status: TransactionStatus) {
        guard tracker.outstandingRequests == 0, let pool, let queryStart else { return }
        let now = NIODeadline.now()
        pool.stats.queryMicroseconds &+= Int((now - queryStart).nanoseconds / 1000)
        self.queryStart = nil
        lastReady = now
        if status == .idle, let transactionStart {
            pool.stats.transactionMicroseconds &+= Int((now - transactionStart).nanoseconds / 1000)
            self.transactionStart = nil
        }
    }

    private func requestServerIfNeeded() {
        guard let pool, machine.wantsServer() else { return }
        pool.requestServer(for: self)
    }

    /// The pool lent this client `server`; `ready` is false while the server is still syncing parameters.
    func serverAssigned(_ server: ServerConnection, ready: Bool) {
        pool?.stats.serverAssignments &+= 1
        machine.serverAssigned(server, ready: ready)
        if ready { sendPendingData() }
    }

    func serverLinkReady() {
        machine.serverBecameReady()
        sendPendingData()
    }

    private func sendPendingData() {
        if let server {
            if let data = pendingData {
                pendingData = nil
                server.forwardFromClient(data)
                serverNeedsFlush = true
            }
            if !pendingPieces.isEmpty {
                let pieces = pendingPieces
                pendingPieces = []
                for piece in pieces { server.send(piece, for: self) }
                serverNeedsFlush = true
            }
            // A server lent while the client's read is handled (the usual case in transaction mode) is
            // flushed once, with the rest of that read, by channelReadComplete.
            if !handlingRead {
                if serverNeedsFlush {
                    serverNeedsFlush = false
                    server.flush()
                }
                flushLocalReplies()
            }
        }
        resumeReads()
    }

    /// ReadyForQuery from the linked server. The server may go back to the pool only if the client is also
    /// between messages, so no half-sent message is left on it.
    func serverReady(_ status: TransactionStatus) -> TransactionTracker.Decision {
        let decision = tracker.serverReady(status)
        countCompletion(status)
        if decision == .release, !isBetweenMessages || hasUnsentTraffic {
            return .keep
        }
        return decision
    }

    /// CopyInResponse from the linked server.
    func serverStartedCopyIn() {
        tracker.serverStartedCopyIn()
    }

    func serverReleased() {
        machine.serverGone()
        resumeReads()
    }

    /// After a parameter sync, the server's spelling of each value becomes the client's, so later
    /// comparisons match (PostgreSQL reports "UTF8" for a client that asked for "utf-8"); a value the client
    /// lacked and the server reported after its RESET is the default the client now has.
    func adoptServerParameters(_ serverParameters: ParameterSet) {
        for (name, from, to) in parameters.adoptSpelling(from: serverParameters) {
            logger.debug("\(logPrefix) varcache_set_canonical: setting \(name) to its canonical version \(from) -> \(to)")
        }
        parameters.fillUnset(from: serverParameters)
    }

    func forwardFromServer(_ buffer: ByteBuffer) {
        pool?.stats.bytesSent &+= buffer.readableBytes
        connection.write(buffer)
    }

    func flushToClient() {
        connection.flush()
    }

    /// The linked server's connection died: PgBouncer tells the client "server conn crashed?".
    func serverClosed(reason: String) {
        machine.serverGone()
        closeWithError(.serverCrashed, reason: "server conn crashed?")
    }

    /// Sends a FATAL ErrorResponse and closes once it is written.
    func closeWithError(_ error: PoolerError, reason: String) {
        if machine.isClosed { return }
        if closeReason == nil { closeReason = reason }
        // As PgBouncer does: the line is logged before the client can read the error, so whoever watches the
        // log sees it by the time the client has failed.
        if shard.settings.logDisconnections { logClosing(closeReason ?? reason) }
        if shard.settings.logPoolerErrors {
            logger.warning("\(logPrefix) pooler error: \(error.message)")
        }
        if let pool { pool.removeWaiting(self) }
        machine.close()
        var buffer = ByteBufferAllocator().buffer(capacity: 64 + error.message.utf8.count)
        buffer.writeErrorResponse(severity: "FATAL", code: error.sqlState, message: error.message)
        connection.closeAfterWriting(buffer)
    }
}

import LifeguardCore
import LifeguardEngine
import Logging
import NIOCore
import PostgresWire

/// A logged-in session on the admin console (the virtual database `pgbouncer`). ClientSession does the
/// startup and authentication, then hands the connection over to this session.
///
/// Only the simple query protocol is served, one command per Query; replies follow PgBouncer's
/// (console errors are ERROR 08P01 and the session stays open).
final class AdminSession: ConnectionDelegate {
    /// The longest command accepted: the longest useful one is a SET of a long list.
    static let maxCommandLength = 64 * 1024

    unowned(unsafe) let shard: PoolShard
    let role: AdminRole
    let user: String
    let id: Int
    let connectTime: Int
    private(set) var requestTime: Int
    private let connectedAt = NIODeadline.now()
    private let peer: String
    /// This session's place in the per-database and per-user client counts, given back at close.
    private let clientLogin: SharedState.ClientLogin?
    private var scanner: FrameScanner
    private let connection: Connection
    /// The negotiated TLS version and cipher, for SHOW CLIENTS; nil in plain text.
    var tlsSummary: String? { connection.tlsSummary }
    private var closeReason: String?
    /// A PAUSE or WAIT_CLOSE whose reply waits until servers are gone. Meanwhile no further command runs:
    /// reads stop, and what was already read waits in `heldInput`.
    private var pendingReply: DeferredCommand?
    private var heldInput: ByteBuffer?
    /// Given when the session starts (BackendKeyData); ^C with it resumes a PAUSE or SUSPEND.
    private var cancelKey = CancelKey(processID: 0, secretKey: 0)

    init(
        connection: Connection, shard: PoolShard, role: AdminRole, user: String, id: Int, connectTime: Int,
        peer: String, clientLogin: SharedState.ClientLogin?
    ) {
        self.clientLogin = clientLogin
        self.connection = connection
        self.shard = shard
        self.role = role
        self.user = user
        self.id = id
        self.connectTime = connectTime
        self.requestTime = connectTime
        self.peer = peer
        self.scanner = FrameScanner(
            capturedIDs: MessageIDSet([FrontendID.query]),
            maxMessageLength: min(shard.settings.maxPacketSize, Self.maxCommandLength))
    }

    private var logPrefix: String {
        "C-\(pointerText(self)): \(AdminAccess.databaseName)/\(user)@\(peer)"
    }

    // MARK: Connection events

    /// Takes the connection over from the ClientSession that logged it in, and greets the client.
    func start() {
        connection.delegate = self
        cancelKey = shard.register(self)
        shard.consoleStatistics.clientLogins += 1
        var buffer = ByteBufferAllocator().buffer(capacity: 256)
        buffer.writeAuthenticationOK()
        for (name, value) in [
            ("server_version", "\(LifeguardVersion.number)/bouncer"), ("client_encoding", "UTF8"),
            ("server_encoding", "UTF8"), ("DateStyle", "ISO"), ("TimeZone", "GMT"),
            ("standard_conforming_strings", "on"), ("is_superuser", "on"),
        ] {
            buffer.writeParameterStatus(name: name, value: value)
        }
        buffer.writeBackendKeyData(processID: cancelKey.processID, secretKey: cancelKey.secretKey)
        buffer.writeReadyForQuery(.idle)
        connection.writeAndFlush(buffer)
        if shard.settings.logConnections {
            shard.logger.info(
                "\(logPrefix) login attempt: db=\(AdminAccess.databaseName) user=\(user) tls=\(connection.tlsSummary ?? "no")")
        }
    }

    func connectionRead(_ connection: Connection, _ buffer: ByteBuffer) {
        requestTime = WallClock.seconds()
        // A read already under way when a deferred command began waits for the commands before it.
        if mustWait {
            hold(buffer)
            return
        }
        execute(buffer)
        runHeldCommands()
    }

    /// Holds reads while a command's reply is deferred, and while the client is not reading its replies:
    /// console output must not pile up for a client that only sends.
    func connectionReadComplete(_ connection: Connection) {
        if mustWait { connection.readsHeld = true }
    }

    /// A deferred reply, or output the client has not read yet: the next command waits.
    private var mustWait: Bool {
        pendingReply != nil || !connection.isWritable
    }

    /// Runs the commands in `buffer`, stopping at one whose reply is deferred or after one whose output
    /// fills the client's buffers; the rest waits.
    private func execute(_ buffer: ByteBuffer) {
        do {
            let stop = try scanner.scan(buffer) { id, body in
                try receive(id, body)
            }
            if let stop, mustWait, stop < buffer.writerIndex {
                // The rest of this read comes before anything held meanwhile.
                var rest = buffer.getSlice(at: stop, length: buffer.writerIndex - stop)!
                if let later = heldInput { rest.writeImmutableBuffer(later) }
                heldInput = rest
            }
        } catch let error as PoolerError {
            closeWithFatal(error)
        } catch WireError.messageTooLarge(let length) {
            closeWithFatal(PoolerError("console command too long: \(length) bytes"))
        } catch {
            closeWithFatal(PoolerError("bad packet"))
        }
    }

    private func hold(_ bytes: ByteBuffer) {
        if heldInput == nil {
            heldInput = bytes
        } else {
            heldInput!.writeImmutableBuffer(bytes)
        }
    }

    func connectionWritable(_ connection: Connection) {
        runHeldCommands()
    }

    private func resumeReads() {
        if !mustWait { connection.readsHeld = false }
    }

    func connectionClosed(_ connection: Connection, error: SocketError?) {
        if closeReason == nil, let error { closeReason = "client socket error: \(error)" }
        shard.unregister(self, cancelKey: cancelKey)
        if let clientLogin { shard.shared.clientLoggedOut(clientLogin) }
        if pendingReply != nil { shard.group.acrossShards(from: shard) { shard.group.dropPendingReplies(of: self) } }
        if shard.settings.logDisconnections {
            let age = (NIODeadline.now() - connectedAt).nanoseconds / 1_000_000_000
            shard.logger.info("\(logPrefix) closing because: \(closeReason ?? "client unexpected eof") (age=\(age)s)")
        }
    }

    /// Returns false to stop reading the rest of the read (the session is closing).
    private func receive(_ id: UInt8, _ body: ByteBuffer?) throws -> Bool {
        // Commands read before the client went away are not run: nobody would read their output.
        guard connection.isOpen else { return false }
        switch id {
        case FrontendID.query:
            var body = body ?? ByteBuffer()
            let sql = body.readNullTerminatedString() ?? ""
            var reply = ByteBuffer()
            // PgBouncer counts each console command as a transaction and a query of the console's pool.
            shard.consoleStatistics.transactions += 1
            shard.consoleStatistics.queries += 1
            // With the other loops parked, as a single-threaded pooler would be busy with the command.
            let outcome = shard.group.acrossShards(from: shard) {
                let outcome = AdminConsole(shard: shard, session: self).execute(sql, into: &reply)
                // The tag and ReadyForQuery come later; the commands after it wait. Set before the other
                // loops run again, since one of them may complete it.
                if case .deferred(let deferred) = outcome { pendingReply = deferred }
                return outcome
            }
            switch outcome {
            case .done:
                reply.writeReadyForQuery(.idle)
                connection.writeAndFlush(reply)
                return !mustWait
            case .deferred:
                return false
            case .exit:
                break
            }
            return true
        case FrontendID.terminate:
            closeReason = "client close request"
            connection.close()
            return false
        case FrontendID.parse, FrontendID.bind, FrontendID.execute:
            sendErrorThenClose("extended query protocol not supported by admin console")
            return false
        case FrontendID.functionCall, FrontendID.sync, FrontendID.flush, FrontendID.close, FrontendID.describe,
            FrontendID.copyData, FrontendID.copyDone, FrontendID.copyFail:
            sendErrorThenClose("unsupported packet type for admin console: \(id)")
            return false
        default:
            throw PoolerError("unknown pkt")
        }
    }

    /// Completes a deferred PAUSE or WAIT_CLOSE.
    func finishDeferred(tag: String) {
        pendingReply = nil
        var reply = ByteBuffer()
        reply.writeCommandComplete(tag)
        reply.writeReadyForQuery(.idle)
        connection.writeAndFlush(reply)
        // Called while the shard walks its deferred replies: the commands that waited run after that.
        connection.loop.deferTask { self.runHeldCommands() }
    }

    private func runHeldCommands() {
        while !mustWait, let held = heldInput {
            heldInput = nil
            execute(held)
        }
        resumeReads()
    }

    /// ERROR + ReadyForQuery, then FATAL `bad packet` and a close, as PgBouncer answers protocol misuse.
    private func sendErrorThenClose(_ message: String) {
        var reply = ByteBuffer()
        reply.writeErrorResponse(severity: "ERROR", code: "08P01", message: message)
        reply.writeReadyForQuery(.idle)
        connection.write(reply)
        closeWithFatal(PoolerError("bad packet"))
    }

    func closeWithFatal(_ error: PoolerError) {
        guard connection.isOpen else { return }
        if closeReason == nil { closeReason = error.message }
        var reply = ByteBuffer()
        reply.writeErrorResponse(severity: "FATAL", code: error.sqlState, message: error.message)
        connection.closeAfterWriting(reply)
    }

    var isWaitingForReply: Bool { pendingReply != nil }
    var peerAddress: SocketAddress? { connection.remoteAddress }
    var localAddress: SocketAddress? { connection.localAddress }
    var waitMicroseconds: Int { 0 }
}

import DequeModule
import LifeguardCore
import Logging
import NIOCore
import PostgresWire

/// The server connections of one (database, user) pair and the clients queued for them.
///
/// Servers are handed out LIFO (the most recently used one is the warmest), clients are served FIFO, and at
/// most one new server login runs at a time, as in PgBouncer.
final class Pool {
    let key: PoolKey
    private(set) var database: DatabaseDefinition
    /// Unchecked, like ClientSession's: the shard outlives its pools.
    unowned(unsafe) let shard: PoolShard
    private(set) var mode: PoolMode
    private(set) var capacity: PoolCapacity
    private(set) var resetQuery: String
    private(set) var resetQueryAlways: Bool
    /// The database's hosts (a `host=` list), and the one the next server connection goes to.
    private var targets: [ServerAddress] = []
    private var targetIndex = 0
    /// Client timeouts with this pool's per-user and per-database overrides.
    private(set) var timeouts: Timeouts
    /// `server_lifetime`, per database or global.
    private(set) var serverLifetime: Double

    /// AuthenticationOk and the untracked ParameterStatus messages of the first server login, encoded once
    /// and replayed to every client that logs in; the tracked ones are written per client.
    private(set) var welcomePrefix: ByteBuffer?
    /// The tracked subset of `welcomeParameters`: what a client that set nothing expects.
    private(set) var defaultParameters = ParameterSet()
    /// The last welcome encoded: a pool's clients mostly send the same parameters, so the prefix and
    /// their ParameterStatus messages are encoded once and reused.
    private var lastWelcome: (parameters: ParameterSet, messages: ByteBuffer)?
    /// ClientKey and ServerKey learned from a client's SCRAM login, to log in to the server the same way.
    var scramPassThroughKeys: (clientKey: [UInt8], serverKey: [UInt8])?

    private var idleServers: [ServerConnection] = []
    private var waitingClients: Deque<(client: ClientSession, since: NIODeadline)> = []
    private var clientsWaitingForWelcome: [ClientSession] = []
    private(set) var serverCount = 0
    /// Running totals for SHOW STATS; bumped by this pool's clients on the event loop.
    var stats = PoolStatistics()
    /// The last failed server login, while `server_login_retry` has not passed since.
    private var lastLoginFailure: (error: PoolerError, at: NIODeadline)?
    private var serversLoggingIn = 0
    var clientCount = 0

    init(key: PoolKey, database: DatabaseDefinition, user: UserDefinition?, settings: Settings, shard: PoolShard) {
        self.key = key
        self.shard = shard
        (self.database, self.mode, self.capacity, self.resetQuery, self.resetQueryAlways) =
            Self.derive(database: database, user: user, settings: settings)
        self.timeouts = Timeouts(settings: settings, database: database, user: user)
        self.serverLifetime = database.serverLifetime ?? settings.serverLifetime
        self.targets = ServerAddress.targets(database: database, settings: settings)
    }

    /// The host for a new server connection: the next one in turn (`load_balance_hosts = round-robin`), or
    /// the current one until it fails (`disable`).
    func nextServerAddress() -> ServerAddress {
        let address = targets[targetIndex % targets.count]
        if database.loadBalanceHosts { targetIndex += 1 }
        return address
    }

    /// A connection to `address` failed: with `load_balance_hosts = disable`, move on to the next host.
    func serverAddressFailed(_ address: ServerAddress) {
        if !database.loadBalanceHosts, targets[targetIndex % targets.count] == address { targetIndex += 1 }
    }

    /// Takes a reloaded configuration. A changed connection string (host, port, dbname, forced user or its
    /// password) closes the pool's servers as they come free, as PgBouncer does.
    func apply(database newDatabase: DatabaseDefinition, user: UserDefinition?, settings: Settings) {
        let connectionChanged =
            newDatabase.host != database.host || newDatabase.port != database.port
            || newDatabase.dbname != database.dbname || newDatabase.user != database.user
            || newDatabase.password != database.password
        (database, mode, capacity, resetQuery, resetQueryAlways) =
            Self.derive(database: newDatabase, user: user, settings: settings)
        timeouts = Timeouts(settings: settings, database: newDatabase, user: user)
        serverLifetime = newDatabase.serverLifetime ?? settings.serverLifetime
        targets = ServerAddress.targets(database: newDatabase, settings: settings)
        if connectionChanged { shard.reconnect(pool: self) }
        launchIfNeeded(now: .now())
    }

    /// Precedence: per-user settings, then per-database, then `[pgbouncer]`.
    private static func derive(database: DatabaseDefinition, user: UserDefinition?, settings: Settings)
        -> (DatabaseDefinition, PoolMode, PoolCapacity, String, Bool)
    {
        let capacity = PoolCapacity(
            size: user?.poolSize ?? database.poolSize ?? settings.defaultPoolSize,
            reserveSize: user?.reservePoolSize ?? database.reservePoolSize ?? settings.reservePoolSize,
            minSize: database.minPoolSize ?? settings.minPoolSize,
            reserveTimeoutNanoseconds: Int64(settings.reservePoolTimeout * 1e9),
            maxDatabaseConnections: database.maxDBConnections ?? settings.maxDBConnections,
            maxUserConnections: user?.maxUserConnections ?? settings.maxUserConnections)
        return (
            database, user?.poolMode ?? database.poolMode ?? settings.poolMode, capacity, settings.serverResetQuery,
            settings.serverResetQueryAlways
        )
    }

    var logger: Logger { shard.logger }

    /// The credentials for logging in to the server: the database's forced user's password, else the userlist.
    var serverSecret: PasswordSecret? {
        if database.user != nil, let password = database.password { return .plain(password) }
        return shard.secret(for: key.user)
    }

    // MARK: Clients

    /// Greets `client` from the cached ParameterStatus set, or queues it until the first server has logged in.
    func welcome(_ client: ClientSession) {
        if welcomePrefix != nil {
            client.sendWelcome()
        } else if let cached = failingFast(now: .now()) {
            client.closeWithError(cached, reason: cached.message)
        } else {
            clientsWaitingForWelcome.append(client)
            launchIfNeeded(now: .now())
        }
    }

    /// AuthenticationOk and every ParameterStatus message for a client with `parameters` (all tracked
    /// slots filled); nil until the first server has logged in.
    func welcomeMessages(for parameters: ParameterSet) -> ByteBuffer? {
        if let lastWelcome, lastWelcome.parameters == parameters { return lastWelcome.messages }
        guard var messages = welcomePrefix else { return nil }
        for index in TrackedParameter.names.indices {
            if let value = parameters.value(at: index) {
                messages.writeParameterStatus(name: TrackedParameter.names[index], value: value)
            }
        }
        lastWelcome = (parameters, messages)
        return messages
    }

    /// `client` has a request and no server: give it an idle one or queue it.
    func requestServer(for client: ClientSession) {
        if shard.isPaused(key.database) {
            // PAUSE: the client waits for RESUME.
            waitingClients.append((client, .now()))
        } else if let server = takeIdleServer() {
            lend(server, to: client)
        } else if let cached = failingFast(now: .now()) {
            client.closeWithError(cached, reason: cached.message)
        } else {
            waitingClients.append((client, .now()))
            launchIfNeeded(now: .now())
        }
    }

    /// LIFO keeps the warmest server busy; `server_round_robin` spreads load FIFO instead.
    private func takeIdleServer() -> ServerConnection? {
        guard !idleServers.isEmpty else { return nil }
        return shard.settings.serverRoundRobin ? idleServers.removeFirst() : idleServers.removeLast()
    }

    /// Lends an idle server, checking it first with server_check_query when it sat unused for
    /// server_check_delay (PgBouncer's "used" servers).
    private func lend(_ server: ServerConnection, to client: ClientSession) {
        let settings = shard.settings
        if let check = settings.serverCheckQuery,
            server.idleNanoseconds >= Int64(settings.serverCheckDelay * 1e9)
        {
            server.runCheck(check, for: client)
        } else {
            server.assign(to: client)
        }
    }

    /// A client whose server failed its check waits again, first in line.
    func requeueFirst(_ client: ClientSession) {
        waitingClients.prepend((client, .now()))
        launchIfNeeded(now: .now())
    }

    /// `client` is going away: forget any place it held in a queue.
    func removeWaiting(_ client: ClientSession) {
        if let index = waitingClients.firstIndex(where: { $0.client === client }) {
            waitingClients.remove(at: index)
        }
        clientsWaitingForWelcome.removeAll { $0 === client }
    }

    var waitingCount: Int { waitingClients.count }

    /// No client logged in or queued: a candidate for pool_idle_timeout / autodb_idle_timeout.
    var hasNoClients: Bool { clientCount == 0 && waitingClients.isEmpty && clientsWaitingForWelcome.isEmpty }
    var unusedSince: NIODeadline?

    /// Closes one idle server, if this pool has any; returns whether it did.
    func closeOneIdleServer(reason: String) -> Bool {
        guard let server = idleServers.popLast() else { return false }
        // Uncounted now, so that the pool that asked can take the slot at once, as in PgBouncer.
        uncount(server)
        evictedServers.insert(ObjectIdentifier(server))
        server.close(reason: reason)
        return true
    }

    /// Servers closed to free a slot for another pool: already uncounted when their close completes.
    private var evictedServers: Set<ObjectIdentifier> = []

    private func uncount(_ server: ServerConnection) {
        serverCount -= 1
        shard.counts.serversPerDatabase[key.database, default: 1] -= 1
        shard.counts.serversPerUser[key.user, default: 1] -= 1
    }

    // MARK: Servers

    /// A server finished its login (and connect_query).
    func serverLoggedIn(_ server: ServerConnection) {
        serversLoggingIn -= 1
        lastLoginFailure = nil
        if welcomePrefix == nil {
            var prefix = ByteBuffer()
            prefix.writeAuthenticationOK()
            for (name, value) in server.reportedParameters where TrackedParameter.index(of: name) == nil {
                prefix.writeParameterStatus(name: name, value: value)
            }
            welcomePrefix = prefix
            defaultParameters = server.parameters
            let waiting = clientsWaitingForWelcome
            clientsWaitingForWelcome = []
            for client in waiting {
                client.sendWelcome()
            }
        }
        serverAvailable(server)
        launchIfNeeded(now: .now())
    }

    /// While logins are failing and no server is left to free up, a client would wait for nothing:
    /// PgBouncer fails it at once with the cached error.
    private func failingFast(now: NIODeadline) -> PoolerError? {
        guard serverCount == 0, let failure = lastLoginFailure, isInLoginRetryDelay(now: now) else { return nil }
        return PoolerError(
            "server login has been failing, cached error: \(failure.error.message) (server_login_retry)")
    }

    private func isInLoginRetryDelay(now: NIODeadline) -> Bool {
        guard let failure = lastLoginFailure else { return false }
        return now - failure.at < .nanoseconds(Int64(shard.settings.serverLoginRetry * 1e9))
    }

    /// A server login failed with `error`. When no server of this pool is left to serve them, the clients
    /// waiting on it get that error (with the server's SQLSTATE), as PgBouncer does.
    func serverLoginFailed(_ error: PoolerError) {
        lastLoginFailure = (error, .now())
        let liveServers = serverCount - 1
        guard liveServers == 0 else { return }
        let waiting = clientsWaitingForWelcome + waitingClients.map(\.client)
        clientsWaitingForWelcome = []
        waitingClients = []
        for client in waiting {
            client.closeWithError(error, reason: error.message)
        }
    }

    /// `server` is between transactions: hand it to the next waiting client, or keep it idle.
    func serverAvailable(_ server: ServerConnection) {
        if server.cancelsInFlight > 0 {
            // A cancel aimed at this server's last client may still land: nobody else gets it until the cancel
            // connections are done (PgBouncer's being_canceled).
            server.parkUntilCancelsFinish()
        } else if shard.isPaused(key.database) {
            server.close(reason: "pause")
        } else if server.closeNeeded {
            server.close(reason: "server close needed (RECONNECT or configuration change)")
        } else if server.statementCacheUntrusted {
            server.close(reason: "SQL PREPARE or DEALLOCATE ran while prepared statements are shared")
        } else if Timeouts.lifetimeOver(
            connectedSeconds: server.connectTime, nowSeconds: shard.clockSeconds,
            lifetimeSeconds: serverLifetime)
        {
            server.close(reason: "server lifetime over")
        } else if let next = waitingClients.popFirst() {
            stats.waitMicroseconds += Int((NIODeadline.now() - next.since).nanoseconds / 1000)
            server.assign(to: next.client)
        } else {
            server.becomeIdle()
            idleServers.append(server)
        }
    }

    /// A client is done with `server` and it is idle between transactions. Session pooling (or
    /// `server_reset_query_always`) runs `server_reset_query` before the server is used again.
    func release(_ server: ServerConnection, clientDisconnected: Bool) {
        let needsReset = (mode == .session && clientDisconnected) || resetQueryAlways
        if needsReset, !resetQuery.isEmpty {
            server.runResetQuery(resetQuery)
        } else {
            serverAvailable(server)
        }
    }

    /// A server connection closed, for whatever reason.
    func serverClosed(_ server: ServerConnection, duringLogin: Bool) {
        if evictedServers.remove(ObjectIdentifier(server)) == nil { uncount(server) }
        if duringLogin { serversLoggingIn -= 1 }
        idleServers.removeAll { $0 === server }
        shard.unregister(server)
        launchIfNeeded(now: .now())
        shard.completeDeferredReplies()
    }

    // MARK: Console control

    func closeIdleServers(reason: String) {
        let idle = idleServers
        idleServers = []
        for server in idle { server.close(reason: reason) }
    }

    /// RECONNECT: idle servers close now, busy ones when released (`closeNeeded`).
    func reconnectServers() {
        closeIdleServers(reason: "RECONNECT")
    }

    /// RESUME: serve the clients that queued during the pause.
    func resumeAfterPause() {
        while !waitingClients.isEmpty, let server = takeIdleServer() {
            lend(server, to: waitingClients.removeFirst().client)
        }
        launchIfNeeded(now: .now())
    }

    /// query_wait_timeout and query_wait_notify for the clients queued here.
    func sweepWaitingClients(now: NIODeadline) {
        let nowNanoseconds = Int64(now.uptimeNanoseconds)
        var expired: [ClientSession] = []
        for (client, since) in waitingClients {
            var clocks = Timeouts.ClientClocks()
            clocks.waitingSince = Int64(since.uptimeNanoseconds)
            if timeouts.expired(clocks, now: nowNanoseconds) == .queryWait {
                expired.append(client)
            } else if !client.queuedNoticeSent,
                timeouts.shouldNotifyQueued(waitingSince: Int64(since.uptimeNanoseconds), now: nowNanoseconds)
            {
                client.queuedNoticeSent = true
                client.sendNotice(Timeouts.queuedNotice)
            }
        }
        for client in expired { client.kill(PoolerError(Timeouts.ClientExpiry.queryWait.message)) }
    }

    /// Logged-in clients waiting for a server, and how long the longest has waited (for SHOW POOLS).
    var longestWaitMicroseconds: Int {
        waitingClients.first.map { $0.client.waitMicroseconds } ?? 0
    }

    /// Periodic upkeep: reserve connections for clients that waited long enough, and min_pool_size.
    func maintain(now: NIODeadline) {
        launchIfNeeded(now: now)
    }

    /// Opens one more server connection when clients need one and the limits allow it.
    private func launchIfNeeded(now: NIODeadline) {
        var state = PoolCapacity.State()
        state.servers = serverCount
        state.serversLoggingIn = serversLoggingIn
        state.waitingClients = waitingClients.count
        state.clientsAwaitingWelcome = clientsWaitingForWelcome.count
        state.longestWaitNanoseconds = waitingClients.first.map { (now - $0.since).nanoseconds } ?? 0
        state.loggedInClients = clientCount
        state.hasForcedUser = database.user != nil
        state.serversOfDatabase = shard.counts.serversPerDatabase[key.database, default: 0]
        state.serversOfUser = shard.counts.serversPerUser[key.user, default: 0]
        state.inLoginRetryDelay = isInLoginRetryDelay(now: now)
        state.paused = shard.isPaused(key.database)

        switch capacity.decide(state) {
        case .wait:
            return
        case .evictForDatabaseLimit:
            // The slot is taken at once: waiting for the close would let it go unused when this pool's
            // waiting client is served by one of its own servers meanwhile (PgBouncer launches at once too).
            guard shard.evictIdleServer(excluding: self, where: { $0.key.database == key.database }) else { return }
        case .evictForUserLimit:
            guard shard.evictIdleServer(excluding: self, where: { $0.key.user == key.user }) else { return }
        case .launchFromReserve:
            logger.info("\(logPrefix) taking connection from reserve_pool")
        case .launch:
            break
        }
        serverCount += 1
        serversLoggingIn += 1
        shard.counts.serversPerDatabase[key.database, default: 0] += 1
        shard.counts.serversPerUser[key.user, default: 0] += 1
        ServerConnection.launch(for: self)
    }

    var logPrefix: String { "\(key.database)/\(key.user)" }
}

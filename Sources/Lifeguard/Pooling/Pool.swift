import LifeguardCore
import Logging
import NIOCore
import PostgresWire

/// The server connections of one (database, user) pair and the clients queued for them: carries out what its
/// `PoolState` decides, and holds what the pool's clients are greeted with.
final class Pool {
    let key: PoolKey
    private(set) var database: DatabaseDefinition
    /// Unchecked, like ClientSession's: the shard outlives its pools.
    unowned(unsafe) let shard: PoolShard
    private(set) var mode: PoolMode
    private(set) var resetQuery: String
    private(set) var resetQueryAlways: Bool
    /// The database's hosts (a `host=` list); which one the next server connection goes to is one of the
    /// pool's shared facts, so that every thread moves on from a failed host.
    private var targets: [ServerAddress] = []
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

    /// Idle servers, queued clients, server counts and the rules between them.
    private(set) var state: State
    typealias State = PoolState<ClientSession, ServerConnection>
    /// Running totals for SHOW STATS; bumped by this pool's clients on the event loop.
    var stats = PoolStatistics()

    init(key: PoolKey, database: DatabaseDefinition, user: UserDefinition?, settings: Settings, shard: PoolShard) {
        self.key = key
        self.shard = shard
        let capacity: PoolCapacity
        (self.database, self.mode, capacity, self.resetQuery, self.resetQueryAlways) =
            Self.derive(database: database, user: user, settings: settings)
        self.state = PoolState(
            capacity: capacity, serverRoundRobin: settings.serverRoundRobin,
            loginRetryNanoseconds: Int64(settings.serverLoginRetry * 1e9))
        self.timeouts = Timeouts(settings: settings, database: database, user: user)
        self.serverLifetime = database.serverLifetime ?? settings.serverLifetime
        self.targets = ServerAddress.targets(database: database, settings: settings)
        self.idleAcrossThreads = shard.group.shards.count > 1 ? shard.shared.withFacts(of: key) { $0.idleServers } : nil
    }

    /// The host for a new server connection: the next one in turn (`load_balance_hosts = round-robin`), or
    /// the current one until it fails (`disable`).
    func nextServerAddress() -> ServerAddress {
        let (targets, loadBalance) = (self.targets, database.loadBalanceHosts)
        return shard.shared.withFacts(of: key) { facts in
            let address = targets[facts.targetIndex % targets.count]
            if loadBalance { facts.targetIndex += 1 }
            return address
        }
    }

    /// A connection to `address` failed: with `load_balance_hosts = disable`, move on to the next host.
    func serverAddressFailed(_ address: ServerAddress) {
        guard !database.loadBalanceHosts else { return }
        let targets = self.targets
        shard.shared.withFacts(of: key) { facts in
            if targets[facts.targetIndex % targets.count] == address { facts.targetIndex += 1 }
        }
    }

    /// Takes a reloaded configuration. A changed connection string (host, port, dbname, forced user or its
    /// password) closes the pool's servers as they come free, as PgBouncer does.
    func apply(database newDatabase: DatabaseDefinition, user: UserDefinition?, settings: Settings) {
        let connectionChanged =
            newDatabase.host != database.host || newDatabase.port != database.port
            || newDatabase.dbname != database.dbname || newDatabase.user != database.user
            || newDatabase.password != database.password
        (database, mode, state.capacity, resetQuery, resetQueryAlways) =
            Self.derive(database: newDatabase, user: user, settings: settings)
        state.serverRoundRobin = settings.serverRoundRobin
        state.loginRetryNanoseconds = Int64(settings.serverLoginRetry * 1e9)
        timeouts = Timeouts(settings: settings, database: newDatabase, user: user)
        serverLifetime = newDatabase.serverLifetime ?? settings.serverLifetime
        targets = ServerAddress.targets(database: newDatabase, settings: settings)
        if connectionChanged { configurationChanged() }
        launchIfNeeded()
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

    /// The credentials for logging in to the server: the database's forced user's password, else the userlist,
    /// else what auth_query found for the pool's user at its latest client login.
    var serverSecret: PasswordSecret? {
        if database.user != nil, let password = database.password { return .plain(password) }
        return shard.secret(for: key.user) ?? authQuerySecret
    }

    var authQuerySecret: PasswordSecret?

    // MARK: auth_query lookups

    /// Lookups running on this (auth) pool's database, and those waiting for one to end: at most pool_size
    /// (20 when unlimited) run at once on this thread, as many as the servers PgBouncer would run them on,
    /// so a flood of logins by unknown users cannot open unbounded connections to PostgreSQL.
    private var authLookupsRunning = 0
    private var authLookupsWaiting: [AuthQueryLookup] = []

    func runAuthLookup(_ lookup: AuthQueryLookup) {
        let limit = capacity.size > 0 ? capacity.size : 20
        guard authLookupsRunning < limit else {
            // Clients that left while queued go first, so the queue holds only clients still connected.
            authLookupsWaiting.removeAll { !$0.isWanted() }
            authLookupsWaiting.append(lookup)
            return
        }
        authLookupsRunning += 1
        lookup.start()
    }

    func authLookupFinished() {
        authLookupsRunning -= 1
        while let next = authLookupsWaiting.first {
            authLookupsWaiting.removeFirst()
            guard next.isWanted() else { continue }
            authLookupsRunning += 1
            next.start()
            return
        }
    }

    // MARK: Clients

    var capacity: PoolCapacity { state.capacity }
    var serverCount: Int { state.serverCount }
    var waitingCount: Int { state.waitingClients.count }
    /// No client logged in or queued: a candidate for pool_idle_timeout / autodb_idle_timeout.
    var hasNoClients: Bool { state.hasNoClients }
    var unusedSince: NIODeadline?

    var clientCount: Int { state.loggedInClients }
    func clientLoggedIn() { state.loggedInClients += 1 }
    func clientLoggedOut() { state.loggedInClients -= 1 }

    /// Greets `client` from the cached ParameterStatus set, or queues it until the first server has logged in.
    func welcome(_ client: ClientSession) {
        if welcomePrefix == nil {
            // Another thread's server may have logged in, or failed to.
            adoptSharedWelcome()
            syncLoginFailure()
        }
        switch state.clientNeedsWelcome(client, now: Self.now) {
        case .greet: client.sendWelcome()
        case .fail(let error): client.closeWithError(error, reason: error.message)
        case .wait: launchIfNeeded()
        }
    }

    /// AuthenticationOk and every ParameterStatus message for a client with `parameters` (all tracked
    /// slots filled); nil until the first server has logged in. Parameters equal to the last welcome's are
    /// replaced by that same set: clients and the servers that adopt their sets then share one storage, and
    /// the check at every link to a server ends on identity instead of comparing each value.
    func welcomeMessages(for parameters: inout ParameterSet) -> ByteBuffer? {
        if let lastWelcome, lastWelcome.parameters == parameters {
            parameters = lastWelcome.parameters
            return lastWelcome.messages
        }
        guard var messages = welcomePrefix else { return nil }
        for index in TrackedParameter.names.indices {
            if let value = parameters.value(at: index) {
                messages.writeParameterStatus(name: TrackedParameter.names[index], value: value)
            }
        }
        lastWelcome = (parameters, messages)
        return messages
    }

    // MARK: Replication clients

    /// A replication client logged in: it waits for a server opened for it alone, which carries its own
    /// startup parameters, greets it, stays its for the whole session and is closed when it leaves.
    func replicationClientLoggedIn(_ client: ClientSession) {
        state.replicationClientWaiting(client, now: Self.now)
        launchIfNeeded()
    }

    /// A replication client waits and the pool is full: an idle server of the pool is closed to make room,
    /// here or on another thread, as PgBouncer evicts one.
    private func makeRoomForReplication() {
        guard !state.replicationWaiting.isEmpty, state.serversLoggingIn == 0, capacity.size > 0,
            shard.shared.serverCount(ofPool: key) >= capacity.size
        else { return }
        if !closeOneIdleServer(reason: "evicted for pool_size") {
            askOtherThreadsToEvict(.pool)
        }
    }

    /// `client` has a request and no server: give it an idle one or queue it.
    func requestServer(for client: ClientSession) {
        if shard.isDrainingServers {
            // As PgBouncer: the servers are only waited for so the transactions on them can finish.
            return client.kill(.serverShuttingDown)
        }
        if state.serverCount == 0 { syncLoginFailure() }
        switch state.clientWantsServer(client, now: Self.now, paused: shard.isPaused(key.database)) {
        case .lend(let server):
            publishIdleCount()
            lend(server, to: client)
        case .fail(let error): client.closeWithError(error, reason: error.message)
        case .wait: launchIfNeeded()
        }
    }

    /// Lends an idle server, checking it first with server_check_query when it sat unused for
    /// server_check_delay (PgBouncer's "used" servers).
    private func lend(_ server: ServerConnection, to client: ClientSession) {
        if let check = shard.settings.serverCheckQuery,
            server.idleNanoseconds >= Int64(shard.settings.serverCheckDelay * 1e9)
        {
            server.runCheck(check, for: client)
        } else {
            server.assign(to: client)
        }
    }

    /// A client whose server failed its check waits again, first in line.
    func requeueFirst(_ client: ClientSession) {
        state.requeueFirst(client, now: Self.now)
        launchIfNeeded()
    }

    /// `client` is going away: forget any place it held in a queue.
    func removeWaiting(_ client: ClientSession) {
        state.removeWaiting(client)
    }

    /// Which servers an eviction asked of another thread may close: an idle one of the asking pool (to
    /// make room for a replication client), or of another pool of its database or user (at
    /// max_db_connections or max_user_connections).
    enum EvictionScope {
        case pool
        case database
        case user
    }

    /// Closes one idle server, if this pool has any; returns whether it did.
    func closeOneIdleServer(reason: String) -> Bool {
        guard let server = state.evictOneIdleServer() else { return false }
        publishIdleCount()
        uncountShared()
        server.close(reason: reason)
        return true
    }

    private func uncountShared() {
        shard.shared.serverUncounted(for: key)
    }

    // MARK: Servers

    /// A server finished its login (and connect_query).
    func serverLoggedIn(_ server: ServerConnection) {
        if let replication = server.replication {
            state.replicationServerLoggedIn()
            shard.shared.withFacts(of: key) { $0.lastLoginFailure = nil }
            if let client = replication.client, client.isAwaitingReplicationServer {
                client.startReplication(on: server)
            } else {
                server.terminate(reason: "replication client disconnected")
            }
            launchIfNeeded()
            return
        }
        learnWelcome(from: server)
        shard.shared.withFacts(of: key) { $0.lastLoginFailure = nil }
        for client in state.serverLoggedIn() { client.sendWelcome() }
        serverAvailable(server)
        launchIfNeeded()
    }

    /// The first server login of the pool (on any thread) gives the welcome its clients are greeted with.
    private func learnWelcome(from server: ServerConnection) {
        guard welcomePrefix == nil else { return }
        var prefix = ByteBuffer()
        prefix.writeAuthenticationOK()
        for (name, value) in server.reportedParameters where TrackedParameter.index(of: name) == nil {
            prefix.writeParameterStatus(name: name, value: value)
        }
        let parameters = server.parameters
        let welcome = shard.shared.withFacts(of: key) { facts in
            if facts.welcome == nil { facts.welcome = (prefix, parameters) }
            return facts.welcome!
        }
        (welcomePrefix, defaultParameters) = (welcome.prefix, welcome.parameters)
    }

    /// Takes the welcome another thread's part of the pool learned, and greets the clients waiting for it.
    private func adoptSharedWelcome() {
        guard welcomePrefix == nil, let welcome = shard.shared.withFacts(of: key, { $0.welcome }) else { return }
        (welcomePrefix, defaultParameters) = (welcome.prefix, welcome.parameters)
        for client in state.welcomeKnown() { client.sendWelcome() }
    }

    /// The way to the server changed (connection string, `server_tls_*`): the servers close as they come
    /// free, and a login failure seen under the old setup no longer holds new logins back.
    func configurationChanged() {
        shard.reconnect(pool: self, reason: "database configuration changed")
        shard.shared.withFacts(of: key) { $0.lastLoginFailure = nil }
        state.syncLoginFailure(nil)
    }

    /// Takes the pool's last login failure as every thread knows it.
    private func syncLoginFailure() {
        state.syncLoginFailure(shard.shared.withFacts(of: key) { $0.lastLoginFailure })
    }

    /// A server login failed with `error`, which new clients get at once for `server_login_retry`. The
    /// clients already waiting get it too only when the server refused the login (see PoolState).
    func serverLoginFailed(_ error: PoolerError, failsWaitingClients: Bool) {
        let now = Self.now
        shard.shared.withFacts(of: key) { $0.lastLoginFailure = (error, now) }
        let closing = shard.serverConnections.values.lazy.filter { $0.pool === self && $0.closeNeeded }.count
        for client in state.serverLoginFailed(
            error, failsWaitingClients: failsWaitingClients, serversClosing: closing, now: now)
        {
            client.closeWithError(error, reason: error.message)
        }
    }

    /// `server` is between transactions: hand it to the next waiting client, or keep it idle. `wasIdle`:
    /// it sat idle before (it moved here from another thread), so it is checked like an idle server lent
    /// from the idle list (server_check_delay).
    func serverAvailable(_ server: ServerConnection, wasIdle: Bool = false) {
        var conditions = State.FreedServerConditions()
        conditions.cancelsInFlight = server.cancelsInFlight > 0
        conditions.paused = shard.isPaused(key.database)
        conditions.closeNeeded = server.closeNeeded
        conditions.statementCacheUntrusted = server.statementCacheUntrusted
        conditions.lifetimeOver = server.hasServedAClient && Timeouts.lifetimeOver(
            connectedSeconds: server.connectTime, nowSeconds: shard.clockSeconds, lifetimeSeconds: serverLifetime)
        if let request = serverRequests.first, conditions.allowReuse, server.canMove,
            state.waitingClients.isEmpty || state.serverCount > request.servers + 1
        {
            // Another thread's clients wait for this pool and this thread needs the server less: nobody
            // waits here, or this thread holds more of the pool's servers than that one. It moves once the
            // current event is handled: the read that freed it may hold more of its bytes (a FATAL after
            // the ReadyForQuery), which must be read here.
            serverRequests.removeFirst()
            shard.loop.deferTask { [self] in
                if server.canMove {
                    move(server, to: request.shard)
                } else if server.isOpen {
                    serverAvailable(server)
                }
            }
            return
        }
        switch state.serverFreed(server, conditions, now: Self.now) {
        case .park:
            server.parkUntilCancelsFinish()
        case .close(let reason):
            server.close(reason: reason)
        case .lend(let client, let waited):
            stats.waitMicroseconds += Int(waited / 1000)
            if wasIdle { lend(server, to: client) } else { server.assign(to: client) }
        case .idle:
            publishIdleCount()
            server.becomeIdle()
            // A replication client waiting for room takes this one's place.
            if !state.replicationWaiting.isEmpty { launchIfNeeded() }
        }
    }

    /// A client is done with `server` and it is idle between transactions. Session pooling (or
    /// `server_reset_query_always`) runs `server_reset_query` before the server is used again.
    func release(_ server: ServerConnection, clientDisconnected: Bool) {
        if !resetQuery.isEmpty,
            State.needsReset(
                mode: mode, clientDisconnected: clientDisconnected, resetQueryAlways: resetQueryAlways)
        {
            server.runResetQuery(resetQuery)
        } else {
            serverAvailable(server)
        }
    }

    /// A server connection closed, for whatever reason.
    func serverClosed(_ server: ServerConnection, duringLogin: Bool) {
        if state.serverClosed(server, duringLogin: duringLogin) { uncountShared() }
        publishIdleCount()
        shard.unregister(server)
        launchIfNeeded()
        if !shard.control.pendingReplies.isEmpty {
            shard.group.acrossShards(from: shard) { shard.group.completeDeferredReplies() }
        }
    }

    // MARK: Servers moving between threads

    /// The pool's idle servers on all threads (nil with one thread), and this part's share last added to it.
    private let idleAcrossThreads: RelaxedCounter?
    private var publishedIdle = 0

    /// Brings this part's share of the idle count up to date; called after whatever changes the idle list.
    @inline(__always)
    private func publishIdleCount() {
        guard let idleAcrossThreads, state.idleServers.count != publishedIdle else { return }
        idleAcrossThreads.add(state.idleServers.count - publishedIdle)
        publishedIdle = state.idleServers.count
    }

    /// Another thread has an idle server of this pool: better to take it than to open a new one, as a
    /// single-threaded pooler would reuse it. Not once a request for it has gone unanswered for 100 ms.
    private var anotherThreadHasAnIdleServer: Bool {
        guard let idleAcrossThreads, idleAcrossThreads.current > publishedIdle else { return false }
        guard let askedForServerAt else { return true }
        return NIODeadline.now() - askedForServerAt < .milliseconds(100)
    }

    /// Other threads' parts of this pool that asked for a server, with how many servers each held then;
    /// served in the order they asked.
    private var serverRequests: [(shard: PoolShard, servers: Int)] = []
    /// When this part asked the other threads for a server, until one arrives.
    private var askedForServerAt: NIODeadline?
    /// A request that got no server this long (its answer was lost with a freed pool) is made again.
    private static let serverRequestRetry = TimeAmount.seconds(1)

    /// This part's clients wait, the pool is full across threads, and no server of its own is coming:
    /// ask every other thread's part for one.
    private func askOtherThreadsForAServer() {
        guard shard.group.shards.count > 1, askedForServerAt == nil else { return }
        askedForServerAt = .now()
        let (key, requester, servers) = (self.key, shard, state.serverCount)
        for other in shard.group.shards where other !== requester {
            other.loop.executeBetweenEvents { other.serverRequested(for: key, by: requester, holding: servers) }
        }
    }

    /// The pool is full across threads: clients waiting here (or for the welcome), with no login of this
    /// part's own under way, ask the other threads.
    private func askOtherThreadsForAServerIfWaiting(paused: Bool) {
        let demand = !state.waitingClients.isEmpty || !state.clientsAwaitingWelcome.isEmpty
        if demand, state.serversLoggingIn == 0, !paused { askOtherThreadsForAServer() }
    }

    /// Another thread's part asked for a server: the idle one that waited longest goes now, or the next
    /// one freed here goes, if this thread needs it less (see `serverAvailable`).
    func serverRequested(by requester: PoolShard, holding servers: Int) {
        if let server = state.idleServers.first(where: { $0.canMove }) {
            move(server, to: requester)
        } else if !serverRequests.contains(where: { $0.shard === requester }) {
            serverRequests.append((requester, servers))
        }
    }

    /// Hands an idle or just-freed server to `requester`'s thread. It stays counted against the pool's
    /// limits; only the parts' own counts change.
    private func move(_ server: ServerConnection, to requester: PoolShard) {
        state.serverMovedOut(server)
        publishIdleCount()
        server.moveOut()
        let key = self.key
        requester.loop.executeBetweenEvents { requester.adoptMovedServer(server, for: key) }
    }

    /// When this part last asked the other threads to close an idle server under a shared limit.
    private var evictionAskedAt: NIODeadline?

    /// At max_db_connections or max_user_connections with no idle server of another pool on this thread to
    /// close: ask the other threads to close one of theirs (of the same database, or user); the one that
    /// does tells this part to try again. Asked at most every 100 ms; the janitor's upkeep asks again.
    private func askOtherThreadsToEvict(_ scope: EvictionScope) {
        guard shard.group.shards.count > 1 else { return }
        let now = NIODeadline.now()
        if let evictionAskedAt, now - evictionAskedAt < .milliseconds(100) { return }
        evictionAskedAt = now
        let (key, requester) = (self.key, shard)
        for other in shard.group.shards where other !== requester {
            other.loop.executeBetweenEvents { other.evictIdleServer(for: key, scope, requester: requester) }
        }
    }

    /// On this thread: a server moved here from another thread's part of the pool.
    func serverMovedIn(_ server: ServerConnection) {
        askedForServerAt = nil
        state.serverMovedIn()
        // Its login published the welcome; the server's own parameters may have been changed by clients since.
        adoptSharedWelcome()
        guard server.moveIn(to: self) else { return }
        serverAvailable(server, wasIdle: true)
        launchIfNeeded()
    }

    // MARK: Console control

    func closeIdleServers(reason: String) {
        let servers = state.takeAllIdleServers()
        publishIdleCount()
        for server in servers { server.close(reason: reason) }
    }

    /// RESUME: serve the clients that queued during the pause.
    func resumeAfterPause() {
        let pairs = state.resume()
        publishIdleCount()
        for (server, client) in pairs { lend(server, to: client) }
        launchIfNeeded()
    }

    /// query_wait_timeout and query_wait_notify for the clients queued here.
    func sweepWaitingClients(now: NIODeadline) {
        let (expired, notify) = state.sweepWaiting(now: Int64(now.uptimeNanoseconds), timeouts: timeouts)
        for client in notify { client.sendNotice(Timeouts.queuedNotice) }
        for client in expired { client.kill(PoolerError(Timeouts.ClientExpiry.queryWait.message)) }
    }

    /// How long the longest-waiting client's query has waited (for SHOW POOLS).
    var longestWaitMicroseconds: Int {
        state.waitingClients.first.map { $0.client.waitMicroseconds } ?? 0
    }

    /// Periodic upkeep: reserve connections for clients that waited long enough, and min_pool_size; a
    /// request for a server that went unanswered is made again.
    func maintain() {
        if let askedForServerAt, NIODeadline.now() - askedForServerAt > Self.serverRequestRetry {
            self.askedForServerAt = nil
        }
        launchIfNeeded()
    }

    /// Opens one more server connection when clients need one and the limits allow it.
    private func launchIfNeeded() {
        makeRoomForReplication()
        if !state.waitingClients.isEmpty, anotherThreadHasAnIdleServer {
            askOtherThreadsForAServer()
            return
        }
        // This part's own servers are a lower bound of the pool's: when they alone rule a launch out (a client
        // queuing on a busy pool, as every transaction may under load), no lock is taken.
        let ownCapacity = state.capacity
        let fullHere = ownCapacity.size > 0 && state.serverCount >= ownCapacity.size + ownCapacity.reserveSize
        if state.serversLoggingIn > 0 || fullHere {
            if fullHere { askOtherThreadsForAServerIfWaiting(paused: shard.isPaused(key.database)) }
            return
        }
        // Otherwise decided under the shared lock against the whole process's counts: no other shard can
        // take the same last slot meanwhile.
        let paused = shard.isPaused(key.database)
        var full = false
        let decision = shard.shared.launchServer(for: key) { ofPool, ofDatabase, ofUser, facts in
            let capacity = state.capacity
            full = capacity.size > 0 && ofPool >= capacity.size
            state.syncLoginFailure(facts.lastLoginFailure)
            return state.launchDecision(
                now: Self.now, serversOfPool: ofPool, serversOfDatabase: ofDatabase, serversOfUser: ofUser,
                hasForcedUser: database.user != nil, paused: paused)
        }
        switch decision {
        case .wait:
            if full { askOtherThreadsForAServerIfWaiting(paused: paused) }
            return
        case .evictForDatabaseLimit:
            // The slot is taken at once: waiting for the close would let it go unused when this pool's
            // waiting client is served by one of its own servers meanwhile (PgBouncer launches at once too).
            guard shard.evictIdleServer(excluding: self, where: { $0.key.database == key.database }) else {
                // Another thread may have an idle server of this very pool, or of another pool to close.
                askOtherThreadsForAServer()
                askOtherThreadsToEvict(.database)
                return
            }
            launchIfNeeded()
            return
        case .evictForUserLimit:
            guard shard.evictIdleServer(excluding: self, where: { $0.key.user == key.user }) else {
                askOtherThreadsForAServer()
                askOtherThreadsToEvict(.user)
                return
            }
            launchIfNeeded()
            return
        case .launchFromReserve:
            logger.info("\(logPrefix) taking connection from reserve_pool")
        case .launch:
            break
        }
        state.serverLaunched()
        // Replication clients go first: they cannot take a server that comes free.
        ServerConnection.launch(for: self, replicationClient: state.takeReplicationWaiter())
    }

    private static var now: Int64 { Int64(NIODeadline.now().uptimeNanoseconds) }

    var logPrefix: String { "\(key.database)/\(key.user)" }
}

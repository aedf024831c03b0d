import LifeguardCore
import LifeguardEngine
import Logging
import NIOCore

/// A client's key for CancelRequest: what Lifeguard told it in BackendKeyData, never the server's.
struct CancelKey: Hashable {
    var processID: Int32
    var secretKey: Int32
}

/// Everything one event loop owns: its pools, clients, servers and console sessions.
///
/// All of it is touched only on `loop`, so the data path takes no locks. What spans shards (the counts behind
/// the process-wide limits, cancel keys, connection ids) is in `shared`, and the control state (pause,
/// drain) in `control`; both belong to the `group` of all shards.
final class PoolShard {
    let loop: EngineLoop
    /// Strong, as the group lives as long as the process (and a test's shard keeps its group).
    let group: ShardGroup
    let shared: SharedState
    let control: ShardControl
    private(set) var configuration: Configuration
    /// `configuration.settings`, stored apart so the hot paths read single fields without copying the struct.
    private(set) var settings: Settings
    private(set) var ignoredStartupParameters: IgnoredStartupParameters
    /// Whether `[pgbouncer]` or any database names an auth_user (auth_query lookups are possible).
    private(set) var authUserConfigured: Bool

    private static func namesAuthUser(_ configuration: Configuration) -> Bool {
        configuration.settings.authUser != nil || configuration.fallbackDatabase?.authUser != nil
            || configuration.databases.values.contains { $0.authUser != nil }
    }
    /// The userlist's secrets, classified once at load instead of at every login.
    private var secrets: [String: PasswordSecret]
    /// auth_type = hba: the rules and ident maps logins are judged by.
    private(set) var access: HostBasedAccess
    private(set) var identMaps: IdentMaps
    let logger: Logger
    private var pools: [PoolKey: Pool] = [:]
    /// Secret for mock SCRAM exchanges with unknown users, so they look like real ones.
    let mockAuthenticationKey: [UInt8]
    /// SCRAM secrets and md5 hashes derived from plain-text userlist passwords, once per user.
    let plainPasswords: PlainPasswordCache
    /// Random bytes for cancel keys, salts and nonces, and the same as a function to hand to authentication
    /// (made once: a method reference would be a new closure at every login).
    private let random = RandomPool()
    let randomBytes: (Int) -> [UInt8]
    private var janitor: EngineLoop.TimerID?
    /// Every client and server connection, for the admin console's lists and KILL_CLIENT.
    private(set) var clientSessions: [ObjectIdentifier: ClientSession] = [:]
    private(set) var serverConnections: [ObjectIdentifier: ServerConnection] = [:]
    private(set) var adminSessions: [ObjectIdentifier: AdminSession] = [:]
    /// This shard's console logins and commands (ShardGroup.console adds them up).
    var consoleStatistics = PoolStatistics()
    let resolver: HostResolver
    /// Clients' named prepared statements, shared by definition across all clients and servers (the group's).
    let preparedStatements: PreparedStatementRegistry

    init(loop: EngineLoop, group: ShardGroup, configuration: Configuration, authFiles: AuthFiles, logger: Logger) {
        self.loop = loop
        self.group = group
        self.shared = group.shared
        self.control = group.control
        self.preparedStatements = group.preparedStatements
        self.configuration = configuration
        self.settings = configuration.settings
        self.ignoredStartupParameters = IgnoredStartupParameters(configuration.settings.ignoreStartupParameters)
        self.authUserConfigured = Self.namesAuthUser(configuration)
        self.secrets = authFiles.userList.secrets.mapValues(PasswordSecret.init(parsing:))
        self.access = authFiles.access
        self.identMaps = authFiles.identMaps
        self.logger = logger
        let random = self.random
        self.randomBytes = { random.bytes($0) }
        self.plainPasswords = PlainPasswordCache(salt: { random.bytes(16) })
        self.mockAuthenticationKey = random.bytes(32)
        self.resolver = HostResolver(
            loop: loop, maxTTL: configuration.settings.dnsMaxTTL,
            failureTTL: configuration.settings.dnsNXDomainTTL)
        loadTLS(rereadingFiles: true)
    }


    /// Starts the periodic check that opens reserve connections and keeps min_pool_size.
    func startJanitor() {
        startForcedUserPools()
        // Strong captures: `stop` cancels both, and a weak reference would make every reference-count
        // operation on the shard take the slow path.
        janitor = loop.scheduleRepeating(every: 0.25) { self.runJanitor() }
    }

    /// A database with a forced user has one pool whatever the client; it exists from the start, so
    /// min_pool_size can open its servers before the first client arrives (as in PgBouncer).
    private func startForcedUserPools() {
        for database in configuration.databases.values {
            if let user = database.user { _ = pool(for: database, clientDatabase: database.name, clientUser: user) }
        }
    }

    /// Set when the daemon stops or drains, so logins are refused and closing connections say why.
    var isShuttingDown: Bool { control.stopped || control.draining != nil }

    /// SHUTDOWN WAIT_FOR_SERVERS (SIGINT): a client that would now wait for a server is closed instead.
    var isDrainingServers: Bool { control.draining == .waitForServers }

    /// SUSPEND: no socket is read until RESUME (Lifeguard holds no buffered data, so nothing needs flushing).
    var isSuspended: Bool { control.pauseMode == .suspended }

    func isPaused(_ database: String) -> Bool {
        // Asked on every transaction: the set is almost always empty, and hashing the name is not free.
        control.pauseMode != .running || (!control.pausedDatabases.isEmpty && control.pausedDatabases.contains(database))
    }

    func stop() {
        if let janitor { loop.cancel(janitor) }
        janitor = nil
    }

    /// Wall-clock seconds, refreshed by the janitor: connections stamp their request time from it on every
    /// read without a clock call.
    private(set) var clockSeconds = WallClock.seconds()

    private func runJanitor() {
        clockSeconds = WallClock.seconds()
        let now = NIODeadline.now()
        for pool in pools.values {
            pool.maintain()
        }
        sweepTimeouts(now: now)
        freeUnusedPools(now: now)
    }

    /// `autodb_idle_timeout` (pools of databases made from the `*` entry) and `pool_idle_timeout` (any
    /// other pool that `min_pool_size` does not keep): a pool without clients for that long closes its idle
    /// servers and goes away; its statistics go with it, as in PgBouncer.
    private func freeUnusedPools(now: NIODeadline) {
        for (key, pool) in pools {
            let madeFromFallback = configuration.databases[key.database] == nil
            let timeout = madeFromFallback ? settings.autodbIdleTimeout : settings.poolIdleTimeout
            guard timeout > 0, pool.capacity.minSize == 0 || madeFromFallback, pool.hasNoClients else {
                pool.unusedSince = nil
                continue
            }
            let since = pool.unusedSince ?? now
            pool.unusedSince = since
            guard now - since >= .nanoseconds(Int64(timeout * 1e9)) else { continue }
            pool.closeIdleServers(reason: madeFromFallback ? "autodb_idle_timeout" : "pool_idle_timeout")
            guard pool.serverCount == 0 else { continue }
            if !madeFromFallback { logger.info("cleaning up idle pool \(key)") }
            pools[key] = nil
        }
    }

    /// Closes the clients and servers whose timeouts have run out (PgBouncer's janitor).
    private func sweepTimeouts(now: NIODeadline) {
        let timeouts = Timeouts(settings: settings)
        let nowNanoseconds = Int64(now.uptimeNanoseconds)
        for pool in pools.values { pool.sweepWaitingClients(now: now) }
        for client in Array(clientSessions.values) {
            let clientTimeouts = client.pool?.timeouts ?? timeouts
            guard let expiry = clientTimeouts.expired(client.timeoutClocks, now: nowNanoseconds) else { continue }
            let error = PoolerError(expiry.message)
            let server = client.server
            client.kill(error)
            // A server stopped mid-query or mid-transaction cannot be handed on.
            if let server, expiry != .idle { server.close(reason: expiry.message) }
        }
        for server in Array(serverConnections.values) {
            let clocks = server.timeoutClocks
            let keep = server.pool.serverCount <= server.pool.capacity.minSize
            let lifetimeOver = Timeouts.lifetimeOver(
                connectedSeconds: server.connectTime, nowSeconds: clockSeconds,
                lifetimeSeconds: server.pool.serverLifetime)
            switch timeouts.expiredServer(
                loggingInSince: clocks.loggingInSince, idleSince: clocks.idleSince, keepForMinimum: keep,
                lifetimeOver: lifetimeOver, now: nowNanoseconds)
            {
            case .connect: server.loginTimedOut()
            case .idle: server.close(reason: Timeouts.ServerExpiry.idle.reason)
            case .lifetime: server.close(reason: Timeouts.ServerExpiry.lifetime.reason)
            case nil: break
            }
            if settings.serverFastClose, server.closeNeeded, server.pool.mode == .session,
                let client = server.linkedClient, client.isBetweenTransactions
            {
                client.kill(PoolerError("database configuration changed"))
                server.close(reason: "database configuration changed")
            }
        }
    }

    // MARK: Pools

    /// The pool for a client that asked for `clientDatabase` (resolved to `database`, which may be the `*`
    /// fallback) as `clientUser`; a database with a forced user has one pool for all its clients.
    /// The database a client names, read from the configuration's fields in place.
    func database(named name: String) -> DatabaseDefinition? {
        Configuration.database(
            named: name, databases: configuration.databases, fallback: configuration.fallbackDatabase)
    }

    func pool(for database: DatabaseDefinition, clientDatabase: String, clientUser: String) -> Pool {
        let serverUser = database.user ?? clientUser
        let key = PoolKey(database: clientDatabase, user: serverUser)
        if let pool = pools[key] { return pool }
        if configuration.databases[clientDatabase] == nil, !pools.keys.contains(where: { $0.database == clientDatabase }) {
            logger.info("registered new auto-database: \(clientDatabase)")
        }
        let userDefinition = configuration.users[serverUser] ?? configuration.users[clientUser]
        let pool = Pool(key: key, database: database, user: userDefinition, settings: settings, shard: self)
        pools[key] = pool
        return pool
    }

    var allPools: Dictionary<PoolKey, Pool>.Values { pools.values }

    // MARK: Servers moving between threads

    /// Another thread's part of the pool `key` needs a server (see Pool.serverRequested).
    func serverRequested(for key: PoolKey, by requester: PoolShard, holding servers: Int) {
        pools[key]?.serverRequested(by: requester, holding: servers)
    }

    /// Another thread's pool `key` needs room (see Pool.EvictionScope): close an idle server here that
    /// `scope` allows, and tell it to try again.
    func evictIdleServer(for key: PoolKey, _ scope: Pool.EvictionScope, requester: PoolShard) {
        let matches = { (pool: Pool) in
            switch scope {
            case .pool: pool.key == key
            case .database: pool.key != key && pool.key.database == key.database
            case .user: pool.key != key && pool.key.user == key.user
            }
        }
        let reason = scope == .pool
            ? "evicted for pool_size" : "evicted to make room (max_db_connections/max_user_connections)"
        for pool in pools.values where matches(pool) {
            if pool.closeOneIdleServer(reason: reason) {
                requester.loop.executeBetweenEvents { requester.pools[key]?.maintain() }
                return
            }
        }
    }

    /// A server another thread moved here for the pool `key`.
    func adoptMovedServer(_ server: ServerConnection, for key: PoolKey) {
        guard !isShuttingDown, let database = database(named: key.database) else {
            server.abandonAfterMove()
            shared.serverUncounted(for: key)
            return
        }
        pool(for: database, clientDatabase: key.database, clientUser: key.user).serverMovedIn(server)
    }

    /// Closes an idle server of some other pool that `matches`, to free a slot under a shared limit.
    /// Returns false when there was none.
    func evictIdleServer(excluding requester: Pool, where matches: (Pool) -> Bool) -> Bool {
        for pool in pools.values where pool !== requester && matches(pool) {
            if pool.closeOneIdleServer(reason: "evicted to make room (max_db_connections/max_user_connections)") {
                return true
            }
        }
        return false
    }

    /// The secret the userlist holds for `user`, if any.
    /// RELOAD / SIGHUP: takes the new configuration and userlist. Pools of databases that are gone keep
    /// serving their clients; new logins to them fail with `no such database`.
    func reload(configuration newConfiguration: Configuration, authFiles: AuthFiles) {
        configuration = newConfiguration
        secrets = authFiles.userList.secrets.mapValues(PasswordSecret.init(parsing:))
        access = authFiles.access
        identMaps = authFiles.identMaps
        plainPasswords.keepOnly(users: Set(secrets.keys))
        // RELOAD reads the key and certificate files again even when no TLS setting changed (renewed files).
        settingsChanged(rereadingTLSFiles: true)
        startForcedUserPools()
    }

    /// Takes `configuration.settings` into what is derived from them, and into every existing pool (as in
    /// PgBouncer: pool sizes, modes, server_login_retry, ... apply at once).
    private func settingsChanged(rereadingTLSFiles: Bool = false) {
        settings = configuration.settings
        loadTLS(rereadingFiles: rereadingTLSFiles)
        LogVerbosity.set(configured: settings.verbose)
        authUserConfigured = Self.namesAuthUser(configuration)
        ignoredStartupParameters = IgnoredStartupParameters(settings.ignoreStartupParameters)
        resolver.maxTTL = settings.dnsMaxTTL
        resolver.failureTTL = settings.dnsNXDomainTTL
        applyConfigurationToPools()
    }

    /// Lifeguard's TLS context for clients' SSLRequests; nil when `client_tls_sslmode = disable`.
    private(set) var clientTLS: TLSContext?
    /// `client_tls_sslmode` is require or stronger: TCP clients must use TLS (asked at every login).
    private(set) var clientTLSRequired = false
    /// The TLS context for connections to PostgreSQL; nil when `server_tls_sslmode = disable`.
    private(set) var serverTLS: TLSContext?
    /// The settings the contexts were built from.
    private var clientTLSSettings: TLSSettings?
    private var serverTLSSettings: TLSSettings?

    /// Builds a TLS context afresh when its settings changed (a console SET), or always when
    /// `rereadingFiles` (start and RELOAD, which pick up renewed key and certificate files). A context that
    /// cannot be built (a missing file, a key that does not match; RELOAD checks first and fails) is logged
    /// and the one in use is kept; connections already on TLS keep theirs either way. Changed `server_tls_*`
    /// settings close the servers as they come free, as in PgBouncer 1.24.
    private func loadTLS(rereadingFiles: Bool) {
        if rereadingFiles || clientTLSSettings != settings.clientTLS {
            clientTLS = loadContext(settings.clientTLS, current: clientTLS, make: PoolerTLS.makeContext)
            clientTLSSettings = settings.clientTLS
            clientTLSRequired = settings.clientTLS.sslMode >= .require
        }
        let previous = serverTLSSettings
        if rereadingFiles || previous != settings.serverTLS {
            serverTLS = loadContext(settings.serverTLS, current: serverTLS, make: PoolerTLS.makeServerContext)
            serverTLSSettings = settings.serverTLS
        }
        if let previous, previous != settings.serverTLS {
            for pool in pools.values { pool.configurationChanged() }
        }
    }

    private func loadContext(_ tls: TLSSettings, current: TLSContext?, make: (TLSSettings) throws -> TLSContext)
        -> TLSContext?
    {
        guard tls.sslMode != .disable else { return nil }
        do {
            return try make(tls)
        } catch {
            // PgBouncer's words.
            logger.error("TLS setup failed: \(error)")
            return current
        }
    }

    /// Marks every server of `pool` to be closed when next released; idle ones close now.
    func reconnect(pool: Pool, reason: String = "RECONNECT") {
        for server in serverConnections.values where server.pool === pool {
            server.closeNeeded = true
        }
        pool.closeIdleServers(reason: reason)
    }

    /// Every existing pool takes the current configuration; a pool whose database is gone reconnects.
    private func applyConfigurationToPools() {
        for pool in pools.values {
            guard let database = database(named: pool.key.database) else {
                reconnect(pool: pool)
                continue
            }
            pool.apply(database: database, user: configuration.users[pool.key.user], settings: settings)
        }
    }

    /// The console's `SET`: applies a reloadable setting to the running shard.
    func applyRuntimeSetting(key: String, value: String) -> Bool {
        guard configuration.setAtRuntime(key: key, value: value) else { return false }
        settingsChanged()
        return true
    }

    /// Users the userlist knows, for SHOW USERS.
    var userNames: Set<String> { Set(secrets.keys) }

    func secret(for user: String) -> PasswordSecret? {
        secrets[user]
    }

    // MARK: Connection registry

    func nextConnectionID() -> Int {
        shared.nextConnectionID()
    }

    func register(_ client: ClientSession) {
        clientSessions[ObjectIdentifier(client)] = client
        shared.clientConnected()
    }

    func unregister(_ client: ClientSession) {
        guard clientSessions.removeValue(forKey: ObjectIdentifier(client)) != nil else { return }
        shared.clientDisconnected()
    }

    func register(_ server: ServerConnection) {
        serverConnections[ObjectIdentifier(server)] = server
    }

    func unregister(_ server: ServerConnection) {
        serverConnections[ObjectIdentifier(server)] = nil
    }

    /// Registers a console session and gives it its cancel key.
    func register(_ session: AdminSession) -> CancelKey {
        adminSessions[ObjectIdentifier(session)] = session
        return shared.registerCancelKey(for: .console(session, self), peerID: settings.peerID)
    }

    func unregister(_ session: AdminSession, cancelKey: CancelKey) {
        adminSessions[ObjectIdentifier(session)] = nil
        shared.unregisterCancelKey(cancelKey)
        if control.suspendingSession === session {
            logger.info("admin disappeared when suspended, doing RESUME")
            group.acrossShards(from: self) { group.resume(database: nil) }
        }
    }

    func registerCancelKey(for client: ClientSession) -> CancelKey {
        shared.registerCancelKey(for: .client(client, self), peerID: settings.peerID)
    }

    func unregisterCancelKey(_ key: CancelKey) {
        shared.unregisterCancelKey(key)
    }
}

struct PoolKey: Hashable, CustomStringConvertible {
    var database: String
    var user: String
    var description: String { "\(database)/\(user)" }
}

import CLinuxShims
import LifeguardCore
import NIOConcurrencyHelpers
import NIOCore

/// What every event-loop shard shares: the counts behind the process-wide limits, the cancel keys of all
/// clients and console sessions, and connection ids.
///
/// One lock guards it all. It is taken when a connection is accepted, logs in, or closes, when a server is
/// launched or closed, and for a cancel request: never per message or per transaction.
final class SharedState: @unchecked Sendable {
    private let lock = NIOLock()
    private var counts = ConnectionCounts()
    private var cancelTargets: [CancelKey: CancelTarget] = [:]
    private var lastConnectionID = 0
    private let random = RandomPool()

    /// Where a cancel key leads: the shard that owns the session, and the session (touched only on that
    /// shard's loop).
    enum CancelTarget {
        case client(ClientSession, PoolShard)
        case console(AdminSession, PoolShard)
    }

    /// A new id for SHOW CLIENTS / SHOW SERVERS (`id`, which KILL_CLIENT takes), unique in the process.
    func nextConnectionID() -> Int {
        lock.withLock {
            lastConnectionID += 1
            return lastConnectionID
        }
    }

    // MARK: Clients

    /// Counts an accepted client connection (console sessions included, as PgBouncer counts them until
    /// they are known to be console sessions).
    func clientConnected() {
        lock.withLock { counts.clients += 1 }
    }

    func clientDisconnected() {
        lock.withLock { counts.clients -= 1 }
    }

    /// Client connections open in the whole process.
    var clientCount: Int { lock.withLock { counts.clients } }

    /// A login as PgBouncer's per-database and per-user client limits count it: the database the client
    /// asked for and the user it logged in as (not a database's forced user).
    struct ClientLogin: Hashable {
        let database: String
        let user: String
    }

    /// Counts `login` unless it would pass a per-database or per-user client limit (0: none); returns which
    /// limit stopped it.
    func clientLoggingIn(_ login: ClientLogin, databaseLimit: Int, userLimit: Int) -> ClientLimit? {
        lock.withLock {
            if let limit = limitReached(login, databaseLimit: databaseLimit, userLimit: userLimit) { return limit }
            counts.loginsPerDatabase[login.database, default: 0] += 1
            counts.loginsPerUser[login.user, default: 0] += 1
            return nil
        }
    }

    /// The limit that would stop `login` now, without counting it.
    func clientLimitReached(_ login: ClientLogin, databaseLimit: Int, userLimit: Int) -> ClientLimit? {
        lock.withLock { limitReached(login, databaseLimit: databaseLimit, userLimit: userLimit) }
    }

    private func limitReached(_ login: ClientLogin, databaseLimit: Int, userLimit: Int) -> ClientLimit? {
        if databaseLimit > 0, counts.loginsPerDatabase[login.database, default: 0] >= databaseLimit {
            return .database
        }
        if userLimit > 0, counts.loginsPerUser[login.user, default: 0] >= userLimit { return .user }
        return nil
    }

    enum ClientLimit {
        case database
        case user

        var error: PoolerError {
            switch self {
            case .database: PoolerError("client connections exceeded (max_db_client_connections)")
            case .user: PoolerError("client connections exceeded (max_user_client_connections)")
            }
        }
    }

    func clientLoggedOut(_ login: ClientLogin) {
        lock.withLock {
            counts.loginsPerDatabase[login.database, default: 1] -= 1
            counts.loginsPerUser[login.user, default: 1] -= 1
        }
    }

    /// Logged-in clients (console sessions included) of a database, for SHOW DATABASES.
    func clientCount(ofDatabase database: String) -> Int {
        lock.withLock { counts.loginsPerDatabase[database, default: 0] }
    }

    /// Logged-in clients (console sessions included) of a login user, for SHOW USERS.
    func clientCount(ofUser user: String) -> Int {
        lock.withLock { counts.loginsPerUser[user, default: 0] }
    }

    // MARK: Servers

    /// Decides under the lock whether the pool `key` may open one more server, given the process-wide
    /// counts (servers of the pool, of its database, of its user) and the pool's facts; when `decide` says
    /// launch, the server is counted before the lock is let go, so two shards never both take the last slot.
    func launchServer(
        for key: PoolKey,
        _ decide: (_ ofPool: Int, _ ofDatabase: Int, _ ofUser: Int, _ facts: PoolFacts) -> PoolCapacity.Decision
    ) -> PoolCapacity.Decision {
        lock.withLock {
            let decision = decide(
                counts.serversPerPool[key, default: 0], counts.serversPerDatabase[key.database, default: 0],
                counts.serversPerUser[key.user, default: 0], poolFacts[key, default: PoolFacts()])
            if decision == .launch || decision == .launchFromReserve {
                counts.serversPerPool[key, default: 0] += 1
                counts.serversPerDatabase[key.database, default: 0] += 1
                counts.serversPerUser[key.user, default: 0] += 1
            }
            return decision
        }
    }

    /// A server counted by `launchServer` is gone (or evicted, and no longer counted against the limits).
    func serverUncounted(for key: PoolKey) {
        lock.withLock {
            counts.serversPerPool[key, default: 1] -= 1
            counts.serversPerDatabase[key.database, default: 1] -= 1
            counts.serversPerUser[key.user, default: 1] -= 1
            if counts.serversPerPool[key] == 0 { counts.serversPerPool[key] = nil }
        }
    }

    /// Servers counted for the pool `key` in the whole process.
    func serverCount(ofPool key: PoolKey) -> Int {
        lock.withLock { counts.serversPerPool[key, default: 0] }
    }

    /// Servers counted for `user` in the whole process (SHOW USERS).
    func serverCount(ofUser user: String) -> Int {
        lock.withLock { counts.serversPerUser[user, default: 0] }
    }

    // MARK: Pool facts

    /// What every thread's part of one pool must agree on.
    struct PoolFacts {
        /// The first server login's welcome (AuthenticationOk and untracked ParameterStatus messages) and
        /// tracked parameter values: every part greets its clients with it.
        var welcome: (prefix: ByteBuffer, parameters: ParameterSet)?
        /// The last failed server login, until a login succeeds (server_login_retry, the cached error).
        var lastLoginFailure: (error: PoolerError, at: Int64)?
        /// Which host of the database's list the next server connection goes to.
        var targetIndex = 0
        /// Idle servers of the pool on all threads, kept by each thread's part without the lock.
        let idleServers = RelaxedCounter()
    }

    private var poolFacts: [PoolKey: PoolFacts] = [:]

    /// Reads or changes the facts of the pool `key`.
    func withFacts<T>(of key: PoolKey, _ body: (inout PoolFacts) -> T) -> T {
        lock.withLock { body(&poolFacts[key, default: PoolFacts()]) }
    }

    // MARK: Cancel keys

    /// A random key no client or console session holds yet, registered for `target`; with peering
    /// (`peerID` > 0) it carries the peer id and a TTL.
    func registerCancelKey(for target: CancelTarget, peerID: Int) -> CancelKey {
        lock.withLock {
            while true {
                // One 64-bit draw gives both halves. PgBouncer clears the sign bit so drivers that print the
                // key as a signed pid see a positive one.
                let bits = random.next64()
                var key = CancelKey(
                    processID: max(1, Int32(truncatingIfNeeded: bits >> 32) & Int32.max),
                    secretKey: Int32(truncatingIfNeeded: bits))
                if peerID > 0 {
                    (key.processID, key.secretKey) = PeeredCancelKey.stamp(
                        processID: key.processID, secretKey: key.secretKey, peerID: peerID)
                }
                if cancelTargets[key] == nil {
                    cancelTargets[key] = target
                    return key
                }
            }
        }
    }

    func unregisterCancelKey(_ key: CancelKey) {
        lock.withLock { cancelTargets[key] = nil }
    }

    func cancelTarget(for key: CancelKey) -> CancelTarget? {
        lock.withLock { cancelTargets[key] }
    }
}

/// A count that threads add to and read without a lock; a read may be a moment old.
final class RelaxedCounter: @unchecked Sendable {
    private let value = UnsafeMutablePointer<Int64>.allocate(capacity: 1)

    init() { value.initialize(to: 0) }
    deinit { value.deallocate() }

    func add(_ delta: Int) { lifeguard_atomic_add(value, Int64(delta)) }
    var current: Int { Int(lifeguard_atomic_load(value)) }
}

/// Connection counts behind the limits that span pools and shards.
struct ConnectionCounts {
    var clients = 0
    var loginsPerDatabase: [String: Int] = [:]
    var loginsPerUser: [String: Int] = [:]
    var serversPerPool: [PoolKey: Int] = [:]
    var serversPerDatabase: [String: Int] = [:]
    var serversPerUser: [String: Int] = [:]
}

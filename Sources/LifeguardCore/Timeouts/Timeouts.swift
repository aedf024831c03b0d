/// PgBouncer's connection timeouts, decided from a connection's clocks and "now". Pure, so every rule is
/// tested with a fake clock; the shard's janitor sweeps its connections with it a few times a second, so the
/// hot path only stamps times it already has.
public struct Timeouts: Sendable, Equatable {
    /// Each in nanoseconds; 0 turns the timeout off.
    public var clientLogin: Int64
    public var clientIdle: Int64
    public var queryWait: Int64
    public var query: Int64
    public var idleTransaction: Int64
    public var transaction: Int64
    public var serverIdle: Int64
    public var serverConnect: Int64
    public var queryWaitNotify: Int64

    /// The timeouts for clients of a pool: per-user values first, then per-database (`query_wait_timeout`),
    /// then `[pgbouncer]`, as PgBouncer resolves them.
    public init(settings: Settings, database: DatabaseDefinition? = nil, user: UserDefinition? = nil) {
        func nanoseconds(_ seconds: Double) -> Int64 { Int64((seconds * 1e9).rounded()) }
        clientLogin = nanoseconds(settings.clientLoginTimeout)
        clientIdle = nanoseconds(user?.clientIdleTimeout ?? settings.clientIdleTimeout)
        queryWait = nanoseconds(user?.queryWaitTimeout ?? database?.queryWaitTimeout ?? settings.queryWaitTimeout)
        query = nanoseconds(user?.queryTimeout ?? settings.queryTimeout)
        idleTransaction = nanoseconds(user?.idleTransactionTimeout ?? settings.idleTransactionTimeout)
        transaction = nanoseconds(user?.transactionTimeout ?? settings.transactionTimeout)
        serverIdle = nanoseconds(settings.serverIdleTimeout)
        serverConnect = nanoseconds(settings.serverConnectTimeout)
        queryWaitNotify = Int64(settings.queryWaitNotify) * 1_000_000_000
    }

    /// Why a client is disconnected; the message is PgBouncer's.
    public enum ClientExpiry: String, Sendable, Equatable {
        case login = "client_login_timeout"
        /// Logged in, but the pool has never reached its server to learn the welcome.
        case loginServerDown = "client_login_timeout (server down)"
        case idle = "client_idle_timeout"
        case queryWait = "query_wait_timeout"
        /// `query_timeout` for a client that never got a server (PgBouncer's wording for waiting clients).
        case queryWhileWaiting = "query_timeout"
        case query = "query timeout"
        case idleTransaction = "idle transaction timeout"
        case transaction = "transaction timeout"

        public var message: String { rawValue }
    }

    /// A client's clocks, in nanoseconds on one monotonic scale; nil where the phase does not apply.
    public struct ClientClocks: Sendable, Equatable {
        /// Still logging in, since this time.
        public var loginStartedAt: Int64?
        /// Connected at this time and waiting for the pool's first server login (its welcome).
        public var awaitingWelcomeSince: Int64?
        /// Logged in, with no server and no request, since this time.
        public var idleSince: Int64?
        /// Queued for a server since this time.
        public var waitingSince: Int64?
        public var queryStartedAt: Int64?
        public var transactionStartedAt: Int64?
        /// Inside a transaction with nothing running (ReadyForQuery `T`/`E`) since this time.
        public var idleInTransactionSince: Int64?

        public init() {}
    }

    public func expired(_ clocks: ClientClocks, now: Int64) -> ClientExpiry? {
        func over(_ since: Int64?, _ limit: Int64) -> Bool {
            guard limit > 0, let since else { return false }
            return now - since >= limit
        }
        if over(clocks.loginStartedAt, clientLogin) { return .login }
        if over(clocks.awaitingWelcomeSince, clientLogin) { return .loginServerDown }
        // A client waiting for the first server login waits on the pool like a queued one.
        if over(clocks.awaitingWelcomeSince, query) { return .queryWhileWaiting }
        if over(clocks.awaitingWelcomeSince, queryWait) { return .queryWait }
        if over(clocks.waitingSince, queryWait) { return .queryWait }
        if over(clocks.idleInTransactionSince, idleTransaction) { return .idleTransaction }
        if over(clocks.queryStartedAt, query), clocks.idleInTransactionSince == nil { return .query }
        if over(clocks.transactionStartedAt, transaction) { return .transaction }
        if over(clocks.idleSince, clientIdle) { return .idle }
        return nil
    }

    /// A queued client that has waited `query_wait_notify` gets PgBouncer's NOTICE once.
    public func shouldNotifyQueued(waitingSince: Int64, now: Int64) -> Bool {
        queryWaitNotify > 0 && now - waitingSince >= queryWaitNotify
    }

    public static let queuedNotice = "No server connection available in postgres backend, client being queued"

    /// Why a server connection is closed by the sweep.
    public enum ServerExpiry: String, Sendable, Equatable {
        case connect = "connect timeout"
        case idle = "server idle timeout"
        case lifetime = "server lifetime over"

        public var reason: String { rawValue }
    }

    /// `loggingInSince` is set while connecting or logging in; `idleSince` while in the pool unused.
    /// `keepForMinimum` is true when closing would take the pool below min_pool_size; `lifetimeOver` when the
    /// server has been connected for `server_lifetime` (an idle one is closed then, as PgBouncer's janitor does).
    public func expiredServer(
        loggingInSince: Int64?, idleSince: Int64?, keepForMinimum: Bool, lifetimeOver: Bool, now: Int64
    ) -> ServerExpiry? {
        if serverConnect > 0, let loggingInSince, now - loggingInSince >= serverConnect { return .connect }
        guard let idleSince else { return nil }
        if serverIdle > 0, !keepForMinimum, now - idleSince >= serverIdle { return .idle }
        if lifetimeOver { return .lifetime }
        return nil
    }

    /// `server_lifetime`, checked when a server is released: 0 means use each server once. `nowSeconds` is the
    /// janitor's coarse clock, which can be behind a server connected since its last tick: such a server's
    /// age counts as 0, not as negative (which would let it outlive a lifetime of 0).
    public static func lifetimeOver(connectedSeconds: Int, nowSeconds: Int, lifetimeSeconds: Double) -> Bool {
        Double(max(0, nowSeconds - connectedSeconds)) >= lifetimeSeconds
    }
}

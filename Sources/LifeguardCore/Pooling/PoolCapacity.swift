/// Whether a pool may open one more server connection, from its limits and what is waiting on it.
///
/// PgBouncer's rules: at most one login at a time, none for `server_login_retry` after a failed one; open only for waiting clients or to reach
/// `min_pool_size` (which counts only once a client came, or when the database has a forced user); beyond
/// `pool_size` only from the reserve, for a client that waited `reserve_pool_timeout`; and never past
/// `max_db_connections` or `max_user_connections`, where an idle server of another pool is closed instead.
public struct PoolCapacity: Sendable, Equatable {
    public var size: Int
    public var reserveSize: Int
    public var minSize: Int
    public var reserveTimeoutNanoseconds: Int64
    /// 0 means unlimited, for both.
    public var maxDatabaseConnections: Int
    public var maxUserConnections: Int

    public init(
        size: Int, reserveSize: Int, minSize: Int, reserveTimeoutNanoseconds: Int64,
        maxDatabaseConnections: Int, maxUserConnections: Int
    ) {
        self.size = size
        self.reserveSize = reserveSize
        self.minSize = minSize
        self.reserveTimeoutNanoseconds = reserveTimeoutNanoseconds
        self.maxDatabaseConnections = maxDatabaseConnections
        self.maxUserConnections = maxUserConnections
    }

    /// A snapshot of one pool and of the shared counts its limits are measured against.
    public struct State: Sendable, Equatable {
        public var servers = 0
        public var serversLoggingIn = 0
        public var waitingClients = 0
        public var clientsAwaitingWelcome = 0
        /// How long the longest-waiting client has waited.
        public var longestWaitNanoseconds: Int64 = 0
        public var loggedInClients = 0
        public var hasForcedUser = false
        public var serversOfDatabase = 0
        public var serversOfUser = 0
        /// A login failed less than `server_login_retry` ago.
        public var inLoginRetryDelay = false
        /// PAUSE, SUSPEND or KILL: no new servers until RESUME.
        public var paused = false

        public init() {}
    }

    public enum Decision: Sendable, Equatable {
        case wait
        case launch
        case launchFromReserve
        /// At `max_db_connections`: close an idle server of another pool of this database.
        case evictForDatabaseLimit
        /// At `max_user_connections`: close an idle server of another pool of this user.
        case evictForUserLimit
    }

    public func decide(_ state: State) -> Decision {
        guard state.serversLoggingIn == 0, !state.inLoginRetryDelay, !state.paused else { return .wait }
        let hasDemand = state.waitingClients > 0 || state.clientsAwaitingWelcome > 0
        let belowMinimum = state.servers < minSize && (state.hasForcedUser || state.loggedInClients > 0)
        guard hasDemand || belowMinimum else { return .wait }

        var fromReserve = false
        if size > 0, state.servers >= size {
            guard hasDemand, state.servers < size + reserveSize, state.waitingClients > 0,
                state.longestWaitNanoseconds >= reserveTimeoutNanoseconds
            else { return .wait }
            fromReserve = true
        }
        if maxDatabaseConnections > 0, state.serversOfDatabase >= maxDatabaseConnections {
            return hasDemand ? .evictForDatabaseLimit : .wait
        }
        if maxUserConnections > 0, state.serversOfUser >= maxUserConnections {
            return hasDemand ? .evictForUserLimit : .wait
        }
        return fromReserve ? .launchFromReserve : .launch
    }
}

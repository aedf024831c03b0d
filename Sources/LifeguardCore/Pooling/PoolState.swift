import DequeModule

/// The pooling rules of one (database, user) pool as a value that takes events and says what to do: which
/// idle server a client gets, who waits and in what order, what happens to a server that comes free, when a
/// login failure fails the waiting clients, and when one more server may be opened.
///
/// PgBouncer's rules: servers are handed out LIFO (the most recently used is the warmest; FIFO with
/// `server_round_robin`), clients are served FIFO, and while logins keep failing with no server left, a
/// client fails at once with the cached error. Generic over the client and server objects, so that this
/// module knows no sessions; times are monotonic nanoseconds passed in by the caller, read only when a rule
/// needs one (a lend or release with nobody waiting reads no clock).
public struct PoolState<Client: AnyObject, Server: AnyObject> {
    public struct Waiter {
        public let client: Client
        public let since: Int64
        /// query_wait_notify was sent to this client during this wait.
        public var notified = false
    }

    public private(set) var idleServers: [Server] = []
    public private(set) var waitingClients: Deque<Waiter> = []
    /// Replication clients waiting for a server of their own: each gets a new one, never an idle one.
    public private(set) var replicationWaiting: Deque<Waiter> = []
    /// Logged-in clients waiting for the first server login, which gives the pool its welcome parameters.
    public private(set) var clientsAwaitingWelcome: [Client] = []
    /// Whether a server has logged in and its parameters can greet clients.
    public private(set) var canWelcome = false
    /// Servers counted against the limits: logging in, idle, busy, or closing but not evicted.
    public private(set) var serverCount = 0
    public private(set) var serversLoggingIn = 0
    public var loggedInClients = 0
    /// Servers closed to free a slot for another pool: already uncounted when their close completes.
    private var evictedServers: Set<ObjectIdentifier> = []
    /// The last failed server login (of this part of the pool, or of any thread's, see `syncLoginFailure`).
    public private(set) var lastLoginFailure: (error: PoolerError, at: Int64)?

    public var capacity: PoolCapacity
    public var serverRoundRobin: Bool
    /// `server_login_retry`: how long a failed login keeps new ones from starting.
    public var loginRetryNanoseconds: Int64

    public init(capacity: PoolCapacity, serverRoundRobin: Bool, loginRetryNanoseconds: Int64) {
        self.capacity = capacity
        self.serverRoundRobin = serverRoundRobin
        self.loginRetryNanoseconds = loginRetryNanoseconds
    }

    public var hasNoClients: Bool {
        loggedInClients == 0 && waitingClients.isEmpty && clientsAwaitingWelcome.isEmpty && replicationWaiting.isEmpty
    }

    // MARK: Clients

    public enum WelcomeAction {
        case greet
        /// Close the client with this error.
        case fail(PoolerError)
        /// The client waits for the first server login; see whether a server should be opened.
        case wait
    }

    /// A client logged in and needs the pool's welcome parameters.
    public mutating func clientNeedsWelcome(_ client: Client, now: @autoclosure () -> Int64) -> WelcomeAction {
        if canWelcome { return .greet }
        if let cached = failingFast(now: now) { return .fail(cached) }
        clientsAwaitingWelcome.append(client)
        return .wait
    }

    public enum ServerRequestAction {
        case lend(Server)
        /// Close the client with this error.
        case fail(PoolerError)
        /// The client is queued; see whether a server should be opened for it.
        case wait
    }

    /// A client has a request and no server. While paused it always waits.
    public mutating func clientWantsServer(_ client: Client, now: @autoclosure () -> Int64, paused: Bool)
        -> ServerRequestAction
    {
        if !paused {
            if let server = takeIdleServer() { return .lend(server) }
            if let cached = failingFast(now: now) { return .fail(cached) }
        }
        waitingClients.append(Waiter(client: client, since: now()))
        return .wait
    }

    /// A client whose server failed its check waits again, first in line.
    public mutating func requeueFirst(_ client: Client, now: Int64) {
        waitingClients.prepend(Waiter(client: client, since: now))
    }

    /// The client is going away: forget any place it held in a queue.
    public mutating func removeWaiting(_ client: Client) {
        if let index = waitingClients.firstIndex(where: { $0.client === client }) {
            waitingClients.remove(at: index)
        }
        clientsAwaitingWelcome.removeAll { $0 === client }
        if let index = replicationWaiting.firstIndex(where: { $0.client === client }) {
            replicationWaiting.remove(at: index)
        }
    }

    // MARK: Replication clients

    /// A replication client logged in: it waits for a server opened for it alone (PgBouncer's rule: a
    /// walsender connection carries the client's own startup parameters, so it is never shared or reused).
    public mutating func replicationClientWaiting(_ client: Client, now: Int64) {
        replicationWaiting.append(Waiter(client: client, since: now))
    }

    /// The replication client the server being launched is for, first come first served.
    public mutating func takeReplicationWaiter() -> Client? {
        replicationWaiting.popFirst()?.client
    }

    /// How long the longest-waiting client has waited.
    public func longestWaitNanoseconds(now: Int64) -> Int64 {
        waitingClients.first.map { now - $0.since } ?? 0
    }

    /// RESUME: pair the clients queued during the pause with idle servers, first come first served.
    public mutating func resume() -> [(server: Server, client: Client)] {
        var pairs: [(server: Server, client: Client)] = []
        while !waitingClients.isEmpty, let server = takeIdleServer() {
            pairs.append((server, waitingClients.removeFirst().client))
        }
        return pairs
    }

    /// query_wait_timeout and query_wait_notify: the queued clients whose wait is over, and those to tell
    /// once that they are queued.
    public mutating func sweepWaiting(now: Int64, timeouts: Timeouts) -> (expired: [Client], notify: [Client]) {
        var expired: [Client] = []
        var notify: [Client] = []
        for index in waitingClients.indices {
            var clocks = Timeouts.ClientClocks()
            clocks.waitingSince = waitingClients[index].since
            if timeouts.expired(clocks, now: now) == .queryWait {
                expired.append(waitingClients[index].client)
            } else if !waitingClients[index].notified,
                timeouts.shouldNotifyQueued(waitingSince: waitingClients[index].since, now: now)
            {
                waitingClients[index].notified = true
                notify.append(waitingClients[index].client)
            }
        }
        return (expired, notify)
    }

    // MARK: Servers coming free

    /// What stops a server that came free from being used again, checked in this order.
    public struct FreedServerConditions {
        /// A cancel aimed at its last client may still land (PgBouncer's being_canceled).
        public var cancelsInFlight = false
        public var paused = false
        /// RECONNECT or a changed connection string.
        public var closeNeeded = false
        /// SQL PREPARE or DEALLOCATE ran while prepared statements are shared.
        public var statementCacheUntrusted = false
        public var lifetimeOver = false

        public init() {}

        /// Nothing keeps the server from serving another client (here or on another thread).
        public var allowReuse: Bool {
            !cancelsInFlight && !paused && !closeNeeded && !statementCacheUntrusted && !lifetimeOver
        }
    }

    public enum FreedServerAction {
        /// Nobody gets it until its cancel connections are done.
        case park
        case close(reason: String)
        /// Lend it to the first waiting client, which waited this long.
        case lend(Client, waitedNanoseconds: Int64)
        /// It joins the idle list.
        case idle
    }

    /// A server is between transactions (released, reset, checked or newly logged in).
    public mutating func serverFreed(
        _ server: Server, _ conditions: FreedServerConditions, now: @autoclosure () -> Int64
    ) -> FreedServerAction
    {
        if conditions.cancelsInFlight { return .park }
        if conditions.paused { return .close(reason: "pause") }
        if conditions.closeNeeded {
            return .close(reason: "server close needed (RECONNECT or configuration change)")
        }
        if conditions.statementCacheUntrusted {
            return .close(reason: "SQL PREPARE or DEALLOCATE ran while prepared statements are shared")
        }
        if conditions.lifetimeOver { return .close(reason: "server lifetime over") }
        if let next = waitingClients.popFirst() { return .lend(next.client, waitedNanoseconds: now() - next.since) }
        idleServers.append(server)
        return .idle
    }

    /// Whether a server a client let go runs `server_reset_query` first: in session mode when the client
    /// left, or always with `server_reset_query_always`.
    public static func needsReset(mode: PoolMode, clientDisconnected: Bool, resetQueryAlways: Bool) -> Bool {
        (mode == .session && clientDisconnected) || resetQueryAlways
    }

    /// LIFO keeps the warmest server busy; `server_round_robin` spreads load FIFO instead.
    private mutating func takeIdleServer() -> Server? {
        guard !idleServers.isEmpty else { return nil }
        return serverRoundRobin ? idleServers.removeFirst() : idleServers.removeLast()
    }

    /// Takes every idle server out (to be closed).
    public mutating func takeAllIdleServers() -> [Server] {
        defer { idleServers = [] }
        return idleServers
    }

    /// Takes the most recently idle server out and uncounts it at once, so that the pool that asked for the
    /// room can take the slot now, as in PgBouncer. The caller closes it and uncounts its shared counts.
    public mutating func evictOneIdleServer() -> Server? {
        guard let server = idleServers.popLast() else { return nil }
        serverCount -= 1
        evictedServers.insert(ObjectIdentifier(server))
        return server
    }

    // MARK: Servers moving between threads

    /// `server` (idle, or just freed) leaves this part of the pool for another thread's part; it stays
    /// counted against the process-wide limits, there.
    public mutating func serverMovedOut(_ server: Server) {
        idleServers.removeAll { $0 === server }
        serverCount -= 1
    }

    /// A logged-in server arrived from another thread's part of the pool (the caller then frees it here).
    public mutating func serverMovedIn() {
        serverCount += 1
    }

    /// The pool's welcome parameters became known without a login here (another thread's server logged
    /// in, or moved here): the clients that waited for them.
    public mutating func welcomeKnown() -> [Client] {
        guard !canWelcome else { return [] }
        canWelcome = true
        defer { clientsAwaitingWelcome = [] }
        return clientsAwaitingWelcome
    }

    /// Takes the pool's last login failure as all threads know it (nil after a successful login anywhere).
    public mutating func syncLoginFailure(_ failure: (error: PoolerError, at: Int64)?) {
        lastLoginFailure = failure
    }

    // MARK: Server logins and closes

    /// One more server is being opened.
    public mutating func serverLaunched() {
        serverCount += 1
        serversLoggingIn += 1
    }

    /// A replication server finished its login; it goes to its own client, and its parameters (the client's
    /// own) never become the pool's welcome.
    public mutating func replicationServerLoggedIn() {
        serversLoggingIn -= 1
        lastLoginFailure = nil
    }

    /// A server finished its login: the clients that waited for the pool's welcome parameters, on the
    /// pool's first login.
    public mutating func serverLoggedIn() -> [Client] {
        serversLoggingIn -= 1
        lastLoginFailure = nil
        guard !canWelcome else { return [] }
        canWelcome = true
        defer { clientsAwaitingWelcome = [] }
        return clientsAwaitingWelcome
    }

    /// A server login failed. As PgBouncer does, only a refusal by the server (`failsWaitingClients`: an
    /// error other than "cannot connect now", 57P03) fails the clients waiting on the pool, and only when no
    /// other server of it is left to serve them (`serversClosing`, those marked to close by RECONNECT or a
    /// changed connection string, serve no new transaction and do not count): they are returned, to fail with
    /// this error and its SQLSTATE. A failed connect, a timeout or a server that is starting up or shutting
    /// down leaves them waiting for the retry after `server_login_retry` (or their own timeouts). The failed
    /// server's close is reported separately.
    public mutating func serverLoginFailed(
        _ error: PoolerError, failsWaitingClients: Bool, serversClosing: Int = 0, now: Int64
    ) -> [Client] {
        lastLoginFailure = (error, now)
        guard failsWaitingClients, serverCount - 1 - serversClosing <= 0 else { return [] }
        let waiting = clientsAwaitingWelcome + waitingClients.map(\.client)
        clientsAwaitingWelcome = []
        waitingClients = []
        return waiting
    }

    /// A server connection closed; returns whether it was still counted, so that the caller uncounts it from
    /// the shared per-database and per-user counts too.
    public mutating func serverClosed(_ server: Server, duringLogin: Bool) -> Bool {
        if duringLogin { serversLoggingIn -= 1 }
        idleServers.removeAll { $0 === server }
        guard evictedServers.remove(ObjectIdentifier(server)) == nil else { return false }
        serverCount -= 1
        return true
    }

    /// While logins are failing and no server is left to free up, a client would wait for nothing.
    private func failingFast(now: () -> Int64) -> PoolerError? {
        guard serverCount == 0, let failure = lastLoginFailure, isInLoginRetryDelay(now: now()) else { return nil }
        return PoolerError(
            "server login has been failing, cached error: \(failure.error.message) (server_login_retry)")
    }

    private func isInLoginRetryDelay(now: Int64) -> Bool {
        guard let failure = lastLoginFailure else { return false }
        return now - failure.at < loginRetryNanoseconds
    }

    // MARK: Opening servers

    /// Whether to open one more server now (PoolCapacity's rules on this pool's state). The counts of the
    /// pool's servers in the whole process (this state holds one shard's) and of the database's and the
    /// user's across pools come from the caller; so does the pause.
    public func launchDecision(
        now: Int64, serversOfPool: Int, serversOfDatabase: Int, serversOfUser: Int, hasForcedUser: Bool,
        paused: Bool
    ) -> PoolCapacity.Decision {
        var state = PoolCapacity.State()
        state.servers = serversOfPool
        state.serversLoggingIn = serversLoggingIn
        state.waitingClients = waitingClients.count + replicationWaiting.count
        state.clientsAwaitingWelcome = clientsAwaitingWelcome.count
        state.longestWaitNanoseconds = max(
            longestWaitNanoseconds(now: now), replicationWaiting.first.map { now - $0.since } ?? 0)
        state.loggedInClients = loggedInClients
        state.hasForcedUser = hasForcedUser
        state.serversOfDatabase = serversOfDatabase
        state.serversOfUser = serversOfUser
        state.inLoginRetryDelay = isInLoginRetryDelay(now: now)
        state.paused = paused
        return capacity.decide(state)
    }
}

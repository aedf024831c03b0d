/// A server connection's lifecycle as typed states that take events and say what to do: log in (with its
/// connect_query), wait idle in the pool, sync a client's parameters, carry the client's traffic, run the
/// reset or check query, close. The connection feeds it and carries its actions out; the console's state
/// words derive from its states. Generic over the client, so that this module knows no sessions.
public struct ServerStateMachine<Client: AnyObject> {
    public enum State {
        case connecting
        case authenticating
        /// Authenticated; collecting ParameterStatus and BackendKeyData until the first ReadyForQuery.
        case loggingIn
        case runningConnectQuery
        case idle
        /// Setting the client's tracked parameters before its data flows; the replies are swallowed.
        case syncingParameters(Client, failure: PoolerError?)
        case linked(Client)
        case resetting(failed: Bool)
        /// Running server_check_query before being lent to the client.
        case checking(Client, failed: Bool)
        case closed
    }

    public private(set) var state = State.connecting

    public init() {}

    // MARK: What the state says

    /// Connecting or logging in (PgBouncer's `new`/sv_login).
    public var isLoggingIn: Bool {
        switch state {
        case .connecting, .authenticating, .loggingIn, .runningConnectQuery: return true
        default: return false
        }
    }

    public var isIdle: Bool {
        if case .idle = state { return true }
        return false
    }

    /// The client whose parameters are being synced or whose traffic flows (PgBouncer's `active`).
    public var linkedClient: Client? {
        switch state {
        case .syncingParameters(let client, _), .linked(let client): return client
        default: return nil
        }
    }

    /// Results of Lifeguard's own queries (connect_query, parameter sync, reset, check) are swallowed.
    public var isRunningOwnQuery: Bool {
        switch state {
        case .runningConnectQuery, .syncingParameters, .resetting, .checking: return true
        default: return false
        }
    }

    // MARK: Login

    /// The TCP or Unix-socket connection is up: the startup packet goes out.
    public mutating func connected() {
        state = .authenticating
    }

    /// The connection could not be made; false if the machine had already moved on (the pool gave up on it).
    public mutating func connectFailed() -> Bool {
        guard case .connecting = state else { return false }
        state = .closed
        return true
    }

    /// AuthenticationOk: ParameterStatus and BackendKeyData follow until ReadyForQuery.
    public mutating func authenticated() {
        state = .loggingIn
    }

    // MARK: Events from the server

    public enum ReadyAction {
        /// Send the database's connect_query.
        case runConnectQuery(String)
        /// Logged in: the pool may use the server.
        case loggedIn
        /// The client's parameters are set: its traffic may flow.
        case link(Client)
        /// Setting the client's parameters failed: the client gets the error, the server closes.
        case failParameterSync(Client, PoolerError)
        /// Reset or checked with nobody waiting: back to the pool.
        case available
        /// Checked: lend it to the client that was waiting for it.
        case lend(Client)
        case close(reason: String)
    }

    /// ReadyForQuery outside a client's traffic. `clientLeft` tells whether a client waiting for this server
    /// has gone meanwhile.
    public mutating func readyForQuery(connectQuery: String?, clientLeft: (Client) -> Bool) -> ReadyAction {
        switch state {
        case .loggingIn:
            if let connectQuery, !connectQuery.isEmpty {
                state = .runningConnectQuery
                return .runConnectQuery(connectQuery)
            }
            state = .idle
            return .loggedIn
        case .runningConnectQuery:
            state = .idle
            return .loggedIn
        case .syncingParameters(let client, let failure):
            if let failure { return .failParameterSync(client, PoolerError("invalid server parameter: \(failure.message)")) }
            state = .linked(client)
            return .link(client)
        case .resetting(let failed):
            return failed ? .close(reason: "server_reset_query failed") : .available
        case .checking(let client, let failed):
            if failed { return .close(reason: "server check query failed") }
            return clientLeft(client) ? .available : .lend(client)
        case .connecting, .authenticating, .idle, .linked, .closed:
            return .close(reason: "unexpected ReadyForQuery")
        }
    }

    public enum ErrorAction: Equatable {
        /// The login failed: tell the pool and close.
        case loginFailed
        /// connect_query failed: logged; the login goes on.
        case connectQueryFailed
        /// Remembered until the ReadyForQuery that ends the query.
        case noted
        case close(reason: String)
    }

    /// An ErrorResponse outside a client's traffic.
    public mutating func serverError(_ error: PoolerError) -> ErrorAction {
        switch state {
        case .connecting, .authenticating, .loggingIn:
            state = .closed
            return .loginFailed
        case .runningConnectQuery:
            return .connectQueryFailed
        case .syncingParameters(let client, _):
            state = .syncingParameters(client, failure: error)
            return .noted
        case .resetting:
            state = .resetting(failed: true)
            return .noted
        case .checking(let client, _):
            state = .checking(client, failed: true)
            return .noted
        case .idle, .linked, .closed:
            return .close(reason: "idle server got error: \(error.message)")
        }
    }

    public enum ClosedAction {
        /// Closed before the login finished.
        case duringLogin
        /// The linked client loses its server.
        case whileLinked(Client)
        case whileIdle
        /// The client the check was for goes back to the head of the queue.
        case duringCheck(Client)
        case alreadyClosed
    }

    /// The socket closed (either side).
    public mutating func closed() -> ClosedAction {
        let previous = state
        state = .closed
        switch previous {
        case .connecting, .authenticating, .loggingIn, .runningConnectQuery: return .duringLogin
        case .syncingParameters(let client, _), .linked(let client): return .whileLinked(client)
        case .idle, .resetting: return .whileIdle
        case .checking(let client, _): return .duringCheck(client)
        case .closed: return .alreadyClosed
        }
    }

    // MARK: Events from the pool and the client

    /// Lent to `client`, first setting its parameters when they differ.
    public mutating func lend(to client: Client, syncingParameters: Bool) {
        state = syncingParameters ? .syncingParameters(client, failure: nil) : .linked(client)
    }

    /// Back in the pool (released after a transaction, reset or checked, or parked for a cancel).
    public mutating func becomeIdle() {
        state = .idle
    }

    public mutating func startReset() {
        state = .resetting(failed: false)
    }

    public mutating func startCheck(for client: Client) {
        state = .checking(client, failed: false)
    }

    public enum ClientGoneAction: Equatable {
        /// Between transactions: back to the pool.
        case release
        case close(reason: String)
    }

    /// Where the traffic of a client that went away had got to.
    public enum LeavingClient: Equatable {
        case betweenTransactions
        /// A query, a transaction or a COPY was under way.
        case serverNotReady
        /// Part of a message, or messages, had not reached the server.
        case unsentData
    }

    /// The linked client went away. A server between transactions goes back to the pool; one with a
    /// transaction or query in flight, half a message, or still syncing parameters, is closed, so no other
    /// client inherits it. The reasons are PgBouncer's.
    public mutating func clientGone(_ leaving: LeavingClient) -> ClientGoneAction {
        guard case .linked = state else { return .close(reason: "client disconnected during parameter sync") }
        switch leaving {
        case .betweenTransactions:
            state = .idle
            return .release
        case .serverNotReady:
            return .close(reason: "client disconnect while server was not ready")
        case .unsentData:
            return .close(reason: "client disconnect before everything was sent to the server")
        }
    }
}

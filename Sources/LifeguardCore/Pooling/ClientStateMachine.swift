/// A client session's lifecycle as typed states: where it is in its login, and whether it holds, waits for
/// or has no server. The session feeds it events; the pool's decisions and the console's state words derive
/// from it. Generic over the server, so that this module knows no connections.
public struct ClientStateMachine<Server: AnyObject> {
    public enum Phase: Equatable {
        case startup
        case authenticating
        /// Authenticated; greeted as soon as the pool knows the server's ParameterStatus set.
        case awaitingWelcome
        case active
        case closed
    }

    public enum Link {
        case none
        /// Waiting in the pool for a server.
        case queued
        /// Lent a server; not `ready` while the server sets the client's parameters.
        case assigned(Server, ready: Bool)
    }

    public private(set) var phase = Phase.startup
    public private(set) var link = Link.none

    public init() {}

    // MARK: What the state says

    public var server: Server? {
        if case .assigned(let server, _) = link { return server }
        return nil
    }

    /// The server, once it takes the client's bytes.
    public var readyServer: Server? {
        if case .assigned(let server, true) = link { return server }
        return nil
    }

    public var isQueued: Bool {
        if case .queued = link { return true }
        return false
    }

    /// Past authentication and not closed: counted in SHOW POOLS, drained by SHUTDOWN WAIT_FOR_CLIENTS.
    public var isLoggedIn: Bool { phase == .awaitingWelcome || phase == .active }

    public var isLoggingIn: Bool { phase == .startup || phase == .authenticating }

    public var isClosed: Bool { phase == .closed }

    /// Waiting for its welcome or for a server to run its request on.
    public var isWaitingForServer: Bool {
        phase == .awaitingWelcome || (phase == .active && isQueued)
    }

    /// PgBouncer's word for SHOW CLIENTS and SHOW POOLS; nil while logging in or once closed.
    public var stateWord: String? {
        guard isLoggedIn else { return nil }
        if isWaitingForServer { return "waiting" }
        return server != nil ? "active" : "idle"
    }

    // MARK: Login

    public mutating func startAuthentication() {
        phase = .authenticating
    }

    public mutating func loggedIn() {
        phase = .awaitingWelcome
    }

    /// Greeted; false unless it was waiting for exactly that.
    public mutating func welcome() -> Bool {
        guard phase == .awaitingWelcome else { return false }
        phase = .active
        return true
    }

    /// Closing (an error, a kill, a cancel request, a console hand-over). Leaves the pool's queue, keeps an
    /// assigned server until `detachServer`; false when it was already closed.
    @discardableResult
    public mutating func close() -> Bool {
        guard phase != .closed else { return false }
        phase = .closed
        if case .queued = link { link = .none }
        return true
    }

    // MARK: Servers

    /// Whether to ask the pool for a server: true once per wait, for an active client with none.
    public mutating func wantsServer() -> Bool {
        guard phase == .active, case .none = link else { return false }
        link = .queued
        return true
    }

    public mutating func serverAssigned(_ server: Server, ready: Bool) {
        link = .assigned(server, ready: ready)
    }

    /// The assigned server has set the client's parameters.
    public mutating func serverBecameReady() {
        if case .assigned(let server, _) = link { link = .assigned(server, ready: true) }
    }

    /// The server went back to the pool, or died.
    public mutating func serverGone() {
        link = .none
    }

    /// The connection is gone: hands back the server it still held, and whether that server was ready.
    public mutating func detachServer() -> (server: Server, ready: Bool)? {
        phase = .closed
        defer { link = .none }
        if case .assigned(let server, let ready) = link { return (server, ready) }
        return nil
    }
}

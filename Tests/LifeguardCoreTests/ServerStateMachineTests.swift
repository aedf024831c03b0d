import LifeguardCore
import Testing

/// The server connection's lifecycle without sockets: each event's action and the state it leaves.
@Suite struct ServerStateMachineTests {
    final class Client {}
    typealias Machine = ServerStateMachine<Client>

    private func fail(_ comment: Comment, sourceLocation: SourceLocation = #_sourceLocation) {
        Issue.record(comment, sourceLocation: sourceLocation)
    }

    private func loggedIn() -> Machine {
        var machine = Machine()
        machine.connected()
        machine.authenticated()
        guard case .loggedIn = machine.readyForQuery(connectQuery: nil, clientLeft: { _ in false }) else {
            fail("login did not finish")
            return machine
        }
        return machine
    }

    @Test func loginRunsTheConnectQueryBeforeTheServerIsUsable() {
        var machine = Machine()
        #expect(machine.isLoggingIn)
        machine.connected()
        machine.authenticated()
        guard case .runConnectQuery(let query) = machine.readyForQuery(connectQuery: "SET x = 1", clientLeft: { _ in false })
        else { return fail("no connect query") }
        #expect(query == "SET x = 1")
        #expect(machine.isLoggingIn)
        let action1 = machine.serverError(PoolerError("boom"))
        #expect(action1 == .connectQueryFailed, "a failed connect_query is only logged")
        guard case .loggedIn = machine.readyForQuery(connectQuery: "SET x = 1", clientLeft: { _ in false }) else {
            return fail("not logged in after the connect query")
        }
        #expect(machine.isIdle && !machine.isLoggingIn)
    }

    @Test func anErrorDuringLoginFailsTheLogin() {
        var machine = Machine()
        machine.connected()
        let action2 = machine.serverError(PoolerError("password authentication failed"))
        #expect(action2 == .loginFailed)
        guard case .alreadyClosed = machine.closed() else { return fail("the login failure closed it") }
    }

    @Test func parameterSyncLinksTheClientOrFailsIt() {
        let client = Client()
        var machine = loggedIn()
        machine.lend(to: client, syncingParameters: true)
        #expect(machine.linkedClient === client && machine.isRunningOwnQuery)
        guard case .link(let linked) = machine.readyForQuery(connectQuery: nil, clientLeft: { _ in false }), linked === client
        else { return fail("not linked after the sync") }
        #expect(!machine.isRunningOwnQuery)

        var failing = loggedIn()
        failing.lend(to: client, syncingParameters: true)
        let action3 = failing.serverError(PoolerError("invalid value for parameter \"TimeZone\""))
        #expect(action3 == .noted)
        guard case .failParameterSync(let failed, let error) = failing.readyForQuery(connectQuery: nil, clientLeft: { _ in false })
        else { return fail("a failed sync linked the client") }
        #expect(failed === client)
        #expect(error.message == "invalid server parameter: invalid value for parameter \"TimeZone\"")
    }

    @Test func aCheckedServerGoesToItsClientOrBackToThePool() {
        let client = Client()
        var machine = loggedIn()
        machine.startCheck(for: client)
        guard case .lend(let lent) = machine.readyForQuery(connectQuery: nil, clientLeft: { _ in false }), lent === client
        else { return fail("not lent after the check") }

        machine.startCheck(for: client)
        guard case .available = machine.readyForQuery(connectQuery: nil, clientLeft: { _ in true }) else {
            return fail("the client left during the check: the server goes back to the pool")
        }

        machine.startCheck(for: client)
        let action4 = machine.serverError(PoolerError("check failed"))
        #expect(action4 == .noted)
        guard case .close(let reason) = machine.readyForQuery(connectQuery: nil, clientLeft: { _ in false }) else {
            return fail("a failed check must close")
        }
        #expect(reason == "server check query failed")
        guard case .duringCheck(let requeued) = machine.closed(), requeued === client else {
            return fail("the client goes back to the queue")
        }
    }

    @Test func resetQuery() {
        var machine = loggedIn()
        machine.startReset()
        guard case .available = machine.readyForQuery(connectQuery: nil, clientLeft: { _ in false }) else {
            return fail("reset server not available")
        }
        machine.startReset()
        _ = machine.serverError(PoolerError("cannot DISCARD ALL"))
        guard case .close(let reason) = machine.readyForQuery(connectQuery: nil, clientLeft: { _ in false }) else {
            return fail("failed reset kept")
        }
        #expect(reason == "server_reset_query failed")
    }

    /// No other client may inherit a server in the middle of a transaction or of a parameter sync.
    @Test func aLeavingClientReleasesTheServerOnlyBetweenTransactions() {
        let client = Client()
        var machine = loggedIn()
        machine.lend(to: client, syncingParameters: false)
        let action5 = machine.clientGone(.serverNotReady)
        #expect(action5 == .close(reason: "client disconnect while server was not ready"))
        let midMessage = machine.clientGone(.unsentData)
        #expect(midMessage == .close(reason: "client disconnect before everything was sent to the server"))
        let action6 = machine.clientGone(.betweenTransactions)
        #expect(action6 == .release)
        #expect(machine.isIdle)

        machine.lend(to: client, syncingParameters: true)
        let action7 = machine.clientGone(.betweenTransactions)
        #expect(action7 == .close(reason: "client disconnected during parameter sync"))
    }

    @Test func errorsAndReadyForQueryOutOfPlaceClose() {
        var machine = loggedIn()
        let action8 = machine.serverError(PoolerError("terminating connection"))
        #expect(action8 == .close(reason: "idle server got error: terminating connection"))
        guard case .close(let reason) = machine.readyForQuery(connectQuery: nil, clientLeft: { _ in false }) else {
            return fail("ReadyForQuery on an idle server")
        }
        #expect(reason == "unexpected ReadyForQuery")
    }

    @Test func closingTellsWhoLosesTheServer() {
        let client = Client()
        var linked = loggedIn()
        linked.lend(to: client, syncingParameters: false)
        guard case .whileLinked(let lost) = linked.closed(), lost === client else { return fail("client not told") }
        var idle = loggedIn()
        guard case .whileIdle = idle.closed() else { return fail("idle close") }
        var connecting = Machine()
        guard case .duringLogin = connecting.closed() else { return fail("login close") }
        let action9 = connecting.connectFailed()
        #expect(!action9, "a connection already closed does not fail again")
    }
}

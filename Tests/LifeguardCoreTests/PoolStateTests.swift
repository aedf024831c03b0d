import LifeguardCore
import Testing

/// A pool's rules without sockets: who gets which server, who waits, and when a server is opened.
@Suite struct PoolStateTests {
    final class Client {}
    final class Server {}
    typealias State = PoolState<Client, Server>

    private static let second: Int64 = 1_000_000_000

    private func fail(_ comment: Comment, sourceLocation: SourceLocation = #_sourceLocation) {
        Issue.record(comment, sourceLocation: sourceLocation)
    }

    private func makeState(size: Int = 2, reserve: Int = 0, roundRobin: Bool = false) -> State {
        State(
            capacity: PoolCapacity(
                size: size, reserveSize: reserve, minSize: 0, reserveTimeoutNanoseconds: 5 * Self.second,
                maxDatabaseConnections: 0, maxUserConnections: 0),
            serverRoundRobin: roundRobin, loginRetryNanoseconds: 15 * Self.second)
    }

    private func launch(_ state: State, now: Int64 = 0) -> PoolCapacity.Decision {
        state.launchDecision(now: now, serversOfPool: state.serverCount, serversOfDatabase: state.serverCount, serversOfUser: state.serverCount,
            hasForcedUser: false, paused: false)
    }

    /// Opens and logs in a server, which goes idle (no client waits).
    private func idleServer(in state: inout State) -> Server {
        let server = Server()
        state.serverLaunched()
        _ = state.serverLoggedIn()
        guard case .idle = state.serverFreed(server, .init(), now: 0) else {
            fail("a logged-in server with nobody waiting did not go idle")
            return server
        }
        return server
    }

    @Test func aClientWithNoIdleServerWaitsAndAServerIsOpenedForIt() {
        var state = makeState()
        let client = Client()
        #expect(launch(state) == .wait, "no demand, no server")
        guard case .wait = state.clientWantsServer(client, now: 0, paused: false) else { return fail("not queued") }
        #expect(state.waitingClients.count == 1)
        #expect(launch(state) == .launch)
        state.serverLaunched()
        #expect(launch(state) == .wait, "one login at a time")
        let server = Server()
        let greeted = state.serverLoggedIn()
        #expect(greeted.isEmpty)
        guard case .lend(let lent, let waited) = state.serverFreed(server, .init(), now: 3) else {
            return fail("the new server did not go to the waiting client")
        }
        #expect(lent === client && waited == 3)
        #expect(state.waitingClients.isEmpty && state.idleServers.isEmpty)
    }

    /// Replication clients wait for servers opened for them, first come first served; they count as
    /// demand for a launch, and a client that leaves gives up its place.
    @Test func replicationClientsWaitForServersOfTheirOwn() {
        var state = makeState(size: 2)
        let server = idleServer(in: &state)
        let (first, second, gone) = (Client(), Client(), Client())
        state.replicationClientWaiting(first, now: 0)
        state.replicationClientWaiting(gone, now: 1)
        state.replicationClientWaiting(second, now: 2)
        #expect(!state.hasNoClients)
        // The idle server is not theirs to take; a launch is due for them.
        #expect(state.idleServers.count == 1 && state.idleServers[0] === server)
        #expect(launch(state) == .launch)
        state.removeWaiting(gone)
        #expect(state.takeReplicationWaiter() === first)
        state.serverLaunched()
        state.replicationServerLoggedIn()
        #expect(state.serversLoggingIn == 0)
        #expect(state.takeReplicationWaiter() === second)
        #expect(state.takeReplicationWaiter() == nil)

        // A replication server's parameters are its client's: its login never becomes the pool's welcome.
        var fresh = makeState()
        fresh.serverLaunched()
        fresh.replicationServerLoggedIn()
        #expect(!fresh.canWelcome)
    }

    @Test func idleServersAreLentMostRecentFirstOrInTurnWithRoundRobin() {
        for roundRobin in [false, true] {
            var state = makeState(roundRobin: roundRobin)
            let first = idleServer(in: &state)
            let second = idleServer(in: &state)
            guard case .lend(let lent) = state.clientWantsServer(Client(), now: 0, paused: false) else {
                return fail("an idle server was not lent")
            }
            #expect(lent === (roundRobin ? first : second))
        }
    }

    @Test func waitingClientsAreServedFirstComeFirstServedAndARequeuedOneGoesFirst() {
        var state = makeState(size: 1)
        let server = idleServer(in: &state)
        guard case .lend = state.clientWantsServer(Client(), now: 0, paused: false) else { return fail("no lend") }
        let early = Client()
        let late = Client()
        let checkedOut = Client()
        _ = state.clientWantsServer(early, now: 1, paused: false)
        _ = state.clientWantsServer(late, now: 2, paused: false)
        state.requeueFirst(checkedOut, now: 3)
        var order: [Client] = []
        for _ in 0..<3 {
            guard case .lend(let next, _) = state.serverFreed(server, .init(), now: 4) else { return fail("no lend") }
            order.append(next)
        }
        #expect(order.map(ObjectIdentifier.init) == [checkedOut, early, late].map(ObjectIdentifier.init))
    }

    @Test func aFreedServerIsClosedOrParkedBeforeAnyoneGetsIt() {
        var state = makeState()
        state.serverLaunched()
        _ = state.serverLoggedIn()
        let waiting = Client()
        _ = state.clientWantsServer(waiting, now: 0, paused: false)
        let server = Server()
        var conditions = State.FreedServerConditions()
        conditions.lifetimeOver = true
        guard case .close(let reason) = state.serverFreed(server, conditions, now: 0) else { return fail("kept") }
        #expect(reason == "server lifetime over")
        conditions.cancelsInFlight = true
        guard case .park = state.serverFreed(server, conditions, now: 0) else { return fail("not parked") }
        #expect(state.waitingClients.count == 1, "the waiting client keeps its place")
    }

    @Test func whilePausedClientsWaitEvenWithAnIdleServerAndResumePairsThem() {
        var state = makeState()
        let server = idleServer(in: &state)
        let client = Client()
        guard case .wait = state.clientWantsServer(client, now: 0, paused: true) else { return fail("lent while paused") }
        let pairs = state.resume()
        #expect(pairs.count == 1 && pairs.first?.server === server && pairs.first?.client === client)
        #expect(state.waitingClients.isEmpty && state.idleServers.isEmpty)
    }

    @Test func aFailedLoginWithNoServerLeftFailsEveryWaitingClientAndLaterOnesAtOnce() {
        var state = makeState()
        let greeting = Client()
        guard case .wait = state.clientNeedsWelcome(greeting, now: 0) else { return fail("greeted before a login") }
        let querying = Client()
        _ = state.clientWantsServer(querying, now: 0, paused: false)
        state.serverLaunched()
        let failed = state.serverLoginFailed(
            PoolerError("password authentication failed"), failsWaitingClients: true, now: 1)
        #expect(failed.map(ObjectIdentifier.init) == [greeting, querying].map(ObjectIdentifier.init))
        let wasCounted = state.serverClosed(Server(), duringLogin: true)
        #expect(wasCounted, "the failed server was counted")
        #expect(state.serverCount == 0 && state.serversLoggingIn == 0)
        #expect(launch(state, now: 2) == .wait, "server_login_retry holds new logins back")

        guard case .fail(let error) = state.clientWantsServer(Client(), now: 2, paused: false) else {
            return fail("a new client waited for nothing")
        }
        #expect(error.message.contains("cached error: password authentication failed"))
        guard case .wait = state.clientWantsServer(Client(), now: 16 * Self.second, paused: false) else {
            return fail("still failing after server_login_retry")
        }
        #expect(launch(state, now: 16 * Self.second) == .launch)
    }

    /// A refused connect (or a server starting up or shutting down) keeps the waiting clients for the retry,
    /// as PgBouncer does; only clients arriving during `server_login_retry` get the cached error.
    @Test func aFailedConnectKeepsTheWaitingClientsForTheRetry() {
        var state = makeState()
        guard case .wait = state.clientNeedsWelcome(Client(), now: 0) else { return fail("greeted before a login") }
        state.serverLaunched()
        let failed = state.serverLoginFailed(PoolerError("connect failed"), failsWaitingClients: false, now: 1)
        #expect(failed.isEmpty)
        _ = state.serverClosed(Server(), duringLogin: true)
        #expect(state.clientsAwaitingWelcome.count == 1)
        guard case .fail(let error) = state.clientNeedsWelcome(Client(), now: 2) else {
            return fail("a client arriving during server_login_retry waited")
        }
        #expect(error.message == "server login has been failing, cached error: connect failed (server_login_retry)")
        #expect(launch(state, now: 2) == .wait)
        #expect(launch(state, now: 16 * Self.second) == .launch, "retried for the client still waiting")
    }

    @Test func aFailedLoginWhileAnotherServerLivesFailsNobody() {
        var state = makeState()
        _ = idleServer(in: &state)
        state.serverLaunched()
        _ = state.clientNeedsWelcome(Client(), now: 0)
        let failed = state.serverLoginFailed(PoolerError("boom"), failsWaitingClients: true, now: 0)
        #expect(failed.isEmpty)
    }

    /// PgBouncer's kill_pool_logins: a server marked to close (RECONNECT) serves no new transaction, so the
    /// waiting clients fail with the login error rather than wait for it.
    @Test func aFailedLoginWhileTheOnlyOtherServerIsMarkedToCloseFailsTheWaitingClients() {
        var state = makeState()
        _ = idleServer(in: &state)
        guard case .lend = state.clientWantsServer(Client(), now: 0, paused: false) else {
            return fail("the idle server was not lent")
        }
        let waiting = Client()
        guard case .wait = state.clientWantsServer(waiting, now: 0, paused: false) else {
            return fail("a second client did not wait")
        }
        state.serverLaunched()
        let failed = state.serverLoginFailed(
            PoolerError("password authentication failed"), failsWaitingClients: true, serversClosing: 1, now: 0)
        #expect(failed.map(ObjectIdentifier.init) == [ObjectIdentifier(waiting)])
    }

    @Test func theFirstLoginGreetsTheClientsThatWaitedForIt() {
        var state = makeState()
        let client = Client()
        _ = state.clientNeedsWelcome(client, now: 0)
        state.serverLaunched()
        let greeted = state.serverLoggedIn()
        #expect(greeted.count == 1 && greeted.first === client)
        guard case .greet = state.clientNeedsWelcome(Client(), now: 0) else { return fail("not greeted at once") }
        state.serverLaunched()
        let greetedAgain = state.serverLoggedIn()
        #expect(greetedAgain.isEmpty)
    }

    @Test func anEvictedServerIsUncountedOnceNotAgainWhenItsCloseCompletes() {
        var state = makeState()
        let server = idleServer(in: &state)
        let evicted = state.evictOneIdleServer()
        #expect(evicted === server)
        #expect(state.serverCount == 0)
        let countedAgain = state.serverClosed(server, duringLogin: false)
        #expect(!countedAgain, "counted twice")
        #expect(state.serverCount == 0)
        let nextEvicted = state.evictOneIdleServer()
        #expect(nextEvicted == nil)
    }

    @Test func aClosedIdleServerLeavesTheIdleList() {
        var state = makeState()
        let server = idleServer(in: &state)
        let wasCounted = state.serverClosed(server, duringLogin: false)
        #expect(wasCounted && state.idleServers.isEmpty)
        guard case .wait = state.clientWantsServer(Client(), now: 0, paused: false) else { return fail("lent a closed server") }
    }

    @Test func aServerMovingBetweenThreadsLeavesOnePartAndGreetsTheOthersWaitingClients() {
        var giving = makeState()
        let older = idleServer(in: &giving)
        let newer = idleServer(in: &giving)
        #expect(giving.idleServers.first === older, "the least warm server is first in line to move")
        giving.serverMovedOut(older)
        #expect(giving.serverCount == 1 && giving.idleServers.map { $0 === newer } == [true])

        // The receiving part never logged a server in: its clients waited for the welcome.
        var taking = makeState()
        let client = Client()
        guard case .wait = taking.clientNeedsWelcome(client, now: 0) else { return fail("greeted with no server") }
        taking.serverMovedIn()
        let greeted = taking.welcomeKnown()
        #expect(greeted.count == 1 && greeted[0] === client)
        #expect(taking.serverCount == 1 && taking.canWelcome)
        #expect(taking.welcomeKnown().isEmpty, "greeted once")
    }

    @Test func aClientThatLeavesGivesUpItsPlaceInEveryQueue() {
        var state = makeState()
        let client = Client()
        _ = state.clientNeedsWelcome(client, now: 0)
        _ = state.clientWantsServer(client, now: 0, paused: false)
        state.removeWaiting(client)
        #expect(state.hasNoClients)
        #expect(launch(state) == .wait, "nobody left to open a server for")
    }

    @Test func theReservePoolOpensOnlyForAClientThatWaitedReservePoolTimeout() {
        var state = makeState(size: 1, reserve: 1)
        _ = idleServer(in: &state)
        guard case .lend = state.clientWantsServer(Client(), now: 0, paused: false) else { return fail("no lend") }
        _ = state.clientWantsServer(Client(), now: 0, paused: false)
        #expect(launch(state, now: 4 * Self.second) == .wait)
        #expect(launch(state, now: 5 * Self.second) == .launchFromReserve)
    }

    @Test func theQueuedNoticeGoesOutOncePerWaitAndTheWaitTimesOut() {
        var state = makeState()
        let client = Client()
        _ = state.clientWantsServer(client, now: 0, paused: false)
        var timeouts = Timeouts(settings: Settings())
        timeouts.queryWaitNotify = 1 * Self.second
        timeouts.queryWait = 3 * Self.second
        let early = state.sweepWaiting(now: 0, timeouts: timeouts)
        #expect(early.expired.isEmpty && early.notify.isEmpty)
        let notified = state.sweepWaiting(now: 2 * Self.second, timeouts: timeouts)
        #expect(notified.notify.first === client && notified.expired.isEmpty)
        let again = state.sweepWaiting(now: 2 * Self.second, timeouts: timeouts)
        #expect(again.notify.isEmpty, "notified twice")
        let late = state.sweepWaiting(now: 3 * Self.second, timeouts: timeouts)
        #expect(late.expired.first === client)
    }

    @Test func aServerIsResetWhenASessionClientLeavesOrAlwaysWhenConfigured() {
        #expect(State.needsReset(mode: .session, clientDisconnected: true, resetQueryAlways: false))
        #expect(!State.needsReset(mode: .session, clientDisconnected: false, resetQueryAlways: false))
        #expect(!State.needsReset(mode: .transaction, clientDisconnected: true, resetQueryAlways: false))
        #expect(State.needsReset(mode: .transaction, clientDisconnected: false, resetQueryAlways: true))
    }
}

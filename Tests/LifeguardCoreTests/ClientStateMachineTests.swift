import LifeguardCore
import Testing

/// The client session's lifecycle without sockets.
@Suite struct ClientStateMachineTests {
    final class Server {}
    typealias Machine = ClientStateMachine<Server>

    private func active() -> Machine {
        var machine = Machine()
        machine.startAuthentication()
        machine.loggedIn()
        _ = machine.welcome()
        return machine
    }

    @Test func loginPhasesAndTheirWords() {
        var machine = Machine()
        #expect(machine.isLoggingIn && machine.stateWord == nil)
        machine.startAuthentication()
        #expect(machine.isLoggingIn)
        machine.loggedIn()
        #expect(machine.isLoggedIn && machine.isWaitingForServer && machine.stateWord == "waiting")
        let early = machine.wantsServer()
        #expect(!early, "a client is greeted before it asks for a server")
        let welcomed = machine.welcome()
        #expect(welcomed && machine.stateWord == "idle")
        let again = machine.welcome()
        #expect(!again, "greeted once")
    }

    /// One request to the pool per wait, and a server's readiness gates the client's bytes.
    @Test func askingForAServerAndBeingLentOne() {
        var machine = active()
        let first = machine.wantsServer()
        let second = machine.wantsServer()
        #expect(first && !second)
        #expect(machine.isQueued && machine.stateWord == "waiting")
        let server = Server()
        machine.serverAssigned(server, ready: false)
        #expect(machine.server === server && machine.readyServer == nil && machine.stateWord == "active")
        machine.serverBecameReady()
        #expect(machine.readyServer === server)
        machine.serverGone()
        #expect(machine.server == nil && machine.stateWord == "idle")
        let afterRelease = machine.wantsServer()
        #expect(afterRelease)
    }

    /// Closing leaves the pool's queue at once, but a lent server stays until the connection is gone, so
    /// that it is released or closed exactly once.
    @Test func closingKeepsTheServerUntilDetached() {
        var queued = active()
        _ = queued.wantsServer()
        let closed = queued.close()
        #expect(closed && !queued.isQueued && queued.isClosed && queued.stateWord == nil)
        let closedAgain = queued.close()
        #expect(!closedAgain, "closed once")

        var linked = active()
        let server = Server()
        linked.serverAssigned(server, ready: true)
        linked.close()
        #expect(linked.server === server)
        let detached = linked.detachServer()
        #expect(detached?.server === server && detached?.ready == true)
        let detachedAgain = linked.detachServer()
        #expect(linked.server == nil && detachedAgain == nil)
    }
}

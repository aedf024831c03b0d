import Testing

@testable import LifeguardCore

@Suite struct PoolCapacityTests {
    private let capacity = PoolCapacity(
        size: 2, reserveSize: 1, minSize: 0, reserveTimeoutNanoseconds: 5_000_000_000,
        maxDatabaseConnections: 0, maxUserConnections: 0)

    private func state(_ configure: (inout PoolCapacity.State) -> Void) -> PoolCapacity.State {
        var state = PoolCapacity.State()
        configure(&state)
        return state
    }

    @Test func nothingWaitingOpensNothing() {
        #expect(capacity.decide(state { $0.servers = 0 }) == .wait)
    }

    @Test func aWaitingClientOpensAServer() {
        #expect(capacity.decide(state { $0.waitingClients = 1 }) == .launch)
        #expect(capacity.decide(state { $0.clientsAwaitingWelcome = 1 }) == .launch)
    }

    @Test func noLoginDuringTheRetryDelay() {
        #expect(capacity.decide(state { $0.waitingClients = 1; $0.inLoginRetryDelay = true }) == .wait)
    }

    @Test func onlyOneLoginAtATime() {
        #expect(capacity.decide(state { $0.waitingClients = 5; $0.servers = 1; $0.serversLoggingIn = 1 }) == .wait)
    }

    @Test func fullPoolWaitsUntilTheReserveTimeout() {
        let full = state { $0.waitingClients = 1; $0.servers = 2; $0.longestWaitNanoseconds = 4_999_999_999 }
        #expect(capacity.decide(full) == .wait)
        var waitedLongEnough = full
        waitedLongEnough.longestWaitNanoseconds = 5_000_000_000
        #expect(capacity.decide(waitedLongEnough) == .launchFromReserve)
        var reserveUsed = waitedLongEnough
        reserveUsed.servers = 3
        #expect(capacity.decide(reserveUsed) == .wait)
    }

    @Test func noReserveConfiguredMeansNoReserve() {
        var noReserve = capacity
        noReserve.reserveSize = 0
        #expect(noReserve.decide(state { $0.waitingClients = 1; $0.servers = 2; $0.longestWaitNanoseconds = .max }) == .wait)
    }

    @Test func poolSizeZeroIsUnlimited() {
        var unlimited = capacity
        unlimited.size = 0
        #expect(unlimited.decide(state { $0.waitingClients = 1; $0.servers = 500 }) == .launch)
    }

    @Test func minPoolSizeCountsOnlyWithClientsOrAForcedUser() {
        var withMinimum = capacity
        withMinimum.minSize = 2
        #expect(withMinimum.decide(state { $0.servers = 0 }) == .wait)
        #expect(withMinimum.decide(state { $0.servers = 0; $0.hasForcedUser = true }) == .launch)
        #expect(withMinimum.decide(state { $0.servers = 1; $0.loggedInClients = 1 }) == .launch)
        #expect(withMinimum.decide(state { $0.servers = 2; $0.loggedInClients = 1 }) == .wait)
    }

    @Test func databaseAndUserLimitsEvictInsteadOfOpening() {
        var limited = capacity
        limited.maxDatabaseConnections = 3
        limited.maxUserConnections = 4
        #expect(limited.decide(state { $0.waitingClients = 1; $0.serversOfDatabase = 3 }) == .evictForDatabaseLimit)
        #expect(limited.decide(state { $0.waitingClients = 1; $0.serversOfDatabase = 2; $0.serversOfUser = 4 })
            == .evictForUserLimit)
        #expect(limited.decide(state { $0.waitingClients = 1; $0.serversOfDatabase = 2; $0.serversOfUser = 3 }) == .launch)
        // Keeping min_pool_size never evicts another pool's server.
        var minimum = limited
        minimum.minSize = 1
        #expect(minimum.decide(state { $0.hasForcedUser = true; $0.serversOfDatabase = 3 }) == .wait)
    }
}

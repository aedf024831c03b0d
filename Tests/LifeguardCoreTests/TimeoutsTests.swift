import Testing

@testable import LifeguardCore

/// Every timeout rule against a fake clock: nothing sleeps.
@Suite struct TimeoutsTests {
    private let second: Int64 = 1_000_000_000

    private func timeouts(_ configure: (inout Settings) -> Void = { _ in }) -> Timeouts {
        var settings = Settings()
        configure(&settings)
        return Timeouts(settings: settings)
    }

    private func clocks(_ configure: (inout Timeouts.ClientClocks) -> Void) -> Timeouts.ClientClocks {
        var clocks = Timeouts.ClientClocks()
        configure(&clocks)
        return clocks
    }

    @Test func defaultsArePgBouncers() {
        let defaults = timeouts()
        #expect(defaults.clientLogin == 60 * second)
        #expect(defaults.queryWait == 120 * second)
        #expect(defaults.serverIdle == 600 * second)
        #expect(defaults.serverConnect == 15 * second)
        #expect(defaults.queryWaitNotify == 5 * second)
        #expect(defaults.clientIdle == 0 && defaults.query == 0 && defaults.idleTransaction == 0 && defaults.transaction == 0)
    }

    @Test func loginTimeoutFiresOnlyAfterTheLimit() {
        let rules = timeouts()
        let loggingIn = clocks { $0.loginStartedAt = 0 }
        #expect(rules.expired(loggingIn, now: 60 * second - 1) == nil)
        #expect(rules.expired(loggingIn, now: 60 * second) == .login)
        #expect(Timeouts.ClientExpiry.login.message == "client_login_timeout")
    }

    @Test func aClientWaitingForTheFirstServerLoginTimesOutAsServerDown() {
        let rules = timeouts()
        let waiting = clocks { $0.awaitingWelcomeSince = 0 }
        #expect(rules.expired(waiting, now: 60 * second - 1) == nil)
        #expect(rules.expired(waiting, now: 60 * second) == .loginServerDown)
        #expect(Timeouts.ClientExpiry.loginServerDown.message == "client_login_timeout (server down)")
    }

    @Test func aClientWaitingForTheFirstServerLoginHasTheQueueTimeouts() {
        let waiting = clocks { $0.awaitingWelcomeSince = 0 }
        let rules = timeouts { $0.queryTimeout = 3; $0.queryWaitTimeout = 5 }
        #expect(rules.expired(waiting, now: 3 * second) == .queryWhileWaiting)
        #expect(Timeouts.ClientExpiry.queryWhileWaiting.message == "query_timeout")
        #expect(timeouts { $0.queryWaitTimeout = 5 }.expired(waiting, now: 5 * second) == .queryWait)
    }

    @Test func disabledTimeoutsNeverFire() {
        let rules = timeouts()
        let idle = clocks { $0.idleSince = 0; $0.queryStartedAt = 0; $0.transactionStartedAt = 0 }
        #expect(rules.expired(idle, now: 1_000_000 * second) == nil)
    }

    @Test func eachClientTimeoutWithItsMessage() {
        let rules = timeouts {
            $0.clientIdleTimeout = 1
            $0.queryTimeout = 2
            $0.idleTransactionTimeout = 3
            $0.transactionTimeout = 4
            $0.queryWaitTimeout = 5
        }
        #expect(rules.expired(clocks { $0.idleSince = 0 }, now: second)?.message == "client_idle_timeout")
        #expect(rules.expired(clocks { $0.queryStartedAt = 0 }, now: 2 * second)?.message == "query timeout")
        #expect(rules.expired(clocks { $0.idleInTransactionSince = 0; $0.transactionStartedAt = 0 }, now: 3 * second)?.message
            == "idle transaction timeout")
        #expect(rules.expired(clocks { $0.transactionStartedAt = 0 }, now: 4 * second)?.message == "transaction timeout")
        #expect(rules.expired(clocks { $0.waitingSince = 0 }, now: 5 * second)?.message == "query_wait_timeout")
        #expect(rules.expired(clocks { $0.waitingSince = 0 }, now: 5 * second - 1) == nil)
    }

    @Test func fractionalSecondsAreKept() {
        let rules = timeouts { $0.queryWaitTimeout = 0.25 }
        #expect(rules.expired(clocks { $0.waitingSince = 0 }, now: second / 4) == .queryWait)
    }

    @Test func queuedNoticeAfterQueryWaitNotify() {
        let rules = timeouts()
        #expect(!rules.shouldNotifyQueued(waitingSince: 0, now: 5 * second - 1))
        #expect(rules.shouldNotifyQueued(waitingSince: 0, now: 5 * second))
        #expect(!timeouts { $0.queryWaitNotify = 0 }.shouldNotifyQueued(waitingSince: 0, now: 1_000 * second))
    }

    @Test func serverConnectAndIdleTimeouts() {
        let rules = timeouts { $0.serverIdleTimeout = 10; $0.serverConnectTimeout = 2 }
        #expect(rules.expiredServer(loggingInSince: 0, idleSince: nil, keepForMinimum: false, lifetimeOver: false, now: 2 * second) == .connect)
        #expect(rules.expiredServer(loggingInSince: 0, idleSince: nil, keepForMinimum: false, lifetimeOver: false, now: second) == nil)
        #expect(rules.expiredServer(loggingInSince: nil, idleSince: 0, keepForMinimum: false, lifetimeOver: false, now: 10 * second) == .idle)
        // min_pool_size keeps idle servers open.
        #expect(rules.expiredServer(loggingInSince: nil, idleSince: 0, keepForMinimum: true, lifetimeOver: false, now: 100 * second) == nil)
    }

    @Test func serverLifetime() {
        #expect(!Timeouts.lifetimeOver(connectedSeconds: 100, nowSeconds: 3699, lifetimeSeconds: 3600))
        #expect(Timeouts.lifetimeOver(connectedSeconds: 100, nowSeconds: 3700, lifetimeSeconds: 3600))
        #expect(Timeouts.lifetimeOver(connectedSeconds: 100, nowSeconds: 100, lifetimeSeconds: 0), "0 means use once")
        #expect(
            Timeouts.lifetimeOver(connectedSeconds: 101, nowSeconds: 100, lifetimeSeconds: 0),
            "a server connected after the coarse clock's last tick is used once too")
    }

    @Test func anIdleServerPastItsLifetimeIsClosedAndABusyOneIsNot() {
        let rules = timeouts { $0.serverIdleTimeout = 10 }
        #expect(rules.expiredServer(loggingInSince: nil, idleSince: 0, keepForMinimum: false, lifetimeOver: true, now: second) == .lifetime)
        // Idle timeout first, as PgBouncer's janitor checks it first.
        #expect(rules.expiredServer(loggingInSince: nil, idleSince: 0, keepForMinimum: false, lifetimeOver: true, now: 10 * second) == .idle)
        // A server with a client (not idle) keeps going until the client is done with it.
        #expect(rules.expiredServer(loggingInSince: nil, idleSince: nil, keepForMinimum: false, lifetimeOver: true, now: second) == nil)
    }
}

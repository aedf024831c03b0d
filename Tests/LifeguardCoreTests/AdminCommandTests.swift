import Testing

@testable import LifeguardCore

@Suite struct AdminCommandTests {
    @Test func showIsCaseInsensitiveWithOptionalSemicolon() {
        #expect(AdminCommand.parse("SHOW POOLS") == .show("pools"))
        #expect(AdminCommand.parse("  show pools ;  ") == .show("pools"))
        #expect(AdminCommand.parse("Show\tStats_Totals;") == .show("stats_totals"))
    }

    @Test func selectIsShow() {
        #expect(AdminCommand.parse("SELECT version;") == .show("version"))
        #expect(AdminCommand.parse("SELECT 1+1") == nil)
    }

    @Test func controlCommandsKeepTheArgumentsCase() {
        #expect(AdminCommand.parse("pause") == .control("PAUSE", argument: nil))
        #expect(AdminCommand.parse("PAUSE MyDb") == .control("PAUSE", argument: "MyDb"))
        #expect(AdminCommand.parse("kill_client 42") == .control("KILL_CLIENT", argument: "42"))
        #expect(AdminCommand.parse("RESUME \"odd\"\"name\"") == .control("RESUME", argument: "odd\"name"))
    }

    @Test func moreThanTwoWordsOrEmptyIsInvalid() {
        #expect(AdminCommand.parse("SHOW STATS p0") == nil)
        #expect(AdminCommand.parse("") == nil)
        #expect(AdminCommand.parse(";") == nil)
        #expect(AdminCommand.parse("SHOW POOLS; SHOW STATS") == nil)
        #expect(AdminCommand.parse("SHOW") == nil)
    }

    @Test func setTakesEqualsOrToAndQuotedValues() {
        #expect(AdminCommand.parse("SET default_pool_size = 7") == .set(key: "default_pool_size", value: "7"))
        #expect(AdminCommand.parse("set Default_Pool_Size to 7;") == .set(key: "default_pool_size", value: "7"))
        #expect(AdminCommand.parse("SET server_reset_query = 'DISCARD ALL'") == .set(key: "server_reset_query", value: "DISCARD ALL"))
        #expect(AdminCommand.parse("SET application_name = 'it''s'") == .set(key: "application_name", value: "it's"))
        #expect(AdminCommand.parse("SET x") == nil)
        #expect(AdminCommand.parse("SET = 1") == nil)
    }
}

@Suite struct AdminAccessTests {
    @Test func rolesFollowTheUserLists() {
        var settings = Settings()
        settings.adminUsers = ["alice"]
        settings.statsUsers = ["bob"]
        #expect(AdminAccess.role(for: "alice", settings: settings) == .admin)
        #expect(AdminAccess.role(for: "bob", settings: settings) == .stats)
        #expect(AdminAccess.role(for: "carol", settings: settings) == nil)
        settings.authType = .any
        #expect(AdminAccess.role(for: "carol", settings: settings) == .stats)
        #expect(AdminAccess.role(for: "alice", settings: settings) == .admin)
    }
}

@Suite struct PoolStatisticsTests {
    @Test func averagesAreRatesAndMeans() {
        var earlier = PoolStatistics()
        earlier.transactions = 100
        earlier.queries = 200
        earlier.transactionMicroseconds = 1_000
        earlier.serverAssignments = 10
        var now = earlier
        now.transactions += 50
        now.queries += 100
        now.transactionMicroseconds += 5_000
        now.waitMicroseconds += 600
        now.serverAssignments += 3
        let average = now.averages(since: earlier, seconds: 10)
        #expect(average.transactions == 5)  // per second
        #expect(average.queries == 10)
        #expect(average.transactionMicroseconds == 100)  // per transaction
        #expect(average.waitMicroseconds == 200)  // per server assignment, as PgBouncer divides it
        #expect(average.queryMicroseconds == 0)  // no query time in the window
        #expect((now + earlier).transactions == 250)
    }
}

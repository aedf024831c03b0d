import Foundation
import Glibc
import Testing

/// Protocol-level prepared statements and pipelines in transaction mode, through libpq: clients keep their
/// statement names while their transactions move between servers.
extension IntegrationTests {
@Suite struct PreparedStatementTests {
    /// Terminates every backend Lifeguard holds for lgtest, so the next transaction certainly runs on a
    /// server that has never seen the client's statements.
    /// Waits until the backends are gone, so Lifeguard has their FATAL and EOF before the next query.
    private func terminateLifeguardBackends() throws {
        let direct = try TestEnvironment.direct()
        let mine = "FROM pg_stat_activity WHERE datname = 'lgtest' AND usename = 'lg_md5'"
        _ = try direct.query("SELECT pg_terminate_backend(pid) \(mine)")
        #expect(waitUntil { (try? direct.value("SELECT count(*) \(mine)")) == "0" })
        usleep(100_000)
    }

    @Test func preparedStatementFollowsItsClientAcrossServers() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 2")
        let client = try lifeguard.connect()
        try client.prepare("double", "SELECT $1::int * 2, pg_backend_pid()")
        let first = try client.execPrepared("double", ["21"])
        #expect(first.first?[0] == "42")

        try terminateLifeguardBackends()
        let second = try client.execPrepared("double", ["5"])
        #expect(second.first?[0] == "10")
        #expect(second.first?[1] != first.first?[1], "the statement ran on a new server")
        #expect(try client.describePrepared("double") == 1)

        // Another client holds one server in a transaction, so this client's next ones use the other.
        let holder = try lifeguard.connect()
        try holder.query("BEGIN")
        let held = try #require(holder.backendPID)
        for value in 1...5 {
            let row = try client.execPrepared("double", ["\(value)"])
            #expect(row.first?[0] == "\(value * 2)")
            #expect(row.first?[1] != held)
        }
        try holder.query("COMMIT")
    }

    @Test func clientsShareOneServerStatementPerDefinition() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1\nadmin_users = lg_md5")
        let clients = try (0..<5).map { _ in try lifeguard.connect() }
        for (index, client) in clients.enumerated() {
            try client.prepare("mine_\(index)", "SELECT $1::text || ' shared'")
            #expect(try client.execPrepared("mine_\(index)", ["\(index)"]).first?[0] == "\(index) shared")
        }
        let onServer = try clients[0].query(
            "SELECT name FROM pg_prepared_statements WHERE statement = 'SELECT $1::text || '' shared'''")
        #expect(onServer.count == 1, "one server-side statement for five clients: \(onServer)")
        #expect(onServer.first?[0]?.hasPrefix("LIFEGUARD_") == true)

        // SHOW CLIENTS and SHOW SERVERS count them: one per client, one on the server.
        let console = try lifeguard.connect(database: "pgbouncer")
        let listed = try console.records("SHOW CLIENTS").filter { $0["database"] == "lgtest" }
        #expect(listed.map { $0["prepared_statements"] } == Array(repeating: "1", count: 5))
        #expect(try console.records("SHOW SERVERS").map { $0["prepared_statements"] } == ["1"])
    }

    @Test func maxPreparedStatementsClosesTheLeastRecentlyUsed() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1\nmax_prepared_statements = 3")
        let client = try lifeguard.connect()
        for index in 0..<6 {
            try client.prepare("s\(index)", "SELECT \(index) AS n")
            #expect(try client.execPrepared("s\(index)").first?[0] == "\(index)")
        }
        let count = try client.value("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'LIFEGUARD_%'")
        #expect(count == "3")
        // The evicted ones are prepared again when used.
        for index in 0..<6 {
            #expect(try client.execPrepared("s\(index)").first?[0] == "\(index)")
        }
    }

    /// A console SET of max_prepared_statements applies to the servers and clients already there: a lower
    /// limit shrinks a server's statements at its next Parse, 0 passes names to the server as written.
    @Test func maxPreparedStatementsSetOnTheConsoleAppliesAtOnce() throws {
        let lifeguard = try LifeguardProcess(
            settings: "default_pool_size = 1\nmax_prepared_statements = 5\nadmin_users = lg_md5")
        let console = try lifeguard.connect(database: "pgbouncer")
        let client = try lifeguard.connect()
        let onServer = "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'LIFEGUARD_%'"
        for index in 0..<5 { try client.prepare("s\(index)", "SELECT \(index) AS n") }
        #expect(try client.value(onServer) == "5")
        try console.query("SET max_prepared_statements = 2")
        #expect(try client.value(onServer) == "5", "nothing is closed until the next Parse")
        try client.prepare("s5", "SELECT 5 AS n")
        #expect(try client.value(onServer) == "2")
        try console.query("SET max_prepared_statements = 0")
        #expect(throws: PGConnection.Failure.self, "the server does not know the client's own name") {
            try client.execPrepared("s5")
        }
        try client.prepare("raw", "SELECT 'raw' AS n")
        #expect(try client.execPrepared("raw").first?[0] == "raw")
        #expect(try client.value("SELECT count(*) FROM pg_prepared_statements WHERE name = 'raw'") == "1")
    }

    @Test func pipelineErrorSkipsToSyncAndTheNextSegmentRuns() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        let outcomes = try client.pipeline([
            .prepare(name: "inc", sql: "SELECT $1::int + 1"),
            .execPrepared(name: "inc", parameters: ["1"]),
            .execPrepared(name: "inc", parameters: ["not a number"]),
            .execPrepared(name: "inc", parameters: ["2"]),
            .sync,
            .execPrepared(name: "inc", parameters: ["3"]),
            .query(sql: "SELECT $1::text", parameters: ["unnamed"]),
            .sync,
        ])
        #expect(outcomes == [
            .rows([]), .rows([["2"]]), .error("22P02"), .aborted, .synced, .rows([["4"]]), .rows([["unnamed"]]),
            .synced,
        ])
        // The server went back to the pool in a clean state.
        #expect(try client.value("SELECT 'after'") == "after")

        // On a new server the statement is prepared again, in the middle of the next pipeline.
        try terminateLifeguardBackends()
        let again = try client.pipeline([
            .execPrepared(name: "inc", parameters: ["41"]), .execPrepared(name: "inc", parameters: ["x"]), .sync,
        ])
        #expect(again == [.rows([["42"]]), .error("22P02"), .synced])
    }

    /// A pipeline aborted by an error before Lifeguard's Close of an evicted statement and its Parse again:
    /// the server skips both and keeps the statement, and so must the cache. Found by scripts/chaos.sh, where
    /// later uses of the statement failed with "prepared statement \"LIFEGUARD_n\" already exists".
    @Test func evictedStatementPreparedAgainInAnAbortedPipelineStaysKnown() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1\nmax_prepared_statements = 2")
        let client = try lifeguard.connect()
        try client.prepare("x", "SELECT 'x'")
        try client.prepare("y", "SELECT 'y'")
        // z evicts x (Close x, Parse z); executing x then evicts y and prepares x again: all skipped.
        let outcomes = try client.pipeline([
            .query(sql: "SELECT 1/0", parameters: []),
            .prepare(name: "z", sql: "SELECT 'z'"),
            .execPrepared(name: "x", parameters: []),
            .sync,
        ])
        #expect(outcomes == [.error("22012"), .aborted, .aborted, .synced])
        #expect(try client.execPrepared("x").first?[0] == "x")
        #expect(try client.execPrepared("y").first?[0] == "y")
    }

    /// Pipelines of Syncs alone and of a Describe alone, on servers that have the statement and on a new one
    /// (where Lifeguard's hidden Parse goes before the Describe).
    @Test func syncOnlyAndDescribeOnlyPipelines() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        try client.prepare("two", "SELECT $1::int + $2::int")
        #expect(try client.pipeline([.sync]) == [.synced])
        #expect(try client.pipeline([.sync, .sync]) == [.synced, .synced])
        #expect(try client.pipeline([.describePrepared(name: "two"), .sync]) == [.described(parameters: 2), .synced])
        try terminateLifeguardBackends()
        #expect(try client.pipeline([.describePrepared(name: "two"), .sync]) == [.described(parameters: 2), .synced])
        #expect(try client.execPrepared("two", ["40", "2"]).first?[0] == "42")
        // Another client gets the server back: nothing was left outstanding.
        #expect(try lifeguard.connect().value("SELECT 'next'") == "next")
    }

    @Test func statementPreparedInAPipelineOnAServerThatAlreadyHasIt() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let first = try lifeguard.connect()
        try first.prepare("a", "SELECT 'same text'")
        // The second client's Parse is answered by Lifeguard, in its place among the replies.
        let second = try lifeguard.connect()
        let outcomes = try second.pipeline([
            .query(sql: "SELECT 1", parameters: []),
            .prepare(name: "b", sql: "SELECT 'same text'"),
            .execPrepared(name: "b", parameters: []),
            .sync,
        ])
        #expect(outcomes == [.rows([["1"]]), .rows([]), .rows([["same text"]]), .synced])
    }

    @Test func megabyteParametersGoThroughNamedAndUnnamed() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        let big = String(repeating: "x", count: 1 << 20)
        #expect(try client.query("SELECT length($1)", parameters: [big]).first?[0] == "1048576")
        try client.prepare("len", "SELECT length($1::text)")
        #expect(try client.execPrepared("len", [big + big]).first?[0] == "2097152")
    }

    /// A Bind of a named statement is renamed in its first bytes and its parameters stream: Lifeguard never
    /// holds a 48 MB message whole (its peak memory would grow by at least that much).
    @Test func largeBindOfANamedStatementIsNotHeldWhole() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        try client.prepare("len", "SELECT length($1::text)")
        #expect(try client.execPrepared("len", ["warm-up"]).first?[0] == "7")
        let peakBefore = lifeguard.peakResidentKilobytes
        let huge = String(repeating: "y", count: 48 << 20)
        #expect(try client.execPrepared("len", [huge]).first?[0] == "\(48 << 20)")
        let growth = lifeguard.peakResidentKilobytes - peakBefore
        #expect(growth < 16 << 10, "peak memory grew by \(growth) kB")
    }

    /// share_unnamed_statements: a client that parses the same text before every execution (PQexecParams)
    /// gets a shared server statement, prepared once per server.
    @Test func unnamedStatementsAreSharedWhenAskedFor() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1\nshare_unnamed_statements = 1")
        let client = try lifeguard.connect()
        for value in 0..<10 {
            #expect(try client.query("SELECT $1::int + 7", parameters: ["\(value)"]).first?[0] == "\(value + 7)")
            if value == 4 { try terminateLifeguardBackends() }
        }
        // A simple Query in between (which drops PostgreSQL's unnamed statement) changes nothing.
        try client.query("SELECT 1")
        #expect(try client.query("SELECT $1::int + 7", parameters: ["1"]).first?[0] == "8")
        let shared = try client.query(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int + 7'", parameters: [])
        #expect(shared.first?[0] == "1", "one server-side statement for every execution")
    }

    @Test func failedParseLeavesNoStaleName() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        #expect(throws: PGConnection.Failure.self) { try client.prepare("q", "SELEC 1") }
        try client.prepare("q", "SELECT 'fixed'")
        #expect(try client.execPrepared("q").first?[0] == "fixed")
        try terminateLifeguardBackends()
        #expect(try client.execPrepared("q").first?[0] == "fixed")
    }

    @Test func deallocateAllForgetsTheClientsStatements() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        try client.prepare("q", "SELECT 'before'")
        #expect(try client.execPrepared("q").first?[0] == "before")
        try client.query("DEALLOCATE ALL")
        // The name is free again, and the server's copy is gone as well.
        try client.prepare("q", "SELECT 'after'")
        #expect(try client.execPrepared("q").first?[0] == "after")
        #expect(try client.value("SELECT count(*) FROM pg_prepared_statements") == "1")
    }

    /// DEALLOCATE ALL pipelined before Parses: the server's statements are gone from where it stands in the
    /// stream, not from when its reply comes back. Otherwise the Parse after it is answered from a stale
    /// cache (26000 at the Bind), and one answered by the server is forgotten (42P05 at the next Parse).
    @Test func pipelinedDeallocateAllTakesEffectWhereItStands() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        try client.prepare("q", "SELECT 'one'")
        #expect(try client.execPrepared("q").first?[0] == "one")
        let outcomes = try client.pipeline([
            .query(sql: "DEALLOCATE ALL", parameters: []),
            .prepare(name: "q", sql: "SELECT 'one'"),
            .execPrepared(name: "q", parameters: []),
            .prepare(name: "r", sql: "SELECT 'two'"),
            .sync,
        ])
        #expect(outcomes == [.rows([]), .rows([]), .rows([["one"]]), .rows([]), .synced])
        try client.prepare("s", "SELECT 'two'")
        #expect(try client.execPrepared("s").first?[0] == "two")
    }

    /// More locally answered Parses in one pipeline than Lifeguard queues before it stops reading the client
    /// (ServerConnection.owedRepliesLimit): it asks the server for the replies they wait behind, so the
    /// pipeline completes instead of both sides waiting for each other.
    @Test func longPipelineOfLocallyAnsweredParsesCompletes() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        let steps = (0..<6000).map { PGConnection.PipelineStep.prepare(name: "p\($0)", sql: "SELECT 'same'") }
        let outcomes = try client.pipeline(steps + [.execPrepared(name: "p5999", parameters: []), .sync])
        #expect(outcomes.count == 6002)
        #expect(outcomes.prefix(6000).allSatisfy { $0 == .rows([]) })
        #expect(outcomes.suffix(2) == [.rows([["same"]]), .synced])
    }

    @Test func reusedAndUnknownNamesGetPgBouncersErrors() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let reuser = try lifeguard.connect()
        try reuser.prepare("q", "SELECT 1")
        let reused = #expect(throws: PGConnection.Failure.self) { try reuser.prepare("q", "SELECT 2") }
        #expect(reused?.message.contains("prepared statement 'q' was already prepared") == true)
        #expect(lifeguard.log.contains("closing because: prepared statement 'q' was already prepared"))

        let guesser = try lifeguard.connect()
        let unknown = #expect(throws: PGConnection.Failure.self) { try guesser.execPrepared("never_prepared") }
        #expect(unknown?.message.contains("prepared statement did not exist") == true)

        let bystander = try lifeguard.connect()
        #expect(try bystander.value("SELECT 'unaffected'") == "unaffected")
    }
}
}

import Dispatch
import Foundation
import Glibc
import NIOConcurrencyHelpers
import Testing

/// Pool modes and limits, observed through real libpq clients and PostgreSQL's own view of its backends.
extension IntegrationTests {
@Suite struct PoolingTests {
    @Test func fiftyConcurrentClientsShareAPoolOfFive() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 5\nmax_client_conn = 100")
        let backends = NIOLockedValueBox<Set<String>>([])
        let failures = NIOLockedValueBox<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 50) { index in
            do {
                let connection = try lifeguard.connect()
                for round in 0..<20 {
                    let row = try connection.query("SELECT pg_backend_pid(), \(index * 100 + round)")
                    guard row.first?[1] == String(index * 100 + round) else {
                        failures.withLockedValue { $0.append("client \(index) got a wrong answer: \(row)") }
                        return
                    }
                    backends.withLockedValue { _ = $0.insert(row.first![0]!) }
                }
            } catch {
                failures.withLockedValue { $0.append("client \(index): \(error)") }
            }
        }
        #expect(failures.withLockedValue { $0 } == [])
        let distinct = backends.withLockedValue { $0.count }
        #expect(distinct >= 1 && distinct <= 5, "used \(distinct) backends")
    }

    @Test func transactionKeepsItsBackendWhileOtherClientsRun() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 3")
        let mismatches = NIOLockedValueBox(0)
        let errors = NIOLockedValueBox<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 12) { _ in
            do {
                let connection = try lifeguard.connect()
                for _ in 0..<10 {
                    try connection.query("BEGIN")
                    let first = connection.backendPID
                    try connection.query("SELECT pg_sleep(0.002)")
                    let second = connection.backendPID
                    try connection.query("COMMIT")
                    if first == nil || first != second { mismatches.withLockedValue { $0 += 1 } }
                }
            } catch {
                errors.withLockedValue { $0.append("\(error)") }
            }
        }
        #expect(errors.withLockedValue { $0 } == [])
        #expect(mismatches.withLockedValue { $0 } == 0)
    }

    @Test func transactionModeMovesAutocommitStatementsBetweenBackends() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 2")
        // One client holds a backend in a transaction; the other's statements must run on the remaining one.
        let holder = try lifeguard.connect()
        try holder.query("BEGIN")
        let held = holder.backendPID
        let other = try lifeguard.connect()
        let otherPID = other.backendPID
        #expect(otherPID != nil && otherPID != held)
        try holder.query("COMMIT")
    }

    @Test func sessionModeResetsTheServerBeforeTheNextClient() throws {
        let lifeguard = try LifeguardProcess(settings: "pool_mode = session\ndefault_pool_size = 1")
        var firstPID: String?
        do {
            let first = try lifeguard.connect()
            firstPID = first.backendPID
            try first.query("SET work_mem = '7MB'")
            try first.query("CREATE TEMP TABLE scratch (x int)")
        }
        usleep(100_000)  // the reset runs after the client has gone
        let second = try lifeguard.connect()
        #expect(second.backendPID == firstPID, "pool_size 1 must reuse the same server")
        #expect(try second.value("SHOW work_mem") == "4MB")
        #expect(try second.value("SELECT count(*) FROM pg_class WHERE relname = 'scratch'") == "0")
    }

    @Test func sessionModeKeepsOneServerForTheWholeSession() throws {
        let lifeguard = try LifeguardProcess(settings: "pool_mode = session\ndefault_pool_size = 2")
        let client = try lifeguard.connect()
        try client.query("SET work_mem = '9MB'")
        let other = try lifeguard.connect()
        _ = try other.query("SELECT 1")
        #expect(try client.value("SHOW work_mem") == "9MB")
    }

    @Test func statementModeRejectsTransactionBlocks() throws {
        let lifeguard = try LifeguardProcess(settings: "pool_mode = statement\nauth_type = trust")
        let client = try lifeguard.connect(user: "lg_trust", password: nil)
        #expect(try client.value("SELECT 5") == "5")
        let socket = try RawSocket(port: lifeguard.port)
        socket.send(RawSocket.startupMessage([("user", "lg_trust"), ("database", "lgtest")]))
        _ = socket.read { $0.count >= 6 && $0.suffix(6).first == UInt8(ascii: "Z") }
        let begin = Array("BEGIN".utf8) + [0]
        socket.send([UInt8(ascii: "Q")] + RawSocket.bigEndian(Int32(begin.count + 4)) + begin)
        let (bytes, closed) = socket.readUntilClosed()
        #expect(closed)
        let error = RawSocket.errorMessage(in: bytes)
        #expect(error?.severity == "FATAL")
        #expect(error?.message == "transaction blocks not allowed in statement pooling mode")
        // The ReadyForQuery that reported the open transaction is not passed on.
        #expect(!bytes.contains(UInt8(ascii: "Z")))
        #expect(try client.value("SELECT 6") == "6")
    }

    @Test func perDatabasePoolModeOverridesTheGlobalOne() throws {
        let lifeguard = try LifeguardProcess(
            settings: "pool_mode = transaction\ndefault_pool_size = 2",
            databases: "lgtest = {PG} pool_mode=session")
        let client = try lifeguard.connect()
        try client.query("SET work_mem = '11MB'")
        let others = try (0..<3).map { _ in try lifeguard.connect() }
        _ = others  // would steal the server in transaction mode
        #expect(try client.value("SHOW work_mem") == "11MB")
    }

    @Test func maxClientConnRejectsTheClientOverTheLimit() throws {
        let lifeguard = try LifeguardProcess(settings: "max_client_conn = 3")
        let held = try (0..<3).map { _ in try lifeguard.connect() }
        #expect(lifeguard.loginFailure().contains("no more connections allowed (max_client_conn)"))
        #expect(try held[0].value("SELECT 1") == "1")
    }

    @Test func maxDBConnectionsCapsServersAcrossUsers() throws {
        let lifeguard = try LifeguardProcess(
            settings: "max_db_connections = 1\ndefault_pool_size = 5",
            databases: "lgtest = {PG}")
        let a = try lifeguard.connect()
        try a.query("BEGIN")
        // Another user's pool of the same database must wait for the single allowed server.
        let waiter = Background {
            try? lifeguard.connect(user: "lg_scram", password: "scrampass", extra: "application_name=maxdb_waiter")
                .value("SELECT 1")
        }
        #expect(!waiter.finished(within: 0.5), "second user got a server over max_db_connections")
        let count = try TestEnvironment.direct().value(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'maxdb_waiter'")
        #expect(count == "0")
        try a.query("COMMIT")
        // Now a's server is idle: Lifeguard closes it so the waiting pool can open its own, as PgBouncer does.
        #expect(waiter.finished(within: 10))
        #expect(waiter.result == "1")
    }

    /// Ten clients of five users at once on a database with max_db_connections = 4: the pools take slots
    /// from each other by closing idle servers, and each slot freed so is taken at once. Taking it on a
    /// later round left it unused whenever the waiting client was served meanwhile (3 servers at the end
    /// instead of PgBouncer's 4, its suite's test_max_db_connections).
    @Test func slotsFreedUnderMaxDBConnectionsAreTakenAtOnce() throws {
        let lifeguard = try LifeguardProcess(
            settings: "auth_type = trust\npool_mode = statement\nadmin_users = lg_trust",
            databases: "shared = {PG} dbname=lgbench max_db_connections=4")
        let users = ["lg_md5", "lg_scram", "lg_clear", "lg_trust", "postgres"]
        for round in 1...5 {
            let clients = (0..<10).map { index in
                Background<Bool> {
                    let client = try? lifeguard.connect(user: users[index % 5], password: nil, database: "shared")
                    return (try? client?.value("SELECT pg_sleep(0.5)")) != nil
                }
            }
            for client in clients {
                #expect(client.finished(within: 30))
                #expect(client.result == true)
            }
            let console = try lifeguard.connect(user: "lg_trust", password: nil, database: "pgbouncer")
            let servers = try console.records("SHOW SERVERS").filter { $0["database"] == .some("shared") }
            #expect(servers.count == 4, "round \(round): \(servers.count) servers")
        }
    }

    @Test func maxUserConnectionsCapsServersAcrossDatabases() throws {
        let lifeguard = try LifeguardProcess(settings: "max_user_connections = 1\ndefault_pool_size = 5")
        let holder = try lifeguard.connect(database: "lgtest")
        try holder.query("BEGIN")
        // The same user's pool for another database must wait for the one allowed server.
        let other = Background { try? lifeguard.connect(database: "lgbench").value("SELECT current_database()") }
        #expect(!other.finished(within: 0.5), "a second server opened over max_user_connections")
        try holder.query("COMMIT")
        #expect(other.finished(within: 10))
        #expect(other.result == "lgbench")
    }

    @Test func clientLimitsPerDatabaseAndUser() throws {
        let lifeguard = try LifeguardProcess(
            settings: "max_db_client_connections = 2\nmax_user_client_connections = 3",
            databases: "lgtest = {PG}\nlgbench = {PG}")
        let held = try (0..<2).map { _ in try lifeguard.connect(database: "lgtest") }
        #expect(lifeguard.loginFailure(database: "lgtest").contains("client connections exceeded (max_db_client_connections)"))
        let third = try lifeguard.connect(database: "lgbench")
        #expect(lifeguard.loginFailure(database: "lgbench").contains("client connections exceeded (max_user_client_connections)"))
        #expect(try third.value("SELECT 1") == "1")
        _ = held
    }

    /// PgBouncer counts the client limits by the database asked for and the user logged in as (not a
    /// database's forced user), console logins included; admin users are counted but never refused.
    @Test func clientLimitsCountLoginUsersAndTheConsole() throws {
        let lifeguard = try LifeguardProcess(
            settings: "max_user_client_connections = 2\nmax_db_client_connections = 3\nadmin_users = lg_md5\nstats_users = lg_scram",
            databases: "lgtest = {PG} user=lg_trust\nlgbench = {PG}")
        let held = try (0..<2).map { _ in try lifeguard.connect(user: "lg_scram", password: "scrampass") }
        #expect(lifeguard.loginFailure(user: "lg_scram", password: "scrampass")
            .contains("client connections exceeded (max_user_client_connections)"), "the forced user must not be counted instead")
        #expect(lifeguard.loginFailure(user: "lg_scram", password: "scrampass", database: "pgbouncer")
            .contains("client connections exceeded (max_user_client_connections)"), "a stats user's console login counts")
        let admins = try (0..<4).map { _ in try lifeguard.connect(database: "pgbouncer") }
        let users = try admins[0].records("SHOW USERS")
        let scram = try #require(users.first { $0["name"] == .some("lg_scram") })
        #expect(scram["max_user_client_connections"] == .some("2"))
        #expect(scram["current_client_connections"] == .some("2"))
        let md5 = try #require(users.first { $0["name"] == .some("lg_md5") })
        #expect(md5["current_client_connections"] == .some("4"), "admins pass the limit of 2, and are counted")
        let databases = try admins[0].records("SHOW DATABASES")
        let lgtest = try #require(databases.first { $0["name"] == .some("lgtest") })
        #expect(lgtest["max_client_connections"] == .some("3"))
        #expect(lgtest["current_client_connections"] == .some("2"))
        let console = try #require(databases.first { $0["name"] == .some("pgbouncer") })
        #expect(console["current_client_connections"] == .some("4"))
        _ = held
    }

    @Test func showUsersGivesTheReservePoolSize() throws {
        let lifeguard = try LifeguardProcess(settings: "admin_users = lg_md5\n[users]\nlg_scram = pool_size=3 reserve_pool_size=1")
        let users = try lifeguard.connect(database: "pgbouncer").records("SHOW USERS")
        let scram = try #require(users.first { $0["name"] == .some("lg_scram") })
        #expect(scram["pool_size"] == .some("        3"))
        #expect(scram["reserve_pool_size"] == .some("        1"))
        #expect(users.first { $0["name"] == .some("lg_md5") }?["reserve_pool_size"] == .some(""))
    }

    /// `server_lifetime = 0` uses each server once: the server opened for a client serves it (it was closed
    /// at once and reopened in a loop), and an idle one is closed by the sweep.
    @Test func aServerLifetimeOfZeroUsesEachServerOnce() throws {
        let lifeguard = try LifeguardProcess(settings: "server_lifetime = 0\npool_mode = session\nadmin_users = lg_md5")
        let console = try lifeguard.connect(database: "pgbouncer")
        for _ in 0..<3 {
            let client = try lifeguard.connect()
            #expect(try client.value("SELECT 1") == "1")
            #expect(try console.records("SHOW SERVERS").count == 1)
        }
        #expect(waitUntil(3) { (try? console.records("SHOW SERVERS"))?.isEmpty == true })
        #expect(lifeguard.log.contains("server lifetime over"))
        // One server per client (the bug opened dozens).
        #expect(lifeguard.log.components(separatedBy: "new connection to server").count - 1 == 3)
    }

    @Test func loginNotifyMessageIsSentAfterLogin() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust\nlogin_notify_message = 'welcome to the pool'")
        let socket = try RawSocket(port: lifeguard.port)
        socket.send(RawSocket.startupMessage([("user", "lg_trust"), ("database", "lgtest")]))
        let welcome = socket.read { $0.count >= 6 && $0.suffix(6).first == UInt8(ascii: "Z") }
        #expect(String(decoding: welcome, as: UTF8.self).contains("welcome to the pool"))
    }

    @Test func reservePoolOpensAfterTheTimeout() throws {
        let lifeguard = try LifeguardProcess(
            settings: "default_pool_size = 1\nreserve_pool_size = 1\nreserve_pool_timeout = 0.3")
        let holder = try lifeguard.connect()
        try holder.query("BEGIN")
        let start = Date()
        let second = try lifeguard.connect()
        #expect(try second.value("SELECT 1") == "1")
        #expect(Date().timeIntervalSince(start) >= 0.25)
        #expect(lifeguard.log.contains("taking connection from reserve_pool"))
        try holder.query("COMMIT")
    }

    @Test func clientParametersFollowTheClientAcrossServers() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let a = try lifeguard.connect(extra: "application_name=alpha options='-c TimeZone=Asia/Tokyo'")
        let b = try lifeguard.connect(extra: "application_name=beta")
        for _ in 0..<3 {
            #expect(try a.value("SHOW application_name") == "alpha")
            #expect(try a.value("SHOW TimeZone") == "Asia/Tokyo")
            #expect(try b.value("SHOW application_name") == "beta")
            #expect(try b.value("SHOW TimeZone") != "Asia/Tokyo")
        }
        // A SET of a tracked parameter in transaction mode survives moving to another server.
        try b.query("SET application_name = 'gamma'")
        _ = try a.query("SELECT 1")
        #expect(try b.value("SHOW application_name") == "gamma")
    }

    /// Every reported parameter a session can SET is replayed, invisibly, on the next server the client gets,
    /// even one that has just been started for it.
    @Test func setOfReportedParametersIsReplayedOnANewServer() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        try client.query("SET DateStyle = 'German, DMY'")
        try client.query("SET IntervalStyle = 'iso_8601'")
        try client.query("SET default_transaction_read_only = on")
        let firstPID = try #require(client.backendPID)
        try TestEnvironment.terminateIdleBackend(firstPID)
        #expect(try client.value("SHOW DateStyle") == "German, DMY")
        #expect(try client.value("SHOW IntervalStyle") == "iso_8601")
        #expect(try client.value("SHOW default_transaction_read_only") == "on")
        #expect(client.backendPID != firstPID)
        // Another client on the same server gets its own (default) values back.
        let other = try lifeguard.connect()
        #expect(try other.value("SHOW IntervalStyle") == "postgres")
        #expect(try other.value("SHOW default_transaction_read_only") == "off")
    }

    /// The console's SET of ignore_startup_parameters applies to the next login (it took a RELOAD).
    @Test func ignoreStartupParametersSetOnTheConsoleAppliesAtOnce() throws {
        let lifeguard = try LifeguardProcess(settings: "admin_users = lg_md5")
        let refused = #expect(throws: PGConnection.Failure.self) {
            try lifeguard.connect(extra: "options=-cenable_seqscan=off")
        }
        #expect(refused?.message.contains("unsupported startup parameter in options: enable_seqscan") == true)
        try lifeguard.connect(database: "pgbouncer").query("SET ignore_startup_parameters = options")
        let client = try lifeguard.connect(extra: "options=-cenable_seqscan=off")
        #expect(try client.value("SHOW enable_seqscan") == "on", "ignored, as PgBouncer does")
    }

    /// track_extra_parameters: a parameter PostgreSQL 15 does not report (search_path) is accepted in the
    /// startup packet and set on every server the client gets; a client that did not ask for it keeps the
    /// server's default. Without the setting the startup parameter is refused, as by PgBouncer.
    @Test func extraTrackedParameterFollowsTheClientThatAskedForIt() throws {
        let refusing = try LifeguardProcess(settings: "default_pool_size = 1")
        let refused = #expect(throws: PGConnection.Failure.self) {
            try refusing.connect(extra: "options=-csearch_path=lg_extra")
        }
        #expect(refused?.message.contains("unsupported startup parameter") == true)

        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1\ntrack_extra_parameters = IntervalStyle, search_path")
        let client = try lifeguard.connect(extra: "options=-csearch_path=lg_extra,public")
        // Set as the literal string the client sent, so shown as PostgreSQL shows a startup option.
        #expect(try client.value("SHOW search_path") == "lg_extra,public")
        let firstPID = try #require(client.backendPID)
        try TestEnvironment.terminateIdleBackend(firstPID)
        #expect(try client.value("SHOW search_path") == "lg_extra,public")
        #expect(client.backendPID != firstPID)
        let other = try lifeguard.connect()
        #expect(try other.value("SHOW search_path") == "\"$user\", public")
        #expect(try client.value("SHOW search_path") == "lg_extra,public")
    }

    @Test func disablePQExecRefusesSimpleQueries() throws {
        let lifeguard = try LifeguardProcess(settings: "disable_pqexec = 1")
        let client = try lifeguard.connect()
        #expect(try client.query("SELECT $1::text", parameters: ["extended works"]).first?[0] == "extended works")
        let refused = #expect(throws: PGConnection.Failure.self) { try client.query("SELECT 1") }
        #expect(refused?.message.contains("PQexec disallowed") == true)
    }
}
}

extension IntegrationTests.PoolingTests {
    /// Two servers, both idle; one client's next four transactions, and which backends ran them. One
    /// thread: each thread keeps its own idle list, so the order is PgBouncer's only within a thread.
    private func backendsOfFourTransactions(_ settings: String) throws -> [String] {
        let lifeguard = try LifeguardProcess(settings: "threads = 1\ndefault_pool_size = 2\n" + settings)
        let a = try lifeguard.connect()
        let b = try lifeguard.connect()
        try a.query("BEGIN")
        try b.query("BEGIN")
        _ = a.backendPID
        _ = b.backendPID
        try a.query("COMMIT")
        try b.query("COMMIT")
        return (0..<4).compactMap { _ in a.backendPID }
    }

    @Test func idleServersAreReusedMostRecentFirstByDefault() throws {
        let pids = try backendsOfFourTransactions("")
        #expect(Set(pids).count == 1)
    }

    @Test func serverRoundRobinSpreadsTransactions() throws {
        let pids = try backendsOfFourTransactions("server_round_robin = 1")
        #expect(Set(pids).count == 2)
    }

    @Test func autodbIdleTimeoutFreesFallbackDatabases() throws {
        let lifeguard = try LifeguardProcess(
            settings: "autodb_idle_timeout = 0.5\nadmin_users = lg_md5", databases: "lgtest = {PG}\n* = {PG}")
        do {
            let client = try lifeguard.connect(database: "lgbench")
            _ = try client.value("SELECT 1")
        }
        #expect(lifeguard.log.contains("registered new auto-database: lgbench"))
        #expect(!lifeguard.log.contains("registered new auto-database: lgtest"))
        let console = try lifeguard.connect(database: "pgbouncer")
        var freed = false
        for _ in 0..<50 where !freed {
            freed = try console.query("SHOW POOLS").allSatisfy { $0[0] != "lgbench" }
            usleep(100_000)
        }
        #expect(freed)
        #expect(lifeguard.log.contains("autodb_idle_timeout"))
    }
}

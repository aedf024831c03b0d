import Dispatch
import Foundation
import Glibc
import NIOConcurrencyHelpers
import Testing

extension IntegrationTests {
/// The admin console (database `pgbouncer`) through psql's library, as operators and exporters use it.
@Suite struct AdminConsoleTests {
    static let consoleSettings = "admin_users = lg_md5\nstats_users = lg_scram\ndefault_pool_size = 2"

    private func start(_ extra: String = "") throws -> LifeguardProcess {
        try LifeguardProcess(settings: Self.consoleSettings + "\n" + extra)
    }

    private func admin(_ lifeguard: LifeguardProcess) throws -> PGConnection {
        try lifeguard.connect(database: "pgbouncer")
    }

    private func row(_ console: PGConnection, _ sql: String, where column: String, is value: String) throws
        -> [String: String?]?
    {
        try console.records(sql).first { $0[column] == .some(value) }
    }

    // MARK: Access

    @Test func adminStatsAndOtherUsers() throws {
        let lifeguard = try start()
        let console = try admin(lifeguard)
        #expect(try console.value("SHOW VERSION")?.hasPrefix("Lifeguard ") == true)
        try console.query("RECONNECT")

        let stats = try lifeguard.connect(user: "lg_scram", password: "scrampass", database: "pgbouncer")
        #expect(try stats.query("SHOW POOLS").count >= 1)
        do {
            try stats.query("PAUSE")
            Issue.record("a stats user paused the pooler")
        } catch let failure as PGConnection.Failure {
            #expect(failure.message.contains("admin access needed"))
            #expect(failure.sqlState == "08P01")
        }
        #expect(try stats.value("SHOW STATE") == "active", "the session stays usable after a console error")

        #expect(lifeguard.loginFailure(user: "lg_clear", password: "clearpass", database: "pgbouncer").contains("not allowed"))
    }

    @Test func daemonsOwnUserEntersOverTheUnixSocketWithoutPassword() throws {
        let lifeguard = try start()
        let console = try PGConnection(
            "host=\(lifeguard.directory.path) port=\(lifeguard.port) user=pgbouncer dbname=pgbouncer")
        try console.query("RELOAD")
        #expect(try console.value("SHOW STATE") == "active")
        // Over TCP the same name is an ordinary user, and not allowed.
        #expect(lifeguard.loginFailure(user: "pgbouncer", password: "x", database: "pgbouncer").contains("not allowed"))
    }

    @Test func consoleIsExemptFromMaxClientConn() throws {
        let lifeguard = try start("max_client_conn = 1")
        let client = try lifeguard.connect()
        let console = try admin(lifeguard)
        #expect(try console.value("SHOW STATE") == "active")
        _ = client
    }

    @Test func extendedProtocolAndBadCommandsGetPgBouncersErrors() throws {
        let lifeguard = try start()
        let console = try admin(lifeguard)
        do {
            try console.query("SHOW FOO")
            Issue.record("unknown SHOW accepted")
        } catch let failure as PGConnection.Failure {
            #expect(failure.message.contains("invalid command 'SHOW FOO', use SHOW HELP;"))
        }
        do {
            try console.query("SHOW POOLS", parameters: [])
            Issue.record("extended protocol accepted")
        } catch let failure as PGConnection.Failure {
            #expect(failure.message.contains("extended query protocol not supported by admin console"))
        }
        #expect(throws: PGConnection.Failure.self) { try console.query("SHOW STATE") }
    }

    @Test func fakeParametersLetDriversConnect() throws {
        let lifeguard = try start()
        let console = try admin(lifeguard)
        #expect(try console.value("SHOW client_encoding") == "UTF-8")
        #expect(try console.value("SHOW DateStyle") == "ISO")
        try console.query("SET client_encoding = 'UTF8'")
        let version = try console.value("SHOW VERSION")
        #expect(try console.value("SELECT version") == version)
    }

    // MARK: SHOW columns

    @Test func showColumnsMatchPgBouncer() throws {
        let lifeguard = try start()
        let console = try admin(lifeguard)
        let clientColumns = ["type", "user", "database", "replication", "state", "addr", "port", "local_addr",
                             "local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr",
                             "link", "remote_pid", "tls", "application_name", "prepared_statements", "id"]
        let expected: [String: [String]] = [
            "POOLS": ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
                      "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested",
                      "sv_login", "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts"],
            "CLIENTS": clientColumns,
            "SERVERS": clientColumns,
            "SOCKETS": clientColumns + ["recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail",
                                        "send_avail"],
            "DATABASES": ["name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
                          "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts", "max_connections",
                          "current_connections", "max_client_connections", "current_client_connections", "paused",
                          "disabled"],
            "USERS": ["name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
                      "current_connections", "max_user_client_connections", "current_client_connections"],
            "STATS": ["database", "total_server_assignment_count", "total_xact_count", "total_query_count",
                      "total_received", "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
                      "total_client_parse_count", "total_server_parse_count", "total_bind_count",
                      "total_client_login_count", "avg_server_assignment_count", "avg_xact_count", "avg_query_count",
                      "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time",
                      "avg_client_parse_count", "avg_server_parse_count", "avg_bind_count", "avg_client_login_count"],
            "STATS_TOTALS": ["database", "server_assignment_count", "xact_count", "query_count", "bytes_received",
                             "bytes_sent", "xact_time", "query_time", "wait_time", "client_parse_count",
                             "server_parse_count", "bind_count", "client_login_count"],
            "STATS_AVERAGES": ["database", "server_assignment_count", "xact_count", "query_count", "bytes_received",
                               "bytes_sent", "xact_time", "query_time", "wait_time", "avg_client_parse_count",
                               "avg_server_parse_count", "avg_bind_count", "avg_client_login_count"],
            "TOTALS": ["name", "value"],
            "LISTS": ["list", "items"],
            "STATE": ["key", "value"],
            "MEM": ["name", "size", "used", "free", "memtotal"],
            "CONFIG": ["key", "value", "default", "changeable"],
            "DNS_HOSTS": ["hostname", "ttl", "addrs"],
            "DNS_ZONES": ["zonename", "serial", "count"],
            "PEERS": ["peer_id", "host", "port", "pool_size"],
            "PEER_POOLS": ["peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active_cancel", "sv_login"],
            "VERSION": ["version"],
        ]
        for (command, columns) in expected {
            #expect(try console.columns("SHOW \(command)") == columns, "SHOW \(command)")
        }
        let lists = try console.query("SHOW LISTS").map { $0[0]! }
        #expect(lists == ["databases", "users", "peers", "pools", "peer_pools", "free_clients", "used_clients",
                          "login_clients", "free_servers", "used_servers", "dns_names", "dns_zones", "dns_queries",
                          "dns_pending"])
    }

    // MARK: SHOW values

    @Test func poolsClientsAndServersReflectTheSituation() throws {
        let lifeguard = try start()
        let holders = try (0..<2).map { _ in try lifeguard.connect() }
        for holder in holders { try holder.query("BEGIN") ; _ = holder.backendPID }
        // A third client now waits: both servers of the pool (size 2) are inside transactions.
        let waiting = Background { try? lifeguard.connect().value("SELECT 'served'") }
        let console = try admin(lifeguard)
        var pool: [String: String?]?
        for _ in 0..<50 {
            pool = try row(console, "SHOW POOLS", where: "database", is: "lgtest")
            if pool?["cl_waiting"] == .some("1") { break }
            usleep(50_000)
        }
        #expect(pool?["user"] == .some("lg_md5"))
        #expect(pool?["cl_active"] == .some("2"))
        #expect(pool?["cl_waiting"] == .some("1"))
        #expect(pool?["sv_active"] == .some("2"))
        #expect(pool?["sv_idle"] == .some("0"))
        #expect(pool?["pool_mode"] == .some("transaction"))

        let servers = try console.records("SHOW SERVERS")
        #expect(servers.count == 2)
        #expect(servers.allSatisfy { $0["state"] == .some("active") && $0["link"] != .some("") })
        let pids = Set(servers.compactMap { $0["remote_pid"] ?? nil })
        #expect(pids == Set(holders.compactMap { $0.backendPID }))

        let clients = try console.records("SHOW CLIENTS")
        #expect(clients.filter { $0["state"] == .some("active") && $0["database"] == .some("lgtest") }.count == 2)
        #expect(clients.filter { $0["state"] == .some("waiting") }.count == 1)

        for holder in holders { try holder.query("COMMIT") }
        #expect(waiting.finished(within: 10))
        #expect(waiting.result == "served")
        let after = try row(console, "SHOW POOLS", where: "database", is: "lgtest")
        #expect(after?["sv_idle"] == .some("2"))
        #expect(after?["cl_waiting"] == .some("0"))
    }

    @Test func statsCountTransactionsQueriesAndBytes() throws {
        let lifeguard = try start()
        let client = try lifeguard.connect()
        for _ in 0..<10 { try client.query("SELECT 1") }
        try client.query("BEGIN")
        try client.query("SELECT 2")
        try client.query("COMMIT")
        let console = try admin(lifeguard)
        let stats = try #require(try row(console, "SHOW STATS", where: "database", is: "lgtest"))
        // 10 autocommit queries + 1 transaction of 3 queries.
        #expect(stats["total_xact_count"] == .some("11"))
        #expect(stats["total_query_count"] == .some("13"))
        #expect(Int((stats["total_received"] ?? nil) ?? "") ?? 0 > 0)
        #expect(Int((stats["total_sent"] ?? nil) ?? "") ?? 0 > 0)
        #expect(Int((stats["total_query_time"] ?? nil) ?? "") ?? 0 > 0)
        #expect(stats["total_client_login_count"] == .some("1"))
        // The console counts as a pool of its own: one login, and each command one transaction (itself included).
        let consoleStats = try #require(try row(console, "SHOW STATS", where: "database", is: "pgbouncer"))
        #expect(consoleStats["total_client_login_count"] == .some("1"))
        let consoleCommands = try #require(Int((consoleStats["total_xact_count"] ?? nil) ?? ""))
        #expect(consoleCommands >= 2)
        let totals = Dictionary(uniqueKeysWithValues: try console.query("SHOW TOTALS").map { ($0[0]!, $0[1]!) })
        #expect(totals["total_xact_count"] == "\(11 + consoleCommands + 1)")
        #expect(totals["total_client_login_count"] == "2")
    }

    @Test func databasesUsersAndConfigShowTheConfiguration() throws {
        let lifeguard = try start()
        let console = try admin(lifeguard)
        let database = try #require(try row(console, "SHOW DATABASES", where: "name", is: "lgtest"))
        #expect(database["host"] == .some("127.0.0.1"))
        #expect(database["port"] == .some("\(TestEnvironment.postgresPort!)"))
        #expect(database["pool_size"] == .some("2"))
        #expect(database["force_user"] == .some(nil))
        #expect(database["load_balance_hosts"] == .some("round-robin"), "the default")
        let config = try #require(try row(console, "SHOW CONFIG", where: "key", is: "default_pool_size"))
        #expect(config["value"] == .some("2"))
        #expect(config["default"] == .some("20"))
        #expect(config["changeable"] == .some("yes"))
        #expect(try row(console, "SHOW CONFIG", where: "key", is: "listen_port")?["changeable"] == .some("no"))
    }

    // MARK: Control

    @Test func setChangesARunningSetting() throws {
        let lifeguard = try start()
        let console = try admin(lifeguard)
        try console.query("SET default_pool_size = 7")
        #expect(try row(console, "SHOW CONFIG", where: "key", is: "default_pool_size")?["value"] == .some("7"))
        #expect(throws: PGConnection.Failure.self) { try console.query("SET no_such_key = 1") }
        #expect(throws: PGConnection.Failure.self) { try console.query("SET listen_port = 1") }
    }

    @Test func pauseHoldsQueriesUntilResume() throws {
        let lifeguard = try start()
        let client = try lifeguard.connect()
        #expect(try client.value("SELECT 1") == "1")
        let console = try admin(lifeguard)
        try console.query("PAUSE")  // returns once the idle server is closed
        #expect(try row(console, "SHOW STATE", where: "key", is: "paused")?["value"] == .some("yes"))
        let query = Background { try? client.value("SELECT 'after resume'") }
        #expect(!query.finished(within: 0.5), "a query ran while paused")
        try console.query("RESUME")
        #expect(query.finished(within: 10))
        #expect(query.result == "after resume")
        #expect(throws: PGConnection.Failure.self) { try console.query("RESUME") }
    }

    @Test func pauseWaitsForTheRunningTransaction() throws {
        let lifeguard = try start()
        let client = try lifeguard.connect()
        try client.query("BEGIN")
        let console = try admin(lifeguard)
        let pause = Background { try? console.query("PAUSE") }
        #expect(!pause.finished(within: 0.5), "PAUSE answered while a transaction was open")
        try client.query("COMMIT")
        #expect(pause.finished(within: 10))
    }

    @Test func suspendStopsTrafficUntilResume() throws {
        let lifeguard = try start()
        let client = try lifeguard.connect()
        _ = try client.value("SELECT 1")
        let console = try admin(lifeguard)
        try console.query("SUSPEND")
        #expect(try row(console, "SHOW STATE", where: "key", is: "suspended")?["value"] == .some("yes"))
        let query = Background { try? client.value("SELECT 'resumed'") }
        #expect(!query.finished(within: 0.5), "a query ran while suspended")
        try console.query("RESUME")
        #expect(query.finished(within: 10))
        #expect(query.result == "resumed")
    }

    @Test func cancelOfAWaitingPauseResumes() throws {
        let lifeguard = try start()
        let holder = try lifeguard.connect()
        try holder.query("BEGIN")
        let console = try admin(lifeguard)
        let pause = Background { try? console.query("PAUSE") }
        #expect(!pause.finished(within: 0.3))
        #expect(console.cancel())
        #expect(pause.finished(within: 10))
        let other = try admin(lifeguard)
        #expect(try row(other, "SHOW STATE", where: "key", is: "active")?["value"] == .some("yes"))
        try holder.query("COMMIT")
    }

    @Test func disableRefusesLoginsUntilEnable() throws {
        let lifeguard = try start()
        let console = try admin(lifeguard)
        try console.query("DISABLE lgtest")
        #expect(lifeguard.loginFailure().contains("database \"lgtest\" is disabled"))
        try console.query("ENABLE lgtest")
        #expect(try lifeguard.connect().value("SELECT 1") == "1")
        #expect(throws: PGConnection.Failure.self) { try console.query("DISABLE nosuchdb") }
    }

    @Test func killDropsTheDatabasesClientsAndKillClientOne() throws {
        let lifeguard = try start()
        let victims = try (0..<2).map { _ in try lifeguard.connect() }
        for victim in victims { _ = try victim.value("SELECT 1") }
        let console = try admin(lifeguard)
        let ids = try console.records("SHOW CLIENTS").filter { $0["database"] == .some("lgtest") }.compactMap { $0["id"] ?? nil }
        try #require(ids.count == 2)
        try console.query("KILL_CLIENT \(ids[0])")
        usleep(100_000)
        #expect(try console.records("SHOW CLIENTS").filter { $0["database"] == .some("lgtest") }.count == 1)
        #expect(throws: PGConnection.Failure.self) { try console.query("KILL_CLIENT 999999") }

        try console.query("KILL lgtest")
        usleep(100_000)
        #expect(try console.records("SHOW CLIENTS").filter { $0["database"] == .some("lgtest") }.isEmpty)
        #expect(try row(console, "SHOW DATABASES", where: "name", is: "lgtest")?["paused"] == .some("1"))
        try console.query("RESUME lgtest")
        #expect(try lifeguard.connect().value("SELECT 1") == "1")
    }

    @Test func reconnectClosesServersAndWaitCloseReturns() throws {
        let lifeguard = try start()
        let client = try lifeguard.connect()
        let before = client.backendPID
        let console = try admin(lifeguard)
        try console.query("RECONNECT lgtest")
        try console.query("WAIT_CLOSE lgtest")
        #expect(client.backendPID != before)
    }

    @Test func reloadAppliesANewPoolSizeAndSurvivesABrokenFile() throws {
        let lifeguard = try start()
        let console = try admin(lifeguard)
        let ini = lifeguard.directory.appendingPathComponent("lifeguard.ini")
        let original = try String(contentsOf: ini, encoding: .utf8)
        try original.replacingOccurrences(of: "default_pool_size = 2", with: "default_pool_size = 4")
            .write(to: ini, atomically: true, encoding: .utf8)
        try console.query("RELOAD")
        #expect(try row(console, "SHOW DATABASES", where: "name", is: "lgtest")?["pool_size"] == .some("4"))

        try (original + "\nmax_client_conn = many\n").write(to: ini, atomically: true, encoding: .utf8)
        do {
            try console.query("RELOAD")
            Issue.record("a broken file reloaded")
        } catch let failure as PGConnection.Failure {
            #expect(failure.sqlState == "F0000")
            #expect(failure.message.contains("RELOAD failed, see logs for additional details"))
        }
        #expect(try row(console, "SHOW DATABASES", where: "name", is: "lgtest")?["pool_size"] == .some("4"))
        #expect(try lifeguard.connect().value("SELECT 'still serving'") == "still serving")
    }
}
}

import Foundation
import Glibc
import Testing

extension IntegrationTests {
/// What clients see when PostgreSQL misbehaves or is slow to read, and the settings that shape server logins.
@Suite struct ServerFailureTests {
    /// Clients, console sessions and servers that come and go must leave nothing behind: the handlers
    /// once kept their ChannelHandlerContext, a cycle that leaked about 3 KB per client connection.
    @Test func connectionsThatComeAndGoDoNotGrowMemory() throws {
        // server_lifetime = 0: every transaction's server is closed after use, so servers churn as well.
        let lifeguard = try LifeguardProcess(settings: "server_lifetime = 0\nadmin_users = lg_md5")
        func churn(_ count: Int) throws {
            for index in 0..<count {
                let client = try lifeguard.connect()
                #expect(try client.value("SELECT \(index)") == "\(index)")
                if index % 10 == 0 {
                    let console = try lifeguard.connect(database: "pgbouncer")
                    _ = try console.query("SHOW VERSION")
                }
            }
        }
        try churn(100)  // allocator arenas and caches settle
        let before = lifeguard.residentKilobytes
        try churn(400)
        let after = lifeguard.residentKilobytes
        #expect(after - before < 500, "Lifeguard grew from \(before) kB to \(after) kB over 400 connections")
    }

    @Test func slowReaderOfAHugeResultDoesNotMakeLifeguardBuffer() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        let socket = try RawSocket(port: lifeguard.port)
        socket.send(RawSocket.startupMessage([("user", "lg_trust"), ("database", "lgtest")]))
        _ = socket.read { $0.count >= 6 && $0.suffix(6).first == UInt8(ascii: "Z") }
        let before = lifeguard.residentKilobytes
        // About 400 MB of rows, and the client reads none of them for two seconds.
        let query = Array("SELECT repeat('x', 1000) FROM generate_series(1, 400000)".utf8) + [0]
        socket.send([UInt8(ascii: "Q")] + RawSocket.bigEndian(Int32(query.count + 4)) + query)
        usleep(2_000_000)
        let during = lifeguard.residentKilobytes
        #expect(during - before < 20_000, "Lifeguard grew from \(before) kB to \(during) kB while the client did not read")
        socket.close()
        let client = try lifeguard.connect(user: "lg_trust", password: nil)
        #expect(try client.value("SELECT 'after'") == "after")
    }

    @Test func serverKilledMidTransactionFailsOnlyItsClient() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 2")
        let victim = try lifeguard.connect()
        try victim.query("BEGIN")
        let pid = try #require(victim.backendPID)
        _ = try TestEnvironment.direct().query("SELECT pg_terminate_backend(\(pid))")
        #expect(throws: PGConnection.Failure.self) { try victim.query("SELECT 1") }
        let other = try lifeguard.connect()
        #expect(try other.value("SELECT 'unaffected'") == "unaffected")
    }

    @Test func idleServerKilledIsReplacedTransparently() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        let pid = try #require(client.backendPID)
        try TestEnvironment.terminateIdleBackend(pid)
        // The idle server's death was noticed; the next transaction gets a fresh one.
        let newPID = client.backendPID
        #expect(newPID != nil && newPID != pid)
    }

    @Test func failingServerLoginIsRetriedOnlyAfterServerLoginRetry() throws {
        // Lifeguard accepts clients (trust) but PostgreSQL rejects Lifeguard's password for lg_md5.
        let lifeguard = try LifeguardProcess(
            settings: "auth_type = trust\nserver_login_retry = 1", userList: "\"lg_md5\" \"not-the-password\"")
        #expect(lifeguard.loginFailure(password: nil).contains("password authentication failed for user \"lg_md5\""))
        // Within server_login_retry the next client fails at once with the cached error, without a new login.
        for _ in 0..<5 {
            #expect(lifeguard.loginFailure(password: nil).contains(
                "server login has been failing, cached error: password authentication failed for user \"lg_md5\" (server_login_retry)"))
        }
        #expect(lifeguard.log.components(separatedBy: "new connection to server").count - 1 == 1)
        usleep(1_100_000)
        // After it, a new login is tried (and fails again with the server's own error).
        #expect(lifeguard.loginFailure(password: nil).contains("FATAL:  password authentication failed for user \"lg_md5\""))
        #expect(lifeguard.log.components(separatedBy: "new connection to server").count - 1 == 2)
    }

    /// The console's SET reaches pools that already exist (PgBouncer suite's test_database_restart sets
    /// server_login_retry = 1 after its pools were made, and failed while the old 15 s held).
    @Test func serverLoginRetrySetOnTheConsoleReachesAnExistingPool() throws {
        let lifeguard = try LifeguardProcess(
            settings: "auth_type = trust\nserver_login_retry = 30\nadmin_users = lg_md5",
            userList: "\"lg_md5\" \"not-the-password\"")
        #expect(lifeguard.loginFailure(password: nil).contains("password authentication failed for user \"lg_md5\""))
        let console = try lifeguard.connect(password: nil, database: "pgbouncer")
        try console.query("SET server_login_retry = 1")
        usleep(1_100_000)
        #expect(lifeguard.loginFailure(password: nil).contains("FATAL:  password authentication failed for user \"lg_md5\""))
        #expect(lifeguard.log.components(separatedBy: "new connection to server").count - 1 == 2)
    }

    @Test func tcpKeepaliveTimingsReachTheSockets() throws {
        let lifeguard = try LifeguardProcess(settings: "tcp_keepidle = 77\ntcp_keepintvl = 11")
        let client = try lifeguard.connect()
        _ = try client.value("SELECT 1")
        usleep(300_000)  // until the last segments are acknowledged, ss shows the retransmit timer instead
        // ss shows the keepalive timer of Lifeguard's socket to PostgreSQL and of the accepted client socket.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/ss")
        process.arguments = ["-tnoH", "state", "established"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let toServer = output.split(separator: "\n").filter {
            $0.contains(":\(TestEnvironment.postgresPort!) ") && $0.contains("keepalive")
        }
        let fromClient = output.split(separator: "\n").filter {
            $0.contains("127.0.0.1:\(lifeguard.port) ") && $0.contains("keepalive")
        }
        #expect(toServer.contains { $0.contains("timer:(keepalive,1min") || $0.contains("timer:(keepalive,7") })
        #expect(fromClient.contains { $0.contains("timer:(keepalive,1min") || $0.contains("timer:(keepalive,7") }, "\(output)")
    }

    @Test func connectQueryRunsOnEveryNewServer() throws {
        let lifeguard = try LifeguardProcess(
            settings: "auth_type = trust",
            databases: "lgtest = {PG} connect_query='CREATE TEMP TABLE made_by_connect_query (x int)'")
        let client = try lifeguard.connect(user: "lg_trust", password: nil)
        #expect(try client.value("SELECT count(*) FROM pg_class WHERE relname = 'made_by_connect_query'") == "1")
    }

    @Test func applicationNameAddHostAppendsTheClientAddress() throws {
        let lifeguard = try LifeguardProcess(settings: "application_name_add_host = 1")
        let client = try lifeguard.connect(extra: "application_name=reporting")
        let name = try #require(try client.value("SHOW application_name"))
        #expect(name.hasPrefix("reporting - 127.0.0.1:"))
    }

    @Test func minPoolSizeOpensServersAheadOfDemand() throws {
        let lifeguard = try LifeguardProcess(
            settings: "auth_type = trust", databases: "lgtest = {PG} user=lg_trust min_pool_size=3")
        let direct = try TestEnvironment.direct()
        var count = "0"
        for _ in 0..<40 {
            count = try direct.value("SELECT count(*) FROM pg_stat_activity WHERE usename = 'lg_trust' AND datname = 'lgtest'") ?? "0"
            if count == "3" { break }
            usleep(100_000)
        }
        #expect(count == "3")
        _ = lifeguard
    }
}
}

extension IntegrationTests.ServerFailureTests {
    /// Restarts the test cluster with pg_ctl, as the postgres user. (`system`, not Foundation's Process:
    /// the restarted postmaster outlives `su`, and Process did not always notice `su` exiting.)
    private func restartPostgres(mode: String) throws {
        let data = "\(TestEnvironment.postgresSocketDirectory!)/data"
        let status = system(
            "su postgres -s /bin/bash -c \"cd / && /usr/lib/postgresql/15/bin/pg_ctl -D '\(data)' -l '\(data)/../server.log' -m \(mode) -w restart >/dev/null 2>&1\"")
        try #require(status == 0, "pg_ctl restart failed")
    }

    @Test(arguments: ["fast", "immediate"])
    func postgresRestartIsSurvived(mode: String) throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 2")
        let client = try lifeguard.connect()
        #expect(try client.value("SELECT 1") == "1")
        try restartPostgres(mode: mode)
        // The idle server died with PostgreSQL; the next transaction gets a new one once it is back.
        #expect(waitUntil { (try? client.value("SELECT 'back'")) == "back" })
        #expect(try lifeguard.connect().value("SELECT 2") == "2")
    }

    @Test func sessionClientWhoseServerDiesGetsAClearError() throws {
        let lifeguard = try LifeguardProcess(settings: "pool_mode = session")
        let client = try lifeguard.connect()
        _ = try client.value("SELECT 1")
        try restartPostgres(mode: "fast")
        do {
            _ = try client.value("SELECT 1")
            Issue.record("query ran on a dead server")
        } catch let failure as PGConnection.Failure {
            // PostgreSQL's own shutdown message, or PgBouncer's when the socket just closed.
            #expect(failure.message.contains("terminating connection") || failure.message.contains("server conn crashed?"))
        }
        #expect(waitUntil { (try? lifeguard.connect().value("SELECT 3")) == "3" })
    }

    @Test func serverRefusingLoginsIsRetriedAfterServerLoginRetry() throws {
        let direct = try TestEnvironment.direct()
        try direct.query("ALTER ROLE lg_clear CONNECTION LIMIT 0")
        defer { _ = try? direct.query("ALTER ROLE lg_clear CONNECTION LIMIT -1") }
        let lifeguard = try LifeguardProcess(settings: "server_login_retry = 0.5")
        #expect(lifeguard.loginFailure(user: "lg_clear", password: "clearpass").contains("too many connections for role"))
        try direct.query("ALTER ROLE lg_clear CONNECTION LIMIT -1")
        #expect(waitUntil { (try? lifeguard.connect(user: "lg_clear", password: "clearpass").value("SELECT 1")) == "1" })
    }

    /// As with PgBouncer, a refused connect does not fail the clients already waiting: they wait for the
    /// retry (here until client_login_timeout), and clients arriving during server_login_retry get the
    /// cached error at once.
    @Test func unreachableServerKeepsWaitingClientsAndFailsNewOnesAtOnce() throws {
        // Nothing listens on this port: connection refused.
        let lifeguard = try LifeguardProcess(
            settings: "auth_type = trust\nclient_login_timeout = 1\nserver_login_retry = 10",
            databases: "lgtest = host=127.0.0.1 port=\(freePort())")
        let start = Date()
        #expect(lifeguard.loginFailure(user: "lg_trust", password: nil).contains("client_login_timeout"))
        #expect(Date().timeIntervalSince(start) < 5)
        #expect(lifeguard.log.contains("closing because: connect failed (connect: Connection refused"))
        #expect(lifeguard.loginFailure(user: "lg_trust", password: nil)
            .contains("server login has been failing, cached error: connect failed (server_login_retry)"))
    }

    /// PostgreSQL down when a client comes (PgBouncer's test_server_login_retry): the client waits through
    /// the failed connects and is served once the server is back, after server_login_retry.
    @Test func aClientWaitsForAServerThatComesBack() throws {
        let port = freePort()
        let lifeguard = try LifeguardProcess(
            settings: "server_login_retry = 0.5", databases: "lgtest = host=127.0.0.1 port=\(port)")
        let waiting = Background { try? lifeguard.connect().value("SELECT 'served'") }
        #expect(waitUntil { lifeguard.log.contains("closing because: connect failed") })
        #expect(!waiting.finished(within: 0.3), "the waiting client was failed")
        // The server comes back on the same port (a relay in front of PostgreSQL).
        let relay = try FatalAfterMarkerRelay(
            targetPort: TestEnvironment.postgresPort!, marker: "not in any reply", listenPort: port)
        #expect(waiting.finished(within: 10))
        #expect(waiting.result == "served")
        _ = relay
    }
}

extension IntegrationTests.ServerFailureTests {
    @Test func hostNamesAreResolvedAndTriedAddressByAddress() throws {
        // "localhost" may resolve to ::1 first, where PostgreSQL does not listen: the next address is tried.
        let lifeguard = try LifeguardProcess(databases: "lgtest = host=localhost port=\(TestEnvironment.postgresPort!)")
        #expect(try lifeguard.connect().value("SELECT 1") == "1")
    }

    @Test func unknownHostNameFailsClearly() throws {
        let lifeguard = try LifeguardProcess(
            settings: "auth_type = trust\nclient_login_timeout = 1",
            databases: "lgtest = host=no-such-host.invalid port=5432")
        #expect(lifeguard.loginFailure(user: "lg_trust", password: nil).contains("client_login_timeout"))
        #expect(lifeguard.loginFailure(user: "lg_trust", password: nil)
            .contains("cached error: server DNS lookup failed: could not resolve host no-such-host.invalid"))
        // PgBouncer's words, which its suite's test_load_balance_hosts_disable_bad_first reads.
        #expect(lifeguard.log.contains("closing because: server DNS lookup failed: could not resolve host no-such-host.invalid"))
    }

    @Test func hostListWithLoadBalancingDisabledMovesOnFromAFailedHost() throws {
        // The first host is a Unix-socket directory with no server in it; the second is the real one.
        let lifeguard = try LifeguardProcess(
            settings: "auth_type = trust\nserver_login_retry = 0.2",
            databases: "lgtest = host=/nonexistent-lifeguard-dir,127.0.0.1 port=\(TestEnvironment.postgresPort!) load_balance_hosts=disable")
        // The first client waits through the failed host and is served by the second after server_login_retry.
        for _ in 0..<4 {
            let client = try lifeguard.connect(user: "lg_trust", password: nil)
            #expect(try client.value("SELECT inet_server_port()") == "\(TestEnvironment.postgresPort!)")
        }
    }

    /// Forced-user pools too (PgBouncer's test_pool_idle_timeout); only min_pool_size keeps a pool.
    @Test func poolIdleTimeoutFreesAnUnusedPool() throws {
        let lifeguard = try LifeguardProcess(
            settings: "pool_idle_timeout = 0.5\nadmin_users = lg_md5",
            databases: "lgtest = {PG}\nlgforced = {PG} dbname=lgtest user=lg_trust\nlgkept = {PG} dbname=lgtest user=lg_trust min_pool_size=1")
        for database in ["lgtest", "lgforced", "lgkept"] {
            let client = try lifeguard.connect(database: database)
            _ = try client.value("SELECT 1")
        }
        let console = try lifeguard.connect(database: "pgbouncer")
        let freed = waitUntil(5) {
            let pools = ((try? console.query("SHOW POOLS")) ?? []).map { $0[0] }
            return !pools.contains("lgtest") && !pools.contains("lgforced")
        }
        #expect(freed)
        #expect(lifeguard.log.contains("pool_idle_timeout"))
        #expect(lifeguard.log.contains("cleaning up idle pool lgforced/lg_trust"))
        #expect(try console.query("SHOW POOLS").contains { $0[0] == "lgkept" }, "min_pool_size keeps its pool")
        #expect(try lifeguard.connect().value("SELECT 2") == "2", "the pool comes back on demand")
    }
}

extension IntegrationTests.ServerFailureTests {
    /// A host that drops every packet (scripts/blackhole-host.sh), so SYNs go unanswered.
    @Test(.enabled(if: getuid() == 0, "needs root for ip netns"))
    func hostDroppingPacketsFailsWithinServerConnectTimeout() throws {
        let name = "lgdrop\(getpid() % 10000)"
        defer { _ = system("scripts/blackhole-host.sh destroy \(name)") }
        try #require(system("scripts/blackhole-host.sh create \(name) 10.213.0") == 0, "no network namespace")
        let lifeguard = try LifeguardProcess(
            settings: "auth_type = trust\nserver_connect_timeout = 0.5\nclient_login_timeout = 2",
            databases: "lgtest = host=10.213.0.2 port=5432")
        let start = Date()
        #expect(lifeguard.loginFailure(user: "lg_trust", password: nil).contains("client_login_timeout"))
        #expect(lifeguard.log.contains("closing because: connect timeout"))
        #expect(Date().timeIntervalSince(start) < 5)
    }
}

extension IntegrationTests.ServerFailureTests {
    @Test func backendKilledMidQueryFailsOnlyItsClient() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 2")
        let victim = try lifeguard.connect()
        let pid = try #require(victim.backendPID)
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.3) {
            _ = try? TestEnvironment.direct().query("SELECT pg_terminate_backend(\(pid))")
        }
        do {
            try victim.query("SELECT pg_sleep(5)")
            Issue.record("the query survived its backend")
        } catch let failure as PGConnection.Failure {
            #expect(failure.message.contains("terminating connection due to administrator command"))
        }
        #expect(try lifeguard.connect().value("SELECT 'unaffected'") == "unaffected")
    }
}

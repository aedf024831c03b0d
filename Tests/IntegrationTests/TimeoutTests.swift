import Dispatch
import Foundation
import Glibc
import NIOConcurrencyHelpers
import Testing

extension IntegrationTests {
/// PgBouncer's timeouts with small values, against the real process and PostgreSQL.
@Suite struct TimeoutTests {
    @Test func clientLoginTimeoutClosesASilentConnection() throws {
        // tcp_defer_accept would keep a silent connection in the kernel's queue instead.
        let lifeguard = try LifeguardProcess(settings: "client_login_timeout = 0.5\ntcp_defer_accept = 0")
        let socket = try RawSocket(port: lifeguard.port)
        let start = Date()
        let (bytes, closed) = socket.readUntilClosed()
        #expect(closed)
        #expect(Date().timeIntervalSince(start) < 3)
        #expect(RawSocket.errorMessage(in: bytes)?.message == "client_login_timeout")
    }

    @Test func clientIdleTimeoutDisconnectsAnIdleClient() throws {
        let lifeguard = try LifeguardProcess(settings: "client_idle_timeout = 0.5")
        let client = try lifeguard.connect()
        _ = try client.value("SELECT 1")
        usleep(1_200_000)
        do {
            _ = try client.value("SELECT 1")
            Issue.record("idle client still served")
        } catch let failure as PGConnection.Failure {
            #expect(failure.message.contains("FATAL:  client_idle_timeout"))
        }
        #expect(lifeguard.log.contains("closing because: client_idle_timeout"))
    }

    @Test func queryWaitTimeoutFailsAQueuedClient() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1\nquery_wait_timeout = 0.5")
        let holder = try lifeguard.connect()
        try holder.query("BEGIN")
        let waiter = try lifeguard.connect()
        let start = Date()
        do {
            _ = try waiter.value("SELECT 1")
            Issue.record("queued client was served")
        } catch let failure as PGConnection.Failure {
            #expect(failure.message.contains("query_wait_timeout"))
        }
        #expect(Date().timeIntervalSince(start) < 3)
        try holder.query("COMMIT")
    }

    @Test func queuedClientGetsANotice() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust\ndefault_pool_size = 1\nquery_wait_notify = 1")
        let holder = try lifeguard.connect(user: "lg_trust", password: nil)
        try holder.query("BEGIN")
        let socket = try RawSocket(port: lifeguard.port)
        socket.send(RawSocket.startupMessage([("user", "lg_trust"), ("database", "lgtest")]))
        _ = socket.read { $0.count >= 6 && $0.suffix(6).first == UInt8(ascii: "Z") }
        let query = Array("SELECT 1".utf8) + [0]
        socket.send([UInt8(ascii: "Q")] + RawSocket.bigEndian(Int32(query.count + 4)) + query)
        let notice = socket.read { String(decoding: $0, as: UTF8.self).contains("client being queued") }
        #expect(String(decoding: notice, as: UTF8.self).contains(
            "No server connection available in postgres backend, client being queued"))
        try holder.query("COMMIT")
    }

    @Test func idleTransactionTimeoutClosesTheServerAndClient() throws {
        let lifeguard = try LifeguardProcess(settings: "idle_transaction_timeout = 0.5")
        let client = try lifeguard.connect()
        try client.query("BEGIN")
        let pid = try #require(client.backendPID)
        usleep(1_200_000)
        #expect(throws: PGConnection.Failure.self) { try client.query("SELECT 1") }
        #expect(lifeguard.log.contains("idle transaction timeout"))
        #expect(waitUntil {
            (try? TestEnvironment.direct().value("SELECT count(*) FROM pg_stat_activity WHERE pid = \(pid)")) == "0"
        })
    }

    @Test func queryTimeoutStopsALongQuery() throws {
        let lifeguard = try LifeguardProcess(settings: "query_timeout = 0.5")
        let client = try lifeguard.connect()
        let start = Date()
        do {
            try client.query("SELECT pg_sleep(10)")
            Issue.record("long query finished")
        } catch let failure as PGConnection.Failure {
            #expect(failure.message.contains("FATAL:  query timeout"))
        }
        #expect(Date().timeIntervalSince(start) < 5)
        #expect(try lifeguard.connect().value("SELECT 'others fine'") == "others fine")
    }

    @Test func transactionTimeoutEndsALongTransaction() throws {
        let lifeguard = try LifeguardProcess(settings: "transaction_timeout = 0.7")
        let client = try lifeguard.connect()
        try client.query("BEGIN")
        for _ in 0..<3 {
            _ = try? client.value("SELECT pg_sleep(0.2)")
        }
        usleep(500_000)
        #expect(throws: PGConnection.Failure.self) { try client.query("SELECT 1") }
        #expect(lifeguard.log.contains("transaction timeout"))
    }

    @Test func serverIdleTimeoutClosesUnusedServers() throws {
        let lifeguard = try LifeguardProcess(settings: "server_idle_timeout = 0.5")
        let client = try lifeguard.connect()
        let pid = try #require(client.backendPID)
        #expect(waitUntil {
            (try? TestEnvironment.direct().value("SELECT count(*) FROM pg_stat_activity WHERE pid = \(pid)")) == "0"
        })
        // The close is logged once the socket is closed, which PostgreSQL may notice first.
        #expect(waitUntil(2) { lifeguard.log.contains("closing because: server idle timeout") })
        #expect(client.backendPID != nil, "a new server is opened on demand")
    }

    @Test func serverLifetimeRetiresServersOnRelease() throws {
        let lifeguard = try LifeguardProcess(settings: "server_lifetime = 1\ndefault_pool_size = 1")
        let client = try lifeguard.connect()
        let first = try #require(client.backendPID)
        usleep(2_100_000)
        _ = client.backendPID  // released after this one: past its lifetime, so closed
        #expect(waitUntil { client.backendPID != first })
        #expect(lifeguard.log.contains("server lifetime over"))
    }

    @Test func perUserQueryWaitTimeoutOverridesTheGlobalOne() throws {
        let lifeguard = try LifeguardProcess(
            settings: "default_pool_size = 1\nquery_wait_timeout = 100\n\n[users]\nlg_md5 = query_wait_timeout=0.5")
        let holder = try lifeguard.connect()
        try holder.query("BEGIN")
        let waiter = try lifeguard.connect()
        #expect(throws: PGConnection.Failure.self) { try waiter.query("SELECT 1") }
        try holder.query("COMMIT")
    }

    @Test func perDatabaseServerLifetime() throws {
        let lifeguard = try LifeguardProcess(
            settings: "server_lifetime = 3600\ndefault_pool_size = 1",
            databases: "lgtest = {PG} server_lifetime=0")
        let client = try lifeguard.connect()
        let first = client.backendPID
        // server_lifetime=0 uses each server once.
        #expect(waitUntil { client.backendPID != first })
    }

    @Test func serverConnectTimeoutWhenTheServerNeverAnswers() throws {
        // A listening socket that never accepts: connect succeeds (backlog), the login never completes.
        let blackhole = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(blackhole) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let port = freePort()
        address.sin_port = UInt16(port).bigEndian
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(blackhole, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        listen(blackhole, 16)
        let lifeguard = try LifeguardProcess(
            settings: "server_connect_timeout = 0.5\nauth_type = trust\nclient_login_timeout = 2",
            databases: "lgtest = host=127.0.0.1 port=\(port)")
        let start = Date()
        // The waiting client is not failed by the server's timeout (PgBouncer's test_server_connect_timeout_*):
        // it waits for the retry until its own timeout, and a client that comes meanwhile gets the cached error.
        #expect(lifeguard.loginFailure(user: "lg_trust", password: nil).contains("client_login_timeout"))
        #expect(Date().timeIntervalSince(start) < 5)
        #expect(lifeguard.log.contains("closing because: connect timeout"))
        #expect(lifeguard.loginFailure(user: "lg_trust", password: nil)
            .contains("server login has been failing, cached error: connect timeout (server_login_retry)"))
    }
}
}

extension IntegrationTests.TimeoutTests {
    @Test func idleServerIsCheckedBeforeReuse() throws {
        let lifeguard = try LifeguardProcess(settings: "server_check_delay = 0.3\nadmin_users = lg_md5")
        let client = try lifeguard.connect()
        _ = try client.value("SELECT 1")
        usleep(500_000)
        let console = try lifeguard.connect(database: "pgbouncer")
        let pool = try console.records("SHOW POOLS").first { $0["database"] == .some("lgtest") }
        #expect(pool?["sv_used"] == .some("1"))
        // The default check is an empty query; the server passes it and serves the client.
        #expect(try client.value("SELECT 2") == "2")
    }

    @Test func serverFailingItsCheckIsReplaced() throws {
        let lifeguard = try LifeguardProcess(settings: "server_check_delay = 0.3\nserver_check_query = 'SELECT 1/0'")
        let client = try lifeguard.connect()
        let first = client.backendPID
        usleep(500_000)
        let second = client.backendPID
        #expect(second != nil && second != first)
        #expect(lifeguard.log.contains("server check query failed"))
    }
}

extension IntegrationTests.TimeoutTests {
    @Test func serverFastCloseEndsSessionsOnReconnect() throws {
        let lifeguard = try LifeguardProcess(settings: "pool_mode = session\nserver_fast_close = 1\nadmin_users = lg_md5")
        let client = try lifeguard.connect()
        _ = try client.value("SELECT 1")
        try lifeguard.connect(database: "pgbouncer").query("RECONNECT lgtest")
        usleep(600_000)
        do {
            _ = try client.value("SELECT 1")
            Issue.record("session kept its server after RECONNECT with server_fast_close")
        } catch let failure as PGConnection.Failure {
            #expect(failure.message.contains("database configuration changed"))
        }
        #expect(try lifeguard.connect().value("SELECT 2") == "2")
    }
}

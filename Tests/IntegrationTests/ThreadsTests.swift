import Dispatch
import Foundation
import Glibc
import NIOConcurrencyHelpers
import Testing

/// Several engine threads (`threads`): one set of pools and limits for the whole process, servers moving
/// to the thread whose clients wait, cancel requests and the console reaching every thread.
extension IntegrationTests {
@Suite struct ThreadsTests {
    /// Runs `rounds` queries on each of `clients` concurrent clients; returns the backends they saw and
    /// what failed.
    private func run(
        _ lifeguard: LifeguardProcess, clients: Int, rounds: Int, sql: String = "SELECT pg_backend_pid()"
    ) -> (backends: Set<String>, failures: [String]) {
        let backends = NIOLockedValueBox<Set<String>>([])
        let failures = NIOLockedValueBox<[String]>([])
        DispatchQueue.concurrentPerform(iterations: clients) { index in
            do {
                let connection = try lifeguard.connect()
                for _ in 0..<rounds {
                    let pid = try connection.value(sql)
                    backends.withLockedValue { _ = $0.insert(pid ?? "") }
                }
            } catch {
                failures.withLockedValue { $0.append("client \(index): \(error)") }
            }
        }
        return (backends.withLockedValue { $0 }, failures.withLockedValue { $0 })
    }

    @Test func fourThreadsShareOnePoolSizeAndOneMaxClientConn() throws {
        let lifeguard = try LifeguardProcess(settings: "threads = 4\ndefault_pool_size = 3\nmax_client_conn = 40")
        let (backends, failures) = run(lifeguard, clients: 40, rounds: 15)
        #expect(failures == [])
        #expect(backends.count >= 1 && backends.count <= 3, "\(backends.count) backends for a pool of 3")

        let held = try (0..<40).map { _ in try lifeguard.connect() }
        #expect(lifeguard.loginFailure().contains("no more connections allowed (max_client_conn)"))
        #expect(try held.last!.value("SELECT 1") == "1")
    }

    /// A client hangs up and a new one connects at once, at max_client_conn or a per-user client limit: the
    /// newcomer gets in, as with one thread, though its login may be read on one thread before the hang-up
    /// is handled on the other (PgBouncer suite's test_max_client_conn with threads = 2 failed on this).
    @Test(arguments: ["max_client_conn = 3", "max_user_client_connections = 3"])
    func aClientReconnectingAtAClientLimitGetsIn(limit: String) throws {
        let lifeguard = try LifeguardProcess(settings: "threads = 2\n\(limit)")
        var held = try (0..<2).map { _ in try lifeguard.connect() }
        var refusals: [String] = []
        for _ in 0..<500 {
            do {
                // Closed (Terminate, then the socket) as it goes out of scope.
                _ = try lifeguard.connect().value("SELECT 1")
            } catch {
                refusals.append("\(error)")
            }
        }
        #expect(refusals == [], "\(refusals.count) of 500 reconnections refused")
        held.append(try lifeguard.connect())
        #expect(lifeguard.loginFailure().contains("client_conn"), "the limit no longer holds")
    }

    /// With one server for two threads, the server moves to whichever thread has a waiting client: clients
    /// on both threads are served, and PostgreSQL sees a single backend.
    @Test func aPoolOfOneServesClientsOnEveryThread() throws {
        let lifeguard = try LifeguardProcess(settings: "threads = 2\ndefault_pool_size = 1")
        let (backends, failures) = run(lifeguard, clients: 12, rounds: 30)
        #expect(failures == [])
        #expect(backends.count == 1, "\(backends.count) backends for a pool of 1")
    }

    /// At max_user_connections the one server the user may have moves between threads too: a client of the
    /// thread without it used to wait forever, since only a pool full by its own size asked the others.
    @Test func aUserLimitOfOneServesClientsOnEveryThread() throws {
        let lifeguard = try LifeguardProcess(settings: "threads = 2\nmax_user_connections = 1")
        let holder = try lifeguard.connect()
        let held = Background { try? holder.value("SELECT pg_sleep(0.5)::text") }
        usleep(100_000)
        let waiters = (0..<6).map { index in
            Background { try? lifeguard.connect().value("SELECT \(index)") }
        }
        #expect(held.finished(within: 10))
        for (index, waiter) in waiters.enumerated() {
            #expect(waiter.finished(within: 10))
            #expect(waiter.result == "\(index)")
        }
    }

    /// One client after another, landing on either thread, all run on the one server the first opened: a
    /// thread takes another thread's idle server before opening one, as a single-threaded pooler reuses its
    /// idle server (PgBouncer suite's test_server_check_query_default).
    @Test func anIdleServerOnAnotherThreadIsReusedBeforeANewOneIsOpened() throws {
        let lifeguard = try LifeguardProcess(settings: "threads = 2")
        var pids: Set<String> = []
        for _ in 0..<8 {
            let client = try lifeguard.connect()
            pids.insert(try client.value("SELECT pg_backend_pid()") ?? "")
        }
        #expect(pids.count == 1, "\(pids.count) backends for clients that never overlapped")
    }

    /// A transaction keeps its server while the server's other clients, on other threads, wait.
    @Test func aTransactionKeepsItsServerWhileClientsOnOtherThreadsWait() throws {
        let lifeguard = try LifeguardProcess(settings: "threads = 2\ndefault_pool_size = 1")
        let holder = try lifeguard.connect()
        try holder.query("BEGIN")
        let pid = try holder.value("SELECT pg_backend_pid()")
        let others = (0..<6).map { _ in Background { try? lifeguard.connect().value("SELECT pg_backend_pid()") } }
        #expect(others.allSatisfy { !$0.finished(within: 0.1) }, "a client got a server while the only one was in a transaction")
        #expect(try holder.value("SELECT pg_backend_pid()") == pid)
        try holder.query("COMMIT")
        for other in others {
            #expect(other.finished(within: 10))
            #expect(other.result == pid)
        }
    }

    /// A server freed by a reply that has a FATAL right behind it, in the same read, while another client
    /// waits: the FATAL is read as the idle server's (it closes) before the server goes to anyone, and the
    /// waiting client gets a new one. Before, the server went to the waiting client first, which then got
    /// the FATAL; and with two threads, a server moved at once to a client of the other thread was closed in
    /// transit by the old thread, and the new one crashed adopting it (found by scripts/chaos.sh with
    /// threads = 2). Each round's waiter lands on either thread.
    @Test(arguments: [1, 2])
    func aFatalBehindTheLastReplyClosesTheServerBeforeAnyoneGetsIt(threads: Int) throws {
        let relay = try FatalAfterMarkerRelay(targetPort: TestEnvironment.postgresPort!, marker: "fatal_after_this")
        let lifeguard = try LifeguardProcess(
            settings: "threads = \(threads)\ndefault_pool_size = 1",
            databases: "lgtest = host=127.0.0.1 port=\(relay.port)")
        for round in 0..<8 {
            let holder = try lifeguard.connect()
            let waiter = try lifeguard.connect()
            let held = Background { try? holder.value("SELECT pg_sleep(0.3)::text || 'fatal_after_this'") }
            usleep(100_000)
            let waited = Background<String> {
                do { return try waiter.value("SELECT \(round)") } catch { return "\(error)" }
            }
            #expect(held.finished(within: 10))
            #expect(held.result == "fatal_after_this", "round \(round)")
            #expect(waited.finished(within: 10))
            #expect(waited.result == "\(round)", "round \(round): the waiting client was not served")
            #expect(lifeguard.isRunning)
        }
    }

    /// Cancel requests arrive on any thread; each reaches its query whichever thread its client is on.
    @Test func cancelRequestsReachQueriesOnEveryThread() throws {
        let lifeguard = try LifeguardProcess(settings: "threads = 2\ndefault_pool_size = 8")
        let clients = try (0..<6).map { _ in try lifeguard.connect() }
        let sleeps = clients.map { client in
            Background<String> {
                do {
                    _ = try client.query("SELECT pg_sleep(30)")
                    return "not cancelled"
                } catch let failure as PGConnection.Failure {
                    return failure.sqlState ?? "no SQLSTATE"
                } catch {
                    return "\(error)"
                }
            }
        }
        usleep(500_000)
        for client in clients { #expect(client.cancel()) }
        for sleep in sleeps {
            #expect(sleep.finished(within: 10))
            #expect(sleep.result == "57014")
        }
    }

    @Test func theConsoleListsAndControlsEveryThread() throws {
        let lifeguard = try LifeguardProcess(
            settings: "threads = 3\ndefault_pool_size = 4\nadmin_users = lg_md5")
        let clients = try (0..<9).map { _ in try lifeguard.connect() }
        for client in clients { _ = try client.value("SELECT 1") }
        let console = try lifeguard.connect(database: "pgbouncer")
        let listed = try console.records("SHOW CLIENTS").filter { $0["database"] == .some("lgtest") }
        #expect(listed.count == 9)
        let pools = try console.records("SHOW POOLS").filter { $0["database"] == .some("lgtest") }
        #expect(pools.count == 1, "one row per pool, whatever the threads")
        #expect(pools.first?["cl_active"] == .some("9"))
        let stats = try console.records("SHOW STATS").first { $0["database"] == .some("lgtest") }
        #expect(stats?["total_xact_count"] == .some("9"))

        // KILL reaches the clients of every thread.
        try console.query("KILL lgtest")
        for client in clients {
            #expect(throws: PGConnection.Failure.self) { try client.value("SELECT 1") }
        }
        try console.query("RESUME lgtest")
        #expect(try lifeguard.connect().value("SELECT 2") == "2")
    }
}
}

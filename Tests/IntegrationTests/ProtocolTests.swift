import Dispatch
import Foundation
import Glibc
import Testing

/// Protocol features a pooler must carry through untouched: cancel, COPY, large results, errors, extended queries.
extension IntegrationTests {
@Suite struct ProtocolTests {
    /// A client that sends its first query with the startup packet, without waiting for the login to finish
    /// (PostgreSQL queues it): with trust the login completes inside that one read, and the query after it
    /// must still be answered, not dropped with the rest of the startup buffer.
    @Test func aQuerySentWithTheStartupPacketIsAnswered() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        let socket = try RawSocket(port: lifeguard.port)
        let sql = Array("SELECT 'early'".utf8) + [0]
        let length = UInt32(4 + sql.count)
        let query = [UInt8(ascii: "Q")] + withUnsafeBytes(of: length.bigEndian) { Array($0) } + sql
        socket.send(RawSocket.startupMessage([("user", "lg_trust"), ("database", "lgtest")]) + query)
        let early = Array("early".utf8)
        let received = socket.read { bytes in
            bytes.count >= 6 && bytes.suffix(6).first == UInt8(ascii: "Z")
                && bytes.indices.contains { bytes[$0...].starts(with: early) }
        }
        #expect(received.indices.contains { received[$0...].starts(with: early) }, "the query was not answered")
    }

    @Test func cancelRequestStopsARunningQuery() throws {
        let lifeguard = try LifeguardProcess()
        let client = try lifeguard.connect()
        let started = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            started.signal()
            usleep(300_000)
            _ = client.cancel()
        }
        started.wait()
        let start = Date()
        do {
            try client.query("SELECT pg_sleep(20)")
            Issue.record("pg_sleep was not cancelled")
        } catch let failure as PGConnection.Failure {
            #expect(failure.sqlState == "57014")
        }
        #expect(Date().timeIntervalSince(start) < 10)
        #expect(try client.value("SELECT 'still usable'") == "still usable")
    }

    @Test func copyInAndOutGoThroughTheTransactionPool() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        try client.query("DROP TABLE IF EXISTS copy_test; CREATE TABLE copy_test (id int, name text)")
        let lines = (1...5000).map { "\($0)\tname \($0)" }
        try client.copyIn("COPY copy_test FROM STDIN", lines: lines)
        // Another client in between: the server went back to the pool after COPY finished.
        let other = try lifeguard.connect()
        #expect(try other.value("SELECT count(*) FROM copy_test") == "5000")
        let out = try client.copyOut("COPY (SELECT * FROM copy_test ORDER BY id) TO STDOUT")
        #expect(out == lines)
        try client.query("DROP TABLE copy_test")
    }

    /// A CopyData message far larger than any read streams through: Lifeguard's peak memory stays well
    /// below its size.
    @Test func largeCopyDataIsNotHeldWhole() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        try client.query("DROP TABLE IF EXISTS copy_large; CREATE TABLE copy_large (body text)")
        let peakBefore = lifeguard.peakResidentKilobytes
        try client.copyIn("COPY copy_large FROM STDIN", lines: [String(repeating: "z", count: 48 << 20)])
        let growth = lifeguard.peakResidentKilobytes - peakBefore
        #expect(growth < 16 << 10, "peak memory grew by \(growth) kB")
        #expect(try client.value("SELECT length(body) FROM copy_large") == "\(48 << 20)")
        try client.query("DROP TABLE copy_large")
    }

    /// With tcp_socket_buffer small (PgBouncer's suite runs with 4096), a large result still streams at
    /// full speed to psql. One send bigger than the socket buffer left a single segment in flight, which
    /// psql's side acknowledged only after its delayed-ACK timer: 64 KiB per 40 ms, so these 30 MB took
    /// 7 to 13 s (and pg_basebackup through Lifeguard timed out); now they take well under one. The bound
    /// is several times that, to catch the crawl, not to measure speed.
    @Test func aLargeResultStreamsToPsqlWithSmallSocketBuffers() throws {
        let lifeguard = try LifeguardProcess(settings: "tcp_socket_buffer = 4096")
        let psql = Process()
        psql.executableURL = URL(fileURLWithPath: "/usr/bin/psql")
        psql.arguments = [
            "-X", "-q", lifeguard.conninfo(),
            "-c", "COPY (SELECT repeat('x', 1000) FROM generate_series(1, 30000)) TO STDOUT",
        ]
        psql.standardOutput = FileHandle.nullDevice
        let started = Date()
        try psql.run()
        psql.waitUntilExit()
        let seconds = Date().timeIntervalSince(started)
        #expect(psql.terminationStatus == 0)
        #expect(seconds < 4, "30 MB took \(seconds) s")
    }

    /// libpq's pipeline mode sends a Sync right after the COPY's Execute, which the server ignores once the
    /// COPY has begun: the server must still go back to the pool afterwards (it was closed as "client
    /// disconnect while server was not ready", waiting for a ReadyForQuery that never comes).
    @Test(arguments: ["transaction", "statement"])
    func pipelinedCopyFromStdinReturnsTheServerToThePool(mode: String) throws {
        let lifeguard = try LifeguardProcess(settings: "pool_mode = \(mode)\ndefault_pool_size = 1")
        do {
            let client = try lifeguard.connect()
            try client.query("CREATE TEMP TABLE copy_pipelined (line text)")
            #expect(try client.pipelinedCopyIn("COPY copy_pipelined FROM STDIN", lines: ["a", "b"]) == "COPY 2")
            #expect(try client.value("SELECT 1") == "1")
        }
        // The one server serves the next client at once, and nothing was closed mid-query.
        #expect(try lifeguard.connect().value("SELECT 2") == "2")
        #expect(waitUntil { lifeguard.log.contains("closing because: client close request") })
        #expect(!lifeguard.log.contains("server was not ready"))
    }

    /// COPY errors before and after the data is done, in transaction and session mode: the client keeps a
    /// working connection and the server goes back to the pool clean.
    @Test(arguments: ["transaction", "session"])
    func copyErrorsLeaveTheConnectionUsable(mode: String) throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1\npool_mode = \(mode)")
        try lifeguard.connect().query("DROP TABLE IF EXISTS copy_errors; CREATE TABLE copy_errors (id int)")
        do {
            let client = try lifeguard.connect()
            // The client gives up: CopyFail.
            let failed = #expect(throws: PGConnection.Failure.self) {
                try client.copyIn("COPY copy_errors FROM STDIN", lines: ["1", "2"], failure: "changed my mind")
            }
            #expect(failed?.sqlState == "57014")
            // The server rejects the data once CopyDone arrives.
            let rejected = #expect(throws: PGConnection.Failure.self) {
                try client.copyIn("COPY copy_errors FROM STDIN", lines: ["3", "not a number"])
            }
            #expect(rejected?.sqlState == "22P02")
            // The server rejects the COPY before any data: no such table.
            #expect(throws: PGConnection.Failure.self) { try client.copyIn("COPY no_such_table FROM STDIN", lines: []) }
            #expect(try client.query("SELECT count(*) FROM copy_errors", parameters: []).first?[0] == "0")
            try client.copyIn("COPY copy_errors FROM STDIN", lines: ["4"])
            #expect(try client.copyOut("COPY copy_errors TO STDOUT") == ["4"])
        }
        // The only server came back clean (session mode: once that client left).
        let after = try lifeguard.connect()
        #expect(try after.value("SELECT sum(id) FROM copy_errors") == "4")
        try after.query("DROP TABLE copy_errors")
    }

    /// A console SET of verbose applies to logging at once. A client's DateStyle=ISO is set on its server
    /// once: PostgreSQL reports no change for it (its current "ISO, MDY" is the same style), so the client
    /// takes that spelling and its next query needs no SET (PgBouncer's varcache_apply/varcache_set_canonical).
    @Test func aValueThatIsAnotherSpellingOfTheServersIsSetOnce() throws {
        let lifeguard = try LifeguardProcess(settings: "admin_users = lg_md5\ndefault_pool_size = 1")
        _ = try lifeguard.connect().value("SELECT 1")  // the pool's server, with PostgreSQL's DateStyle
        let console = try lifeguard.connect(database: "pgbouncer")
        try console.query("SET verbose = 1")
        let client = try lifeguard.connect(extra: "options='-c DateStyle=ISO'")
        #expect(try client.value("SELECT 1") == "1")
        #expect(try client.value("SHOW DateStyle") == "ISO, MDY")
        #expect(waitUntil { lifeguard.log.contains("varcache_set_canonical: setting DateStyle to its canonical version ISO -> ISO, MDY") })
        #expect(lifeguard.log.components(separatedBy: "varcache_apply: SET DateStyle='ISO'").count == 2, "set once")
        try console.query("SET verbose = 0")
        let logged = lifeguard.log.count
        _ = try lifeguard.connect(extra: "options='-c DateStyle=German'").value("SELECT 1")
        #expect(!lifeguard.log.dropFirst(logged).contains("varcache_apply"), "no DEBUG line at verbose = 0")
    }

    @Test func largeResultArrivesWhole() throws {
        let lifeguard = try LifeguardProcess()
        let client = try lifeguard.connect()
        let rows = try client.query("SELECT i, repeat('x', 100) FROM generate_series(1, 200000) AS i")
        #expect(rows.count == 200_000)
        #expect(rows.last?.first == "200000")
    }

    @Test func errorsInsideATransactionKeepTheServerUntilRollback() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        try client.query("BEGIN")
        #expect(throws: PGConnection.Failure.self) { try client.query("SELECT 1/0") }
        do {
            try client.query("SELECT 1")
            Issue.record("aborted transaction accepted a query")
        } catch let failure as PGConnection.Failure {
            #expect(failure.sqlState == "25P02")
        }
        try client.query("ROLLBACK")
        let other = try lifeguard.connect()
        #expect(try other.value("SELECT 2") == "2")
        #expect(try client.value("SELECT 3") == "3")
    }

    @Test func extendedProtocolQueriesWorkInTransactionMode() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 2")
        let clients = try (0..<4).map { _ in try lifeguard.connect() }
        for round in 0..<25 {
            for (index, client) in clients.enumerated() {
                let rows = try client.query("SELECT $1::int + $2::int", parameters: ["\(round)", "\(index)"])
                #expect(rows.first?.first == "\(round + index)")
            }
        }
    }

    @Test func clientVanishingMidTransactionNeverLeaksItToAnotherClient() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let setup = try lifeguard.connect()
        try setup.query("DROP TABLE IF EXISTS vanish_test; CREATE TABLE vanish_test (x int)")
        do {
            let doomed = try lifeguard.connect()
            try doomed.query("BEGIN")
            try doomed.query("INSERT INTO vanish_test VALUES (1)")
            // PQfinish sends Terminate mid-transaction; the server must not be handed on as it is.
        }
        let next = try lifeguard.connect()
        #expect(try next.value("SELECT count(*) FROM vanish_test") == "0")
        #expect(try next.value("SELECT txid_current_if_assigned() IS NULL") == "t")
        try next.query("DROP TABLE vanish_test")
    }
}
}

extension IntegrationTests.ProtocolTests {
    /// Parse/Bind/Execute/Flush without Sync leave an implicit transaction open on the server; a client that
    /// leaves then must not hand that transaction to the next client.
    @Test func clientLeavingBeforeSyncNeverLeaksItsImplicitTransaction() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust\ndefault_pool_size = 1")
        let setup = try lifeguard.connect(user: "lg_trust", password: nil)
        try setup.query("DROP TABLE IF EXISTS unsynced_test; CREATE TABLE unsynced_test (x int)")
        do {
            let socket = try RawSocket(port: lifeguard.port)
            socket.send(RawSocket.startupMessage([("user", "lg_trust"), ("database", "lgtest")]))
            _ = socket.read { $0.count >= 6 && $0.suffix(6).first == UInt8(ascii: "Z") }
            let insert = Array("INSERT INTO unsynced_test VALUES (1)".utf8)
            socket.send(
                RawSocket.message("P", [0] + insert + [0, 0, 0])  // unnamed statement, no parameter types
                    + RawSocket.message("B", [0, 0, 0, 0, 0, 0, 0, 0])  // unnamed portal and statement, no formats/params
                    + RawSocket.message("E", [0, 0, 0, 0, 0])
                    + RawSocket.message("H"))
            // ParseComplete, BindComplete, CommandComplete arrive; no ReadyForQuery, as no Sync was sent.
            _ = socket.read { $0.contains(UInt8(ascii: "C")) }
            socket.send(RawSocket.message("X"))
            socket.close()
        }
        usleep(100_000)
        let next = try lifeguard.connect(user: "lg_trust", password: nil)
        #expect(try next.value("SELECT count(*) FROM unsynced_test") == "0")
        #expect(try TestEnvironment.direct().value("SELECT count(*) FROM unsynced_test") == "0")
        try next.query("DROP TABLE unsynced_test")
    }
}

extension IntegrationTests.ProtocolTests {
    /// A Flush that arrives after ReadyForQuery released the server (psycopg ends pipelines with Sync then
    /// Flush) asks for nothing: it must not take a server back and keep it from every other client.
    @Test func flushAfterTheTransactionEndedTakesNoServer() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust\ndefault_pool_size = 1\nquery_wait_timeout = 3")
        let socket = try RawSocket(port: lifeguard.port)
        socket.send(RawSocket.startupMessage([("user", "lg_trust"), ("database", "lgtest")]))
        _ = socket.read { $0.count >= 6 && $0.suffix(6).first == UInt8(ascii: "Z") }
        let select = Array("SELECT 1".utf8)
        socket.send(
            RawSocket.message("P", [0] + select + [0, 0, 0]) + RawSocket.message("B", [0, 0, 0, 0, 0, 0, 0, 0])
                + RawSocket.message("E", [0, 0, 0, 0, 0]) + RawSocket.message("S"))
        _ = socket.read { $0.count >= 6 && $0.suffix(6).first == UInt8(ascii: "Z") }
        usleep(50_000)  // the ReadyForQuery has released the only server
        socket.send(RawSocket.message("H"))
        usleep(100_000)
        let other = try lifeguard.connect(user: "lg_trust", password: nil)
        #expect(try other.value("SELECT 'served'") == "served", "\(lifeguard.log)")
        // The client that sent the Flush still works.
        socket.send(RawSocket.message("Q", Array("SELECT 2".utf8) + [0]))
        let reply = socket.read { $0.count >= 6 && $0.suffix(6).first == UInt8(ascii: "Z") }
        #expect(reply.contains(UInt8(ascii: "D")))
    }
}

extension IntegrationTests.ProtocolTests {
    /// A server whose client sent a cancel is not lent to anyone else until the cancel connection is done, so a
    /// late cancel cannot hit the next client's query (PgBouncer's being_canceled).
    @Test func serverWaitsForItsCancelBeforeServingAnotherClient() throws {
        let relay = try CancelHoldingRelay(targetPort: TestEnvironment.postgresPort!)
        let lifeguard = try LifeguardProcess(
            settings: "default_pool_size = 1\ncancel_wait_timeout = 2\nadmin_users = lg_md5",
            databases: "lgtest = host=127.0.0.1 port=\(relay.port)")
        let first = try lifeguard.connect()
        _ = try first.value("SELECT 1")
        // The cancel is held by the relay; the query finishes on its own and the server is released.
        let running = Background { try? first.value("SELECT pg_sleep(0.5)") }
        usleep(200_000)
        let cancel = Background { first.cancel() }
        #expect(running.finished(within: 5))
        let console = try lifeguard.connect(database: "pgbouncer")
        let parked = try console.records("SHOW POOLS").first { $0["database"] == .some("lgtest") }
        #expect(parked?["sv_being_canceled"] == .some("1"), "\(lifeguard.log)")
        // The next client waits until cancel_wait_timeout gives up on the cancel.
        let start = Date()
        let second = try lifeguard.connect()
        #expect(try second.value("SELECT 'served'") == "served")
        #expect(Date().timeIntervalSince(start) >= 1)
        #expect(cancel.finished(within: 5))
        _ = relay
    }
}

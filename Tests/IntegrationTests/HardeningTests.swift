import Foundation
import Glibc
import LifeguardCore
import Testing

/// A hostile client or server must not crash Lifeguard, poison another client's statements, inject SQL or
/// log lines, or make Lifeguard hold memory. Each test fails on the binary before the fix it guards.
extension IntegrationTests {
@Suite struct HardeningTests {
    private static let trustConsole = "auth_type = trust\nadmin_users = lg_trust"

    /// Logs in over a raw socket (trust) and returns the socket, positioned after the first ReadyForQuery.
    private func loggedInSocket(
        _ lifeguard: LifeguardProcess, database: String = "lgtest", receiveBuffer: Int32? = nil
    ) throws -> RawSocket {
        let socket = try RawSocket(port: lifeguard.port, receiveBuffer: receiveBuffer)
        socket.send(RawSocket.startupMessage([("user", "lg_trust"), ("database", database)]))
        let welcome = socket.read { bytes in bytes.count >= 6 && bytes.suffix(6).first == UInt8(ascii: "Z") }
        try #require(welcome.contains(UInt8(ascii: "K")), "no welcome: \(welcome)")
        return socket
    }

    private func expectStillServing(_ lifeguard: LifeguardProcess, sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(lifeguard.isRunning, sourceLocation: sourceLocation)
        let client = try lifeguard.connect(user: "lg_trust", password: nil)
        #expect(try client.value("SELECT 'alive'") == "alive", sourceLocation: sourceLocation)
    }

    private static func cString(_ text: String) -> [UInt8] { Array(text.utf8) + [0] }

    /// Parse of `query` as statement `name`, no parameter types.
    private static func parse(_ name: String, _ query: String) -> [UInt8] {
        RawSocket.message("P", cString(name) + cString(query) + [0, 0])
    }

    private static func query(_ sql: String) -> [UInt8] { RawSocket.message("Q", cString(sql)) }

    // MARK: Hostile clients

    /// A Bind whose length field is near 2^31, of a statement renamed to a longer server name: the renamed
    /// length does not fit Int32. Only that client goes.
    @Test func bindHeadNearTheLengthLimitClosesOnlyThatClient() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        let socket = try loggedInSocket(lifeguard)
        socket.send(Self.parse("a", "SELECT 1") + [0x42, 0x7F, 0xFF, 0xFF, 0xF6, 0x00, 0x61, 0x00])
        let (bytes, closed) = socket.readUntilClosed()
        #expect(closed)
        #expect(RawSocket.errorMessage(in: bytes)?.message.hasPrefix("packet too large") == true)
        try expectStillServing(lifeguard)
    }

    /// Before login, a password message announcing 2 GB is refused at its header, not buffered.
    @Test func passwordMessageBeforeLoginIsCapped() throws {
        let lifeguard = try LifeguardProcess()
        let socket = try RawSocket(port: lifeguard.port)
        socket.send(RawSocket.startupMessage([("user", "lg_md5"), ("database", "lgtest")]))
        _ = socket.read { $0.first == UInt8(ascii: "R") && $0.count >= 13 }
        // Only a little of the body: bytes Lifeguard never reads would turn its close into a reset.
        socket.send([UInt8(ascii: "p"), 0x7F, 0xFF, 0xFF, 0xF0] + [UInt8](repeating: 0x61, count: 1000))
        let (bytes, closed) = socket.readUntilClosed()
        #expect(closed)
        #expect(RawSocket.errorMessage(in: bytes)?.message == "login packet too large: 2147483632 bytes")
        #expect(try lifeguard.connect().value("SELECT 'alive'") == "alive")
        // PgBouncer's longest password (65531 bytes) is still read and judged like any other.
        let clearText = try LifeguardProcess(settings: "auth_type = plain")
        let longest = String(repeating: "a", count: 65_531)
        #expect(clearText.loginFailure(user: "lg_clear", password: longest).contains("password authentication failed"))
    }

    /// One SSLRequest and one GSSENCRequest are answered; a repeated one ends the connection.
    @Test func encryptionRequestsAreAnsweredOnceEach() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        let sslRequest = RawSocket.bigEndian(8) + RawSocket.bigEndian(80_877_103)
        let gssRequest = RawSocket.bigEndian(8) + RawSocket.bigEndian(80_877_104)
        let polite = try RawSocket(port: lifeguard.port)
        polite.send(gssRequest)
        #expect(polite.read { $0.count >= 1 } == [UInt8(ascii: "N")])
        polite.send(sslRequest)
        #expect(polite.read { $0.count >= 1 } == [UInt8(ascii: "N")])
        polite.send(RawSocket.startupMessage([("user", "lg_trust"), ("database", "lgtest")]))
        #expect(polite.read { $0.contains(UInt8(ascii: "Z")) }.contains(UInt8(ascii: "K")))

        let repeating = try RawSocket(port: lifeguard.port)
        repeating.send(sslRequest + sslRequest + sslRequest)
        let (bytes, closed) = repeating.readUntilClosed()
        #expect(closed)
        #expect(bytes.first == UInt8(ascii: "N"))
        #expect(bytes.filter { $0 == UInt8(ascii: "N") }.count == 1)
    }

    /// A client that reads the shared statements' names and replaces one with SQL PREPARE must not change
    /// what another client's Bind runs: the server it touched is not lent again.
    @Test func sqlPrepareCannotPoisonSharedStatements() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let attacker = try lifeguard.connect()
        try attacker.prepare("mine", "SELECT 'good'::text")
        #expect(try attacker.execPrepared("mine").first?[0] == "good")
        let name = try #require(
            try attacker.value("SELECT name FROM pg_prepared_statements WHERE statement = 'SELECT ''good''::text'"))
        try attacker.query("DEALLOCATE \"\(name)\"")
        try attacker.query("PREPARE \"\(name)\" AS SELECT 'pwned'::text")

        let victim = try lifeguard.connect()
        try victim.prepare("theirs", "SELECT 'good'::text")
        #expect(try victim.execPrepared("theirs").first?[0] == "good")
        #expect(lifeguard.log.contains("SQL PREPARE or DEALLOCATE ran while prepared statements are shared"))
    }

    /// Startup parameter values are replayed as string literals: neither a `;` nor a backslash-quote under
    /// standard_conforming_strings = off ends them.
    @Test func startupParameterValuesNeverRunAsSQL() throws {
        let direct = try TestEnvironment.direct()
        try direct.query("DROP TABLE IF EXISTS lg_injected_1; DROP TABLE IF EXISTS lg_injected_2")
        let lifeguard = try LifeguardProcess(
            settings: "auth_type = trust\ndefault_pool_size = 1\ntrack_extra_parameters = search_path")
        /// Runs a query as a client with `parameters`; returns the error it got, if any.
        func runQuery(with parameters: [(String, String)]) throws -> String? {
            let socket = try RawSocket(port: lifeguard.port)
            socket.send(RawSocket.startupMessage([("user", "lg_trust"), ("database", "lgtest")] + parameters))
            _ = socket.read { $0.count >= 6 && $0.suffix(6).first == UInt8(ascii: "Z") }
            socket.send(Self.query("SELECT 1"))
            let reply = socket.read { $0.count >= 6 && $0.suffix(6).first == UInt8(ascii: "Z") }
            return RawSocket.errorMessage(in: reply)?.message
        }
        // PostgreSQL refuses this value as a search_path list, as it would in its own startup packet.
        #expect(try runQuery(with: [("search_path", "public; CREATE TABLE lg_injected_1(); --")])?
            .hasPrefix("invalid server parameter") == true)
        // The server is left with standard_conforming_strings off, where '\'' no longer ends a literal.
        #expect(try runQuery(with: [("standard_conforming_strings", "off")]) == nil)
        #expect(try runQuery(with: [("application_name", #"x\'; CREATE TABLE lg_injected_2(); --"#)]) == nil)
        #expect(try direct.value("SELECT to_regclass('lg_injected_1') IS NULL AND to_regclass('lg_injected_2') IS NULL") == "t")
        try direct.query("DROP TABLE IF EXISTS lg_injected_1; DROP TABLE IF EXISTS lg_injected_2")
    }

    /// A user name with a newline cannot start a forged log line.
    @Test func controlCharactersInClientTextAreEscapedInTheLog() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        let forged = "2026-01-01 00:00:00.000 UTC [1] LOG forged line"
        let socket = try RawSocket(port: lifeguard.port)
        socket.send(RawSocket.startupMessage([("user", "lg_trust\n" + forged), ("database", "lgtest\r\u{85}x")]))
        _ = socket.readUntilClosed()
        #expect(waitUntil { lifeguard.log.contains("forged line") })
        let lines = lifeguard.log.split(separator: "\n")
        #expect(!lines.contains { $0.hasPrefix(forged) })
        #expect(lifeguard.log.contains("lg_trust\\n" + forged))
        #expect(lifeguard.log.contains("lgtest\\r\\x85x"))
    }

    /// Too many statement names for one client: the client goes with an error, Lifeguard stays small.
    @Test func perClientStatementMapIsBounded() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        let socket = try loggedInSocket(lifeguard)
        var batch: [UInt8] = []
        for index in 0...10_000 { batch += Self.parse("s\(index)", "SELECT 1") }
        socket.send(batch + RawSocket.message("S"))
        let (bytes, closed) = socket.readUntilClosed()
        #expect(closed)
        #expect(RawSocket.errorMessage(in: bytes)?.message == "too many prepared statements for one client")
        try expectStillServing(lifeguard)
    }

    // MARK: Clients that do not read

    /// A client closed on an error while it does not read (its FATAL cannot be written) is still closed,
    /// and the server it held goes to the next client.
    @Test func closingAClientThatDoesNotReadFreesItsServer() throws {
        let lifeguard = try LifeguardProcess(settings: Self.trustConsole + "\ndefault_pool_size = 1")
        let stalled = try loggedInSocket(lifeguard)
        stalled.send(Self.query("SELECT repeat('x', 1000) FROM generate_series(1, 300000)"))
        usleep(1_000_000)  // Lifeguard's buffers towards the client fill up
        let console = try lifeguard.connect(user: "lg_trust", password: nil, database: "pgbouncer")
        let id = try #require(
            try console.records("SHOW CLIENTS").first { $0["database"] == .some("lgtest") }?["id"] ?? nil)
        try console.query("KILL_CLIENT \(id)")
        let next = Background<String> {
            try? lifeguard.connect(user: "lg_trust", password: nil).value("SELECT 'served'")
        }
        #expect(next.finished(within: 8))
        #expect(next.result == "served")
    }

    /// Replies Lifeguard gives itself (ParseComplete of a statement the server has, CloseComplete) do not
    /// pile up for a client that sends without Sync and does not read: they queue behind the first Parse's
    /// reply, which the server holds until a Flush; Lifeguard asks for it and stops reading meanwhile.
    @Test func localRepliesWaitForAClientThatDoesNotRead() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        let socket = try loggedInSocket(lifeguard, receiveBuffer: 64 << 10)
        let parseAndClose = Self.parse("x", "SELECT 1") + RawSocket.message("C", [UInt8(ascii: "S")] + Self.cString("x"))
        let before = lifeguard.residentKilobytes
        let sent = socket.sendUntilStalled(Array([[UInt8]](repeating: parseAndClose, count: 2_000_000).joined()))
        let growth = lifeguard.residentKilobytes - before
        #expect(sent < 32_000_000, "Lifeguard read all \(sent) bytes")
        #expect(growth < 20 << 10, "resident memory grew by \(growth) kB")
        socket.close()
        try expectStillServing(lifeguard)
    }

    /// Console output likewise waits for a console client that does not read.
    @Test func consoleOutputWaitsForAClientThatDoesNotRead() throws {
        let lifeguard = try LifeguardProcess(settings: Self.trustConsole)
        let socket = try loggedInSocket(lifeguard, database: "pgbouncer", receiveBuffer: 64 << 10)
        let before = lifeguard.residentKilobytes
        // More commands than the kernel's socket buffers hold, each with about 15 kB of output.
        let show = Self.query("SHOW CONFIG")
        let count = 1_000_000
        let sent = socket.sendUntilStalled(Array([[UInt8]](repeating: show, count: count).joined()))
        let growth = lifeguard.residentKilobytes - before
        #expect(sent < show.count * count, "Lifeguard read all \(sent) bytes")
        #expect(growth < 20 << 10, "resident memory grew by \(growth) kB")
        socket.close()
        try expectStillServing(lifeguard)
    }

    // MARK: Console

    /// Commands sent after a PAUSE that waits for servers run after its reply, in order.
    @Test func deferredPauseHoldsTheCommandsAfterIt() throws {
        let lifeguard = try LifeguardProcess(settings: Self.trustConsole)
        let busy = try lifeguard.connect(user: "lg_trust", password: nil)
        try busy.query("BEGIN")
        let console = try loggedInSocket(lifeguard, database: "pgbouncer")
        console.send(Self.query("PAUSE lgtest") + Self.query("SHOW VERSION"))
        usleep(500_000)
        // Nothing may come while the PAUSE waits: not even the SHOW VERSION behind it.
        #expect(console.pendingByteCount == 0)
        try busy.query("COMMIT")
        let replies = console.read { bytes in bytes.filter { $0 == UInt8(ascii: "Z") }.count >= 2 && bytes.last == UInt8(ascii: "I") }
        let text = String(decoding: replies, as: UTF8.self)
        let pauseTag = try #require(text.range(of: "PAUSE"))
        let versionRow = try #require(text.range(of: "version"))
        #expect(pauseTag.lowerBound < versionRow.lowerBound, "\(text)")
        let control = try lifeguard.connect(user: "lg_trust", password: nil, database: "pgbouncer")
        try control.query("RESUME lgtest")
    }

    /// An over-long console command closes the session instead of being buffered and parsed.
    @Test func consoleCommandLengthIsBounded() throws {
        let lifeguard = try LifeguardProcess(settings: Self.trustConsole)
        let socket = try loggedInSocket(lifeguard, database: "pgbouncer")
        // The header announces 100 kB; only a little follows (unread bytes would turn the close into a reset).
        socket.send([UInt8(ascii: "Q")] + RawSocket.bigEndian(100_004) + Array("SHOW VERSION".utf8))
        let (bytes, closed) = socket.readUntilClosed()
        #expect(closed)
        #expect(RawSocket.errorMessage(in: bytes)?.message.hasPrefix("console command too long") == true)
    }

    /// A clear-text password checked against a userlist SCRAM secret costs a PBKDF2 of the userlist's
    /// iteration count: it runs off the event loop, so other clients are served meanwhile.
    @Test func clearTextPasswordAgainstSCRAMSecretDoesNotBlockOthers() throws {
        // Calibrated so that the slow check takes about two seconds on this machine and build.
        let probeIterations = 20_000
        let probeStart = Date()
        _ = SCRAMSecret.derive(password: "slowpass", salt: Array("calibration".utf8), iterations: probeIterations)
        let perIteration = max(Date().timeIntervalSince(probeStart), 0.001) / Double(probeIterations)
        let iterations = min(Int(2.0 / perIteration), 20_000_000)
        let secret = SCRAMSecret.derive(password: "slowpass", salt: Array("lifeguard-salt".utf8), iterations: iterations)
        let lifeguard = try LifeguardProcess(
            settings: "auth_type = plain\nadmin_users = lg_slow, lg_fast",
            userList: "\"lg_slow\" \"\(secret.encoded)\"\n\"lg_fast\" \"fastpass\"")

        let slowStart = Date()
        let slow = Background<String> {
            let console = try? lifeguard.connect(user: "lg_slow", password: "slowpass", database: "pgbouncer")
            return (try? console?.value("SHOW VERSION")) != nil ? "in" : "refused"
        }
        usleep(200_000)
        let fastStart = Date()
        let fast = try lifeguard.connect(user: "lg_fast", password: "fastpass", database: "pgbouncer")
        _ = try fast.value("SHOW VERSION")
        let fastSeconds = Date().timeIntervalSince(fastStart)
        #expect(slow.finished(within: 60))
        let slowSeconds = Date().timeIntervalSince(slowStart)
        #expect(slow.result == "in")
        #expect(slowSeconds > 1, "the check was expected to take seconds, took \(slowSeconds)")
        #expect(fastSeconds < slowSeconds / 3, "a plain login took \(fastSeconds) s beside a \(slowSeconds) s check")
        let wrong = lifeguard.loginFailure(user: "lg_slow", password: "wrongpass", database: "pgbouncer")
        #expect(wrong.contains("password authentication failed"))
    }

    // MARK: Hostile servers

    /// A server's huge ErrorResponse streams to the client, it is not assembled in Lifeguard's memory.
    @Test func largeServerErrorIsNotCopiedWhole() throws {
        let lifeguard = try LifeguardProcess(settings: "default_pool_size = 1")
        let client = try lifeguard.connect()
        let peakBefore = lifeguard.peakResidentKilobytes
        let failure = #expect(throws: PGConnection.Failure.self) {
            try client.query("DO $$ BEGIN RAISE EXCEPTION '%', repeat('e', 48 << 20); END $$")
        }
        #expect(failure?.message.count ?? 0 > 48 << 20)
        let growth = lifeguard.peakResidentKilobytes - peakBefore
        #expect(growth < 16 << 10, "peak memory grew by \(growth) kB")
        #expect(try client.value("SELECT 'after'") == "after")
    }

    /// A server asking for two billion PBKDF2 iterations is refused at once instead of freezing Lifeguard.
    @Test func hugeSCRAMIterationCountIsRefused() throws {
        let server = try FakePostgres { nonce in
            FakePostgres.authentication(code: 11, Array("r=\(nonce)abc,s=AQIDBA==,i=2000000000".utf8))
        }
        let lifeguard = try LifeguardProcess(databases: "fake = host=127.0.0.1 port=\(server.port)")
        defer { lifeguard.kill() }  // a binary without the limit would be stuck hashing
        let start = Date()
        let error = lifeguard.loginFailure(user: "lg_clear", password: "clearpass", database: "fake")
        #expect(error.contains("SCRAM iteration count 2000000000 is above the limit"), "\(error)")
        #expect(Date().timeIntervalSince(start) < 5)
    }

    /// A server that says AuthenticationOk before SCRAM is done never proved it knows the password.
    @Test func authenticationOkBeforeSCRAMEndsIsRefused() throws {
        let server = try FakePostgres { _ in
            FakePostgres.authentication(code: 0) + RawSocket.message("S", Self.cString("server_version") + Self.cString("15.0"))
                + RawSocket.message("K", RawSocket.bigEndian(1) + RawSocket.bigEndian(2)) + RawSocket.message("Z", [UInt8(ascii: "I")])
        }
        let lifeguard = try LifeguardProcess(databases: "fake = host=127.0.0.1 port=\(server.port)")
        let error = lifeguard.loginFailure(user: "lg_clear", password: "clearpass", database: "fake")
        #expect(error.contains("server sent AuthenticationOk before completing SCRAM"), "\(error)")
    }

    /// A client killed after half a message reached its server: that server is closed, never lent again.
    @Test func serverThatGotHalfAMessageIsClosedWhenItsClientIsKilled() throws {
        let lifeguard = try LifeguardProcess(settings: Self.trustConsole + "\ndefault_pool_size = 1")
        let socket = try loggedInSocket(lifeguard)
        socket.send([UInt8(ascii: "Q"), 0, 0, 0, 100] + Array("SELECT".utf8))
        usleep(300_000)
        let console = try lifeguard.connect(user: "lg_trust", password: nil, database: "pgbouncer")
        let id = try #require(
            try console.records("SHOW CLIENTS").first { $0["database"] == .some("lgtest") }?["id"] ?? nil)
        try console.query("KILL_CLIENT \(id)")
        #expect(socket.readUntilClosed().closed)
        try expectStillServing(lifeguard)
    }
}
}

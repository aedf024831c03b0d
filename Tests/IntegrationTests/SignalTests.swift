import Dispatch
import Foundation
import Glibc
import Testing

extension IntegrationTests {
/// PgBouncer's signals, sent to the real process.
@Suite struct SignalTests {
    /// systemd's `Type=notify`: READY=1 once listening, RELOADING=1 (with MONOTONIC_USEC) and READY=1 around a
    /// SIGHUP reload, STOPPING=1 when SIGTERM starts the shutdown, each a datagram to $NOTIFY_SOCKET.
    /// `abstract`: `@name` in Linux's abstract socket namespace, as systemd may pass it, instead of a path.
    @Test(arguments: [false, true])
    func systemdHearsReadyReloadingAndStopping(abstract: Bool) throws {
        let name = "lifeguard-notify-\(UUID().uuidString.prefix(8))"
        let path = abstract ? "@" + name : FileManager.default.temporaryDirectory.appendingPathComponent(name).path
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer {
            close(fd)
            if !abstract { unlink(path) }
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = abstract ? [0] + Array(name.utf8) : Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes) }
        // An abstract name is exactly its bytes long; a path ends at its NUL.
        let length = abstract ? MemoryLayout<sa_family_t>.size + pathBytes.count : MemoryLayout<sockaddr_un>.size
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(length)) }
        }
        try #require(bound == 0)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        func nextMessage() -> String? {
            var buffer = [UInt8](repeating: 0, count: 512)
            let count = recv(fd, &buffer, buffer.count, 0)
            return count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : nil
        }

        let lifeguard = try LifeguardProcess(environment: ["NOTIFY_SOCKET": path])
        #expect(nextMessage()?.hasPrefix("READY=1") == true)
        kill(lifeguard.pid, SIGHUP)
        let reloading = nextMessage() ?? ""
        #expect(reloading.hasPrefix("RELOADING=1\nMONOTONIC_USEC="), "\(reloading)")
        #expect(nextMessage()?.hasPrefix("READY=1") == true)
        kill(lifeguard.pid, SIGTERM)
        #expect(nextMessage() == "STOPPING=1")
    }

    private func start() throws -> LifeguardProcess {
        try LifeguardProcess(settings: "admin_users = lg_md5\ndefault_pool_size = 2")
    }

    private func stateValue(_ lifeguard: LifeguardProcess, _ key: String) throws -> String? {
        let console = try lifeguard.connect(database: "pgbouncer")
        return try console.query("SHOW STATE").first { $0[0] == key }?[1] ?? nil
    }

    @Test func sighupReloadsTheConfiguration() throws {
        let lifeguard = try start()
        let ini = lifeguard.directory.appendingPathComponent("lifeguard.ini")
        let text = try String(contentsOf: ini, encoding: .utf8)
        try text.replacingOccurrences(of: "default_pool_size = 2", with: "default_pool_size = 6")
            .write(to: ini, atomically: true, encoding: .utf8)
        kill(lifeguard.pid, SIGHUP)
        let reloaded = waitUntil {
            let console = try? lifeguard.connect(database: "pgbouncer")
            let rows = (try? console?.records("SHOW DATABASES")) ?? []
            return rows.contains { $0["name"] == .some("lgtest") && $0["pool_size"] == .some("6") }
        }
        #expect(reloaded)
        #expect(lifeguard.log.contains("got SIGHUP, re-reading config"))
    }

    @Test func sigusr1PausesAndSigusr2Resumes() throws {
        let lifeguard = try start()
        kill(lifeguard.pid, SIGUSR1)
        #expect(waitUntil { (try? stateValue(lifeguard, "paused")) == "yes" })
        kill(lifeguard.pid, SIGUSR2)
        #expect(waitUntil { (try? stateValue(lifeguard, "active")) == "yes" })
        #expect(try lifeguard.connect().value("SELECT 1") == "1")
    }

    @Test func sigtermWaitsForClientsThenExits() throws {
        let lifeguard = try start()
        var client: PGConnection? = try lifeguard.connect()
        #expect(try client?.value("SELECT 1") == "1")
        kill(lifeguard.pid, SIGTERM)
        usleep(300_000)
        #expect(lifeguard.isRunning, "exited while a client was connected")
        #expect(throws: PGConnection.Failure.self) { try lifeguard.connect() }  // no longer listening on TCP
        #expect(try client?.value("SELECT 2") == "2", "the connected client is still served")
        client = nil
        #expect(waitUntil { !lifeguard.isRunning })
    }

    @Test func secondSigtermExitsAtOnce() throws {
        let lifeguard = try start()
        let client = try lifeguard.connect()
        _ = try client.value("SELECT 1")
        kill(lifeguard.pid, SIGTERM)
        usleep(200_000)
        #expect(lifeguard.isRunning)
        kill(lifeguard.pid, SIGTERM)
        #expect(waitUntil { !lifeguard.isRunning })
    }

    @Test func sigintWaitsForServersToBeReleased() throws {
        let lifeguard = try start()
        let client = try lifeguard.connect()
        try client.query("BEGIN")
        kill(lifeguard.pid, SIGINT)
        usleep(300_000)
        #expect(lifeguard.isRunning, "exited with a transaction in progress")
        try client.query("COMMIT")
        #expect(waitUntil { !lifeguard.isRunning })
    }

    @Test func aClientThatWouldWaitForAServerDuringSigintIsClosed() throws {
        // query_wait_timeout bounds the wait should the client be queued instead.
        let lifeguard = try LifeguardProcess(settings: "pool_mode = transaction\nquery_wait_timeout = 5")
        let inTransaction = try lifeguard.connect()
        let idle = try lifeguard.connect()
        try inTransaction.query("BEGIN")
        kill(lifeguard.pid, SIGINT)
        usleep(300_000)
        // A new transaction would wait for a server the shutdown waits to see released: PgBouncer refuses it.
        #expect(performing: { _ = try idle.value("SELECT 1") }, throws: { error in
            (error as? PGConnection.Failure)?.message.contains("server shutting down") == true
        })
        #expect(lifeguard.log.contains("closing because: server shutting down"))
        #expect(lifeguard.isRunning)
        try inTransaction.query("COMMIT")
        #expect(waitUntil { !lifeguard.isRunning })
    }

    @Test func consoleShutdownExitsWithoutReply() throws {
        let lifeguard = try start()
        let console = try lifeguard.connect(database: "pgbouncer")
        #expect(throws: PGConnection.Failure.self) { try console.query("SHUTDOWN") }
        #expect(waitUntil { !lifeguard.isRunning })
    }

    @Test func consoleShutdownWaitForClientsWaits() throws {
        let lifeguard = try start()
        var client: PGConnection? = try lifeguard.connect()
        _ = try client?.value("SELECT 1")
        let console = try lifeguard.connect(database: "pgbouncer")
        try console.query("SHUTDOWN WAIT_FOR_CLIENTS")
        usleep(300_000)
        #expect(lifeguard.isRunning)
        // A resume cannot undo a shutdown (PgBouncer's test_sigusr2_during_shutdown).
        kill(lifeguard.pid, SIGUSR2)
        #expect(waitUntil { lifeguard.log.contains("got SIGUSR2 while shutting down, ignoring") })
        #expect(lifeguard.isRunning)
        client = nil
        #expect(waitUntil { !lifeguard.isRunning })
    }

    @Test func statsLineIsLoggedEveryPeriod() throws {
        let lifeguard = try LifeguardProcess(settings: "stats_period = 1")
        let client = try lifeguard.connect()
        for _ in 0..<5 { _ = try client.value("SELECT 1") }
        #expect(waitUntil { lifeguard.log.contains("LOG stats: ") })
        #expect(lifeguard.log.contains(" xacts/s, ") && lifeguard.log.contains(" queries/s, "))
    }

    @Test func sighupReopensTheLogFileForRotation() throws {
        let lifeguard = try LifeguardProcess(settings: "logfile = {DIR}/rotating.log")
        let logfile = lifeguard.directory.appendingPathComponent("rotating.log").path
        let rotated = logfile + ".1"
        #expect(waitUntil { FileManager.default.fileExists(atPath: logfile) })
        try FileManager.default.moveItem(atPath: logfile, toPath: rotated)
        kill(lifeguard.pid, SIGHUP)
        #expect(waitUntil { (try? String(contentsOfFile: logfile, encoding: .utf8))?.contains("configuration reloaded") == true })
    }

    @Test func exitTellsWaitingClientsWhyClosesIdleOnesQuietlyAndClosesServers() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        func loggedInSocket() throws -> RawSocket {
            let socket = try RawSocket(port: lifeguard.port)
            socket.send(RawSocket.startupMessage([("user", "lg_trust"), ("database", "lgtest")]))
            _ = socket.read { $0.count >= 6 && $0.suffix(6).first == UInt8(ascii: "Z") }
            return socket
        }
        let idle = try loggedInSocket()
        let waiting = try loggedInSocket()
        waiting.send(RawSocket.message("Q", Array("SELECT pg_sleep(3)".utf8) + [0]))
        let direct = try TestEnvironment.direct()
        #expect(waitUntil {
            (try? direct.value("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(3)'")) == "1"
        })
        kill(lifeguard.pid, SIGQUIT)
        // PgBouncer's exit says nothing to an idle client: its next query fails with "server closed the
        // connection unexpectedly", which scripts written for PgBouncer look for.
        let (idleBytes, idleClosed) = idle.readUntilClosed()
        #expect(idleClosed)
        #expect(idleBytes.isEmpty)
        // A client waiting for an answer learns why none comes.
        let (waitingBytes, waitingClosed) = waiting.readUntilClosed()
        #expect(waitingClosed)
        #expect(RawSocket.errorMessage(in: waitingBytes)?.message == "pooler is shutting down")
        #expect(waitUntil { !lifeguard.isRunning })
        // The busy backend reads its Terminate once the sleep is over.
        #expect(waitUntil(10) {
            (try? direct.value("SELECT count(*) FROM pg_stat_activity WHERE usename = 'lg_trust'")) == "0"
        })
    }

    @Test func sigquitExitsAtOnce() throws {
        let lifeguard = try start()
        let client = try lifeguard.connect()
        try client.query("BEGIN")
        kill(lifeguard.pid, SIGQUIT)
        #expect(waitUntil { !lifeguard.isRunning })
    }
}
}

import Dispatch
import Foundation
import Glibc
import Testing

/// Replication connections (`replication=true|database`) through Lifeguard: each gets a server of its own,
/// opened with the client's startup parameters, counted in the pool and closed when the client leaves.
extension IntegrationTests {
@Suite struct ReplicationTests {
    /// Trust logins as postgres, whom the test cluster lets replicate; `transaction` mode, which a
    /// replication connection overrides (it is session-pooled).
    private func lifeguard(_ settings: String = "") throws -> LifeguardProcess {
        // Physical replication clients such as pg_basebackup ask for the database `replication`.
        try LifeguardProcess(
            settings: "auth_type = trust\n" + settings,
            databases: "lgtest = {PG}\nreplication = {PG} dbname=replication")
    }

    private func replicationInfo(_ lifeguard: LifeguardProcess, mode: String, extra: String = "") -> String {
        lifeguard.conninfo(user: "postgres", password: nil, extra: "replication=\(mode) \(extra)")
    }

    /// Walsenders of PostgreSQL, by application_name.
    private func walsenders(named name: String) throws -> Int {
        let direct = try TestEnvironment.direct()
        let count = try direct.value(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name = '\(name)'")
        return Int(count ?? "") ?? -1
    }

    @Test func aLogicalReplicationConnectionRunsWithTheClientsOwnParameters() throws {
        let lifeguard = try lifeguard()
        let client = try PGConnection(replicationInfo(
            lifeguard, mode: "database", extra: "application_name=lg_logical options='-c enable_seqscan=off'"))
        let system = try client.query("IDENTIFY_SYSTEM")
        #expect(system.first?[3] == "lgtest", "IDENTIFY_SYSTEM names the database of a logical connection")
        // Set in the server's startup packet: `options` passes as it is, any GUC in it.
        #expect(try client.value("SHOW application_name") == "lg_logical")
        #expect(try client.value("SHOW enable_seqscan") == "off")
        #expect(try walsenders(named: "lg_logical") == 1)
        // An ordinary client of the same pool is unaffected, and never gets the walsender.
        let ordinary = try lifeguard.connect(user: "postgres", password: nil)
        #expect(try ordinary.value("SELECT pg_backend_pid() <> 0") == "t")
        #expect(try ordinary.value("SHOW enable_seqscan") == "on")
        #expect(try client.query("IDENTIFY_SYSTEM").count == 1)

        let log = lifeguard.log
        #expect(!log.contains("unsupported startup parameter"))
    }

    @Test func aPhysicalReplicationConnectionIsAWalSender() throws {
        let lifeguard = try lifeguard()
        let client = try PGConnection(replicationInfo(lifeguard, mode: "true", extra: "application_name=lg_physical"))
        #expect(try client.query("IDENTIFY_SYSTEM").first?[3] == nil, "a physical connection has no database")
        #expect(throws: PGConnection.Failure.self) { try client.query("SELECT 1") }
        #expect(try walsenders(named: "lg_physical") == 1)
    }

    /// The server is never given to anyone else: it closes when its client leaves.
    @Test func theServerClosesWhenItsClientLeaves() throws {
        let lifeguard = try lifeguard()
        do {
            let client = try PGConnection(replicationInfo(lifeguard, mode: "database", extra: "application_name=lg_leaving"))
            _ = try client.query("IDENTIFY_SYSTEM")
            #expect(try walsenders(named: "lg_leaving") == 1)
        }
        #expect(waitUntil { (try? walsenders(named: "lg_leaving")) == 0 })
        #expect(waitUntil { lifeguard.log.contains("closing because: replication client was closed") })
    }

    /// PostgreSQL refusing the replication login fails only that client, with PgBouncer's words; the
    /// server's own reason is in the log.
    @Test func aRefusedReplicationLoginFailsOnlyItsClient() throws {
        let lifeguard = try lifeguard()
        let ordinary = try lifeguard.connect(user: "lg_trust", password: nil)
        #expect(try ordinary.value("SELECT 1") == "1")
        // lg_trust has no REPLICATION attribute.
        let info = lifeguard.conninfo(user: "lg_trust", password: nil, extra: "replication=database")
        #expect(throws: PGConnection.Failure.self) { try PGConnection(info) }
        do {
            _ = try PGConnection(info)
        } catch {
            #expect("\(error)".contains("login failed"))
        }
        #expect(lifeguard.log.contains("server login failed: FATAL must be superuser or replication role"))
        // As in PgBouncer, the server's close is logged before its client's, so both are in the log by the
        // time the client has its error (PgBouncer's suite reads the log then and counts two).
        let closes = lifeguard.log.split(separator: "\n").filter { $0.contains("closing because: login failed") }
        #expect(closes.map { $0.contains(" S-") ? "server" : $0.contains(" C-") ? "client" : "?" }
            == ["server", "client", "server", "client"])
        // The pool's ordinary clients keep working, with no cached login error.
        #expect(try ordinary.value("SELECT 2") == "2")
        #expect(try lifeguard.connect(user: "lg_trust", password: nil).value("SELECT 3") == "3")
    }

    @Test func anInvalidReplicationValueIsRefusedWithPostgreSQLsWords() throws {
        let lifeguard = try lifeguard()
        do {
            _ = try PGConnection(replicationInfo(lifeguard, mode: "maybe"))
            Issue.record("replication=maybe was accepted")
        } catch {
            #expect("\(error)".contains("invalid value for parameter \"replication\": \"maybe\""))
        }
    }

    /// A replication connection counts in pool_size: at a full pool it closes an idle server to make room,
    /// and a second one waits until the first leaves.
    @Test func replicationConnectionsCountInThePoolSize() throws {
        let lifeguard = try lifeguard("default_pool_size = 1\nthreads = 1")
        let ordinary = try lifeguard.connect(user: "postgres", password: nil)
        #expect(try ordinary.value("SELECT 1") == "1")
        var first: PGConnection? = try PGConnection(
            replicationInfo(lifeguard, mode: "database", extra: "application_name=lg_first"))
        #expect(lifeguard.log.contains("closing because: evicted for pool_size"))
        let second = Background<String> {
            do {
                return try PGConnection(
                    self.replicationInfo(lifeguard, mode: "database", extra: "application_name=lg_second")
                ).query("IDENTIFY_SYSTEM").first?[3] ?? "no row"
            } catch {
                return "\(error)"
            }
        }
        #expect(!second.finished(within: 0.5), "a second replication connection passed pool_size = 1")
        #expect(try first?.query("IDENTIFY_SYSTEM").count == 1)
        first = nil
        #expect(second.finished(within: 10))
        #expect(second.result == "lgtest")
    }

    /// pg_basebackup through Lifeguard: its two replication connections (the base backup and the WAL
    /// stream) run side by side.
    @Test func pgBasebackupCopiesTheClusterThroughLifeguard() throws {
        let lifeguard = try lifeguard("tcp_socket_buffer = 4096")
        let target = lifeguard.directory.appendingPathComponent("basebackup")
        let backup = Process()
        backup.executableURL = URL(fileURLWithPath: "/usr/bin/pg_basebackup")
        backup.arguments = [
            "--dbname", lifeguard.conninfo(user: "postgres", password: nil), "--checkpoint=fast",
            "--pgdata", target.path,
        ]
        backup.standardError = FileHandle.nullDevice
        try backup.run()
        let finished = Background<Bool> {
            backup.waitUntilExit()
            return true
        }
        if !finished.finished(within: 60) {
            Issue.record("pg_basebackup did not finish in 60 s")
            backup.terminate()
            backup.waitUntilExit()
        }
        #expect(backup.terminationStatus == 0)
        #expect(FileManager.default.fileExists(atPath: target.appendingPathComponent("PG_VERSION").path))
    }
}
}

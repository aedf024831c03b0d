import Foundation
import Glibc
import Testing

/// Client logins through a real Lifeguard against a real PostgreSQL, for every auth_type.
extension IntegrationTests {
@Suite struct AuthenticationTests {
    @Test(arguments: ["md5", "scram-sha-256", "plain"])
    func passwordAuthTypesAcceptRightAndRejectWrongPasswords(authType: String) throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = \(authType)")
        // Each role logs in to PostgreSQL with a different method (md5, SCRAM, clear text).
        for (user, password) in [("lg_md5", "md5pass"), ("lg_scram", "scrampass"), ("lg_clear", "clearpass")] {
            let connection = try lifeguard.connect(user: user, password: password)
            #expect(try connection.value("SELECT current_user") == user)
            #expect(throws: PGConnection.Failure.self) {
                try lifeguard.connect(user: user, password: "wrong")
            }
        }
    }

    /// auth_user/auth_query: a user missing from auth_file logs in with the password PostgreSQL holds for it,
    /// looked up by auth_user (the superuser here, trusted over TCP by the test cluster).
    @Test func authQueryLogsInUsersMissingFromTheUserList() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_user = postgres", userList: "\"postgres\" \"\"")
        #expect(try lifeguard.connect(user: "lg_md5", password: "md5pass").value("SELECT current_user") == "lg_md5")
        // A SCRAM secret: the client is asked for SCRAM, and the server login passes its keys through.
        #expect(try lifeguard.connect(user: "lg_scram", password: "scrampass").value("SELECT current_user") == "lg_scram")
        #expect(lifeguard.loginFailure(user: "lg_md5", password: "wrong").contains("password authentication failed"))
        #expect(lifeguard.loginFailure(user: "lg_nobody", password: "x").contains("no such user"))
        // lg_trust has no password (NULL), so it cannot log in with one.
        #expect(lifeguard.loginFailure(user: "lg_trust", password: "x").contains("password authentication failed"))
        // The user name is a parameter of the query, never part of its text.
        #expect(lifeguard.loginFailure(user: "lg_md5'--", password: "md5pass").contains("no such user"))
    }

    /// Each lookup opens a connection to PostgreSQL: at most the auth pool's size run at once (per thread),
    /// so a flood of logins cannot open unbounded connections.
    @Test func authQueryLookupsAreBoundedByTheAuthPoolSize() throws {
        let lifeguard = try LifeguardProcess(
            settings: """
                auth_user = postgres
                default_pool_size = 1
                auth_query = SELECT usename, passwd FROM pg_shadow, pg_sleep(0.3) WHERE usename = $1
                """,
            userList: "\"postgres\" \"\"")
        let logins = (0..<4).map { _ in
            Background { try? lifeguard.connect(user: "lg_md5", password: "md5pass").value("SELECT 'in'") }
        }
        let direct = try TestEnvironment.direct()
        var most = 0
        let deadline = Date().addingTimeInterval(10)
        while logins.contains(where: { !$0.finished(within: 0) }), Date() < deadline {
            let running = try direct.value("""
                SELECT count(*) FROM pg_stat_activity
                WHERE query LIKE '%pg_sleep(0.3)%' AND state = 'active' AND pid <> pg_backend_pid()
                """)
            most = max(most, Int(running ?? "") ?? 0)
            usleep(30_000)
        }
        #expect(logins.allSatisfy { $0.finished(within: 5) && $0.result == "in" })
        #expect(most >= 1, "no lookup was seen running")
        #expect(most <= Int(TestEnvironment.threads) ?? 1)
    }

    /// A client that leaves while its lookup waits for a slot costs no lookup: queued ones are dropped, so
    /// connecting and leaving cannot pile up work for PostgreSQL.
    @Test func aLookupQueuedForAClientThatLeftNeverRuns() throws {
        // One thread: the lookup slots are per thread, and the leavers must queue behind the first client.
        let lifeguard = try LifeguardProcess(
            settings: """
                threads = 1
                auth_user = postgres
                default_pool_size = 1
                auth_query = SELECT usename, passwd FROM pg_shadow, pg_sleep(0.5) WHERE usename = $1
                """,
            userList: "\"postgres\" \"\"")
        let first = Background { try? lifeguard.connect(user: "lg_md5", password: "md5pass").value("SELECT 'in'") }
        usleep(100_000)
        for _ in 0..<3 {
            let leaver = try RawSocket(port: lifeguard.port)
            leaver.send(RawSocket.startupMessage([("user", "lg_md5"), ("database", "lgtest")]))
            usleep(50_000)
            leaver.close()
        }
        #expect(first.finished(within: 5) && first.result == "in")
        let direct = try TestEnvironment.direct()
        var seen = 0
        for _ in 0..<20 {
            let running = try direct.value("""
                SELECT count(*) FROM pg_stat_activity
                WHERE query LIKE '%pg_sleep(0.5)%' AND state = 'active' AND pid <> pg_backend_pid()
                """)
            seen = max(seen, Int(running ?? "") ?? 0)
            usleep(50_000)
        }
        #expect(seen == 0, "a lookup ran for a client that had left")
    }

    @Test func authQueryNeedsAConfiguredEnabledAuthDatabaseAndAWorkingQuery() throws {
        let unconfigured = try LifeguardProcess(
            settings: "auth_user = postgres\nauth_dbname = lg_nowhere", userList: "\"postgres\" \"\"")
        #expect(unconfigured.loginFailure().contains("bouncer config error"))
        #expect(unconfigured.log.contains("authentication database \"lg_nowhere\" is not configured"))

        let disabled = try LifeguardProcess(
            settings: "auth_user = postgres\nauth_dbname = lgbench\nadmin_users = lg_admin",
            userList: "\"postgres\" \"\"\n\"lg_admin\" \"adminpass\"")
        try disabled.connect(user: "lg_admin", password: "adminpass", database: "pgbouncer").query("DISABLE lgbench")
        #expect(disabled.loginFailure().contains("authentication database \"lgbench\" is disabled"))

        let broken = try LifeguardProcess(
            settings: "auth_user = postgres\nauth_query = SELECT usename, passwd FROM lg_no_such_table WHERE usename = $1",
            userList: "\"postgres\" \"\"")
        #expect(broken.loginFailure().contains("bouncer config error"))
        #expect(broken.log.contains("relation \"lg_no_such_table\" does not exist"))
    }

    @Test func wrongPasswordGetsPgBouncersMessage() throws {
        let lifeguard = try LifeguardProcess()
        #expect(lifeguard.loginFailure(password: "nope").contains("password authentication failed"))
    }

    /// PgBouncer logs `closing because` before it sends the error, and its test suite reads the log as soon as
    /// the client has failed. Logged once the connection was gone, the line was missing there about one time
    /// in six (test_no_database_auth_user).
    @Test func closingLineIsLoggedBeforeTheClientSeesTheError() throws {
        let lifeguard = try LifeguardProcess(settings: "log_disconnections = 1")
        for attempt in 1...300 {
            _ = lifeguard.loginFailure(password: "nope")
            let logged = lifeguard.log.components(separatedBy: "closing because: password authentication failed").count - 1
            guard logged == attempt else {
                Issue.record("after failed login \(attempt) the log has \(logged) closing lines")
                return
            }
        }
    }

    @Test func unknownUserIsChallengedAndRejectedLikeAWrongPassword() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = scram-sha-256")
        #expect(lifeguard.loginFailure(user: "nobody", password: "x").contains("SASL authentication failed"))
    }

    @Test func trustNeedsAUserlistEntryButNoPassword() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        let connection = try lifeguard.connect(user: "lg_trust", password: nil)
        #expect(try connection.value("SELECT current_user") == "lg_trust")
        #expect(throws: PGConnection.Failure.self) {
            try lifeguard.connect(user: "nobody", password: nil)
        }
    }

    @Test func anyLogsInAsTheDatabasesForcedUser() throws {
        let lifeguard = try LifeguardProcess(
            settings: "auth_type = any", databases: "lgtest = {PG} user=lg_trust")
        let connection = try lifeguard.connect(user: "whoever", password: nil)
        #expect(try connection.value("SELECT current_user") == "lg_trust")
    }

    @Test func md5SecretInUserlistLogsInToAnMD5Server() throws {
        let hash = try TestEnvironment.direct().value("SELECT rolpassword FROM pg_authid WHERE rolname = 'lg_md5'")!
        #expect(hash.hasPrefix("md5"))
        let lifeguard = try LifeguardProcess(userList: "\"lg_md5\" \"\(hash)\"")
        let connection = try lifeguard.connect()
        #expect(try connection.value("SELECT 40 + 2") == "42")
    }

    @Test func scramSecretInUserlistPassesThroughToTheServer() throws {
        // The userlist holds PostgreSQL's own SCRAM secret, so Lifeguard never sees the password: it logs in
        // to the server with the ClientKey recovered from the client's SCRAM proof.
        let secret = try TestEnvironment.direct().value("SELECT rolpassword FROM pg_authid WHERE rolname = 'lg_scram'")!
        #expect(secret.hasPrefix("SCRAM-SHA-256$"))
        let lifeguard = try LifeguardProcess(settings: "auth_type = scram-sha-256", userList: "\"lg_scram\" \"\(secret)\"")
        let connection = try lifeguard.connect(user: "lg_scram", password: "scrampass")
        #expect(try connection.value("SELECT current_user") == "lg_scram")
    }

    @Test func md5AuthTypeUpgradesToSCRAMForAStoredSCRAMSecret() throws {
        let secret = try TestEnvironment.direct().value("SELECT rolpassword FROM pg_authid WHERE rolname = 'lg_scram'")!
        let lifeguard = try LifeguardProcess(settings: "auth_type = md5", userList: "\"lg_scram\" \"\(secret)\"")
        let connection = try lifeguard.connect(user: "lg_scram", password: "scrampass")
        #expect(try connection.value("SELECT 1") == "1")
    }

    @Test func serverLoginFailureReachesTheClientWithTheServersSQLState() throws {
        // Lifeguard accepts the client (trust) but PostgreSQL rejects Lifeguard's password for lg_md5.
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust", userList: "\"lg_md5\" \"not-the-password\"")
        // The pool has no server yet, so the client waits for the first server login and gets its error.
        #expect(lifeguard.loginFailure(password: nil).contains("FATAL:  password authentication failed for user \"lg_md5\""))
        #expect(lifeguard.log.contains("server login failed: FATAL password authentication failed for user \"lg_md5\" (SQLSTATE 28P01)"))
        #expect(lifeguard.log.contains("closing because: password authentication failed for user \"lg_md5\""))
    }

    @Test func unknownDatabaseIsReportedAfterAuthentication() throws {
        let lifeguard = try LifeguardProcess()
        #expect(lifeguard.loginFailure(database: "nosuchdb").contains("no such database: nosuchdb"))
        // Authentication comes first: a wrong password does not learn whether the database exists.
        #expect(lifeguard.loginFailure(password: "wrong", database: "nosuchdb").contains("password authentication failed"))
    }

    @Test func fallbackDatabaseServesAnyDatabaseName() throws {
        let lifeguard = try LifeguardProcess(databases: "* = {PG}")
        let connection = try lifeguard.connect(database: "lgbench")
        #expect(try connection.value("SELECT current_database()") == "lgbench")
    }

    @Test func unixSocketListenerAcceptsClients() throws {
        let lifeguard = try LifeguardProcess()
        let connection = try PGConnection(
            "host=\(lifeguard.directory.path) port=\(lifeguard.port) user=lg_md5 password=md5pass dbname=lgtest")
        #expect(try connection.value("SELECT 7") == "7")
        // PgBouncer's log form for Unix-socket peers: @unix(pid).
        #expect(lifeguard.log.contains("lgtest/lg_md5@unix(\(getpid()))"))
    }

    /// auth_type = hba: the first rule that fits the connection type, database, user and address picks the
    /// method; peer checks the Unix-socket client's system user, through an ident map when the rule names one.
    @Test func hbaRulesPickTheMethodPerLoginAndReloadWithTheConfiguration() throws {
        let systemUser = String(cString: getpwuid(getuid())!.pointee.pw_name)
        let lifeguard = try LifeguardProcess(settings: """
            auth_type = hba
            auth_hba_file = {DIR}/hba.conf
            auth_ident_file = {DIR}/ident.conf
            """)
        let hbaFile = lifeguard.directory.appendingPathComponent("hba.conf")
        try """
            local  all     lg_trust                 peer map=operators
            local  all     lg_md5                   peer
            host   lgtest  lg_md5    127.0.0.1/32   md5
            host   all     lg_trust  127.0.0.0/8    trust
            host   all     lg_clear  127.0.0.1 255.255.255.255  password
            host   all     all       all            reject
            """.write(to: hbaFile, atomically: true, encoding: .utf8)
        try "operators  \(systemUser)  lg_trust\n".write(
            to: lifeguard.directory.appendingPathComponent("ident.conf"), atomically: true, encoding: .utf8)
        kill(lifeguard.pid, SIGHUP)
        #expect(waitUntil { lifeguard.log.contains("configuration reloaded") })

        #expect(try lifeguard.connect().value("SELECT current_user") == "lg_md5")
        #expect(lifeguard.loginFailure(password: "wrong").contains("password authentication failed"))
        #expect(try lifeguard.connect(user: "lg_trust", password: nil).value("SELECT 1") == "1")
        #expect(try lifeguard.connect(user: "lg_clear", password: "clearpass").value("SELECT 1") == "1")
        #expect(lifeguard.loginFailure(user: "lg_scram", password: "scrampass").contains("login rejected"))

        // Over the Unix socket: the system user is mapped to lg_trust, but is not lg_md5.
        let overSocket = "host=\(lifeguard.directory.path)"
        #expect(try lifeguard.connect(user: "lg_trust", password: nil, extra: overSocket).value("SELECT 1") == "1")
        #expect(throws: PGConnection.Failure.self) {
            try lifeguard.connect(extra: overSocket)
        }
        #expect(lifeguard.log.contains("peer authentication failed: the system user is \(systemUser)"))

        try "host all all all trust\n".write(to: hbaFile, atomically: true, encoding: .utf8)
        kill(lifeguard.pid, SIGHUP)
        #expect(waitUntil { (try? lifeguard.connect(user: "lg_scram", password: nil).value("SELECT 1")) == "1" })
    }
}
}

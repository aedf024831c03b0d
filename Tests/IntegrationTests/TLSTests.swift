import Foundation
import Glibc
import Testing

/// A CA, a certificate for "localhost" signed by it (Lifeguard's), and client certificates for lg_md5 and
/// for a user no role has, made with the openssl command for one test and removed with it.
final class TestCertificates {
    let directory: URL

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("lifeguard-tls-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", path("ca.key"), "-out", path("ca.crt"), "-days", "2", "-subj", "/CN=Lifeguard test CA")
        try issue("server", commonName: "localhost", extensions: "subjectAltName=DNS:localhost,IP:127.0.0.1")
        try issue("lg_md5", commonName: "lg_md5")
        try issue("stranger", commonName: "stranger")
        try issue("expired", commonName: "lg_md5", days: -1)
        // libpq refuses a client key others can read.
        for name in ["server", "lg_md5", "stranger", "expired"] { chmod(path("\(name).key"), 0o600) }
    }

    deinit {
        try? FileManager.default.removeItem(at: directory)
    }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// The `client_tls_*` lines for Lifeguard's key, certificate and CA.
    func clientTLSSettings(mode: String) -> String {
        """
        client_tls_sslmode = \(mode)
        client_tls_key_file = \(path("server.key"))
        client_tls_cert_file = \(path("server.crt"))
        client_tls_ca_file = \(path("ca.crt"))
        """
    }

    /// `days`: how long it is valid from now; -1 makes one that expired yesterday.
    private func issue(_ name: String, commonName: String, extensions: String? = nil, days: Int = 2) throws {
        try openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", path("\(name).key"), "-out", path("\(name).csr"), "-subj", "/CN=\(commonName)")
        var arguments = ["x509", "-req", "-in", path("\(name).csr"), "-CA", path("ca.crt"), "-CAkey", path("ca.key"),
            "-CAcreateserial", "-out", path("\(name).crt"), "-days", "\(days)"]
        if let extensions {
            try extensions.write(toFile: path("\(name).ext"), atomically: true, encoding: .utf8)
            arguments += ["-extfile", path("\(name).ext")]
        }
        try openssl(arguments)
    }

    private func openssl(_ arguments: String...) throws { try openssl(arguments) }

    private func openssl(_ arguments: [String]) throws {
        guard try runCommand("/usr/bin/openssl", arguments).status == 0 else {
            throw PGConnection.Failure(message: "openssl \(arguments.joined(separator: " ")) failed")
        }
    }
}

/// Runs a program to its end: its exit status and what it wrote to stdout and stderr.
private func runCommand(_ path: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    return (process.terminationStatus, output)
}

extension IntegrationTests {
/// TLS between clients and Lifeguard (`client_tls_*`), through libpq's sslmodes.
@Suite struct TLSTests {
    @Test func requireAcceptsTLSAndRefusesPlainText() throws {
        let certificates = try TestCertificates()
        let lifeguard = try LifeguardProcess(settings: certificates.clientTLSSettings(mode: "require") + "\nadmin_users = lg_md5")
        let client = try lifeguard.connect(extra: "sslmode=require")
        #expect(try client.value("SELECT 1") == "1")
        #expect(lifeguard.log.contains("login attempt: db=lgtest user=lg_md5 tls=TLSv1.3/"))
        // SHOW CLIENTS names the version and cipher of each TLS client.
        let console = try lifeguard.connect(database: "pgbouncer", extra: "sslmode=require")
        let rows = try console.records("SHOW CLIENTS")
        #expect(!rows.isEmpty && rows.allSatisfy { ($0["tls"] ?? nil)?.hasPrefix("TLSv1.3/") == true })

        do {
            _ = try lifeguard.connect(extra: "sslmode=disable")
            Issue.record("a plain-text login was accepted under client_tls_sslmode = require")
        } catch {
            #expect("\(error)".contains("SSL required"))
        }
        // As PgBouncer, the Unix socket is not held to it.
        let local = try PGConnection(
            "host=\(lifeguard.directory.path) port=\(lifeguard.port) user=lg_md5 password=md5pass dbname=lgtest")
        #expect(try local.value("SELECT 2") == "2")
    }

    @Test func preferServesBothAndVerifyFullChecksLifeguardsCertificate() throws {
        let certificates = try TestCertificates()
        let lifeguard = try LifeguardProcess(settings: certificates.clientTLSSettings(mode: "prefer"))
        #expect(try lifeguard.connect(extra: "sslmode=disable").value("SELECT 1") == "1")
        let verified = try PGConnection(
            "host=localhost port=\(lifeguard.port) user=lg_md5 password=md5pass dbname=lgtest "
                + "sslmode=verify-full sslrootcert=\(certificates.path("ca.crt"))")
        #expect(try verified.value("SELECT 2") == "2")
        #expect(lifeguard.log.contains("tls=TLSv1.3/"))
        // The certificate is for localhost: reached by another name, verify-full refuses it.
        #expect(throws: PGConnection.Failure.self) {
            try PGConnection(
                "hostaddr=127.0.0.1 host=example.invalid port=\(lifeguard.port) user=lg_md5 password=md5pass "
                    + "dbname=lgtest sslmode=verify-full sslrootcert=\(certificates.path("ca.crt"))")
        }
    }

    @Test func verifyCANeedsAClientCertificateFromTheCA() throws {
        let certificates = try TestCertificates()
        let lifeguard = try LifeguardProcess(settings: certificates.clientTLSSettings(mode: "verify-ca"))
        #expect(throws: PGConnection.Failure.self) { try lifeguard.connect(extra: "sslmode=require") }
        let withCertificate = try lifeguard.connect(
            extra: "sslmode=require sslcert=\(certificates.path("lg_md5.crt")) sslkey=\(certificates.path("lg_md5.key"))")
        #expect(try withCertificate.value("SELECT 1") == "1")
        // An expired certificate from the right CA is refused in the handshake.
        #expect(throws: PGConnection.Failure.self) {
            try lifeguard.connect(
                extra: "sslmode=require sslcert=\(certificates.path("expired.crt")) sslkey=\(certificates.path("expired.key"))")
        }
        #expect(waitUntil(3) { lifeguard.log.contains("certificate has expired") })
        #expect(lifeguard.isRunning)
    }

    /// libpq's sslmode=allow (plain first) and psql itself, with verify-full, against client_tls_sslmode = allow.
    @Test func allowServesLibpqAllowAndPsqlVerifyFull() throws {
        let certificates = try TestCertificates()
        let lifeguard = try LifeguardProcess(settings: certificates.clientTLSSettings(mode: "allow") + "\nadmin_users = lg_md5")
        #expect(try lifeguard.connect(extra: "sslmode=allow").value("SELECT 1") == "1")
        let psql = try runCommand("/usr/bin/env", [
            "PGPASSWORD=md5pass", "psql", "-X", "-qAt", "-c", "SELECT 42",
            "host=localhost port=\(lifeguard.port) user=lg_md5 dbname=lgtest sslmode=verify-full "
                + "sslrootcert=\(certificates.path("ca.crt"))",
        ])
        #expect(psql.status == 0 && psql.output == "42\n", "\(psql.output)")
        #expect(lifeguard.log.contains("login attempt: db=lgtest user=lg_md5 tls=TLSv1.3/"))
    }

    /// auth_type = hba: hostssl and hostnossl rules by the connection's TLS, and `cert`, whose user is the
    /// certificate's common name.
    @Test func hbaRulesSeeTLSAndCertChecksTheCommonName() throws {
        let certificates = try TestCertificates()
        try """
            hostssl lgtest lg_md5 127.0.0.1/32 cert
            hostnossl lgtest lg_md5 127.0.0.1/32 reject
            hostssl lgtest lg_scram 127.0.0.1/32 scram-sha-256
            """.write(toFile: certificates.path("hba.conf"), atomically: true, encoding: .utf8)
        let lifeguard = try LifeguardProcess(settings: certificates.clientTLSSettings(mode: "prefer") + """

            auth_type = hba
            auth_hba_file = \(certificates.path("hba.conf"))
            """)
        #expect(try lifeguard.connect(user: "lg_scram", password: "scrampass", extra: "sslmode=require").value("SELECT 1") == "1")
        // With a CA file every mode asks for a client certificate (optionally, below verify-ca), for `cert`.
        let ownCertificate = "sslmode=require sslcert=\(certificates.path("lg_md5.crt")) sslkey=\(certificates.path("lg_md5.key"))"
        #expect(try lifeguard.connect(password: nil, extra: ownCertificate).value("SELECT 2") == "2")
        // A client that presents no certificate has none for `cert` to check.
        do {
            _ = try lifeguard.connect(extra: "sslmode=require")
            Issue.record("cert authentication passed without a certificate")
        } catch {
            #expect("\(error)".contains("certificate authentication failed"))
        }
        do {
            _ = try lifeguard.connect(extra: "sslmode=disable")
            Issue.record("a hostnossl reject rule let a plain-text login in")
        } catch {
            #expect("\(error)".contains("login rejected"))
        }
    }

    /// `auth_type = cert`, or an hba rule's `cert`: no password, the certificate's common name is the user.
    @Test(arguments: ["auth_type = cert", "auth_type = hba"])
    func certAuthenticationTakesTheUserFromTheCertificate(authentication: String) throws {
        let certificates = try TestCertificates()
        try "hostssl all all 127.0.0.1/32 cert\n".write(
            toFile: certificates.path("hba.conf"), atomically: true, encoding: .utf8)
        let lifeguard = try LifeguardProcess(settings: certificates.clientTLSSettings(mode: "verify-full") + """

            \(authentication)
            auth_hba_file = \(certificates.path("hba.conf"))
            """)
        let ownCertificate = "sslmode=require sslcert=\(certificates.path("lg_md5.crt")) sslkey=\(certificates.path("lg_md5.key"))"
        #expect(try lifeguard.connect(password: nil, extra: ownCertificate).value("SELECT 1") == "1")
        let otherCertificate = "sslmode=require sslcert=\(certificates.path("stranger.crt")) sslkey=\(certificates.path("stranger.key"))"
        do {
            _ = try lifeguard.connect(password: nil, extra: otherCertificate)
            Issue.record("a certificate for another name logged in as lg_md5")
        } catch {
            #expect("\(error)".contains("certificate authentication failed"))
        }
        #expect(lifeguard.log.contains("the certificate is for stranger"))
    }

    /// Over TLS, SCRAM-SHA-256-PLUS is offered: libpq's channel_binding=require logs in, proving it sees
    /// Lifeguard's own certificate (tls-server-end-point).
    @Test func scramChannelBindingOverTLS() throws {
        let certificates = try TestCertificates()
        let lifeguard = try LifeguardProcess(
            settings: certificates.clientTLSSettings(mode: "prefer") + "\nauth_type = scram-sha-256")
        let bound = try lifeguard.connect(
            user: "lg_scram", password: "scrampass", extra: "sslmode=require channel_binding=require")
        #expect(try bound.value("SELECT 1") == "1")
        do {
            _ = try lifeguard.connect(user: "lg_scram", password: "scrampass", extra: "sslmode=disable channel_binding=require")
            Issue.record("channel binding without TLS")
        } catch {
            #expect("\(error)".contains("channel binding required"))
        }
    }

    /// PostgreSQL 17's direct TLS (`sslnegotiation=direct`): the client opens with a TLS hello, offering ALPN
    /// "postgresql". libpq 15 cannot, so Python's ssl module plays the client: it logs in and runs a query.
    @Test func directTLSNeedsALPNPostgreSQL() throws {
        let certificates = try TestCertificates()
        let lifeguard = try LifeguardProcess(settings: certificates.clientTLSSettings(mode: "require") + "\nauth_type = trust")
        let script = """
            import socket, ssl, struct, sys
            context = ssl.create_default_context(cafile=sys.argv[2])
            if sys.argv[3]: context.set_alpn_protocols([sys.argv[3]])
            try:
                tls = context.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="localhost")
            except ssl.SSLError as error:
                print("handshake failed:", error); sys.exit(0)
            startup = b"user\\0lg_trust\\0database\\0lgtest\\0\\0"
            tls.sendall(struct.pack("!ii", 8 + len(startup), 196608) + startup)
            query = b"SELECT 40 + 2\\0"
            tls.sendall(b"Q" + struct.pack("!i", 4 + len(query)) + query)
            received = b""
            while received.count(b"Z\\0\\0\\0\\5I") < 2 and (chunk := tls.recv(65536)): received += chunk
            print(tls.version(), tls.selected_alpn_protocol(), received.count(b"Z\\0\\0\\0\\5I"), b"\\0\\0\\0\\x0242" in received)
            print(received[-200:])
            tls.sendall(b"X\\0\\0\\0\\4")
            """
        func run(alpn: String) throws -> String {
            try runCommand("/usr/bin/env", ["python3", "-c", script, "\(lifeguard.port)", certificates.path("ca.crt"), alpn]).output
        }
        // Two ReadyForQuery (after login and after the query) and the row's "42".
        let withALPN = try run(alpn: "postgresql")
        #expect(withALPN.hasPrefix("TLSv1.3 postgresql 2 True"), "\(withALPN)")
        let withoutALPN = try run(alpn: "")
        #expect(withoutALPN.contains("received direct SSL connection request without ALPN protocol negotiation extension"), "\(withoutALPN)")
        let otherALPN = try run(alpn: "http/1.1")
        #expect(otherALPN.contains("handshake failed") && otherALPN.contains("no application protocol"), "\(otherALPN)")
        #expect(lifeguard.log.contains("login attempt: db=lgtest user=lg_trust tls=TLSv1.3/"))
    }

    /// RELOAD reads the key and certificate files again: a new client sees the new certificate, and a client
    /// that connected under the old one keeps its connection.
    @Test func reloadPicksUpANewCertificateWithoutDroppingConnections() throws {
        let first = try TestCertificates()
        let second = try TestCertificates()
        // The files Lifeguard reads: first's certificate now, second's after the swap.
        let install = { (certificates: TestCertificates) in
            for name in ["server.key", "server.crt"] {
                let target = first.path("current-" + name)
                try? FileManager.default.removeItem(atPath: target)
                try FileManager.default.copyItem(atPath: certificates.path(name), toPath: target)
            }
        }
        try install(first)
        let lifeguard = try LifeguardProcess(settings: """
            client_tls_sslmode = prefer
            client_tls_key_file = \(first.path("current-server.key"))
            client_tls_cert_file = \(first.path("current-server.crt"))
            admin_users = lg_md5
            """)
        let verified = { (certificates: TestCertificates) in
            try PGConnection("host=localhost port=\(lifeguard.port) user=lg_md5 password=md5pass dbname=lgtest "
                + "sslmode=verify-full sslrootcert=\(certificates.path("ca.crt"))")
        }
        let early = try verified(first)
        #expect(try early.value("SELECT 1") == "1")
        try install(second)
        _ = try lifeguard.connect(database: "pgbouncer").query("RELOAD")
        #expect(try verified(second).value("SELECT 2") == "2")
        #expect(throws: PGConnection.Failure.self) { try verified(first) }
        #expect(try early.value("SELECT 3") == "3", "the connection made under the old certificate goes on")
    }

    /// With client TLS off, a TLS hello is only a startup packet with an absurd length: refused, nothing more.
    @Test func aTLSHelloToAPlainListenerIsRefused() throws {
        let lifeguard = try LifeguardProcess()
        let socket = try RawSocket(port: lifeguard.port)
        socket.send([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03] + [UInt8](repeating: 0x42, count: 64))
        #expect(socket.readUntilClosed().closed)
        #expect(try lifeguard.connect().value("SELECT 1") == "1")
    }

    /// Bytes sent after an SSLRequest, before any handshake, were never encrypted: a man in the middle may
    /// have put them there, so the connection ends (PostgreSQL's answer, CVE-2021-23214).
    @Test func plainTextAfterTheSSLRequestIsRefused() throws {
        let certificates = try TestCertificates()
        let lifeguard = try LifeguardProcess(settings: certificates.clientTLSSettings(mode: "prefer"))
        let socket = try RawSocket(port: lifeguard.port)
        let sslRequest: [UInt8] = [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F]
        socket.send(sslRequest + RawSocket.startupMessage([("user", "lg_md5"), ("database", "lgtest")]))
        let (reply, closed) = socket.readUntilClosed()
        #expect(closed)
        #expect(reply.first != UInt8(ascii: "S"))
        #expect(String(decoding: reply, as: UTF8.self).contains("received unencrypted data after SSL request"))
        // A TLS hello that breaks off halfway leaves no trace but a closed connection.
        let broken = try RawSocket(port: lifeguard.port)
        broken.send(sslRequest)
        #expect(broken.read { !$0.isEmpty } == [UInt8(ascii: "S")])
        broken.send([0x16, 0x03, 0x01, 0x00, 0x05, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(broken.readUntilClosed().closed)
        #expect(try lifeguard.connect(extra: "sslmode=require").value("SELECT 1") == "1")
    }

    @Test func unusableKeyFilesStopTheStartWithTheReason() throws {
        let certificates = try TestCertificates()
        let directory = certificates.directory
        let ini = """
            [databases]
            lgtest = host=127.0.0.1
            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = \(freePort())
            unix_socket_dir =
            client_tls_sslmode = require
            client_tls_key_file = \(certificates.path("lg_md5.key"))
            client_tls_cert_file = \(certificates.path("server.crt"))
            """
        let file = directory.appendingPathComponent("bad.ini")
        try ini.write(to: file, atomically: true, encoding: .utf8)
        let (status, output) = try runCommand(TestEnvironment.binary, [file.path])
        #expect(status == 1)
        #expect(output.contains("TLS setup failed"))
        #expect(output.contains("lg_md5.key"), "names the key that does not fit")
    }

    // MARK: Lifeguard to PostgreSQL

    /// `[databases]` entries for the cluster by address and by name, and the lines that make Lifeguard verify
    /// its certificate against the cluster's CA.
    private func serverTLSSettings(mode: String, caFile: String? = TestEnvironment.postgresCA) -> String {
        "server_tls_sslmode = \(mode)\nserver_tls_ca_file = \(caFile ?? "")\nadmin_users = lg_md5"
    }

    /// lg_tls may only log in over TLS (scripts/pg-cluster.sh with PG_SSL=1); PostgreSQL trusts it there.
    private static let userList = LifeguardProcess.defaultUserList + "\n\"lg_tls\" \"tlspass\""

    private static let clusterByNameAndAddress =
        "lgtest = {PG}\nbyname = host=localhost port=\(TestEnvironment.postgresPort ?? 0) dbname=lgtest"

    /// Whether the server connection of `client` is encrypted, asked of PostgreSQL.
    private func serverConnectionIsEncrypted(_ client: PGConnection) throws -> Bool {
        try client.value("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == "t"
    }

    @Test(.enabled(if: TestEnvironment.postgresCA != nil))
    func verifyFullReachesPostgreSQLOverTLSByNameAndByAddress() throws {
        let lifeguard = try LifeguardProcess(
            settings: serverTLSSettings(mode: "verify-full"), databases: Self.clusterByNameAndAddress,
            userList: Self.userList)
        for database in ["lgtest", "byname"] {
            let client = try lifeguard.connect(user: "lg_tls", password: "tlspass", database: database)
            #expect(try serverConnectionIsEncrypted(client), "\(database)")
        }
        let servers = try lifeguard.connect(database: "pgbouncer").records("SHOW SERVERS")
        #expect(servers.count == 2 && servers.allSatisfy { ($0["tls"] ?? nil)?.hasPrefix("TLSv1.") == true })
    }

    @Test(.enabled(if: TestEnvironment.postgresCA != nil))
    func preferUsesTLSAndDisableDoesNot() throws {
        let prefer = try LifeguardProcess(settings: serverTLSSettings(mode: "prefer", caFile: nil), userList: Self.userList)
        #expect(try serverConnectionIsEncrypted(prefer.connect(user: "lg_tls", password: "tlspass")))
        let disable = try LifeguardProcess(settings: serverTLSSettings(mode: "disable"), userList: Self.userList)
        #expect(try !serverConnectionIsEncrypted(disable.connect()))
        // PostgreSQL's own refusal reaches the client.
        let refusal = disable.loginFailure(user: "lg_tls", password: "tlspass")
        #expect(refusal.contains("pg_hba.conf rejects connection") && refusal.contains("no encryption"))
    }

    /// A certificate that the configured CA did not sign fails the handshake: the reason is logged and the
    /// client waits for a server, as after a failed connect.
    @Test(.enabled(if: TestEnvironment.postgresCA != nil))
    func aServerCertificateFromAnotherCAIsRefused() throws {
        let otherCA = try TestCertificates()
        let lifeguard = try LifeguardProcess(
            settings: serverTLSSettings(mode: "verify-ca", caFile: otherCA.path("ca.crt")) + "\nquery_wait_timeout = 2",
            userList: Self.userList)
        #expect(throws: PGConnection.Failure.self) { try lifeguard.connect(user: "lg_tls", password: "tlspass").value("SELECT 1") }
        #expect(waitUntil(3) { lifeguard.log.contains("certificate verify failed") })
        #expect(lifeguard.isRunning)
    }

    /// Changed `server_tls_*` settings close the servers (idle ones at once), as in PgBouncer 1.24: the next
    /// transaction runs on a server made under the new settings.
    @Test(.enabled(if: TestEnvironment.postgresCA != nil))
    func changingServerTLSSettingsReconnects() throws {
        let lifeguard = try LifeguardProcess(settings: serverTLSSettings(mode: "disable"))
        let client = try lifeguard.connect()
        #expect(try !serverConnectionIsEncrypted(client))
        let console = try lifeguard.connect(database: "pgbouncer")
        _ = try console.query("SET server_tls_sslmode = 'require'")
        #expect(waitUntil(3) { lifeguard.log.contains("closing because: database configuration changed") })
        #expect(try serverConnectionIsEncrypted(client))
    }

    /// A login that PostgreSQL refused under the old `server_tls_*` settings does not hold logins back for
    /// `server_login_retry` once they change: the new setup is tried at once.
    @Test(.enabled(if: TestEnvironment.postgresCA != nil))
    func aChangedServerTLSSettingIsTriedAtOnceAfterARefusedLogin() throws {
        let lifeguard = try LifeguardProcess(
            settings: serverTLSSettings(mode: "disable") + "\nserver_login_retry = 30", userList: Self.userList)
        #expect(lifeguard.loginFailure(user: "lg_tls", password: "tlspass").contains("no encryption"))
        _ = try lifeguard.connect(database: "pgbouncer").query("SET server_tls_sslmode = 'require'")
        let client = try lifeguard.connect(user: "lg_tls", password: "tlspass")
        #expect(try serverConnectionIsEncrypted(client))
    }
}
}

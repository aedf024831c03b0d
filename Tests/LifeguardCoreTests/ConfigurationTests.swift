import Foundation
import Testing
@testable import LifeguardCore

@Suite struct ConfigurationTests {
    private func parse(_ text: String, includes: [String: String] = [:]) throws -> Configuration {
        try Configuration.parse(text, fileName: "lifeguard.ini") { name in
            guard let text = includes[name] else {
                throw ConfigurationError(file: name, message: "could not read file: no such file")
            }
            return text
        }
    }

    private func settings(_ body: String) throws -> Settings {
        try parse("[pgbouncer]\n" + body).settings
    }

    private func parseError(_ text: String) -> ConfigurationError? {
        configurationError { _ = try parse(text) }
    }

    // MARK: defaults

    @Test func defaultsMatchPgBouncer() {
        let s = Settings()
        #expect(s.listenAddresses == [])
        #expect(s.listenPort == 6432)
        #expect(s.unixSocketDir == "/tmp")
        #expect(s.unixSocketMode == 0o777)
        #expect(s.authType == .md5)
        #expect(s.authFile == nil)
        #expect(s.poolMode == .session)
        #expect(s.maxClientConn == 100)
        #expect(s.defaultPoolSize == 20)
        #expect(s.minPoolSize == 0)
        #expect(s.reservePoolSize == 0)
        #expect(s.reservePoolTimeout == 5.0)
        #expect(s.maxDBConnections == 0)
        #expect(s.maxUserConnections == 0)
        #expect(s.serverResetQuery == "DISCARD ALL")
        #expect(s.serverResetQueryAlways == false)
        #expect(s.ignoreStartupParameters == [])
        #expect(s.applicationNameAddHost == false)
        #expect(s.logfile == nil)
        #expect(s.pidfile == nil)
        #expect(s.user == nil)
        #expect(s.verbose == 0)
        #expect(s.logConnections && s.logDisconnections && s.logPoolerErrors)
        #expect(s.tcpKeepalive)
        #expect(s.maxPacketSize == 2_147_483_647)
        #expect(s.listenBacklog == 128)
        #expect(s.soReuseport == false)
        #expect(s.pktBuf == 4096)
        #expect(s.adminUsers == [])
        #expect(s.statsUsers == [])
    }

    @Test func emptyFileGivesDefaults() throws {
        let config = try parse("; nothing here\n")
        #expect(config.settings == Settings())
        #expect(config.databases.isEmpty)
        #expect(config.fallbackDatabase == nil)
        #expect(config.users.isEmpty)
        #expect(config.warnings.isEmpty)
        #expect(config.sourcePath == "lifeguard.ini")
    }

    // MARK: every typed [pgbouncer] key

    @Test func everyImplementedKeyIsParsed() throws {
        let config = try parse("""
            [pgbouncer]
            listen_addr = 127.0.0.1, ::1 ,*
            listen_port = 7432
            unix_socket_dir = /var/run/lifeguard
            unix_socket_mode = 0700
            auth_type = scram-sha-256
            auth_file = /etc/lifeguard/userlist.txt
            pool_mode = transaction
            max_client_conn = 5000
            default_pool_size = 50
            min_pool_size = 5
            reserve_pool_size = 3
            reserve_pool_timeout = 2.5
            max_db_connections = 80
            max_user_connections = 90
            server_reset_query = DISCARD ALL; SELECT 1
            server_reset_query_always = yes
            ignore_startup_parameters = extra_float_digits, options
            application_name_add_host = on
            logfile = /var/log/lifeguard.log
            pidfile = /run/lifeguard.pid
            user = postgres
            verbose = 2
            log_connections = 0
            log_disconnections = off
            log_pooler_errors = false
            tcp_keepalive = no
            max_packet_size = 1048576
            listen_backlog = 512
            so_reuseport = 1
            pkt_buf = 8192
            admin_users = admin, root
            stats_users = monitor
            """)
        let s = config.settings
        #expect(s.listenAddresses == ["127.0.0.1", "::1", "*"])
        #expect(s.listenPort == 7432)
        #expect(s.unixSocketDir == "/var/run/lifeguard")
        #expect(s.unixSocketMode == 0o700)
        #expect(s.authType == .scramSHA256)
        #expect(s.authFile == "/etc/lifeguard/userlist.txt")
        #expect(s.poolMode == .transaction)
        #expect(s.maxClientConn == 5000)
        #expect(s.defaultPoolSize == 50)
        #expect(s.minPoolSize == 5)
        #expect(s.reservePoolSize == 3)
        #expect(s.reservePoolTimeout == 2.5)
        #expect(s.maxDBConnections == 80)
        #expect(s.maxUserConnections == 90)
        #expect(s.serverResetQuery == "DISCARD ALL; SELECT 1")
        #expect(s.serverResetQueryAlways)
        #expect(s.ignoreStartupParameters == ["extra_float_digits", "options"])
        #expect(s.applicationNameAddHost)
        #expect(s.logfile == "/var/log/lifeguard.log")
        #expect(s.pidfile == "/run/lifeguard.pid")
        #expect(s.user == "postgres")
        #expect(s.verbose == 2)
        #expect(!s.logConnections && !s.logDisconnections && !s.logPoolerErrors)
        #expect(!s.tcpKeepalive)
        #expect(s.maxPacketSize == 1_048_576)
        #expect(s.listenBacklog == 512)
        #expect(s.soReuseport)
        #expect(s.pktBuf == 8192)
        #expect(s.adminUsers == ["admin", "root"])
        #expect(s.statsUsers == ["monitor"])
        #expect(config.warnings.isEmpty)
        #expect(config.rawSettings["listen_port"] == "7432")
        #expect(config.rawSettings["server_reset_query"] == "DISCARD ALL; SELECT 1")
    }

    @Test func lifeguardSectionIsASynonym() throws {
        let config = try parse("[lifeguard]\nlisten_port = 1234\n")
        #expect(config.settings.listenPort == 1234)
    }

    @Test func keyNamesAndSectionNamesAreCaseInsensitive() throws {
        let config = try parse("[PGBOUNCER]\nListen_Port = 1234\nPOOL_MODE = Statement\n")
        #expect(config.settings.listenPort == 1234)
        #expect(config.settings.poolMode == .statement)
    }

    @Test func lastDuplicateWins() throws {
        let config = try parse("""
            [pgbouncer]
            listen_port = 1
            listen_port = 2
            [databases]
            a = port=1
            a = port=2
            [pgbouncer]
            listen_port = 3
            """)
        #expect(config.settings.listenPort == 3)
        #expect(config.databases["a"]?.port == 2)
    }

    @Test func emptyValuesUnsetOptionalsAndDisableTheSocket() throws {
        let s = try settings("""
            logfile = /x
            logfile =
            auth_file = ''
            unix_socket_dir =
            listen_addr =
            server_reset_query =
            """)
        #expect(s.logfile == nil)
        #expect(s.authFile == nil)
        #expect(s.unixSocketDir == "")
        #expect(s.listenAddresses == [])
        #expect(s.serverResetQuery == "")
    }

    @Test func quotedValuesAreUnquoted() throws {
        let s = try settings("server_reset_query = 'RESET ALL'\nadmin_users = \"a, b\"\n")
        #expect(s.serverResetQuery == "RESET ALL")
        #expect(s.adminUsers == ["a", "b"])
    }

    @Test(arguments: [
        ("1", true), ("0", false), ("on", true), ("OFF", false), ("yes", true), ("No", false),
        ("true", true), ("FALSE", false), ("2", true),
    ])
    func booleans(text: String, expected: Bool) throws {
        #expect(try settings("so_reuseport = \(text)").soReuseport == expected)
    }

    @Test(arguments: [("0777", 0o777), ("777", 0o777), ("0o600", 0o600), ("0", 0), ("1777", 0o1777)])
    func octalModes(text: String, expected: Int) throws {
        #expect(try settings("unix_socket_mode = \(text)").unixSocketMode == expected)
    }

    @Test(arguments: AuthType.allCases)
    func everyAuthType(type: AuthType) throws {
        #expect(try settings("auth_type = \(type.rawValue)").authType == type)
    }

    @Test func intsAcceptPlusSignAndFloatsAcceptIntegers() throws {
        let s = try settings("max_client_conn = +7\nreserve_pool_timeout = 3\n")
        #expect(s.maxClientConn == 7)
        #expect(s.reservePoolTimeout == 3.0)
    }

    // MARK: value errors

    @Test func errorDescriptionFormat() {
        let error = parseError("[pgbouncer]\n\n\nlisten_port = abc\n")
        #expect(error == ConfigurationError(
            file: "lifeguard.ini", line: 4, key: "listen_port",
            message: "invalid value for key \"listen_port\": \"abc\" is not an integer"
        ))
        #expect(error?.description
            == "lifeguard.ini:4: invalid value for key \"listen_port\": \"abc\" is not an integer")
    }

    @Test(arguments: [
        ("listen_port = 0", "listen_port", "\"0\" is out of range (1-65535)"),
        ("listen_port = 65536", "listen_port", "\"65536\" is out of range (1-65535)"),
        ("max_client_conn = -1", "max_client_conn", "\"-1\" must not be negative"),
        ("default_pool_size = 1.5", "default_pool_size", "\"1.5\" is not an integer"),
        ("min_pool_size = ", "min_pool_size", "\"\" is not an integer"),
        ("reserve_pool_size = x", "reserve_pool_size", "\"x\" is not an integer"),
        ("reserve_pool_timeout = soon", "reserve_pool_timeout", "\"soon\" is not a number of seconds"),
        ("reserve_pool_timeout = -1", "reserve_pool_timeout", "\"-1\" must not be negative"),
        ("reserve_pool_timeout = inf", "reserve_pool_timeout", "\"inf\" is not a number of seconds"),
        ("max_db_connections = lots", "max_db_connections", "\"lots\" is not an integer"),
        ("max_user_connections = -5", "max_user_connections", "\"-5\" must not be negative"),
        ("log_connections = maybe", "log_connections",
         "\"maybe\" is not a boolean (use 0/1, on/off, yes/no or true/false)"),
        ("tcp_keepalive = ", "tcp_keepalive",
         "\"\" is not a boolean (use 0/1, on/off, yes/no or true/false)"),
        ("unix_socket_mode = 0789", "unix_socket_mode", "\"0789\" is not an octal file mode"),
        ("unix_socket_mode = 77777", "unix_socket_mode", "\"77777\" is not an octal file mode"),
        ("pool_mode = sometimes", "pool_mode",
         "\"sometimes\" is not a pool mode (session, transaction or statement)"),
        ("auth_type = password", "auth_type",
         "\"password\" is not an auth type (trust, any, plain, md5 or scram-sha-256)"),
        ("max_packet_size = 0", "max_packet_size", "\"0\" is out of range (1-2147483647)"),
        ("max_packet_size = 4294967295", "max_packet_size", "\"4294967295\" is out of range (1-2147483647)"),
        ("listen_backlog = 0", "listen_backlog", "\"0\" must be at least 1"),
        ("pkt_buf = 0", "pkt_buf", "\"0\" must be at least 1"),
        ("verbose = loud", "verbose", "\"loud\" is not an integer"),
    ])
    func invalidValues(line: String, key: String, reason: String) {
        let error = parseError("[pgbouncer]\n" + line + "\n")
        #expect(error?.file == "lifeguard.ini")
        #expect(error?.line == 2)
        #expect(error?.key == key)
        #expect(error?.message == "invalid value for key \"\(key)\": \(reason)")
    }

    @Test(arguments: ["pam", "ldap", "LDAP"])
    func unsupportedAuthTypes(name: String) {
        let error = parseError("[pgbouncer]\nauth_type = \(name)\n")
        #expect(error?.message == "auth_type \(name.lowercased()) is not supported yet")
        #expect(error?.key == "auth_type")
        #expect(error?.line == 2)
    }

    @Test func keyOutsideSectionIsAnError() {
        let error = parseError("listen_port = 1\n")
        #expect(error?.line == 1)
        #expect(error?.key == "listen_port")
    }

    // MARK: known-but-unimplemented and unknown keys

    @Test func unimplementedKeysWarn() throws {
        let config = try parse("""
            [pgbouncer]
            listen_port = 6432
            syslog = 1
            resolv_conf = /etc/resolv.conf
            SERVICE_NAME = svc
            """)
        #expect(config.warnings == [
            "lifeguard.ini:3: key \"syslog\" is accepted but not implemented yet; ignored",
            "lifeguard.ini:4: key \"resolv_conf\" is accepted but not implemented yet; ignored",
            "lifeguard.ini:5: key \"job_name\" is accepted but not implemented yet; ignored",
        ])
        #expect(config.rawSettings["syslog"] == "1")
        #expect(config.rawSettings["job_name"] == "svc")
    }

    @Test func unknownKeyWarnsButDoesNotFail() throws {
        let config = try parse("[pgbouncer]\nno_such_thing = 1\n")
        #expect(config.warnings == ["lifeguard.ini:2: unknown parameter \"no_such_thing\"; ignored"])
        #expect(config.rawSettings["no_such_thing"] == nil)
    }

    @Test(arguments: [
        ("server_lifetime = forever", "\"forever\" is not a number of seconds"),
        ("peer_id = one", "\"one\" is not an integer"),
        ("syslog = sure", "\"sure\" is not a boolean (use 0/1, on/off, yes/no or true/false)"),
        ("server_tls_sslmode = strict",
         "\"strict\" is not an SSL mode (disable, allow, prefer, require, verify-ca, verify-full)"),
    ])
    func unimplementedKeysAreStillValidated(line: String, reason: String) {
        let key = String(line.prefix { $0 != " " })
        let error = parseError("[pgbouncer]\n" + line + "\n")
        #expect(error?.message == "invalid value for key \"\(key)\": \(reason)")
        #expect(error?.line == 2)
    }

    @Test func everyKnownKeyIsAcceptedWithItsDefault() throws {
        // The documented default of every key must itself be a valid value.
        var text = "[pgbouncer]\n"
        for key in Settings.knownKeys {
            text += "\(key.name) = '\(key.defaultValue)'\n"
        }
        let config = try parse(text)
        #expect(config.warnings.allSatisfy { !$0.contains("unknown parameter") })
        #expect(config.settings.unixSocketMode == 0o777)
        #expect(config.settings.listenPort == 6432)
    }

    @Test func threadsTakesACountOrAuto() throws {
        #expect(try settings("").threads == 1)
        #expect(try settings("threads = 4").threads == 4)
        #expect(try settings("threads = auto").threads == nil)
        #expect(parseError("[pgbouncer]\nthreads = 0")?.message.contains("threads") == true)
        #expect(parseError("[pgbouncer]\nthreads = many")?.message.contains("threads") == true)
    }

    @Test func knownKeysTable() {
        let names = Settings.knownKeys.map(\.name)
        #expect(names == names.sorted())
        #expect(Set(names).count == names.count)
        // PgBouncer 1.25 has 100, counting the Windows-only service_name; Lifeguard adds share_unnamed_statements
        // and threads.
        #expect(names.count == 102)
        let byName = Dictionary(uniqueKeysWithValues: Settings.knownKeys.map { ($0.name, $0) })
        #expect(byName["listen_port"]?.defaultValue == "6432")
        #expect(byName["listen_port"]?.reloadable == false)
        #expect(byName["pool_mode"]?.reloadable == true)
        #expect(byName["server_check_query"]?.defaultValue == "<empty>")
        #expect(byName["server_tls_sslmode"]?.defaultValue == "prefer")
        #expect(byName["unix_socket_mode"]?.defaultValue == "0777")
        for name in ["disable_pqexec", "job_name", "listen_addr", "listen_backlog", "pidfile", "pkt_buf",
                     "resolv_conf", "so_reuseport", "threads", "track_extra_parameters", "unix_socket_dir",
                     "unix_socket_group", "unix_socket_mode", "user"] {
            #expect(byName[name]?.reloadable == false, "\(name)")
        }
        #expect(Settings.knownKeys.filter { !$0.reloadable }.count == 15)
    }

    // MARK: sections

    @Test func unknownSectionsAreIgnoredWithAWarning() throws {
        let config = try parse("""
            [whatever]
            key = value
            [databases]
            a =
            """)
        #expect(config.warnings == ["lifeguard.ini:1: unknown section [whatever]; ignored"])
        #expect(config.databases["a"] == DatabaseDefinition(name: "a"))
    }

    // MARK: [peers]

    @Test func peersAndPeerID() throws {
        let config = try parse("""
            [pgbouncer]
            peer_id = 2
            [peers]
            1 = host=/run/lifeguard-1 port=6433 pool_size=4
            3 = host=10.0.0.3
            """)
        #expect(config.settings.peerID == 2)
        var first = PeerDefinition(id: 1)
        first.host = "/run/lifeguard-1"
        first.port = 6433
        first.poolSize = 4
        var third = PeerDefinition(id: 3)
        third.host = "10.0.0.3"
        #expect(config.peers == [1: first, 3: third])
        #expect(config.warnings.isEmpty)
    }

    @Test(arguments: [
        ("[pgbouncer]\npeer_id = 16384", "invalid value for key \"peer_id\""),
        ("[peers]\n0 = host=/tmp", "invalid value for key \"0\""),
        ("[peers]\nx = host=/tmp", "invalid value for key \"x\""),
        ("[peers]\n1 = host=/tmp dbname=x", "unrecognized peer parameter: dbname"),
    ])
    func badPeeringValuesAreRefused(text: String, message: String) {
        #expect(parseError(text)?.message.hasPrefix(message) == true)
    }

    // MARK: [databases]

    @Test func databaseWithEveryImplementedParameter() throws {
        let config = try parse("""
            [databases]
            main = dbname=prod host=db.example.com port=5433 user=app password='s3cr''et pw' pool_size=10 min_pool_size=2 reserve_pool_size=4 pool_mode=statement max_db_connections=40 connect_query='SET search_path = app' client_encoding=UTF8 datestyle='ISO, MDY' timezone=UTC application_name=lg
            """)
        #expect(config.databases["main"] == DatabaseDefinition(
            name: "main", dbname: "prod", host: "db.example.com", port: 5433, user: "app",
            password: "s3cr'et pw", poolSize: 10, minPoolSize: 2, reservePoolSize: 4,
            poolMode: .statement, maxDBConnections: 40, connectQuery: "SET search_path = app",
            clientEncoding: "UTF8", datestyle: "ISO, MDY", timezone: "UTC", applicationName: "lg"
        ))
        #expect(config.warnings.isEmpty)
    }

    @Test func databaseDefaults() throws {
        let config = try parse("[databases]\nplain =\nsock = host=/var/run/postgresql\n")
        let plain = try #require(config.databases["plain"])
        #expect(plain == DatabaseDefinition(name: "plain"))
        #expect(plain.dbname == nil && plain.host == nil && plain.port == 5432)
        #expect(config.databases["sock"]?.host == "/var/run/postgresql")
    }

    @Test func connectionStringSpacingCaseAndAliases() throws {
        let config = try parse("""
            [databases]
            a = host = h   PORT= 7000 reserve_pool=3 dbname=''
            b = host=h1,h2 password=p=q
            """)
        #expect(config.databases["a"] == DatabaseDefinition(name: "a", host: "h", port: 7000, reservePoolSize: 3))
        #expect(config.databases["b"]?.host == "h1,h2")
        #expect(config.databases["b"]?.password == "p=q")
    }

    @Test func quotedDatabaseNamesKeepCase() throws {
        let config = try parse("[databases]\n\"My DB\" = dbname=x\nMixed = dbname=y\n")
        #expect(config.databases["My DB"]?.dbname == "x")
        #expect(config.databases["Mixed"]?.dbname == "y")
        #expect(config.databases["mixed"] == nil)
    }

    @Test func perDatabaseOverridesAreParsed() throws {
        let config = try parse("""
            [databases]
            a = auth_user=x auth_query='SELECT 1' auth_dbname=d max_db_client_connections=3 query_wait_timeout=-1 server_lifetime=10 load_balance_hosts=disable
            """)
        #expect(config.warnings.isEmpty)
        var expected = DatabaseDefinition(name: "a")
        expected.authUser = "x"
        expected.authQuery = "SELECT 1"
        expected.authDbname = "d"
        expected.maxDBClientConnections = 3
        expected.serverLifetime = 10
        expected.loadBalanceHosts = false
        #expect(config.databases["a"] == expected, "query_wait_timeout=-1 means unset")
    }

    @Test func unknownConnectionParameterIsAnError() {
        let error = parseError("[databases]\n\nmain = host=x sslmode=require\n")
        #expect(error == ConfigurationError(
            file: "lifeguard.ini", line: 3, key: "sslmode",
            message: "unrecognized connection parameter: sslmode"
        ))
    }

    @Test(arguments: [
        ("a = port=abc", "port", "invalid value for key \"port\": \"abc\" is not an integer"),
        ("a = port=0", "port", "invalid value for key \"port\": \"0\" is out of range (1-65535)"),
        ("a = pool_size=-1", "pool_size", "invalid value for key \"pool_size\": \"-1\" must not be negative"),
        ("a = min_pool_size=x", "min_pool_size", "invalid value for key \"min_pool_size\": \"x\" is not an integer"),
        ("a = reserve_pool=x", "reserve_pool", "invalid value for key \"reserve_pool\": \"x\" is not an integer"),
        ("a = max_db_connections=x", "max_db_connections",
         "invalid value for key \"max_db_connections\": \"x\" is not an integer"),
        ("a = pool_mode=never", "pool_mode",
         "invalid value for key \"pool_mode\": \"never\" is not a pool mode (session, transaction or statement)"),
        ("a = load_balance_hosts=random", "load_balance_hosts",
         "invalid value for key \"load_balance_hosts\": \"random\" is not one of round-robin, disable"),
        ("a = server_lifetime=x", "server_lifetime",
         "invalid value for key \"server_lifetime\": \"x\" is not a number of seconds"),
        ("a = password='open", "password", "syntax error: unterminated quoted string"),
        ("a = password='x'y", "password",
         "syntax error in connection string: unexpected text after quoted value of \"password\""),
        ("a = host", "host", "syntax error in connection string: expected \"key=value\" near \"host\""),
        ("a = host=x =y", nil, "syntax error in connection string: expected \"key=value\" near \"=y\""),
    ] as [(String, String?, String)])
    func databaseErrors(line: String, key: String?, message: String) {
        let error = parseError("[databases]\n" + line + "\n")
        #expect(error?.line == 2)
        #expect(error?.key == key)
        #expect(error?.message == message)
    }

    @Test(arguments: ["pgbouncer", "PgBouncer"])
    func adminDatabaseNameIsReserved(name: String) {
        let error = parseError("[databases]\n\(name) = host=x\n")
        #expect(error?.line == 2)
        #expect(error?.key == name)
        #expect(error?.message == "database name \"\(name)\" is reserved for the admin console")
    }

    // MARK: fallback database

    @Test func fallbackDatabase() throws {
        let config = try parse("""
            [databases]
            * = host=fallback port=6000
            exact = host=exact dbname=real
            """)
        #expect(config.databases["*"] == nil)
        #expect(config.databases.count == 1)
        #expect(config.fallbackDatabase == DatabaseDefinition(name: "*", host: "fallback", port: 6000))

        #expect(config.database(named: "exact")
            == DatabaseDefinition(name: "exact", dbname: "real", host: "exact"))
        #expect(config.database(named: "other")
            == DatabaseDefinition(name: "other", dbname: "other", host: "fallback", port: 6000))
    }

    @Test func fallbackWithForcedDbnameKeepsIt() throws {
        let config = try parse("[databases]\n* = dbname=shared\n")
        #expect(config.database(named: "x")?.dbname == "shared")
        #expect(config.database(named: "x")?.name == "x")
    }

    @Test func noFallbackMeansUnknownDatabase() throws {
        let config = try parse("[databases]\nexact = host=h\n")
        #expect(config.database(named: "other") == nil)
        #expect(config.database(named: "exact")?.host == "h")
    }

    // MARK: [users]

    @Test func users() throws {
        let config = try parse("""
            [users]
            app = pool_mode=transaction pool_size=7 max_user_connections=9
            "odd user" = pool_mode=session
            bare =
            """)
        #expect(config.users["app"] == UserDefinition(
            name: "app", poolMode: .transaction, poolSize: 7, maxUserConnections: 9))
        #expect(config.users["odd user"] == UserDefinition(name: "odd user", poolMode: .session))
        #expect(config.users["bare"] == UserDefinition(name: "bare"))
        #expect(config.warnings.isEmpty)
    }

    @Test func userOverridesAreRead() throws {
        let config = try parse("""
            [users]
            u = reserve_pool_size=1 max_user_client_connections=2 query_timeout=3 query_wait_timeout=4 idle_transaction_timeout=5 transaction_timeout=6 client_idle_timeout=-1
            """)
        #expect(config.warnings.isEmpty)
        let user = try #require(config.users["u"])
        #expect(user.reservePoolSize == 1)
        #expect(user.maxUserClientConnections == 2)
        #expect(user.queryTimeout == 3)
        #expect(user.queryWaitTimeout == 4)
        #expect(user.idleTransactionTimeout == 5)
        #expect(user.transactionTimeout == 6)
        #expect(user.clientIdleTimeout == nil, "-1 means unset")
    }

    @Test func userErrors() {
        let unknown = parseError("[users]\nu = host=x\n")
        #expect(unknown == ConfigurationError(
            file: "lifeguard.ini", line: 2, key: "host", message: "unrecognized user parameter: host"))
        let bad = parseError("[users]\nu = pool_size=big\n")
        #expect(bad?.message == "invalid value for key \"pool_size\": \"big\" is not an integer")
        let badTimeout = parseError("[users]\nu = query_timeout=slow\n")
        #expect(badTimeout?.key == "query_timeout")
    }

    // MARK: %include

    @Test func includeMergesSettingsAndLaterLinesWin() throws {
        let config = try parse(
            """
            [pgbouncer]
            listen_port = 1
            max_client_conn = 1
            %include common.ini
            max_client_conn = 3
            """,
            includes: ["common.ini": "listen_port = 2\nmax_client_conn = 2\nsyslog = 1\n"]
        )
        #expect(config.settings.listenPort == 2)
        #expect(config.settings.maxClientConn == 3)
        #expect(config.warnings == ["common.ini:3: key \"syslog\" is accepted but not implemented yet; ignored"])
    }

    @Test func sectionChangedInsideIncludeStaysChanged() throws {
        let config = try parse(
            "[pgbouncer]\n%include dbs.ini\nafter = port=7\n",
            includes: ["dbs.ini": "[databases]\nx = port=9\n"]
        )
        #expect(config.databases["x"]?.port == 9)
        #expect(config.databases["after"]?.port == 7)
    }

    @Test func sectionFromIncludeCarriesOverAndErrorsNameTheIncludedFile() {
        do {
            _ = try parse("[pgbouncer]\n%include bad.ini\n", includes: ["bad.ini": "\nlisten_port = x\n"])
            Issue.record("expected an error")
        } catch let error as ConfigurationError {
            #expect(error.description
                == "bad.ini:2: invalid value for key \"listen_port\": \"x\" is not an integer")
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    // MARK: load from disk

    @Test func loadReadsFileAndRelativeIncludes() throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("lifeguard-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let included = directory.appendingPathComponent("inc.ini").path
        try "listen_port = 7777\n".write(toFile: included, atomically: true, encoding: .utf8)
        let main = directory.appendingPathComponent("main.ini").path
        try "[pgbouncer]\n%include \(included)\n".write(toFile: main, atomically: true, encoding: .utf8)

        let config = try Configuration.load(path: main)
        #expect(config.settings.listenPort == 7777)
        #expect(config.sourcePath == main)
    }

    @Test func loadMissingFile() {
        #expect(throws: ConfigurationError(
            file: "/nonexistent/lifeguard.ini", message: "could not read file: no such file"
        )) {
            try Configuration.load(path: "/nonexistent/lifeguard.ini")
        }
    }

    @Test func loadMissingIncludeNamesTheInclude() throws {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("lifeguard-\(UUID().uuidString).ini").path
        try "[pgbouncer]\n%include /nonexistent/x.ini\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(throws: ConfigurationError(file: "/nonexistent/x.ini", message: "could not read file: no such file")) {
            try Configuration.load(path: path)
        }
    }

    @Test func sampleConfigurationParses() throws {
        // etc/lifeguard.ini must stay loadable and show every known key.
        let root = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let samplePath = root.appendingPathComponent("etc/lifeguard.ini").path
        let text = try String(contentsOfFile: samplePath, encoding: .utf8)
        let config = try Configuration.parse(text, fileName: "lifeguard.ini") { _ in "" }
        #expect(config.settings.listenPort == 6432)
        for key in Settings.knownKeys {
            #expect(text.contains("\n;\(key.name) ="), "\(key.name) missing")
        }
        let userlist = try UserList.load(path: root.appendingPathComponent("etc/userlist.txt").path)
        #expect(!userlist.secrets.isEmpty)
    }

    // MARK: TLS

    @Test func clientTLSKeysAreRead() throws {
        let s = try settings("""
            client_tls_sslmode = verify-full
            client_tls_key_file = /etc/lifeguard/server.key
            client_tls_cert_file = /etc/lifeguard/server.crt
            client_tls_ca_file = /etc/lifeguard/ca.crt
            client_tls_protocols = tlsv1.3
            client_tls_ciphers = HIGH:!aNULL
            client_tls13_ciphers = TLS_AES_128_GCM_SHA256
            client_tls_ecdhcurve = prime256v1
            client_tls_dheparams = none
            """)
        #expect(s.clientTLS.sslMode == .verifyFull)
        #expect(s.clientTLS.keyFile == "/etc/lifeguard/server.key")
        #expect(s.clientTLS.certFile == "/etc/lifeguard/server.crt")
        #expect(s.clientTLS.caFile == "/etc/lifeguard/ca.crt")
        #expect(s.clientTLS.versions == 3...3)
        #expect(s.clientTLS.ciphers == "HIGH:!aNULL")
        #expect(s.clientTLS.tls13Ciphers == "TLS_AES_128_GCM_SHA256")
        #expect(s.clientTLS.ecdhCurve == "prime256v1")
        #expect(!s.clientTLS.diffieHellman)
        let defaults = try settings("")
        #expect(defaults.clientTLS == TLSSettings(sslMode: .disable))
        #expect(defaults.serverTLS == TLSSettings(sslMode: .prefer), "PgBouncer's default since 1.20")
        #expect(defaults.clientTLS.ciphers == nil && defaults.clientTLS.versions == 2...3)
    }

    @Test func tlsProtocolListsAsPgBouncerWritesThem() {
        #expect(TLSSettings.versions(from: "secure") == 2...3)
        #expect(TLSSettings.versions(from: "all") == 0...3)
        #expect(TLSSettings.versions(from: "legacy") == 0...3)
        #expect(TLSSettings.versions(from: "tlsv1.1, tlsv1.2") == 1...2)
        #expect(TLSSettings.versions(from: "all:!tlsv1.0") == 1...3)
        #expect(TLSSettings.versions(from: "TLSv1.3") == 3...3)
        #expect(TLSSettings.versions(from: "") == nil, "nothing allowed")
        #expect(TLSSettings.versions(from: "tlsv1.3 !tlsv1.3") == nil)
        #expect(TLSSettings.versions(from: "sslv3") == nil)
        #expect(SSLMode.require < .verifyCA && SSLMode.prefer < .require)
    }

    @Test func serverTLSKeysAreRead() throws {
        let s = try settings("""
            server_tls_sslmode = verify-ca
            server_tls_ca_file = /etc/ssl/pg-ca.crt
            server_tls_key_file = /etc/lifeguard/client.key
            server_tls_cert_file = /etc/lifeguard/client.crt
            server_tls_protocols = legacy
            server_tls_ciphers = HIGH
            server_tls13_ciphers = TLS_AES_256_GCM_SHA384
            """)
        #expect(s.serverTLS.sslMode == .verifyCA)
        #expect(s.serverTLS.caFile == "/etc/ssl/pg-ca.crt")
        #expect(s.serverTLS.keyFile == "/etc/lifeguard/client.key" && s.serverTLS.certFile == "/etc/lifeguard/client.crt")
        #expect(s.serverTLS.versions == 0...3)
        #expect(s.serverTLS.ciphers == "HIGH" && s.serverTLS.tls13Ciphers == "TLS_AES_256_GCM_SHA384")
    }

    @Test func badTLSValuesAreRefused() {
        #expect(parseError("[pgbouncer]\nclient_tls_protocols = tlsv9\n")?.key == "client_tls_protocols")
        #expect(parseError("[pgbouncer]\nclient_tls_sslmode = always\n")?.key == "client_tls_sslmode")
        #expect(parseError("[pgbouncer]\nclient_tls_dheparams = huge\n")?.key == "client_tls_dheparams")
        #expect(parseError("[pgbouncer]\nserver_tls_protocols = tlsv1.4\n")?.key == "server_tls_protocols")
    }
}

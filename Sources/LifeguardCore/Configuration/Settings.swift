
/// When a server connection goes back to the pool (see the PgBouncer reference, section 1.1).
public enum PoolMode: String, Sendable, Equatable, CaseIterable {
    case session, transaction, statement
}

/// How clients prove who they are. PgBouncer's other methods are recognised but refused for now.
public enum AuthType: String, Sendable, Equatable, CaseIterable {
    case trust, any, plain, md5
    case scramSHA256 = "scram-sha-256"
    /// Per login, from the rules of `auth_hba_file` (HostBasedAccess).
    case hba
    /// The client's verified TLS certificate names the user in its common name.
    case cert

    /// Valid PgBouncer auth types that Lifeguard does not implement yet; they get a clear error
    /// instead of "invalid value" so users know the config is right but the feature is missing.
    static let unsupportedPgBouncerTypes: Set<String> = ["pam", "ldap"]
}

/// The `[pgbouncer]` section (also accepted as `[lifeguard]`). Defaults are PgBouncer's.
public struct Settings: Sendable, Equatable {
    /// `listen_addr`; `*` stays `*` (all addresses). Empty means no TCP listener.
    public var listenAddresses: [String] = []
    public var listenPort: Int = 6432
    /// Directory of the listening Unix socket and the default server socket directory; "" disables.
    public var unixSocketDir: String = "/tmp"
    public var unixSocketMode: Int = 0o777
    public var authType: AuthType = .md5
    public var authFile: String? = nil
    public var authHBAFile: String? = nil
    public var authIdentFile: String? = nil
    /// auth_query's defaults for every database (a database's own values come first).
    public var authUser: String? = nil
    public var authDbname: String? = nil
    public var authQuery: String = Settings.defaultAuthQuery
    public var poolMode: PoolMode = .session
    public var maxClientConn: Int = 100
    /// 0 means unlimited (PgBouncer 1.24+).
    public var defaultPoolSize: Int = 20
    public var minPoolSize: Int = 0
    public var reservePoolSize: Int = 0
    /// Seconds a client waits before the reserve pool may be used.
    public var reservePoolTimeout: Double = 5.0
    /// After a failed server login, how long a pool waits before trying again (and fails new clients fast).
    public var serverLoginRetry: Double = 15.0
    /// 0 = unlimited.
    public var maxDBConnections: Int = 0
    /// 0 = unlimited.
    public var maxUserConnections: Int = 0
    public var serverResetQuery: String = "DISCARD ALL"
    public var serverResetQueryAlways: Bool = false
    public var ignoreStartupParameters: [String] = []
    /// Reported parameters tracked besides the built-in ones (TrackedParameter.builtInNames).
    public var trackExtraParameters = ["IntervalStyle"]
    public var applicationNameAddHost: Bool = false
    public var logfile: String? = nil
    public var pidfile: String? = nil
    /// setuid target when started as root.
    public var user: String? = nil
    public var verbose: Int = 0
    public var logConnections: Bool = true
    public var logDisconnections: Bool = true
    public var logPoolerErrors: Bool = true
    public var tcpKeepalive: Bool = true
    public var maxPacketSize: Int = 2_147_483_647
    /// Protocol-level prepared statements kept per server in transaction and statement mode; 0 turns the
    /// statement sharing off (named statements then only work in session mode).
    public var maxPreparedStatements = 200
    /// Lifeguard only: the unnamed statement is shared like a named one, so a client that parses the same
    /// text before every execution (pgbench -M extended, many ORMs) skips the server's parse after the
    /// first time on each server. Off by default: the server then plans a named statement, which may choose a
    /// generic plan after five executions where an unnamed one is planned afresh every time.
    public var shareUnnamedStatements = false
    /// Refuse simple-protocol Query messages (only the extended protocol, which cannot carry several
    /// statements in one message, is allowed).
    public var disablePQExec = false
    public var listenBacklog: Int = 128
    public var soReuseport: Bool = false
    /// This process's id among its `[peers]` (carried in every cancel key it gives out); 0: no peering.
    public var peerID: Int = 0
    /// Lifeguard only: how many engine threads serve clients, sharing one set of pools and limits; nil for
    /// `auto` (one per online CPU).
    public var threads: Int? = 1
    public var pktBuf: Int = 4096
    /// Timeouts in seconds; 0 disables the ones PgBouncer lets you disable.
    public var clientIdleTimeout: Double = 0
    public var clientLoginTimeout: Double = 60
    public var idleTransactionTimeout: Double = 0
    public var queryTimeout: Double = 0
    public var queryWaitTimeout: Double = 120
    public var serverConnectTimeout: Double = 15
    public var serverIdleTimeout: Double = 600
    public var serverLifetime: Double = 3600
    public var transactionTimeout: Double = 0
    /// Seconds a queued client waits before it is told so with a NOTICE; 0 disables.
    public var queryWaitNotify: Int = 5
    /// Session pooling: a server marked for closing (RECONNECT, changed database) is closed, with its client,
    /// as soon as the client is between transactions, instead of when the client leaves.
    public var serverFastClose: Bool = false
    /// An idle server unused this long is checked with `serverCheckQuery` before it is handed out.
    public var serverCheckDelay: Double = 30
    /// The check: nil disables it (`server_check_query = ""`); the empty string sends an empty query
    /// (`<empty>`, PgBouncer's default).
    public var serverCheckQuery: String? = ""
    public var autodbIdleTimeout: Double = 3600
    public var poolIdleTimeout: Double = 0
    public var cancelWaitTimeout: Double = 10
    /// Lifeguard keeps no socket buffers, so SUSPEND has nothing to flush; accepted for compatibility.
    public var suspendTimeout: Double = 10
    /// How long resolved host names (and failures to resolve) are cached.
    public var dnsMaxTTL: Double = 15
    public var dnsNXDomainTTL: Double = 15
    /// TCP tuning; 0 leaves the operating system's value (tcp_defer_accept: seconds, default on).
    public var tcpDeferAccept: Int = 1
    public var tcpKeepCount: Int = 0
    public var tcpKeepIdle: Int = 0
    public var tcpKeepInterval: Int = 0
    public var tcpSocketBuffer: Int = 0
    /// Milliseconds.
    public var tcpUserTimeout: Int = 0
    /// Client connections per database and per user; 0 means unlimited.
    public var maxDBClientConnections: Int = 0
    public var maxUserClientConnections: Int = 0
    /// Hand out idle servers oldest first (1) instead of most recently used first (0).
    public var serverRoundRobin: Bool = false
    /// A NOTICE sent to every client right after login; empty sends none.
    public var loginNotifyMessage: String = ""
    /// Averages in SHOW STATS and the `stats:` log line are computed over this period (seconds).
    public var statsPeriod: Double = 60
    public var logStats: Bool = true
    public var adminUsers: [String] = []
    public var statsUsers: [String] = []
    /// Lifeguard as the TLS server its clients connect to (`client_tls_*`).
    public var clientTLS = TLSSettings(sslMode: .disable)
    /// Lifeguard as a TLS client of PostgreSQL (`server_tls_*`).
    public var serverTLS = TLSSettings(sslMode: .prefer)

    public init() {}

    /// Every `[pgbouncer]` key PgBouncer knows, in its own (alphabetical) order, with the default as
    /// PgBouncer prints it and whether RELOAD can change it. SHOW CONFIG lists exactly these rows.
    public static let knownKeys: [(name: String, defaultValue: String, reloadable: Bool)] =
        keySpecs.map { (name: $0.name, defaultValue: $0.defaultValue, reloadable: $0.reloadable) }

    /// One `[pgbouncer]` key: its name, default as PgBouncer prints it, whether RELOAD can change it, and how
    /// its value is parsed into these settings.
    struct KeySpec: Sendable {
        enum Kind: Sendable {
            case string, integer, boolean, seconds, sslMode
        }

        var name: String
        var defaultValue: String
        var reloadable: Bool
        /// Used only to validate keys Lifeguard does not implement; implemented keys are read by `store`.
        var kind: Kind
        /// Parses the value into the settings; nil for a key Lifeguard accepts without acting on it.
        var store: (@Sendable (inout Settings, ValueParser) throws -> Void)?
    }

    private static func key(
        _ name: String, _ defaultValue: String, _ kind: KeySpec.Kind, restart: Bool = false,
        store: (@Sendable (inout Settings, ValueParser) throws -> Void)? = nil
    ) -> KeySpec {
        KeySpec(name: name, defaultValue: defaultValue, reloadable: !restart, kind: kind, store: store)
    }

    public static let defaultAuthQuery =
        "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin"

    // Order, defaults and reload flags follow PgBouncer 1.25 (reference section 1.2).
    static let keySpecs: [KeySpec] = [
        key("admin_users", "", .string) { $0.adminUsers = $1.list() },
        key("application_name_add_host", "0", .boolean) { $0.applicationNameAddHost = try $1.boolean() },
        key("auth_dbname", "", .string) {
            $0.authDbname = $1.optionalString()
            // The console cannot answer auth_query.
            if $0.authDbname == "pgbouncer" {
                throw $1.invalid("(cannot use the reserved \"pgbouncer\" database as an auth_dbname)")
            }
        },
        key("auth_file", "", .string) { $0.authFile = $1.optionalString() },
        key("auth_hba_file", "", .string) { $0.authHBAFile = $1.optionalString() },
        key("auth_ident_file", "", .string) { $0.authIdentFile = $1.optionalString() },
        key("auth_ldap_options", "", .string),
        key("auth_query", defaultAuthQuery, .string) { $0.authQuery = $1.optionalString() ?? defaultAuthQuery },
        key("auth_type", "md5", .string) { $0.authType = try $1.authType() },
        key("auth_user", "", .string) { $0.authUser = $1.optionalString() },
        key("autodb_idle_timeout", "3600", .seconds) { $0.autodbIdleTimeout = try $1.seconds() },
        key("cancel_wait_timeout", "10", .seconds) { $0.cancelWaitTimeout = try $1.seconds() },
        key("client_idle_timeout", "0", .seconds) { $0.clientIdleTimeout = try $1.seconds() },
        key("client_login_timeout", "60", .seconds) { $0.clientLoginTimeout = try $1.seconds() },
        key("client_tls13_ciphers", "", .string) { $0.clientTLS.tls13Ciphers = TLSSettings.cipherList($1.value) },
        key("client_tls_ca_file", "", .string) { $0.clientTLS.caFile = $1.optionalString() ?? "" },
        key("client_tls_cert_file", "", .string) { $0.clientTLS.certFile = $1.optionalString() ?? "" },
        key("client_tls_ciphers", "default", .string) { $0.clientTLS.ciphers = TLSSettings.cipherList($1.value) },
        key("client_tls_dheparams", "auto", .string) {
            $0.clientTLS.diffieHellman = try $1.oneOf(["none", "auto", "legacy"]) != "none"
        },
        key("client_tls_ecdhcurve", "auto", .string) {
            let curve = $1.value.trimmingWhitespace()
            $0.clientTLS.ecdhCurve = ["", "auto", "none"].contains(curve.lowercased()) ? nil : curve
        },
        key("client_tls_key_file", "", .string) { $0.clientTLS.keyFile = $1.optionalString() ?? "" },
        key("client_tls_protocols", "secure", .string) { $0.clientTLS.versions = try $1.tlsVersions() },
        key("client_tls_sslmode", "disable", .sslMode) { $0.clientTLS.sslMode = SSLMode(rawValue: try $1.sslMode())! },
        key("conffile", "", .string),
        key("default_pool_size", "20", .integer) { $0.defaultPoolSize = try $1.integer() },
        key("disable_pqexec", "0", .boolean, restart: true) { $0.disablePQExec = try $1.boolean() },
        key("dns_max_ttl", "15", .seconds) { $0.dnsMaxTTL = try $1.seconds() },
        key("dns_nxdomain_ttl", "15", .seconds) { $0.dnsNXDomainTTL = try $1.seconds() },
        key("dns_zone_check_period", "0", .seconds),
        key("idle_transaction_timeout", "0", .seconds) { $0.idleTransactionTimeout = try $1.seconds() },
        key("ignore_startup_parameters", "", .string) { $0.ignoreStartupParameters = $1.list() },
        key("job_name", "pgbouncer", .string, restart: true),
        key("listen_addr", "", .string, restart: true) { $0.listenAddresses = $1.list() },
        key("listen_backlog", "128", .integer, restart: true) { $0.listenBacklog = try $1.integer(in: 1...Int.max) },
        key("listen_port", "6432", .integer, restart: true) { $0.listenPort = try $1.integer(in: 1...65535) },
        key("log_connections", "1", .boolean) { $0.logConnections = try $1.boolean() },
        key("log_disconnections", "1", .boolean) { $0.logDisconnections = try $1.boolean() },
        key("log_pooler_errors", "1", .boolean) { $0.logPoolerErrors = try $1.boolean() },
        key("log_stats", "1", .boolean) { $0.logStats = try $1.boolean() },
        key("logfile", "", .string) { $0.logfile = $1.optionalString() },
        key("login_notify_message", "", .string) { $0.loginNotifyMessage = $1.value },
        key("max_client_conn", "100", .integer) { $0.maxClientConn = try $1.integer() },
        key("max_db_client_connections", "0", .integer) { $0.maxDBClientConnections = try $1.integer() },
        key("max_db_connections", "0", .integer) { $0.maxDBConnections = try $1.integer() },
        // PgBouncer reads this as an unsigned 32-bit value; anything above Int32.max is meaningless for a
        // protocol whose length field is a signed 32-bit integer.
        key("max_packet_size", "2147483647", .integer) { $0.maxPacketSize = try $1.integer(in: 1...2_147_483_647) },
        key("max_prepared_statements", "200", .integer) { $0.maxPreparedStatements = try $1.integer(in: 0...Int(Int32.max)) },
        key("max_user_client_connections", "0", .integer) { $0.maxUserClientConnections = try $1.integer() },
        key("max_user_connections", "0", .integer) { $0.maxUserConnections = try $1.integer() },
        key("min_pool_size", "0", .integer) { $0.minPoolSize = try $1.integer() },
        key("peer_id", "0", .integer) { $0.peerID = try $1.integer(in: 0...16383) },
        key("pidfile", "", .string, restart: true) { $0.pidfile = $1.optionalString() },
        key("pkt_buf", "4096", .integer, restart: true) { $0.pktBuf = try $1.integer(in: 1...Int.max) },
        key("pool_idle_timeout", "0", .seconds) { $0.poolIdleTimeout = try $1.seconds() },
        key("pool_mode", "session", .string) { $0.poolMode = try $1.poolMode() },
        key("query_timeout", "0", .seconds) { $0.queryTimeout = try $1.seconds() },
        key("query_wait_notify", "5", .integer) { $0.queryWaitNotify = try $1.integer() },
        key("query_wait_timeout", "120", .seconds) { $0.queryWaitTimeout = try $1.seconds() },
        key("reserve_pool_size", "0", .integer) { $0.reservePoolSize = try $1.integer() },
        key("reserve_pool_timeout", "5", .seconds) { $0.reservePoolTimeout = try $1.seconds() },
        key("resolv_conf", "", .string, restart: true),
        key("sbuf_loopcnt", "5", .integer),
        key("scram_iterations", "4096", .integer),
        key("server_check_delay", "30", .seconds) { $0.serverCheckDelay = try $1.seconds() },
        key("server_check_query", "<empty>", .string) { $0.serverCheckQuery = $1.value == "<empty>" ? "" : ($1.value.isEmpty ? nil : $1.value) },
        key("server_connect_timeout", "15", .seconds) { $0.serverConnectTimeout = try $1.seconds() },
        key("server_fast_close", "0", .boolean) { $0.serverFastClose = try $1.boolean() },
        key("server_idle_timeout", "600", .seconds) { $0.serverIdleTimeout = try $1.seconds() },
        key("server_lifetime", "3600", .seconds) { $0.serverLifetime = try $1.seconds() },
        key("server_login_retry", "15", .seconds) { $0.serverLoginRetry = try $1.seconds() },
        key("server_reset_query", "DISCARD ALL", .string) { $0.serverResetQuery = $1.value },
        key("server_reset_query_always", "0", .boolean) { $0.serverResetQueryAlways = try $1.boolean() },
        key("server_round_robin", "0", .boolean) { $0.serverRoundRobin = try $1.boolean() },
        key("server_tls13_ciphers", "", .string) { $0.serverTLS.tls13Ciphers = TLSSettings.cipherList($1.value) },
        key("server_tls_ca_file", "", .string) { $0.serverTLS.caFile = $1.optionalString() ?? "" },
        key("server_tls_cert_file", "", .string) { $0.serverTLS.certFile = $1.optionalString() ?? "" },
        key("server_tls_ciphers", "default", .string) { $0.serverTLS.ciphers = TLSSettings.cipherList($1.value) },
        key("server_tls_key_file", "", .string) { $0.serverTLS.keyFile = $1.optionalString() ?? "" },
        key("server_tls_protocols", "secure", .string) { $0.serverTLS.versions = try $1.tlsVersions() },
        key("server_tls_sslmode", "prefer", .sslMode) { $0.serverTLS.sslMode = SSLMode(rawValue: try $1.sslMode())! },
        // Lifeguard's own; PgBouncer has no such key.
        key("share_unnamed_statements", "0", .boolean) { $0.shareUnnamedStatements = try $1.boolean() },
        key("so_reuseport", "0", .boolean, restart: true) { $0.soReuseport = try $1.boolean() },
        key("stats_period", "60", .integer) { $0.statsPeriod = try $1.seconds() },
        key("stats_users", "", .string) { $0.statsUsers = $1.list() },
        key("suspend_timeout", "10", .seconds) { $0.suspendTimeout = try $1.seconds() },
        key("syslog", "0", .boolean),
        key("syslog_facility", "daemon", .string),
        key("syslog_ident", "pgbouncer", .string),
        key("tcp_defer_accept", "1", .integer) { $0.tcpDeferAccept = try $1.integer() },
        key("tcp_keepalive", "1", .boolean) { $0.tcpKeepalive = try $1.boolean() },
        key("tcp_keepcnt", "0", .integer) { $0.tcpKeepCount = try $1.integer() },
        key("tcp_keepidle", "0", .integer) { $0.tcpKeepIdle = try $1.integer() },
        key("tcp_keepintvl", "0", .integer) { $0.tcpKeepInterval = try $1.integer() },
        key("tcp_socket_buffer", "0", .integer) { $0.tcpSocketBuffer = try $1.integer() },
        key("tcp_user_timeout", "0", .integer) { $0.tcpUserTimeout = try $1.integer() },
        // Lifeguard's own; PgBouncer is single-threaded.
        key("threads", "1", .string, restart: true) {
            $0.threads = $1.value.trimmingWhitespace().lowercased() == "auto" ? nil : try $1.integer(in: 1...256)
        },
        key("track_extra_parameters", "IntervalStyle", .string, restart: true) { $0.trackExtraParameters = $1.list() },
        key("transaction_timeout", "0", .seconds) { $0.transactionTimeout = try $1.seconds() },
        key("unix_socket_dir", "/tmp", .string, restart: true) { $0.unixSocketDir = $1.value },
        key("unix_socket_group", "", .string, restart: true),
        key("unix_socket_mode", "0777", .string, restart: true) { $0.unixSocketMode = try $1.octalMode() },
        key("user", "", .string, restart: true) { $0.user = $1.optionalString() },
        key("verbose", "0", .integer) { $0.verbose = try $1.integer() },
    ]

    /// Keys PgBouncer accepts under another name. `service_name` is its Windows spelling of `job_name`.
    static let keyAliases: [String: String] = ["service_name": "job_name"]

    static let specsByName: [String: KeySpec] =
        Dictionary(uniqueKeysWithValues: keySpecs.map { ($0.name, $0) })

    /// Outcome of one `key = value` line in the settings section.
    enum ApplyResult: Equatable {
        case applied
        case acceptedNotImplemented
        case unknown
    }

    /// Validates one `[pgbouncer]` line and stores it if Lifeguard uses the key.
    /// `key` must already be lower-cased and de-aliased.
    mutating func apply(key: String, value: String, at location: SourceLocation) throws -> ApplyResult {
        guard let spec = Self.specsByName[key] else { return .unknown }
        let parse = ValueParser(key: key, value: value, location: location)
        guard let store = spec.store else {
            try Self.validateLoosely(spec, parse)
            return .acceptedNotImplemented
        }
        try store(&self, parse)
        return .applied
    }

    /// Unimplemented keys are still type-checked so a typo fails now rather than when support lands.
    private static func validateLoosely(_ spec: KeySpec, _ parse: ValueParser) throws {
        switch spec.kind {
        case .string: break
        case .integer: _ = try parse.integer(in: Int.min...Int.max)
        case .boolean: _ = try parse.boolean()
        // Negative durations mean "unset" for some PgBouncer keys, so only the number is checked.
        case .seconds: _ = try parse.seconds(allowNegative: true)
        case .sslMode: _ = try parse.sslMode()
        }
    }
}

import Foundation

/// When a server connection goes back to the pool (see the PgBouncer reference, section 1.1).
public enum PoolMode: String, Sendable, Equatable, CaseIterable {
    case session, transaction, statement
}

/// How clients prove who they are. PgBouncer's other methods are recognised but refused for now.
public enum AuthType: String, Sendable, Equatable, CaseIterable {
    case trust, any, plain, md5
    case scramSHA256 = "scram-sha-256"

    /// Valid PgBouncer auth types that Lifeguard does not implement yet; they get a clear error
    /// instead of "invalid value" so users know the config is right but the feature is missing.
    static let unsupportedPgBouncerTypes: Set<String> = ["cert", "hba", "pam", "ldap"]
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

    public init() {}

    /// Every `[pgbouncer]` key PgBouncer knows, in its own (alphabetical) order, with the default as
    /// PgBouncer prints it and whether RELOAD can change it. SHOW CONFIG lists exactly these rows.
    public static let knownKeys: [(name: String, defaultValue: String, reloadable: Bool)] =
        keySpecs.map { (name: $0.name, defaultValue: $0.defaultValue, reloadable: $0.reloadable) }

    /// How a key's value is checked, and whether Lifeguard acts on it.
    struct KeySpec: Sendable {
        enum Kind: Sendable {
            case string, integer, boolean, seconds, sslMode
        }

        var name: String
        var defaultValue: String
        var reloadable: Bool
        /// Used only to validate keys Lifeguard does not implement; implemented keys are read in `apply`.
        var kind: Kind
        var implemented: Bool
    }

    private static func key(
        _ name: String, _ defaultValue: String, _ kind: KeySpec.Kind,
        implemented: Bool = false, restart: Bool = false
    ) -> KeySpec {
        KeySpec(name: name, defaultValue: defaultValue, reloadable: !restart, kind: kind, implemented: implemented)
    }

    static let defaultAuthQuery =
        "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin"

    // Order, defaults and reload flags follow PgBouncer 1.25 (reference section 1.2).
    static let keySpecs: [KeySpec] = [
        key("admin_users", "", .string, implemented: true),
        key("application_name_add_host", "0", .boolean, implemented: true),
        key("auth_dbname", "", .string),
        key("auth_file", "", .string, implemented: true),
        key("auth_hba_file", "", .string),
        key("auth_ident_file", "", .string),
        key("auth_ldap_options", "", .string),
        key("auth_query", defaultAuthQuery, .string),
        key("auth_type", "md5", .string, implemented: true),
        key("auth_user", "", .string),
        key("autodb_idle_timeout", "3600", .seconds, implemented: true),
        key("cancel_wait_timeout", "10", .seconds, implemented: true),
        key("client_idle_timeout", "0", .seconds, implemented: true),
        key("client_login_timeout", "60", .seconds, implemented: true),
        key("client_tls13_ciphers", "", .string),
        key("client_tls_ca_file", "", .string),
        key("client_tls_cert_file", "", .string),
        key("client_tls_ciphers", "default", .string),
        key("client_tls_dheparams", "auto", .string),
        key("client_tls_ecdhcurve", "auto", .string),
        key("client_tls_key_file", "", .string),
        key("client_tls_protocols", "secure", .string),
        key("client_tls_sslmode", "disable", .sslMode),
        key("conffile", "", .string),
        key("default_pool_size", "20", .integer, implemented: true),
        key("disable_pqexec", "0", .boolean, implemented: true, restart: true),
        key("dns_max_ttl", "15", .seconds, implemented: true),
        key("dns_nxdomain_ttl", "15", .seconds, implemented: true),
        key("dns_zone_check_period", "0", .seconds),
        key("idle_transaction_timeout", "0", .seconds, implemented: true),
        key("ignore_startup_parameters", "", .string, implemented: true),
        key("job_name", "pgbouncer", .string, restart: true),
        key("listen_addr", "", .string, implemented: true, restart: true),
        key("listen_backlog", "128", .integer, implemented: true, restart: true),
        key("listen_port", "6432", .integer, implemented: true, restart: true),
        key("log_connections", "1", .boolean, implemented: true),
        key("log_disconnections", "1", .boolean, implemented: true),
        key("log_pooler_errors", "1", .boolean, implemented: true),
        key("log_stats", "1", .boolean, implemented: true),
        key("logfile", "", .string, implemented: true),
        key("login_notify_message", "", .string, implemented: true),
        key("max_client_conn", "100", .integer, implemented: true),
        key("max_db_client_connections", "0", .integer, implemented: true),
        key("max_db_connections", "0", .integer, implemented: true),
        key("max_packet_size", "2147483647", .integer, implemented: true),
        key("max_prepared_statements", "200", .integer, implemented: true),
        key("max_user_client_connections", "0", .integer, implemented: true),
        key("max_user_connections", "0", .integer, implemented: true),
        key("min_pool_size", "0", .integer, implemented: true),
        key("peer_id", "0", .integer),
        key("pidfile", "", .string, implemented: true, restart: true),
        key("pkt_buf", "4096", .integer, implemented: true, restart: true),
        key("pool_idle_timeout", "0", .seconds, implemented: true),
        key("pool_mode", "session", .string, implemented: true),
        key("query_timeout", "0", .seconds, implemented: true),
        key("query_wait_notify", "5", .integer, implemented: true),
        key("query_wait_timeout", "120", .seconds, implemented: true),
        key("reserve_pool_size", "0", .integer, implemented: true),
        key("reserve_pool_timeout", "5", .seconds, implemented: true),
        key("resolv_conf", "", .string, restart: true),
        key("sbuf_loopcnt", "5", .integer),
        key("scram_iterations", "4096", .integer),
        key("server_check_delay", "30", .seconds, implemented: true),
        key("server_check_query", "<empty>", .string, implemented: true),
        key("server_connect_timeout", "15", .seconds, implemented: true),
        key("server_fast_close", "0", .boolean, implemented: true),
        key("server_idle_timeout", "600", .seconds, implemented: true),
        key("server_lifetime", "3600", .seconds, implemented: true),
        key("server_login_retry", "15", .seconds, implemented: true),
        key("server_reset_query", "DISCARD ALL", .string, implemented: true),
        key("server_reset_query_always", "0", .boolean, implemented: true),
        key("server_round_robin", "0", .boolean, implemented: true),
        key("server_tls13_ciphers", "", .string),
        key("server_tls_ca_file", "", .string),
        key("server_tls_cert_file", "", .string),
        key("server_tls_ciphers", "default", .string),
        key("server_tls_key_file", "", .string),
        key("server_tls_protocols", "secure", .string),
        key("server_tls_sslmode", "prefer", .sslMode),
        // Lifeguard's own; PgBouncer has no such key.
        key("share_unnamed_statements", "0", .boolean, implemented: true),
        key("so_reuseport", "0", .boolean, implemented: true, restart: true),
        key("stats_period", "60", .integer, implemented: true),
        key("stats_users", "", .string, implemented: true),
        key("suspend_timeout", "10", .seconds, implemented: true),
        key("syslog", "0", .boolean),
        key("syslog_facility", "daemon", .string),
        key("syslog_ident", "pgbouncer", .string),
        key("tcp_defer_accept", "1", .integer, implemented: true),
        key("tcp_keepalive", "1", .boolean, implemented: true),
        key("tcp_keepcnt", "0", .integer, implemented: true),
        key("tcp_keepidle", "0", .integer, implemented: true),
        key("tcp_keepintvl", "0", .integer, implemented: true),
        key("tcp_socket_buffer", "0", .integer, implemented: true),
        key("tcp_user_timeout", "0", .integer, implemented: true),
        key("track_extra_parameters", "IntervalStyle", .string, implemented: true, restart: true),
        key("transaction_timeout", "0", .seconds, implemented: true),
        key("unix_socket_dir", "/tmp", .string, implemented: true, restart: true),
        key("unix_socket_group", "", .string, restart: true),
        key("unix_socket_mode", "0777", .string, implemented: true, restart: true),
        key("user", "", .string, implemented: true, restart: true),
        key("verbose", "0", .integer, implemented: true),
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
        let parse = ValueParser(key: key, value: value, location: location)
        switch key {
        case "listen_addr": listenAddresses = parse.list()
        case "listen_port": listenPort = try parse.integer(in: 1...65535)
        case "unix_socket_dir": unixSocketDir = value
        case "unix_socket_mode": unixSocketMode = try parse.octalMode()
        case "auth_type": authType = try parse.authType()
        case "auth_file": authFile = parse.optionalString()
        case "pool_mode": poolMode = try parse.poolMode()
        case "max_client_conn": maxClientConn = try parse.integer()
        case "default_pool_size": defaultPoolSize = try parse.integer()
        case "min_pool_size": minPoolSize = try parse.integer()
        case "reserve_pool_size": reservePoolSize = try parse.integer()
        case "reserve_pool_timeout": reservePoolTimeout = try parse.seconds()
        case "server_login_retry": serverLoginRetry = try parse.seconds()
        case "max_db_connections": maxDBConnections = try parse.integer()
        case "max_user_connections": maxUserConnections = try parse.integer()
        case "server_reset_query": serverResetQuery = value
        case "server_reset_query_always": serverResetQueryAlways = try parse.boolean()
        case "ignore_startup_parameters": ignoreStartupParameters = parse.list()
        case "track_extra_parameters": trackExtraParameters = parse.list()
        case "application_name_add_host": applicationNameAddHost = try parse.boolean()
        case "logfile": logfile = parse.optionalString()
        case "pidfile": pidfile = parse.optionalString()
        case "user": user = parse.optionalString()
        case "verbose": verbose = try parse.integer()
        case "log_connections": logConnections = try parse.boolean()
        case "log_disconnections": logDisconnections = try parse.boolean()
        case "log_pooler_errors": logPoolerErrors = try parse.boolean()
        case "tcp_keepalive": tcpKeepalive = try parse.boolean()
        // PgBouncer reads this as an unsigned 32-bit value; anything above Int32.max is meaningless for
        // a protocol whose length field is a signed 32-bit integer.
        case "max_packet_size": maxPacketSize = try parse.integer(in: 1...2_147_483_647)
        case "disable_pqexec": disablePQExec = try parse.boolean()
        case "share_unnamed_statements": shareUnnamedStatements = try parse.boolean()
        case "max_prepared_statements": maxPreparedStatements = try parse.integer(in: 0...Int(Int32.max))
        case "listen_backlog": listenBacklog = try parse.integer(in: 1...Int.max)
        case "so_reuseport": soReuseport = try parse.boolean()
        case "pkt_buf": pktBuf = try parse.integer(in: 1...Int.max)
        case "stats_period": statsPeriod = try parse.seconds()
        case "server_fast_close": serverFastClose = try parse.boolean()
        case "server_check_delay": serverCheckDelay = try parse.seconds()
        case "server_check_query": serverCheckQuery = value == "<empty>" ? "" : (value.isEmpty ? nil : value)
        case "autodb_idle_timeout": autodbIdleTimeout = try parse.seconds()
        case "pool_idle_timeout": poolIdleTimeout = try parse.seconds()
        case "cancel_wait_timeout": cancelWaitTimeout = try parse.seconds()
        case "suspend_timeout": suspendTimeout = try parse.seconds()
        case "dns_max_ttl": dnsMaxTTL = try parse.seconds()
        case "dns_nxdomain_ttl": dnsNXDomainTTL = try parse.seconds()
        case "tcp_defer_accept": tcpDeferAccept = try parse.integer()
        case "tcp_keepcnt": tcpKeepCount = try parse.integer()
        case "tcp_keepidle": tcpKeepIdle = try parse.integer()
        case "tcp_keepintvl": tcpKeepInterval = try parse.integer()
        case "tcp_socket_buffer": tcpSocketBuffer = try parse.integer()
        case "tcp_user_timeout": tcpUserTimeout = try parse.integer()
        case "max_db_client_connections": maxDBClientConnections = try parse.integer()
        case "max_user_client_connections": maxUserClientConnections = try parse.integer()
        case "server_round_robin": serverRoundRobin = try parse.boolean()
        case "login_notify_message": loginNotifyMessage = value
        case "client_idle_timeout": clientIdleTimeout = try parse.seconds()
        case "client_login_timeout": clientLoginTimeout = try parse.seconds()
        case "idle_transaction_timeout": idleTransactionTimeout = try parse.seconds()
        case "query_timeout": queryTimeout = try parse.seconds()
        case "query_wait_timeout": queryWaitTimeout = try parse.seconds()
        case "server_connect_timeout": serverConnectTimeout = try parse.seconds()
        case "server_idle_timeout": serverIdleTimeout = try parse.seconds()
        case "server_lifetime": serverLifetime = try parse.seconds()
        case "transaction_timeout": transactionTimeout = try parse.seconds()
        case "query_wait_notify": queryWaitNotify = try parse.integer()
        case "log_stats": logStats = try parse.boolean()
        case "admin_users": adminUsers = parse.list()
        case "stats_users": statsUsers = parse.list()
        default:
            guard let spec = Self.specsByName[key] else {
                return .unknown
            }
            try Self.validateLoosely(spec, parse)
            return .acceptedNotImplemented
        }
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

import Glibc

/// A configuration problem that stops Lifeguard from starting (or a RELOAD from taking effect).
public struct ConfigurationError: Error, CustomStringConvertible, Equatable, Sendable {
    public var file: String
    /// 1-based; nil when the problem is the file as a whole (for example, it cannot be read).
    public var line: Int?
    /// The offending key or connection parameter, when there is one.
    public var key: String?
    public var message: String

    public init(file: String, line: Int? = nil, key: String? = nil, message: String) {
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    /// `file:line: message`, the form editors and grep understand.
    public var description: String {
        if let line {
            return "\(file):\(line): \(message)"
        }
        return "\(file): \(message)"
    }
}

/// One `[databases]` entry: where the pooler connects for a client-side database name.
public struct DatabaseDefinition: Sendable, Equatable {
    /// The section key, or "*" for the fallback entry.
    public var name: String
    /// nil means: use the database name the client asked for.
    public var dbname: String?
    /// nil means a Unix socket in `Settings.unixSocketDir` (PgBouncer's behaviour); a value starting
    /// with "/" is a Unix socket directory. Written as-is, so a comma list stays a comma list.
    public var host: String?
    public var port: Int
    /// Forced user: all clients share one pool and log in to the server as this user.
    public var user: String?
    public var password: String?
    public var poolSize: Int?
    public var minPoolSize: Int?
    /// `reserve_pool_size`, or its alias `reserve_pool`.
    public var reservePoolSize: Int?
    public var poolMode: PoolMode?
    public var maxDBConnections: Int?
    /// Run once after each new server login.
    public var connectQuery: String?
    // Sent to the server in the startup packet.
    public var clientEncoding: String?
    public var datestyle: String?
    public var timezone: String?
    public var applicationName: String?
    /// Per-database overrides of the `[pgbouncer]` values (nil: use the global one).
    public var queryWaitTimeout: Double?
    public var serverLifetime: Double?
    public var maxDBClientConnections: Int?
    /// auth_query for users missing from auth_file: who runs it, in which database, and the query.
    public var authUser: String?
    public var authDbname: String?
    public var authQuery: String?
    /// With a `host` list: true (`round-robin`, the default) moves to the next host for every new server
    /// connection; false (`disable`) stays on one host until a connection to it fails.
    public var loadBalanceHosts = true

    public init(
        name: String,
        dbname: String? = nil,
        host: String? = nil,
        port: Int = 5432,
        user: String? = nil,
        password: String? = nil,
        poolSize: Int? = nil,
        minPoolSize: Int? = nil,
        reservePoolSize: Int? = nil,
        poolMode: PoolMode? = nil,
        maxDBConnections: Int? = nil,
        connectQuery: String? = nil,
        clientEncoding: String? = nil,
        datestyle: String? = nil,
        timezone: String? = nil,
        applicationName: String? = nil
    ) {
        self.name = name
        self.dbname = dbname
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.poolSize = poolSize
        self.minPoolSize = minPoolSize
        self.reservePoolSize = reservePoolSize
        self.poolMode = poolMode
        self.maxDBConnections = maxDBConnections
        self.connectQuery = connectQuery
        self.clientEncoding = clientEncoding
        self.datestyle = datestyle
        self.timezone = timezone
        self.applicationName = applicationName
    }
}

/// One `[users]` entry: per-user overrides.
public struct UserDefinition: Sendable, Equatable {
    public var name: String
    public var poolMode: PoolMode?
    public var poolSize: Int?
    public var maxUserConnections: Int?
    /// Per-user overrides of the `[pgbouncer]` values (nil: use the database's or the global one).
    public var reservePoolSize: Int?
    public var maxUserClientConnections: Int?
    public var queryTimeout: Double?
    public var queryWaitTimeout: Double?
    public var idleTransactionTimeout: Double?
    public var transactionTimeout: Double?
    public var clientIdleTimeout: Double?

    public init(name: String, poolMode: PoolMode? = nil, poolSize: Int? = nil, maxUserConnections: Int? = nil) {
        self.name = name
        self.poolMode = poolMode
        self.poolSize = poolSize
        self.maxUserConnections = maxUserConnections
    }
}

/// One `[peers]` entry: another process of a peering group, which cancel requests carrying its peer id are
/// forwarded to.
public struct PeerDefinition: Sendable, Equatable {
    public var id: Int
    /// nil: the Unix socket directory of `unix_socket_dir`; a value starting with "/" is a directory.
    public var host: String?
    public var port: Int = 6432
    /// PgBouncer's bound on forwarded cancels in flight to this peer (nil: default_pool_size).
    public var poolSize: Int?

    public init(id: Int) {
        self.id = id
    }
}

/// A whole pgbouncer.ini-format configuration file, parsed and validated.
public struct Configuration: Sendable, Equatable {
    public var settings: Settings
    /// Named entries; the "*" fallback lives in `fallbackDatabase`.
    public var databases: [String: DatabaseDefinition]
    public var fallbackDatabase: DatabaseDefinition?
    public var users: [String: UserDefinition]
    /// `[peers]`, by peer id.
    public var peers: [Int: PeerDefinition] = [:]
    /// Things that did not stop loading but that the operator should see (logged at startup).
    public var warnings: [String]
    /// The path (or name) the configuration was read from; RELOAD reads it again.
    public var sourcePath: String
    /// The `[pgbouncer]` values as written (last one wins), keyed by canonical lower-case name,
    /// including keys Lifeguard does not implement; SHOW CONFIG reports these.
    public var rawSettings: [String: String]

    public init(
        settings: Settings = Settings(),
        databases: [String: DatabaseDefinition] = [:],
        fallbackDatabase: DatabaseDefinition? = nil,
        users: [String: UserDefinition] = [:],
        warnings: [String] = [],
        sourcePath: String = "",
        rawSettings: [String: String] = [:]
    ) {
        self.settings = settings
        self.databases = databases
        self.fallbackDatabase = fallbackDatabase
        self.users = users
        self.warnings = warnings
        self.sourcePath = sourcePath
        self.rawSettings = rawSettings
    }

    /// The name clients use to reach the admin console, so no pooled database may take it.
    public static let adminDatabaseName = "pgbouncer"

    /// Reads `path`; `%include` names are opened as written, so relative ones resolve against the
    /// current directory, as in PgBouncer.
    public static func load(path: String) throws -> Configuration {
        let text = try readFile(path, reportedAs: path)
        return try parse(text, fileName: path) { include in
            try readFile(include, reportedAs: include)
        }
    }

    /// Parses configuration text. `readInclude` returns the text of a `%include`d file (tests pass a
    /// dictionary lookup; `load` reads the disk).
    public static func parse(
        _ text: String,
        fileName: String,
        readInclude: (String) throws -> String
    ) throws -> Configuration {
        let entries = try IniParser.parse(text, fileName: fileName, readInclude: readInclude)
        var builder = ConfigurationBuilder()
        for entry in entries {
            try builder.add(entry)
        }
        var configuration = builder.configuration
        configuration.sourcePath = fileName
        return configuration
    }

    /// The definition for a client-side database name: its own entry, else the "*" fallback aimed at
    /// that name (unless the fallback forces a `dbname` of its own), else nil.
    /// The admin console's `SET key = value`: changes one `[pgbouncer]` setting at run time. Returns false
    /// (PgBouncer only answers `SET failed`) for unknown keys, bad values and keys that need a restart.
    public mutating func setAtRuntime(key rawKey: String, value: String) -> Bool {
        let lowered = rawKey.lowercased()
        let key = Settings.keyAliases[lowered] ?? lowered
        guard Settings.knownKeys.contains(where: { $0.name == key && $0.reloadable }) else { return false }
        var updated = settings
        guard let result = try? updated.apply(key: key, value: value, at: SourceLocation(file: "SET", line: 0)),
            result != .unknown
        else { return false }
        settings = updated
        rawSettings[key] = value
        return true
    }

    /// The database a client names: its `[databases]` entry, else the `*` fallback under that name.
    public func database(named name: String) -> DatabaseDefinition? {
        Self.database(named: name, databases: databases, fallback: fallbackDatabase)
    }

    /// The same lookup on the two fields it needs: a caller whose configuration is stored in a class passes
    /// them as `configuration.databases` and `configuration.fallbackDatabase`, so that a login does not copy
    /// the whole configuration (callgrind showed it retaining every field).
    public static func database(
        named name: String, databases: [String: DatabaseDefinition], fallback: DatabaseDefinition?
    ) -> DatabaseDefinition? {
        if let exact = databases[name] {
            return exact
        }
        guard var fallback else {
            return nil
        }
        fallback.name = name
        if fallback.dbname == nil {
            fallback.dbname = name
        }
        return fallback
    }

    static func readFile(_ path: String, reportedAs name: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let reason = errno == ENOENT ? "no such file" : "permission denied or not a regular file"
            throw ConfigurationError(file: name, message: "could not read file: \(reason)")
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = read(fd, &chunk, chunk.count)
            if count == 0 { break }
            guard count > 0 else {
                if errno == EINTR { continue }
                throw ConfigurationError(file: name, message: "could not read file: permission denied or not a regular file")
            }
            bytes += chunk[..<count]
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigurationError(file: name, message: "file is not valid UTF-8")
        }
        return text
    }
}

/// Walks the ini entries in order, tracking the current section.
private struct ConfigurationBuilder {
    enum Section {
        case none, settings, databases, users, peers, ignored
    }

    var configuration = Configuration()
    var section = Section.none

    mutating func add(_ entry: IniEntry) throws {
        switch entry.kind {
        case .section(let name):
            section = sectionKind(name, at: entry.location)
        case .setting(let key, let value):
            let location = entry.location
            switch section {
            case .none:
                throw IniParser.error(at: location, "key \"\(key)\" is outside of any section", key: key)
            case .settings:
                try addSetting(key: key, value: value, at: location)
            case .databases:
                try addDatabase(name: key, value: value, at: location)
            case .users:
                try addUser(name: key, value: value, at: location)
            case .peers:
                try addPeer(id: key, value: value, at: location)
            case .ignored:
                break
            }
        }
    }

    private mutating func sectionKind(_ name: String, at location: SourceLocation) -> Section {
        switch name {
        case "pgbouncer", "lifeguard": return .settings
        case "databases": return .databases
        case "users": return .users
        case "peers": return .peers
        default:
            warn(at: location, "unknown section [\(name)]; ignored")
            return .ignored
        }
    }

    private mutating func addSetting(key rawKey: String, value: String, at location: SourceLocation) throws {
        // PgBouncer matches parameter names case-insensitively.
        let lowered = rawKey.lowercased()
        let key = Settings.keyAliases[lowered] ?? lowered
        switch try configuration.settings.apply(key: key, value: value, at: location) {
        case .applied:
            configuration.rawSettings[key] = value
        case .acceptedNotImplemented:
            configuration.rawSettings[key] = value
            warn(at: location, "key \"\(key)\" is accepted but not implemented yet; ignored")
        case .unknown:
            warn(at: location, "unknown parameter \"\(rawKey)\"; ignored")
        }
    }

    private mutating func addDatabase(name: String, value: String, at location: SourceLocation) throws {
        if name.lowercased() == Configuration.adminDatabaseName {
            throw IniParser.error(
                at: location,
                "database name \"\(name)\" is reserved for the admin console",
                key: name
            )
        }
        let pairs = try ConnectionString.parse(value, at: location)
        var definition = DatabaseDefinition(name: name)
        for (parameter, parameterValue) in pairs {
            let parse = ValueParser(key: parameter, value: parameterValue, location: location)
            switch parameter {
            case "dbname": definition.dbname = parse.optionalString()
            case "host": definition.host = parse.optionalString()
            case "port": definition.port = try parse.integer(in: 1...65535)
            case "user": definition.user = parse.optionalString()
            case "password": definition.password = parameterValue
            case "pool_size": definition.poolSize = try parse.integer()
            case "min_pool_size": definition.minPoolSize = try parse.integer()
            case "reserve_pool_size", "reserve_pool": definition.reservePoolSize = try parse.integer()
            case "pool_mode": definition.poolMode = try parse.poolMode()
            case "max_db_connections": definition.maxDBConnections = try parse.integer()
            case "connect_query": definition.connectQuery = parse.optionalString()
            case "client_encoding": definition.clientEncoding = parse.optionalString()
            case "datestyle": definition.datestyle = parse.optionalString()
            case "timezone": definition.timezone = parse.optionalString()
            case "application_name": definition.applicationName = parse.optionalString()
            case "auth_user": definition.authUser = parse.optionalString()
            case "auth_dbname": definition.authDbname = parse.optionalString()
            case "auth_query": definition.authQuery = parse.optionalString()
            case "max_db_client_connections": definition.maxDBClientConnections = try parse.integer()
            case "query_wait_timeout":
                // -1 means "not set" for the per-database query_wait_timeout.
                let seconds = try parse.seconds(allowNegative: true)
                definition.queryWaitTimeout = seconds < 0 ? nil : seconds
            case "server_lifetime": definition.serverLifetime = try parse.seconds()
            case "load_balance_hosts":
                definition.loadBalanceHosts = try parse.oneOf(["round-robin", "disable"]) == "round-robin"
            default:
                throw IniParser.error(at: location, "unrecognized connection parameter: \(parameter)", key: parameter)
            }
        }
        if name == "*" {
            configuration.fallbackDatabase = definition
        } else {
            configuration.databases[name] = definition
        }
    }

    private mutating func addPeer(id key: String, value: String, at location: SourceLocation) throws {
        let id = try ValueParser(key: key, value: key, location: location).integer(in: 1...16383)
        var definition = PeerDefinition(id: id)
        for (parameter, parameterValue) in try ConnectionString.parse(value, at: location) {
            let parse = ValueParser(key: parameter, value: parameterValue, location: location)
            switch parameter {
            case "host": definition.host = parse.optionalString()
            case "port": definition.port = try parse.integer(in: 1...65535)
            case "pool_size": definition.poolSize = try parse.integer()
            default:
                throw IniParser.error(at: location, "unrecognized peer parameter: \(parameter)", key: parameter)
            }
        }
        configuration.peers[id] = definition
    }

    private mutating func addUser(name: String, value: String, at location: SourceLocation) throws {
        let pairs = try ConnectionString.parse(value, at: location)
        var definition = UserDefinition(name: name)
        for (parameter, parameterValue) in pairs {
            let parse = ValueParser(key: parameter, value: parameterValue, location: location)
            switch parameter {
            case "pool_mode": definition.poolMode = try parse.poolMode()
            case "pool_size": definition.poolSize = try parse.integer()
            case "max_user_connections": definition.maxUserConnections = try parse.integer()
            case "reserve_pool_size": definition.reservePoolSize = try parse.integer()
            case "max_user_client_connections": definition.maxUserClientConnections = try parse.integer()
            case "query_timeout", "query_wait_timeout", "idle_transaction_timeout",
                 "transaction_timeout", "client_idle_timeout":
                // -1 means "not set", as in PgBouncer.
                let raw = try parse.seconds(allowNegative: true)
                let seconds: Double? = raw < 0 ? nil : raw
                switch parameter {
                case "query_timeout": definition.queryTimeout = seconds
                case "query_wait_timeout": definition.queryWaitTimeout = seconds
                case "idle_transaction_timeout": definition.idleTransactionTimeout = seconds
                case "transaction_timeout": definition.transactionTimeout = seconds
                default: definition.clientIdleTimeout = seconds
                }
            default:
                throw IniParser.error(at: location, "unrecognized user parameter: \(parameter)", key: parameter)
            }
        }
        configuration.users[name] = definition
    }

    private mutating func notImplemented(_ parameter: String, of kind: String, _ name: String, at location: SourceLocation) {
        warn(at: location, "\(kind) \"\(name)\": parameter \"\(parameter)\" is accepted but not implemented yet; ignored")
    }

    private mutating func warn(at location: SourceLocation, _ message: String) {
        configuration.warnings.append("\(location.file):\(location.line): \(message)")
    }
}

/// The `key=value key='quoted value'` strings used in `[databases]` and `[users]`.
enum ConnectionString {
    /// Returns pairs in written order (a repeated key simply applies twice, so the last one wins).
    static func parse(_ text: String, at location: SourceLocation) throws -> [(String, String)] {
        var pairs: [(String, String)] = []
        var rest = text[...]
        while true {
            rest = rest.drop { $0.isWhitespace }
            if rest.isEmpty {
                return pairs
            }
            let keyText = rest.prefix { $0 != "=" && !$0.isWhitespace }
            rest = rest.dropFirst(keyText.count).drop { $0.isWhitespace }
            guard !keyText.isEmpty, rest.first == "=" else {
                let shown = keyText.isEmpty ? String(rest.prefix(20)) : String(keyText)
                throw IniParser.error(
                    at: location,
                    "syntax error in connection string: expected \"key=value\" near \"\(shown)\"",
                    key: keyText.isEmpty ? nil : String(keyText)
                )
            }
            // Keywords are matched case-insensitively; values keep their case.
            let key = keyText.lowercased()
            rest = rest.dropFirst().drop { $0.isWhitespace }
            let value: String
            if rest.first == "'" {
                do {
                    (value, rest) = try IniParser.readQuoted(rest, quote: "'", at: location)
                } catch var error as ConfigurationError {
                    error.key = key
                    throw error
                }
                if let next = rest.first, !next.isWhitespace {
                    throw IniParser.error(
                        at: location,
                        "syntax error in connection string: unexpected text after quoted value of \"\(key)\"",
                        key: key
                    )
                }
            } else {
                let raw = rest.prefix { !$0.isWhitespace }
                value = String(raw)
                rest = rest.dropFirst(raw.count)
            }
            pairs.append((key, value))
        }
    }
}

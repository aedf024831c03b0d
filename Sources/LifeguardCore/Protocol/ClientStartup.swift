import PostgresWire

/// The session parameters that follow a client from server to server: when a client is given a server whose
/// values differ, Lifeguard sets the client's values first (as PgBouncer's "varcache" does).
public enum TrackedParameter {
    /// Names as PostgreSQL reports them in ParameterStatus, in the order SET statements are issued.
    public static let names = [
        "client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings", "application_name",
        "IntervalStyle",
    ]

    /// The canonical spelling for a name given in any case, or nil when the parameter is not tracked.
    public static func canonicalName(_ name: String) -> String? {
        let lowered = name.lowercased()
        return names.first { $0.lowercased() == lowered }
    }
}

/// Tracked parameter values of one client or one server connection.
public struct ParameterSet: Sendable, Equatable {
    private var values: [String: String] = [:]

    public init() {}

    public subscript(name: String) -> String? {
        get { values[name] }
        set { values[name] = newValue }
    }

    /// Sets `name` only if it is tracked; returns whether it was.
    @discardableResult
    public mutating func update(name: String, value: String) -> Bool {
        guard let canonical = TrackedParameter.canonicalName(name) else { return false }
        values[canonical] = value
        return true
    }

    /// The SET statements that turn a server with `server` values into one with these values, or nil when
    /// nothing differs. Values compare case-insensitively, as PostgreSQL spells them back in its own case.
    public func setStatements(toMatch server: ParameterSet) -> String? {
        var sql = ""
        for name in TrackedParameter.names {
            guard let wanted = values[name] else { continue }
            if let current = server.values[name], current.caseInsensitiveCompare(wanted) {
                continue
            }
            sql += "SET \(name)=\(Self.quoteLiteral(wanted));"
        }
        return sql.isEmpty ? nil : sql
    }

    static func quoteLiteral(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "'", with: "''") + "'"
    }

    /// Fills in every tracked name this set lacks from `defaults`.
    public mutating func fillUnset(from defaults: ParameterSet) {
        for (name, value) in defaults.values where values[name] == nil {
            values[name] = value
        }
    }

    public var isEmpty: Bool { values.isEmpty }
}

extension String {
    fileprivate func caseInsensitiveCompare(_ other: String) -> Bool {
        self.lowercased() == other.lowercased()
    }
}

/// What a client asked for in its StartupMessage, validated the way PgBouncer validates it.
public struct ClientStartup: Sendable, Equatable {
    public var user: String
    public var database: String
    /// Tracked parameters the client set, by canonical name.
    public var parameters: ParameterSet
    /// `_pq_.` protocol options the client asked for; answered with NegotiateProtocolVersion.
    public var unsupportedProtocolOptions: [String]
    public var minorProtocolVersion: Int

    /// Validates a startup packet. `ignored` is `ignore_startup_parameters`.
    public init(
        protocolVersion: Int32, parameters raw: [(String, String)], ignored: [String]
    ) throws(PoolerError) {
        let major = Int(protocolVersion >> 16)
        guard major == 3 else { throw major < 3 ? .oldProtocol : .badPacket }
        minorProtocolVersion = Int(protocolVersion & 0xFFFF)
        var user: String?
        var database: String?
        var parameters = ParameterSet()
        var protocolOptions: [String] = []
        let ignoredNames = Set(ignored.map { $0.lowercased() })

        for (name, value) in raw {
            switch name {
            case "user":
                user = value
            case "database":
                database = value
            case "options":
                try Self.applyOptions(
                    value, to: &parameters, ignoredNames: ignoredNames,
                    ignoreUnknown: ignoredNames.contains("options"))
            default:
                if name.hasPrefix("_pq_.") {
                    protocolOptions.append(name)
                } else if parameters.update(name: name, value: value) {
                    continue
                } else if !ignoredNames.contains(name.lowercased()) {
                    throw .unsupportedStartupParameter(name)
                }
            }
        }
        guard let user, !user.isEmpty else { throw .noUsername }
        self.user = user
        self.database = (database?.isEmpty ?? true) ? user : database!
        self.parameters = parameters
        self.unsupportedProtocolOptions = protocolOptions
    }

    /// `options` may only carry `-c name=value` / `--name=value` of tracked or ignored parameters; with
    /// `options` itself in ignore_startup_parameters, the tracked ones still apply and the rest are dropped.
    private static func applyOptions(
        _ options: String, to parameters: inout ParameterSet, ignoredNames: Set<String>, ignoreUnknown: Bool
    ) throws(PoolerError) {
        var words = splitOptions(options)[...]
        while let word = words.popFirst() {
            let setting: String
            if word == "-c" {
                guard let next = words.popFirst() else { throw .unsupportedOptionsSyntax }
                setting = next
            } else if word.hasPrefix("-c") {
                setting = String(word.dropFirst(2))
            } else if word.hasPrefix("--") {
                setting = String(word.dropFirst(2))
            } else {
                throw .unsupportedOptionsSyntax
            }
            guard let equals = setting.firstIndex(of: "=") else { throw .unsupportedOptionsSyntax }
            let name = String(setting[..<equals]).replacingOccurrences(of: "-", with: "_")
            let value = String(setting[setting.index(after: equals)...])
            if parameters.update(name: name, value: value) { continue }
            if ignoreUnknown || ignoredNames.contains(name.lowercased()) { continue }
            throw .unsupportedOptionsParameter(name)
        }
    }

    /// Splits `options` at unescaped spaces; a backslash makes the next character literal, as libpq and
    /// PostgreSQL read it (`-c datestyle=German,\ YMD`).
    static func splitOptions(_ options: String) -> [String] {
        var words: [String] = []
        var current = ""
        var escaped = false
        for character in options {
            if escaped {
                current.append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == " " {
                if !current.isEmpty { words.append(current) }
                current = ""
            } else {
                current.append(character)
            }
        }
        if !current.isEmpty { words.append(current) }
        return words
    }
}

import PostgresWire

/// The session parameters that follow a client from server to server: when a client is given a server whose
/// values differ, Lifeguard sets the client's values first (as PgBouncer's "varcache" does).
public enum TrackedParameter {
    /// Tracked whatever the configuration says: every parameter PostgreSQL 15 reports in ParameterStatus
    /// that a session can SET, in the order SET statements are issued. The others it reports (server_version,
    /// is_superuser, ...) describe the server and cannot be replayed.
    public static let builtInNames = [
        "client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings", "application_name",
        "IntervalStyle", "default_transaction_read_only",
    ]

    /// The tracked names: the built-in ones, then those of track_extra_parameters. Set once at startup,
    /// before any connection (the setting needs a restart, as in PgBouncer), so every ParameterSet has the
    /// same slots.
    public nonisolated(unsafe) private(set) static var names = builtInNames
    private nonisolated(unsafe) static var lowercasedNames = builtInNames.map { $0.lowercased() }

    /// Tracks `extraNames` (track_extra_parameters) too. Only parameters the server reports follow the
    /// clients' own SET commands; the others keep the value each client asked for in its startup packet.
    public static func track(extraNames: [String]) {
        names = names(adding: extraNames)
        lowercasedNames = names.map { $0.lowercased() }
    }

    /// The built-in names followed by those of `extraNames` that are not among them, in any case.
    public static func names(adding extraNames: [String]) -> [String] {
        var result = builtInNames
        var seen = Set(result.map { $0.lowercased() })
        for name in extraNames where seen.insert(name.lowercased()).inserted {
            result.append(name)
        }
        return result
    }

    /// The slot of `name` in `names`, in any case, or nil when the parameter is not tracked.
    /// PostgreSQL reports the canonical spelling, so the exact match is tried first.
    public static func index(of name: String) -> Int? {
        if let exact = names.firstIndex(of: name) { return exact }
        let lowered = name.lowercased()
        return lowercasedNames.firstIndex(of: lowered)
    }

    /// The canonical spelling for a name given in any case, or nil when the parameter is not tracked.
    public static func canonicalName(_ name: String) -> String? {
        index(of: name).map { names[$0] }
    }

    /// `text` as an SQL string literal that means the same whatever `standard_conforming_strings` is: an
    /// escape string (`E'...'`) with quotes and backslashes doubled. Client-chosen values never become SQL.
    public static func literal(_ text: String) -> String {
        var quoted: [UInt8] = Array("E'".utf8)
        quoted.reserveCapacity(text.utf8.count + 3)
        for byte in text.utf8 {
            // Both are ASCII, so they never occur inside a multi-byte UTF-8 sequence.
            if byte == UInt8(ascii: "'") || byte == UInt8(ascii: "\\") { quoted.append(byte) }
            quoted.append(byte)
        }
        quoted.append(UInt8(ascii: "'"))
        return String(decoding: quoted, as: UTF8.self)
    }
}

/// Tracked parameter values of one client or one server connection, one slot per tracked name.
///
/// Compared on every link of a client to a server (every transaction in transaction mode), so it is a
/// fixed array rather than a dictionary, and equal values compare without case folding.
public struct ParameterSet: Sendable, Equatable {
    private var values = [String?](repeating: nil, count: TrackedParameter.names.count)

    public init() {}

    public subscript(name: String) -> String? {
        get { TrackedParameter.index(of: name).flatMap { values[$0] } }
        set {
            if let index = TrackedParameter.index(of: name) { values[index] = newValue }
        }
    }

    /// The value in slot `index` of `TrackedParameter.names`.
    public func value(at index: Int) -> String? {
        values[index]
    }

    /// Sets `name` only if it is tracked; returns whether it was.
    @discardableResult
    public mutating func update(name: String, value: String) -> Bool {
        guard let index = TrackedParameter.index(of: name) else { return false }
        values[index] = value
        return true
    }

    /// A value a server must take to match a client: nil resets the parameter to its default.
    public struct Change: Sendable, Equatable {
        public var name: String
        public var value: String?
    }

    /// What turns a server with `server` values into one with these values (empty when nothing differs).
    /// Values compare case-insensitively, as PostgreSQL spells them back in its own case. A value this set
    /// lacks while the server has one (a parameter PostgreSQL does not report, so no default was learnt,
    /// that another client set) is reset, so no client inherits another's.
    public func changes(toMatch server: ParameterSet) -> [Change] {
        // Runs on every link of a client to a server: identical sets (the usual case) end here.
        if values == server.values { return [] }
        var changes: [Change] = []
        for index in values.indices {
            let wanted = values[index]
            if let wanted, let current = server.values[index],
                current == wanted || current.lowercased() == wanted.lowercased()
            {
                continue
            }
            if wanted == nil, server.values[index] == nil { continue }
            changes.append(Change(name: TrackedParameter.names[index], value: wanted))
        }
        return changes
    }

    /// The query that makes `changes`, nil when there are none. Each value goes through `set_config` as a
    /// string literal: PostgreSQL parses it exactly as it would the startup packet's value (a search_path
    /// list stays a list), and no value can end the statement.
    public static func setStatement(for changes: [Change]) -> String? {
        guard !changes.isEmpty else { return nil }
        let calls = changes.map { change in
            "pg_catalog.set_config(\(TrackedParameter.literal(change.name)), \(change.value.map(TrackedParameter.literal) ?? "NULL"), false)"
        }
        return "SELECT " + calls.joined(separator: ", ")
    }

    public func setStatements(toMatch server: ParameterSet) -> String? {
        Self.setStatement(for: changes(toMatch: server))
    }

    /// `changes` as the SET commands they amount to, for PgBouncer's `varcache_apply` debug line (the
    /// statement sent is `setStatement`'s).
    public static func describe(_ changes: [Change]) -> String {
        changes.map { change in
            guard let value = change.value else { return "RESET \(change.name)" }
            return "SET \(change.name)='\(value.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "''"))'"
        }.joined(separator: "; ")
    }

    /// Fills in every tracked value this set lacks from `defaults`.
    public mutating func fillUnset(from defaults: ParameterSet) {
        for index in values.indices where values[index] == nil {
            values[index] = defaults.values[index]
        }
    }

    /// Takes `other`'s value for every slot both sets have: after a parameter sync the server's spelling
    /// becomes the client's, so later comparisons take the fast path. Returns the values whose spelling
    /// changed (PostgreSQL's canonical form, "ISO, MDY" for "ISO").
    @discardableResult
    public mutating func adoptSpelling(from other: ParameterSet) -> [(name: String, from: String, to: String)] {
        var respelled: [(name: String, from: String, to: String)] = []
        for index in values.indices {
            guard let own = values[index], let theirs = other.values[index], own != theirs else { continue }
            respelled.append((TrackedParameter.names[index], own, theirs))
            values[index] = theirs
        }
        return respelled
    }

    public var isEmpty: Bool { values.allSatisfy { $0 == nil } }
}

/// `ignore_startup_parameters`: names a client may send that Lifeguard accepts and drops. Built once from the
/// settings, compared without case.
public struct IgnoredStartupParameters: Sendable, ExpressibleByArrayLiteral {
    private let lowercasedNames: Set<String>

    public init(_ names: [String]) {
        lowercasedNames = Set(names.map { $0.lowercased() })
    }

    public init(arrayLiteral names: String...) {
        self.init(names)
    }

    public func contains(_ name: String) -> Bool {
        lowercasedNames.contains(name.lowercased())
    }
}

/// The `replication` startup parameter: a walsender connection, for streaming WAL (physical) or for logical
/// decoding and SQL (logical, `replication=database`).
public enum ReplicationMode: String, Sendable, Equatable {
    case none
    case physical
    case logical

    /// PostgreSQL's reading of the value: `database` (exactly) is logical; a boolean (`true`, `on`, `yes`,
    /// `1`, any unambiguous prefix, in any case) is physical, or none when false; anything else is nil.
    public init?(parameter value: String) {
        if value == "database" {
            self = .logical
            return
        }
        let lowered = value.lowercased()
        func isPrefix(of word: String, atLeast minimum: Int = 1) -> Bool {
            lowered.count >= minimum && word.hasPrefix(lowered)
        }
        if isPrefix(of: "true") || isPrefix(of: "yes") || isPrefix(of: "on", atLeast: 2) || lowered == "1" {
            self = .physical
        } else if isPrefix(of: "false") || isPrefix(of: "no") || isPrefix(of: "off", atLeast: 2) || lowered == "0" {
            self = .none
        } else {
            return nil
        }
    }

    /// The value the server's startup packet carries.
    public var parameterValue: String? {
        switch self {
        case .none: nil
        case .physical: "yes"
        case .logical: "database"
        }
    }
}

/// What a client asked for in its StartupMessage, validated the way PgBouncer validates it.
public struct ClientStartup: Sendable, Equatable {
    public var user: String
    public var database: String
    /// Tracked parameters the client set, by canonical name.
    public var parameters: ParameterSet
    /// A replication connection gets a server of its own, opened with the client's parameters.
    public var replication: ReplicationMode = .none
    /// A replication client's `options`, passed to its server as they are (any `-c` setting goes).
    public var replicationOptions: String?
    /// `_pq_.` protocol options the client asked for; answered with NegotiateProtocolVersion.
    public var unsupportedProtocolOptions: [String]
    public var minorProtocolVersion: Int

    /// Validates a startup packet against `ignore_startup_parameters`.
    public init(
        protocolVersion: Int32, parameters raw: [(String, String)], ignored ignoredNames: IgnoredStartupParameters
    ) throws(PoolerError) {
        let major = Int(protocolVersion >> 16)
        guard major == 3 else { throw major < 3 ? .oldProtocol : .badPacket }
        minorProtocolVersion = Int(protocolVersion & 0xFFFF)
        var user: String?
        var database: String?
        var parameters = ParameterSet()
        var protocolOptions: [String] = []
        // Read first: it decides how `options` is taken, wherever the two are in the packet.
        if let value = raw.last(where: { $0.0 == "replication" })?.1 {
            guard let mode = ReplicationMode(parameter: value) else { throw .invalidReplicationValue(value) }
            replication = mode
        }

        for (name, value) in raw {
            switch name {
            case "user":
                user = value
            case "database":
                database = value
            case "replication":
                continue
            case "options" where replication != .none:
                replicationOptions = value
            case "options":
                try Self.applyOptions(
                    value, to: &parameters, ignoredNames: ignoredNames,
                    ignoreUnknown: ignoredNames.contains("options"))
            default:
                if name.hasPrefix("_pq_.") {
                    protocolOptions.append(name)
                } else if parameters.update(name: name, value: value) {
                    continue
                } else if !ignoredNames.contains(name) {
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
        _ options: String, to parameters: inout ParameterSet, ignoredNames: IgnoredStartupParameters, ignoreUnknown: Bool
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
            let name = String(setting[..<equals].map { $0 == "-" ? "_" : $0 })
            let value = String(setting[setting.index(after: equals)...])
            if parameters.update(name: name, value: value) { continue }
            if ignoreUnknown || ignoredNames.contains(name) { continue }
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

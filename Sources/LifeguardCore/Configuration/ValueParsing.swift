
/// Typed readers for configuration values. Each failure names the file, line and key,
/// because a pooler that refuses to start must say exactly which line to fix.
struct ValueParser {
    var key: String
    var value: String
    var location: SourceLocation

    func invalid(_ reason: String) -> ConfigurationError {
        ConfigurationError(
            file: location.file,
            line: location.line,
            key: key,
            message: "invalid value for key \"\(key)\": \"\(value)\" \(reason)"
        )
    }

    func integer(in range: ClosedRange<Int> = 0...Int.max) throws -> Int {
        // PgBouncer reads these with strtol, so surrounding blanks and a leading "+" are tolerated.
        let text = value.trimmingWhitespace()
        guard let number = Int(text.hasPrefix("+") ? String(text.dropFirst()) : text) else {
            throw invalid("is not an integer")
        }
        try check(number, in: range)
        return number
    }

    /// PgBouncer stores its switches as integers; the usual words are accepted as well so that
    /// `log_connections = on` does what its author meant.
    func boolean() throws -> Bool {
        switch value.trimmingWhitespace().lowercased() {
        case "1", "on", "yes", "true": return true
        case "0", "off", "no", "false": return false
        default:
            if let number = Int(value.trimmingWhitespace()) {
                return number != 0
            }
            throw invalid("is not a boolean (use 0/1, on/off, yes/no or true/false)")
        }
    }

    /// Durations are seconds, fractions allowed, as in PgBouncer.
    func seconds(allowNegative: Bool = false) throws -> Double {
        guard let number = Double(value.trimmingWhitespace()), number.isFinite else {
            throw invalid("is not a number of seconds")
        }
        if number < 0 && !allowNegative {
            throw invalid("must not be negative")
        }
        return number
    }

    /// File modes are written in octal ("0777", "777" or "0o777"), like chmod.
    func octalMode() throws -> Int {
        var text = value.trimmingWhitespace().lowercased()
        if text.hasPrefix("0o") {
            text.removeFirst(2)
        }
        guard !text.isEmpty, let mode = Int(text, radix: 8), (0...0o7777).contains(mode) else {
            throw invalid("is not an octal file mode")
        }
        return mode
    }

    func poolMode() throws -> PoolMode {
        guard let mode = PoolMode(rawValue: value.trimmingWhitespace().lowercased()) else {
            throw invalid("is not a pool mode (session, transaction or statement)")
        }
        return mode
    }

    func authType() throws -> AuthType {
        let text = value.trimmingWhitespace().lowercased()
        if let type = AuthType(rawValue: text) {
            return type
        }
        if AuthType.unsupportedPgBouncerTypes.contains(text) {
            throw ConfigurationError(
                file: location.file,
                line: location.line,
                key: key,
                message: "auth_type \(text) is not supported yet"
            )
        }
        throw invalid("is not an auth type (trust, any, plain, md5 or scram-sha-256)")
    }

    static let sslModes = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

    func sslMode() throws -> String {
        let text = value.trimmingWhitespace().lowercased()
        guard Self.sslModes.contains(text) else {
            throw invalid("is not an SSL mode (\(Self.sslModes.joined(separator: ", ")))")
        }
        return text
    }

    /// `*_tls_protocols`: the range of TLS versions it allows.
    func tlsVersions() throws -> ClosedRange<Int> {
        guard let versions = TLSSettings.versions(from: value) else {
            throw invalid("is not a TLS protocol list (tlsv1.0, tlsv1.1, tlsv1.2, tlsv1.3, all, secure, legacy)")
        }
        return versions
    }

    func oneOf(_ choices: [String]) throws -> String {
        let text = value.trimmingWhitespace().lowercased()
        guard choices.contains(text) else {
            throw invalid("is not one of \(choices.joined(separator: ", "))")
        }
        return text
    }

    /// Comma-separated lists (listen_addr, admin_users, ...); blanks around items and empty items are dropped.
    func list() -> [String] {
        value.split(separator: ",")
            .map { $0.trimmingWhitespace() }
            .filter { !$0.isEmpty }
    }

    /// Unset and empty mean the same thing for paths and names.
    func optionalString() -> String? {
        value.isEmpty ? nil : value
    }

    private func check(_ number: Int, in range: ClosedRange<Int>) throws {
        guard range.contains(number) else {
            if range.lowerBound == 0 && range.upperBound == Int.max {
                throw invalid("must not be negative")
            }
            if range.upperBound == Int.max {
                throw invalid("must be at least \(range.lowerBound)")
            }
            throw invalid("is out of range (\(range.lowerBound)-\(range.upperBound))")
        }
    }
}


/// The `auth_file` (userlist.txt): user names and their passwords or password secrets.
public struct UserList: Sendable, Equatable {
    /// user -> plain password, "md5..." hash, or "SCRAM-SHA-256$..." secret, exactly as written.
    /// The authentication code decides which form it is; this type only reads the file.
    public var secrets: [String: String]

    public init(secrets: [String: String] = [:]) {
        self.secrets = secrets
    }

    public static func load(path: String) throws -> UserList {
        try parse(Configuration.readFile(path, reportedAs: path), fileName: path)
    }

    /// Each line is `"user" "secret"`, optionally followed by anything (PgBouncer ignores the rest);
    /// `""` inside a field is a literal quote. A repeated user keeps the last secret.
    public static func parse(_ text: String, fileName: String) throws -> UserList {
        var secrets: [String: String] = [:]
        for (index, rawLine) in IniParser.splitLines(text).enumerated() {
            let location = SourceLocation(file: fileName, line: index + 1)
            var line = rawLine.drop { $0.isWhitespace }
            if line.isEmpty || line.first == ";" || line.first == "#" {
                continue
            }
            let user: String
            let secret: String
            (user, line) = try field(line, what: "user name", at: location)
            line = line.drop { $0.isWhitespace }
            (secret, line) = try field(line, what: "password", at: location)
            guard !user.isEmpty else {
                throw IniParser.error(at: location, "empty user name")
            }
            secrets[user] = secret
        }
        return UserList(secrets: secrets)
    }

    private static func field(
        _ text: Substring,
        what: String,
        at location: SourceLocation
    ) throws -> (String, Substring) {
        guard text.first == "\"" else {
            throw IniParser.error(at: location, "syntax error: expected a double-quoted \(what)")
        }
        let (value, rest) = try IniParser.readQuoted(text, quote: "\"", at: location)
        // Text glued to the closing quote (`"alice"x`) is almost certainly a quoting mistake.
        if let next = rest.first, !next.isWhitespace {
            throw IniParser.error(at: location, "syntax error: expected white space after the quoted \(what)")
        }
        return (value, rest)
    }
}

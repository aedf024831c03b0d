
/// Where a line of configuration came from, so every error and warning can name it.
struct SourceLocation: Sendable, Equatable {
    var file: String
    var line: Int
}

/// One meaningful line of an ini file, after comments and `%include` have been resolved.
struct IniEntry: Sendable, Equatable {
    enum Kind: Sendable, Equatable {
        /// `[name]`, lower-cased because PgBouncer matches section names case-insensitively.
        case section(String)
        /// `key = value`; the key keeps its spelling (database and user names are case-sensitive).
        case setting(key: String, value: String)
    }

    var kind: Kind
    var location: SourceLocation
}

/// Reads the pgbouncer.ini dialect: `[section]` headers, `key = value` lines, `;`/`#` comment
/// lines and `%include FILE`. It knows nothing about what the keys mean; `Configuration` does.
enum IniParser {
    /// PgBouncer refuses deep include chains; a limit also turns an include loop into an error.
    static let maxIncludeDepth = 10

    static func parse(
        _ text: String,
        fileName: String,
        readInclude: (String) throws -> String
    ) throws -> [IniEntry] {
        var entries: [IniEntry] = []
        try parse(text, fileName: fileName, depth: 0, readInclude: readInclude, into: &entries)
        return entries
    }

    private static func parse(
        _ text: String,
        fileName: String,
        depth: Int,
        readInclude: (String) throws -> String,
        into entries: inout [IniEntry]
    ) throws {
        for (index, rawLine) in splitLines(text).enumerated() {
            let location = SourceLocation(file: fileName, line: index + 1)
            let line = rawLine.trimmingWhitespace()
            if line.isEmpty || line.hasPrefix(";") || line.hasPrefix("#") {
                continue
            }
            if line.hasPrefix("%") {
                try handleDirective(line, at: location, depth: depth, readInclude: readInclude, into: &entries)
            } else if line.hasPrefix("[") {
                entries.append(IniEntry(kind: .section(try sectionName(line, at: location)), location: location))
            } else {
                let (key, value) = try keyValue(line, at: location)
                entries.append(IniEntry(kind: .setting(key: key, value: value), location: location))
            }
        }
    }

    /// Splits on \n, \r\n and \r so files edited on any platform read the same and line numbers match editors.
    static func splitLines(_ text: String) -> [Substring] {
        var lines: [Substring] = []
        // Some Windows editors start UTF-8 files with a byte-order mark; it is not part of the first key.
        let bodyStart = text.first == "\u{FEFF}" ? text.index(after: text.startIndex) : text.startIndex
        var start = bodyStart
        var index = bodyStart
        while index < text.endIndex {
            let character = text[index]
            // "\r\n" is a single Character in Swift, so this one test covers all three endings.
            if character == "\n" || character == "\r" || character == "\r\n" {
                lines.append(text[start..<index])
                start = text.index(after: index)
            }
            index = text.index(after: index)
        }
        if start < text.endIndex {
            lines.append(text[start...])
        }
        return lines
    }

    private static func handleDirective(
        _ line: String,
        at location: SourceLocation,
        depth: Int,
        readInclude: (String) throws -> String,
        into entries: inout [IniEntry]
    ) throws {
        let body = line.dropFirst()
        let word = body.prefix { !$0.isWhitespace }
        guard word.lowercased() == "include" else {
            throw error(at: location, "unknown directive \"%\(word)\"")
        }
        var target = body.dropFirst(word.count).trimmingWhitespace()
        if let first = target.first, first == "'" || first == "\"" {
            target = try unquote(target, at: location)
        }
        guard !target.isEmpty else {
            throw error(at: location, "%include needs a file name")
        }
        guard depth < maxIncludeDepth else {
            throw error(at: location, "%include nested more than \(maxIncludeDepth) levels deep (include loop?)")
        }
        let included: String
        do {
            included = try readInclude(target)
        } catch let configError as ConfigurationError {
            throw configError
        } catch {
            throw Self.error(at: location, "could not read included file \"\(target)\": \(describe(error))")
        }
        try parse(included, fileName: target, depth: depth + 1, readInclude: readInclude, into: &entries)
    }

    private static func sectionName(_ line: String, at location: SourceLocation) throws -> String {
        guard let close = line.firstIndex(of: "]") else {
            throw error(at: location, "syntax error: section header is missing \"]\"")
        }
        let trailing = line[line.index(after: close)...].trimmingWhitespace()
        guard trailing.isEmpty else {
            throw error(at: location, "syntax error: unexpected text after section header")
        }
        let name = line[line.index(after: line.startIndex)..<close].trimmingWhitespace()
        guard !name.isEmpty else {
            throw error(at: location, "syntax error: empty section name")
        }
        return name.lowercased()
    }

    private static func keyValue(_ line: String, at location: SourceLocation) throws -> (String, String) {
        let key: String
        let rest: Substring
        if line.hasPrefix("\"") {
            // A double-quoted key lets database names contain spaces or "=" (SQL identifier quoting).
            let (quotedKey, after) = try readQuoted(line[...], quote: "\"", at: location)
            key = quotedKey
            rest = after.drop { $0 == " " || $0 == "\t" }
            guard rest.first == "=" else {
                throw error(at: location, "syntax error: expected \"=\" after key", key: key)
            }
        } else {
            guard let equals = line.firstIndex(of: "=") else {
                throw error(at: location, "syntax error: expected \"key = value\"")
            }
            key = line[..<equals].trimmingWhitespace()
            rest = line[equals...]
        }
        guard !key.isEmpty else {
            throw error(at: location, "syntax error: missing key before \"=\"")
        }
        var value = rest.dropFirst().trimmingWhitespace()
        if let first = value.first, first == "'" || first == "\"" {
            do {
                value = try unquote(value, at: location)
            } catch var configError as ConfigurationError {
                configError.key = key
                throw configError
            }
        }
        return (key, value)
    }

    /// A value that is entirely one quoted string loses its quotes; a doubled quote inside stands for one quote.
    static func unquote(_ text: String, at location: SourceLocation) throws -> String {
        guard let quote = text.first else { return text }
        let (value, rest) = try readQuoted(text[...], quote: quote, at: location)
        guard rest.allSatisfy(\.isWhitespace) else {
            throw error(at: location, "syntax error: unexpected text after quoted value")
        }
        return value
    }

    /// Reads `quote ... quote` from the start of `text`, returning the content and what follows.
    static func readQuoted(
        _ text: Substring,
        quote: Character,
        at location: SourceLocation
    ) throws -> (String, Substring) {
        var result = ""
        var index = text.index(after: text.startIndex)
        while index < text.endIndex {
            let character = text[index]
            let next = text.index(after: index)
            if character == quote {
                if next < text.endIndex, text[next] == quote {
                    result.append(quote)
                    index = text.index(after: next)
                    continue
                }
                return (result, text[next...])
            }
            result.append(character)
            index = next
        }
        throw error(at: location, "syntax error: unterminated quoted string")
    }

    static func error(at location: SourceLocation, _ message: String, key: String? = nil) -> ConfigurationError {
        ConfigurationError(file: location.file, line: location.line, key: key, message: message)
    }

    /// Our own errors already read well; anything else is printed as it describes itself.
    static func describe(_ error: any Error) -> String {
        if let configError = error as? ConfigurationError {
            return configError.message
        }
        return "\(error)"
    }
}

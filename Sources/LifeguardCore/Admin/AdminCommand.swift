
/// One admin-console statement, parsed the way PgBouncer parses it: one or two words (letters, digits and
/// underscores, or a double-quoted name), case-insensitive, an optional trailing `;`, or
/// `SET key = value` / `SET key TO value`. `SELECT x` is read as `SHOW x`.
public enum AdminCommand: Equatable, Sendable {
    /// `SHOW <subject>`; the subject is lower-cased.
    case show(String)
    /// A control command (verb upper-cased) with its optional argument (a database name or a client id).
    case control(String, argument: String?)
    /// `SET key = value`; the key is lower-cased, the value unquoted.
    case set(key: String, value: String)

    /// Nil when the text is not a console command: PgBouncer answers `invalid command '<text>', use SHOW HELP;`.
    public static func parse(_ text: String) -> AdminCommand? {
        var scanner = WordScanner(text)
        guard let verb = scanner.word() else { return nil }
        let upperVerb = verb.uppercased()
        if upperVerb == "SET" {
            return parseSet(&scanner)
        }
        let argument = scanner.word()
        guard scanner.atEndAllowingSemicolon() else { return nil }
        switch upperVerb {
        case "SHOW", "SELECT":
            guard let argument else { return nil }
            return .show(argument.lowercased())
        default:
            return .control(upperVerb, argument: argument)
        }
    }

    private static func parseSet(_ scanner: inout WordScanner) -> AdminCommand? {
        guard let key = scanner.word() else { return nil }
        scanner.skipSpaces()
        if scanner.consume("=") {
            // `=` may be glued to the key or the value.
        } else if let to = scanner.word(), to.uppercased() == "TO" {
        } else {
            return nil
        }
        scanner.skipSpaces()
        guard let value = scanner.value(), scanner.atEndAllowingSemicolon() else { return nil }
        return .set(key: key.lowercased(), value: value)
    }
}

/// Reads the console's tiny grammar from a string, character by character.
private struct WordScanner {
    private let characters: [Character]
    private var index = 0

    init(_ text: String) {
        characters = Array(text)
    }

    mutating func skipSpaces() {
        while index < characters.count, characters[index].isWhitespace { index += 1 }
    }

    mutating func consume(_ character: Character) -> Bool {
        guard index < characters.count, characters[index] == character else { return false }
        index += 1
        return true
    }

    /// A bare word (`[0-9A-Za-z_]+`) or a double-quoted name (`""` is a quote).
    mutating func word() -> String? {
        skipSpaces()
        guard index < characters.count else { return nil }
        if characters[index] == "\"" {
            return quoted("\"")
        }
        let start = index
        while index < characters.count, characters[index].isASCII,
            characters[index].isLetter || characters[index].isNumber || characters[index] == "_"
        {
            index += 1
        }
        return index > start ? String(characters[start..<index]) : nil
    }

    /// A SET value: a single-quoted string, or everything up to an optional trailing `;`.
    mutating func value() -> String? {
        guard index < characters.count else { return nil }
        if characters[index] == "'" { return quoted("'") }
        let start = index
        while index < characters.count, characters[index] != ";" { index += 1 }
        let value = String(characters[start..<index]).trimmingWhitespace()
        return value.isEmpty ? nil : value
    }

    private mutating func quoted(_ quote: Character) -> String? {
        index += 1
        var text = ""
        while index < characters.count {
            if characters[index] == quote {
                if index + 1 < characters.count, characters[index + 1] == quote {
                    text.append(quote)
                    index += 2
                    continue
                }
                index += 1
                return text
            }
            text.append(characters[index])
            index += 1
        }
        return nil
    }

    mutating func atEndAllowingSemicolon() -> Bool {
        skipSpaces()
        if index < characters.count, characters[index] == ";" {
            index += 1
            skipSpaces()
        }
        return index == characters.count
    }
}

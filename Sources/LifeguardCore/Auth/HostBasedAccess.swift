import Glibc

/// `auth_type = hba`: the rules of `auth_hba_file`, in pg_hba.conf's format as far as PgBouncer takes it.
/// The first rule whose connection type, database, user and address fit a login decides its method; a login
/// no rule fits is rejected.
///
///     local      DATABASE  USER  METHOD  [map=NAME]
///     host       DATABASE  USER  ADDRESS  METHOD  [map=NAME]      (also hostssl, hostnossl)
///
/// DATABASE and USER are comma-separated lists of names, `"quoted"` names (`""` is a quote; a quoted `all`
/// is the name, not the keyword), `@file` (names read from a file next to this one) and the keywords `all`,
/// `sameuser` and `replication` (physical replication connections, which no other database name fits).
/// ADDRESS is `all`, an IPv4 or IPv6 address with `/bits`, or an address followed by a mask. A line that
/// cannot be read is reported and skipped, as PgBouncer does; the others still apply.
public struct HostBasedAccess: Sendable, Equatable {
    public enum Method: String, Sendable, Equatable {
        case trust, reject, md5, password, peer, cert
        case scramSHA256 = "scram-sha-256"
    }

    /// What a login looks like to the rules.
    public struct Login: Sendable {
        public enum Transport: Sendable {
            case unixSocket
            /// The client's address: 4 bytes (IPv4) or 16 (IPv6).
            case tcp(address: [UInt8])
        }

        public var transport: Transport
        public var tls: Bool
        public var database: String
        public var user: String
        /// `replication=true`: only rules naming `replication` fit (logical replication goes by database).
        public var physicalReplication: Bool

        public init(transport: Transport, tls: Bool, database: String, user: String, physicalReplication: Bool) {
            self.transport = transport
            self.tls = tls
            self.database = database
            self.user = user
            self.physicalReplication = physicalReplication
        }
    }

    /// The method of the rule that fits, with its `map=` option and line (nil line: no rule fits).
    public struct Decision: Sendable, Equatable {
        public var method: Method
        public var identMap: String?
        public var line: Int?
    }

    private enum ConnectionType: String {
        case local, host, hostssl, hostnossl
    }

    private struct Names: Equatable {
        var all = false
        var sameUser = false
        var replication = false
        var listed: Set<String> = []
    }

    private struct Network: Equatable {
        var address: [UInt8]
        var mask: [UInt8]

        func contains(_ client: [UInt8]) -> Bool {
            guard client.count == address.count else { return false }
            for index in client.indices where client[index] & mask[index] != address[index] { return false }
            return true
        }
    }

    private struct Rule: Equatable {
        var type: ConnectionType
        var databases: Names
        var users: Names
        /// nil: any address (`all`, and every `local` rule).
        var network: Network?
        var method: Method
        var identMap: String?
        var line: Int
    }

    private var rules: [Rule] = []

    public init() {}

    /// Reads the rules in `text`. `readInclude` reads an `@file` (named relative to this file's folder);
    /// `warn` hears each line that was skipped and why.
    public init(
        parsing text: String, file: String, readInclude: (String) throws -> String, warn: (String) -> Void
    ) {
        let folder = file.contains("/") ? String(file[..<file.lastIndex(of: "/")!]) : "."
        for (index, line) in HBATokenizer.lines(text).enumerated() {
            let tokens = HBATokenizer.tokens(line)
            guard !tokens.isEmpty else { continue }
            do {
                rules.append(try Self.rule(tokens, line: index + 1, folder: folder, readInclude: readInclude))
            } catch {
                warn("\(file) line \(index + 1): \(error.reason); the line is skipped")
            }
        }
    }

    public func decide(_ login: Login) -> Decision {
        for rule in rules where fits(rule, login) {
            return Decision(method: rule.method, identMap: rule.identMap, line: rule.line)
        }
        return Decision(method: .reject, identMap: nil, line: nil)
    }

    private func fits(_ rule: Rule, _ login: Login) -> Bool {
        switch (rule.type, login.transport) {
        case (.local, .unixSocket): break
        case (.local, .tcp), (.host, .unixSocket), (.hostssl, .unixSocket), (.hostnossl, .unixSocket): return false
        case (.hostssl, .tcp) where !login.tls, (.hostnossl, .tcp) where login.tls: return false
        case (_, .tcp(let address)):
            if let network = rule.network, !network.contains(address) { return false }
        }
        let databases = rule.databases
        if login.physicalReplication {
            guard databases.replication else { return false }
        } else {
            guard databases.all || (databases.sameUser && login.database == login.user)
                || databases.listed.contains(login.database)
            else { return false }
        }
        return rule.users.all || rule.users.listed.contains(login.user)
    }

    // MARK: Reading

    struct LineError: Error {
        var reason: String
    }

    private static func rule(
        _ tokens: [HBATokenizer.Token], line: Int, folder: String, readInclude: (String) throws -> String
    ) throws(LineError) -> Rule {
        var rest = tokens[...]
        guard case .word(let typeWord, quoted: false)? = rest.popFirst(), let type = ConnectionType(rawValue: typeWord)
        else { throw LineError(reason: "unknown connection type (local, host, hostssl or hostnossl)") }
        let databases = try names(&rest, isDatabase: true, folder: folder, readInclude: readInclude)
        let users = try names(&rest, isDatabase: false, folder: folder, readInclude: readInclude)
        var network: Network?
        if type != .local {
            guard case .word(let address, quoted: false)? = rest.popFirst() else {
                throw LineError(reason: "no address")
            }
            if address != "all" {
                network = try self.network(address, maskWord: &rest)
            }
        }
        guard case .word(let methodWord, quoted: false)? = rest.popFirst(), let method = Method(rawValue: methodWord)
        else { throw LineError(reason: "unsupported method (trust, reject, md5, password, scram-sha-256, peer or cert)") }
        var identMap: String?
        while let option = rest.popFirst() {
            guard case .word(let text, _) = option, text.hasPrefix("map="), text.count > 4 else {
                throw LineError(reason: "unsupported option (only map=NAME is)")
            }
            identMap = String(text.dropFirst(4))
        }
        return Rule(
            type: type, databases: databases, users: users, network: network, method: method,
            identMap: identMap, line: line)
    }

    private static func names(
        _ rest: inout ArraySlice<HBATokenizer.Token>, isDatabase: Bool, folder: String,
        readInclude: (String) throws -> String
    ) throws(LineError) -> Names {
        var names = Names()
        repeat {
            guard case .word(let word, let quoted)? = rest.popFirst() else {
                throw LineError(reason: isDatabase ? "no database name" : "no user name")
            }
            switch (word, quoted, isDatabase) {
            case ("all", false, _): names.all = true
            case ("sameuser", false, true): names.sameUser = true
            case ("replication", false, true): names.replication = true
            case ("samerole", false, true), ("samegroup", false, true):
                throw LineError(reason: "\(word) is not supported")
            default:
                if !quoted, word.hasPrefix("+") { throw LineError(reason: "group names (+name) are not supported") }
                if !quoted, word.hasPrefix("@") {
                    let path = word.dropFirst().hasPrefix("/") ? String(word.dropFirst()) : folder + "/" + word.dropFirst()
                    let text: String
                    do { text = try readInclude(path) } catch { throw LineError(reason: "cannot read \(path)") }
                    for line in HBATokenizer.lines(text) {
                        for case .word(let name, _) in HBATokenizer.tokens(line) { names.listed.insert(name) }
                    }
                } else {
                    names.listed.insert(word)
                }
            }
        } while rest.first == .comma && rest.popFirst() != nil
        return names
    }

    /// `10.0.0.0/8`, `::1/128`, or an address followed by its mask as a second word.
    private static func network(_ word: String, maskWord rest: inout ArraySlice<HBATokenizer.Token>) throws(LineError) -> Network {
        let parts = word.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = ipAddress(String(parts[0])) else {
            throw LineError(reason: "cannot read the address \(word) (host names are not supported)")
        }
        var mask: [UInt8]
        if parts.count == 2 {
            guard let bits = Int(parts[1]), bits >= 0, bits <= address.count * 8 else {
                throw LineError(reason: "invalid mask length in \(word)")
            }
            mask = (0..<address.count).map { index in
                let bitsHere = min(8, max(0, bits - index * 8))
                return bitsHere == 0 ? 0 : UInt8(truncatingIfNeeded: 0xFF << (8 - bitsHere))
            }
        } else {
            guard case .word(let maskText, quoted: false)? = rest.popFirst(), let parsed = ipAddress(maskText),
                parsed.count == address.count
            else { throw LineError(reason: "an address without /bits needs a mask of the same family") }
            mask = parsed
        }
        // Host bits set in the address are ignored, as the mask says.
        return Network(address: zip(address, mask).map { $0 & $1 }, mask: mask)
    }

    /// The bytes of an IPv4 (4) or IPv6 (16) address in text, nil when it is neither.
    public static func ipAddress(_ text: String) -> [UInt8]? {
        var v4 = [UInt8](repeating: 0, count: 4)
        if inet_pton(AF_INET, text, &v4) == 1 { return v4 }
        var v6 = [UInt8](repeating: 0, count: 16)
        if inet_pton(AF_INET6, text, &v6) == 1 { return v6 }
        return nil
    }
}

/// `auth_ident_file`: `MAPNAME SYSTEM-USERNAME DATABASE-USERNAME` lines, which say which database users a
/// system user (of `peer` authentication) may log in as under a rule's `map=`. A DATABASE-USERNAME of `all`
/// (unquoted) is any user. PostgreSQL's `/regex` system names are not supported; such lines are skipped.
public struct IdentMaps: Sendable, Equatable {
    private struct Entry: Equatable {
        var systemUser: String
        var databaseUser: String?  // nil: all
    }

    private var maps: [String: [Entry]] = [:]

    public init() {}

    public init(parsing text: String, file: String, warn: (String) -> Void) {
        for (index, line) in HBATokenizer.lines(text).enumerated() {
            let tokens = HBATokenizer.tokens(line)
            guard !tokens.isEmpty else { continue }
            guard tokens.count == 3, case .word(let map, _) = tokens[0], case .word(let system, let systemQuoted) = tokens[1],
                case .word(let user, let userQuoted) = tokens[2]
            else {
                warn("\(file) line \(index + 1): expected MAPNAME SYSTEM-USERNAME DATABASE-USERNAME; the line is skipped")
                continue
            }
            if !systemQuoted, system.hasPrefix("/") {
                warn("\(file) line \(index + 1): regular expressions are not supported; the line is skipped")
                continue
            }
            maps[map, default: []].append(Entry(systemUser: system, databaseUser: user == "all" && !userQuoted ? nil : user))
        }
    }

    /// Whether `map` lets the system user `systemUser` log in as `user`.
    public func permits(map: String, systemUser: String, user: String) -> Bool {
        maps[map]?.contains { $0.systemUser == systemUser && ($0.databaseUser == nil || $0.databaseUser == user) } ?? false
    }
}

/// The words of pg_hba.conf-style files: whitespace separates, `#` starts a comment, `,` is a token of its
/// own, and `"..."` quotes a word (`""` inside is a quote).
enum HBATokenizer {
    enum Token: Equatable {
        case word(String, quoted: Bool)
        case comma
        /// An unterminated quote: the line cannot be read.
        case broken
    }

    static func lines(_ text: String) -> [Substring] {
        text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" })
    }

    static func tokens(_ line: Substring) -> [Token] {
        var tokens: [Token] = []
        var rest = line.unicodeScalars[...]
        while let first = rest.first {
            if first.properties.isWhitespace {
                rest.removeFirst()
            } else if first == "#" {
                break
            } else if first == "," {
                tokens.append(.comma)
                rest.removeFirst()
            } else if first == "\"" {
                rest.removeFirst()
                var word = String.UnicodeScalarView()
                var closed = false
                while let scalar = rest.popFirst() {
                    if scalar == "\"" {
                        if rest.first == "\"" {
                            rest.removeFirst()
                        } else {
                            closed = true
                            break
                        }
                    }
                    word.append(scalar)
                }
                tokens.append(closed ? .word(String(word), quoted: true) : .broken)
            } else {
                var word = String.UnicodeScalarView()
                while let scalar = rest.first, !scalar.properties.isWhitespace, scalar != ",", scalar != "#", scalar != "\"" {
                    word.append(scalar)
                    rest.removeFirst()
                }
                tokens.append(.word(String(word), quoted: false))
            }
        }
        return tokens
    }
}

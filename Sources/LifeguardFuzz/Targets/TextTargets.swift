import Foundation
import LifeguardCore

struct FuzzIncludeError: Error {}

/// Configuration.parse on any text, with `%include` served from the input itself (parts after NUL bytes;
/// never the disk), so nesting and include loops are reached. Then SET at run time of what was read.
func fuzzConfiguration(_ data: [UInt8]) {
    let parts = data.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    let configuration: Configuration
    do {
        configuration = try Configuration.parse(parts[0], fileName: "fuzz.ini") { name in
            let index = name.utf8.reduce(0) { $0 &+ Int($1) } % (parts.count + 1)
            // One choice in parts.count + 1 fails, as an unreadable file would.
            guard index < parts.count else { throw FuzzIncludeError() }
            return parts[index]
        }
    } catch is ConfigurationError {
        return
    } catch {
        fatalError("Configuration.parse threw \(error), not a ConfigurationError")
    }
    for name in configuration.databases.keys {
        check(name.lowercased() != Configuration.adminDatabaseName, "database \(name) shadows the admin console")
        check(configuration.database(named: name) != nil, "database \(name) not found by name")
    }
    for definition in configuration.databases.values {
        check((1...65535).contains(definition.port), "port \(definition.port)")
    }
    // SET of a value the file already set, and of the file's values under other keys.
    let pairs = Array(configuration.rawSettings.sorted { $0.key < $1.key }.prefix(16))
    for (index, (key, value)) in pairs.enumerated() {
        for other in [value, pairs[(index + 1) % pairs.count].value] {
            var changed = configuration
            if !changed.setAtRuntime(key: key, value: other) {
                check(changed == configuration, "a refused SET \(key) changed the configuration")
            }
        }
    }
}

/// UserList.parse on any text; the secrets it reads are classified, SCRAM secrets re-encoded, and an
/// ASCII userlist written back reads the same.
func fuzzUserList(_ data: [UInt8]) {
    let text = String(decoding: data, as: UTF8.self)
    let list: UserList
    do {
        list = try UserList.parse(text, fileName: "userlist.txt")
    } catch is ConfigurationError {
        return
    } catch {
        fatalError("UserList.parse threw \(error), not a ConfigurationError")
    }
    var written = ""
    var writable = true
    for (user, secret) in list.secrets.sorted(by: { $0.key < $1.key }) {
        check(!user.isEmpty, "empty user name accepted")
        if case .scram(let scram) = PasswordSecret(parsing: secret) {
            check(SCRAMSecret(parsing: scram.encoded) == scram, "SCRAM secret does not survive re-encoding: \(secret)")
        }
        // Only ASCII without line breaks: a quote may fuse with a combining mark into one Character.
        let printable = { (text: String) in text.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F } }
        if printable(user) && printable(secret) {
            written += "\"\(user.replacingOccurrences(of: "\"", with: "\"\""))\" "
                + "\"\(secret.replacingOccurrences(of: "\"", with: "\"\""))\"\n"
        } else {
            writable = false
        }
    }
    if writable {
        check((try? UserList.parse(written, fileName: "rewritten")) == list, "userlist round trip failed:\n\(written)")
    }
}

/// AdminCommand.parse on any text: results are normalised as documented, written back they parse the same,
/// and SET goes through Configuration.setAtRuntime as the console does.
func fuzzAdminCommand(_ data: [UInt8]) {
    let text = String(decoding: data, as: UTF8.self)
    guard let command = AdminCommand.parse(text) else { return }
    let isASCII = { (word: String) in word.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F } }
    let quote = { (word: String, mark: String) in mark + word.replacingOccurrences(of: mark, with: mark + mark) + mark }
    switch command {
    case .show(let subject):
        check(subject == subject.lowercased(), "SHOW subject not lower-cased: \(subject)")
        if isASCII(subject) {
            check(AdminCommand.parse("show " + quote(subject, "\"") + ";") == command, "SHOW round trip")
        }
    case .control(let verb, let argument):
        check(verb == verb.uppercased(), "verb \(verb)")
        check(!["SET", "SHOW", "SELECT"].contains(verb), "control command \(verb)")
        if let argument, isASCII(verb), isASCII(argument) {
            check(AdminCommand.parse(quote(verb, "\"") + " " + quote(argument, "\"")) == command, "control round trip")
        }
    case .set(let key, let value):
        check(key == key.lowercased(), "SET key not lower-cased: \(key)")
        if isASCII(key), isASCII(value) {
            check(AdminCommand.parse("SET " + quote(key, "\"") + " TO " + quote(value, "'")) == command, "SET round trip")
        }
        var configuration = Configuration()
        let before = configuration
        if !configuration.setAtRuntime(key: key, value: value) {
            check(configuration == before, "a refused SET changed the configuration")
        }
    }
}

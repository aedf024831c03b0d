import Foundation
import Testing
@testable import LifeguardCore

@Suite struct UserListTests {
    private func parseError(_ text: String) -> ConfigurationError? {
        configurationError { _ = try UserList.parse(text, fileName: "userlist.txt") }
    }

    @Test func secretFormsAreKeptAsWritten() throws {
        let list = try UserList.parse("""
            "alice" "plain password"
            "admin" "md545f2603610af569b6155c45067268c6b"
            "scram" "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
            """, fileName: "userlist.txt")
        #expect(list.secrets == [
            "alice": "plain password",
            "admin": "md545f2603610af569b6155c45067268c6b",
            "scram": "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy",
        ])
    }

    @Test func commentsBlankLinesAndIndentation() throws {
        let list = try UserList.parse("""
            ; a comment
            # another comment

               "bob"    "x"
            \t"carol"\t"y"
            """, fileName: "userlist.txt")
        #expect(list.secrets == ["bob": "x", "carol": "y"])
    }

    @Test func doubledQuotesAreEscapes() throws {
        let list = try UserList.parse(#""say ""hi""" "pa""ss""# + "\n" + #""""" """# + "\n", fileName: "u")
        #expect(list.secrets == ["say \"hi\"": "pa\"ss", "\"": ""])
    }

    @Test func restOfLineIsIgnored() throws {
        let list = try UserList.parse(#""dave" "pw" "extra field" anything at all"# + "\n", fileName: "u")
        #expect(list.secrets == ["dave": "pw"])
    }

    @Test func emptyPasswordAndSpecialCharacters() throws {
        let list = try UserList.parse(#""eve" """# + "\n" + ##""semi;colon" "#hash ' quote""##, fileName: "u")
        #expect(list.secrets == ["eve": "", "semi;colon": "#hash ' quote"])
    }

    @Test func lastDuplicateWins() throws {
        let list = try UserList.parse("\"u\" \"one\"\n\"u\" \"two\"\n", fileName: "u")
        #expect(list.secrets == ["u": "two"])
    }

    @Test func crlfLineEndings() throws {
        let list = try UserList.parse("\"a\" \"1\"\r\n; c\r\n\"b\" \"2\"\r\n", fileName: "u")
        #expect(list.secrets == ["a": "1", "b": "2"])
    }

    @Test func byteOrderMarkIsIgnored() throws {
        #expect(try UserList.parse("\u{FEFF}\"u\" \"p\"\n", fileName: "u").secrets == ["u": "p"])
    }

    @Test func emptyFile() throws {
        #expect(try UserList.parse("", fileName: "u") == UserList())
    }

    @Test(arguments: [
        ("alice \"pw\"", "syntax error: expected a double-quoted user name"),
        ("\"alice\"", "syntax error: expected a double-quoted password"),
        ("\"alice\" pw", "syntax error: expected a double-quoted password"),
        ("\"alice\"\"pw\"", "syntax error: expected a double-quoted password"),
        ("\"alice\"x \"pw\"", "syntax error: expected white space after the quoted user name"),
        ("\"alice\" \"pw\"x", "syntax error: expected white space after the quoted password"),
        ("\"alice \"pw\"", "syntax error: expected white space after the quoted user name"),
        ("\"alice\" \"pw", "syntax error: unterminated quoted string"),
        ("\"\" \"pw\"", "empty user name"),
    ])
    func malformedLines(line: String, message: String) {
        let error = parseError("; header\n\"ok\" \"ok\"\n" + line + "\n")
        #expect(error == ConfigurationError(file: "userlist.txt", line: 3, message: message))
        #expect(error?.description == "userlist.txt:3: \(message)")
    }

    @Test func loadFromDisk() throws {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("lifeguard-userlist-\(UUID().uuidString).txt").path
        try "\"u\" \"p\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(try UserList.load(path: path).secrets == ["u": "p"])
    }

    @Test func loadMissingFile() {
        #expect(throws: ConfigurationError(file: "/nonexistent/userlist.txt", message: "could not read file: no such file")) {
            try UserList.load(path: "/nonexistent/userlist.txt")
        }
    }
}

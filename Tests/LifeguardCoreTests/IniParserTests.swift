import Testing
@testable import LifeguardCore

@Suite struct IniParserTests {
    private func entries(
        _ text: String,
        includes: [String: String] = [:]
    ) throws -> [IniEntry] {
        try IniParser.parse(text, fileName: "test.ini") { name in
            guard let text = includes[name] else {
                throw ConfigurationError(file: name, message: "could not read file: no such file")
            }
            return text
        }
    }

    private func settings(_ entries: [IniEntry]) -> [(String, String)] {
        entries.compactMap {
            if case .setting(let key, let value) = $0.kind { return (key, value) }
            return nil
        }
    }

    private func parseError(_ text: String, includes: [String: String] = [:]) -> ConfigurationError? {
        configurationError { _ = try entries(text, includes: includes) }
    }

    @Test func sectionsAndKeys() throws {
        let result = try entries("""
            [PgBouncer]
            listen_port = 6432
            [databases]
            main = host=localhost
            """)
        #expect(result.count == 4)
        #expect(result[0].kind == .section("pgbouncer"))
        #expect(result[0].location == SourceLocation(file: "test.ini", line: 1))
        #expect(result[1].kind == .setting(key: "listen_port", value: "6432"))
        #expect(result[2].kind == .section("databases"))
        #expect(result[3].kind == .setting(key: "main", value: "host=localhost"))
        #expect(result[3].location.line == 4)
    }

    @Test func commentsAndBlankLinesAreSkippedButCounted() throws {
        let result = try entries("""
            ; semicolon comment
            # hash comment

               ;indented comment
            [pgbouncer]
            a = 1
            """)
        #expect(result.count == 2)
        #expect(result[1].location.line == 6)
    }

    @Test func valuesAreTrimmedAndMayContainSpacesAndSemicolons() throws {
        let result = settings(try entries("""
            [x]
              key   =   some value with spaces   \t
            q = SELECT 1; SELECT 2
            empty =
            eq = a=b=c
            """))
        #expect(result.map(\.0) == ["key", "q", "empty", "eq"])
        #expect(result.map(\.1) == ["some value with spaces", "SELECT 1; SELECT 2", "", "a=b=c"])
    }

    @Test func quotedValues() throws {
        let result = settings(try entries(#"""
            [x]
            a = 'DISCARD ALL'
            b = 'it''s'
            c = "double ""quoted"""
            d = ''
            e = '  padded  '
            f = it's not quoted
            g = host='my host'
            """#))
        #expect(result.map(\.1) == ["DISCARD ALL", "it's", "double \"quoted\"", "", "  padded  ", "it's not quoted", "host='my host'"])
    }

    @Test func quotedKey() throws {
        let result = settings(try entries("""
            [databases]
            "my db" = dbname=x
            "a""b" = dbname=y
            """))
        #expect(result.map(\.0) == ["my db", "a\"b"])
    }

    @Test func windowsAndOldMacLineEndings() throws {
        let result = try entries("[x]\r\na = 1\r\n\r\nb = 2\rc = 3")
        #expect(settings(result).map(\.1) == ["1", "2", "3"])
        #expect(result.map(\.location.line) == [1, 2, 4, 5])
    }

    @Test func byteOrderMarkIsIgnored() throws {
        let result = try entries("\u{FEFF}[x]\na = 1\n")
        #expect(result.first?.kind == .section("x"))
    }

    @Test func duplicatesAreAllReportedInOrder() throws {
        let result = settings(try entries("[x]\na = 1\na = 2\n"))
        #expect(result.map(\.1) == ["1", "2"])
    }

    @Test func includeIsInlinedWithItsOwnFileName() throws {
        let result = try entries(
            """
            [pgbouncer]
            a = 1
            %include extra.ini
            c = 3
            """,
            includes: ["extra.ini": "; included\nb = 2\n[databases]\nd = host=x\n"]
        )
        #expect(result.map(\.kind) == [
            .section("pgbouncer"),
            .setting(key: "a", value: "1"),
            .setting(key: "b", value: "2"),
            .section("databases"),
            .setting(key: "d", value: "host=x"),
            .setting(key: "c", value: "3"),
        ])
        #expect(result[2].location == SourceLocation(file: "extra.ini", line: 2))
        #expect(result[5].location == SourceLocation(file: "test.ini", line: 4))
    }

    @Test func nestedAndQuotedIncludes() throws {
        let result = try entries(
            "%include 'one two.ini'\n",
            includes: ["one two.ini": "%INCLUDE b.ini\n[s]", "b.ini": "[t]\nk = v"]
        )
        #expect(result.map(\.kind) == [.section("t"), .setting(key: "k", value: "v"), .section("s")])
    }

    @Test func includeLoopIsAnError() {
        let error = parseError("%include self.ini\n", includes: ["self.ini": "%include self.ini\n"])
        #expect(error?.message.contains("nested more than") == true)
        #expect(error?.file == "self.ini")
    }

    @Test func missingIncludeNamesTheIncludingLine() {
        struct Failure: Error {}
        let error = parseError("[x]\n%include nope.ini\n", readInclude: { _ in throw Failure() })
        #expect(error?.file == "test.ini")
        #expect(error?.line == 2)
        #expect(error?.message.hasPrefix("could not read included file \"nope.ini\"") == true)
    }

    @Test func includeErrorsFromReaderPassThrough() {
        let error = parseError("[x]\n%include nope.ini\n")
        #expect(error == ConfigurationError(file: "nope.ini", message: "could not read file: no such file"))
    }

    @Test func errorInIncludedFileNamesThatFile() {
        let error = parseError("[x]\n%include inc.ini\n", includes: ["inc.ini": "\n\nbroken line\n"])
        #expect(error?.file == "inc.ini")
        #expect(error?.line == 3)
    }

    @Test(arguments: [
        ("[x]\nno equals sign", 2, "syntax error: expected \"key = value\""),
        ("[x\n", 1, "syntax error: section header is missing \"]\""),
        ("[x] junk\n", 1, "syntax error: unexpected text after section header"),
        ("[ ]\n", 1, "syntax error: empty section name"),
        ("[x]\n = value\n", 2, "syntax error: missing key before \"=\""),
        ("[x]\na = 'open\n", 2, "syntax error: unterminated quoted string"),
        ("[x]\na = 'one' two\n", 2, "syntax error: unexpected text after quoted value"),
        ("[x]\n\"k\" v\n", 2, "syntax error: expected \"=\" after key"),
        ("%includ x\n", 1, "unknown directive \"%includ\""),
        ("%include\n", 1, "%include needs a file name"),
    ])
    func syntaxErrors(text: String, line: Int, message: String) {
        let error = parseError(text)
        #expect(error?.file == "test.ini")
        #expect(error?.line == line)
        #expect(error?.message == message)
    }

    @Test func quotedValueErrorNamesTheKey() {
        let error = parseError("[x]\nserver_reset_query = 'DISCARD\n")
        #expect(error?.key == "server_reset_query")
        #expect(error?.description == "test.ini:2: syntax error: unterminated quoted string")
    }
}

extension IniParserTests {
    /// Lets a test supply its own include reader.
    private func parseError(_ text: String, readInclude: (String) throws -> String) -> ConfigurationError? {
        configurationError { _ = try IniParser.parse(text, fileName: "test.ini", readInclude: readInclude) }
    }
}

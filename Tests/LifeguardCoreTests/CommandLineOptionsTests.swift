import LifeguardCore
import Testing

/// The command line, read as getopt reads PgBouncer's.
@Suite struct CommandLineOptionsTests {
    @Test func configAndFlags() throws {
        let options = try CommandLineOptions(arguments: ["-d", "-q", "-v", "-v", "lifeguard.ini"])
        #expect(options.daemon && options.quiet)
        #expect(options.verbosity == 2)
        #expect(options.configPath == "lifeguard.ini")
        #expect(options.user == nil)
    }

    @Test func groupedShortFlagsAndAttachedValues() throws {
        let options = try CommandLineOptions(arguments: ["-dvv", "-upostgres", "x.ini"])
        #expect(options.daemon && options.verbosity == 2)
        #expect(options.user == "postgres")
        #expect(try CommandLineOptions(arguments: ["-vu", "alice", "x.ini"]).user == "alice")
    }

    @Test func longOptions() throws {
        let options = try CommandLineOptions(arguments: ["--daemon", "--user=bob", "--verbose", "x.ini"])
        #expect(options.daemon && options.verbosity == 1 && options.user == "bob")
        #expect(try CommandLineOptions(arguments: ["--user", "carol", "x.ini"]).user == "carol")
    }

    @Test func checkConfigTakesTheConfigFile() throws {
        let options = try CommandLineOptions(arguments: ["--check-config", "x.ini"])
        #expect(options.checkConfig && options.configPath == "x.ini")
        #expect(!(try CommandLineOptions(arguments: ["x.ini"]).checkConfig))
        #expect(throws: CommandLineError.self) { try CommandLineOptions(arguments: ["--check-config"]) }
        #expect(throws: CommandLineError.self) { try CommandLineOptions(arguments: ["--check-config=yes", "x.ini"]) }
    }

    @Test func versionAndHelpNeedNoConfig() throws {
        #expect(try CommandLineOptions(arguments: ["-V"]).showVersion)
        #expect(try CommandLineOptions(arguments: ["--help"]).showHelp)
    }

    @Test func doubleDashEndsTheOptions() throws {
        #expect(try CommandLineOptions(arguments: ["--", "-odd.ini"]).configPath == "-odd.ini")
    }

    @Test(arguments: [
        ([], "missing the config file argument"),
        (["-x", "a.ini"], "unknown option: -x"),
        (["--frobnicate", "a.ini"], "unknown option: --frobnicate"),
        (["a.ini", "-u"], "-u needs a value"),
        (["a.ini", "--user"], "--user needs a value"),
        (["--quiet=yes", "a.ini"], "--quiet takes no value"),
        (["a.ini", "b.ini"], "more than one config file given: a.ini b.ini"),
    ])
    func mistakesAreNamed(arguments: [String], message: String) {
        #expect(throws: CommandLineError.self) { try CommandLineOptions(arguments: arguments) }
        do {
            _ = try CommandLineOptions(arguments: arguments)
        } catch {
            #expect(error.description == message)
        }
    }
}

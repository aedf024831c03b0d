/// `lifeguard [-d] [-q] [-v]... [-u USER] [-V] [-h] CONFIG`, with PgBouncer's meanings, read the way getopt
/// reads them: short flags may be grouped (`-dv`), an option's value may follow in the same word
/// (`-upostgres`, `--user=postgres`) or in the next, and `--` ends the options.
///
/// Hand-written rather than swift-argument-parser: that package and the Foundation it pulls in were 4 MB
/// of the daemon's resident memory at start, for six options.
public struct CommandLineOptions: Equatable, Sendable {
    public var daemon = false
    public var quiet = false
    public var verbosity = 0
    public var user: String?
    public var showVersion = false
    public var showHelp = false
    /// `--check-config`: read and check the configuration and the files it names, then exit.
    public var checkConfig = false
    public var configPath: String?

    public static let usage = """
        A PostgreSQL connection pooler, configured like PgBouncer.

        Usage: lifeguard [OPTIONS] CONFIG

        CONFIG is a pgbouncer.ini-format file. Lifeguard runs in the foreground and logs to standard
        error (and to `logfile`) unless -d is given.

        Options:
          -d, --daemon       run in the background (needs pidfile in CONFIG)
          -q, --quiet        do not log to standard error
          -v, --verbose      more detailed logging; repeat for more
          -u, --user USER    switch to USER after binding the listeners (when started as root)
          -V, --version      print the version and exit
          -h, --help         show this help and exit
              --check-config check CONFIG, its auth_file, hba and ident files and its TLS key and
                             certificate files, print what is wrong, and exit (0 when all is well)

        """

    private enum Option {
        case daemon, quiet, verbose, user, version, help, checkConfig

        init?(short: Character) {
            switch short {
            case "d": self = .daemon
            case "q": self = .quiet
            case "v": self = .verbose
            case "u": self = .user
            case "V": self = .version
            case "h": self = .help
            default: return nil
            }
        }

        init?(long: Substring) {
            switch long {
            case "daemon": self = .daemon
            case "quiet": self = .quiet
            case "verbose": self = .verbose
            case "user": self = .user
            case "version": self = .version
            case "help": self = .help
            case "check-config": self = .checkConfig
            default: return nil
            }
        }

        var takesValue: Bool { self == .user }
    }

    /// Parses the arguments after the program name.
    public init(arguments: [String]) throws(CommandLineError) {
        var rest = arguments[...]
        var positional: [String] = []
        while let word = rest.popFirst() {
            if word == "--" {
                positional += rest
                break
            }
            if word.hasPrefix("--") {
                let body = word.dropFirst(2)
                let name = body.prefix { $0 != "=" }
                guard let option = Option(long: name) else { throw CommandLineError("unknown option: --\(name)") }
                var value: String?
                if name.endIndex < body.endIndex {
                    guard option.takesValue else { throw CommandLineError("--\(name) takes no value") }
                    value = String(body[body.index(after: name.endIndex)...])
                } else if option.takesValue {
                    guard let next = rest.popFirst() else { throw CommandLineError("--\(name) needs a value") }
                    value = next
                }
                apply(option, value: value)
            } else if word.hasPrefix("-"), word.count > 1 {
                var letters = word.dropFirst()
                while let letter = letters.popFirst() {
                    guard let option = Option(short: letter) else { throw CommandLineError("unknown option: -\(letter)") }
                    var value: String?
                    if option.takesValue {
                        if !letters.isEmpty {
                            value = String(letters)
                            letters = ""
                        } else if let next = rest.popFirst() {
                            value = next
                        } else {
                            throw CommandLineError("-\(letter) needs a value")
                        }
                    }
                    apply(option, value: value)
                }
            } else {
                positional.append(word)
            }
        }
        guard positional.count <= 1 else {
            throw CommandLineError("more than one config file given: \(positional.joined(separator: " "))")
        }
        configPath = positional.first
        if configPath == nil, !showVersion, !showHelp {
            throw CommandLineError("missing the config file argument")
        }
    }

    private mutating func apply(_ option: Option, value: String?) {
        switch option {
        case .daemon: daemon = true
        case .quiet: quiet = true
        case .verbose: verbosity += 1
        case .user: user = value
        case .version: showVersion = true
        case .help: showHelp = true
        case .checkConfig: checkConfig = true
        }
    }
}

public struct CommandLineError: Error, Equatable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
